//! The browser harness works: headless Chromium through chromedriver opens a page served
//! from loopback, a drag and drop between two elements done with WebDriver pointer actions
//! reaches the page's pointer-event handlers, and a screenshot is written as a PNG.
//!
//! The page is served by a small HTTP server started here, with the console's strict
//! Content-Security-Policy (`default-src 'self'`), so its script is a file of its own, as
//! the console's is.
//!
//! The console's own assets (crates/cosm-appliance/console) are then driven the same way
//! against a stub of the API answered by that server (the session, the settings, the rack
//! stream, role changes), following the console contract: a login, the setup wizard
//! refusing a pool outside the subnet, a card dragged onto a role column, the plan applied
//! with the CSRF header, deploy progress with a failed step, and a session that expires.
//! The full console test against a real appliance is another test.
//!
//! Needs Debian's `chromium` and `chromium-driver`; fails (never skips) without them.

use cosm_e2e::browser::Browser;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Two boxes; pressing the pointer on the card and releasing it over the column moves the
/// card into the column (pointer events only; no HTML5 drag and drop).
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>drag fixture</title>
<style>
  body { font-family: sans-serif; display: flex; gap: 40px; padding: 40px; }
  .column { width: 300px; min-height: 300px; border: 2px dashed #888; padding: 10px; }
  .column.over { background: #def; }
  #card { width: 200px; padding: 20px; background: #fc6; touch-action: none; cursor: grab; }
</style>
<script src="/drag.js" defer></script></head>
<body>
  <div class="column" id="from" data-testid="column-unassigned"><div id="card" data-testid="card-52:54:00:00:00:01">52:54:00:00:00:01</div></div>
  <div class="column" id="to" data-testid="column-host">host</div>
  <p id="log"></p>
</body></html>"#;

const SCRIPT: &str = r#"
"use strict";
const card = document.getElementById("card");
const log = document.getElementById("log");
let drag = null;
card.addEventListener("pointerdown", (e) => {
  drag = { x: e.clientX, y: e.clientY, moved: false };
  card.setPointerCapture(e.pointerId);
});
card.addEventListener("pointermove", (e) => {
  if (!drag) return;
  if (Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 4) drag.moved = true;
  for (const c of document.querySelectorAll(".column")) c.classList.remove("over");
  const over = document.elementFromPoint(e.clientX, e.clientY);
  const col = over && over.closest(".column");
  if (col) col.classList.add("over");
});
card.addEventListener("pointerup", (e) => {
  if (!drag) return;
  const moved = drag.moved;
  drag = null;
  for (const c of document.querySelectorAll(".column")) c.classList.remove("over");
  const over = document.elementFromPoint(e.clientX, e.clientY);
  const col = over && over.closest(".column");
  if (moved && col) {
    col.appendChild(card);
    col.dataset.dropped = card.id;
    log.textContent = "dropped on " + col.id;
  }
});
"#;

/// A request as the stub server saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Percent-decoded, without the query.
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the stub server answers.
enum Reply {
    Full {
        status: &'static str,
        kind: &'static str,
        body: String,
    },
    /// `text/event-stream`: these events, then comments every second for a minute.
    Events(String),
}

fn full(status: &'static str, kind: &'static str, body: impl Into<String>) -> Reply {
    Reply::Full {
        status,
        kind,
        body: body.into(),
    }
}

fn json(status: &'static str, v: serde_json::Value) -> Reply {
    full(status, "application/json", v.to_string())
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Serves `handler` on a loopback port, one thread per connection (each closed after one
/// answer), for as long as the test runs; returns the base URL.
fn serve(handler: Handler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    serve_on(listener, handler)
}

/// [`serve`] on a listener bound already (e.g. inside a network namespace).
fn serve_on(listener: TcpListener, handler: Handler) -> String {
    let addr = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let handler = handler.clone();
            std::thread::spawn(move || answer(stream, &handler));
        }
    });
    format!("http://{addr}")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(mut stream: TcpStream, handler: &Handler) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("GET").to_string();
    let target = words.next().unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let request = Request {
        method,
        path: percent_decode(path),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    const CSP: &str = "Content-Security-Policy: default-src 'self'\r\n";
    match handler(&request) {
        Reply::Full { status, kind, body } => {
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{CSP}\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Reply::Events(events) => {
            if write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                 {CSP}Connection: close\r\n\r\n{events}"
            )
            .is_err()
            {
                return;
            }
            for _ in 0..60 {
                std::thread::sleep(Duration::from_secs(1));
                if stream.write_all(b": keep-alive\n\n").is_err() {
                    return;
                }
            }
        }
    }
}

/// The drag fixture: PAGE at `/`, SCRIPT at `/drag.js`.
fn fixture(request: &Request) -> Reply {
    match request.path.as_str() {
        "/" => full("200 OK", "text/html; charset=utf-8", PAGE),
        "/drag.js" => full("200 OK", "text/javascript; charset=utf-8", SCRIPT),
        _ => full("404 Not Found", "text/plain", "not found"),
    }
}

/// Where this test's screenshots go (kept after the test, as artifacts).
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console_smoke")
}

#[test]
fn pointer_drag_and_drop_and_a_screenshot() -> anyhow::Result<()> {
    let base = serve(Arc::new(fixture));
    let browser = Browser::start()?;
    browser.goto(&format!("{base}/"))?;
    browser.wait_for("[data-testid='card-52:54:00:00:00:01']", WAIT)?;

    // The viewport is the laptop-sized window the console is designed for.
    let width = browser.execute("return window.innerWidth;", vec![])?;
    assert_eq!(width, serde_json::json!(1366), "viewport width");

    browser.drag(
        "[data-testid='card-52:54:00:00:00:01']",
        "[data-testid='column-host']",
    )?;
    browser.wait_for("[data-testid='column-host'][data-dropped='card']", WAIT)?;
    assert!(browser.exists("[data-testid='column-host'] [data-testid='card-52:54:00:00:00:01']")?);
    assert!(!browser.exists("[data-testid='column-unassigned'] #card")?);
    assert_eq!(browser.text("#log")?, "dropped on to");

    let png = artifacts().join("drag.png");
    let _ = std::fs::remove_file(&png);
    browser.screenshot(&png)?;
    let bytes = std::fs::read(&png)?;
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 1000,
        "{} is too small to be a screenshot",
        png.display()
    );
    eprintln!("screenshot: {}", png.display());
    Ok(())
}

