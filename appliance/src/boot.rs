//! The boot path's appliance side: the boot directory (iPXE binaries and the agent
//! ramdisk, staged at start), the enrolment token machines boot with, the per-machine iPXE
//! script, and the open HTTP endpoints firmware fetches from:
//!
//! - `GET /boot/ipxe?mac=…&arch=bios|uefi`: the machine's script, from its state;
//! - `GET /boot/report?mac=…&step=…`: a script reports the step it gave up at;
//! - `GET|HEAD /boot/<file>`: files of the boot directory, with Range support.
//!
//! Each fetch by a known machine lands on its timeline.

use crate::api::{ApiError, AppState};
use crate::auth;
use crate::config::{BootSettings, KickstartSettings};
use crate::store::Store;
use crate::timeline::Timeline;
use anyhow::Context;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cosm_kickstart::{Hypervisor, Machine as KsMachine, Site};
use cosm_netboot::ipxe::{Firmware, Script, Target};
use cosm_wire::{EventKind, MacAddr, Machine, MachineState, Scope};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// iPXE binaries staged from `boot.ipxe_dir` (Debian's `ipxe` package).
pub const IPXE_FILES: [&str; 3] = ["undionly.kpxe", "ipxe.efi", "snponly.efi"];
/// The agent ramdisk staged from `boot.ramdisk_dir` (`make image`).
pub const RAMDISK_KERNEL: &str = "vmlinuz";
pub const RAMDISK_INITRD: &str = "initramfs.img";

/// What the boot endpoints need; shared by every request.
#[derive(Debug)]
pub struct BootContext {
    pub settings: BootSettings,
    pub kickstart: KickstartSettings,
    /// The image repository's directory (installer kernels and initrds).
    pub images_dir: std::path::PathBuf,
    /// Subnets, to give a machine with a reserved address its netmask, router and DNS.
    pub subnets: Vec<cosm_netboot::dhcp::Subnet>,
    enroll_token: String,
    timeline: Arc<Timeline>,
    store: Store,
}

/// The agent binary and its unit, served to installers' %post at /boot/<name>.
pub const AGENT_FILES: [&str; 2] = ["cosm-agent", "cosm-agent.service"];

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
        if let Ok(Some(rec)) = store.token_by_hash(&auth::hash_token(&token)) {
            if rec.info.scope == Scope::Enroll {
                return Ok(token);
            }
        }
        tracing::warn!(path = %path.display(), "the boot enrolment token was revoked or is not an enrol token; making a new one");
    }
    let (info, token) = auth::create_token(store, "pxe-boot-enroll", Scope::Enroll).await?;
    auth::write_token_file(&path, &token)?;
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
            "set boot.agent_dir to where cosm-agent and cosm-agent.service are (installed systems get them from here)",
        )?;
        if kickstart.repo_url.is_none() {
            tracing::warn!("kickstart.repo_url is not set: installers get no install source (inst.repo), so a real CentOS/Rocky/Alma install will stop at its source selection");
        }
        let enroll_token = boot_enroll_token(&store, data_dir).await?;
        Ok(BootContext {
            kickstart,
            images_dir: data_dir.join("images"),
            subnets,
            settings,
            enroll_token,
            timeline,
            store,
        })
    }

    /// What a machine in this state boots, and the state shown on its console.
    pub fn target(&self, mac: MacAddr, machine: Option<&Machine>) -> (String, Target) {
        let state = machine.map(|m| match (m.state, m.lost_from) {
            (MachineState::Lost, Some(from)) => from,
            (s, _) => s,
        });
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
            Some(MachineState::Ready | MachineState::Deploying) => match self.installer(mac) {
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
    /// machine's kickstart.
    fn installer(&self, mac: MacAddr) -> Result<Target, String> {
        let k = &self.kickstart;
        for name in [&k.installer_kernel, &k.installer_initrd] {
            if !crate::images::has_image(&self.images_dir, name) {
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
                "inst.ks={base}/boot/ks/{mac}{repo} ip=dhcp {}",
                k.installer_args
            )
            .trim_end()
            .to_string(),
        })
    }

    /// The kickstart a machine gets: its role's template for the configured release.
    pub fn render_kickstart(&self, m: &Machine) -> Result<String, ApiError> {
        let k = &self.kickstart;
        let role = m.role.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_role",
                format!("{} has no role: give it one before it is installed", m.mac),
            )
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
            enroll_token: self.enroll_token.clone(),
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
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "kickstart",
                    format!("cannot render the kickstart of {}: {e}", m.mac),
                )
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

