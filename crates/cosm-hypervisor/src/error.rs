//! `HypervisorError`: what went wrong, with the VM, snapshot or path it concerns. libvirt's
//! own message is the `#[source]`; print errors with `{:#}` (anyhow) to see it.

use std::path::PathBuf;

use crate::spec::SpecError;
use crate::VmPower;

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("invalid VM spec")]
    Spec(#[from] SpecError),
    #[error("VM {name} not found")]
    NotFound { name: String },
    #[error("VM {name} already exists")]
    AlreadyExists { name: String },
    #[error("snapshot {snapshot} of VM {name} not found")]
    SnapshotNotFound { name: String, snapshot: String },
    #[error("snapshot {snapshot} of VM {name} already exists")]
    SnapshotExists { name: String, snapshot: String },
    #[error("cannot {op} VM {name}: it is {power}")]
    WrongState {
        name: String,
        op: &'static str,
        power: VmPower,
    },
    #[error("VM {name} has no serial console log")]
    NoConsole { name: String },
    #[cfg(feature = "libvirt")]
    #[error("cannot connect to hypervisor {uri}")]
    Connect {
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("cannot migrate VM {name}: {reason}")]
    MigrationRefused { name: String, reason: String },
    #[error("no simulated host at {uri}")]
    UnknownSimHost { uri: String },
    #[cfg(feature = "libvirt")]
    #[error("libvirt refused to {op} VM {name}")]
    Libvirt {
        op: &'static str,
        name: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("creating disk {path}: {detail}")]
    Disk { path: PathBuf, detail: String },
    #[cfg(feature = "libvirt")]
    #[error("cannot read the host's size from hypervisor {uri}")]
    HostInfo {
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("reading console log {path}")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
