//! Virtual machines: what an operator asks for (`CreateVm`), what the appliance keeps
//! (`Vm`, its `VmState` and timeline), what a host's agent is told (`DesiredVm` in its
//! desired state) and what it reports back (`VmReport`).
//!
//! The appliance keeps the desired state of every VM and places it on a host; the agent on
//! that host makes libvirt match and reports the domains it really has. One-off operations
//! (reboot, snapshots, migration) are queued on the VM as `VmOp`s with ids, like machine
//! actions, and the agent reports each one's outcome once.

use crate::{MacAddr, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// Why a VM, snapshot or bridge name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "{what} {value:?} may only hold ASCII letters, digits, '-', '_' and '.', and must start \
         with a letter or digit"
    )]
    BadName { what: &'static str, value: String },
}

/// Names of VMs, snapshots and bridges: `[A-Za-z0-9][A-Za-z0-9._-]*`, so they are safe as
/// libvirt names, file names, URL path segments and shell words.
fn check_name(what: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > max {
        return Err(NameError::TooLong {
            what,
            value: value.to_string(),
            max,
        });
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) || !value.chars().all(ok_char) {
        return Err(NameError::BadName {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

macro_rules! checked_name {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $max:literal, $pattern:literal, $example:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            pub fn new(value: &str) -> Result<Self, NameError> {
                check_name($what, value, $max)?;
                Ok($ty(value.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $ty::new(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .examples([serde_json::json!($example)])
                    .description(Some(concat!("A ", $what, ".")))
                    .into()
            }
        }

        impl ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($ty))
            }
        }
    };
}

checked_name!(
    /// A VM's name (its libvirt domain name), at most 64 characters; unique in the appliance.
    VmName,
    "VM name",
    64,
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "web-01"
);
checked_name!(
    /// A snapshot's name, at most 64 characters.
    SnapshotName,
    "snapshot name",
    64,
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "before-upgrade"
);
checked_name!(
    /// A Linux bridge's interface name (at most 15 characters, IFNAMSIZ - 1).
    BridgeName,
    "bridge name",
    15,
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$",
    "br0"
);
checked_name!(
    /// A tenant network's name (issue 14), at most 32 characters; unique in the appliance.
    NetworkName,
    "network name",
    32,
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$",
    "tenant-a"
);
checked_name!(
    /// A security group's name (issue 14), at most 32 characters.
    SecGroupName,
    "security group name",
    32,
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$",
    "ssh-only"
);

/// Which hypervisor and guest type a VM is for. One spec renders to either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmKind {
    /// QEMU with KVM acceleration (`<domain type='kvm'>`).
    #[default]
    Kvm,
    /// QEMU without acceleration (`<domain type='qemu'>`): slow, but runs anywhere.
    Tcg,
    /// A Xen paravirtualised guest; needs a direct kernel boot.
    XenPv,
    /// A Xen fully virtualised guest.
    XenHvm,
}

impl VmKind {
    pub fn is_xen(self) -> bool {
        matches!(self, VmKind::XenPv | VmKind::XenHvm)
    }
}

impl fmt::Display for VmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmKind::Kvm => "KVM",
            VmKind::Tcg => "QEMU TCG",
            VmKind::XenPv => "Xen PV",
            VmKind::XenHvm => "Xen HVM",
        })
    }
}

/// A VM's lifecycle state in the appliance.
///
/// `pending` (recorded, no host yet) → `scheduled` (placed; the host's agent is making it)
/// → `running` / `stopped` (as its agent reports); `migrating` while a live migration runs;
/// `failed` when its agent could not make it (the message says why; start or delete it);
/// `deleting` until the agent reports the domain gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Pending,
    Scheduled,
    Running,
    Stopped,
    Migrating,
    Failed,
    Deleting,
}

