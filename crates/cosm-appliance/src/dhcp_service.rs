//! Runs the netboot DHCP server inside the appliance: leases become durable through the
//! store (grouped commits), known machines and their reservations come from the store,
//! and each machine's DHCP steps land on its timeline. Beside it, while the DHCP mode in
//! force is authoritative and `dhcp.router_advertisements` is on, netboot's IPv6 router
//! advertisement sender on the same segment (`dhcp.interface`, or the interface holding
//! the server address).

use crate::app::timeline::Timeline;
use crate::app::{Op, Store};
use crate::config::DhcpSettings;
use crate::store::StoreError;
use cosm_netboot::dhcp::server::{self, DhcpHandle, LeaseSink, Listen};
use cosm_netboot::dhcp::{DhcpConfig, Host, Hosts, Mode};
use cosm_netboot::ra::{self, schedule::Timing, RaHandle, RaObserver, Segment};
use cosm_wire::{EventKind, Lease, MacAddr};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug)]
struct StoreSink {
    store: Store,
    hosts: watch::Receiver<Arc<Hosts>>,
    timeline: Arc<Timeline>,
    /// Machines this sink is recording, until the hosts list has them.
    created: Arc<Mutex<HashSet<MacAddr>>>,
    /// At most this many machines known to DHCP alone (`dhcp.max_unknown_leases`).
    max_dhcp_only: usize,
}

impl LeaseSink for StoreSink {
    async fn persist(&self, lease: Lease) -> Result<(), String> {
        self.store
            .run(Op::PutLease(lease))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn note(&self, mac: MacAddr, step: &str) {
        // Most DHCP traffic is from machines the store does not know; skip those before
        // the timeline's own lookup.
        if self.hosts.borrow().is_known(&mac) || self.lock_created().contains(&mac) {
            self.timeline.note(mac, EventKind::Dhcp, step.to_string());
        }
    }

    fn boot_client(&self, mac: MacAddr, how: &str, step: &str) -> bool {
        if self.hosts.borrow().is_known(&mac) {
            return false;
        }
        {
            let mut created = self.lock_created();
            if created.contains(&mac) {
                return false;
            }
            // Machines DHCP alone recorded are capped like the addresses unknown MACs hold:
            // otherwise random MACs that look like PXE firmware fill the store.
            let held = self.hosts.borrow().dhcp_only() + created.len();
            if held >= self.max_dhcp_only {
                tracing::debug!(%mac, held, "new network-booting MAC not recorded: dhcp.max_unknown_leases machines are known to DHCP alone");
                return false;
            }
            created.insert(mac);
        }
        tracing::info!(%mac, how, "new machine network-booting; recorded as discovered");
        let store = self.store.clone();
        let step = step.to_string();
        let hosts = self.hosts.clone();
        let created = self.created.clone();
        tokio::spawn(async move {
            match store.run(Op::DhcpDiscovered { mac, step }).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => tracing::warn!(error = %e, %mac, "cannot record a new machine"),
            }
            // Pending until the hosts list has it (it is reloaded after the commit).
            let mut hosts = hosts;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !hosts.borrow_and_update().is_known(&mac) {
                    if hosts.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
            created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&mac);
        });
        true
    }
}

