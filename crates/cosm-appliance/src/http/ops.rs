//! Operations: `/healthz`, `/metrics` and the OpenAPI document, open without a token.

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cosm_wire::{ErrorBody, Health};
use utoipa::OpenApi;

/// Is the appliance up? Open, no token needed.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub(super) async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let schema_version = state.app.store.schema_version().map_err(|e| {
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
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Rendering counts the machines by state (a read of every machine): a bulk read.
    let metrics = state.metrics.clone();
    let text = state
        .app
        .bulk_reads
        .run(move || metrics.render())
        .await?
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
pub(super) async fn openapi_json() -> Response {
    Json(super::openapi::ApiDoc::openapi()).into_response()
}
