//! Who may call what. The `authenticate` layer (on every `/api/v1` route but the OpenAPI
//! document) finds the bearer token and puts the [`Caller`] into the request; each route
//! declares the [`Access`] it needs where it is routed, with [`allow`] (or [`allow_any`]),
//! and a token's [`Scope`] grants some of them. A machine's install token (derived, not
//! stored: see `app::tokens`) is a caller too, with its own [`Grant`].

use super::error::ApiError;
use super::AppState;
use crate::app::console::{same_secret, CSRF_HEADER, SESSION_COOKIE};
use crate::app::tokens;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use cosm_wire::{MacAddr, Scope};

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading the inventory, roles, rules, leases, images (read or admin tokens).
    Read,
    /// Changing anything, and tokens (admin tokens).
    Admin,
    /// Enrolling a machine (enrol tokens, which the ramdisk's kernel line carries; admin
    /// tokens).
    Enroll,
    /// A machine's agent about itself (its own credential; admin tokens).
    Agent,
    /// A machine's installer: its kickstart's calls (its install token; admin tokens).
    Install,
}

/// What a caller's credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// An API token or an agent credential, of this scope.
    Token(Scope),
    /// A machine's install token, good for that machine's install round only.
    Install,
}

/// Whether a token of `scope` may call a route that needs `access`.
pub fn grants(scope: Scope, access: Access) -> bool {
    match scope {
        Scope::Admin => true,
        Scope::Read => access == Access::Read,
        Scope::Enroll => access == Access::Enroll,
        Scope::Agent => access == Access::Agent,
    }
}

/// Whether a caller holding `grant` may call a route that needs `access`.
pub(super) fn grant_allows(grant: Grant, access: Access) -> bool {
    match grant {
        Grant::Token(scope) => grants(scope, access),
        Grant::Install => access == Access::Install,
    }
}

/// Who made a request: put in the request by the auth layer, used in audit log lines.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The stored token's id; 0 for an install token (not stored).
    pub token_id: u64,
    pub name: String,
    pub grant: Grant,
    /// The machine an agent credential or install token belongs to.
    pub mac: Option<MacAddr>,
}

/// A route's methods, callable only by tokens that grant `access`.
pub(super) fn allow(access: Access, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        check(std::slice::from_ref(&access).to_vec(), req, next)
    }))
}

/// A route's methods, callable by tokens that grant any of `accesses` (the handler then
/// decides what each caller may do, e.g. only about its own machine).
pub(super) fn allow_any(
    accesses: &'static [Access],
    route: MethodRouter<AppState>,
) -> MethodRouter<AppState> {
    route.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        check(accesses.to_vec(), req, next)
    }))
}

async fn check(accesses: Vec<Access>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>() else {
        // `allow` is only used under the authenticate layer; a route outside it is a bug,
        // and refusing is the safe answer.
        tracing::error!(
            path = req.uri().path(),
            "a route with an access rule is not authenticated"
        );
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this call needs an API token: send Authorization: Bearer <token>",
        )
        .into_response();
    };
    if !accesses.iter().any(|a| grant_allows(caller.grant, *a)) {
        let what = match caller.grant {
            Grant::Token(scope) => format!("scope {scope:?}"),
            Grant::Install => "only the calls of its machine's installer".to_string(),
        };
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has {what}, which does not allow {} {}",
                caller.name,
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    next.run(req).await
}

pub(super) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        if let Some(id) = session_cookie(req.headers()) {
            return session(state, id, req, next).await;
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this call needs an API token: send Authorization: Bearer <token>",
        )
        .into_response();
    };
    if token.starts_with(tokens::INSTALL_PREFIX) {
        return match state.app.install_caller(token) {
            Ok(Some(mac)) => {
                req.extensions_mut().insert(Caller {
                    token_id: 0,
                    name: format!("install token of {mac}"),
                    grant: Grant::Install,
                    mac: Some(mac),
                });
                next.run(req).await
            }
            Ok(None) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this install token is not (or no longer) valid: an install token works while its machine is ready or deploying, for one install round; the machine's boot script carries the current one",
            )
            .into_response(),
            Err(e) => ApiError::from(e).into_response(),
        };
    }
    let record = match state.app.store.token_by_hash(&tokens::hash_token(token)) {
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
    req.extensions_mut().insert(Caller {
        token_id: record.info.id,
        name: record.info.name,
        grant: Grant::Token(record.info.scope),
        mac: record.info.mac,
    });
    next.run(req).await
}

/// The console session id in the request's cookies, if any.
pub(super) fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// A request made with a console session's cookie: the session's scope, like a token's,
/// and for anything but a read the session's CSRF token in `X-CSRF-Token` (a cookie is
/// sent by the browser whoever made the page that asks; the CSRF token only by the
/// console's own script).
async fn session(state: AppState, id: String, mut req: Request, next: Next) -> Response {
    let Some(s) = state.app.sessions.get(&id) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the console session expired or was closed: log in again",
        )
        .into_response();
    };
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe {
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_secret(sent, &s.csrf) {
            tracing::warn!(user = %s.user, method = %req.method(), path = req.uri().path(), "console request refused: missing or wrong CSRF token");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "this request carries the console's session cookie but not its CSRF token (X-CSRF-Token): it did not come from the console",
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(Caller {
        token_id: s.token_id,
        name: format!("console session of {}", s.user),
        grant: Grant::Token(s.scope),
        mac: None,
    });
    req.extensions_mut().insert(SessionId(id));
    req.extensions_mut().insert(s);
    next.run(req).await
}

/// The id of the console session a request was made with (from its cookie).
#[derive(Debug, Clone)]
pub(super) struct SessionId(pub String);

pub(super) fn agent_mac(caller: &Caller) -> Result<MacAddr, ApiError> {
    if caller.grant == Grant::Install {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an install token cannot call this endpoint: only a machine's agent credential can",
        ));
    }
    caller.mac.ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only a machine's agent credential can call this endpoint",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_grant_their_access_only() {
        use Access::*;
        for a in [Read, Admin, Enroll, Agent] {
            assert!(grants(Scope::Admin, a));
        }
        assert_eq!(
            [Read, Admin, Enroll, Agent].map(|a| grants(Scope::Read, a)),
            [true, false, false, false]
        );
        assert_eq!(
            [Read, Admin, Enroll, Agent].map(|a| grants(Scope::Enroll, a)),
            [false, false, true, false]
        );
        assert_eq!(
            [Read, Admin, Enroll, Agent].map(|a| grants(Scope::Agent, a)),
            [false, false, false, true]
        );
    }

    #[test]
    fn an_install_token_grants_only_the_installer_calls() {
        use Access::*;
        assert_eq!(
            [Read, Admin, Enroll, Agent, Install].map(|a| grant_allows(Grant::Install, a)),
            [false, false, false, false, true]
        );
        for scope in [Scope::Read, Scope::Enroll, Scope::Agent] {
            assert!(!grant_allows(Grant::Token(scope), Install), "{scope:?}");
        }
        assert!(grant_allows(Grant::Token(Scope::Admin), Install));
    }
}
