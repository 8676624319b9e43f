//! The web console's API: logins and cookie sessions (HttpOnly, Secure, SameSite), CSRF,
//! session expiry, the admin password, the site settings (validation, where each effective
//! value comes from, in force without a restart) and the live rack stream.

use crate::common::TestApp;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

const DHCP: &str = r#"[dhcp]
server_id = "192.0.2.1"
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.150"]
routers = ["192.0.2.1"]
"#;

/// A browser: keeps the session cookie, sends the CSRF token only when told to.
struct Browser<'a> {
    app: &'a TestApp,
    cookie: String,
    csrf: String,
}

async fn request(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let (s, h, bytes) = app.raw(req).await;
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (s, h, v)
}

async fn login(app: &TestApp, body: Value) -> Result<Browser<'_>, (StatusCode, Value)> {
    let (s, h, v) = request(app, "POST", "/api/v1/login", &[], Some(body)).await;
    if s != StatusCode::OK {
        return Err((s, v));
    }
    let set = h
        .get(header::SET_COOKIE)
        .expect("a login sets the session cookie")
        .to_str()
        .unwrap()
        .to_string();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "cookie without {attr}: {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(
        cookie.starts_with("cosm_session=") && cookie.len() > 40,
        "{set}"
    );
    let csrf = v["csrf"].as_str().unwrap().to_string();
    assert!(csrf.len() >= 32, "{v}");
    Ok(Browser { app, cookie, csrf })
}

impl Browser<'_> {
    async fn call(
        &self,
        method: &str,
        path: &str,
        with_csrf: bool,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut h = vec![("cookie", self.cookie.as_str())];
        if with_csrf {
            h.push(("x-csrf-token", self.csrf.as_str()));
        }
        let (s, _, v) = request(self.app, method, path, &h, body).await;
        (s, v)
    }
}

fn os(timezone: &str) -> Value {
    json!({
        "release": "rocky-9",
        "mirror_url": "http://192.0.2.1:8080/repo/rocky-9/",
        "root_password_hash": "$6$salt$0123456789abcdef",
        "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample ops@site"],
        "timezone": timezone
    })
}

