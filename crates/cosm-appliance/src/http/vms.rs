//! Virtual machines (`/api/v1/vms`), VM hosts (`/api/v1/hosts`), and what hosts' agents
//! call about their VMs (`/api/v1/agent/vms`, `/api/v1/agent/images/{name}`).
//!
//! Operations that a host's agent carries out (start, stop, reboot, snapshots, migrate,
//! delete) answer `202 Accepted` with the VM as recorded: the agent acts within seconds and
//! the VM's state and timeline say when it is done.

use super::auth::{agent_mac, allow, Access, Caller};
use super::error::ApiError;
use super::extract::{created, query_params, ApiJson};
use super::paging::{self, NextLink};
use super::AppState;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cosm_wire::{
    CreateSnapshot, CreateVm, ErrorBody, HostView, MigrateVm, PowerWanted, SnapshotName, StopVm,
    Vm, VmConsole, VmDisk, VmEvent, VmName, VmOpKind, VmReport, VmSnapshot, VmState,
};
use std::collections::HashMap;

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route(
            "/api/v1/vms",
            allow(Read, get(list_vms)).merge(allow(Admin, post(create_vm))),
        )
        .route(
            "/api/v1/vms/{name}",
            allow(Read, get(show_vm)).merge(allow(Admin, axum::routing::delete(delete_vm))),
        )
        .route("/api/v1/vms/{name}/start", allow(Admin, post(start_vm)))
        .route("/api/v1/vms/{name}/stop", allow(Admin, post(stop_vm)))
        .route("/api/v1/vms/{name}/reboot", allow(Admin, post(reboot_vm)))
        .route("/api/v1/vms/{name}/migrate", allow(Admin, post(migrate_vm)))
        .route(
            "/api/v1/vms/{name}/snapshots",
            allow(Read, get(list_snapshots)).merge(allow(Admin, post(create_snapshot))),
        )
        .route(
            "/api/v1/vms/{name}/snapshots/{snapshot}",
            allow(Admin, axum::routing::delete(delete_snapshot)),
        )
        .route(
            "/api/v1/vms/{name}/snapshots/{snapshot}/revert",
            allow(Admin, post(revert_snapshot)),
        )
        .route("/api/v1/vms/{name}/console", allow(Read, get(vm_console)))
        .route("/api/v1/vms/{name}/events", allow(Read, get(vm_events)))
        .route("/api/v1/hosts", allow(Read, get(list_hosts)))
        .route("/api/v1/agent/vms", allow(Agent, post(agent_vms)))
        .route(
            "/api/v1/agent/images/{name}",
            allow(Agent, get(agent_image).head(agent_image)),
        )
}

fn parse_vm(s: &str) -> Result<VmName, ApiError> {
    s.parse().map_err(|e: cosm_wire::NameError| {
        ApiError::field(StatusCode::BAD_REQUEST, "name", e.to_string())
    })
}

fn parse_snapshot(s: &str) -> Result<SnapshotName, ApiError> {
    s.parse().map_err(|e: cosm_wire::NameError| {
        ApiError::field(StatusCode::BAD_REQUEST, "snapshot", e.to_string())
    })
}

fn accepted(vm: Vm) -> Response {
    (StatusCode::ACCEPTED, Json(vm)).into_response()
}

