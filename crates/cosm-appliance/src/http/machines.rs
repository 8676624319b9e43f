//! Machines: the inventory by MAC, role and state changes, timelines, the kickstart
//! preview, redeploy, and actions queued for a machine's agent.

use super::auth::{allow, Access, Caller};
use super::error::ApiError;
use super::extract::{created, parse_mac, parse_role, query_params, ApiJson};
use super::paging::{self, NextLink};
use super::AppState;
use crate::app::Op;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cosm_wire::{
    CreateMachine, ErrorBody, Event, Machine, MachineState, QueueAction, SetRole, SetState,
    UpdateMachine,
};
use std::collections::HashMap;

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route(
            "/api/v1/machines",
            allow(Read, get(list_machines)).merge(allow(Admin, post(create_machine))),
        )
        .route(
            "/api/v1/machines/{mac}",
            allow(Read, get(show_machine)).merge(allow(
                Admin,
                axum::routing::patch(update_machine).delete(delete_machine),
            )),
        )
        .route("/api/v1/machines/{mac}/role", allow(Admin, put(set_role)))
        .route(
            "/api/v1/machines/{mac}/state",
            allow(Admin, post(set_state)),
        )
        .route(
            "/api/v1/machines/{mac}/events",
            allow(Read, get(machine_events)),
        )
        .route(
            "/api/v1/machines/{mac}/actions",
            allow(Admin, post(queue_action)),
        )
        .route(
            "/api/v1/machines/{mac}/kickstart",
            // A kickstart carries the install token, the root password hash and SSH keys.
            allow(Admin, get(machine_kickstart)),
        )
        .route(
            "/api/v1/machines/{mac}/redeploy",
            allow(Admin, post(redeploy_machine)),
        )
        .route(
            "/api/v1/machines/{mac}/reregister",
            allow(Admin, post(reregister_machine)),
        )
}

/// List machines in MAC order, optionally filtered by role and/or state, one page at a
/// time: while more follow, the `Link` header (rel="next") gives the next page.
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines",
    params(("role" = Option<String>, Query, description = "only machines with this role"),
           ("state" = Option<MachineState>, Query, description = "only machines in this state"),
           ("limit" = Option<usize>, Query, description = "machines per page (1-1000, default 500)"),
           ("cursor" = Option<String>, Query, description = "where the previous page ended (from its Link header)")),
    responses((status = 200, body = [Machine], headers(("link" = String, description = "`<URL>; rel=\"next\"` while more machines follow"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_machines(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query_params(&q, &["role", "state", "limit", "cursor"])?;
    let role = q.get("role").map(|r| parse_role(r)).transpose()?;
    let st = q
        .get("state")
        .map(|s| {
            s.parse::<MachineState>()
                .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "state", e))
        })
        .transpose()?;
    let limit = paging::limit(&q, paging::DEFAULT_LIMIT, paging::MAX_LIMIT)?;
    let after = paging::cursor_u64(&q)?.map(cosm_wire::MacAddr::from_u64);
    let next = NextLink::new("/api/v1/machines", &q);
    paging::answer(
        &state,
        next,
        move |store| store.machines_page(role.as_ref(), st, after, limit),
        |ms: &[Machine]| ms.last().map(|m| paging::u64_cursor(m.mac.to_u64())),
    )
    .await
}

/// Register a machine by MAC, optionally with its role. Without a role the role rules are
/// tried; with no match it stays `discovered`.
#[utoipa::path(post, path = "/api/v1/machines", tag = "machines", request_body = CreateMachine,
    responses((status = 201, body = Machine), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<CreateMachine>,
) -> Result<Response, ApiError> {
    let m = state.app.store.run_machine(Op::CreateMachine(spec)).await?;
    tracing::info!(caller = %caller.name, mac = %m.mac, state = %m.state, role = ?m.role.as_ref().map(|r| r.as_str()), "machine registered");
    Ok(created(format!("/api/v1/machines/{}", m.mac), m))
}

/// One machine.
#[utoipa::path(get, path = "/api/v1/machines/{mac}", tag = "machines",
    params(("mac" = String, Path, description = "MAC address, e.g. 52:54:00:aa:bb:01")),
    responses((status = 200, body = Machine), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn show_machine(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    Ok(Json(state.app.machine(mac)?))
}

/// Change hostname, role or reserved address. Absent fields are kept; `null` clears.
#[utoipa::path(patch, path = "/api/v1/machines/{mac}", tag = "machines", request_body = UpdateMachine,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn update_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(update): ApiJson<UpdateMachine>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = state
        .app
        .store
        .run_machine(Op::UpdateMachine { mac, update })
        .await?;
    tracing::info!(caller = %caller.name, mac = %mac, "machine updated");
    Ok(Json(m))
}

/// Delete a machine record and its timeline. Installed machines must be retired first.
#[utoipa::path(delete, path = "/api/v1/machines/{mac}", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn delete_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mac = parse_mac(&mac)?;
    state.app.store.run(Op::DeleteMachine { mac }).await?;
    tracing::info!(caller = %caller.name, mac = %mac, "machine deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Set or clear a machine's role. A discovered machine that gets a role becomes `ready`.
#[utoipa::path(put, path = "/api/v1/machines/{mac}/role", tag = "machines", request_body = SetRole,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn set_role(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<SetRole>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = state
        .app
        .store
        .run_machine(Op::SetRole {
            mac,
            role: body.role,
        })
        .await?;
    tracing::info!(caller = %caller.name, mac = %mac, state = %m.state, "machine role set");
    Ok(Json(m))
}

/// Move a machine to another lifecycle state. An illegal move is a 409 naming the current
/// state and the allowed ones.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/state", tag = "machines", request_body = SetState,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn set_state(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<SetState>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let reason = body
        .reason
        .map(|r| format!("{r} (by {})", caller.name))
        .or_else(|| Some(format!("requested by {}", caller.name)));
    let m = state
        .app
        .store
        .run_machine(Op::SetState {
            mac,
            to: body.state,
            reason,
        })
        .await?;
    tracing::info!(caller = %caller.name, mac = %mac, state = %m.state, "machine state changed");
    Ok(Json(m))
}

/// The kickstart the machine's installer would get now (for `cosmctl kickstart render`).
#[utoipa::path(get, path = "/api/v1/machines/{mac}/kickstart", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, content_type = "text/plain"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn machine_kickstart(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = state.app.machine(mac)?;
    let boot = state.app.boot()?;
    let text = boot.render_kickstart(&m)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Start a machine's install over: it goes back to `ready` (from deployed, active or
/// failed) and, when its agent is running, is told to reboot into the installer.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/redeploy", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn redeploy_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = state.app.redeploy(mac, &caller.name).await?;
    tracing::info!(caller = %caller.name, %mac, "redeploy requested");
    Ok(Json(m))
}

