//! The seam between the VM controller ([`crate::vms`]) and this host's tenant networking
//! (issue 14): bridges `cbr<vni>`, VXLAN devices `cvx<vni>` with their FDB entries towards
//! the other hosts' VTEPs, and the port rules, as `DesiredState::networks` asks.
//!
//! The VM controller holds one [`NetReconciler`] and calls it at the start of every pass
//! (before any domain is defined or started, since a domain cannot start on a bridge that
//! does not exist, and every pass even when nothing changed, so that a bridge, FDB entry or
//! rule deleted by hand comes back within one interval). What it changed and what failed is
//! kept in a [`NetBook`] until a report carries it (`VmReport::network`).
//!
//! **The SDN driver.** [`reconciler`] is the one place that picks the implementation: on a
//! host with `--vtep-ip` it is `cosm-sdn`'s `LinuxDriver` ([`Sdn`]; async, so it runs on a
//! current-thread runtime of its own that the VM controller's thread blocks on). The agent
//! built without the `libvirt` feature (the ramdisk's) has no driver and says so.
//!
//! What it must not do: touch host networking when `DesiredState::networks` is `None` (the
//! controller then never calls the reconciler), or stop the VM controller's pass when it
//! fails (the error is reported and the VMs are reconciled all the same).

use cosm_wire::{HostNetworks, NetReport};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Makes this host's tenant networking match `desired`. Synchronous: it runs on the VM
/// controller's thread, at the start of each pass.
pub trait NetReconciler: Send {
    /// Converges, returning one sentence per change made (creations, removals, repairs of
    /// drift); none when everything already matched. An error is one line, causes
    /// included.
    fn reconcile(&mut self, desired: &HostNetworks) -> Result<Vec<String>, String>;
}

/// Picks the reconciler of this agent: [`NoVtep`] without `--vtep-ip`, [`SimNetwork`] for
/// a simulated hypervisor (`--simulate-vms` must not change the real host's networking),
/// else the SDN driver ([`Sdn`], or [`Unwired`] in an agent built without it).
pub fn reconciler(
    vtep: Option<Ipv4Addr>,
    dev: Option<String>,
    simulated: bool,
) -> anyhow::Result<Box<dyn NetReconciler>> {
    Ok(match vtep {
        None => Box::new(NoVtep),
        Some(_) if simulated => Box::new(SimNetwork::default()),
        #[cfg(feature = "libvirt")]
        Some(vtep) => Box::new(Sdn::new(vtep, dev)?),
        #[cfg(not(feature = "libvirt"))]
        Some(vtep) => Box::new(Unwired { vtep, dev }),
    })
}

/// `cosm_sdn::LinuxDriver` behind the synchronous seam: the VM controller's thread blocks
/// on each reconcile in a runtime of its own.
#[cfg(feature = "libvirt")]
pub struct Sdn {
    driver: cosm_sdn::LinuxDriver,
    rt: tokio::runtime::Runtime,
}

#[cfg(feature = "libvirt")]
impl std::fmt::Debug for Sdn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sdn(cosm-sdn LinuxDriver)")
    }
}

#[cfg(feature = "libvirt")]
impl Sdn {
    pub fn new(vtep: Ipv4Addr, dev: Option<String>) -> anyhow::Result<Sdn> {
        use anyhow::Context;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the network driver's runtime")?;
        let driver = rt
            .block_on(async { cosm_sdn::LinuxDriver::new(cosm_sdn::Underlay { vtep, dev }) })
            .context("cannot start the tenant-network driver (--vtep-ip/--vtep-dev)")?;
        Ok(Sdn { driver, rt })
    }
}

#[cfg(feature = "libvirt")]
impl NetReconciler for Sdn {
    fn reconcile(&mut self, desired: &HostNetworks) -> Result<Vec<String>, String> {
        use cosm_sdn::SdnDriver as _;
        self.rt
            .block_on(self.driver.reconcile(desired))
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
    }
}

fn nothing_asked(desired: &HostNetworks) -> bool {
    desired.networks.is_empty() && desired.ports.is_empty()
}

/// The reconciler of a host without a VXLAN endpoint (`--vtep-ip`): it can carry no
/// tenant network, and says so when it is asked to.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVtep;

impl NetReconciler for NoVtep {
    fn reconcile(&mut self, desired: &HostNetworks) -> Result<Vec<String>, String> {
        if nothing_asked(desired) {
            return Ok(Vec::new());
        }
        Err(format!(
            "this host is asked to carry {} tenant network(s) and {} port(s) but has no VXLAN \
             endpoint: start cosm-agent with --vtep-ip <this host's address on the data \
             network> (and --vtep-dev <its interface>), or vtep_ip in the config file",
            desired.networks.len(),
            desired.ports.len()
        ))
    }
}

