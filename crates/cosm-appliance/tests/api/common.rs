//! The fixture of the API tests: the appliance as `serve` assembles it (without DHCP and
//! TFTP), driven through its router with `tower::ServiceExt::oneshot`.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use cosm_appliance::assembly::{Assembly, Network};
use cosm_appliance::config::Config;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

pub(crate) struct TestApp {
    pub(crate) router: Router,
    pub(crate) admin: String,
    pub(crate) assembly: Assembly,
    /// The checked config it was built from (for tests that serve it on a real listener).
    pub(crate) config: Config,
    pub(crate) _dir: tempfile::TempDir,
}

impl TestApp {
    pub(crate) async fn new() -> TestApp {
        Self::with_limit(64 * 1024).await
    }

    pub(crate) async fn with_limit(max_body_bytes: usize) -> TestApp {
        Self::with(max_body_bytes, "").await
    }

    /// With more `[agents]` keys (e.g. `max_discovered = 3`).
    pub(crate) async fn with(max_body_bytes: usize, agents: &str) -> TestApp {
        Self::with_sections(max_body_bytes, agents, "").await
    }

    /// With more `[agents]` keys and more sections at the end of the config (e.g. a
    /// `[dhcp]` section: the DHCP server itself is not started).
    pub(crate) async fn with_sections(max_body_bytes: usize, agents: &str, more: &str) -> TestApp {
        Self::build(max_body_bytes, "", agents, more).await
    }

    /// With more `[api]` keys (e.g. `idle_timeout_secs = 1`).
    pub(crate) async fn with_api(api: &str) -> TestApp {
        Self::build(64 * 1024, api, "", "").await
    }

    async fn build(max_body_bytes: usize, api: &str, agents: &str, more: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        // A boot directory staged from small stand-ins for iPXE and the ramdisk.
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        for f in [
            "undionly.kpxe",
            "ipxe.efi",
            "snponly.efi",
            "initramfs.img",
            "cosm-agent",
            "cosm-agent-libvirt",
            "cosm-agent.service",
        ] {
            std::fs::write(src.join(f), format!("contents of {f}")).unwrap();
        }
        std::fs::write(src.join("vmlinuz"), (0..=255u8).collect::<Vec<u8>>()).unwrap();
        // The heartbeat keys, unless the caller sets them.
        let beats = if agents.contains("heartbeat_secs") {
            ""
        } else {
            "heartbeat_secs = 5\nmissed_beats = 3"
        };
        let text = format!(
            r#"data_dir = "."
[api]
max_body_bytes = {max_body_bytes}
{api}
[agents]
{beats}
{agents}
[boot]
dir = "boot"
ipxe_dir = "src"
ramdisk_dir = "src"
agent_dir = "src"
kernel_args = "console=ttyS0"
retries = 3
appliance_url = "http://192.0.2.1:8080"
[kickstart]
repo_url = "http://192.0.2.1:8080/repo/rocky-9/"
[images]
max_upload_mib = 64
{more}
"#
        );
        let config = Config::parse(&dir.path().join("appliance.toml"), &text).unwrap();
        let assembly = Assembly::build(&config, Network::Off).await.unwrap();
        let (token, _) = assembly
            .first_admin
            .clone()
            .expect("a new store makes an admin token");
        let router = cosm_appliance::http::router(assembly.state.clone());
        TestApp {
            router,
            admin: token,
            assembly,
            config,
            _dir: dir,
        }
    }

    pub(crate) async fn raw(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    pub(crate) async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string()))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let (status, _, bytes) = self.raw(req).await;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, v)
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let admin = self.admin.clone();
        self.call_as(Some(&admin), method, path, body).await
    }

    pub(crate) async fn read_token(&self) -> String {
        self.new_token("viewer", "read").await
    }

    /// An enrol-only token, like the one the ramdisk's kernel line carries.
    pub(crate) async fn enroll_token(&self) -> String {
        self.new_token("ramdisk", "enroll").await
    }

    async fn new_token(&self, name: &str, scope: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": name, "scope": scope})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }
}

pub(crate) fn assert_error(
    status: StatusCode,
    body: &Value,
    want: StatusCode,
    field: Option<&str>,
) {
    assert_eq!(status, want, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    assert!(body["code"].as_str().is_some(), "no code: {body}");
    assert_eq!(body["field"].as_str(), field, "{body}");
}

/// Moves a machine through `states`, each move expected to succeed.
pub(crate) async fn walk(app: &TestApp, mac: &str, states: &[&str]) {
    for to in states {
        let (s, v) = app
            .call(
                "POST",
                &format!("/api/v1/machines/{mac}/state"),
                Some(json!({"state": to})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{to}: {v}");
    }
}

/// Uploads a small stand-in for an image (e.g. the installer kernel).
pub(crate) async fn upload_image(app: &TestApp, name: &str, data: &[u8]) {
    let req = Request::builder()
        .method("PUT")
        .uri(format!("/api/v1/images/{name}?sha256={}", sha256_hex(data)))
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(data.to_vec()))
        .unwrap();
    let (s, _, body) = app.raw(req).await;
    assert!(s.is_success(), "{s}: {}", String::from_utf8_lossy(&body));
}

pub(crate) async fn get_text(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder().uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (s, h, b) = app.raw(req.body(Body::empty()).unwrap()).await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

/// Timeline messages of one kind, waiting briefly: boot events are recorded in the
/// background so the HTTP answer does not wait for the disk.
pub(crate) async fn boot_events(app: &TestApp, mac: &str, want: usize) -> Vec<String> {
    for _ in 0..100 {
        let (_, v) = app
            .call("GET", &format!("/api/v1/machines/{mac}/events"), None)
            .await;
        let msgs: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "boot")
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect();
        if msgs.len() >= want {
            return msgs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, v) = app
        .call("GET", &format!("/api/v1/machines/{mac}/events"), None)
        .await;
    panic!("fewer than {want} boot events for {mac}: {v}");
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub(crate) fn image_files(app: &TestApp) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app._dir.path().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}
