//! The REST API (`/api/v1`), `/healthz` and `/metrics`: the only code that knows HTTP/JSON.
//!
//! [`router`] builds the whole service from an [`AppState`]; `serve` binds it. Every
//! `/api/v1` route except the OpenAPI document needs a bearer token; reading calls accept
//! a `read` token, everything else needs `admin`. Every error is an [`ApiError`], answered
//! as an [`ErrorBody`] JSON that names the field at fault; internal causes are logged, not
//! sent to the client.

use crate::auth;
use crate::metrics::{HttpLabels, Metrics};
use crate::store::{Command, Outcome, Store, StoreError};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use cosm_wire::{
    CreateMachine, CreateToken, CreatedToken, DesiredState, Enroll, Enrolled, ErrorBody, Event,
    Health, Heartbeat, HeartbeatReply, Lease, LeaseState, MacAddr, Machine, MachineState, Observed,
    QueueAction, Role, RoleName, RoleSpec, Rule, RuleSpec, SetRole, SetState, TokenInfo,
    UpdateMachine,
};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use utoipa::OpenApi;

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub liveness: std::sync::Arc<crate::liveness::Liveness>,
    /// `None` when the appliance does not serve network boot (the `/boot` routes 404).
    pub boot: Option<std::sync::Arc<crate::boot::BootContext>>,
    /// `None`: no image repository (the `/api/v1/images` routes 404).
    pub images: Option<crate::images::ImageDir>,
}

/// An API error: the status and the client-facing body. Internal detail is logged where
/// the error is made and never put in the body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn field(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(status, "invalid_field", message);
        e.body.field = Some(field.into());
        e
    }

    fn internal(context: &str, err: &dyn std::error::Error) -> ApiError {
        let mut chain = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the appliance log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::IllegalTransition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "illegal_transition", e.to_string())
            }
            StoreError::Invalid { field, message } => {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            }
            other => ApiError::internal("store operation failed", &other),
        }
    }
}

/// The dotted path of the field a serde error is about. serde reports a missing or unknown
/// field with the path of the object that holds it and the name only in the message, so
/// the name is taken from there.
pub fn field_path(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let base = if path == "." { "" } else { path };
    match named {
        // serde_path_to_error already ends the path with an unknown field's name.
        Some(name) if base == name || base.ends_with(&format!(".{name}")) => base.to_string(),
        Some(name) if base.is_empty() => name.to_string(),
        Some(name) => format!("{base}.{name}"),
        None => base.to_string(),
    }
}

/// A JSON request body: `application/json`, within the size limit, and deserialized with
/// the path of a bad field kept for the error.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej: BytesRejection| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is larger than the appliance accepts (api.max_body_bytes)")
            } else {
                ApiError::new(rej.status(), "bad_body", rej.body_text())
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize(&mut de) {
            Ok(v) => {
                // Trailing garbage after the JSON value is an error too.
                de.end().map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_json",
                        format!("malformed JSON: {e}"),
                    )
                })?;
                Ok(ApiJson(v))
            }
            Err(e) => {
                let inner = e.inner();
                if inner.is_syntax() || inner.is_eof() {
                    Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_json",
                        format!("malformed JSON: {inner}"),
                    ))
                } else {
                    let field = field_path(&e.path().to_string(), &inner.to_string());
                    let msg = if field.is_empty() {
                        inner.to_string()
                    } else {
                        format!("{field}: {inner}")
                    };
                    let mut err = ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, &field, msg);
                    if field.is_empty() {
                        err.body.field = None;
                    }
                    Err(err)
                }
            }
        }
    }
}

fn parse_mac(s: &str) -> Result<MacAddr, ApiError> {
    s.parse().map_err(|e: cosm_wire::ParseError| {
        ApiError::field(StatusCode::BAD_REQUEST, "mac", e.to_string())
    })
}

fn parse_role(s: &str) -> Result<RoleName, ApiError> {
    s.parse().map_err(|e: cosm_wire::ParseError| {
        ApiError::field(StatusCode::BAD_REQUEST, "role", e.to_string())
    })
}

