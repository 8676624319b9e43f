//! Host networking of tenant networks: makes this host's bridges, VXLAN devices, FDB and
//! nftables match a [`cosm_wire::HostNetworks`], and says what it changed.
//!
//! The agent owns a [`SdnDriver`] and calls [`SdnDriver::reconcile`] with the networks the
//! appliance wants on this host; [`LinuxDriver`] does it with rtnetlink and `nft -j`, in the
//! calling process's network namespace (the agent runs under `ip netns exec` where needed).
//!
//! Design, and why:
//! - **One bridge per VNI** (`cbr<vni>`), with the network's VXLAN device (`cvx<vni>`) and
//!   its ports (`cp<mac>`) enslaved. This kernel has no VLAN filtering (`CONFIG_VLAN_8021Q`
//!   is unset), so a VLAN-aware bridge with VNI filtering is not an option.
//! - **Head-end replication**: each VXLAN device has one all-zero FDB entry per peer host, so
//!   broadcast and unknown unicast go to every host carrying the network; MAC learning stays
//!   on so that a remote MAC, and a migrated VM's announcement, land in the FDB.
//! - **Two nftables tables** (see [`ruleset`]): `bridge cosm` for what needs no state
//!   (anti-spoofing, isolation between networks — the bridge family has no conntrack here)
//!   and `inet cosm` for security groups, which need `ct state` and see bridged IPv4 through
//!   br_netfilter. Each is replaced whole in one `nft -j -f` transaction when it drifts.
//!
//! Architecture Invariant: only devices named `cbr*`, `cvx*` and `cp*`, the FDB entries
//! all-zero-with-a-destination on `cvx*`, and the two `cosm` tables are ever changed. A
//! pass that finds the host as desired writes nothing (no netlink write, no `nft` apply).
//! This crate knows nothing of the appliance or the agent's transport.

mod fdb;
mod links;
pub mod ruleset;

use cosm_wire::HostNetworks;
use std::net::Ipv4Addr;

/// The local VXLAN endpoint: this host's VTEP address and the data interface the VXLAN
/// devices ride on (their MTU follows it when given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub vtep: Ipv4Addr,
    pub dev: Option<String>,
}

/// A host networking driver: the Linux one, or a simulated one in tests of the agent.
#[async_trait::async_trait]
pub trait SdnDriver: Send + Sync {
    fn name(&self) -> &'static str;
    /// Makes the host match `desired`; returns one human sentence per change made (empty on
    /// a no-op pass), e.g. "created bridge cbr5", "repaired: FDB entry 00:00:00:00:00:00 dst
    /// 192.0.2.12 on cvx5 was missing", "nftables: rules replaced (drift: 3 rules missing)".
    async fn reconcile(&self, desired: &HostNetworks) -> Result<Vec<String>, SdnError>;
}

/// What failed, on which device or table.
#[derive(Debug, thiserror::Error)]
pub enum SdnError {
    #[error("cannot open a netlink route socket")]
    Connect(#[source] std::io::Error),
    #[error("LinuxDriver::new must be called inside a tokio runtime")]
    NoRuntime,
    #[error("the underlay device {dev} does not exist")]
    NoUnderlay { dev: String },
    #[error("desired networks refused: {0}")]
    Invalid(String),
    #[error("netlink: cannot {action} {device}")]
    Netlink {
        action: &'static str,
        device: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// `what` names the tables: "list table bridge cosm", "apply table inet cosm".
    #[error("nftables: cannot {what}: {message}")]
    Nft { what: String, message: String },
    #[error("nftables: cannot run nft")]
    NftSpawn {
        #[source]
        source: std::io::Error,
    },
}

/// The Linux driver: rtnetlink for links and FDB, the `nft` binary (JSON) for rules.
#[derive(Debug)]
pub struct LinuxDriver {
    underlay: Underlay,
    handle: rtnetlink::Handle,
    /// One pass at a time: two concurrent passes would race on the same devices.
    pass: tokio::sync::Mutex<()>,
}

impl LinuxDriver {
    /// Opens a netlink socket in the current network namespace; the connection task runs on
    /// the current tokio runtime.
    pub fn new(underlay: Underlay) -> Result<Self, SdnError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SdnError::NoRuntime)?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(SdnError::Connect)?;
        runtime.spawn(connection);
        Ok(LinuxDriver {
            underlay,
            handle,
            pass: tokio::sync::Mutex::new(()),
        })
    }
}

#[async_trait::async_trait]
impl SdnDriver for LinuxDriver {
    fn name(&self) -> &'static str {
        "linux"
    }

    async fn reconcile(&self, desired: &HostNetworks) -> Result<Vec<String>, SdnError> {
        let _pass = self.pass.lock().await;
        validate(desired)?;
        let mut changes = Vec::new();
        let vxlans = links::reconcile(&self.handle, &self.underlay, desired, &mut changes).await?;
        fdb::reconcile(&self.handle, desired, &vxlans, &mut changes).await?;
        nft_reconcile(desired, &mut changes).await?;
        Ok(changes)
    }
}

