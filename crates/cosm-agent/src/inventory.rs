//! Reads a machine's hardware inventory from procfs and sysfs.
//!
//! Everything is read relative to a filesystem root: `/` on a real machine, a fixture tree
//! in tests (`agent/tests/fixtures/`). Only plain file reads are used, so the same code runs
//! in the discovery ramdisk and on an installed system, and a copy of `/proc` and `/sys`
//! is all a test needs.
//!
//! The rule is "report what can be read": a missing or unreadable file (absent hardware,
//! a root-only DMI serial, `speed` on a link that is down) leaves its field empty and
//! never fails the whole inventory. Only a root that cannot be read at all is an error.
//!
//! Sources, relative to the root:
//!
//! | Field | Source |
//! |---|---|
//! | CPU | `proc/cpuinfo` |
//! | memory | `MemTotal` in `proc/meminfo` |
//! | disks | `sys/block/*` (size, `queue/rotational`, `device/model`, serial) |
//! | NICs | `sys/class/net/*` with a `device` entry (address, `operstate`/`carrier`, `speed`) |
//! | DMI | `sys/class/dmi/id/{sys_vendor,product_name,product_serial,product_uuid}` |
//! | firmware | `sys/firmware/efi` present → UEFI |
//! | kernel | `proc/sys/kernel/osrelease` |

use cosm_wire::human_bytes;
use cosm_wire::{Cpu, Disk, Dmi, FirmwareMode, Inventory, MacAddr, Nic};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why no inventory could be read at all.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The filesystem root does not exist, is not a directory, or cannot be listed.
    #[error("cannot read the inventory root {}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reads the hardware inventory from a filesystem root (`/` on a real machine; a fixture
