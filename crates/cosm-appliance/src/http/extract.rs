//! Request parsing shared by the handlers: JSON bodies with the path of a bad field, path
//! and query parameters parsed into identities, and the 201 answer.

use super::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, OptionalFromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use cosm_wire::{MacAddr, RoleName};
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// A JSON request body: `application/json`, within the size limit, and deserialized with
/// the path of a bad field kept for the error.
#[derive(Debug)]
pub(super) struct ApiJson<T>(pub T);

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
                    let field =
                        crate::config::field_path(&e.path().to_string(), &inner.to_string());
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

/// An optional JSON body (`Option<ApiJson<T>>`): no body at all is `None`; a body is
/// parsed like [`ApiJson`], so a wrong one is refused, never ignored.
impl<S: Send + Sync, T: DeserializeOwned> OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            return <Self as FromRequest<S>>::from_request(req, state)
                .await
                .map(Some);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rej: BytesRejection| {
                ApiError::new(rej.status(), "bad_body", rej.body_text())
            })?;
        if bytes.is_empty() {
            Ok(None)
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON with Content-Type: application/json",
            ))
        }
    }
}

pub(super) fn parse_mac(s: &str) -> Result<MacAddr, ApiError> {
    s.parse().map_err(|e: cosm_wire::ParseError| {
        ApiError::field(StatusCode::BAD_REQUEST, "mac", e.to_string())
    })
}

pub(super) fn parse_role(s: &str) -> Result<RoleName, ApiError> {
    s.parse().map_err(|e: cosm_wire::ParseError| {
        ApiError::field(StatusCode::BAD_REQUEST, "role", e.to_string())
    })
}

/// Checks query parameters against the known ones, so a typo is an error, not ignored.
pub(super) fn query_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
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

pub(super) fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "id",
            format!("{s:?} is not a numeric id"),
        )
    })
}

pub(super) fn created<T: serde::Serialize>(location: String, body: T) -> Response {
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Drops a `Range` header that asks for several ranges: tower-http answers those 416, and
/// RFC 9110 (14.2) lets a server ignore Range and send the whole file (200), which every
/// client handles.
pub(super) fn single_range_only(headers: &mut axum::http::HeaderMap) {
    let several = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(','));
    if several {
        headers.remove(header::RANGE);
    }
}