/// Inside a network namespace: chromedriver and Chromium run there (`ip netns exec`), and
/// the page is served on the namespace's own loopback, which the host cannot reach.
#[test]
fn pointer_drag_and_drop_inside_a_network_namespace() -> anyhow::Result<()> {
    cosm_e2e::netns::require_root_tools(&["ip"]);
    let ns = cosm_e2e::netns::NetNs::new("web")?;
    let listener = cosm_e2e::bmc::in_netns(ns.name(), || TcpListener::bind("127.0.0.1:0"))??;
    let base = serve_on(listener, Arc::new(fixture));
    let browser = Browser::start_in(Some(ns.name()))?;
    browser.goto(&format!("{base}/"))?;
    browser.wait_for("[data-testid='card-52:54:00:00:00:01']", WAIT)?;
    browser.drag(
        "[data-testid='card-52:54:00:00:00:01']",
        "[data-testid='column-host']",
    )?;
    browser.wait_for("[data-testid='column-host'][data-dropped='card']", WAIT)?;
    browser.screenshot(&artifacts().join("drag-netns.png"))?;
    drop(browser);
    drop(ns);
    Ok(())
}

/// Dropping the browser stops chromedriver and every Chromium process it started.
#[test]
fn drop_stops_chromedriver_and_chromium() -> anyhow::Result<()> {
    let browser = Browser::start()?;
    let marker = browser.dir().to_string_lossy().into_owned();
    let naming = |marker: &str| -> usize {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .filter(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(marker))
                    .unwrap_or(false)
            })
            .count()
    };
    assert!(
        naming(&marker) > 0,
        "no process names the browser's profile"
    );
    drop(browser);
    let deadline = std::time::Instant::now() + WAIT;
    while naming(&marker) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "Chromium processes outlived the Browser"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The console against a stub of the API (the contract's shapes).

const PASSWORD: &str = "correct horse battery";
const CSRF: &str = "c0ffee";
const MAC1: &str = "52:54:00:00:00:01";
const MAC2: &str = "52:54:00:00:00:02";
const MAC3: &str = "52:54:00:00:00:03";

/// The stub appliance's state, shared with the test.
#[derive(Debug, Default)]
struct Stub {
    logged_in: bool,
    setup_complete: bool,
    requests: Vec<Request>,
}

fn session(stub: &Stub) -> serde_json::Value {
    serde_json::json!({
        "user": "admin", "scope": "admin", "csrf": CSRF,
        "expires_at": 4_102_444_800_000u64,
        "setup_complete": stub.setup_complete, "password_set": false,
    })
}

fn settings() -> serde_json::Value {
    let role = serde_json::json!({"min_cpus": 2, "min_memory_mib": 2048, "min_disks": 1, "min_disk_gib": 20});
    serde_json::json!({
        "network": {"interface": "", "subnet": "", "appliance_ip": "", "pool_start": "",
                    "pool_end": "", "gateway": "", "dns": [], "mode": "authoritative"},
        "os": {"release": "rocky-9", "mirror_url": "", "root_password_hash": "", "ssh_keys": [],
               "timezone": "UTC"},
        "roles": {"center": role, "web": role, "host": role, "storage": role},
    })
}

fn rack() -> serde_json::Value {
    let fits = serde_json::json!({"ok": true, "failures": []});
    let small = serde_json::json!({"ok": false, "failures": ["2 CPUs < 4 required"]});
    serde_json::json!({
        "roles": ["center", "web", "host", "storage"],
        "machines": [
            {"mac": MAC1, "hostname": null, "role": null, "state": "discovered",
             "ip": "192.0.2.100", "firmware": "uefi", "cpus": 2, "memory_mib": 2048,
             "disks": [{"name": "vda", "size_bytes": 21474836480u64}],
             "validations": {"center": fits, "web": fits, "host": small, "storage": fits},
             "progress": null},
            {"mac": MAC2, "hostname": "web1", "role": null, "state": "discovered",
             "ip": "192.0.2.101", "firmware": "bios", "cpus": 4, "memory_mib": 4096,
             "disks": [], "validations": {"center": fits, "web": fits, "host": fits, "storage": fits},
             "progress": null},
            {"mac": MAC3, "hostname": "hv1", "role": "host", "state": "deploying",
             "ip": "192.0.2.102", "firmware": "bios", "cpus": 8, "memory_mib": 8192,
             "disks": [{"name": "sda", "size_bytes": 107374182400u64}],
             "validations": {"center": fits, "web": fits, "host": fits, "storage": fits},
             "progress": {"percent": 57, "steps": [
                 {"name": "PXE boot", "state": "done", "at": 1_764_108_839_123u64, "message": "DHCP ACK"},
                 {"name": "installer", "state": "done", "at": 1_764_108_849_123u64, "message": ""},
                 {"name": "install", "state": "failed", "at": 1_764_108_859_123u64, "message": "disk sda not found"},
                 {"name": "first boot", "state": "pending", "at": null, "message": ""}],
               "failed": {"step": "install", "message": "disk sda not found",
                          "log_tail": ["anaconda: starting", "anaconda: disk sda not found"]}}},
        ],
    })
}

/// The contract's API, enough for the console's pages under test.
fn stub_api(stub: &Arc<Mutex<Stub>>, r: &Request) -> Reply {
    let mut st = stub.lock().expect("stub lock");
    st.requests.push(r.clone());
    let path = r.path.as_str();
    match (r.method.as_str(), path) {
        ("GET", "/") => return full("200 OK", "text/html; charset=utf-8", INDEX_HTML),
        ("GET", "/ui/app.js") => return full("200 OK", "text/javascript; charset=utf-8", APP_JS),
        ("GET", "/ui/app.css") => return full("200 OK", "text/css; charset=utf-8", APP_CSS),
        ("POST", "/api/v1/login") => {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            return if body["password"] == PASSWORD {
                st.logged_in = true;
                json("200 OK", session(&st))
            } else {
                json(
                    "401 Unauthorized",
                    serde_json::json!({"code": "unauthenticated", "message": "wrong password or token"}),
                )
            };
        }
        _ => {}
    }
    if !st.logged_in {
        return json(
            "401 Unauthorized",
            serde_json::json!({"code": "unauthenticated", "message": "log in"}),
        );
    }
    if !matches!(r.method.as_str(), "GET" | "HEAD") && r.header("x-csrf-token") != Some(CSRF) {
        return json(
            "403 Forbidden",
            serde_json::json!({"code": "csrf", "message": "missing CSRF token"}),
        );
    }
    match (r.method.as_str(), path) {
        ("GET", "/api/v1/session") => json("200 OK", session(&st)),
        ("DELETE", "/api/v1/session") => {
            st.logged_in = false;
            full("204 No Content", "text/plain", "")
        }
        ("GET", "/api/v1/rack/stream") => {
            Reply::Events(format!("event: rack\ndata: {}\n\n", rack()))
        }
        ("GET", "/api/v1/settings") => json(
            "200 OK",
            serde_json::json!({
                "settings": settings(),
                "effective": [{"key": "dhcp.pool_start", "value": "192.0.2.100", "source": "default"}],
                "interfaces": [{"name": "eth0", "addresses": ["192.0.2.1/24"], "mac": "52:54:00:aa:bb:cc"}],
                "releases": ["rocky-9", "centos-stream-9"],
            }),
        ),
        ("POST", "/api/v1/settings/validate") => {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            let start = body["settings"]["network"]["pool_start"]
                .as_str()
                .unwrap_or("");
            if body["step"] == "network" && !start.starts_with("192.0.2.") {
                let message = format!("pool start {start} is outside the subnet 192.0.2.0/24");
                json(
                    "422 Unprocessable Entity",
                    serde_json::json!({
                        "code": "invalid", "message": message,
                        "errors": [{"field": "network.pool_start", "message": message}],
                    }),
                )
            } else {
                json("200 OK", serde_json::json!({"ok": true}))
            }
        }
        ("PUT", "/api/v1/settings") => {
            st.setup_complete = true;
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            json(
                "200 OK",
                serde_json::json!({"settings": body, "effective": []}),
            )
        }
        ("PUT", "/api/v1/admin/password") => full("204 No Content", "text/plain", ""),
        ("GET", "/api/v1/rules") => json("200 OK", serde_json::json!([])),
        ("GET", "/api/v1/tokens") => json("200 OK", serde_json::json!([])),
        ("PUT", p) if p.starts_with("/api/v1/machines/") && p.ends_with("/role") => {
            json("200 OK", serde_json::json!({}))
        }
        _ => json(
            "404 Not Found",
            serde_json::json!({"code": "not_found", "message": "no such route"}),
        ),
    }
}

const INDEX_HTML: &str = include_str!("../../cosm-appliance/console/index.html");
const APP_JS: &str = include_str!("../../cosm-appliance/console/app.js");
const APP_CSS: &str = include_str!("../../cosm-appliance/console/app.css");

fn start_stub(setup_complete: bool) -> (Arc<Mutex<Stub>>, String) {
    let stub = Arc::new(Mutex::new(Stub {
        setup_complete,
        ..Stub::default()
    }));
    let shared = stub.clone();
    let base = serve(Arc::new(move |r: &Request| stub_api(&shared, r)));
    (stub, base)
}

fn tid(id: &str) -> String {
    format!("[data-testid='{id}']")
}

fn log_in(browser: &Browser, base: &str) -> anyhow::Result<()> {
    browser.goto(&format!("{base}/"))?;
    browser.wait_for(&tid("login-secret"), WAIT)?;
    browser.type_text(&tid("login-secret"), "not the password")?;
    browser.click(&tid("login-submit"))?;
    browser.wait_for_text(&tid("login-error"), "Wrong password or token", WAIT)?;
    browser.type_text(&tid("login-secret"), PASSWORD)?;
    browser.click(&tid("login-submit"))?;
    Ok(())
}

/// The requests the stub saw with this method and path.
fn requests(stub: &Arc<Mutex<Stub>>, method: &str, path: &str) -> Vec<Request> {
    let st = stub.lock().expect("stub lock");
    st.requests
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .cloned()
        .collect()
}

#[test]
fn console_rack_plan_deploy_progress_and_session_expiry() -> anyhow::Result<()> {
    let (stub, base) = start_stub(true);
    let browser = Browser::start()?;
    log_in(&browser, &base)?;

    // The rack: cards from the stream, in their columns.
    let card1 = tid(&format!("card-{MAC1}"));
    browser.wait_for(&format!("{} {card1}", tid("column-unassigned")), WAIT)?;
    browser.wait_for(
        &format!("{} {}", tid("column-host"), tid(&format!("card-{MAC3}"))),
        WAIT,
    )?;
    browser.wait_for("[data-testid='rack-live'][data-live='true']", WAIT)?;
    browser.screenshot(&artifacts().join("console-rack.png"))?;

    // Drag machine 1 onto host: it moves in the plan, and its badge names the failure.
    browser.drag(&card1, &tid("column-host"))?;
    browser.wait_for(&format!("{} {card1}", tid("column-host")), WAIT)?;
    assert!(browser.exists(&format!("{card1}[data-planned='true']"))?);
    let badge = browser.text(&tid(&format!("badge-{MAC1}")))?;
    assert!(badge.contains("2 CPUs < 4 required"), "badge: {badge}");
    // The keyboard way: machine 2's "Assign role" select.
    browser.select_option(&tid(&format!("assign-{MAC2}")), "web")?;
    browser.wait_for(
        &format!("{} {}", tid("column-web"), tid(&format!("card-{MAC2}"))),
        WAIT,
    )?;
    assert_eq!(browser.text(&tid("plan-review"))?, "Review plan (2)");
    browser.screenshot(&artifacts().join("console-rack-planned.png"))?;

    // The plan's diff, then Apply: one PUT per machine, with the CSRF header.
    browser.click(&tid("plan-review"))?;
    browser.wait_for(&tid(&format!("plan-row-{MAC1}")), WAIT)?;
    let row = browser.text(&tid(&format!("plan-row-{MAC1}")))?;
    assert!(
        row.contains("unassigned") && row.contains("host"),
        "plan row: {row}"
    );
    browser.screenshot(&artifacts().join("console-plan.png"))?;
    browser.click(&tid("plan-apply"))?;
    browser.wait_gone(&tid("plan-dialog"), WAIT)?;
    let put1 = requests(&stub, "PUT", &format!("/api/v1/machines/{MAC1}/role"));
    let put2 = requests(&stub, "PUT", &format!("/api/v1/machines/{MAC2}/role"));
    assert_eq!(put1.len(), 1, "one role change for machine 1");
    assert_eq!(put2.len(), 1, "one role change for machine 2");
    let body: serde_json::Value = serde_json::from_str(&put1[0].body)?;
    assert_eq!(body, serde_json::json!({"role": "host"}));
    assert_eq!(put1[0].header("x-csrf-token"), Some(CSRF));
    assert_eq!(browser.text(&tid("plan-review"))?, "Review plan (0)");

    // Multi-select: tick two cards, drag one, both move; then discard the plan.
    browser.click(&tid(&format!("select-{MAC1}")))?;
    browser.click(&tid(&format!("select-{MAC2}")))?;
    browser.wait_for(
        &format!("{}[data-selected='true']", tid(&format!("card-{MAC2}"))),
        WAIT,
    )?;
    browser.drag(&tid(&format!("card-{MAC2}")), &tid("column-storage"))?;
    for mac in [MAC1, MAC2] {
        browser.wait_for(
            &format!("{} {}", tid("column-storage"), tid(&format!("card-{mac}"))),
            WAIT,
        )?;
    }
    assert_eq!(browser.text(&tid("plan-review"))?, "Review plan (2)");
    browser.click(&tid("plan-discard"))?;
    browser.wait_for(&format!("{} {card1}", tid("column-host")), WAIT)?;
    assert_eq!(browser.text(&tid("plan-review"))?, "Review plan (0)");

    // Deploy: machine 3's progress bar, its steps and its failed step with the log tail.
    browser.click(&tid("nav-deploy"))?;
    let bar = tid(&format!("progress-{MAC3}"));
    browser.wait_for(&bar, WAIT)?;
    assert_eq!(browser.attr(&bar, "role")?.as_deref(), Some("progressbar"));
    assert_eq!(browser.attr(&bar, "aria-valuenow")?.as_deref(), Some("57"));
    let failed_step = tid(&format!("step-{MAC3}-2"));
    assert_eq!(
        browser.attr(&failed_step, "data-state")?.as_deref(),
        Some("failed")
    );
    let tail = browser.text(&tid(&format!("logtail-{MAC3}")))?;
    assert!(tail.contains("disk sda not found"), "log tail: {tail}");
    browser.screenshot(&artifacts().join("console-deploy.png"))?;

    // The session expires: the next API call answers 401 and the console says so.
    stub.lock().expect("stub lock").logged_in = false;
    browser.click(&tid("nav-tokens"))?;
    browser.wait_for_text(&tid("login-expired"), "ession expired, log in again", WAIT)?;
    assert!(browser.current_url()?.ends_with("#/login"));
    browser.screenshot(&artifacts().join("console-expired.png"))?;
    Ok(())
}

#[test]
fn console_setup_wizard_refuses_a_pool_outside_the_subnet() -> anyhow::Result<()> {
    let (stub, base) = start_stub(false);
    let browser = Browser::start()?;
    log_in(&browser, &base)?;

    // Not set up yet: the wizard, step 1. Picking the interface fills the addresses.
    browser.wait_for("[data-testid='wizard-step'][data-step='network']", WAIT)?;
    browser.select_option(&tid("field-network.interface"), "eth0")?;
    browser.wait_for("[data-testid='field-network.appliance_ip']", WAIT)?;
    assert_eq!(
        browser.value(&tid("field-network.appliance_ip"))?,
        "192.0.2.1"
    );
    browser.type_text(&tid("field-network.pool_start"), "10.0.0.5")?;
    browser.type_text(&tid("field-network.pool_end"), "192.0.2.200")?;
    browser.click(&tid("wizard-next"))?;
    let summary = browser.wait_for_text(&tid("wizard-error"), "outside the subnet", WAIT)?;
    assert!(summary.contains("network.pool_start"), "summary: {summary}");
    let next_to_field = browser.text(&tid("error-network.pool_start"))?;
    assert!(
        next_to_field.contains("pool start 10.0.0.5 is outside the subnet"),
        "{next_to_field}"
    );
    let described = browser
        .attr(&tid("field-network.pool_start"), "aria-describedby")?
        .unwrap_or_default();
    assert!(
        described.contains("err-network-pool_start"),
        "aria-describedby: {described}"
    );
    browser.screenshot(&artifacts().join("console-wizard-refused.png"))?;

    browser.type_text(&tid("field-network.pool_start"), "192.0.2.100")?;
    browser.click(&tid("wizard-next"))?;
    browser.wait_for("[data-testid='wizard-step'][data-step='os']", WAIT)?;
    browser.type_text(
        &tid("field-os.mirror_url"),
        "http://mirror.example/rocky/9/",
    )?;
    browser.click(&tid("wizard-next"))?;
    browser.wait_for("[data-testid='wizard-step'][data-step='roles']", WAIT)?;
    browser.type_text(&tid("field-roles.host.min_cpus"), "4")?;
    browser.click(&tid("wizard-next"))?;
    browser.wait_for("[data-testid='wizard-step'][data-step='admin']", WAIT)?;
    browser.type_text(&tid("field-admin.password"), "a long admin password")?;
    browser.type_text(
        &tid("field-admin.password_confirm"),
        "a long admin password",
    )?;
    let review = browser.text(&tid("wizard-review"))?;
    assert!(
        review.contains("network.pool_start") && review.contains("192.0.2.100"),
        "review: {review}"
    );
    browser.screenshot(&artifacts().join("console-wizard-review.png"))?;
    browser.click(&tid("wizard-apply"))?;
    browser.wait_for(&tid("wizard-done"), WAIT)?;

    let put = requests(&stub, "PUT", "/api/v1/settings");
    assert_eq!(put.len(), 1);
    assert_eq!(put[0].header("x-csrf-token"), Some(CSRF));
    let saved: serde_json::Value = serde_json::from_str(&put[0].body)?;
    assert_eq!(saved["network"]["pool_start"], "192.0.2.100");
    assert_eq!(saved["network"]["appliance_ip"], "192.0.2.1");
    assert_eq!(saved["network"]["subnet"], "192.0.2.0/24");
    assert_eq!(saved["roles"]["host"]["min_cpus"], 4);
    let pw = requests(&stub, "PUT", "/api/v1/admin/password");
    assert_eq!(pw.len(), 1);
    assert_eq!(pw[0].header("x-csrf-token"), Some(CSRF));
    Ok(())
}