/// Stands in for the `cosm-sdn` Linux driver in an agent built without it (the ramdisk's).
#[derive(Debug, Clone)]
pub struct Unwired {
    pub vtep: Ipv4Addr,
    pub dev: Option<String>,
}

impl NetReconciler for Unwired {
    fn reconcile(&mut self, desired: &HostNetworks) -> Result<Vec<String>, String> {
        if nothing_asked(desired) {
            return Ok(Vec::new());
        }
        Err(format!(
            "this cosm-agent was built without the tenant-network driver (the libvirt \
             feature): cannot make the tenant networks asked for on VTEP {}",
            self.vtep
        ))
    }
}

/// Tenant networking in memory, for simulated hosts: remembers the bridges, VXLAN peers
/// and ports it "made" and names each difference as the Linux driver would.
#[derive(Debug, Clone, Default)]
pub struct SimNetwork {
    /// (bridge, VXLAN peer or none), ports' devices.
    made: BTreeSet<(String, Option<Ipv4Addr>)>,
    ports: BTreeSet<String>,
}

impl NetReconciler for SimNetwork {
    fn reconcile(&mut self, desired: &HostNetworks) -> Result<Vec<String>, String> {
        let mut want = BTreeSet::new();
        for n in &desired.networks {
            let bridge = cosm_wire::bridge_name(n.vni);
            want.insert((bridge.clone(), None));
            want.extend(n.peers.iter().map(|p| (bridge.clone(), Some(*p))));
        }
        let ports: BTreeSet<String> = desired.ports.iter().map(|p| p.device.clone()).collect();
        let say = |(bridge, peer): &(String, Option<Ipv4Addr>), verb: &str| match peer {
            None => format!("{verb} bridge {bridge} (simulated)"),
            Some(p) => format!("{verb} the VXLAN peer {p} of {bridge} (simulated)"),
        };
        let mut changes: Vec<String> = want
            .difference(&self.made)
            .map(|m| say(m, "made"))
            .chain(self.made.difference(&want).map(|m| say(m, "removed")))
            .collect();
        changes.extend(
            ports
                .difference(&self.ports)
                .map(|d| format!("wired port {d} (simulated)")),
        );
        changes.extend(
            self.ports
                .difference(&ports)
                .map(|d| format!("unwired port {d} (simulated)")),
        );
        self.made = want;
        self.ports = ports;
        Ok(changes)
    }
}

/// The most changes one report carries; more are counted, not listed (the agent's log has
/// each one).
pub const MAX_REPORTED_CHANGES: usize = 100;

/// What the network reconciles did since the last accepted report.
///
/// Changes accumulate until a report is accepted. An error is reported once when it
/// appears or changes, not at every pass it repeats (it would otherwise fill the host's
/// timeline every few seconds); a successful pass re-arms it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetBook {
    changes: Vec<String>,
    /// Changes beyond `MAX_REPORTED_CHANGES`.
    more: usize,
    error: Option<String>,
    /// The error of the last reconcile, if it failed (reported or not).
    failing: Option<String>,
    /// The VNIs up after the last pass; in every report while there are any.
    ready: Vec<u32>,
}

/// What [`NetBook::record`] found worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    Quiet,
    /// A new error (not the one the previous pass had).
    NewError(String),
    /// The previous pass failed, this one did not.
    Recovered,
}

impl NetBook {
    /// Takes one reconcile's outcome.
    pub fn record(&mut self, outcome: Result<Vec<String>, String>) -> Logged {
        match outcome {
            Ok(changes) => {
                for c in changes {
                    if self.changes.len() < MAX_REPORTED_CHANGES {
                        self.changes.push(c);
                    } else {
                        self.more += 1;
                    }
                }
                match self.failing.take() {
                    Some(_) => Logged::Recovered,
                    None => Logged::Quiet,
                }
            }
            Err(e) if self.failing.as_ref() == Some(&e) => Logged::Quiet,
            Err(e) => {
                self.failing = Some(e.clone());
                self.error = Some(e.clone());
                Logged::NewError(e)
            }
        }
    }

    /// The networks up after the last pass.
    pub fn set_ready(&mut self, ready: Vec<u32>) {
        self.ready = ready;
    }

