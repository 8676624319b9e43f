//! Pages of lists. Every list endpoint takes `limit` (how many records, 1 to
//! [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and `cursor` (where the previous page ended),
//! and answers a JSON array, as before paging existed, with a
//! `Link: <…?cursor=…>; rel="next"` header (RFC 8288) while more records follow. A cursor
//! is opaque to clients: the key of the last record of the page, in hex.
//!
//! The page is read, and serialized to JSON, on a blocking thread through the
//! application's [`BulkReads`](crate::app::BulkReads), so the async workers that answer
//! `/healthz` and heartbeats never read or encode a list.

use super::error::ApiError;
use super::AppState;
use crate::store::{Page, StoreError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::HashMap;

/// Records per page when the request does not say.
pub(super) const DEFAULT_LIMIT: usize = 500;
/// The most records one page may ask for.
pub(super) const MAX_LIMIT: usize = 1000;

/// The `limit` parameter: `default` when absent, else a number from 1 to `max`.
pub(super) fn limit(
    q: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "limit",
                    format!("limit must be a number from 1 to {max}, not {l:?}"),
                )
            }),
    }
}

fn bad_cursor(c: &str) -> ApiError {
    ApiError::field(
        StatusCode::BAD_REQUEST,
        "cursor",
        format!(
            "cursor {c:?} is not one this list gave out; take it from the previous page's Link header, or leave it out to start at the beginning"
        ),
    )
}

/// The `cursor` parameter's bytes, or `None` without one.
fn cursor_bytes(q: &HashMap<String, String>) -> Result<Option<Vec<u8>>, ApiError> {
    match q.get("cursor") {
        None => Ok(None),
        Some(c) => match hex::decode(c) {
            Ok(b) if !b.is_empty() => Ok(Some(b)),
            _ => Err(bad_cursor(c)),
        },
    }
}

fn fixed<const N: usize>(q: &HashMap<String, String>) -> Result<Option<[u8; N]>, ApiError> {
    cursor_bytes(q)?
        .map(|b| b.try_into().map_err(|_| bad_cursor(&q["cursor"])))
        .transpose()
}

/// A cursor holding a `u64` key (MACs, ids, event sequence numbers).
pub(super) fn cursor_u64(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    Ok(fixed::<8>(q)?.map(u64::from_be_bytes))
}

/// A cursor holding a `u32` key (IPv4 addresses).
pub(super) fn cursor_u32(q: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    Ok(fixed::<4>(q)?.map(u32::from_be_bytes))
}

/// A cursor holding a name (roles, images).
pub(super) fn cursor_name(q: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    cursor_bytes(q)?
        .map(|b| String::from_utf8(b).map_err(|_| bad_cursor(&q["cursor"])))
        .transpose()
}

/// A cursor holding a rule's place in the evaluation order (priority, id).
pub(super) fn cursor_rule(q: &HashMap<String, String>) -> Result<Option<(i32, u64)>, ApiError> {
    Ok(fixed::<12>(q)?.map(|b| {
        let (p, id) = b.split_at(4);
        (
            i32::from_be_bytes(p.try_into().expect("4 bytes")),
            u64::from_be_bytes(id.try_into().expect("8 bytes")),
        )
    }))
}

pub(super) fn u64_cursor(k: u64) -> String {
    hex::encode(k.to_be_bytes())
}

pub(super) fn u32_cursor(k: u32) -> String {
    hex::encode(k.to_be_bytes())
}

pub(super) fn name_cursor(k: &str) -> String {
    hex::encode(k.as_bytes())
}

pub(super) fn rule_cursor(priority: i32, id: u64) -> String {
    let mut b = priority.to_be_bytes().to_vec();
    b.extend_from_slice(&id.to_be_bytes());
    hex::encode(b)
}

/// Where the next page is: the list's path and its query parameters but the cursor.
#[derive(Debug)]
pub(super) struct NextLink {
    path: String,
    params: Vec<(String, String)>,
}

