//! HTTP access to the appliance: a blocking reqwest client that adds the bearer token,
//! turns transport failures into "cannot reach the appliance" errors and non-2xx answers
//! into [`ApiError`]s carrying the server's [`ErrorBody`].

use anyhow::{Context, Result};
use cosm_wire::ErrorBody;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one appliance.
#[derive(Debug)]
pub(crate) struct Api {
    http: Client,
    /// Base URL without a trailing `/`, e.g. `http://127.0.0.1:8080`.
    base: String,
    /// Bearer token; `None` only for commands that need none (`health`).
    token: Option<String>,
}

/// A successful (2xx) answer.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    /// The raw response body (empty for `204 No Content`).
    pub(crate) body: String,
    /// The next page of a list (`Link: <path?…>; rel="next"`), when more follow.
    pub(crate) next: Option<String>,
}

/// The most pages one list is followed for: far more than any rack holds at 1,000 records
/// a page, and a bound if an appliance kept answering with a next page.
const MAX_PAGES: usize = 100_000;

/// The target of a `Link` header's `rel="next"` entry (RFC 8288).
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|entry| {
        let (target, params) = entry.trim().split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_string())
    })
}

impl Reply {
    /// Decodes the body as `T`.
    pub(crate) fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "unexpected answer from the appliance (HTTP {}); is cosmctl the same version as the appliance?",
                self.status.as_u16()
            )
        })
    }
}

/// A non-2xx answer from the appliance.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: ErrorBody,
}

impl ApiError {
    /// Builds the error from a response body; a body that is not an [`ErrorBody`] (say, a
    /// proxy's HTML page) becomes one whose code is the HTTP reason phrase.
    fn from_response(status: StatusCode, text: &str) -> ApiError {
        let body = serde_json::from_str::<ErrorBody>(text).unwrap_or_else(|_| {
            let reason = status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_");
            let text = text.trim();
            let message = if text.is_empty() {
                reason.replace('_', " ")
            } else {
                text.chars().take(200).collect()
            };
            ErrorBody {
                code: reason,
                message,
                field: None,
            }
        });
        ApiError { status, body }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.body.message)?;
        if let Some(field) = &self.body.field {
            write!(f, " (field: {field})")?;
        }
        write!(f, " [HTTP {} {}]", self.status.as_u16(), self.body.code)
    }
}

impl std::error::Error for ApiError {}

/// Adds a line `hint: …` to an appliance refusal when `hint` has one for it; other errors
/// (and refusals without a hint) pass unchanged.
pub(crate) fn add_hint(
    e: anyhow::Error,
    hint: impl FnOnce(&ApiError) -> Option<String>,
) -> anyhow::Error {
    match e.downcast_ref::<ApiError>().and_then(hint) {
        Some(h) => anyhow::anyhow!("{e:#}\nhint: {h}"),
        None => e,
    }
}

