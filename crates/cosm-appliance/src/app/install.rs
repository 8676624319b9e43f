//! Image installs (issue 16): which way a ready machine is installed, the plan its ramdisk
//! agent follows, and the progress it reports.
//!
//! A role is installed by `kickstart` or by `image`; without a setting (the default), by
//! image when the repository has an image whose manifest names the role (the newest
//! upload), else by kickstart. A ready machine installed by image boots the agent ramdisk
//! with `cosm.install=<plan URL with its install token>`; the plan URL is open like the
//! kickstart's and serves nothing without that token, which is only handed to the address
//! DHCP leased to the machine (authoritative mode).

use super::{App, AppError, Op};
use crate::store::StoreError;
use cosm_wire::{
    EventKind, Image, InstallFile, InstallMethod, InstallPlan, InstallProgress, MacAddr, Machine,
    MachineState,
};

/// How often the ramdisk agent sends progress, in seconds.
pub const PROGRESS_EVERY_SECS: u32 = 3;

/// Where the installed agent keeps its credential (the image's unit reads it there).
pub const AGENT_STATE_DIR: &str = "/var/lib/cosm-agent";

/// How a machine of a role is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallChoice {
    Kickstart,
    Image(Box<Image>),
    /// The role asks for an image install but there is no image for it: why.
    Missing(String),
}

impl App {
    /// How `m` is installed: its role's setting, or (none set) by image when one exists
    /// for the role.
    pub fn install_choice(&self, m: &Machine) -> Result<InstallChoice, StoreError> {
        let Some(role) = &m.role else {
            return Ok(InstallChoice::Kickstart);
        };
        let method = self.store.role(role)?.and_then(|r| r.install);
        if method == Some(InstallMethod::Kickstart) {
            return Ok(InstallChoice::Kickstart);
        }
        let image = self
            .store
            .images()?
            .into_iter()
            .filter(|i| i.os.as_ref().is_some_and(|os| &os.role == role))
            .max_by(|a, b| {
                a.uploaded_at
                    .cmp(&b.uploaded_at)
                    .then_with(|| a.name.cmp(&b.name))
            });
        Ok(match (image, method) {
            (Some(i), _) => InstallChoice::Image(Box::new(i)),
            (None, Some(InstallMethod::Image)) => InstallChoice::Missing(format!(
                "role {role} is installed by image, but no image in the repository is for role {role} (cosmctl images upload FILE --manifest MANIFEST)"
            )),
            (None, _) => InstallChoice::Kickstart,
        })
    }

    /// The ramdisk agent of `mac` fetches its install plan with the install token its boot
    /// script gave it (→ `deploying`). Without that token nothing is served and nothing
    /// moves: the URL is open to the whole provisioning network.
    pub async fn install_plan(
        &self,
        mac: MacAddr,
        token: Option<&str>,
    ) -> Result<InstallPlan, AppError> {
        let boot = self.boot()?;
        let m = self.installing_machine(mac, token, "the install plan", "cosm.install=")?;
        let image = match self.install_choice(&m)? {
            InstallChoice::Image(i) => i,
            InstallChoice::Kickstart => {
                return Err(StoreError::Conflict {
                    code: "not_image_install",
                    message: format!("{mac} is installed by kickstart, not from an image"),
                }
                .into())
            }
            InstallChoice::Missing(why) => {
                return Err(StoreError::Conflict {
                    code: "no_role_image",
                    message: why,
                }
                .into())
            }
        };
        let os = image.os.as_ref().expect("a role image has its manifest");
        let base = &boot.settings.appliance_url;
        let plan = InstallPlan {
            mac,
            image: image.name.clone(),
            image_url: format!("{base}/boot/images/{}?mac={mac}&step=image", image.name),
            size: image.size_bytes,
            sha256: image.sha256.clone(),
            chunk_bytes: cosm_wire::IMAGE_CHUNK_BYTES,
            chunks: image.chunks.clone(),
            raw_size: os.raw_size,
            disk: install_disk(&m),
            root_partition: "root".into(),
            files: installed_files(&m, base, boot.reserved_network(&m).as_ref()),
            agent_state_dir: AGENT_STATE_DIR.into(),
            progress_every_secs: PROGRESS_EVERY_SECS,
        };
        self.store
            .run_machine(Op::StartInstall {
                mac,
                release: os.release.clone(),
                image: Some(image.name.clone()),
            })
            .await?;
        boot.timeline.note(
            mac,
            EventKind::Boot,
            format!(
                "install plan served: image {} ({}, role {}, {} compressed, {} raw) onto {}",
                image.name,
                os.release,
                os.role,
                cosm_wire::human_bytes(image.size_bytes),
                cosm_wire::human_bytes(os.raw_size),
                plan.disk
                    .as_deref()
                    .unwrap_or("the first disk large enough")
            ),
        );
        Ok(plan)
    }