fn context(state: &AppState) -> Result<&Arc<BootContext>, ApiError> {
    state.boot.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "boot_off",
            "network boot is not configured on this appliance",
        )
    })
}

fn parse_mac(mac: Option<&str>) -> Result<MacAddr, ApiError> {
    let text = mac.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "mac: missing query parameter",
        )
    })?;
    text.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("mac: {text:?} is not a MAC address: {e}"),
        )
    })
}

#[derive(Debug, Deserialize)]
struct ScriptQuery {
    mac: Option<String>,
    arch: Option<String>,
}

async fn ipxe_script(
    State(state): State<AppState>,
    Query(q): Query<ScriptQuery>,
) -> Result<Response, ApiError> {
    let ctx = context(&state)?;
    let mac = parse_mac(q.mac.as_deref())?;
    let firmware = match q.arch.as_deref() {
        None => Firmware::Bios,
        Some(a) => Firmware::parse(a).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("arch: {a:?} is not bios or uefi"),
            )
        })?,
    };
    let machine = ctx.store.machine(mac).map_err(ApiError::from)?;
    let (shown, target) = ctx.target(mac, machine.as_ref());
    let what = match &target {
        Target::Linux { label, .. } => label.clone(),
        Target::LocalDisk => "local disk".into(),
        Target::PowerOff { .. } => "power off".into(),
    };
    let script = Script {
        mac,
        firmware,
        state: &shown,
        report_url: format!(
            "{}/boot/report?mac={mac}&arch={}",
            ctx.settings.appliance_url,
            firmware.as_str()
        ),
        retries: ctx.settings.retries,
        target,
    }
    .render();
    tracing::info!(%mac, state = %shown, firmware = firmware.as_str(), boots = %what, "iPXE script served");
    ctx.timeline.note(
        mac,
        EventKind::Boot,
        format!("iPXE script ({}) → {what}", firmware.as_str()),
    );
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        script,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    mac: Option<String>,
    step: Option<String>,
    arch: Option<String>,
}

async fn boot_report(
    State(state): State<AppState>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let ctx = context(&state)?;
    let mac = parse_mac(q.mac.as_deref())?;
    let step: String = q
        .step
        .unwrap_or_else(|| "unknown".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    let arch = q.arch.unwrap_or_default();
    tracing::warn!(%mac, %step, %arch, "a machine's boot script gave up");
    ctx.timeline.note(
        mac,
        EventKind::Boot,
        format!("boot failed: the {step} step failed on every attempt; the script gave up"),
    );
    Ok((StatusCode::OK, "recorded\n").into_response())
}

#[derive(Debug, Deserialize)]
struct FileQuery {
    mac: Option<String>,
    step: Option<String>,
}

impl FileQuery {
    /// The MAC the boot scripts add to their URLs, if any (and valid).
    fn mac(&self) -> Option<MacAddr> {
        self.mac.as_deref().and_then(|m| m.parse().ok())
    }

    /// The boot step a fetch is, from the `step=` the scripts add: kernel, initrd or file.
    fn step(&self) -> &str {
        match self.step.as_deref() {
            Some(s @ ("kernel" | "initrd")) => s,
            _ => "file",
        }
    }
}

/// Whether a request is a boot step worth a timeline line: a whole GET, not HEAD and not
/// a ranged read (a resumed download).
fn is_whole_get(req: &Request) -> bool {
    req.method() == Method::GET && !req.headers().contains_key(header::RANGE)
}

async fn boot_file(
    State(state): State<AppState>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let ctx = context(&state)?;
    let name = req.uri().path().trim_start_matches("/boot/").to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let whole = is_whole_get(&req);
    let dir = ctx.settings.dir.clone();
    // ServeDir refuses `..`, answers HEAD and Range, and sets Last-Modified/ETag-free
    // conditional headers; we only strip the /boot prefix.
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("/{name}")
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid", "bad file name"))?;
    let resp = ServeDir::new(dir)
        .append_index_html_on_directories(false)
        .oneshot(Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "boot file service failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot read the boot file",
            )
        })?;
    let status = resp.status();
    let mac = q
        .mac()
        .or_else(|| peer.and_then(|p| ctx.timeline.mac_of(p.ip())));
    if let (Some(mac), true) = (mac, whole) {
        let step = q.step();
        let message = if status.is_success() {
            format!("{step} {name} fetched over HTTP")
        } else {
            format!("{step} {name} not served: HTTP {}", status.as_u16())
        };
        ctx.timeline.note(mac, EventKind::Boot, message);
    }
    if !status.is_success() && status != StatusCode::NOT_MODIFIED {
        tracing::warn!(file = %name, peer = ?peer, status = status.as_u16(), "boot file not served");
    }
    Ok(resp.map(axum::body::Body::new))
}