impl NextLink {
    /// The request's path and parameters (already checked against the known ones); the
    /// limit is kept as given, so every page has the size the client chose.
    pub(super) fn new(path: impl Into<String>, q: &HashMap<String, String>) -> NextLink {
        let mut params: Vec<(String, String)> = q
            .iter()
            .filter(|(k, _)| k.as_str() != "cursor")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        NextLink {
            path: path.into(),
            params,
        }
    }

    fn header(&self, cursor: &str) -> String {
        let mut url = format!("{}?", self.path);
        for (k, v) in &self.params {
            url.push_str(&format!("{}={}&", encode(k), encode(v)));
        }
        url.push_str(&format!("cursor={cursor}"));
        format!("<{url}>; rel=\"next\"")
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads one page with `read` and answers it: the JSON array, and the `Link` to the next
/// page (whose cursor `cursor_of` makes from the page's records: the key of the last one,
/// or of the first for a list read backwards) while more follow.
/// Reading and encoding happen on a blocking thread (see the module header).
pub(super) async fn answer<T, R, C>(
    state: &AppState,
    next: NextLink,
    read: R,
    cursor_of: C,
) -> Result<Response, ApiError>
where
    T: Serialize + Send + 'static,
    R: FnOnce(&crate::app::Store) -> Result<Page<T>, StoreError> + Send + 'static,
    C: FnOnce(&[T]) -> Option<String> + Send + 'static,
{
    let store = state.app.store.clone();
    let (body, cursor) = state
        .app
        .bulk_reads
        .run(move || -> Result<(Vec<u8>, Option<String>), StoreError> {
            let page = read(&store)?;
            let cursor = if page.more {
                cursor_of(&page.items)
            } else {
                None
            };
            // Our own plain data types always serialize.
            let body = serde_json::to_vec(&page.items).expect("API types serialize to JSON");
            Ok((body, cursor))
        })
        .await??;
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(c) = cursor {
        if let Ok(v) = HeaderValue::from_str(&next.header(&c)) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_name_the_cursor() {
        let c = u64_cursor(0x5254_00aa_bb01);
        assert_eq!(
            cursor_u64(&q(&[("cursor", &c)])).unwrap(),
            Some(0x5254_00aa_bb01)
        );
        let c = rule_cursor(-5, 7);
        assert_eq!(cursor_rule(&q(&[("cursor", &c)])).unwrap(), Some((-5, 7)));
        let c = name_cursor("host");
        assert_eq!(
            cursor_name(&q(&[("cursor", &c)])).unwrap().as_deref(),
            Some("host")
        );
        assert_eq!(cursor_u32(&q(&[])).unwrap(), None);
        for bad in ["", "xyz", "abc", "00", &u64_cursor(1)] {
            let e = cursor_u32(&q(&[("cursor", bad)])).unwrap_err();
            assert_eq!(e.body.field.as_deref(), Some("cursor"), "{bad:?}");
        }
        let e = cursor_name(&q(&[("cursor", "ff")])).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("cursor"));
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(&q(&[]), 500, 1000).unwrap(), 500);
        assert_eq!(limit(&q(&[("limit", "1000")]), 500, 1000).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            let e = limit(&q(&[("limit", bad)]), 500, 1000).unwrap_err();
            assert_eq!(e.body.field.as_deref(), Some("limit"), "{bad:?}");
        }
    }

    #[test]
    fn the_next_link_keeps_the_filters_and_replaces_the_cursor() {
        let next = NextLink::new(
            "/api/v1/machines",
            &q(&[
                ("state", "ready"),
                ("cursor", "00"),
                ("limit", "2"),
                ("role", "a b"),
            ]),
        );
        assert_eq!(
            next.header("0a"),
            "</api/v1/machines?limit=2&role=a%20b&state=ready&cursor=0a>; rel=\"next\""
        );
    }
}
