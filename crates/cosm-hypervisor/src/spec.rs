//! What a VM should be: `VmSpec` and its parts, checked once by `VmSpec::validate` (and the
//! `VmName` newtype), so the XML writer and the drivers never see a name a shell, a path or
//! libvirt would mind. No I/O.

use std::path::{Path, PathBuf};

use cosm_wire::MacAddr;
pub use cosm_wire::{BridgeName, NameError, SnapshotName, VmKind, VmName};

/// Why a spec was refused; each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("VM {vm}: {field} must be at least 1")]
    Zero { vm: String, field: &'static str },
    #[error("VM {vm}: {field} {value} is above the limit of {max}")]
    TooLarge {
        vm: String,
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("VM {vm}: path {path:?} must be absolute and hold no control characters")]
    BadPath { vm: String, path: PathBuf },
    #[error(
        "VM {vm}: disk target {target:?} must be vd*, sd*, hd* or xvd* followed by letters \
         ({kind} needs {allowed})"
    )]
    BadTarget {
        vm: String,
        target: String,
        kind: VmKind,
        allowed: &'static str,
    },
    #[error("VM {vm}: disk target {target} is used twice")]
    DuplicateTarget { vm: String, target: String },
    #[error("VM {vm}: NIC MAC {mac} is used twice")]
    DuplicateMac { vm: String, mac: MacAddr },
    #[error(
        "VM {vm}: NIC device name {name:?} must be 1 to 15 letters, digits, '_', '-' or '.', \
         and not start with vnet, vif or macvtap (names libvirt makes up itself)"
    )]
    BadNicDevice { vm: String, name: String },
    #[error("VM {vm}: NIC device name {name} is used twice")]
    DuplicateNicDevice { vm: String, name: String },
    #[error("VM {vm}: NIC {mac} MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}")]
    BadMtu { vm: String, mac: MacAddr, mtu: u16 },
    #[error("VM {vm}: kernel command line holds a control character")]
    BadCmdline { vm: String },
    #[error("VM {vm}: {kind} needs a direct kernel boot (`boot`)")]
    NeedsKernel { vm: String, kind: VmKind },
}

/// Where a disk's content comes from. Both are qcow2 files at `DiskSpec::path`, made by the
/// driver at `define` if the file is not there yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// An empty disk of this many bytes.
    Blank { size_bytes: u64 },
    /// A copy-on-write overlay over `base` (qcow2); `base` is never written.
    Overlay { base: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub source: DiskSource,
    /// The qcow2 file the guest writes to.
    pub path: PathBuf,
    /// The guest's device name: `vda` (virtio), `sda` (SATA), `hda` (IDE) or `xvda` (Xen).
    pub target: String,
}

/// A NIC on a host bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub bridge: BridgeName,
    pub mac: MacAddr,
    /// The host-side (tap) device's name; libvirt makes one up (`vnetN`) when absent. A
    /// tenant-network port needs a name known in advance (`cosm_wire::port_device`): the
    /// host's network rules are written against it, and libvirt keeps a name that is not
    /// its own across a live migration.
    pub device: Option<String>,
    /// The MTU of the tap device and of the guest's NIC (virtio tells the guest); the
    /// bridge's when absent. A tenant network is 50 bytes under the data network's.
    pub mtu: Option<u16>,
}

impl NicSpec {
    /// A NIC on `bridge` with libvirt's own device name and the bridge's MTU.
    pub fn on_bridge(bridge: BridgeName, mac: MacAddr) -> NicSpec {
        NicSpec {
            bridge,
            mac,
            device: None,
            mtu: None,
        }
    }
}

/// The smallest MTU a NIC may have (IPv4's minimum).
pub const MIN_MTU: u16 = 68;
/// The largest MTU a NIC may have (a jumbo frame).
pub const MAX_MTU: u16 = 9000;

