//! The hardware inventory an agent reports and role rules match against.

use crate::MacAddr;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a machine is made of. Every field has a default so that an agent that cannot read
/// part of its hardware still reports the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Inventory {
    pub cpu: Cpu,
    /// Memory the kernel sees, in bytes.
    pub memory_bytes: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub dmi: Dmi,
    pub firmware: Option<FirmwareMode>,
    /// Running kernel release, e.g. `6.1.0-27-amd64`.
    pub kernel: Option<String>,
}

impl Inventory {
    /// Logical CPUs (threads): what role rules call "CPU count".
    pub fn cpu_count(&self) -> u32 {
        self.cpu.threads
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Cpu {
    pub model: String,
    pub sockets: u32,
    pub cores: u32,
    /// Logical CPUs.
    pub threads: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `nvme0n1`, `vda`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub rotational: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub name: String,
    pub mac: MacAddr,
    #[serde(default)]
    pub link_up: bool,
    #[serde(default)]
    pub speed_mbps: Option<u32>,
}

/// SMBIOS/DMI identity of the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Dmi {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub system_uuid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareMode {
    Bios,
    Uefi,
}

/// Bytes with a binary unit, e.g. `931.5 GiB`, `1.8 TiB`: how inventories are shown to people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
