//! Prometheus metrics of the appliance, served as text at `/metrics`.
//!
//! Request counters are updated as requests finish; store figures (machines per state,
//! commits) are read from the store at scrape time by a collector, so they cannot drift.

use crate::app::Store;
use cosm_netboot::dhcp::server::DhcpHandle;
use cosm_netboot::ra::RaHandle;
use cosm_netboot::tftp::TftpHandle;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template (`/api/v1/machines/{mac}`), never the raw path, so the
    /// label set stays bounded.
    pub route: String,
    pub status: u16,
}

/// The appliance's metrics registry and the handles code updates.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
}

impl Metrics {
    pub fn new(
        store: Store,
        dhcp: Option<DhcpHandle>,
        ra: Option<RaHandle>,
        tftp: Option<TftpHandle>,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("cosm");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        registry.register(
            "build",
            "Version of this appliance",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(StoreCollector { store }));
        if let Some(dhcp) = dhcp {
            registry.register_collector(Box::new(DhcpCollector { dhcp }));
        }
        if let Some(ra) = ra {
            registry.register_collector(Box::new(RaCollector { ra }));
        }
        if let Some(tftp) = tftp {
            registry.register_collector(Box::new(TftpCollector { tftp }));
        }
        Metrics {
            registry: Arc::new(registry),
            http_requests,
        }
    }