/// Create a VM: placed on the host with the most memory left where it fits (or on `host`),
/// `scheduled` until its host's agent reports it running. 409 `no_host` names every host's
/// reason when it fits nowhere; nothing is recorded then.
#[utoipa::path(post, path = "/api/v1/vms", tag = "vms", request_body = CreateVm,
    responses((status = 201, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_vm(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(req): ApiJson<CreateVm>,
) -> Result<Response, ApiError> {
    let vm = state.app.create_vm(req).await?;
    tracing::info!(caller = %caller.name, vm = %vm.name, host = ?vm.host.map(|h| h.to_string()), "VM created");
    Ok(created(format!("/api/v1/vms/{}", vm.name), vm))
}

/// List VMs in name order, optionally one host's or one state's, a page at a time.
#[utoipa::path(get, path = "/api/v1/vms", tag = "vms",
    params(("host" = Option<String>, Query, description = "only VMs on this host (MAC)"),
           ("state" = Option<VmState>, Query, description = "only VMs in this state"),
           ("limit" = Option<usize>, Query, description = "VMs per page (1-1000, default 500)"),
           ("cursor" = Option<String>, Query, description = "where the previous page ended (from its Link header)")),
    responses((status = 200, body = [Vm], headers(("link" = String, description = "`<URL>; rel=\"next\"` while more VMs follow"))),
              (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_vms(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query_params(&q, &["host", "state", "limit", "cursor"])?;
    let host = q
        .get("host")
        .map(|h| super::extract::parse_mac(h))
        .transpose()?;
    let st = q
        .get("state")
        .map(|s| {
            serde_json::from_value::<VmState>(serde_json::Value::String(s.clone())).map_err(|_| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "state",
                    format!(
                        "unknown VM state {s:?}: one of {}",
                        VmState::ALL.map(|s| s.as_str()).join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let limit = paging::limit(&q, paging::DEFAULT_LIMIT, paging::MAX_LIMIT)?;
    let after = paging::cursor_name(&q)?.map(|n| parse_vm(&n)).transpose()?;
    let next = NextLink::new("/api/v1/vms", &q);
    paging::answer(
        &state,
        next,
        move |store| store.vms_page(host, st, after.as_ref(), limit),
        |vs: &[Vm]| vs.last().map(|v| paging::name_cursor(v.name.as_str())),
    )
    .await
}

/// One VM.
#[utoipa::path(get, path = "/api/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn show_vm(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(state.app.vm(&parse_vm(&name)?)?))
}

/// Delete a VM: its host's agent destroys and undefines it, then the record goes (204 when
/// it had no host to ask; 202 with the VM, `deleting`, otherwise).
#[utoipa::path(delete, path = "/api/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Vm), (status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn delete_vm(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = parse_vm(&name)?;
    let left = state.app.delete_vm(name.clone(), &caller.name).await?;
    tracing::info!(caller = %caller.name, vm = %name, "VM delete asked");
    Ok(match left {
        Some(vm) => accepted(vm),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Power a VM on (a `failed` VM is tried again).
#[utoipa::path(post, path = "/api/v1/vms/{name}/start", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn start_vm(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = parse_vm(&name)?;
    let vm = state
        .app
        .set_vm_power(name, PowerWanted::Running, None, &caller.name)
        .await?;
    Ok(accepted(vm))
}

/// Power a VM off: an ACPI request, then forced off after `timeout_secs` (default 60).
/// The body is optional.
#[utoipa::path(post, path = "/api/v1/vms/{name}/stop", tag = "vms", request_body = Option<StopVm>,
    params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn stop_vm(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
    body: Option<ApiJson<StopVm>>,
) -> Result<Response, ApiError> {
    let name = parse_vm(&name)?;
    let timeout = body.and_then(|ApiJson(b)| b.timeout_secs);
    if timeout.is_some_and(|t| t > 3600) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "timeout_secs",
            "timeout_secs is at most 3600",
        ));
    }
    let vm = state
        .app
        .set_vm_power(name, PowerWanted::Stopped, timeout, &caller.name)
        .await?;
    Ok(accepted(vm))
}

async fn op(
    state: &AppState,
    caller: &Caller,
    name: &str,
    kind: VmOpKind,
) -> Result<Response, ApiError> {
    let name = parse_vm(name)?;
    let vm = state
        .app
        .queue_vm_op(name, kind.clone(), &caller.name)
        .await?;
    tracing::info!(caller = %caller.name, vm = %vm.name, %kind, "VM operation queued");
    Ok(accepted(vm))
}

/// Reboot a running VM.
#[utoipa::path(post, path = "/api/v1/vms/{name}/reboot", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn reboot_vm(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    op(&state, &caller, &name, VmOpKind::Reboot).await
}

/// Live-migrate a running VM to `host`, or to the best other host. The VM is `migrating`
/// until its source reports the outcome; then its record names the new host (or it stays,
/// `running`, with the reason in `message`). The body is optional.
#[utoipa::path(post, path = "/api/v1/vms/{name}/migrate", tag = "vms", request_body = Option<MigrateVm>,
    params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn migrate_vm(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
    body: Option<ApiJson<MigrateVm>>,
) -> Result<Response, ApiError> {
    let name = parse_vm(&name)?;
    let to = body.and_then(|ApiJson(b)| b.host);
    let vm = state.app.migrate_vm(name, to, &caller.name).await?;
    tracing::info!(caller = %caller.name, vm = %vm.name, "live migration asked");
    Ok(accepted(vm))
}

/// A VM's snapshots, as its host last reported them.
#[utoipa::path(get, path = "/api/v1/vms/{name}/snapshots", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = [VmSnapshot]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_snapshots(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VmSnapshot>>, ApiError> {
    Ok(Json(state.app.vm(&parse_vm(&name)?)?.snapshots))
}

/// Take a snapshot (disk and, when running, memory) of a VM.
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots", tag = "vms", request_body = CreateSnapshot,
    params(("name" = String, Path, description = "VM name")),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_snapshot(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CreateSnapshot>,
) -> Result<Response, ApiError> {
    op(
        &state,
        &caller,
        &name,
        VmOpKind::SnapshotCreate {
            snapshot: body.name,
        },
    )
    .await
}

/// Return a VM to a snapshot (its disk, and its memory and power state if it was taken
/// running).
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/{snapshot}/revert", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ("snapshot" = String, Path, description = "snapshot name")),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn revert_snapshot(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let snapshot = parse_snapshot(&snapshot)?;
    op(
        &state,
        &caller,
        &name,
        VmOpKind::SnapshotRevert { snapshot },
    )
    .await
}

/// Delete a snapshot.
#[utoipa::path(delete, path = "/api/v1/vms/{name}/snapshots/{snapshot}", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ("snapshot" = String, Path, description = "snapshot name")),
    responses((status = 202, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn delete_snapshot(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let snapshot = parse_snapshot(&snapshot)?;
    op(
        &state,
        &caller,
        &name,
        VmOpKind::SnapshotDelete { snapshot },
    )
    .await
}

/// The last lines of a VM's serial console (default 50, at most 200), as its host last
/// reported them (every few seconds while they change).
#[utoipa::path(get, path = "/api/v1/vms/{name}/console", tag = "vms",
    params(("name" = String, Path, description = "VM name"),
           ("lines" = Option<usize>, Query, description = "how many of the last lines (1-200, default 50)")),
    responses((status = 200, body = VmConsole), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn vm_console(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<VmConsole>, ApiError> {
    query_params(&q, &["lines"])?;
    let lines = match q.get("lines") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::app::hosts::CONSOLE_LINES).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "lines",
                    format!("lines must be a number in 1..=200, not {l:?}"),
                )
            })?,
    };
    Ok(Json(state.app.vm_console(&parse_vm(&name)?, lines)?))
}

/// A VM's timeline, oldest first: the newest `limit` events (default 100); the `Link`
/// header gives older ones.
#[utoipa::path(get, path = "/api/v1/vms/{name}/events", tag = "vms",
    params(("name" = String, Path, description = "VM name"),
           ("limit" = Option<usize>, Query, description = "at most this many of the newest events (1-10000, default 100)"),
           ("cursor" = Option<String>, Query, description = "only events older than this cursor (from the previous page's Link header)")),
    responses((status = 200, body = [VmEvent]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn vm_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let name = parse_vm(&name)?;
    query_params(&q, &["limit", "cursor"])?;
    let limit = paging::limit(&q, 100, 10_000)?;
    let before = paging::cursor_u64(&q)?;
    let vm = state.app.vm(&name)?;
    let next = NextLink::new(format!("/api/v1/vms/{name}/events"), &q);
    paging::answer(
        &state,
        next,
        move |store| store.vm_events_page(&vm, before, limit),
        |evs: &[VmEvent]| evs.first().map(|e| paging::u64_cursor(e.seq)),
    )
    .await
}

/// VM hosts: machines of role `host` in `deployed`/`active` whose agents report their
/// hypervisor, with capacity and what their VMs take.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "vms",
    responses((status = 200, body = [HostView])),
    security(("bearer" = [])))]
