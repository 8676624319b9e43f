//! The one error type that becomes HTTP: a status and the client-facing [`ErrorBody`].
//! Internal detail is logged where the error is made and never put in the body.

use crate::app::images::UploadError;
use crate::app::AppError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cosm_wire::ErrorBody;

/// An API error: the status and the client-facing body. Internal detail is logged where
/// the error is made and never put in the body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(super) body: ErrorBody,
    /// Seconds for a `Retry-After` header (429 answers).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            retry_after: None,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                field: None,
            },
        }
    }

    /// With a `Retry-After` header (a 429).
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn field(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(status, "invalid_field", message);
        e.body.field = Some(field.into());
        e
    }

    pub fn internal(context: &str, err: &dyn std::error::Error) -> ApiError {
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
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
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
            StoreError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            StoreError::Invalid { field, message } => {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            }
            other => ApiError::internal("store operation failed", &other),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        match e {
            AppError::Store(e) => e.into(),
            AppError::Off { code, message } => ApiError::new(StatusCode::NOT_FOUND, code, message),
            AppError::Bmc { code, message } => {
                ApiError::new(StatusCode::BAD_GATEWAY, code, message)
            }
            AppError::NotFound { message } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            AppError::Forbidden { message } => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            AppError::Unprocessable { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            AppError::Upload(e) => e.into(),
            AppError::RateLimited {
                message,
                retry_after_secs,
            } => {
                let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                e.retry_after = Some(retry_after_secs);
                e
            }
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> ApiError {
        let (status, code) = match &e {
            UploadError::BadName { .. }
            | UploadError::NoChecksum
            | UploadError::BadChecksum { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            UploadError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            UploadError::Interrupted { .. } => (StatusCode::BAD_REQUEST, "interrupted"),
            UploadError::Mismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch"),
            UploadError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}