    /// The OpenMetrics/Prometheus text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Debug)]
struct StoreCollector {
    store: Store,
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.store.stats();
        let pairs = [
            (
                "store_commits",
                "Store write transactions committed.",
                stats.commits.load(Ordering::Relaxed),
            ),
            (
                "store_commands",
                "Store commands applied (several share one commit).",
                stats.commands.load(Ordering::Relaxed),
            ),
            (
                "store_failed_commits",
                "Store write transactions that failed.",
                stats.failed_commits.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in pairs {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(m)?;
        }
        let machines = self
            .store
            .machine_counts()
            .map(|c| c.into_iter().map(|(s, n)| (s.as_str(), n)).collect());
        let vms = self
            .store
            .vm_counts()
            .map(|c| c.into_iter().map(|(s, n)| (s.as_str(), n)).collect());
        for (name, help, counts) in [
            ("machines", "Machines by lifecycle state.", machines),
            ("vms", "Virtual machines by state.", vms),
        ] {
            let counts: Vec<(&str, u64)> = match counts {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count {name} for /metrics");
                    continue;
                }
            };
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (state, n) in counts {
                let labels = vec![("state", state)];
                let m = family.encode_family(&labels)?;
                ConstGauge::new(n as i64).encode(m)?;
            }
        }
        // Active alarms by kind and severity: every kind listed (zeros included), so an
        // alert rule on `cosm_alarms_active{kind="fence_failed"} > 0` always has a series.
        match self.store.active_alarms() {
            Err(e) => tracing::warn!(error = %e, "cannot count alarms for /metrics"),
            Ok(active) => {
                let mut family = encoder.encode_descriptor(
                    "alarms_active",
                    "Alarms raised and not cleared, by kind and severity.",
                    None,
                    MetricType::Gauge,
                )?;
                for kind in cosm_wire::AlarmKind::ALL {
                    for sev in [
                        cosm_wire::Severity::Info,
                        cosm_wire::Severity::Warning,
                        cosm_wire::Severity::Critical,
                    ] {
                        let n = active
                            .iter()
                            .filter(|a| a.kind == kind && a.severity == sev)
                            .count();
                        if n == 0 && sev != cosm_wire::Severity::Critical {
                            continue;
                        }
                        let labels = vec![("kind", kind.as_str()), ("severity", sev.as_str())];
                        let m = family.encode_family(&labels)?;
                        ConstGauge::new(n as i64).encode(m)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// (metric name, help, label name, (label value, count) pairs).
type CounterFamily = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, u64)>,
);

#[derive(Debug)]
struct DhcpCollector {
    dhcp: DhcpHandle,
}

impl Collector for DhcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = &self.dhcp.stats;
        let families: [CounterFamily; 3] = [
            (
                "dhcp_received_packets",
                "DHCP requests received, by message type.",
                "type",
                st.received().collect(),
            ),
            (
                "dhcp_sent_packets",
                "DHCP replies sent, by message type.",
                "type",
                st.sent().collect(),
            ),
            (
                "dhcp_dropped_packets",
                "DHCP requests not answered, by reason.",
                "reason",
                st.dropped().collect(),
            ),
        ];
        for (name, help, label, values) in families {
            let mut f = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (v, n) in values {
                let labels = vec![(label, v)];
                ConstCounter::new(n).encode(f.encode_family(&labels)?)?;
            }
        }
        let singles = [
            (
                "dhcp_malformed_packets",
                "Packets that were not valid DHCP and were dropped.",
                &st.malformed,
            ),
            (
                "dhcp_rate_limited_packets",
                "Packets dropped by the per-MAC or per-relay rate limit.",
                &st.rate_limited,
            ),
            (
                "dhcp_persist_failures",
                "Leases that could not be made durable (no ACK was sent).",
                &st.persist_failed,
            ),
            (
                "dhcp_overloaded_packets",
                "Requests dropped because too many leases were waiting for the disk.",
                &st.overloaded,
            ),
        ];
        for (name, help, c) in singles {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(c.load(Ordering::Relaxed)).encode(m)?;
        }
        let pools = self.dhcp.pool_use();
        let mut used = encoder.encode_descriptor(
            "dhcp_pool_used",
            "Bound leases in each subnet's pools.",
            None,
            MetricType::Gauge,
        )?;
        for (subnet, bound, _) in &pools {
            let labels = vec![("subnet", subnet.as_str())];
            ConstGauge::new(*bound as i64).encode(used.encode_family(&labels)?)?;
        }
        let mut size = encoder.encode_descriptor(
            "dhcp_pool_size",
            "Addresses in each subnet's pools.",
            None,
            MetricType::Gauge,
        )?;
        for (subnet, _, n) in &pools {
            let labels = vec![("subnet", subnet.as_str())];
            ConstGauge::new(*n as i64).encode(size.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct RaCollector {
    ra: RaHandle,
}

impl Collector for RaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = &self.ra.stats;
        let mut sent = encoder.encode_descriptor(
            "ra_sent_packets",
            "IPv6 router advertisements sent on the provisioning segment: periodic (to all nodes) or in answer to router solicitations.",
            None,
            MetricType::Counter,
        )?;
        for (kind, c) in [("periodic", &st.periodic), ("solicited", &st.solicited)] {
            let labels = vec![("kind", kind)];
            ConstCounter::new(c.load(Ordering::Relaxed)).encode(sent.encode_family(&labels)?)?;
        }
        let mut rs = encoder.encode_descriptor(
            "ra_solicitations",
            "Router solicitations received, by outcome: answered (several retransmissions may share one answer), rate_limited, invalid (hop limit not 255, bad options).",
            None,
            MetricType::Counter,
        )?;
        for (outcome, c) in [
            ("answered", &st.answered),
            ("rate_limited", &st.rate_limited),
            ("invalid", &st.invalid),
        ] {
            let labels = vec![("outcome", outcome)];
            ConstCounter::new(c.load(Ordering::Relaxed)).encode(rs.encode_family(&labels)?)?;
        }
        let failed = encoder.encode_descriptor(
            "ra_send_failures",
            "Router advertisements the kernel would not send (no link-local address yet, interface down).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(st.send_failed.load(Ordering::Relaxed)).encode(failed)?;
        let active = encoder.encode_descriptor(
            "ra_advertising",
            "1 while router advertisements are sent on an interface (the DHCP mode is authoritative and the interface has a link-local address).",
            None,
            MetricType::Gauge,
        )?;
        let on = self
            .ra
            .advertising()
            .is_some_and(|a| a.link_local.is_some());
        ConstGauge::new(i64::from(on)).encode(active)?;
        Ok(())
    }
}

#[derive(Debug)]
struct TftpCollector {
    tftp: TftpHandle,
}

impl Collector for TftpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = &self.tftp.stats;
        let active = encoder.encode_descriptor(
            "tftp_active_transfers",
            "TFTP transfers in progress.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(st.active.load(Ordering::Acquire) as i64).encode(active)?;
        let counters = [
            ("tftp_started_transfers", "TFTP read requests accepted.", &st.started),
            ("tftp_completed_transfers", "TFTP transfers the client acknowledged to the end.", &st.completed),
            (
                "tftp_probe_transfers",
                "TFTP size probes: the client took the OACK (tsize) and ended with an ERROR before any data, as PXE ROMs do.",
                &st.probes,
            ),
            (
                "tftp_aborted_transfers",
                "TFTP transfers that ended early otherwise (client ERROR after data, client silent, server failure).",
                &st.aborted,
            ),
            ("tftp_refused_requests", "TFTP requests answered with an ERROR (malformed, mode mail, missing file, path outside the root, write, busy).", &st.refused),
            ("tftp_sent_bytes", "File bytes TFTP clients acknowledged.", &st.bytes_sent),
        ];
        for (name, help, c) in counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(c.load(Ordering::Relaxed)).encode(m)?;
        }
        Ok(())
    }
}
