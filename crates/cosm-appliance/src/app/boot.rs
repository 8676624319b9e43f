//! The boot path's decisions: the boot directory (iPXE binaries and the agent ramdisk,
//! staged at start), the enrolment token machines boot with, what a machine boots from its
//! state (the iPXE [`Target`]), its kickstart, and TFTP requests onto timelines. The open
//! HTTP endpoints that serve all this are in `http::boot`.

use super::install::InstallChoice;
use super::timeline::Timeline;
use super::{tokens, AppError, Store};
use crate::config::{BootSettings, KickstartSettings};
use anyhow::Context;
use cosm_kickstart::{Hypervisor, Machine as KsMachine, Site};
use cosm_netboot::ipxe::Target;
use cosm_wire::{EventKind, MacAddr, Machine, MachineState, Scope};
use std::path::Path;
use std::sync::Arc;

/// iPXE binaries staged from `boot.ipxe_dir` (Debian's `ipxe` package).
pub const IPXE_FILES: [&str; 3] = ["undionly.kpxe", "ipxe.efi", "snponly.efi"];
/// The agent ramdisk staged from `boot.ramdisk_dir` (`make image`).
pub const RAMDISK_KERNEL: &str = "vmlinuz";
pub const RAMDISK_INITRD: &str = "initramfs.img";

/// What the boot endpoints need; shared by every request.
#[derive(Debug)]
pub struct BootContext {
    pub settings: BootSettings,
    /// Replaced when the site settings change (`apply_os`): read it with `kickstart()`.
    kickstart: std::sync::RwLock<Arc<KickstartSettings>>,
    /// The image repository's directory (installer kernels and initrds).
    pub images_dir: std::path::PathBuf,
    /// Subnets, to give a machine with a reserved address its netmask, router and DNS.
    pub subnets: Vec<cosm_netboot::dhcp::Subnet>,
    enroll_token: String,
    /// Derives each machine's install token (boot script, kickstart, install report).
    pub install_key: tokens::InstallKey,
    /// The install token (the installer's script) goes only to the address this
    /// appliance's DHCP leased to the machine: set when DHCP here is authoritative.
    pub install_needs_lease: bool,
    pub timeline: Arc<Timeline>,
}

/// The agent binary and its unit, served to installers' %post at /boot/<name>.
pub const AGENT_FILES: [&str; 3] = ["cosm-agent", "cosm-agent-libvirt", "cosm-agent.service"];

/// Copies `names` from `from` into `to` when missing or different (hard link when both
/// are on one filesystem). A name missing from `from` but present in `to` is kept (an
/// operator may have put it there); missing from both is a warning naming `hint`.
fn stage(from: &Path, to: &Path, names: &[&str], hint: &str) -> anyhow::Result<()> {
    for name in names {
        // Debian's ipxe package links /usr/lib/ipxe/ipxe.efi to /boot; stage the file
        // itself, since the TFTP server refuses links that leave its root.
        let src = std::fs::canonicalize(from.join(name)).unwrap_or_else(|_| from.join(name));
        let dst = to.join(name);
        let src_meta = match std::fs::metadata(&src) {
            Ok(m) if m.is_file() => m,
            _ => {
                if dst.is_file() {
                    tracing::info!(file = %dst.display(), "boot file kept (no newer copy in {})", from.display());
                } else {
                    tracing::warn!(missing = %src.display(), "boot file not available: machines that need {name} will not boot; {hint}");
                }
                continue;
            }
        };
        let same = std::fs::symlink_metadata(&dst).is_ok_and(|d| {
            d.is_file()
                && d.len() == src_meta.len()
                && std::fs::read(&src).ok() == std::fs::read(&dst).ok()
        });
        if same {
            continue;
        }
        let tmp = to.join(format!(".{name}.staging"));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp)
                .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()))?;
        }
        std::fs::rename(&tmp, &dst)
            .with_context(|| format!("cannot move {} into place", dst.display()))?;
        tracing::info!(file = %dst.display(), bytes = src_meta.len(), from = %src.display(), "boot file staged");
    }
    Ok(())
}

/// The enrolment token written into boot scripts: kept in `<data_dir>/enroll.token`
/// (0600) and made again if that file is missing or its token was revoked.
async fn boot_enroll_token(store: &Store, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("enroll.token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_string();
        if let Ok(Some(rec)) = store.token_by_hash(&tokens::hash_token(&token)) {
            if rec.info.scope == Scope::Enroll {
                return Ok(token);
            }
        }
        tracing::warn!(path = %path.display(), "the boot enrolment token was revoked or is not an enrol token; making a new one");
    }
    let (info, token) = tokens::create_token(store, "pxe-boot-enroll", Scope::Enroll).await?;
    tokens::write_token_file(&path, &token)?;
    tracing::info!(id = info.id, path = %path.display(), "created the enrolment token that boot scripts hand to the agent ramdisk");
    Ok(token)
}