/// Whether `name` can be a tap device libvirt creates and keeps: a Linux interface name
/// (at most 15 bytes, no '/', ':' or whitespace — we allow only `[A-Za-z0-9_.-]`, not
/// starting with '.' or '-') that is not one of the prefixes libvirt treats as its own
/// automatic names and replaces (`vnet`, `vif`, `macvtap`, `macvlan`).
pub fn valid_nic_device(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with(['.', '-'])
        && !["vnet", "vif", "macvtap", "macvlan"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// A direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub name: VmName,
    pub kind: VmKind,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    pub boot: Option<BootSpec>,
    /// The serial console is written to this file (what `console_tail` reads).
    pub console_log: Option<PathBuf>,
}

pub const MAX_VCPUS: u32 = 256;
/// 4 TiB.
pub const MAX_MEMORY_MIB: u64 = 4 << 20;

fn check_path(vm: &VmName, path: &Path) -> Result<(), SpecError> {
    let text = path.to_string_lossy();
    if !path.is_absolute() || text.chars().any(char::is_control) {
        return Err(SpecError::BadPath {
            vm: vm.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The bus a disk target implies, if the target is well-formed.
pub(crate) fn target_bus(target: &str) -> Option<&'static str> {
    let (prefix, bus) = [
        ("xvd", "xen"),
        ("vd", "virtio"),
        ("sd", "sata"),
        ("hd", "ide"),
    ]
    .into_iter()
    .find(|(p, _)| target.starts_with(p))?;
    let rest = &target[prefix.len()..];
    let ok = !rest.is_empty() && rest.len() <= 3 && rest.chars().all(|c| c.is_ascii_lowercase());
    ok.then_some(bus)
}

impl VmSpec {
    /// A spec with no disks, NICs or boot, for building on.
    pub fn new(name: VmName, kind: VmKind, vcpus: u32, memory_mib: u64) -> VmSpec {
        VmSpec {
            name,
            kind,
            vcpus,
            memory_mib,
            disks: Vec::new(),
            nics: Vec::new(),
            boot: None,
            console_log: None,
        }
    }

    /// Everything `VmName` cannot check alone: counts, sizes, paths, targets, duplicates.
    pub fn validate(&self) -> Result<(), SpecError> {
        let vm = || self.name.to_string();
        if self.vcpus == 0 {
            return Err(SpecError::Zero {
                vm: vm(),
                field: "vcpus",
            });
        }
        if self.vcpus > MAX_VCPUS {
            return Err(SpecError::TooLarge {
                vm: vm(),
                field: "vcpus",
                value: self.vcpus.into(),
                max: MAX_VCPUS.into(),
            });
        }
        if self.memory_mib == 0 {
            return Err(SpecError::Zero {
                vm: vm(),
                field: "memory_mib",
            });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(SpecError::TooLarge {
                vm: vm(),
                field: "memory_mib",
                value: self.memory_mib,
                max: MAX_MEMORY_MIB,
            });
        }
        let mut targets = Vec::new();
        for disk in &self.disks {
            check_path(&self.name, &disk.path)?;
            match &disk.source {
                DiskSource::Blank { size_bytes: 0 } => {
                    return Err(SpecError::Zero {
                        vm: vm(),
                        field: "disk size_bytes",
                    })
                }
                DiskSource::Blank { .. } => {}
                DiskSource::Overlay { base } => check_path(&self.name, base)?,
            }
            let (ok, allowed) = match (self.kind, target_bus(&disk.target)) {
                (VmKind::XenPv, bus) => (bus == Some("xen"), "xvd*"),
                (VmKind::XenHvm, bus) => (matches!(bus, Some("xen" | "ide")), "xvd* or hd*"),
                (_, bus) => (
                    matches!(bus, Some("virtio" | "sata" | "ide")),
                    "vd*, sd* or hd*",
                ),
            };
            if !ok {
                return Err(SpecError::BadTarget {
                    vm: vm(),
                    target: disk.target.clone(),
                    kind: self.kind,
                    allowed,
                });
            }
            if targets.contains(&disk.target) {
                return Err(SpecError::DuplicateTarget {
                    vm: vm(),
                    target: disk.target.clone(),
                });
            }
            targets.push(disk.target.clone());
        }
        for (i, nic) in self.nics.iter().enumerate() {
            if self.nics[..i].iter().any(|n| n.mac == nic.mac) {
                return Err(SpecError::DuplicateMac {
                    vm: vm(),
                    mac: nic.mac,
                });
            }
            if let Some(name) = &nic.device {
                if !valid_nic_device(name) {
                    return Err(SpecError::BadNicDevice {
                        vm: vm(),
                        name: name.clone(),
                    });
                }
                if self.nics[..i]
                    .iter()
                    .any(|n| n.device.as_ref() == Some(name))
                {
                    return Err(SpecError::DuplicateNicDevice {
                        vm: vm(),
                        name: name.clone(),
                    });
                }
            }
            if let Some(mtu) = nic.mtu {
                if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                    return Err(SpecError::BadMtu {
                        vm: vm(),
                        mac: nic.mac,
                        mtu,
                    });
                }
            }
        }
        if let Some(boot) = &self.boot {
            check_path(&self.name, &boot.kernel)?;
            if let Some(initrd) = &boot.initrd {
                check_path(&self.name, initrd)?;
            }
            if boot.cmdline.chars().any(char::is_control) {
                return Err(SpecError::BadCmdline { vm: vm() });
            }
        } else if self.kind == VmKind::XenPv {
            return Err(SpecError::NeedsKernel {
                vm: vm(),
                kind: self.kind,
            });
        }
        if let Some(log) = &self.console_log {
            check_path(&self.name, log)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: VmKind) -> VmSpec {
        VmSpec::new(VmName::new("vm1").unwrap(), kind, 1, 256)
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let mut s = spec(VmKind::Tcg);
        s.vcpus = 0;
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "VM vm1: vcpus must be at least 1"
        );
    }

    #[test]
    fn counts_and_sizes_are_checked() {
        let mut s = spec(VmKind::Kvm);
        assert!(s.validate().is_ok());
        s.memory_mib = 0;
        assert!(matches!(
            s.validate(),
            Err(SpecError::Zero {
                field: "memory_mib",
                ..
            })
        ));
        s.memory_mib = MAX_MEMORY_MIB + 1;
        assert!(matches!(s.validate(), Err(SpecError::TooLarge { .. })));
        s.memory_mib = 256;
        s.vcpus = MAX_VCPUS + 1;
        assert!(matches!(s.validate(), Err(SpecError::TooLarge { .. })));
        s.vcpus = 2;
        s.disks.push(DiskSpec {
            source: DiskSource::Blank { size_bytes: 0 },
            path: "/var/lib/cosm/vm1.qcow2".into(),
            target: "vda".into(),
        });
        assert!(matches!(s.validate(), Err(SpecError::Zero { .. })));
    }

    #[test]
    fn disks_need_absolute_paths_and_targets_that_fit_the_kind() {
        let disk = |path: &str, target: &str| DiskSpec {
            source: DiskSource::Blank {
                size_bytes: 1 << 30,
            },
            path: path.into(),
            target: target.into(),
        };
        let mut s = spec(VmKind::Tcg);
        s.disks = vec![disk("relative.qcow2", "vda")];
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));
        s.disks = vec![disk("/d/a.qcow2", "vda"), disk("/d/b.qcow2", "vda")];
        assert!(matches!(
            s.validate(),
            Err(SpecError::DuplicateTarget { .. })
        ));
        s.disks = vec![disk("/d/a.qcow2", "xvda")];
        assert!(matches!(s.validate(), Err(SpecError::BadTarget { .. })));
        s.disks = vec![disk("/d/a.qcow2", "vd1")];
        assert!(matches!(s.validate(), Err(SpecError::BadTarget { .. })));
        s.disks = vec![disk("/d/a.qcow2", "vda"), disk("/d/b.qcow2", "sdb")];
        assert!(s.validate().is_ok());
        s.disks[0].source = DiskSource::Overlay {
            base: "base.qcow2".into(),
        };
        assert!(matches!(s.validate(), Err(SpecError::BadPath { .. })));

        let mut x = spec(VmKind::XenHvm);
        x.disks = vec![disk("/d/a.qcow2", "vda")];
        assert!(matches!(x.validate(), Err(SpecError::BadTarget { .. })));
        x.disks = vec![disk("/d/a.qcow2", "xvda")];
        assert!(x.validate().is_ok());
    }

    #[test]
    fn xen_pv_needs_a_kernel_and_cmdlines_no_control_characters() {
        let mut s = spec(VmKind::XenPv);
        assert!(matches!(s.validate(), Err(SpecError::NeedsKernel { .. })));
        s.boot = Some(BootSpec {
            kernel: "/boot/vmlinuz".into(),
            initrd: None,
            cmdline: "console=hvc0\nevil".into(),
        });
        assert!(matches!(s.validate(), Err(SpecError::BadCmdline { .. })));
        s.boot.as_mut().unwrap().cmdline = "console=hvc0 root=/dev/xvda1".into();
        assert!(s.validate().is_ok());
    }

    #[test]
    fn nics_need_distinct_macs() {
        let mut s = spec(VmKind::Kvm);
        let nic = NicSpec::on_bridge(
            BridgeName::new("br0").unwrap(),
            "52:54:00:00:00:01".parse().unwrap(),
        );
        s.nics = vec![nic.clone(), nic];
        assert!(matches!(s.validate(), Err(SpecError::DuplicateMac { .. })));
    }

    #[test]
    fn nic_device_names_and_mtus_are_checked() {
        let mut s = spec(VmKind::Kvm);
        let nic = |mac: &str, device: Option<&str>, mtu: Option<u16>| NicSpec {
            bridge: BridgeName::new("cbr7").unwrap(),
            mac: mac.parse().unwrap(),
            device: device.map(String::from),
            mtu,
        };
        s.nics = vec![nic("52:54:00:00:00:01", Some("cp525400000001"), Some(1450))];
        assert!(s.validate().is_ok());
        for bad in [
            "",
            "vnet3",
            "vif1.0",
            "macvtap0",
            "a/b",
            "a b",
            "-x",
            "cp525400000001xy",
        ] {
            s.nics[0].device = Some(bad.into());
            assert!(
                matches!(s.validate(), Err(SpecError::BadNicDevice { .. })),
                "{bad:?} was accepted"
            );
        }
        s.nics = vec![
            nic("52:54:00:00:00:01", Some("cp1"), None),
            nic("52:54:00:00:00:02", Some("cp1"), None),
        ];
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "VM vm1: NIC device name cp1 is used twice"
        );
        s.nics = vec![nic("52:54:00:00:00:01", None, Some(67))];
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "VM vm1: NIC 52:54:00:00:00:01 MTU 67 is outside 68..=9000"
        );
        s.nics[0].mtu = Some(9001);
        assert!(matches!(s.validate(), Err(SpecError::BadMtu { .. })));
    }
}
