//! The web console: its assets (embedded in the binary), logins and sessions, the site
//! settings of the first-run wizard, and the live rack as server-sent events.

use super::auth::{allow, Access, SessionId};
use super::error::ApiError;
use super::extract::ApiJson;
use super::{AppState, Caller};
use crate::app::console::{Session, SESSION_COOKIE};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use cosm_wire::{FieldError, Login, Scope, SetPassword, Settings, ValidateSettings};
use std::net::SocketAddr;
use std::time::Duration;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// What the console's pages may load: only this origin's script and styles; no frames.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Routes that need no credential: the assets and the login itself.
pub(super) fn open_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/ui/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/ui/app.css",
            get(|| asset(APP_CSS, "text/css; charset=utf-8")),
        )
        .route("/api/v1/login", post(login))
}

pub(super) fn routes() -> Router<AppState> {
    use Access::*;
    Router::new()
        .route(
            "/api/v1/session",
            allow(Read, get(show_session).delete(logout)),
        )
        .route(
            "/api/v1/settings",
            allow(Admin, get(show_settings).put(put_settings)),
        )
        .route(
            "/api/v1/settings/validate",
            allow(Admin, post(validate_settings)),
        )
        .route("/api/v1/admin/password", allow(Admin, put(set_password)))
        .route("/api/v1/rack/stream", allow(Read, get(rack_stream)))
}

async fn asset(body: &'static str, mime: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn cookie(id: &str, max_age_secs: u64) -> HeaderValue {
    // Secure: browsers send it only over HTTPS (or to localhost); HttpOnly: the page's
    // script never sees it; SameSite=Strict: no other site's page makes the browser send it.
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age_secs}"
    ))
    .expect("hex id is a valid header value")
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

async fn login(
    State(state): State<AppState>,
    transport: super::Transport,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let app = &state.app;
    let ip = peer.map(|c| c.0 .0.ip());
    // A password or token sent in clear over the provisioning network is anyone's; the
    // Secure cookie would not come back over plain HTTP either. Loopback is the exception
    // (an SSH tunnel to the appliance).
    if !transport.is_tls() && ip.is_some_and(|ip| !ip.is_loopback()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "https_required",
            "log in over https:// (the same port speaks HTTPS): a password or token must not cross the network in clear",
        ));
    }
    if let Err(wait) = app.sessions.login_allowed(ip) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed logins from this address: try again in {wait} s"),
        )
        .retry_after(wait));
    }
    let (user, scope, token_id) = match (&body.password, &body.token) {
        (Some(p), None) => {
            if !app.check_admin_password(p).await? {
                app.sessions.login_failed(ip);
                tracing::warn!(peer = ?ip, "console login refused: wrong password (or none set yet)");
                let set = app.store.admin_password()?.is_some();
                return Err(unauthorized(if set {
                    "wrong password or token"
                } else {
                    "no admin password is set yet: log in with the admin token (in the appliance's data_dir, admin.token) and set one in the setup wizard"
                }));
            }
            ("admin".to_string(), Scope::Admin, 0)
        }
        (None, Some(t)) => {
            let hash = crate::app::tokens::hash_token(t.trim());
            match app.store.token_by_hash(&hash)? {
                Some(r) if matches!(r.info.scope, Scope::Admin | Scope::Read) => {
                    (r.info.name.clone(), r.info.scope, r.info.id)
                }
                Some(r) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "token {:?} has scope {:?}: only admin and read tokens open console sessions",
                            r.info.name, r.info.scope
                        ),
                    ))
                }
                None => {
                    app.sessions.login_failed(ip);
                    tracing::warn!(peer = ?ip, "console login refused: unknown token");
                    return Err(unauthorized("wrong password or token"));
                }
            }
        }
        _ => {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "password",
                "send either a password or a token",
            ))
        }
    };
    let (id, s) = app.sessions.open(&user, scope, token_id);
    tracing::info!(user = %user, scope = ?scope, peer = ?ip, "console login");
    let info = app.session_info(&s)?;
    let mut r = Json(info).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&id, app.sessions.max().as_secs()),
    );
    Ok(r)
}