/// The kickstart of a `ready` or `deploying` machine, for its installer. Fetching it moves
/// a `ready` machine to `deploying`.
async fn boot_kickstart(
    State(state): State<AppState>,
    axum::extract::Path(mac): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let ctx = context(&state)?;
    let mac = parse_mac(Some(&mac))?;
    let m = ctx
        .store
        .machine(mac)
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no machine {mac}"),
            )
        })?;
    if !matches!(m.state, MachineState::Ready | MachineState::Deploying) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_installable",
            format!("{mac} is {}: only ready or deploying machines are installed (cosmctl machines redeploy {mac} starts over)", m.state),
        ));
    }
    let text = ctx.render_kickstart(&m)?;
    if m.state == MachineState::Ready {
        ctx.store
            .apply(crate::store::Command::SetState {
                mac,
                to: MachineState::Deploying,
                reason: Some(format!(
                    "the installer fetched its kickstart ({})",
                    ctx.kickstart.release.name()
                )),
            })
            .await
            .map_err(ApiError::from)?;
    }
    tracing::info!(%mac, release = ctx.kickstart.release.id(), "kickstart served");
    ctx.timeline.note(
        mac,
        EventKind::Boot,
        format!(
            "kickstart served ({}, role {})",
            ctx.kickstart.release.name(),
            m.role.map(|r| r.to_string()).unwrap_or_default()
        ),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Image-repository files for installers (kernel, initrd), open like the other boot files.
async fn boot_image(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let ctx = context(&state)?;
    let whole = is_whole_get(&req);
    let resp = crate::images::serve_image(&state, &name, req).await?;
    if let (Some(mac), true) = (q.mac(), whole) {
        ctx.timeline.note(
            mac,
            EventKind::Boot,
            format!("{} {name} fetched from the image repository", q.step()),
        );
    }
    Ok(resp)
}

/// The open (token-less) boot routes; firmware has no credentials.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/boot/ipxe", get(ipxe_script))
        .route("/boot/report", get(boot_report))
        .route("/boot/ks/{mac}", get(boot_kickstart))
        .route("/boot/images/{name}", get(boot_image).head(boot_image))
        .route("/boot/{*file}", get(boot_file).head(boot_file))
}

/// TFTP requests onto timelines: the requester is known by its lease.
#[derive(Debug)]
pub struct TftpTimeline(pub Arc<Timeline>);

impl cosm_netboot::tftp::TftpObserver for TftpTimeline {
    fn event(&self, event: cosm_netboot::tftp::TftpEvent) {
        use cosm_netboot::tftp::TftpEvent;
        let (peer, message) = match event {
            TftpEvent::Started { peer, path, size } => {
                (peer, format!("TFTP {path} requested ({size} bytes)"))
            }
            TftpEvent::Refused { peer, path, reason } => {
                (peer, format!("TFTP {path} refused: {reason}"))
            }
            // A PXE ROM's tsize probe ends after the first block by design; only a
            // transfer that stopped later is worth a line.
            TftpEvent::Finished {
                peer,
                path,
                size,
                sent,
                complete: false,
            } if sent > 65464 => (
                peer,
                format!("TFTP {path} stopped after {sent} of {size} bytes"),
            ),
            TftpEvent::Finished { .. } => return,
        };
        if let Some(mac) = self.0.mac_of(peer.ip()) {
            self.0.note(mac, EventKind::Tftp, message);
        }
    }
}
