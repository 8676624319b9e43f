//! The HTTP layer: the only code that knows HTTP and JSON (axum, tower-http).
//!
//! [`router`] builds the whole service from an [`AppState`]; [`serve`] runs it on a
//! listener. Below it, in layers that never import upwards: `error` (the one error type that
//! becomes HTTP) and `extract` (bodies and parameters); `auth` (tokens, and the access each
//! route declares); then one file per resource (`machines`, `catalog`, `agents`, `images`,
//! `boot`, `ops`), each with its routes and handlers, and `openapi`; `paging` answers
//! every list one page at a time, read off the async workers. A handler parses,
//! calls one application function, and renders. Every `/api/v1` route but the OpenAPI
//! document needs a bearer token; every error is an [`ApiError`] answered as an
//! `ErrorBody` JSON that names the field at fault; internal causes are logged, not sent.

mod agents;
mod auth;
mod boot;
mod catalog;
mod console;
mod error;
mod extract;
mod images;
mod machines;
mod net;
mod openapi;
mod ops;
mod paging;
mod power;
mod serve;
mod vms;

pub use auth::{grants, Access, Caller};
pub use error::ApiError;
pub use openapi::ApiDoc;
pub use serve::{serve, Transport};

use crate::app::App;
use crate::metrics::{HttpLabels, Metrics};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    pub app: App,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
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
    // Every route here declares the access it needs beside itself (`auth::allow`).
    let api = Router::new()
        .merge(machines::routes())
        .merge(catalog::routes())
        .merge(agents::routes())
        .merge(images::routes())
        .merge(vms::routes())
        .merge(power::routes())
        .merge(net::routes())
        .merge(console::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    let open = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/api/v1/openapi.json", get(ops::openapi_json))
        .merge(boot::routes())
        .merge(console::open_routes());
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
