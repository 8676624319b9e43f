//! Who may call what. The `authenticate` layer (on every `/api/v1` route but the OpenAPI
//! document) finds the bearer token and puts the [`Caller`] into the request; each route
//! declares the [`Access`] it needs where it is routed, with [`allow`], and a token's
//! [`Scope`] grants some of them.

use super::error::ApiError;
use super::AppState;
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
    /// Enrolling a machine and reporting an install (enrol tokens, which boot scripts and
    /// kickstarts carry; admin tokens).
    Enroll,
    /// A machine's agent about itself (its own credential; admin tokens).
    Agent,
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

/// Who made a request: put in the request by the auth layer, used in audit log lines.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: u64,
    pub name: String,
    pub scope: Scope,
    /// The machine an agent credential belongs to.
    pub mac: Option<MacAddr>,
}

/// A route's methods, callable only by tokens that grant `access`.
pub(super) fn allow(access: Access, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        check(access, req, next)
    }))
}

async fn check(access: Access, req: Request, next: Next) -> Response {
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
    if !grants(caller.scope, access) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has scope {:?}, which does not allow {} {}",
                caller.name,
                caller.scope,
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
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this call needs an API token: send Authorization: Bearer <token>",
        )
        .into_response();
    };
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
        scope: record.info.scope,
        mac: record.info.mac,
    });
    next.run(req).await
}

pub(super) fn agent_mac(caller: &Caller) -> Result<MacAddr, ApiError> {
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
}
