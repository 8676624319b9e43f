//! How `cosmctl vms create` reads its flags: sizes (`512M`, `2G`), `--disk image=NAME` or
//! `--disk blank=SIZE`, `--nic BRIDGE[,mac=MAC]`, and the VM kinds and states as clap
//! values. Pure parsing: each parser answers the request type of `cosm-wire` or a message
//! that clap prints after the flag's name (`invalid value 'x' for '--memory <SIZE>': …`).

use clap::builder::PossibleValue;
use clap::ValueEnum;
use cosm_wire::{BridgeName, DiskRequest, MacAddr, NicRequest, VmKind, VmState};

const MIB: u64 = 1 << 20;

/// A size with a binary unit: `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (case-insensitive), as bytes.
/// `bare_unit` is the unit of a number without one (`None`: a unit is required).
fn parse_size(text: &str, bare_unit: Option<u64>) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: a whole number with a unit, e.g. 512M or 2G"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?}: write a whole number in a smaller unit instead, e.g. 1536M for 1.5G"
        ));
    }
    let unit_bytes = match unit.trim().to_ascii_lowercase().as_str() {
        "" => bare_unit
            .ok_or_else(|| format!("{text:?} has no unit: write e.g. {number}G or {number}M"))?,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => MIB << 10,
        "t" | "tb" | "tib" => MIB << 20,
        other => return Err(unknown_unit(other, text)),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    n.checked_mul(unit_bytes)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn unknown_unit(unit: &str, text: &str) -> String {
    format!("unknown unit {unit:?} in {text:?}: use M (MiB), G (GiB) or T (TiB), e.g. 512M or 2G")
}

/// `--memory`: `512M`, `2G`, `2048MiB`; a bare number is MiB. Answers MiB.
pub(crate) fn parse_memory(text: &str) -> Result<u64, String> {
    let mib = parse_size(text, Some(MIB))? / MIB;
    if mib == 0 {
        return Err("a VM needs some memory: at least 1M".to_string());
    }
    Ok(mib)
}

/// `--disk image=NAME` (a copy-on-write overlay of a repository image) or
/// `--disk blank=SIZE` (an empty disk; the size needs a unit).
pub(crate) fn parse_disk(text: &str) -> Result<DiskRequest, String> {
    match text.split_once('=') {
        Some(("image", name)) => {
            if !cosm_wire::valid_image_name(name) {
                return Err(format!(
                    "{name:?} is not an image name (letters, digits, '.', '_', '-'); see `cosmctl images list`"
                ));
            }
            Ok(DiskRequest::Image {
                image: name.to_string(),
            })
        }
        Some(("blank", size)) => {
            let size_bytes = parse_size(size, None)?;
            if size_bytes == 0 {
                return Err("a blank disk needs a size above zero, e.g. blank=10G".to_string());
            }
            Ok(DiskRequest::Blank { size_bytes })
        }
        _ => Err(format!(
            "{text:?}: write image=NAME (a copy of a repository image) or blank=SIZE (an empty disk, e.g. blank=10G)"
        )),
    }
}

/// `--nic BRIDGE` or `--nic BRIDGE,mac=MAC`.
pub(crate) fn parse_nic(text: &str) -> Result<NicRequest, String> {
    let mut parts = text.split(',');
    let bridge = parts.next().unwrap_or_default();
    let bridge = BridgeName::new(bridge).map_err(|e| e.to_string())?;
    let mut mac = None;
    for part in parts {
        match part.split_once('=') {
            Some(("mac", m)) if mac.is_none() => {
                mac = Some(m.parse::<MacAddr>().map_err(|e| format!("mac={m}: {e}"))?);
            }
            Some(("mac", _)) => return Err("mac= is given twice".to_string()),
            _ => {
                return Err(format!(
                    "unknown NIC option {part:?}: write BRIDGE or BRIDGE,mac=52:54:00:12:34:56"
                ))
            }
        }
    }
    Ok(NicRequest {
        mac,
        ..NicRequest::on_bridge(bridge)
    })
}

/// A VM kind as a command-line value (`kvm`, `tcg`, `xen-pv`, `xen-hvm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KindArg(pub(crate) VmKind);

static KIND_ARGS: [KindArg; 4] = [
    KindArg(VmKind::Kvm),
    KindArg(VmKind::Tcg),
    KindArg(VmKind::XenPv),
    KindArg(VmKind::XenHvm),
];

impl ValueEnum for KindArg {
    fn value_variants<'a>() -> &'a [Self] {
        &KIND_ARGS
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        let (name, help) = match self.0 {
            VmKind::Kvm => ("kvm", "QEMU with KVM acceleration (the default)"),
            VmKind::Tcg => ("tcg", "QEMU without acceleration: slow, runs anywhere"),
            VmKind::XenPv => ("xen-pv", "Xen paravirtualised; needs --kernel"),
            VmKind::XenHvm => ("xen-hvm", "Xen fully virtualised"),
        };
        Some(PossibleValue::new(name).help(help))
    }
}

/// A VM state as a command-line value, so that `--help` lists the states the wire knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmStateArg(pub(crate) VmState);

static VM_STATE_ARGS: [VmStateArg; VmState::ALL.len()] = {
    let mut out = [VmStateArg(VmState::Pending); VmState::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = VmStateArg(VmState::ALL[i]);
        i += 1;
    }
    out
};

impl ValueEnum for VmStateArg {
    fn value_variants<'a>() -> &'a [Self] {
        &VM_STATE_ARGS
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512));
        assert_eq!(parse_memory("512MiB"), Ok(512));
        assert_eq!(parse_memory("2G"), Ok(2048));
        assert_eq!(parse_memory("2gib"), Ok(2048));
        assert_eq!(parse_memory("1T"), Ok(1 << 20));
        assert_eq!(parse_memory("768"), Ok(768), "a bare number is MiB");
        for bad in ["", "G", "2X", "1.5G", "-1G", "0M", "99999999999999999999G"] {
            assert!(parse_memory(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse_memory("2X").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn disks() {
        assert_eq!(
            parse_disk("image=debian-12.qcow2"),
            Ok(DiskRequest::Image {
                image: "debian-12.qcow2".into()
            })
        );
        assert_eq!(
            parse_disk("blank=10G"),
            Ok(DiskRequest::Blank {
                size_bytes: 10 << 30
            })
        );
        let err = parse_disk("blank=10").unwrap_err();
        assert!(err.contains("no unit"), "{err}");
        for bad in [
            "debian.qcow2",
            "image=",
            "image=../x",
            "blank=0G",
            "size=1G",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn nics() {
        let n = parse_nic("br0").unwrap();
        assert_eq!((n.bridge.as_ref().unwrap().as_str(), n.mac), ("br0", None));
        let n = parse_nic("br-vm,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(n.mac.unwrap().to_string(), "52:54:00:12:34:56");
        for bad in [
            "",
            "a-very-long-bridge",
            "br0,mac=nope",
            "br0,vlan=3",
            "br0,mac=52:54:00:12:34:56,mac=52:54:00:12:34:57",
        ] {
            assert!(parse_nic(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn every_state_and_kind_is_a_value() {
        let states: Vec<String> = VmStateArg::value_variants()
            .iter()
            .filter_map(|s| s.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        let want: Vec<&str> = VmState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, want);
        // The command-line names are the wire names.
        for k in KindArg::value_variants() {
            let name = k.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(serde_json::to_value(k.0).unwrap(), name.as_str());
        }
    }
}