fn session_of(s: Option<Extension<Session>>) -> Result<Session, ApiError> {
    s.map(|e| e.0).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_session",
            "this request was made with an API token, not a console session",
        )
    })
}

async fn show_session(
    State(state): State<AppState>,
    s: Option<Extension<Session>>,
) -> Result<Json<cosm_wire::SessionInfo>, ApiError> {
    let s = session_of(s)?;
    Ok(Json(state.app.session_info(&s)?))
}

async fn logout(
    State(state): State<AppState>,
    id: Option<Extension<SessionId>>,
) -> Result<Response, ApiError> {
    if let Some(Extension(SessionId(id))) = id {
        state.app.sessions.close(&id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(header::SET_COOKIE, cookie("", 0));
    Ok(r)
}

async fn show_settings(
    State(state): State<AppState>,
) -> Result<Json<cosm_wire::SettingsView>, ApiError> {
    Ok(Json(state.app.settings_view()?))
}

/// 422 with every refused field.
fn invalid(errors: Vec<FieldError>) -> Response {
    let first = errors.first().cloned();
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({
            "code": "invalid",
            "message": first.as_ref().map_or(String::new(), |e| format!("{}: {}", e.field, e.message)),
            "field": first.map(|e| e.field),
            "errors": errors,
        })),
    )
        .into_response()
}

async fn validate_settings(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ValidateSettings>,
) -> Result<Response, ApiError> {
    let errors = state.app.check_settings(body.step, &body.settings)?;
    if errors.is_empty() {
        Ok(Json(serde_json::json!({"ok": true})).into_response())
    } else {
        Ok(invalid(errors))
    }
}

async fn put_settings(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    ApiJson(body): ApiJson<Settings>,
) -> Result<Response, ApiError> {
    let errors = state
        .app
        .check_settings(cosm_wire::SettingsStep::All, &body)?;
    if !errors.is_empty() {
        return Ok(invalid(errors));
    }
    let view = state.app.apply_settings(body, &caller.name).await?;
    tracing::info!(caller = %caller.name, caller_token = caller.token_id, "site settings changed");
    Ok(Json(view).into_response())
}

async fn set_password(
    State(state): State<AppState>,
    caller: Extension<Caller>,
    ApiJson(body): ApiJson<SetPassword>,
) -> Result<StatusCode, ApiError> {
    state.app.set_admin_password(&body.password).await?;
    tracing::info!(caller = %caller.name, "console admin password changed");
    Ok(StatusCode::NO_CONTENT)
}

/// The rack, now and after every change of machines, their timelines, roles or settings
/// (from the store's change feed; at most one snapshot per 300 ms).
async fn rack_stream(State(state): State<AppState>) -> Result<Response, ApiError> {
    let app = state.app.clone();
    let mut changes = app.store.changes();
    // What the snapshot sent reflects at least: counters taken before each read.
    let seen = interesting(&changes.borrow_and_update());
    let first = app.rack().await?;
    let stream = futures::stream::unfold(
        (app, changes, seen, Some(first)),
        |(app, mut changes, mut seen, first)| async move {
            let snapshot = match first {
                Some(s) => s,
                None => {
                    while interesting(&changes.borrow_and_update()) == seen {
                        changes.changed().await.ok()?;
                    }
                    // Changes come in bursts (a boot writes a DHCP step, a lease, a state):
                    // one snapshot for the burst.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    seen = interesting(&changes.borrow_and_update());
                    match app.rack().await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "rack stream: cannot read the rack");
                            return None;
                        }
                    }
                }
            };
            let event = Event::default()
                .event("rack")
                .json_data(&snapshot)
                .unwrap_or_else(|_| Event::default().comment("unserialisable"));
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (app, changes, seen, None),
            ))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response())
}

fn interesting(c: &crate::store::Changes) -> (u64, u64, u64, u64, u64) {
    (c.machines, c.events, c.roles, c.settings, c.leases)
}
