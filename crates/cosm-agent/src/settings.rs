//! Where the agent's settings come from: flags and environment first, then a TOML config
//! file (installed systems), then the kernel command line (`cosm.appliance=URL`,
//! `cosm.token=…`, `cosm.mac=…`, `cosm.hypervisor=…`, `cosm.migration_uri=…`,
//! `cosm.vtep_ip=…`, `cosm.vtep_dev=…`; the discovery ramdisk). One binary serves both.

use cosm_wire::MacAddr;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The config file format.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub appliance: Option<String>,
    pub token: Option<String>,
    pub mac: Option<MacAddr>,
    pub state_dir: Option<PathBuf>,
    /// libvirt URI of this host's hypervisor (`qemu:///system`): runs the VM controller.
    pub hypervisor: Option<String>,
    /// The libvirt URI other hosts reach this one at for live migration.
    pub migration_uri: Option<String>,
    /// This host's VXLAN endpoint on the data network (tenant networks).
    pub vtep_ip: Option<std::net::Ipv4Addr>,
    /// The data network's interface, where the VXLAN devices are bound.
    pub vtep_dev: Option<String>,
}

/// Settings after every source was consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Base URL of the appliance, e.g. `http://192.0.2.1:8080`.
    pub appliance: String,
    /// Enrolment token; not needed once a credential is stored.
    pub token: Option<String>,
    /// The MAC to enrol as; by default the first NIC with link, else the first NIC.
    pub mac: Option<MacAddr>,
    /// Where the node credential is kept (0600), and the VM controller's images and VMs.
    pub state_dir: PathBuf,
    /// libvirt URI of this host's hypervisor; without it there is no VM controller.
    pub hypervisor: Option<String>,
    /// The libvirt URI other hosts reach this one at for live migration (reported).
    pub migration_uri: Option<String>,
    /// This host's VXLAN endpoint (reported); without it the host carries no tenant
    /// network.
    pub vtep_ip: Option<std::net::Ipv4Addr>,
    /// The interface the VXLAN devices are bound to; the kernel's route to each peer when
    /// absent.
    pub vtep_dev: Option<String>,
}

/// `key=value` words of a kernel command line, for the `cosm.` keys.
pub fn from_cmdline(cmdline: &str) -> FileSettings {
    let mut f = FileSettings::default();
    for word in cmdline.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else {
            continue;
        };
        match k {
            "cosm.appliance" => f.appliance = Some(v.to_string()),
            "cosm.token" => f.token = Some(v.to_string()),
            "cosm.mac" => f.mac = v.parse().ok(),
            "cosm.state_dir" => f.state_dir = Some(PathBuf::from(v)),
            "cosm.hypervisor" => f.hypervisor = Some(v.to_string()),
            "cosm.migration_uri" => f.migration_uri = Some(v.to_string()),
            "cosm.vtep_ip" => f.vtep_ip = v.parse().ok(),
            "cosm.vtep_dev" => f.vtep_dev = Some(v.to_string()),
            _ => {}
        }
    }
    f
}

/// Reads a config file; errors name the file (and the key, from toml).
pub fn from_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read agent config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}

/// Merges the sources, first one wins: flags/env, config file, kernel command line.
pub fn merge(sources: &[FileSettings]) -> anyhow::Result<Settings> {
    let pick = |f: fn(&FileSettings) -> Option<String>| sources.iter().find_map(f);
    let appliance = pick(|s| s.appliance.clone()).ok_or_else(|| {
        anyhow::anyhow!(
            "no appliance URL: pass --appliance URL, set COSM_APPLIANCE, put `appliance = \"URL\"` in the config file, or boot with cosm.appliance=URL"
        )
    })?;
    let appliance = appliance.trim_end_matches('/').to_string();
    let vtep_dev = pick(|s| s.vtep_dev.clone());
    if let Some(dev) = &vtep_dev {
        if !valid_ifname(dev) {
            anyhow::bail!(
                "VXLAN interface {dev:?} (--vtep-dev, vtep_dev) is not a network interface name: \
                 1 to 15 characters, no '/', ':' or white space"
            );
        }
    }
    if !appliance.starts_with("http://") && !appliance.starts_with("https://") {
        anyhow::bail!("appliance URL {appliance:?} must start with http:// or https://");
    }
    Ok(Settings {
        appliance,
        token: pick(|s| s.token.clone()),
        mac: sources.iter().find_map(|s| s.mac),
        state_dir: sources
            .iter()
            .find_map(|s| s.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/cosm-agent")),
        hypervisor: pick(|s| s.hypervisor.clone()),
        migration_uri: pick(|s| s.migration_uri.clone()),
        vtep_ip: sources.iter().find_map(|s| s.vtep_ip),
        vtep_dev,
    })
}

/// Whether Linux would take `name` as an interface name.
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_line() {
        let f = from_cmdline("BOOT_IMAGE=vmlinuz console=ttyS0 cosm.appliance=http://192.0.2.1:8080 cosm.token=cosm_abc cosm.mac=52:54:00:12:34:56 quiet");
        assert_eq!(f.appliance.as_deref(), Some("http://192.0.2.1:8080"));
        assert_eq!(f.token.as_deref(), Some("cosm_abc"));
        assert_eq!(f.mac, Some("52:54:00:12:34:56".parse().unwrap()));
        assert_eq!(f.hypervisor, None);
        let f = from_cmdline(
            "cosm.hypervisor=qemu:///system cosm.migration_uri=qemu+tcp://10.0.0.5/system",
        );
        assert_eq!(f.hypervisor.as_deref(), Some("qemu:///system"));
        assert_eq!(
            f.migration_uri.as_deref(),
            Some("qemu+tcp://10.0.0.5/system")
        );
        let f = from_cmdline("cosm.vtep_ip=192.0.2.11 cosm.vtep_dev=eth1");
        assert_eq!(f.vtep_ip, Some(std::net::Ipv4Addr::new(192, 0, 2, 11)));
        assert_eq!(f.vtep_dev.as_deref(), Some("eth1"));
    }

    #[test]
    fn the_vtep_comes_from_the_config_file_and_a_bad_interface_is_refused() {
        let f: FileSettings = toml::from_str(
            "appliance = \"http://a:1\"\nvtep_ip = \"10.1.0.5\"\nvtep_dev = \"bond0.100\"",
        )
        .unwrap();
        let s = merge(&[f]).unwrap();
        assert_eq!(s.vtep_ip, Some(std::net::Ipv4Addr::new(10, 1, 0, 5)));
        assert_eq!(s.vtep_dev.as_deref(), Some("bond0.100"));
        let e = merge(&[from_cmdline(
            "cosm.appliance=http://a:1 cosm.vtep_dev=a-very-long-interface-name",
        )])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--vtep-dev"), "{e}");
    }

    #[test]
    fn first_source_wins_and_errors_say_what_to_do() {
        let flags = FileSettings {
            token: Some("flag".into()),
            ..Default::default()
        };
        let cmdline = from_cmdline("cosm.appliance=http://a:1/ cosm.token=cmdline");
        let s = merge(&[flags, cmdline]).unwrap();
        assert_eq!(
            (s.appliance.as_str(), s.token.as_deref()),
            ("http://a:1", Some("flag"))
        );
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/cosm-agent"));
        let e = merge(&[FileSettings::default()]).unwrap_err().to_string();
        assert!(e.contains("cosm.appliance=URL"), "{e}");
        let e = merge(&[from_cmdline("cosm.appliance=ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://"), "{e}");
    }
}