/// tree in tests).
///
/// Missing optional files are not errors: their fields stay empty (or `None`). Disks and
/// NICs are sorted by name so the result is deterministic.
///
/// # Errors
///
/// [`InventoryError::Root`] when `root` itself cannot be listed.
pub fn read_inventory(root: &Path) -> Result<Inventory, InventoryError> {
    fs::read_dir(root).map_err(|source| InventoryError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    Ok(Inventory {
        cpu: read_text(&root.join("proc/cpuinfo"))
            .map(|text| parse_cpuinfo(&text))
            .unwrap_or_default(),
        memory_bytes: read_text(&root.join("proc/meminfo"))
            .and_then(|text| parse_mem_total(&text))
            .unwrap_or(0),
        disks: read_disks(&root.join("sys/block")),
        nics: read_nics(&root.join("sys/class/net")),
        dmi: read_dmi(&root.join("sys/class/dmi/id")),
        firmware: read_firmware(&root.join("sys/firmware")),
        kernel: read_trimmed(&root.join("proc/sys/kernel/osrelease")),
    })
}

/// A readable multi-line summary of an inventory, one `LABEL  value` line per item and one
/// line per disk and NIC (what `cosm-agent inventory` prints without `--json`).
pub fn summary(inv: &Inventory) -> String {
    fn opt(v: Option<&str>) -> &str {
        v.unwrap_or("-")
    }
    let mut out = String::new();
    let cpu = &inv.cpu;
    let model = if cpu.model.is_empty() {
        "unknown model"
    } else {
        &cpu.model
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "CPU       {model}: {} socket(s), {} core(s), {} thread(s)",
        cpu.sockets, cpu.cores, cpu.threads
    );
    let _ = writeln!(out, "MEMORY    {}", human_bytes(inv.memory_bytes));
    let firmware = match inv.firmware {
        Some(FirmwareMode::Uefi) => "uefi",
        Some(FirmwareMode::Bios) => "bios",
        None => "-",
    };
    let _ = writeln!(out, "FIRMWARE  {firmware}");
    let _ = writeln!(out, "KERNEL    {}", opt(inv.kernel.as_deref()));
    let dmi = &inv.dmi;
    let _ = writeln!(
        out,
        "SYSTEM    vendor {}, product {}, serial {}, uuid {}",
        opt(dmi.vendor.as_deref()),
        opt(dmi.product.as_deref()),
        opt(dmi.serial.as_deref()),
        opt(dmi.system_uuid.as_deref()),
    );
    if inv.disks.is_empty() {
        let _ = writeln!(out, "DISKS     none");
    } else {
        let _ = writeln!(out, "DISKS");
        for d in &inv.disks {
            let _ = writeln!(
                out,
                "  {:<12} {:>10}  {}  model {}, serial {}",
                d.name,
                human_bytes(d.size_bytes),
                if d.rotational { "HDD" } else { "SSD" },
                opt(d.model.as_deref()),
                opt(d.serial.as_deref()),
            );
        }
    }
    if inv.nics.is_empty() {
        let _ = writeln!(out, "NICS      none");
    } else {
        let _ = writeln!(out, "NICS");
        for n in &inv.nics {
            let link = match (n.link_up, n.speed_mbps) {
                (true, Some(speed)) => format!("up {speed} Mb/s"),
                (true, None) => "up".to_string(),
                (false, _) => "down".to_string(),
            };
            let _ = writeln!(out, "  {:<12} {}  {link}", n.name, n.mac);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// File helpers: every failure (missing, permission denied, EINVAL from sysfs) is "absent".
// ---------------------------------------------------------------------------------------

/// The file's contents (invalid UTF-8 replaced), or `None` if it cannot be read.
fn read_text(path: &Path) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// The file's contents trimmed of whitespace and NULs; `None` if unreadable or empty.
fn read_trimmed(path: &Path) -> Option<String> {
    read_text(path).and_then(|s| clean(&s))
}

/// Trims whitespace and NUL padding; an empty result is `None`.
fn clean(s: &str) -> Option<String> {
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!t.is_empty()).then(|| t.to_string())
}

/// The names in a directory, sorted; empty if it cannot be listed. Non-UTF-8 names are
/// skipped (kernel device names are ASCII).
fn list_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// CPU and memory
// ---------------------------------------------------------------------------------------

/// Parses `/proc/cpuinfo`.
///
/// Logical CPUs are the `processor` entries; sockets are the distinct `physical id`s (one
/// when the field is absent); cores are the sum over sockets of `cpu cores`, or the logical
/// count when any socket lacks it. The model is the first `model name` (falling back to
/// `cpu model` and `Processor`, used by some non-x86 kernels). No `processor` entry at all
/// gives zero sockets, cores and threads.
fn parse_cpuinfo(text: &str) -> Cpu {
    // One entry per logical CPU: (physical id, cpu cores).
    let mut cpus: Vec<(Option<String>, Option<u32>)> = Vec::new();
    let mut model: Option<String> = None;
    let mut fallback_model: Option<String> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        match key {
            "processor" => cpus.push((None, None)),
            "physical id" => {
                if let Some(cpu) = cpus.last_mut() {
                    cpu.0 = Some(value.to_string());
                }
            }
            "cpu cores" => {
                if let Some(cpu) = cpus.last_mut() {
                    cpu.1 = value.parse().ok();
                }
            }
            "model name" if model.is_none() && !value.is_empty() => {
                model = Some(value.to_string());
            }
            "cpu model" | "Processor" if fallback_model.is_none() && !value.is_empty() => {
                fallback_model = Some(value.to_string());
            }
            _ => {}
        }
    }
    let model = model.or(fallback_model).unwrap_or_default();
    let threads = u32::try_from(cpus.len()).unwrap_or(u32::MAX);
    if threads == 0 {
        return Cpu {
            model,
            ..Cpu::default()
        };
    }
    // Socket key → `cpu cores` of its first logical CPU. CPUs without a physical id share
    // one key, so a file without the field counts as one socket.
    let mut sockets: BTreeMap<Option<&str>, Option<u32>> = BTreeMap::new();
    for (id, cores) in &cpus {
        sockets.entry(id.as_deref()).or_insert(*cores);
    }
    let cores = sockets
        .values()
        .try_fold(0u32, |sum, cores| cores.map(|c| sum.saturating_add(c)))
        .unwrap_or(threads);
    Cpu {
        model,
        sockets: u32::try_from(sockets.len()).unwrap_or(u32::MAX),
        cores,
        threads,
    }
}

/// `MemTotal` from `/proc/meminfo`, converted from kB to bytes.
fn parse_mem_total(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    })
}