    /// What the next report says (`VmReport::network`); `None` when there is nothing new
    /// and no network is up.
    pub fn pending(&self) -> Option<NetReport> {
        if self.changes.is_empty() && self.error.is_none() && self.ready.is_empty() {
            return None;
        }
        let mut changes = self.changes.clone();
        if self.more > 0 {
            changes.push(format!(
                "and {} more changes (see the agent's log)",
                self.more
            ));
        }
        Some(NetReport {
            changes,
            error: self.error.clone(),
            ready: self.ready.clone(),
        })
    }

    /// A report carrying [`NetBook::pending`] was accepted: forget what it said.
    pub fn reported(&mut self) {
        self.changes.clear();
        self.more = 0;
        self.error = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_wire::{HostNetwork, HostPort};

    fn asked() -> HostNetworks {
        let mac: cosm_wire::MacAddr = "52:54:00:00:00:07".parse().unwrap();
        HostNetworks {
            networks: vec![HostNetwork {
                name: "t".parse().unwrap(),
                vni: 7,
                cidr: "10.20.0.0/24".parse().unwrap(),
                mtu: 1450,
                peers: vec![Ipv4Addr::new(192, 0, 2, 12)],
            }],
            ports: vec![HostPort {
                vni: 7,
                device: cosm_wire::port_device(&mac),
                mac,
                ip: Ipv4Addr::new(10, 20, 0, 2),
                secured: false,
                rules: Vec::new(),
            }],
            groups: Vec::new(),
        }
    }

    #[test]
    fn without_a_vtep_nothing_asked_is_fine_and_anything_asked_says_to_set_one() {
        let mut r = reconciler(None, None, false).unwrap();
        assert_eq!(r.reconcile(&HostNetworks::default()), Ok(vec![]));
        let e = r.reconcile(&asked()).unwrap_err();
        assert!(e.contains("--vtep-ip"), "{e}");
    }

    #[test]
    fn the_simulation_names_what_it_makes_and_removes_and_then_is_quiet() {
        let mut r = reconciler(Some(Ipv4Addr::new(192, 0, 2, 11)), None, true).unwrap();
        assert_eq!(
            r.reconcile(&asked()).unwrap(),
            [
                "made bridge cbr7 (simulated)",
                "made the VXLAN peer 192.0.2.12 of cbr7 (simulated)",
                "wired port cp525400000007 (simulated)"
            ]
        );
        assert_eq!(r.reconcile(&asked()), Ok(vec![]));
        assert_eq!(r.reconcile(&HostNetworks::default()).unwrap().len(), 3);
    }

    #[test]
    fn changes_wait_for_an_accepted_report_and_an_error_is_reported_once() {
        let mut book = NetBook::default();
        assert_eq!(book.record(Ok(vec![])), Logged::Quiet);
        assert_eq!(book.pending(), None, "a no-op pass has nothing to say");

        book.record(Ok(vec!["made bridge cbr7".into()]));
        book.record(Ok(vec!["added FDB entry".into()]));
        let p = book.pending().unwrap();
        assert_eq!(p.changes, ["made bridge cbr7", "added FDB entry"]);
        assert_eq!(p.error, None);
        // A refused report: nothing is lost.
        assert_eq!(book.pending(), Some(p));
        book.reported();
        assert_eq!(book.pending(), None);

        // The same error at every pass is reported once, and logged once.
        assert_eq!(
            book.record(Err("nft: boom".into())),
            Logged::NewError("nft: boom".into())
        );
        assert_eq!(book.record(Err("nft: boom".into())), Logged::Quiet);
        assert_eq!(book.pending().unwrap().error.as_deref(), Some("nft: boom"));
        book.reported();
        assert_eq!(book.record(Err("nft: boom".into())), Logged::Quiet);
        assert_eq!(book.pending(), None);
        // A different one is news; so is the same one after a pass that worked.
        assert!(matches!(
            book.record(Err("ip: gone".into())),
            Logged::NewError(_)
        ));
        assert_eq!(book.record(Ok(vec!["repaired".into()])), Logged::Recovered);
        let p = book.pending().unwrap();
        assert_eq!(
            (p.changes, p.error.as_deref()),
            (vec!["repaired".to_string()], Some("ip: gone"))
        );
        book.reported();
        assert!(matches!(
            book.record(Err("ip: gone".into())),
            Logged::NewError(_)
        ));
    }

    #[test]
    fn a_flood_of_changes_is_counted_not_listed() {
        let mut book = NetBook::default();
        book.record(Ok((0..MAX_REPORTED_CHANGES + 5)
            .map(|i| format!("change {i}"))
            .collect()));
        let p = book.pending().unwrap();
        assert_eq!(p.changes.len(), MAX_REPORTED_CHANGES + 1);
        assert_eq!(
            p.changes.last().unwrap(),
            "and 5 more changes (see the agent's log)"
        );
    }
}
