//! The node agents' side of the API (`/api/v1/agent/`): enrolment, heartbeats, desired
//! state, reports on actions, and the installer's report. Agents call with their own
//! credential (scope `agent`, bound to their MAC). Enrolment takes the enrol token (the
//! ramdisk's kernel line), the machine's own credential, or its install token (the
//! installed agent); the install report only the machine's install token.

use super::auth::{agent_mac, allow, allow_any, Access, Caller, Grant};
use super::error::ApiError;
use super::extract::ApiJson;
use super::AppState;
use crate::app::{EnrolBy, Op};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use cosm_wire::{
    DesiredState, Enroll, Enrolled, ErrorBody, Heartbeat, HeartbeatReply, InstallProgress,
    InstallReport, MacAddr, Machine, Observed,
};

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route(
            "/api/v1/agent/enroll",
            allow_any(&[Enroll, Agent, Install], post(agent_enroll)),
        )
        .route(
            "/api/v1/agent/install-report",
            allow(Install, post(agent_install_report)),
        )
        .route(
            "/api/v1/agent/heartbeat",
            allow(Agent, post(agent_heartbeat)),
        )
        .route(
            "/api/v1/agent/install-progress",
            allow(Install, post(agent_install_progress)),
        )
        .route("/api/v1/agent/desired", allow(Agent, get(agent_desired)))
        .route("/api/v1/agent/observed", allow(Agent, post(agent_observed)))
}

/// A credential bound to one machine (agent credential, install token) acts only for it.
fn own_machine(caller: &Caller, mac: MacAddr) -> Result<(), ApiError> {
    match caller.mac {
        Some(own) if own != mac => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} belongs to {own}, not {mac}", caller.name),
        )),
        _ => Ok(()),
    }
}

/// The installer's report: a deploying machine becomes `deployed` (ok) or `failed`, with
/// the message (e.g. the installer's log tail) on its timeline. Needs the machine's
/// install token (its kickstart carries it), which dies with the report.
#[utoipa::path(post, path = "/api/v1/agent/install-report", tag = "agents", request_body = InstallReport,
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn agent_install_report(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<InstallReport>,
) -> Result<Json<Machine>, ApiError> {
    own_machine(&caller, body.mac)?;
    let op = Op::ReportInstall {
        mac: body.mac,
        ok: body.ok,
        message: body.message,
    };
    let m = state.app.store.run_machine(op).await?;
    tracing::info!(mac = %body.mac, ok = body.ok, "install report");
    Ok(Json(m))
}

/// An image install's progress: a line on the deploying machine's timeline. Needs the
/// machine's install token.
#[utoipa::path(post, path = "/api/v1/agent/install-progress", tag = "agents", request_body = InstallProgress,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn agent_install_progress(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<InstallProgress>,
) -> Result<StatusCode, ApiError> {
    own_machine(&caller, body.mac)?;
    state.app.install_progress(&body)?;
    Ok(StatusCode::NO_CONTENT)
}

/// An agent enrols with its inventory and receives its own credential. A machine that
/// already has an agent is enrolled again only with that agent's credential, its install
/// token, an admin token, or — where it boots the ramdisk and its agent has missed its
/// heartbeats — the enrol token; otherwise 409 `agent_enrolled`.
#[utoipa::path(post, path = "/api/v1/agent/enroll", tag = "agents", request_body = Enroll,
    responses((status = 200, body = Enrolled), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn agent_enroll(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<Enroll>,
) -> Result<Json<Enrolled>, ApiError> {
    let by = match caller.grant {
        Grant::Token(cosm_wire::Scope::Admin) => EnrolBy::Operator,
        Grant::Token(cosm_wire::Scope::Enroll) => EnrolBy::EnrolToken,
        _ => {
            own_machine(&caller, body.mac)?;
            EnrolBy::Itself
        }
    };
    let (machine, credential) = state.app.enroll(body, by).await?;
    tracing::info!(caller = %caller.name, mac = %machine.mac, state = %machine.state, "agent enrolled");
    Ok(Json(Enrolled {
        machine,
        credential,
        heartbeat_secs: state.app.liveness.heartbeat.as_secs().max(1) as u32,
    }))
}

/// An agent's heartbeat; a machine that was `lost` comes back to the state it was lost from.
#[utoipa::path(post, path = "/api/v1/agent/heartbeat", tag = "agents", request_body = Heartbeat,
    responses((status = 200, body = HeartbeatReply), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn agent_heartbeat(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let mac = agent_mac(&caller)?;
    let m = state.app.heartbeat(mac, body).await?;
    Ok(Json(HeartbeatReply {
        desired_generation: state.app.desired_generation(&m)?,
        peers: state.app.peers_of(mac),
    }))
}

/// The calling agent's desired state.
#[utoipa::path(get, path = "/api/v1/agent/desired", tag = "agents",
    responses((status = 200, body = DesiredState), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn agent_desired(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
) -> Result<Json<DesiredState>, ApiError> {
    let mac = agent_mac(&caller)?;
    Ok(Json(state.app.desired(mac)?))
}

/// The calling agent reports what it did; finished actions leave the queue.
#[utoipa::path(post, path = "/api/v1/agent/observed", tag = "agents", request_body = Observed,
    responses((status = 204), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn agent_observed(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<Observed>,
) -> Result<StatusCode, ApiError> {
    let mac = agent_mac(&caller)?;
    state
        .app
        .store
        .run(Op::ReportObserved {
            mac,
            results: body.results,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