impl VmState {
    pub const ALL: [VmState; 7] = [
        VmState::Pending,
        VmState::Scheduled,
        VmState::Running,
        VmState::Stopped,
        VmState::Migrating,
        VmState::Failed,
        VmState::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Pending => "pending",
            VmState::Scheduled => "scheduled",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Migrating => "migrating",
            VmState::Failed => "failed",
            VmState::Deleting => "deleting",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The power state an operator wants a VM in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerWanted {
    Running,
    Stopped,
}

/// Where a disk's content comes from, as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskRequest {
    /// An empty disk of this many bytes.
    Blank { size_bytes: u64 },
    /// A copy-on-write overlay of a qcow2 (or raw) file of the image repository, by name.
    Image { image: String },
}

/// A disk as recorded: images are pinned by sha256 when the VM is created, so a later
/// upload under the same name never changes what a host downloads for this VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmDisk {
    Blank { size_bytes: u64 },
    Image { image: String, sha256: String },
}

/// A file of the image repository pinned by content (a kernel, an initrd, a disk base).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageRef {
    pub image: String,
    pub sha256: String,
}

/// A NIC as asked for: either on a host bridge (`bridge`) or on a tenant network
/// (`network`, issue 14: the NIC becomes a port with an address from the network's IPAM and
/// the port's security groups). Without a MAC, the appliance picks one (52:54:00 prefix,
/// unique among its VMs and ports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicRequest {
    #[serde(default)]
    pub bridge: Option<BridgeName>,
    #[serde(default)]
    pub network: Option<NetworkName>,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Tenant networks only: a fixed address instead of the lowest free one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Tenant networks only: the port's security groups (none: all traffic allowed; the
    /// port still sends only from its own MAC and address).
    #[serde(default)]
    pub security_groups: Vec<SecGroupName>,
}

impl NicRequest {
    pub fn on_bridge(bridge: BridgeName) -> Self {
        NicRequest {
            bridge: Some(bridge),
            ..Default::default()
        }
    }

    pub fn on_network(network: NetworkName) -> Self {
        NicRequest {
            network: Some(network),
            ..Default::default()
        }
    }
}

/// A NIC as recorded. On a tenant network, `bridge` is that network's bridge on every host
/// (`bridge_name(vni)`), the host-side device is `port_device(mac)`, and `network`, `ip`
/// and `mtu` are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmNic {
    pub bridge: BridgeName,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ip: Option<std::net::Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

impl VmNic {
    pub fn on_bridge(bridge: BridgeName, mac: MacAddr) -> Self {
        VmNic {
            bridge,
            mac,
            network: None,
            ip: None,
            mtu: None,
        }
    }
}

/// A direct kernel boot, as asked for: kernel and initrd are image repository names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootRequest {
    pub kernel: String,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: String,
}

/// A direct kernel boot as recorded, its files pinned by sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmBoot {
    pub kernel: ImageRef,
    #[serde(default)]
    pub initrd: Option<ImageRef>,
    pub cmdline: String,
}

/// Seconds a stop waits for the guest to power off before forcing it, unless asked.
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 60;

fn default_stop_timeout() -> u32 {
    DEFAULT_STOP_TIMEOUT_SECS
}

fn yes() -> bool {
    true
}

/// Body of `POST /api/v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    pub name: VmName,
    /// `kvm` unless given: `tcg` where there is no KVM.
    #[serde(default)]
    pub kind: VmKind,
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
    #[serde(default)]
    pub nics: Vec<NicRequest>,
    #[serde(default)]
    pub boot: Option<BootRequest>,
    /// Restart it on another host when its host dies (host HA).
    #[serde(default)]
    pub ha: bool,
    /// VMs sharing a group are never placed on the same host.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// The host (by MAC) to run on; the best host when absent.
    #[serde(default)]
    pub host: Option<MacAddr>,
    /// Power it on once made (the default), or only define it.
    #[serde(default = "yes")]
    pub start: bool,
}

/// A one-off operation on a VM, carried out by its host's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum VmOpKind {
    Reboot,
    SnapshotCreate {
        snapshot: SnapshotName,
    },
    SnapshotRevert {
        snapshot: SnapshotName,
    },
    SnapshotDelete {
        snapshot: SnapshotName,
    },
    /// Live-migrate to `to` (a host's MAC), reaching its libvirt at `uri`.
    Migrate {
        to: MacAddr,
        uri: String,
    },
}