pub(super) async fn list_hosts(
    State(state): State<AppState>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    Ok(Json(state.app.hosts().await?))
}

/// A host's agent reports its hypervisor: capacity, every domain, operation outcomes.
#[utoipa::path(post, path = "/api/v1/agent/vms", tag = "agents", request_body = VmReport,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn agent_vms(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(report): ApiJson<VmReport>,
) -> Result<StatusCode, ApiError> {
    let host = agent_mac(&caller)?;
    let changed = state.app.report_vms(host, report).await?;
    if changed > 0 {
        tracing::debug!(%host, changed, "VM report applied");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// An image a VM of the calling host uses (a disk base, a kernel, an initrd); other images
/// are not served to agents.
#[utoipa::path(get, path = "/api/v1/agent/images/{name}", tag = "agents",
    params(("name" = String, Path, description = "image name")),
    responses((status = 200, content_type = "application/octet-stream"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn agent_image(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let host = agent_mac(&caller)?;
    let used = state.app.store.vms_on(host)?.iter().any(|vm| {
        vm.disks
            .iter()
            .any(|d| matches!(d, VmDisk::Image { image, .. } if *image == name))
            || vm.boot.as_ref().is_some_and(|b| {
                b.kernel.image == name || b.initrd.as_ref().is_some_and(|i| i.image == name)
            })
    });
    if !used {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "no VM of host {host} uses image {name:?}: an agent only downloads its VMs' images"
            ),
        ));
    }
    super::images::serve_image(&state, &name, req).await
}
