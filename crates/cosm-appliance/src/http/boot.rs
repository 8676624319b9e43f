//! The open HTTP endpoints firmware and installers fetch from (no token: firmware has
//! none, so everything here is public on the provisioning network):
//!
//! - `GET /boot/ipxe?mac=…&arch=bios|uefi`: the machine's script, from its state;
//! - `GET /boot/report?mac=…&step=…`: a script reports the step it gave up at;
//! - `GET /boot/ks/{mac}?token=…`: a ready machine's kickstart (→ deploying), only with
//!   its install token;
//! - `GET|HEAD /boot/images/<name>`: installer kernels and initrds from the repository;
//! - `GET|HEAD /boot/<file>`: files of the boot directory, with Range support.
//!
//! Each fetch by a known machine lands on its timeline. What is served is decided in
//! `app::boot`.

use super::error::ApiError;
use super::extract::single_range_only;
use super::AppState;
use crate::app::boot::BootContext;
use crate::app::install::InstallChoice;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cosm_netboot::ipxe::{Firmware, Script, Target};
use cosm_wire::{EventKind, InstallPlan, MacAddr};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeDir;

fn context(state: &AppState) -> Result<&Arc<BootContext>, ApiError> {
    Ok(state.app.boot()?)
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
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
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
    let machine = state.app.store.machine(mac)?;
    let peer = peer.map(|c| c.0 .0.ip());
    // The same rule as the kickstart and the plan: a machine lost while ready (rebooting
    // into its installer) is installed all the same.
    let install = match &machine {
        Some(m) if crate::app::installable(m).is_ok() => state.app.install_choice(m)?,
        _ => InstallChoice::Kickstart,
    };
    let (shown, target) = ctx.target(mac, machine.as_ref(), peer, &install);
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
            Some(s @ ("kernel" | "initrd" | "image")) => s,
            _ => "file",
        }
    }
}

/// Whether a request is a boot step worth a timeline line: a whole GET, not HEAD and not
/// a ranged read (a resumed download).
fn is_whole_get(req: &Request) -> bool {
    req.method() == Method::GET && !req.headers().contains_key(header::RANGE)
}

/// Whether `name` stays inside `dir` once links are followed, as TFTP's root jail checks:
/// ServeDir refuses `..` but follows a symlink out of the directory. A name that does not
/// exist is left to ServeDir (a 404).
fn inside(dir: &std::path::Path, name: &str) -> bool {
    let Ok(root) = std::fs::canonicalize(dir) else {
        return false;
    };
    match std::fs::canonicalize(dir.join(name)) {
        Ok(path) => path.starts_with(&root),
        Err(_) => true,
    }
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
    if !inside(&dir, &name) {
        tracing::warn!(file = %name, peer = ?peer, "boot file refused: it resolves outside the boot directory");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no boot file {name:?}"),
        ));
    }
    // ServeDir refuses `..`, answers HEAD and Range, and sets Last-Modified/ETag-free
    // conditional headers; we only strip the /boot prefix.
    let (mut parts, body) = req.into_parts();
    single_range_only(&mut parts.headers);
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

#[derive(Debug, Deserialize)]
struct KickstartQuery {
    token: Option<String>,
}

/// The kickstart of a `ready` or `deploying` machine, for its installer, with the install
/// token its boot script put in the URL (403 without). Fetching it moves a `ready` machine
/// to `deploying`.
async fn boot_kickstart(
    State(state): State<AppState>,
    axum::extract::Path(mac): axum::extract::Path<String>,
    Query(q): Query<KickstartQuery>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(Some(&mac))?;
    let text = state
        .app
        .installer_kickstart(mac, q.token.as_deref())
        .await?;
    tracing::info!(%mac, "kickstart served");
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// A ready machine's image install plan (→ deploying), only with its install token.
async fn boot_install_plan(
    State(state): State<AppState>,
    axum::extract::Path(mac): axum::extract::Path<String>,
    Query(q): Query<KickstartQuery>,
) -> Result<Json<InstallPlan>, ApiError> {
    let mac = parse_mac(Some(&mac))?;
    let plan = state.app.install_plan(mac, q.token.as_deref()).await?;
    tracing::info!(%mac, image = %plan.image, "install plan served");
    Ok(Json(plan))
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
    let resp = super::images::serve_image(&state, &name, req).await?;
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
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/boot/ipxe", get(ipxe_script))
        .route("/boot/report", get(boot_report))
        .route("/boot/ks/{mac}", get(boot_kickstart))
        .route("/boot/install/{mac}", get(boot_install_plan))
        .route("/boot/images/{name}", get(boot_image).head(boot_image))
        .route("/boot/{*file}", get(boot_file).head(boot_file))
}