/// Refuses a desired state the driver cannot make without touching what is not its own.
fn validate(desired: &HostNetworks) -> Result<(), SdnError> {
    let mut vnis = std::collections::BTreeSet::new();
    for n in &desired.networks {
        if !(1..=cosm_wire::MAX_VNI).contains(&n.vni) {
            return Err(SdnError::Invalid(format!(
                "network {} has VNI {}",
                n.name, n.vni
            )));
        }
        if !vnis.insert(n.vni) {
            return Err(SdnError::Invalid(format!("VNI {} appears twice", n.vni)));
        }
    }
    for p in &desired.ports {
        if p.device != cosm_wire::port_device(&p.mac) {
            return Err(SdnError::Invalid(format!(
                "port {} has device {:?}, not {:?}",
                p.mac,
                p.device,
                cosm_wire::port_device(&p.mac)
            )));
        }
        if !vnis.contains(&p.vni) {
            return Err(SdnError::Invalid(format!(
                "port {} is on VNI {}, which is not among the networks",
                p.device, p.vni
            )));
        }
    }
    Ok(())
}

/// Lists both COSM tables, and replaces those that drifted in one `nft -j -f` transaction.
async fn nft_reconcile(desired: &HostNetworks, changes: &mut Vec<String>) -> Result<(), SdnError> {
    let mut commands = Vec::new();
    let mut messages = Vec::new();
    let mut replaced = Vec::new();
    for table in ruleset::tables(desired) {
        let family = table.family_name();
        let listed = match nft(&["-j", "list", "table", family, ruleset::TABLE], None).await {
            Ok(out) => Some(serde_json::from_str(&out).map_err(|e| SdnError::Nft {
                what: format!("parse the listing of table {family} {}", ruleset::TABLE),
                message: e.to_string(),
            })?),
            Err(NftFailure::Failed(stderr)) if stderr.contains("No such file or directory") => None,
            Err(e) => return Err(e.into_error(format!("list table {family} {}", ruleset::TABLE))),
        };
        if let Some(drift) = ruleset::drift(&table, listed.as_ref()) {
            messages.push(match listed {
                None => format!("nftables: created table {}", ruleset::summary(&table)),
                Some(_) => format!(
                    "nftables: table {family} {} replaced (drift: {drift})",
                    ruleset::TABLE
                ),
            });
            commands.extend(table.replace_commands());
            replaced.push(format!("table {family} {}", ruleset::TABLE));
        }
    }
    if commands.is_empty() {
        return Ok(());
    }
    let doc = nftables::schema::Nftables {
        objects: commands.into(),
    };
    let json = serde_json::to_string(&doc).expect("the ruleset serialises");
    nft(&["-j", "-f", "-"], Some(json))
        .await
        .map_err(|e| e.into_error(format!("apply {}", replaced.join(" and "))))?;
    changes.extend(messages);
    Ok(())
}

enum NftFailure {
    Spawn(std::io::Error),
    Failed(String),
}

impl NftFailure {
    fn into_error(self, what: String) -> SdnError {
        match self {
            NftFailure::Spawn(source) => SdnError::NftSpawn { source },
            NftFailure::Failed(stderr) => SdnError::Nft {
                what,
                message: stderr.trim().to_string(),
            },
        }
    }
}

/// Runs `nft` with `args` (and `stdin`), returning its standard output. The nftables crate's
/// helpers do the same but let nft's error message go to our standard error, where the
/// agent's report would not see it.
async fn nft(args: &[&str], stdin: Option<String>) -> Result<String, NftFailure> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftFailure::Spawn)?;
    let mut input = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        input
            .write_all(text.as_bytes())
            .await
            .map_err(NftFailure::Spawn)?;
    }
    drop(input);
    let out = child.wait_with_output().await.map_err(NftFailure::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftFailure::Failed(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_wire::{HostNetwork, HostPort, MacAddr};

    #[test]
    fn a_desired_state_that_would_touch_foreign_devices_is_refused() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let mut d = HostNetworks {
            networks: vec![HostNetwork {
                name: "blue".parse().unwrap(),
                vni: 5,
                cidr: "198.51.100.0/24".parse().unwrap(),
                mtu: 1450,
                peers: vec![],
            }],
            ports: vec![HostPort {
                vni: 5,
                device: cosm_wire::port_device(&mac),
                mac,
                ip: Ipv4Addr::new(198, 51, 100, 2),
                secured: false,
                rules: vec![],
            }],
            groups: vec![],
        };
        assert!(validate(&d).is_ok());
        d.ports[0].device = "eth0".into();
        let e = validate(&d).unwrap_err().to_string();
        assert!(
            e.contains("\"eth0\"") && e.contains("cp525400000001"),
            "{e}"
        );
        d.ports[0].device = cosm_wire::port_device(&mac);
        d.ports[0].vni = 6;
        assert!(validate(&d).unwrap_err().to_string().contains("VNI 6"));
        d.ports.clear();
        d.networks.push(d.networks[0].clone());
        assert!(validate(&d)
            .unwrap_err()
            .to_string()
            .contains("VNI 5 appears twice"));
    }
}