impl StoreSink {
    fn lock_created(&self) -> std::sync::MutexGuard<'_, HashSet<MacAddr>> {
        self.created.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn hosts_of(store: &Store) -> Hosts {
    match store.machines(None, None) {
        Ok(ms) => Hosts::new(ms.into_iter().map(|m| {
            (
                m.mac,
                Host {
                    dhcp_only: crate::app::dhcp_only(&m),
                    reserved_ip: m.reserved_ip,
                    hostname: m.hostname,
                },
            )
        })),
        Err(e) => {
            tracing::error!(error = %e, "cannot read machines for DHCP; serving with none known");
            Hosts::default()
        }
    }
}

/// Deletes machines DHCP alone knows once they are `expiry` old, checking every
/// `expiry / 4` (at least a second, at most a minute); runs until aborted.
async fn expire_dhcp_only(store: Store, expiry: std::time::Duration) {
    let tick = (expiry / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        let cutoff = cosm_wire::Timestamp::from_millis(
            cosm_wire::Timestamp::now()
                .as_millis()
                .saturating_sub(expiry.as_millis() as u64),
        );
        match store.run(Op::ExpireDhcpOnly { cutoff }).await {
            Ok(crate::app::Outcome::Removed(0)) => {}
            Ok(crate::app::Outcome::Removed(n)) => tracing::info!(
                machines = n,
                expiry_secs = expiry.as_secs(),
                "expired machines DHCP alone had recorded (never registered or enrolled)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot expire machines DHCP alone recorded"),
        }
    }
}

/// Puts each answer to a machine's router solicitation on its timeline: the step that
/// ends its firmware's wait for IPv6 autoconfiguration.
#[derive(Debug)]
struct RaTimeline {
    timeline: Arc<Timeline>,
    hosts: watch::Receiver<Arc<Hosts>>,
}

/// The timeline line of an answered router solicitation.
pub const RA_ANSWERED: &str =
    "router advertisement sent in answer to its IPv6 router solicitation (not a default router, no prefix)";

impl RaObserver for RaTimeline {
    fn answered(&self, mac: MacAddr) {
        let timeline = self.timeline.clone();
        let mut hosts = self.hosts.clone();
        // Firmware solicits a router as it sends its first DISCOVER, which is what records
        // a new machine; the answer can leave before that record exists. Wait for it, a
        // little (answers are rate-limited, so these waits are few).
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !hosts.borrow_and_update().is_known(&mac) {
                    if hosts.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
            timeline.note(mac, EventKind::Dhcp, RA_ANSWERED.to_string());
        });
    }
}

/// Where router advertisements go under a DHCP config: the DHCP segment while the mode
/// is authoritative (in proxy mode another server owns the segment), nowhere otherwise.
fn ra_segment(cfg: &DhcpConfig, listen: &Listen) -> Option<Segment> {
    (cfg.mode == Mode::Authoritative).then(|| match &listen.interface {
        Some(name) => Segment::Interface(name.clone()),
        None => Segment::HoldingAddress(cfg.server_id),
    })
}

/// Points the router-advertisement sender at what the DHCP config in force says.
fn steer_ra(ra: Option<&watch::Sender<Option<Segment>>>, cfg: &DhcpConfig, listen: &Listen) {
    let Some(tx) = ra else { return };
    let want = ra_segment(cfg, listen);
    tx.send_if_modified(|now| {
        if *now == want {
            return false;
        }
        match &want {
            None => tracing::info!(mode = %cfg.mode, "router advertisements paused: the DHCP mode is not authoritative"),
            Some(seg) if now.is_none() => tracing::info!(segment = %seg, "router advertisements resumed: the DHCP mode is authoritative"),
            Some(seg) => tracing::info!(segment = %seg, "router advertisements move"),
        }
        *now = want.clone();
        true
    });
}

/// Puts the provisioning network of the site settings in force whenever they change:
/// the server reloads its subnet, pool, options and mode without a restart, and router
/// advertisements follow the mode.
async fn follow_settings(
    handle: DhcpHandle,
    base: DhcpConfig,
    listen: Listen,
    mut settings: watch::Receiver<cosm_wire::Settings>,
    ra: Option<watch::Sender<Option<Segment>>>,
) {
    let mut first = true;
    loop {
        if !first && settings.changed().await.is_err() {
            return;
        }
        first = false;
        let Some(n) = settings.borrow_and_update().network.clone() else {
            continue;
        };
        let new = crate::app::settings::dhcp_config(&base, &n);
        if *handle.config() != new {
            let call = handle.reconfigure(new, &listen);
            match tokio::time::timeout(std::time::Duration::from_secs(10), call).await {
                Ok(Ok(report)) => tracing::info!(
                    mode = %report.new_mode,
                    changes = ?report.changes,
                    leases_outside = report.pools.leases_outside.len(),
                    "DHCP reloaded with the site settings"
                ),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "DHCP kept its configuration: the site settings could not be applied")
                }
                Err(_) => tracing::error!("DHCP did not take the site settings within 10 s"),
            }
        }
        steer_ra(ra.as_ref(), &handle.config(), &listen);
    }
}