impl fmt::Display for VmOpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmOpKind::Reboot => f.write_str("reboot"),
            VmOpKind::SnapshotCreate { snapshot } => write!(f, "snapshot {snapshot}"),
            VmOpKind::SnapshotRevert { snapshot } => write!(f, "revert to snapshot {snapshot}"),
            VmOpKind::SnapshotDelete { snapshot } => write!(f, "delete snapshot {snapshot}"),
            VmOpKind::Migrate { to, .. } => write!(f, "live migration to {to}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmOp {
    pub id: u64,
    #[serde(flatten)]
    pub kind: VmOpKind,
    pub queued_at: Timestamp,
}

/// A snapshot as the host last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmSnapshot {
    pub name: SnapshotName,
}

/// A VM as the appliance keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub id: u64,
    pub name: VmName,
    pub kind: VmKind,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
    #[serde(default)]
    pub boot: Option<VmBoot>,
    pub ha: bool,
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// What the operator wants.
    pub power: PowerWanted,
    /// How long its last stop gives the guest before forcing it off.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u32,
    pub state: VmState,
    /// The host (by MAC) it is placed on.
    #[serde(default)]
    pub host: Option<MacAddr>,
    /// Operations queued for its host's agent, oldest first.
    #[serde(default)]
    pub pending_ops: Vec<VmOp>,
    #[serde(default)]
    pub snapshots: Vec<VmSnapshot>,
    /// Why it is `failed`, or what its agent last said went wrong.
    #[serde(default)]
    pub message: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub state_since: Timestamp,
}

/// One entry of a VM's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmEvent {
    /// Position in the appliance-wide VM event sequence; increases with time.
    pub seq: u64,
    pub at: Timestamp,
    pub vm: VmName,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<VmState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<VmState>,
    /// The host it happened on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<MacAddr>,
}

/// Body of `POST /api/v1/vms/{name}/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopVm {
    /// How long the guest gets to power off after the ACPI request before it is forced
    /// off; 60 unless given.
    #[serde(default)]
    pub timeout_secs: Option<u32>,
}

/// Body of `POST /api/v1/vms/{name}/migrate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateVm {
    /// The host to move to; the best other host when absent.
    #[serde(default)]
    pub host: Option<MacAddr>,
}

/// Body of `POST /api/v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub name: SnapshotName,
}

/// Answer of `GET /api/v1/vms/{name}/console`: the last lines of the serial console as
/// the host last reported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmConsole {
    pub vm: VmName,
    #[serde(default)]
    pub host: Option<MacAddr>,
    /// When the host read them; absent when it has not reported any yet.
    #[serde(default)]
    pub read_at: Option<Timestamp>,
    pub lines: Vec<String>,
}

/// What a host's agent is told about one VM (in `DesiredState::vms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredVm {
    pub name: VmName,
    pub kind: VmKind,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<VmNic>,
    #[serde(default)]
    pub boot: Option<VmBoot>,
    /// `None`: the VM is being deleted; destroy and undefine it, then report it gone.
    pub power: Option<PowerWanted>,
    /// How long a stop waits for the guest before forcing it off.
    pub stop_timeout_secs: u32,
    #[serde(default)]
    pub ops: Vec<VmOp>,
}

/// A host's hypervisor as its agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostCapacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub storage_bytes: u64,
    /// The libvirt URI another host's libvirt reaches this one at, for live migration.
    #[serde(default)]
    pub migration_uri: Option<String>,
    /// `ip:port` where this host's agent answers peer probes (UDP) on the data network.
    #[serde(default)]
    pub probe: Option<String>,
    /// This host's VXLAN tunnel endpoint on the data network (issue 14); a host without one
    /// runs no VM with a tenant-network NIC.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub vtep: Option<std::net::Ipv4Addr>,
}

/// A domain's power as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainPower {
    Running,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    Other,
}

/// One domain a host has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservedDomain {
    /// As libvirt names it: domains made outside COSM may have any name.
    pub name: String,
    pub power: DomainPower,
    /// Whether COSM asked for it; the agent never touches the others.
    pub managed: bool,
    #[serde(default)]
    pub snapshots: Vec<SnapshotName>,
    /// The serial console's last lines, when they changed since the last report.
    #[serde(default)]
    pub console: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmOpResult {
    pub vm: VmName,
    pub id: u64,
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

/// Something the agent did on its own that belongs on a VM's timeline (a VM found off
/// and started again, a disk image downloaded, a failure to make it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNote {
    pub vm: VmName,
    pub message: String,
    /// The VM cannot be made as asked (bad image, libvirt refused it): it becomes `failed`.
    #[serde(default)]
    pub failed: bool,
}