/// The innermost cause of an error: for a refused connection that is
/// "Connection refused (os error 111)" rather than "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Api {
    /// A client of the appliance at `base`. `token` may be `None` for unauthenticated calls.
    pub(crate) fn new(base: &str, token: Option<String>) -> Result<Api> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("invalid appliance URL {base:?}: it must start with http:// or https://");
        }
        reqwest::Url::parse(base).with_context(|| format!("invalid appliance URL {base:?}"))?;
        let http = Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("cosmctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Api {
            http,
            base: base.to_string(),
            token,
        })
    }

    /// A request to `{base}/api/v1{path}` with the bearer token.
    fn api(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub(crate) fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Reply> {
        self.send(self.api(Method::GET, path).query(query))
    }

    /// Every record of a list: follows each page's `Link` rel="next" to the end and
    /// answers one JSON array, as if the appliance had sent it in one page.
    pub(crate) fn get_all(&self, path: &str, query: &[(&str, String)]) -> Result<Reply> {
        let mut reply = self.get(path, query)?;
        let mut all: Vec<serde_json::Value> = reply.parse()?;
        let mut pages = 1;
        while let Some(next) = reply.next.take() {
            anyhow::ensure!(
                pages < MAX_PAGES,
                "the appliance answered more than {MAX_PAGES} pages for {path}; stopped"
            );
            // The link is a path on the same appliance (`/api/v1/…?cursor=…`).
            let url = if next.starts_with('/') {
                format!("{}{next}", self.base)
            } else {
                next
            };
            let rb = self.http.get(url);
            let rb = match &self.token {
                Some(t) => rb.bearer_auth(t),
                None => rb,
            };
            reply = self.send(rb)?;
            let page: Vec<serde_json::Value> = reply.parse()?;
            all.extend(page);
            pages += 1;
        }
        reply.body = serde_json::Value::Array(all).to_string();
        Ok(reply)
    }

    pub(crate) fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Reply> {
        self.send(self.api(Method::POST, path).json(body))
    }

    pub(crate) fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<Reply> {
        self.send(self.api(Method::PUT, path).json(body))
    }

    pub(crate) fn patch<B: Serialize>(&self, path: &str, body: &B) -> Result<Reply> {
        self.send(self.api(Method::PATCH, path).json(body))
    }

    pub(crate) fn delete(&self, path: &str) -> Result<Reply> {
        self.send(self.api(Method::DELETE, path))
    }

    /// `PUT` of a file's bytes, streamed from `body` (no overall timeout: images are large).
    pub(crate) fn upload(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: reqwest::blocking::Body,
    ) -> Result<Reply> {
        let rb = self
            .api(Method::PUT, path)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(Duration::from_secs(24 * 3600))
            .body(body);
        self.send(rb)
    }

    /// `GET {base}/healthz`, which needs no token.
    pub(crate) fn health(&self) -> Result<Reply> {
        self.send(self.http.get(format!("{}/healthz", self.base)))
    }

    fn send(&self, rb: RequestBuilder) -> Result<Reply> {
        let unreachable = |e: reqwest::Error| {
            anyhow::anyhow!(
                "cannot reach the appliance at {}: {}; is it running? Set --url or COSM_URL",
                self.base,
                root_cause(&e)
            )
        };
        let resp = rb.send().map_err(unreachable)?;
        let status = resp.status();
        let next = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link);
        let body = resp.text().map_err(unreachable)?;
        if status.is_success() {
            Ok(Reply { status, body, next })
        } else {
            Err(ApiError::from_response(status, &body).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_text() {
        let e = ApiError::from_response(
            StatusCode::CONFLICT,
            r#"{"code":"conflict","message":"machine 52:54:00:aa:bb:01 already exists","field":"mac"}"#,
        );
        assert_eq!(
            e.to_string(),
            "machine 52:54:00:aa:bb:01 already exists (field: mac) [HTTP 409 conflict]"
        );
        let e = ApiError::from_response(
            StatusCode::NOT_FOUND,
            r#"{"code":"not_found","message":"no such role"}"#,
        );
        assert_eq!(e.to_string(), "no such role [HTTP 404 not_found]");
        let e = ApiError::from_response(StatusCode::BAD_GATEWAY, "");
        assert_eq!(e.to_string(), "bad gateway [HTTP 502 bad_gateway]");
    }

    #[test]
    fn refused_connection_is_explained() {
        // Port 9 on localhost ("discard") is as good as never listening.
        let api = Api::new("http://127.0.0.1:9", Some("t".into())).unwrap();
        let err = api.get("/machines", &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot reach the appliance at http://127.0.0.1:9: "),
            "{err}"
        );
        assert!(
            err.ends_with("is it running? Set --url or COSM_URL"),
            "{err}"
        );
    }

    #[test]
    fn finds_the_next_page_in_a_link_header() {
        assert_eq!(
            next_link(r#"</api/v1/machines?limit=2&cursor=0a>; rel="next""#).as_deref(),
            Some("/api/v1/machines?limit=2&cursor=0a")
        );
        assert_eq!(
            next_link(r#"<http://h/a>; rel="prev", <http://h/b>; rel=next"#).as_deref(),
            Some("http://h/b")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn rejects_non_http_urls() {
        assert!(Api::new("ftp://x", None).is_err());
        assert!(Api::new("127.0.0.1:8080", None).is_err());
    }
}