    /// A deploying machine's installer says how far it got: a line on its timeline.
    pub fn install_progress(&self, p: &InstallProgress) -> Result<(), AppError> {
        let boot = self.boot()?;
        let m = self
            .store
            .machine(p.mac)?
            .ok_or_else(|| AppError::NotFound {
                message: format!("no machine {}", p.mac),
            })?;
        if m.state != MachineState::Deploying {
            return Err(StoreError::Conflict {
                code: "not_deploying",
                message: format!(
                    "{} is {}, not deploying: no install is under way",
                    m.mac, m.state
                ),
            }
            .into());
        }
        let phase: String = p
            .phase
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(32)
            .collect();
        let speed = if p.mib_per_s.is_finite() && p.mib_per_s >= 0.0 {
            format!(" at {:.1} MiB/s", p.mib_per_s.min(1e6))
        } else {
            String::new()
        };
        boot.timeline.note(
            p.mac,
            EventKind::Boot,
            format!(
                "installing: {phase} {}% ({} of {}){speed}",
                p.percent(),
                cosm_wire::human_bytes(p.bytes.min(p.total)),
                cosm_wire::human_bytes(p.total)
            ),
        );
        Ok(())
    }
}

/// The disk the image goes to: the first disk by name (as the kickstart's), or `None` for
/// the agent to choose when the inventory has no disk.
fn install_disk(m: &Machine) -> Option<String> {
    let inv = m.inventory.as_ref()?;
    let mut disks: Vec<_> = inv.disks.iter().collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks.first().map(|d| d.name.clone())
}

/// A machine's address, prefix length, gateway and DNS servers, from its reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNetwork {
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub dns: Vec<std::net::Ipv4Addr>,
}

/// The hostname a machine gets: its own, else `<role>-<last 6 hex digits of its MAC>`.
pub fn hostname_of(m: &Machine) -> String {
    if let Some(h) = &m.hostname {
        return h.clone();
    }
    let hex: String = m.mac.to_string().replace(':', "");
    let role = m
        .role
        .as_ref()
        .map_or("node".to_string(), |r| r.to_string());
    format!("{role}-{}", &hex[6..])
}