/// Body of `POST /api/v1/agent/vms`: every domain the host has, the outcomes of queued
/// operations, and notes. Sent after each reconcile pass that changed something, and at
/// least every few seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmReport {
    pub capacity: HostCapacity,
    pub domains: Vec<ObservedDomain>,
    #[serde(default)]
    pub results: Vec<VmOpResult>,
    #[serde(default)]
    pub notes: Vec<VmNote>,
    /// What the host's network reconcile changed or could not do since the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::NetReport>,
}

/// A hypervisor host as `GET /api/v1/hosts` lists it: a machine with role `host` in
/// `deployed` or `active`, what its agent last reported, and what its VMs take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub mac: MacAddr,
    #[serde(default)]
    pub hostname: Option<String>,
    pub machine_state: crate::MachineState,
    /// What its agent last reported; absent until it reports (VMs are not placed there).
    #[serde(default)]
    pub capacity: Option<HostCapacity>,
    #[serde(default)]
    pub reported_at: Option<Timestamp>,
    pub vms: u32,
    pub allocated_vcpus: u32,
    pub allocated_memory_mib: u64,
    /// Domains its agent reported that COSM does not manage (left alone).
    pub unmanaged_domains: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_what_a_shell_or_libvirt_would_mind() {
        assert_eq!(
            VmName::new("").unwrap_err(),
            NameError::Empty { what: "VM name" }
        );
        for bad in [
            "a b", "a/b", "-rf", ".hidden", "a;b", "$(x)", "a'b", "a\"b", "a<b", "a&b", "é",
            "a\nb", "..",
        ] {
            let err = VmName::new(bad).unwrap_err();
            assert!(matches!(err, NameError::BadName { .. }), "{bad:?}: {err}");
        }
        assert!(matches!(
            VmName::new(&"a".repeat(65)),
            Err(NameError::TooLong { max: 64, .. })
        ));
        for good in ["vm1", "web-01.prod", "A_b"] {
            assert_eq!(VmName::new(good).unwrap().as_str(), good);
        }
        assert!(BridgeName::new("br0").is_ok());
        assert!(BridgeName::new("a-very-long-bridge").is_err());
        assert!(SnapshotName::new("before upgrade").is_err());
        let err = VmName::new("a b").unwrap_err().to_string();
        assert!(err.contains("VM name \"a b\" may only hold"), "{err}");
        // Through serde, the refusal names the rule.
        let e = serde_json::from_str::<VmName>("\"a/b\"").unwrap_err();
        assert!(e.to_string().contains("may only hold"), "{e}");
    }

    #[test]
    fn create_vm_has_safe_defaults_and_refuses_unknown_fields() {
        let c: CreateVm = serde_json::from_value(serde_json::json!({
            "name": "vm1", "vcpus": 1, "memory_mib": 128,
        }))
        .unwrap();
        assert_eq!(c.kind, VmKind::Kvm);
        assert!(c.start && !c.ha && c.host.is_none() && c.disks.is_empty());
        assert!(serde_json::from_value::<CreateVm>(serde_json::json!({
            "name": "vm1", "vcpus": 1, "memory_mib": 128, "cpus": 2,
        }))
        .is_err());
        let k: VmKind = serde_json::from_str("\"xen-pv\"").unwrap();
        assert_eq!(k, VmKind::XenPv);
    }

    #[test]
    fn ops_keep_a_flat_json_shape() {
        let op = VmOp {
            id: 4,
            kind: VmOpKind::SnapshotCreate {
                snapshot: SnapshotName::new("s1").unwrap(),
            },
            queued_at: "2024-05-01T10:00:00.000Z".parse().unwrap(),
        };
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 4, "op": "snapshot_create", "snapshot": "s1",
                               "queued_at": "2024-05-01T10:00:00.000Z"})
        );
        assert_eq!(serde_json::from_value::<VmOp>(v).unwrap(), op);
    }
}