/// Checks query parameters against the known ones, so a typo is an error, not ignored.
fn query_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    for k in q.keys() {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                k,
                format!("unknown query parameter {k:?}; known: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Who made a request: put in the request by the auth layer, used in audit log lines.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: u64,
    pub name: String,
    /// The machine an agent credential belongs to.
    pub mac: Option<MacAddr>,
}

async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this call needs an API token: send Authorization: Bearer <token>",
        )
        .into_response();
    };
    let record = match state.store.token_by_hash(&auth::hash_token(token)) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "unknown or revoked API token",
            )
            .into_response()
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let path = req.uri().path();
    if !auth::permits(record.info.scope, req.method(), path) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has scope {:?}, which does not allow {} {}",
                record.info.name,
                record.info.scope,
                req.method(),
                path
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller {
        token_id: record.info.id,
        name: record.info.name,
        mac: record.info.mac,
    });
    next.run(req).await
}

async fn count_request(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/machines", get(list_machines).post(create_machine))
        .route(
            "/api/v1/machines/{mac}",
            get(show_machine)
                .patch(update_machine)
                .delete(delete_machine),
        )
        .route("/api/v1/machines/{mac}/role", put(set_role))
        .route("/api/v1/machines/{mac}/state", post(set_state))
        .route("/api/v1/machines/{mac}/events", get(machine_events))
        .route("/api/v1/roles", get(list_roles).post(create_role))
        .route("/api/v1/roles/{name}", get(show_role).delete(delete_role))
        .route("/api/v1/rules", get(list_rules).post(create_rule))
        .route("/api/v1/rules/{id}", get(show_rule).delete(delete_rule))
        .route("/api/v1/leases", get(list_leases))
        .route("/api/v1/machines/{mac}/actions", post(queue_action))
        .route("/api/v1/agent/enroll", post(agent_enroll))
        .route("/api/v1/agent/heartbeat", post(agent_heartbeat))
        .route("/api/v1/agent/desired", get(agent_desired))
        .route("/api/v1/agent/observed", post(agent_observed))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(delete_token))
        .route("/api/v1/machines/{mac}/kickstart", get(machine_kickstart))
        .route("/api/v1/machines/{mac}/redeploy", post(redeploy_machine))
        .route("/api/v1/agent/install-report", post(agent_install_report))
        .merge(crate::images::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi_json))
        .merge(crate::boot::routes());
    api.merge(open)
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            count_request,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; the appliance keeps serving");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the appliance log has the details",
    )
    .into_response()
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn machine_of(o: Outcome) -> Machine {
    match o {
        Outcome::Machine(m) => m,
        other => unreachable!("machine command produced {other:?}"),
    }
}

fn created<T: serde::Serialize>(location: String, body: T) -> Response {
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Is the appliance up? Open, no token needed.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let schema_version = state.store.schema_version().map_err(|e| {
        tracing::error!(error = %e, "health check cannot read the store");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            "the store cannot be read",
        )
    })?;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        schema_version: schema_version as u32,
    }))
}

/// Prometheus/OpenMetrics text. Open, no token needed.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state
        .metrics
        .render()
        .map_err(|e| ApiError::internal("cannot render metrics", &e))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// This API's OpenAPI 3 document. Open, no token needed.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// List machines, optionally filtered by role and/or state.
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines",
    params(("role" = Option<String>, Query, description = "only machines with this role"),
           ("state" = Option<MachineState>, Query, description = "only machines in this state")),
    responses((status = 200, body = [Machine]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_machines(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Machine>>, ApiError> {
    query_params(&q, &["role", "state"])?;
    let role = q.get("role").map(|r| parse_role(r)).transpose()?;
    let st = q
        .get("state")
        .map(|s| {
            s.parse::<MachineState>()
                .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "state", e))
        })
        .transpose()?;
    Ok(Json(state.store.machines(role.as_ref(), st)?))
}

/// Register a machine by MAC, optionally with its role. Without a role the role rules are
/// tried; with no match it stays `discovered`.
#[utoipa::path(post, path = "/api/v1/machines", tag = "machines", request_body = CreateMachine,
    responses((status = 201, body = Machine), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<CreateMachine>,
) -> Result<Response, ApiError> {
    let m = machine_of(state.store.apply(Command::CreateMachine(spec)).await?);
    tracing::info!(caller = %caller.name, mac = %m.mac, state = %m.state, role = ?m.role.as_ref().map(|r| r.as_str()), "machine registered");
    Ok(created(format!("/api/v1/machines/{}", m.mac), m))
}

/// One machine.
#[utoipa::path(get, path = "/api/v1/machines/{mac}", tag = "machines",
    params(("mac" = String, Path, description = "MAC address, e.g. 52:54:00:aa:bb:01")),
    responses((status = 200, body = Machine), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn show_machine(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    machine_or_404(&state.store, mac, "").map(Json)
}

/// The machine record, or a 404 naming the MAC (with a hint for the caller, if any).
fn machine_or_404(store: &Store, mac: MacAddr, hint: &str) -> Result<Machine, ApiError> {
    store.machine(mac)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("machine {mac} not found{hint}"),
        )
    })
}