/// The files the installer writes into the installed system: hostname, hosts, the
/// agent's settings (hosts: its hypervisor), and a static network when the machine has a
/// reservation (else the image's DHCP on every NIC stays).
pub fn installed_files(
    m: &Machine,
    appliance_url: &str,
    network: Option<&StaticNetwork>,
) -> Vec<InstallFile> {
    let hostname = hostname_of(m);
    let file = |path: &str, mode: u32, content: String| InstallFile {
        path: path.into(),
        mode,
        content,
    };
    let mut files = vec![
        file("/etc/hostname", 0o644, format!("{hostname}\n")),
        file(
            "/etc/hosts",
            0o644,
            format!("127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost ip6-loopback\n"),
        ),
        file(
            "/etc/cosm/agent.toml",
            0o600,
            format!(
                "# Written by the COSM installer for {mac}.\nappliance = \"{appliance_url}\"\nmac = \"{mac}\"\nstate_dir = \"{AGENT_STATE_DIR}\"\n",
                mac = m.mac
            ),
        ),
    ];
    if m.role.as_ref().is_some_and(|r| r.as_str() == "host") {
        // The agent's VM controller drives this host's libvirt; VM files live where QEMU
        // can reach them, not in the agent's 0700 state directory.
        files.push(file(
            "/etc/systemd/system/cosm-agent.service.d/hypervisor.conf",
            0o644,
            "[Unit]\nAfter=libvirtd.service\nWants=libvirtd.service\n[Service]\nEnvironment=COSM_HYPERVISOR=qemu:///system COSM_VM_DIR=/var/lib/cosm-vms\n".into(),
        ));
    }
    if let Some(n) = network {
        let mut unit = format!(
            "# Written by the COSM installer: the reserved address of {mac}.\n[Match]\nMACAddress={mac}\n\n[Network]\nAddress={}/{}\n",
            n.address,
            n.prefix_len,
            mac = m.mac
        );
        if let Some(g) = n.gateway {
            unit.push_str(&format!("Gateway={g}\n"));
        }
        for d in &n.dns {
            unit.push_str(&format!("DNS={d}\n"));
        }
        files.push(file("/etc/systemd/network/10-cosm.network", 0o644, unit));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_wire::valid_install_path;

    fn machine(role: &str, hostname: Option<&str>) -> Machine {
        let mut m: Machine = serde_json::from_value(serde_json::json!({
            "id": 1,
            "mac": "52:54:00:ab:cd:ef",
            "state": "ready",
            "created_at": "2026-12-01T00:00:00Z",
            "updated_at": "2026-12-01T00:00:00Z",
            "state_since": "2026-12-01T00:00:00Z",
            "hostname": null,
            "role": null,
            "reserved_ip": null,
            "inventory": null,
        }))
        .expect("a minimal machine parses");
        m.role = Some(role.parse().unwrap());
        m.hostname = hostname.map(str::to_string);
        m
    }

    #[test]
    fn every_file_is_inside_the_root_and_names_the_machine() {
        let m = machine("web", None);
        let files = installed_files(&m, "http://192.0.2.1:8080", None);
        assert!(files.iter().all(|f| valid_install_path(&f.path)));
        let get = |p: &str| {
            files
                .iter()
                .find(|f| f.path == p)
                .map(|f| f.content.clone())
        };
        assert_eq!(get("/etc/hostname").unwrap(), "web-abcdef\n");
        let agent = get("/etc/cosm/agent.toml").unwrap();
        assert!(agent.contains("mac = \"52:54:00:ab:cd:ef\""), "{agent}");
        assert!(
            agent.contains("appliance = \"http://192.0.2.1:8080\""),
            "{agent}"
        );
        assert!(get("/etc/systemd/network/10-cosm.network").is_none());
        assert!(get("/etc/systemd/system/cosm-agent.service.d/hypervisor.conf").is_none());
    }

    #[test]
    fn hosts_get_their_hypervisor_and_reservations_a_static_network() {
        let m = machine("host", Some("kvm-7"));
        let net = StaticNetwork {
            address: "192.0.2.50".parse().unwrap(),
            prefix_len: 24,
            gateway: Some("192.0.2.1".parse().unwrap()),
            dns: vec!["192.0.2.53".parse().unwrap()],
        };
        let files = installed_files(&m, "http://192.0.2.1:8080", Some(&net));
        let get = |p: &str| {
            files
                .iter()
                .find(|f| f.path == p)
                .map(|f| f.content.clone())
        };
        assert_eq!(get("/etc/hostname").unwrap(), "kvm-7\n");
        let unit = get("/etc/systemd/network/10-cosm.network").unwrap();
        assert!(unit.contains("MACAddress=52:54:00:ab:cd:ef"), "{unit}");
        assert!(unit.contains("Address=192.0.2.50/24"), "{unit}");
        assert!(
            unit.contains("Gateway=192.0.2.1\nDNS=192.0.2.53\n"),
            "{unit}"
        );
        assert!(
            get("/etc/systemd/system/cosm-agent.service.d/hypervisor.conf")
                .unwrap()
                .contains("COSM_HYPERVISOR=qemu:///system")
        );
    }
}
