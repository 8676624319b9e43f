//! Fuzzes the HTTP API through its real router: the extractors (JSON bodies, paths,
//! queries, MACs, roles, ids, Range headers) and the handlers behind them. Each input picks
//! a route and fills its path segment, query, a header and the body; the request is sent
//! with the admin token, so it gets past authentication to the extractors. No input may
//! panic (a panic is a crash here) or answer 500.
#![no_main]

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cosm_appliance::assembly::{Assembly, Network};
use cosm_appliance::config::Config;
use http_body_util::BodyExt;
use std::sync::OnceLock;
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    admin: String,
    /// Kept for the life of the process (its background tasks and store).
    _assembly: std::sync::Mutex<Assembly>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join("vmlinuz"), vec![7u8; 4096]).unwrap();
        let text = r#"data_dir = "."
[boot]
dir = "boot"
ipxe_dir = "boot"
ramdisk_dir = "boot"
agent_dir = "boot"
appliance_url = "http://192.0.2.1:8080"
[images]
max_upload_mib = 1
"#;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = Config::parse(&dir.path().join("appliance.toml"), text).unwrap();
        let assembly = runtime
            .block_on(Assembly::build(&config, Network::Off))
            .unwrap();
        let admin = assembly.first_admin.clone().unwrap().0;
        let router = cosm_appliance::http::router(assembly.state.clone());
        Fixture {
            runtime,
            router,
            admin,
            _assembly: std::sync::Mutex::new(assembly),
            _dir: dir,
        }
    })
}

/// Routes with a place for a fuzzed path segment (`{}`); the query comes after.
const ROUTES: [(&str, &str); 16] = [
    ("GET", "/api/v1/machines"),
    ("GET", "/api/v1/machines/{}"),
    ("GET", "/api/v1/machines/{}/events"),
    ("POST", "/api/v1/machines"),
    ("PATCH", "/api/v1/machines/{}"),
    ("PUT", "/api/v1/machines/{}/role"),
    ("POST", "/api/v1/machines/{}/state"),
    ("POST", "/api/v1/machines/{}/actions"),
    ("POST", "/api/v1/agent/enroll"),
    ("POST", "/api/v1/roles"),
    ("POST", "/api/v1/rules"),
    ("DELETE", "/api/v1/rules/{}"),
    ("POST", "/api/v1/tokens"),
    ("GET", "/api/v1/leases"),
    ("GET", "/boot/ipxe"),
    ("GET", "/boot/{}"),
];

/// Percent-encodes what a URI cannot carry; `keep` are extra characters left as they are.
fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // Fields separated by 0xFF: path segment, query, a header value, body.
    let mut fields = rest.splitn(4, |b| *b == 0xFF);
    let segment = fields.next().unwrap_or_default();
    let query = fields.next().unwrap_or_default();
    let header_value = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default();
    let (method, template) = ROUTES[usize::from(pick) % ROUTES.len()];
    let mut uri = template.replace("{}", &encode(segment, b""));
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&encode(query, b"=&"));
    }
    let header_name = match pick / 16 % 3 {
        0 => header::RANGE,
        1 => header::CONTENT_TYPE,
        _ => header::IF_MODIFIED_SINCE,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(&uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", fixture().admin));
    if !body.is_empty() && header_name != header::CONTENT_TYPE {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Ok(v) = axum::http::HeaderValue::from_bytes(header_value) {
        req = req.header(header_name, v);
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return;
    };
    let f = fixture();
    let (status, text) = f.runtime.block_on(async {
        let resp = f.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {uri}: {text}"
    );
});