/// Change hostname, role or reserved address. Absent fields are kept; `null` clears.
#[utoipa::path(patch, path = "/api/v1/machines/{mac}", tag = "machines", request_body = UpdateMachine,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn update_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(update): ApiJson<UpdateMachine>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = machine_of(
        state
            .store
            .apply(Command::UpdateMachine { mac, update })
            .await?,
    );
    tracing::info!(caller = %caller.name, mac = %mac, "machine updated");
    Ok(Json(m))
}

/// Delete a machine record and its timeline. Installed machines must be retired first.
#[utoipa::path(delete, path = "/api/v1/machines/{mac}", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mac = parse_mac(&mac)?;
    state.store.apply(Command::DeleteMachine { mac }).await?;
    tracing::info!(caller = %caller.name, mac = %mac, "machine deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Set or clear a machine's role. A discovered machine that gets a role becomes `ready`.
#[utoipa::path(put, path = "/api/v1/machines/{mac}/role", tag = "machines", request_body = SetRole,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_role(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<SetRole>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = machine_of(
        state
            .store
            .apply(Command::SetRole {
                mac,
                role: body.role,
            })
            .await?,
    );
    tracing::info!(caller = %caller.name, mac = %mac, state = %m.state, "machine role set");
    Ok(Json(m))
}

/// Move a machine to another lifecycle state. An illegal move is a 409 naming the current
/// state and the allowed ones.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/state", tag = "machines", request_body = SetState,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_state(
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
    let m = machine_of(
        state
            .store
            .apply(Command::SetState {
                mac,
                to: body.state,
                reason,
            })
            .await?,
    );
    tracing::info!(caller = %caller.name, mac = %mac, state = %m.state, "machine state changed");
    Ok(Json(m))
}

/// The kickstart the machine's installer would get now (for `cosmctl kickstart render`).
#[utoipa::path(get, path = "/api/v1/machines/{mac}/kickstart", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, content_type = "text/plain"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_kickstart(
    State(state): State<AppState>,
    Path(mac): Path<String>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = machine_or_404(&state.store, mac, "")?;
    let boot = state.boot.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "boot_off",
            "network boot is not configured on this appliance",
        )
    })?;
    let text = boot.render_kickstart(&m)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// Start a machine's install over: it goes back to `ready` (from deployed, active or
/// failed) and, when its agent is running, is told to reboot into the installer.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/redeploy", tag = "machines",
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn redeploy_machine(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let m = machine_or_404(&state.store, mac, "")?;
    if m.role.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_role",
            format!("{mac} has no role: give it one (cosmctl machines set-role) and it is installed at its next boot"),
        ));
    }
    let mut m = m;
    if m.state != MachineState::Ready {
        m = machine_of(
            state
                .store
                .apply(Command::SetState {
                    mac,
                    to: MachineState::Ready,
                    reason: Some(format!("redeploy requested by {}", caller.name)),
                })
                .await?,
        );
    }
    if state.liveness.is_alive(mac) {
        m = machine_of(
            state
                .store
                .apply(Command::QueueAction {
                    mac,
                    kind: "reboot".into(),
                })
                .await?,
        );
    }
    tracing::info!(caller = %caller.name, %mac, "redeploy requested");
    Ok(Json(m))
}

/// An installer reports how the install ended (the kickstart's %post or %onerror).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallReport {
    pub mac: MacAddr,
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