/// Let a new agent enrol the machine (a replaced disk, a reinstalled OS, a credential
/// lost): its agent credentials are revoked, and the next enrolment with the enrol token
/// gets the machine. Without this, a machine that has an agent is enrolled again only
/// with that agent's credential or its install token.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/reregister", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn reregister_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = state.app.reregister(mac, &caller.name).await?;
    tracing::info!(caller = %caller.name, %mac, "re-registration allowed: agent credentials revoked");
    Ok(Json(m))
}

/// A machine's timeline, oldest first: the newest `limit` events (default 100). While
/// older events exist, the `Link` header (rel="next") gives the page before this one.
#[utoipa::path(get, path = "/api/v1/machines/{mac}/events", tag = "machines",
    params(("mac" = String, Path, description = "MAC address"),
           ("limit" = Option<usize>, Query, description = "at most this many of the newest events (1-10000, default 100)"),
           ("cursor" = Option<String>, Query, description = "only events older than where this cursor points (from the previous page's Link header)")),
    responses((status = 200, body = [Event], headers(("link" = String, description = "`<URL>; rel=\"next\"` while older events exist"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn machine_events(
    State(state): State<AppState>,
    Path(mac_text): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac_text)?;
    query_params(&q, &["limit", "cursor"])?;
    let limit = paging::limit(&q, 100, 10_000)?;
    let before = paging::cursor_u64(&q)?;
    state.app.machine(mac)?;
    let next = NextLink::new(format!("/api/v1/machines/{mac}/events"), &q);
    paging::answer(
        &state,
        next,
        move |store| store.events_page(mac, before, limit),
        // The page is oldest first; the next one ends before its oldest event.
        |evs: &[Event]| evs.first().map(|e| paging::u64_cursor(e.seq)),
    )
    .await
}

/// Queue an action (`reboot`, `power-off`, `re-register`) for a machine's agent.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/actions", tag = "agents", request_body = QueueAction,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn queue_action(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<QueueAction>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let kind = body.kind;
    let m = state.app.queue_action(mac, kind.clone()).await?;
    tracing::info!(caller = %caller.name, %mac, %kind, generation = m.desired_generation, "agent action queued");
    Ok(Json(m))
}