// ---------------------------------------------------------------------------------------
// Disks
// ---------------------------------------------------------------------------------------

/// Kernel name prefixes of block devices that are not disks: loop, RAM and compressed-RAM
/// disks, device-mapper and md arrays (built on disks that are listed themselves), optical
/// and floppy drives.
const NOT_DISKS: [&str; 7] = ["loop", "ram", "zram", "dm-", "sr", "fd", "md"];

/// Whether `sys/block/<name>` is skipped by name: one of [`NOT_DISKS`] followed by a digit.
fn is_skipped_block_name(name: &str) -> bool {
    NOT_DISKS.iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Every disk under `sys/block`, sorted by name.
fn read_disks(block: &Path) -> Vec<Disk> {
    list_names(block)
        .into_iter()
        .filter(|name| !is_skipped_block_name(name))
        .filter_map(|name| read_disk(&block.join(&name), name))
        .collect()
}

/// One disk, or `None` when it is skipped: zero size (an empty card reader), a partition,
/// or a hidden device (the per-path `nvmeXcYnZ` devices of native NVMe multipath, which
/// appear in `/sys/block` beside the `nvmeXnZ` disk they make up).
fn read_disk(dir: &Path, name: String) -> Option<Disk> {
    if dir.join("partition").exists() || read_trimmed(&dir.join("hidden")).as_deref() == Some("1") {
        return None;
    }
    let sectors: u64 = read_trimmed(&dir.join("size"))?.parse().ok()?;
    // `size` is always in 512-byte sectors, whatever the device's logical block size.
    let size_bytes = sectors.saturating_mul(512);
    if size_bytes == 0 {
        return None;
    }
    let device = dir.join("device");
    Some(Disk {
        name,
        size_bytes,
        model: read_trimmed(&device.join("model")),
        serial: read_disk_serial(dir),
        rotational: read_trimmed(&dir.join("queue/rotational")).as_deref() == Some("1"),
    })
}

/// A disk's serial number, from the first source that has one:
///
/// 1. `device/serial` — NVMe (the controller or, with native multipath, the subsystem),
///    MMC;
/// 2. `serial` beside `size` — virtio-blk (QEMU's `-drive serial=`);
/// 3. `device/vpd_pg80` — SCSI and SATA disks, whose sysfs device has no `serial`: the
///    Unit Serial Number VPD page, returned raw.
fn read_disk_serial(dir: &Path) -> Option<String> {
    read_trimmed(&dir.join("device/serial"))
        .or_else(|| read_trimmed(&dir.join("serial")))
        .or_else(|| {
            fs::read(dir.join("device/vpd_pg80"))
                .ok()
                .and_then(|page| parse_vpd_pg80(&page))
        })
}

/// The serial number in a SCSI Unit Serial Number VPD page (page code 0x80): a four-byte
/// header whose bytes 2–3 are the big-endian length of the ASCII serial that follows.
fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    let [_, 0x80, hi, lo, body @ ..] = page else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(body.len());
    clean(&String::from_utf8_lossy(&body[..len]))
}

// ---------------------------------------------------------------------------------------
// NICs
// ---------------------------------------------------------------------------------------

/// Every physical NIC under `sys/class/net`, sorted by name.
fn read_nics(net: &Path) -> Vec<Nic> {
    list_names(net)
        .into_iter()
        .filter(|name| name != "lo")
        .filter_map(|name| read_nic(&net.join(&name), name))
        .collect()
}