/// The installer's report: a deploying machine becomes `deployed` (ok) or `failed`, with
/// the message (e.g. the installer's log tail) on its timeline. Needs an enrol token.
#[utoipa::path(post, path = "/api/v1/agent/install-report", tag = "agents", request_body = InstallReport,
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn agent_install_report(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<InstallReport>,
) -> Result<Json<Machine>, ApiError> {
    let m = machine_or_404(&state.store, body.mac, "")?;
    if m.state != MachineState::Deploying {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_deploying",
            format!(
                "{} is {}, not deploying: no install was expected from it",
                body.mac, m.state
            ),
        ));
    }
    let message: String = body.message.chars().take(2000).collect();
    let (to, reason) = if body.ok {
        (
            MachineState::Deployed,
            format!("install finished: {message}"),
        )
    } else {
        (MachineState::Failed, format!("install failed: {message}"))
    };
    let m = machine_of(
        state
            .store
            .apply(Command::SetState {
                mac: body.mac,
                to,
                reason: Some(reason),
            })
            .await?,
    );
    tracing::info!(mac = %body.mac, ok = body.ok, "install report");
    Ok(Json(m))
}

/// A machine's timeline, oldest first: the newest `limit` events (default 100).
#[utoipa::path(get, path = "/api/v1/machines/{mac}/events", tag = "machines",
    params(("mac" = String, Path, description = "MAC address"),
           ("limit" = Option<usize>, Query, description = "at most this many of the newest events (1-10000, default 100)")),
    responses((status = 200, body = [Event]), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn machine_events(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let mac = parse_mac(&mac)?;
    query_params(&q, &["limit"])?;
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "limit",
                    format!("limit must be a number from 1 to 10000, not {l:?}"),
                )
            })?,
    };
    machine_or_404(&state.store, mac, "")?;
    Ok(Json(state.store.events(mac, limit)?))
}

/// All roles.
#[utoipa::path(get, path = "/api/v1/roles", tag = "roles",
    responses((status = 200, body = [Role])), security(("bearer" = [])))]
async fn list_roles(State(state): State<AppState>) -> Result<Json<Vec<Role>>, ApiError> {
    Ok(Json(state.store.roles()?))
}

/// Define a role.
#[utoipa::path(post, path = "/api/v1/roles", tag = "roles", request_body = RoleSpec,
    responses((status = 201, body = Role), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_role(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<RoleSpec>,
) -> Result<Response, ApiError> {
    let Outcome::Role(role) = state.store.apply(Command::CreateRole(spec)).await? else {
        unreachable!("CreateRole produces a role")
    };
    tracing::info!(caller = %caller.name, role = %role.name, "role created");
    Ok(created(format!("/api/v1/roles/{}", role.name), role))
}

/// One role.
#[utoipa::path(get, path = "/api/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "role name")),
    responses((status = 200, body = Role), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn show_role(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Role>, ApiError> {
    let name = parse_role(&name)?;
    state.store.role(&name)?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("role {name} not found"),
        )
    })
}

/// Delete an operator-defined role that no machine and no rule uses.
#[utoipa::path(delete, path = "/api/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "role name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_role(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let name = parse_role(&name)?;
    state.store.apply(Command::DeleteRole(name.clone())).await?;
    tracing::info!(caller = %caller.name, role = %name, "role deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Role rules, in evaluation order.
#[utoipa::path(get, path = "/api/v1/rules", tag = "rules",
    responses((status = 200, body = [Rule])), security(("bearer" = [])))]
async fn list_rules(State(state): State<AppState>) -> Result<Json<Vec<Rule>>, ApiError> {
    Ok(Json(state.store.rules()?))
}

/// Add a role rule.
#[utoipa::path(post, path = "/api/v1/rules", tag = "rules", request_body = RuleSpec,
    responses((status = 201, body = Rule), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn create_rule(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<RuleSpec>,
) -> Result<Response, ApiError> {
    let Outcome::Rule(rule) = state.store.apply(Command::CreateRule(spec)).await? else {
        unreachable!("CreateRule produces a rule")
    };
    tracing::info!(caller = %caller.name, rule = rule.id, role = %rule.role, "rule created");
    Ok(created(format!("/api/v1/rules/{}", rule.id), rule))
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "id",
            format!("{s:?} is not a numeric id"),
        )
    })
}

