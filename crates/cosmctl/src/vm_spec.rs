//! How `cosmctl vms create` reads its flags: sizes (`512M`, `2G`), `--disk image=NAME` or
//! `--disk blank=SIZE`, `--nic BRIDGE[,mac=MAC]` or `--nic network=NAME[,…]`, and the VM kinds and states as clap
//! values. Pure parsing: each parser answers the request type of `cosm-wire` or a message
//! that clap prints after the flag's name (`invalid value 'x' for '--memory <SIZE>': …`).

use clap::builder::PossibleValue;
use clap::ValueEnum;
use cosm_wire::{
    BridgeName, DiskRequest, MacAddr, NetworkName, NicRequest, SecGroupName, VmKind, VmState,
};
use std::net::Ipv4Addr;

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

/// What `--help` says about `--nic` (kept next to the code that reads it).
pub(crate) const NIC_HELP: &str = "\
NICs: --nic BRIDGE (or bridge=BRIDGE) puts a NIC on that host bridge; --nic network=NAME
puts it on a tenant network (see `cosmctl networks`), where it is a port with the lowest
free address of the network unless ip=IP is given, and the security groups of its group=
options (none: all traffic passes). mac=MAC sets the MAC (else the appliance picks one,
52:54:00 prefix). Options are comma-separated:
  --nic br0
  --nic br0,mac=52:54:00:12:34:56
  --nic network=tenant-a
  --nic network=tenant-a,ip=198.51.100.10,group=ssh,group=web";

/// `--nic`: `BRIDGE[,mac=MAC]` or `bridge=BRIDGE[,mac=MAC]` (a host bridge), or
/// `network=NAME[,mac=MAC][,ip=IP][,group=GROUP]...` (a tenant network).
pub(crate) fn parse_nic(text: &str) -> Result<NicRequest, String> {
    let mut nic = NicRequest::default();
    for (i, part) in text.split(',').enumerate() {
        let (key, value) = match part.split_once('=') {
            Some(kv) => kv,
            // The old form: the first part alone is the bridge.
            None if i == 0 => ("bridge", part),
            None => {
                return Err(format!(
                    "{part:?} is not an option: write KEY=VALUE with KEY one of mac, ip, group"
                ))
            }
        };
        let twice = || format!("{key}= is given twice");
        match key {
            "bridge" if nic.bridge.is_none() => {
                nic.bridge = Some(BridgeName::new(value).map_err(|e| e.to_string())?);
            }
            "network" if nic.network.is_none() => {
                nic.network = Some(
                    NetworkName::new(value).map_err(|e| format!("network={value}: {e}"))?,
                );
            }
            "mac" if nic.mac.is_none() => {
                nic.mac = Some(value.parse::<MacAddr>().map_err(|e| format!("mac={value}: {e}"))?);
            }
            "ip" if nic.ip.is_none() => {
                nic.ip = Some(value.parse::<Ipv4Addr>().map_err(|_| {
                    format!("ip={value}: not an IPv4 address like 198.51.100.10")
                })?);
            }
            "group" => {
                let g = SecGroupName::new(value).map_err(|e| format!("group={value}: {e}"))?;
                if nic.security_groups.contains(&g) {
                    return Err(format!("group={g} is given twice"));
                }
                nic.security_groups.push(g);
            }
            "bridge" | "network" | "mac" | "ip" => return Err(twice()),
            _ => {
                return Err(format!(
                    "unknown NIC option {key:?}: the options are bridge, network, mac, ip, group \
                     (e.g. br0,mac=52:54:00:12:34:56 or network=tenant-a,ip=198.51.100.10,group=ssh)"
                ))
            }
        }
    }
    match (&nic.bridge, &nic.network) {
        (Some(_), Some(_)) => Err(
            "a NIC is on a host bridge or on a tenant network, not both: give BRIDGE or network=NAME"
                .to_string(),
        ),
        (None, None) => Err(
            "a NIC needs a host bridge (BRIDGE or bridge=BRIDGE) or a tenant network (network=NAME)"
                .to_string(),
        ),
        (Some(b), None) if nic.ip.is_some() || !nic.security_groups.is_empty() => Err(format!(
            "ip= and group= go only with network=NAME: bridge {b} is a plain host bridge"
        )),
        _ => Ok(nic),
    }
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
    fn nics_on_a_bridge() {
        let n = parse_nic("br0").unwrap();
        assert_eq!(n, NicRequest::on_bridge("br0".parse().unwrap()));
        let n = parse_nic("br-vm,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(n.bridge.as_ref().unwrap().as_str(), "br-vm");
        assert_eq!(n.mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(parse_nic("bridge=br-vm,mac=52:54:00:12:34:56").unwrap(), n);
        for bad in [
            "",
            "a-very-long-bridge",
            "br0,mac=nope",
            "br0,vlan=3",
            "br0,br1",
            "br0,mac=52:54:00:12:34:56,mac=52:54:00:12:34:57",
            "bridge=br0,bridge=br1",
            "mac=52:54:00:12:34:56",
        ] {
            assert!(parse_nic(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn nics_on_a_network() {
        let n = parse_nic("network=tenant-a").unwrap();
        assert_eq!(n, NicRequest::on_network("tenant-a".parse().unwrap()));
        let n = parse_nic(
            "network=tenant-a,mac=52:54:00:12:34:56,ip=198.51.100.10,group=ssh,group=web",
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            serde_json::json!({
                "bridge": null, "network": "tenant-a", "mac": "52:54:00:12:34:56",
                "ip": "198.51.100.10", "security_groups": ["ssh", "web"],
            })
        );
        // Options in any order.
        assert_eq!(
            parse_nic(
                "group=ssh,ip=198.51.100.10,network=tenant-a,group=web,mac=52:54:00:12:34:56"
            ),
            Ok(n)
        );
        for (bad, want) in [
            ("network=", "network name"),
            ("network=a/b", "network=a/b"),
            ("network=t,ip=10.0.0.300", "ip=10.0.0.300"),
            ("network=t,ip=::1", "ip=::1"),
            ("network=t,group=a b", "group=a b"),
            ("network=t,group=ssh,group=ssh", "group=ssh is given twice"),
            ("network=t,ip=10.0.0.2,ip=10.0.0.3", "ip= is given twice"),
            ("network=t,network=u", "network= is given twice"),
            ("network=t,ssh", "\"ssh\" is not an option"),
            ("network=t,vlan=3", "unknown NIC option \"vlan\""),
            ("br0,network=t", "not both"),
            ("br0,ip=10.0.0.2", "go only with network=NAME"),
            ("br0,group=ssh", "go only with network=NAME"),
            ("ip=10.0.0.2", "needs a host bridge"),
        ] {
            let err = parse_nic(bad).unwrap_err();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
        // Every example in the help text is read.
        for line in NIC_HELP
            .lines()
            .filter(|l| l.trim_start().starts_with("--nic "))
        {
            let spec = line.trim_start().trim_start_matches("--nic ");
            assert!(parse_nic(spec).is_ok(), "{spec}");
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