/// One NIC, or `None` when it is skipped: no `device` entry (a virtual interface: bridge,
/// bond, VLAN, veth, tun…), or no usable MAC address (all zeros, or not six octets, like
/// InfiniBand's 20-byte addresses).
///
/// The MAC of a bond member is its permanent address (`bonding_slave/perm_hwaddr`), since
/// `address` then shows the bond's.
fn read_nic(dir: &Path, name: String) -> Option<Nic> {
    if !dir.join("device").exists() {
        return None;
    }
    let address = read_trimmed(&dir.join("bonding_slave/perm_hwaddr"))
        .or_else(|| read_trimmed(&dir.join("address")))?;
    let mac: MacAddr = address.parse().ok()?;
    if mac.octets() == [0; 6] {
        return None;
    }
    let link_up = read_trimmed(&dir.join("operstate")).as_deref() == Some("up")
        || read_trimmed(&dir.join("carrier")).as_deref() == Some("1");
    Some(Nic {
        name,
        mac,
        link_up,
        speed_mbps: read_trimmed(&dir.join("speed")).and_then(|s| parse_speed(&s)),
    })
}

/// A link speed in Mb/s: a positive integer. The kernel writes `-1` for an unknown speed
/// (and some drivers `4294967295`, the same value unsigned), and refuses to read it at all
/// while an interface is down.
fn parse_speed(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|&v| v > 0 && v != u32::MAX)
}

// ---------------------------------------------------------------------------------------
// DMI, firmware
// ---------------------------------------------------------------------------------------

/// The DMI identity from `sys/class/dmi/id`. `product_serial` and `product_uuid` are
/// readable by root only; as another user they are `None`.
fn read_dmi(dir: &Path) -> Dmi {
    let field = |file: &str| read_trimmed(&dir.join(file)).filter(|v| !is_dmi_placeholder(v));
    Dmi {
        vendor: field("sys_vendor"),
        product: field("product_name"),
        serial: field("product_serial"),
        system_uuid: field("product_uuid").filter(|uuid| !is_placeholder_uuid(uuid)),
    }
}

/// Strings that board vendors leave in SMBIOS fields they did not fill in.
const DMI_PLACEHOLDERS: [&str; 16] = [
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "system manufacturer",
    "system product name",
    "system serial number",
    "system version",
    "not specified",
    "not applicable",
    "not available",
    "none",
    "n/a",
    "oem",
    "o.e.m.",
    "unknown",
    "0123456789",
];

/// Whether a DMI string is a placeholder rather than a value: one of
/// [`DMI_PLACEHOLDERS`] (any case), or nothing but zeros, dots, dashes and spaces.
fn is_dmi_placeholder(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    DMI_PLACEHOLDERS.contains(&lower.as_str())
        || v.chars().all(|c| matches!(c, '0' | '.' | '-' | ' '))
}

/// System UUIDs that identify nothing: all zeros (caught by [`is_dmi_placeholder`]), all
/// ones, and the sequential one of unconfigured AMI firmware.
fn is_placeholder_uuid(uuid: &str) -> bool {
    let lower = uuid.to_ascii_lowercase();
    lower == "03000200-0400-0500-0006-000700080009" || lower.chars().all(|c| matches!(c, 'f' | '-'))
}