/// One rule.
#[utoipa::path(get, path = "/api/v1/rules/{id}", tag = "rules",
    params(("id" = u64, Path, description = "rule id")),
    responses((status = 200, body = Rule), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn show_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    let id = parse_id(&id)?;
    state.store.rule(id)?.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("rule {id} not found"),
        )
    })
}

/// Delete a rule.
#[utoipa::path(delete, path = "/api/v1/rules/{id}", tag = "rules",
    params(("id" = u64, Path, description = "rule id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_rule(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.store.apply(Command::DeleteRule(id)).await?;
    tracing::info!(caller = %caller.name, rule = id, "rule deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Queue an action (`reboot`, `power-off`, `re-register`) for a machine's agent.
#[utoipa::path(post, path = "/api/v1/machines/{mac}/actions", tag = "agents", request_body = QueueAction,
    params(("mac" = String, Path, description = "MAC address")),
    responses((status = 200, body = Machine), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn queue_action(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(mac): Path<String>,
    ApiJson(body): ApiJson<QueueAction>,
) -> Result<Json<Machine>, ApiError> {
    let mac = parse_mac(&mac)?;
    let kind = body.kind.trim().to_string();
    let ok = !kind.is_empty()
        && kind.len() <= 32
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "kind",
            "an action kind is 1-32 lowercase letters, digits and '-', e.g. reboot, power-off, re-register",
        ));
    }
    let m = machine_of(
        state
            .store
            .apply(Command::QueueAction {
                mac,
                kind: kind.clone(),
            })
            .await?,
    );
    tracing::info!(caller = %caller.name, %mac, %kind, generation = m.desired_generation, "agent action queued");
    Ok(Json(m))
}

fn agent_mac(caller: &Caller) -> Result<MacAddr, ApiError> {
    caller.mac.ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only a machine's agent credential can call this endpoint",
        )
    })
}

