//! One hypervisor API (`Hypervisor`) over KVM/QEMU and Xen through libvirt
//! (`LibvirtHypervisor`), and an in-memory simulation of it (`SimHypervisor`) for tests at
//! scale. A VM is described once (`VmSpec`) and rendered to either family's domain XML
//! (`domain_xml`).
//!
//! This crate drives one host's hypervisor. It does not know the appliance, its store or
//! its API, nor where a VM should run: placement and reconciling desired state belong to
//! the appliance and the agent, which call this trait.
//!
//! The libvirt driver is the cargo feature `libvirt` (on by default); without it the crate
//! links no libvirt library and offers only the simulation (the agent ramdisk's build).

mod error;
#[cfg(feature = "libvirt")]
mod libvirt;
mod sim;
pub mod spec;
pub mod xml;

use std::fmt;
use std::time::Duration;

pub use error::HypervisorError;
#[cfg(feature = "libvirt")]
pub use libvirt::LibvirtHypervisor;
pub use sim::{SimCluster, SimHypervisor};
pub use spec::{
    BootSpec, BridgeName, DiskSource, DiskSpec, NicSpec, SnapshotName, SpecError, VmKind, VmName,
    VmSpec,
};
pub use xml::domain_xml;

/// A VM's power state as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmPower {
    Running,
    /// Blocked on a resource (Xen reports this for idle guests); still on.
    Blocked,
    Paused,
    /// An ACPI shutdown is in progress.
    ShuttingDown,
    ShutOff,
    Crashed,
    /// Suspended by the guest's power management.
    Suspended,
    /// libvirt reported no state, or one this crate does not know.
    Unknown,
}

impl VmPower {
    /// Whether the guest holds a host's CPU and memory (anything but shut off or crashed).
    pub fn is_active(self) -> bool {
        !matches!(self, VmPower::ShutOff | VmPower::Crashed)
    }
}

impl fmt::Display for VmPower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmPower::Running => "running",
            VmPower::Blocked => "blocked",
            VmPower::Paused => "paused",
            VmPower::ShuttingDown => "shutting down",
            VmPower::ShutOff => "shut off",
            VmPower::Crashed => "crashed",
            VmPower::Suspended => "suspended",
            VmPower::Unknown => "in an unknown state",
        })
    }
}

/// One VM in `Hypervisor::list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// As the hypervisor reports it: domains not defined through COSM may have names that
    /// `VmName` refuses, and they are listed all the same.
    pub name: String,
    pub power: VmPower,
}

/// The host's size as its hypervisor reports it (what VMs are placed against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostInfo {
    /// Logical CPUs.
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// How `Hypervisor::shutdown` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest powered off within the timeout.
    Graceful,
    /// The guest was still on at the timeout and was destroyed (forced off).
    Forced,
}

/// What the agent does to one host's VMs. Synchronous: the agent's controllers each run
/// on a thread of their own. Every method that names a VM answers
/// `HypervisorError::NotFound` if there is none; an operation the VM's power state does
/// not allow (starting a running VM, undefining one that is on) answers `WrongState`.
pub trait Hypervisor: Send + Sync {
    /// Defines (does not start) a VM, first creating its disk files that do not exist yet.
    /// Refuses a name that is already defined (`AlreadyExists`) rather than redefining it.
    fn define(&self, spec: &VmSpec) -> Result<(), HypervisorError>;
    /// Powers a defined VM on.
    fn start(&self, name: &VmName) -> Result<(), HypervisorError>;
    /// Asks the guest to power off (ACPI) and waits up to `timeout`; then forces it off.
    fn shutdown(
        &self,
        name: &VmName,
        timeout: Duration,
    ) -> Result<ShutdownOutcome, HypervisorError>;
    /// Forces a VM off at once, like pulling the plug.
    fn destroy(&self, name: &VmName) -> Result<(), HypervisorError>;
    /// Asks a running guest to reboot.
    fn reboot(&self, name: &VmName) -> Result<(), HypervisorError>;
    /// Removes a shut-off VM's definition and its snapshots' metadata. Disk files stay.
    fn undefine(&self, name: &VmName) -> Result<(), HypervisorError>;
    fn state(&self, name: &VmName) -> Result<VmPower, HypervisorError>;
    /// Every VM on this host, sorted by name.
    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError>;
    fn snapshot_create(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError>;
    /// The VM's snapshots, sorted by name.
    fn snapshot_list(&self, name: &VmName) -> Result<Vec<SnapshotName>, HypervisorError>;
    /// Returns the VM to the snapshot, including the power state it was taken in.
    fn snapshot_revert(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError>;
    fn snapshot_delete(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError>;
    /// Moves the VM to the host at `dest_uri` (a libvirt URI), keeping it defined there
    /// and undefining it here. `live` keeps a running guest running throughout.
    fn migrate(&self, name: &VmName, dest_uri: &str, live: bool) -> Result<(), HypervisorError>;
    /// The last `lines` lines the guest wrote to its serial console (fewer if it wrote
    /// fewer; none before it wrote any).
    fn console_tail(&self, name: &VmName, lines: usize) -> Result<Vec<String>, HypervisorError>;
    /// The host's logical CPUs and memory.
    fn host_info(&self) -> Result<HostInfo, HypervisorError>;
}

/// How often `shutdown` looks at a guest that is powering off.
#[cfg(feature = "libvirt")]
pub(crate) const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// The most lines `console_tail` returns, whatever is asked.
pub const MAX_CONSOLE_LINES: usize = 10_000;