/// UEFI when the kernel exposes `sys/firmware/efi` (booted through UEFI), BIOS otherwise;
/// `None` when `sys/firmware` itself is missing (sysfs not mounted: nothing to tell).
fn read_firmware(firmware: &Path) -> Option<FirmwareMode> {
    if firmware.join("efi").exists() {
        Some(FirmwareMode::Uefi)
    } else if firmware.exists() {
        Some(FirmwareMode::Bios)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_skipped_by_prefix_only_before_a_digit() {
        for skipped in [
            "loop0", "loop12", "ram0", "zram0", "dm-0", "dm-13", "sr0", "fd0", "md0", "md127",
        ] {
            assert!(is_skipped_block_name(skipped), "{skipped} must be skipped");
        }
        for disk in [
            "sda", "vda", "nvme0n1", "mmcblk0", "xvda", "hda", "srv0x", "mdx",
        ] {
            assert!(!is_skipped_block_name(disk), "{disk} must be kept");
        }
    }

    #[test]
    fn cpuinfo_without_topology_is_one_socket_of_logical_cores() {
        let text = "processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n\n\
                    processor\t: 2\n\nprocessor\t: 3\n";
        assert_eq!(
            parse_cpuinfo(text),
            Cpu {
                model: String::new(),
                sockets: 1,
                cores: 4,
                threads: 4
            }
        );
    }

    #[test]
    fn cpuinfo_with_one_socket_missing_cpu_cores_falls_back_to_threads() {
        let text = "processor : 0\nphysical id : 0\ncpu cores : 2\n\n\
                    processor : 1\nphysical id : 1\n";
        let cpu = parse_cpuinfo(text);
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (2, 2, 2));
    }

    #[test]
    fn empty_cpuinfo_is_all_zero() {
        assert_eq!(parse_cpuinfo(""), Cpu::default());
    }

    #[test]
    fn cpu_model_falls_back_to_processor_field() {
        let text = "Processor\t: ARMv7 Processor rev 4 (v7l)\nprocessor\t: 0\n";
        assert_eq!(parse_cpuinfo(text).model, "ARMv7 Processor rev 4 (v7l)");
    }

    #[test]
    fn mem_total_is_converted_from_kib() {
        let text = "MemTotal:        2030652 kB\nMemFree:          123 kB\n";
        assert_eq!(parse_mem_total(text), Some(2_030_652 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn speeds() {
        assert_eq!(parse_speed("10000"), Some(10_000));
        assert_eq!(parse_speed("-1"), None);
        assert_eq!(parse_speed("0"), None);
        assert_eq!(parse_speed("4294967295"), None);
        assert_eq!(parse_speed("fast"), None);
    }

    #[test]
    fn vpd_pg80_pages() {
        let mut page = vec![0x00, 0x80, 0x00, 0x14];
        page.extend_from_slice(b"            ZC1A2B3C");
        assert_eq!(parse_vpd_pg80(&page).as_deref(), Some("ZC1A2B3C"));
        // A length longer than the data is clamped; a wrong page code is refused.
        assert_eq!(
            parse_vpd_pg80(&[0, 0x80, 0, 0xff, b'A', b'B']).as_deref(),
            Some("AB")
        );
        assert_eq!(parse_vpd_pg80(&[0, 0x83, 0, 2, b'A', b'B']), None);
        assert_eq!(parse_vpd_pg80(&[0, 0x80, 0, 0]), None);
        assert_eq!(parse_vpd_pg80(&[0, 0x80]), None);
    }

    #[test]
    fn dmi_placeholders() {
        for p in [
            "To be filled by O.E.M.",
            "To Be Filled By O.E.M.",
            "Default string",
            "System Serial Number",
            "Not Specified",
            "0",
            "00000000",
            "00000000-0000-0000-0000-000000000000",
            "..........",
        ] {
            assert!(is_dmi_placeholder(p), "{p:?} is a placeholder");
        }
        for v in ["Dell Inc.", "QEMU", "7XJ4Q33", "PowerEdge R640", "0A1"] {
            assert!(!is_dmi_placeholder(v), "{v:?} is a value");
        }
        assert!(is_placeholder_uuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"));
        assert!(is_placeholder_uuid("03000200-0400-0500-0006-000700080009"));
        assert!(!is_placeholder_uuid("4c4c4544-0058-4a10-8034-b7c04f513333"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_000_204_886_016), "931.5 GiB");
    }
}