/// What [`start`] started.
#[derive(Debug)]
pub struct DhcpService<F> {
    pub dhcp: DhcpHandle,
    /// The router-advertisement sender, when `dhcp.router_advertisements` is on.
    pub ra: Option<RaHandle>,
    /// Serves both until `shutdown` changes.
    pub serve: F,
}

/// Starts DHCP (and router advertisements when on); the returned future serves until
/// `shutdown` changes. `site` is the site settings in force: their provisioning network is
/// applied at start and on every change.
pub async fn start(
    settings: DhcpSettings,
    store: Store,
    timeline: Arc<Timeline>,
    shutdown: watch::Receiver<bool>,
    site: watch::Receiver<cosm_wire::Settings>,
) -> anyhow::Result<DhcpService<impl std::future::Future<Output = ()>>> {
    let leases = store.leases()?;
    let (hosts_tx, hosts_rx) = watch::channel(Arc::new(hosts_of(&store)));
    // Reload known machines whenever a commit wrote machine records (the change feed
    // counts the commits per table, from the writes themselves).
    let mut changes = store.changes();
    let mut seen = changes.borrow().machines;
    let refresher_store = store.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let now = changes.borrow_and_update().machines;
            if now == seen {
                continue;
            }
            seen = now;
            let hosts = hosts_of(&refresher_store);
            if hosts_tx.send(Arc::new(hosts)).is_err() {
                break;
            }
        }
    });
    if let Some(expiry) = settings.discovered_expiry {
        tokio::spawn(expire_dhcp_only(store.clone(), expiry));
    }
    let ra_timeline = RaTimeline {
        timeline: timeline.clone(),
        hosts: hosts_rx.clone(),
    };
    let sink = Arc::new(StoreSink {
        store,
        hosts: hosts_rx.clone(),
        timeline,
        created: Arc::default(),
        max_dhcp_only: settings.core.max_unknown_leases,
    });
    let n = leases.len();
    let mode = settings.core.mode;
    let base = settings.core.clone();
    let (handle, serve) = server::start(
        settings.core,
        settings.listen.clone(),
        leases,
        hosts_rx,
        sink,
        shutdown.clone(),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for DHCP on dhcp.listen = {}: {e}",
            settings.listen.addr
        )
    })?;
    tracing::info!(addr = %handle.local_addr, mode = ?mode, leases = n, interface = ?settings.listen.interface, "DHCP listening");
    // Router advertisements: the sender follows the segment the DHCP config in force names
    // (none while the mode is not authoritative); it logs where it advertises, or why not.
    let (ra_tx, ra_handle, ra_serve) = if settings.router_advertisements {
        let (tx, rx) = watch::channel(None);
        let (ra_handle, ra_serve) =
            ra::start(rx, Timing::PROVISIONING, Arc::new(ra_timeline), shutdown);
        steer_ra(Some(&tx), &handle.config(), &settings.listen);
        (Some(tx), Some(ra_handle), Some(ra_serve))
    } else {
        tracing::info!(
            "router advertisements off (dhcp.router_advertisements = false, or proxy mode)"
        );
        (None, None, None)
    };
    tokio::spawn(follow_settings(
        handle.clone(),
        base,
        settings.listen.clone(),
        site,
        ra_tx,
    ));
    let serve = async move {
        match ra_serve {
            Some(ra_serve) => {
                tokio::join!(serve, ra_serve);
            }
            None => serve.await,
        }
    };
    Ok(DhcpService {
        dhcp: handle,
        ra: ra_handle,
        serve,
    })
}