/// An agent enrols with its inventory and receives its own credential.
#[utoipa::path(post, path = "/api/v1/agent/enroll", tag = "agents", request_body = Enroll,
    responses((status = 200, body = Enrolled), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn agent_enroll(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<Enroll>,
) -> Result<Json<Enrolled>, ApiError> {
    let credential = auth::generate_token();
    let cmd = Command::Enroll {
        mac: body.mac,
        inventory: body.inventory,
        credential_hash: auth::hash_token(&credential),
    };
    let machine = machine_of(state.store.apply(cmd).await?);
    state.liveness.beat(machine.mac, Heartbeat::default());
    tracing::info!(caller = %caller.name, mac = %machine.mac, state = %machine.state, "agent enrolled");
    Ok(Json(Enrolled {
        machine,
        credential,
        heartbeat_secs: state.liveness.heartbeat.as_secs().max(1) as u32,
    }))
}

/// An agent's heartbeat; a machine that was `lost` comes back to the state it was lost from.
#[utoipa::path(post, path = "/api/v1/agent/heartbeat", tag = "agents", request_body = Heartbeat,
    responses((status = 200, body = HeartbeatReply), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn agent_heartbeat(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let mac = agent_mac(&caller)?;
    state.liveness.beat(mac, body);
    let m = machine_or_404(&state.store, mac, "; enrol again")?;
    if m.state == MachineState::Lost {
        let to = m.lost_from.unwrap_or(MachineState::Discovered);
        let reason = Some("heartbeats resumed".to_string());
        match state
            .store
            .apply(Command::SetState { mac, to, reason })
            .await
        {
            Ok(_) => tracing::info!(%mac, state = %to, "machine back: heartbeats resumed"),
            Err(e) => {
                tracing::warn!(%mac, error = %e, "a lost machine beats again but cannot return")
            }
        }
    }
    Ok(Json(HeartbeatReply {
        desired_generation: m.desired_generation,
    }))
}

/// The calling agent's desired state.
#[utoipa::path(get, path = "/api/v1/agent/desired", tag = "agents",
    responses((status = 200, body = DesiredState), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn agent_desired(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
) -> Result<Json<DesiredState>, ApiError> {
    let mac = agent_mac(&caller)?;
    let m = machine_or_404(&state.store, mac, "; enrol again")?;
    Ok(Json(DesiredState {
        generation: m.desired_generation,
        role: m.role,
        actions: m.pending_actions,
    }))
}

/// The calling agent reports what it did; finished actions leave the queue.
#[utoipa::path(post, path = "/api/v1/agent/observed", tag = "agents", request_body = Observed,
    responses((status = 204), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn agent_observed(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(body): ApiJson<Observed>,
) -> Result<StatusCode, ApiError> {
    let mac = agent_mac(&caller)?;
    state
        .store
        .apply(Command::ReportObserved {
            mac,
            results: body.results,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// DHCP lease records (bound, released, declined), by address.
#[utoipa::path(get, path = "/api/v1/leases", tag = "dhcp",
    params(("mac" = Option<String>, Query, description = "only this MAC's lease"),
           ("state" = Option<String>, Query, description = "bound, released or declined")),
    responses((status = 200, body = [Lease]), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
async fn list_leases(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Lease>>, ApiError> {
    query_params(&q, &["mac", "state"])?;
    let mac = q.get("mac").map(|m| parse_mac(m)).transpose()?;
    let st = q
        .get("state")
        .map(|s| {
            serde_json::from_value::<LeaseState>(serde_json::Value::String(s.clone())).map_err(
                |_| {
                    ApiError::field(
                        StatusCode::BAD_REQUEST,
                        "state",
                        format!("{s:?} is not one of bound, released, declined"),
                    )
                },
            )
        })
        .transpose()?;
    let leases = state
        .store
        .leases()?
        .into_iter()
        .filter(|l| mac.is_none_or(|m| l.mac == m) && st.is_none_or(|s| l.state == s))
        .collect();
    Ok(Json(leases))
}

/// API tokens (admin only). Secrets are never listed.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = [TokenInfo]), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(state.store.tokens()?))
}

/// Create an API token (admin only). The answer is the only time its secret is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_token(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    ApiJson(spec): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    let name = spec.name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
            "a token name of 1-64 characters is required",
        ));
    }
    if spec.scope == cosm_wire::Scope::Agent {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scope",
            "agent credentials are issued to machines when they enrol; create an `enroll` token for them",
        ));
    }
    let (info, token) = auth::create_token(&state.store, name, spec.scope).await?;
    tracing::info!(caller = %caller.name, token = info.id, name = %info.name, scope = ?info.scope, "API token created");
    Ok(created(
        format!("/api/v1/tokens/{}", info.id),
        CreatedToken { info, token },
    ))
}

/// Revoke an API token (admin only). The caller's own token can be revoked too.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = u64, Path, description = "token id")),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_token(
    State(state): State<AppState>,
    caller: axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.store.apply(Command::DeleteToken(id)).await?;
    tracing::info!(caller = %caller.name, caller_token = caller.token_id, token = id, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers above.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "COSM appliance API", description = "Bare-metal provisioning: machines, roles, role rules, timelines."),
    paths(
        healthz, metrics, openapi_json,
        list_machines, create_machine, show_machine, update_machine, delete_machine,
        set_role, set_state, machine_events,
        list_roles, create_role, show_role, delete_role,
        list_rules, create_rule, show_rule, delete_rule,
        list_leases,
        queue_action, agent_enroll, agent_heartbeat, agent_desired, agent_observed,
        list_tokens, create_token, delete_token,
        machine_kickstart, redeploy_machine, agent_install_report,
        crate::images::list_images, crate::images::show_image, crate::images::upload_image,
        crate::images::delete_image, crate::images::download_image,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "machines", description = "Machines by MAC: lifecycle, role, timeline"),
        (name = "roles", description = "Roles machines can play"),
        (name = "rules", description = "Rules that give discovered machines a role"),
        (name = "dhcp", description = "DHCP leases"),
        (name = "agents", description = "Node agents: enrolment, heartbeat, desired state"),
        (name = "tokens", description = "API tokens (admin only)"),
        (name = "images", description = "The image repository: installer kernels, initrds, ISOs"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
pub struct ApiDoc;