#[tokio::test]
async fn a_token_login_opens_a_cookie_session_whose_changes_need_the_csrf_token() {
    let app = TestApp::with_sections(64 * 1024, "", DHCP).await;
    let b = login(&app, json!({"token": app.admin})).await.unwrap();
    let (s, v) = b.call("GET", "/api/v1/session", false, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["scope"], "admin");
    assert_eq!(v["setup_complete"], false);
    assert_eq!(v["password_set"], false);
    // Reads need no CSRF token.
    let (s, _) = b.call("GET", "/api/v1/machines", false, None).await;
    assert_eq!(s, StatusCode::OK);
    // A change with the cookie alone (what a forged cross-site request carries) is refused.
    let body = json!({"mac": "52:54:00:00:15:01"});
    let (s, v) = b
        .call("POST", "/api/v1/machines", false, Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "csrf");
    let (s, _, v) = request(
        &app,
        "POST",
        "/api/v1/machines",
        &[("cookie", &b.cookie), ("x-csrf-token", "0000")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf"))
    );
    let (s, v) = app
        .call("GET", "/api/v1/machines/52:54:00:00:15:01", None)
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "the refused request wrote nothing: {v}"
    );
    let (s, v) = b.call("POST", "/api/v1/machines", true, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Logging out ends the session.
    let (s, _) = b.call("DELETE", "/api/v1/session", true, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = b.call("GET", "/api/v1/session", false, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("log in again"),
        "{v}"
    );
}

#[tokio::test]
async fn a_read_token_session_reads_but_cannot_change_and_ends_when_the_token_is_revoked() {
    let app = TestApp::new().await;
    let token = app.read_token().await;
    let b = login(&app, json!({"token": token})).await.unwrap();
    let (s, _) = b.call("GET", "/api/v1/machines", false, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = b
        .call(
            "POST",
            "/api/v1/machines",
            true,
            Some(json!({"mac": "52:54:00:00:15:02"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = b.call("GET", "/api/v1/settings", false, None).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "settings carry the root hash: {v}"
    );
    let (_, tokens) = app.call("GET", "/api/v1/tokens", None).await;
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "viewer")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/tokens/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = b.call("GET", "/api/v1/machines", false, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Enrol tokens (on every ramdisk's kernel line) open no console session.
    let enroll = app.enroll_token().await;
    let (s, v) = login(&app, json!({"token": enroll})).await.err().unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test]
async fn the_admin_password_is_set_checked_and_guessing_is_slowed() {
    let app = TestApp::new().await;
    let (s, v) = login(&app, json!({"password": "whatever-password"}))
        .await
        .err()
        .unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no admin password is set yet"),
        "{v}"
    );
    let (s, v) = app
        .call(
            "PUT",
            "/api/v1/admin/password",
            Some(json!({"password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "password");
    let good = "correct horse battery staple";
    let (s, v) = app
        .call(
            "PUT",
            "/api/v1/admin/password",
            Some(json!({"password": good})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let b = login(&app, json!({"password": good})).await.unwrap();
    let (_, v) = b.call("GET", "/api/v1/session", false, None).await;
    assert_eq!(
        (v["user"].as_str(), v["password_set"].as_bool()),
        (Some("admin"), Some(true))
    );
    // The login before the password was set counts: nine more failures make ten.
    for _ in 0..9 {
        let (s, _) = login(&app, json!({"password": "wrong password!"}))
            .await
            .err()
            .unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, v) = login(&app, json!({"password": good})).await.err().unwrap();
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "after 10 failures even the right one waits: {v}"
    );
}

#[tokio::test]
async fn an_idle_session_expires() {
    let app = TestApp::with_sections(64 * 1024, "", "[console]\nsession_idle_secs = 1\n").await;
    let b = login(&app, json!({"token": app.admin})).await.unwrap();
    let (s, _) = b.call("GET", "/api/v1/session", false, None).await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (s, v) = b.call("GET", "/api/v1/session", false, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["message"].as_str().unwrap().contains("expired"), "{v}");
}

#[tokio::test]
async fn settings_are_validated_stored_shown_with_their_source_and_in_force_at_once() {
    let app = TestApp::with_sections(64 * 1024, "", DHCP).await;
    let (s, v) = app.call("GET", "/api/v1/settings", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["setup_complete"], false);
    assert_eq!(v["settings"]["network"]["pool_start"], "192.0.2.100");
    let source = |v: &Value, key: &str| {
        v["effective"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {v}"))
            .clone()
    };
    assert_eq!(source(&v, "network.pool_start")["source"], "file");
    assert_eq!(source(&v, "os.mirror_url")["source"], "file");
    assert_eq!(source(&v, "roles.host.min_cpus")["source"], "default");

    // A pool outside the subnet is refused with its field and message.
    let mut settings = v["settings"].clone();
    settings["network"]["pool_start"] = json!("10.0.0.5");
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/settings/validate",
            Some(json!({"step": "network", "settings": settings})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let pool = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == "network.pool_start")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        pool["message"]
            .as_str()
            .unwrap()
            .contains("pool start 10.0.0.5 is outside the subnet 192.0.2.0/24"),
        "{v}"
    );
    let (s, v) = app.call("PUT", "/api/v1/settings", Some(settings)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "PUT checks too: {v}");
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/settings/validate",
            Some(json!({"step": "os", "settings": {"network": null, "os": os("../etc"), "roles": {}}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["field"], "os.timezone");

    // The OS step applied: the next kickstart has it, without a restart.
    let mac = "52:54:00:00:15:03";
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let ks = |app: &TestApp| {
        let req = Request::builder()
            .uri(format!("/api/v1/machines/{mac}/kickstart"))
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
            .body(Body::empty())
            .unwrap();
        let r = app.router.clone().oneshot(req);
        async move {
            let r = r.await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }
    };
    assert!(!ks(&app).await.contains("Europe/Berlin"));
    let new = json!({
        "network": null,
        "os": os("Europe/Berlin"),
        "roles": {"host": {"min_cpus": 4, "min_memory_mib": 4096, "min_disks": 1, "min_disk_gib": 20}}
    });
    let (s, v) = app.call("PUT", "/api/v1/settings", Some(new)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["setup_complete"], true);
    assert_eq!(source(&v, "os.timezone")["source"], "store");
    assert_eq!(source(&v, "os.timezone")["value"], "Europe/Berlin");
    assert_eq!(
        source(&v, "os.root_password_hash")["value"],
        "(set)",
        "secrets are not echoed"
    );
    let text = ks(&app).await;
    assert!(text.contains("Europe/Berlin"), "{text}");
    assert!(text.contains("ops@site"), "{text}");
}

#[tokio::test]
async fn the_rack_stream_sends_the_rack_and_then_every_change() {
    let app = TestApp::new().await;
    let req = Request::builder()
        .uri("/api/v1/rack/stream")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/event-stream",
        "{:?}",
        resp.headers()
    );
    let mut body = resp.into_body();
    let mut next_rack = async || -> Value {
        let mut text = String::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("an event within 10 s")
                .expect("the stream stays open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
            // Complete events end with a blank line; keep-alives are `:` comments.
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim_start().to_string())
                };
                if field("event:").as_deref() == Some("rack") {
                    return serde_json::from_str(&field("data:").unwrap()).unwrap();
                }
            }
        }
    };
    let first = next_rack().await;
    assert_eq!(first["machines"], json!([]));
    assert!(
        first["roles"].as_array().unwrap().contains(&json!("host")),
        "{first}"
    );
    let mac = "52:54:00:00:15:04";
    let (s, _) = app
        .call("POST", "/api/v1/machines", Some(json!({"mac": mac})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let second = next_rack().await;
    let card = &second["machines"][0];
    assert_eq!(card["mac"], mac, "{second}");
    assert_eq!(card["state"], "discovered");
    assert_eq!(card["validations"]["host"]["ok"], false);
    assert!(
        card["validations"]["host"]["failures"][0]
            .as_str()
            .unwrap()
            .contains("no inventory"),
        "{card}"
    );
}