impl BootContext {
    /// Creates and stages the boot directory and makes sure an enrolment token exists.
    pub async fn prepare(
        settings: BootSettings,
        kickstart: KickstartSettings,
        data_dir: &Path,
        subnets: Vec<cosm_netboot::dhcp::Subnet>,
        store: Store,
        timeline: Arc<Timeline>,
    ) -> anyhow::Result<BootContext> {
        std::fs::create_dir_all(&settings.dir)
            .with_context(|| format!("cannot create boot.dir {}", settings.dir.display()))?;
        stage(
            &settings.ipxe_dir,
            &settings.dir,
            &IPXE_FILES,
            "install Debian's ipxe package or set boot.ipxe_dir",
        )?;
        stage(
            &settings.ramdisk_dir,
            &settings.dir,
            &[RAMDISK_KERNEL, RAMDISK_INITRD],
            "build the agent ramdisk with `make image` and set boot.ramdisk_dir to images/out",
        )?;
        stage(
            &settings.agent_dir,
            &settings.dir,
            &AGENT_FILES,
            "set boot.agent_dir to where cosm-agent, cosm-agent-libvirt and cosm-agent.service are (`make image` puts them in images/out; installed systems get them from here)",
        )?;
        if kickstart.repo_url.is_none() {
            tracing::warn!("kickstart.repo_url is not set: installers get no install source (inst.repo), so a real CentOS/Rocky/Alma install will stop at its source selection");
        }
        let enroll_token = boot_enroll_token(&store, data_dir).await?;
        let install_key = tokens::InstallKey::load_or_create(&data_dir.join("install.key"))?;
        Ok(BootContext {
            install_key,
            install_needs_lease: false,
            kickstart: std::sync::RwLock::new(Arc::new(kickstart)),
            images_dir: data_dir.join("images"),
            subnets,
            settings,
            enroll_token,
            timeline,
        })
    }

