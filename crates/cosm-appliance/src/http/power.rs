//! Power control and HA records (issue 13): a machine's power settings (written, never
//! read back with their secrets), power calls through its BMC, alarms and evacuations.

use super::auth::{allow, Access, Caller};
use super::error::ApiError;
use super::extract::{parse_mac, query_params, ApiJson};
use super::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use cosm_wire::{
    Alarm, ErrorBody, Evacuation, PowerRequest, PowerSettings, PowerSettingsView, PowerStatus,
};
use std::collections::HashMap;

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route(
            "/api/v1/machines/{mac}/power-settings",
            allow(Read, get(show_power_settings)).merge(allow(
                Admin,
                put(set_power_settings).delete(clear_power_settings),
            )),
        )
        .route(
            "/api/v1/machines/{mac}/power",
            allow(Read, get(power_status)).merge(allow(Admin, axum::routing::post(power_action))),
        )
        .route("/api/v1/alarms", allow(Read, get(list_alarms)))
        .route("/api/v1/evacuations", allow(Read, get(list_evacuations)))
}

/// A machine's power settings, without secrets (`password_set` says whether one is kept).
#[utoipa::path(get, path = "/api/v1/machines/{mac}/power-settings", tag = "power",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = PowerSettingsView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn show_power_settings(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Json<PowerSettingsView>, ApiError> {
    let mac = parse_mac(&mac)?;
    state.app.machine(mac)?;
    let s = state.app.store.power_settings(mac)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("machine {mac} has no power settings"),
        )
    })?;
    Ok(Json(s.view()))
}

/// Sets how the appliance reaches a machine's power: Redfish, IPMI or an exec fence
/// command. The password is kept on the appliance and never shown again.
#[utoipa::path(put, path = "/api/v1/machines/{mac}/power-settings", tag = "power",
    params(("mac" = String, Path, description = "MAC address")),
    request_body = PowerSettings,
    responses((status = 200, body = PowerSettingsView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn set_power_settings(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<PowerSettings>,
) -> Result<Json<PowerSettingsView>, ApiError> {
    let mac = parse_mac(&mac)?;
    let view = body.view();
    state
        .app
        .set_power_settings(mac, Some(body), &caller.name)
        .await?;
    tracing::info!(caller = %caller.name, %mac, driver = %view.driver, address = %view.address, "power settings set");
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/api/v1/machines/{mac}/power-settings", tag = "power",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn clear_power_settings(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mac = parse_mac(&mac)?;
    state
        .app
        .set_power_settings(mac, None, &caller.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads the machine's power state from its BMC now. 502 when the BMC fails
/// (`bmc_unreachable`, `bmc_auth_failed`, `bmc_timeout`, `bmc_failed`).
#[utoipa::path(get, path = "/api/v1/machines/{mac}/power", tag = "power",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = PowerStatus), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn power_status(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Json<PowerStatus>, ApiError> {
    let mac = parse_mac(&mac)?;
    Ok(Json(state.app.power_status(mac).await?))
}

/// Power on, hard off, cycle, or network boot at the next power-on, through the machine's
/// BMC; the call and its outcome go on its timeline.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/power", tag = "power",
    params(("mac" = String, Path, description = "MAC address")),
    request_body = PowerRequest,
    responses((status = 200, body = PowerStatus), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn power_action(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<PowerRequest>,
) -> Result<Json<PowerStatus>, ApiError> {
    let mac = parse_mac(&mac)?;
    tracing::info!(caller = %caller.name, %mac, action = %body.action, "power call");
    Ok(Json(
        state
            .app
            .power_action(mac, body.action, &caller.name)
            .await?,
    ))
}

/// Alarms, newest first: the active ones, or with `all=true` the cleared ones too (at most
/// `limit`, default 500).
#[utoipa::path(get, path = "/api/v1/alarms", tag = "power",
    params(("all" = Option<bool>, Query, description = "include cleared alarms"),
           ("limit" = Option<usize>, Query, description = "at most this many (1-10000, default 500)")),
    responses((status = 200, body = [Alarm]), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list_alarms(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Alarm>>, ApiError> {
    query_params(&q, &["all", "limit"])?;
    let bad =
        |field: &str, message: String| ApiError::field(StatusCode::BAD_REQUEST, field, message);
    let all = match q.get("all").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad("all", format!("all={other:?}: use true or false"))),
    };
    let limit = match q.get("limit") {
        None => 500,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| bad("limit", format!("limit={l:?} is not a number in 1..=10000")))?,
    };
    Ok(Json(state.app.store.alarms(all, limit)?))
}

/// Every host's latest fencing and evacuation, newest first.
#[utoipa::path(get, path = "/api/v1/evacuations", tag = "power",
    responses((status = 200, body = [Evacuation])),
    security(("bearer" = [])))]
pub(super) async fn list_evacuations(
    State(state): State<AppState>,
) -> Result<Json<Vec<Evacuation>>, ApiError> {
    let mut e = state.app.store.evacuations()?;
    e.sort_by_key(|x| std::cmp::Reverse(x.started_at));
    Ok(Json(e))
}