    /// The install settings in force.
    pub fn kickstart(&self) -> Arc<KickstartSettings> {
        self.kickstart
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts the OS settings of the site settings in force from the next boot script and
    /// kickstart on. Installer image names that followed the old release follow the new one.
    pub fn apply_os(&self, os: &cosm_wire::OsSettings) {
        let mut slot = self.kickstart.write().unwrap_or_else(|e| e.into_inner());
        let mut k = (**slot).clone();
        if let Some(release) = cosm_kickstart::Release::parse(&os.release) {
            let old = k.release.id();
            if k.installer_kernel == format!("{old}-vmlinuz") {
                k.installer_kernel = format!("{}-vmlinuz", release.id());
            }
            if k.installer_initrd == format!("{old}-initrd.img") {
                k.installer_initrd = format!("{}-initrd.img", release.id());
            }
            k.release = release;
        }
        k.repo_url = os.mirror_url.clone();
        k.root_password_hash = os.root_password_hash.clone();
        k.ssh_keys = os.ssh_keys.clone();
        k.timezone = os.timezone.clone();
        *slot = Arc::new(k);
    }

    /// What a machine in this state boots, and the state shown on its console; `peer` is
    /// the address the script was asked from; `install` how a ready machine is installed
    /// (its role's method, [`crate::app::App::install_choice`]).
    pub fn target(
        &self,
        mac: MacAddr,
        machine: Option<&Machine>,
        peer: Option<std::net::IpAddr>,
        install: &InstallChoice,
    ) -> (String, Target) {
        let state = machine.map(super::effective_state);
        let shown = machine
            .map(|m| m.state.to_string())
            .unwrap_or_else(|| "unknown".into());
        let target = match state {
            Some(MachineState::Deployed | MachineState::Active) => Target::LocalDisk,
            Some(MachineState::Fenced) => Target::PowerOff {
                reason: "the machine is fenced".into(),
            },
            Some(MachineState::Retired) => Target::PowerOff {
                reason: "the machine is retired".into(),
            },
            Some(MachineState::Ready | MachineState::Deploying) => match machine
                .ok_or_else(|| "no machine record".to_string())
                .and_then(|m| match install {
                    InstallChoice::Kickstart => self.installer(m, peer),
                    InstallChoice::Image(image) => self.image_installer(m, image, peer),
                    InstallChoice::Missing(why) => Err(why.clone()),
                }) {
                Ok(t) => t,
                Err(why) => {
                    self.timeline.note(
                        mac,
                        EventKind::Boot,
                        format!("install not possible: {why}; booting the agent ramdisk instead"),
                    );
                    self.ramdisk(mac)
                }
            },
            // Unknown, discovered, failed: the agent ramdisk, which (re)enrols the machine
            // and reports its inventory.
            _ => self.ramdisk(mac),
        };
        (shown, target)
    }

    /// The installer of the configured release, from the image repository, pointed at the
    /// machine's kickstart, whose URL carries the machine's install token.
    fn installer(&self, m: &Machine, peer: Option<std::net::IpAddr>) -> Result<Target, String> {
        let mac = m.mac;
        self.check_lease_holder(mac, peer)?;
        let k = self.kickstart();
        for name in [&k.installer_kernel, &k.installer_initrd] {
            if !super::images::has_image(&self.images_dir, name) {
                return Err(format!(
                    "the installer image {name:?} is not in the image repository (cosmctl images upload FILE --name {name})"
                ));
            }
        }
        let base = &self.settings.appliance_url;
        let repo = k
            .repo_url
            .as_deref()
            .map(|r| format!(" inst.repo={r}"))
            .unwrap_or_default();
        Ok(Target::Linux {
            label: format!("{} installer", k.release.name()),
            kernel_url: format!(
                "{base}/boot/images/{}?mac={mac}&step=kernel",
                k.installer_kernel
            ),
            initrd_url: format!(
                "{base}/boot/images/{}?mac={mac}&step=initrd",
                k.installer_initrd
            ),
            initrd_name: "initrd.img".into(),
            args: format!(
                "inst.ks={base}/boot/ks/{mac}?token={}{repo} ip=dhcp {}",
                self.install_key.token(m),
                k.installer_args
            )
            .trim_end()
            .to_string(),
        })
    }

    /// The agent ramdisk told to install the machine from `image`: `cosm.install=` is the
    /// URL of its install plan, with the install token.
    fn image_installer(
        &self,
        m: &Machine,
        image: &cosm_wire::Image,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Target, String> {
        self.check_lease_holder(m.mac, peer)?;
        if !super::images::has_image(&self.images_dir, &image.name) {
            return Err(format!(
                "the role image {:?} is recorded but its file is missing from the image repository",
                image.name
            ));
        }
        let Target::Linux {
            kernel_url,
            initrd_url,
            initrd_name,
            args,
            ..
        } = self.ramdisk(m.mac)
        else {
            unreachable!("the ramdisk is a Linux target")
        };
        Ok(Target::Linux {
            label: format!("image install ({})", image.name),
            kernel_url,
            initrd_url,
            initrd_name,
            args: format!(
                "{args} cosm.install={}/boot/install/{}?token={}",
                self.settings.appliance_url,
                m.mac,
                self.install_key.token(m)
            ),
        })
    }

    /// The install token goes only to the address this appliance's DHCP leased to the
    /// machine, when DHCP here is authoritative.
    fn check_lease_holder(
        &self,
        mac: MacAddr,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), String> {
        if self.install_needs_lease {
            // Firmware has no secret: the address DHCP gave the machine is the best proof
            // of who asks. Anyone else asking for this MAC's script gets no install token.
            let holder = peer.and_then(|p| self.timeline.mac_of(p));
            if holder != Some(mac) {
                let from = peer.map_or("an unknown address".to_string(), |p| p.to_string());
                let holder = holder.map_or("none".to_string(), |h| h.to_string());
                return Err(format!(
                    "its installer script (with the install token) is only given to the address DHCP leased to it; this request came from {from} (lease holder: {holder})"
                ));
            }
        }
        Ok(())
    }

    /// A machine's reserved address with its subnet's prefix, router and DNS; `None`
    /// without a reservation or when no subnet holds it.
    pub fn reserved_network(&self, m: &Machine) -> Option<super::install::StaticNetwork> {
        let ip = m.reserved_ip?;
        let sub = self.subnets.iter().find(|s| s.contains(ip))?;
        Some(super::install::StaticNetwork {
            address: ip,
            prefix_len: sub.prefix_len,
            gateway: sub.routers.first().copied(),
            dns: sub.dns.clone(),
        })
    }

    /// The kickstart a machine gets: its role's template for the configured release.
    pub fn render_kickstart(&self, m: &Machine) -> Result<String, AppError> {
        let k = self.kickstart();
        let role = m
            .role
            .as_ref()
            .ok_or_else(|| crate::store::StoreError::Conflict {
                code: "no_role",
                message: format!("{} has no role: give it one before it is installed", m.mac),
            })?;
        let role = role.to_string();
        let (template, hypervisor) = if k.xen_roles.contains(&role) {
            ("host".to_string(), Hypervisor::Xen)
        } else {
            (role.clone(), Hypervisor::Kvm)
        };
        let hex: String = m.mac.to_string().replace(':', "");
        let hostname = m
            .hostname
            .clone()
            .unwrap_or_else(|| format!("{role}-{}", &hex[6..]));
        let mut machine = KsMachine {
            mac: m.mac.to_string(),
            hostname,
            ip: None,
            netmask: None,
            gateway: None,
            dns: None,
            disk: m.inventory.as_ref().and_then(|inv| {
                let mut disks: Vec<_> = inv.disks.iter().collect();
                disks.sort_by(|a, b| a.name.cmp(&b.name));
                disks.first().map(|d| d.name.clone())
            }),
        };
        if let Some(ip) = m.reserved_ip {
            if let Some(sub) = self.subnets.iter().find(|s| s.contains(ip)) {
                machine.ip = Some(ip.to_string());
                machine.netmask = Some(sub.mask().to_string());
                machine.gateway = sub.routers.first().map(|r| r.to_string());
                machine.dns = (!sub.dns.is_empty()).then(|| {
                    sub.dns
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                });
            }
        }
        let site = Site {
            appliance_url: self.settings.appliance_url.clone(),
            install_token: self.install_key.token(m),
            root_password_hash: k.root_password_hash.clone(),
            ssh_keys: k.ssh_keys.clone(),
            timezone: k.timezone.clone(),
            selinux: k.selinux.clone(),
            firewall: k.firewall,
            repo_url: k.repo_url.clone(),
            xen_repo_url: k.xen_repo_url.clone(),
        };
        k.templates
            .render(&template, k.release, hypervisor, &machine, &site)
            .map_err(|e| AppError::Unprocessable {
                code: "kickstart",
                message: format!("cannot render the kickstart of {}: {e}", m.mac),
            })
    }

    fn ramdisk(&self, mac: MacAddr) -> Target {
        let base = &self.settings.appliance_url;
        Target::Linux {
            label: "agent ramdisk".into(),
            kernel_url: format!("{base}/boot/{RAMDISK_KERNEL}?mac={mac}&step=kernel"),
            initrd_url: format!("{base}/boot/{RAMDISK_INITRD}?mac={mac}&step=initrd"),
            initrd_name: RAMDISK_INITRD.into(),
            args: format!(
                "cosm.appliance={base} cosm.token={} cosm.mac={mac} {}",
                self.enroll_token, self.settings.kernel_args
            )
            .trim_end()
            .to_string(),
        }
    }
}

/// TFTP requests onto timelines: the requester is known by its lease.
#[derive(Debug)]
pub struct TftpTimeline(pub Arc<Timeline>);

impl cosm_netboot::tftp::TftpObserver for TftpTimeline {
    fn event(&self, event: cosm_netboot::tftp::TftpEvent) {
        use cosm_netboot::tftp::{TftpEvent, TransferEnd as TftpEnd};
        let (peer, message) = match event {
            TftpEvent::Started { peer, path, size } => {
                (peer, format!("TFTP {path} requested ({size} bytes)"))
            }
            TftpEvent::Refused { peer, path, reason } if path.is_empty() => {
                (peer, format!("TFTP request refused: {reason}"))
            }
            TftpEvent::Refused { peer, path, reason } => {
                (peer, format!("TFTP {path} refused: {reason}"))
            }
            // A completed transfer is the next step's business, and a PXE ROM's size
            // probe ends early by design; only a transfer that stopped is worth a line.
            TftpEvent::Finished {
                peer,
                path,
                size,
                sent,
                end: end @ (TftpEnd::AbortedByClient | TftpEnd::TimedOut | TftpEnd::Failed),
            } => (
                peer,
                format!("TFTP {path} stopped after {sent} of {size} bytes: {end}"),
            ),
            TftpEvent::Finished { .. } => return,
        };
        if let Some(mac) = self.0.mac_of(peer.ip()) {
            self.0.note(mac, EventKind::Tftp, message);
        }
    }
}
