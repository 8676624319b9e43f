//! The REST API driven through the router (`tower::ServiceExt::oneshot`), with a real store
//! in a temporary directory: every endpoint, authentication, and every error path.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use cosm_appliance::api::{router, AppState};
use cosm_appliance::metrics::Metrics;
use cosm_appliance::store::{Store, StoreOptions};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    admin: String,
    _dir: tempfile::TempDir,
}

impl TestApp {
    async fn new() -> TestApp {
        Self::with_limit(64 * 1024).await
    }

    async fn with_limit(max_body_bytes: usize) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cosm.redb"), StoreOptions::default()).unwrap();
        let (token, _) = cosm_appliance::auth::bootstrap_admin(&store, dir.path())
            .await
            .unwrap()
            .unwrap();
        let metrics = Metrics::new(store.clone(), None, None);
        let liveness = std::sync::Arc::new(cosm_appliance::liveness::Liveness::new(
            std::time::Duration::from_secs(5),
            3,
        ));
        // A boot directory staged from small stand-ins for iPXE and the ramdisk.
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        for f in [
            "undionly.kpxe",
            "ipxe.efi",
            "snponly.efi",
            "initramfs.img",
            "cosm-agent",
            "cosm-agent.service",
        ] {
            std::fs::write(src.join(f), format!("contents of {f}")).unwrap();
        }
        std::fs::write(src.join("vmlinuz"), (0..=255u8).collect::<Vec<u8>>()).unwrap();
        let settings = cosm_appliance::config::BootSettings {
            dir: dir.path().join("boot"),
            ipxe_dir: src.clone(),
            ramdisk_dir: src.clone(),
            agent_dir: src.clone(),
            kernel_args: "console=ttyS0".into(),
            retries: 3,
            appliance_url: "http://192.0.2.1:8080".into(),
        };
        let timeline = std::sync::Arc::new(cosm_appliance::timeline::Timeline::new(store.clone()));
        let config = cosm_appliance::config::Config::parse(
            &dir.path().join("appliance.toml"),
            "data_dir = \".\"\n[kickstart]\nrepo_url = \"http://192.0.2.1:8080/repo/rocky-9/\"\n",
        )
        .unwrap();
        let boot = cosm_appliance::boot::BootContext::prepare(
            settings,
            config.kickstart.clone(),
            dir.path(),
            Vec::new(),
            store.clone(),
            timeline,
        )
        .await
        .unwrap();
        let images =
            cosm_appliance::images::ImageDir::open(dir.path().join("images"), 64 << 20).unwrap();
        let router = router(AppState {
            store,
            metrics,
            max_body_bytes,
            liveness,
            boot: Some(std::sync::Arc::new(boot)),
            images: Some(images),
        });
        TestApp {
            router,
            admin: token,
            _dir: dir,
        }
    }

    async fn raw(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
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

    async fn call_as(
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

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let admin = self.admin.clone();
        self.call_as(Some(&admin), method, path, body).await
    }

    async fn read_token(&self) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/api/v1/tokens",
                Some(json!({"name": "viewer", "scope": "read"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: Option<&str>) {
    assert_eq!(status, want, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    assert!(body["code"].as_str().is_some(), "no code: {body}");
    assert_eq!(body["field"].as_str(), field, "{body}");
}

#[tokio::test]
async fn machine_endpoints_round_trip() {
    let app = TestApp::new().await;
    let (s, m) = app
        .call("POST", "/api/v1/machines", Some(json!({"mac": "52:54:00:AA:BB:01", "role": "host", "hostname": "hv1", "reserved_ip": "192.0.2.11"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    assert_eq!(
        (m["mac"].as_str(), m["state"].as_str(), m["role"].as_str()),
        (Some("52:54:00:aa:bb:01"), Some("ready"), Some("host"))
    );
    app.call(
        "POST",
        "/api/v1/machines",
        Some(json!({"mac": "52:54:00:aa:bb:02"})),
    )
    .await;

    let (s, list) = app.call("GET", "/api/v1/machines", None).await;
    assert_eq!((s, list.as_array().unwrap().len()), (StatusCode::OK, 2));
    let (_, list) = app.call("GET", "/api/v1/machines?role=host", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = app
        .call("GET", "/api/v1/machines?state=discovered", None)
        .await;
    assert_eq!(list[0]["mac"], "52:54:00:aa:bb:02");

    let (s, m) = app
        .call("GET", "/api/v1/machines/52-54-00-aa-bb-01", None)
        .await;
    assert_eq!((s, m["hostname"].as_str()), (StatusCode::OK, Some("hv1")));

    let (s, m) = app
        .call(
            "PATCH",
            "/api/v1/machines/52:54:00:aa:bb:01",
            Some(json!({"hostname": "hv-01", "reserved_ip": null})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (m["hostname"].as_str(), &m["reserved_ip"]),
        (Some("hv-01"), &Value::Null)
    );

    let (s, m) = app
        .call(
            "PUT",
            "/api/v1/machines/52:54:00:aa:bb:02/role",
            Some(json!({"role": "storage"})),
        )
        .await;
    assert_eq!((s, m["state"].as_str()), (StatusCode::OK, Some("ready")));
    let (s, m) = app
        .call(
            "PUT",
            "/api/v1/machines/52:54:00:aa:bb:02/role",
            Some(json!({"role": null})),
        )
        .await;
    assert_eq!(
        (s, m["state"].as_str(), &m["role"]),
        (StatusCode::OK, Some("discovered"), &Value::Null)
    );

    let (s, m) = app
        .call(
            "POST",
            "/api/v1/machines/52:54:00:aa:bb:01/state",
            Some(json!({"state": "deploying", "reason": "test"})),
        )
        .await;
    assert_eq!(
        (s, m["state"].as_str()),
        (StatusCode::OK, Some("deploying"))
    );

    let (s, evs) = app
        .call("GET", "/api/v1/machines/52:54:00:aa:bb:01/events", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "role_changed",
            "state_changed",
            "updated",
            "state_changed"
        ]
    );
    assert!(
        evs[4]["message"].as_str().unwrap().contains("test"),
        "{}",
        evs[4]
    );
    let (_, evs) = app
        .call(
            "GET",
            "/api/v1/machines/52:54:00:aa:bb:01/events?limit=2",
            None,
        )
        .await;
    assert_eq!(evs.as_array().unwrap().len(), 2);
    assert_eq!(evs[1]["to_state"], "deploying");

    // Installed (or installing) machines must be retired before deletion.
    let (s, e) = app
        .call("DELETE", "/api/v1/machines/52:54:00:aa:bb:01", None)
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    let (s, _) = app
        .call("DELETE", "/api/v1/machines/52:54:00:aa:bb:02", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, e) = app
        .call("GET", "/api/v1/machines/52:54:00:aa:bb:02", None)
        .await;
    assert_error(s, &e, StatusCode::NOT_FOUND, None);
}

#[tokio::test]
async fn roles_rules_and_tokens_endpoints() {
    let app = TestApp::new().await;
    let (s, roles) = app.call("GET", "/api/v1/roles", None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["center", "host", "storage", "web"]);

    let (s, r) = app
        .call(
            "POST",
            "/api/v1/roles",
            Some(json!({"name": "gpu", "description": "GPU hypervisor"})),
        )
        .await;
    assert_eq!(
        (s, r["builtin"].as_bool()),
        (StatusCode::CREATED, Some(false))
    );
    let (s, _) = app.call("GET", "/api/v1/roles/gpu", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = app
        .call("POST", "/api/v1/roles", Some(json!({"name": "gpu"})))
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    let (s, e) = app.call("DELETE", "/api/v1/roles/host", None).await;
    assert_error(s, &e, StatusCode::CONFLICT, None);

    let (s, rule) = app
        .call("POST", "/api/v1/rules", Some(json!({"role": "gpu", "priority": 5, "match": {"mac_prefix": "52:54:00", "min_cpus": 2}})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rule}");
    let id = rule["id"].as_u64().unwrap();
    let (s, rules) = app.call("GET", "/api/v1/rules", None).await;
    assert_eq!((s, rules.as_array().unwrap().len()), (StatusCode::OK, 1));
    let (s, _) = app.call("GET", &format!("/api/v1/rules/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);

    // The rule applies at discovery: inventory with 4 CPUs matches, 1 CPU does not.
    let inv = |cpus: u32| json!({"cpu": {"threads": cpus}, "memory_bytes": 1u64 << 30});
    let (_, m) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:00:01", "inventory": inv(4)})),
        )
        .await;
    assert_eq!(
        (m["role"].as_str(), m["state"].as_str()),
        (Some("gpu"), Some("ready"))
    );
    let (_, m) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:00:02", "inventory": inv(1)})),
        )
        .await;
    assert_eq!(
        (&m["role"], m["state"].as_str()),
        (&Value::Null, Some("discovered"))
    );

    // A role in use cannot go; neither can one a rule names.
    let (s, e) = app.call("DELETE", "/api/v1/roles/gpu", None).await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/rules/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, e) = app
        .call("DELETE", &format!("/api/v1/rules/{id}"), None)
        .await;
    assert_error(s, &e, StatusCode::NOT_FOUND, None);
    app.call("DELETE", "/api/v1/machines/52:54:00:00:00:01", None)
        .await;
    let (s, _) = app.call("DELETE", "/api/v1/roles/gpu", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let (s, created) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "ci", "scope": "admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let tid = created["info"]["id"].as_u64().unwrap();
    let (s, toks) = app.call("GET", "/api/v1/tokens", None).await;
    // bootstrap-admin, pxe-boot-enroll (made by the boot context) and ci.
    assert_eq!((s, toks.as_array().unwrap().len()), (StatusCode::OK, 3));
    assert!(
        !toks
            .to_string()
            .contains(created["token"].as_str().unwrap()),
        "a listing must never show a secret"
    );
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/tokens/{tid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, e) = app
        .call_as(created["token"].as_str(), "GET", "/api/v1/machines", None)
        .await;
    assert_error(s, &e, StatusCode::UNAUTHORIZED, None);
}

#[tokio::test]
async fn authentication_and_scopes() {
    let app = TestApp::new().await;
    let (s, e) = app.call_as(None, "GET", "/api/v1/machines", None).await;
    assert_error(s, &e, StatusCode::UNAUTHORIZED, None);
    let (s, e) = app
        .call_as(
            Some("cosm_not-a-real-token"),
            "GET",
            "/api/v1/machines",
            None,
        )
        .await;
    assert_error(s, &e, StatusCode::UNAUTHORIZED, None);
    let (s, e) = app
        .call_as(
            None,
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:00:01"})),
        )
        .await;
    assert_error(s, &e, StatusCode::UNAUTHORIZED, None);

    let (status, headers, _) = app
        .raw(Request::get("/api/v1/roles").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");

    let read = app.read_token().await;
    let (s, _) = app
        .call_as(Some(&read), "GET", "/api/v1/machines", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, e) = app
        .call_as(
            Some(&read),
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:00:01"})),
        )
        .await;
    assert_error(s, &e, StatusCode::FORBIDDEN, None);
    let (s, e) = app
        .call_as(Some(&read), "GET", "/api/v1/tokens", None)
        .await;
    assert_error(s, &e, StatusCode::FORBIDDEN, None);
    // Nothing was written by the refused call.
    let (_, list) = app.call("GET", "/api/v1/machines", None).await;
    assert_eq!(list, json!([]));

    // Open endpoints need no token.
    for path in ["/healthz", "/metrics", "/api/v1/openapi.json"] {
        let (s, _, _) = app
            .raw(Request::get(path).body(Body::empty()).unwrap())
            .await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_field() {
    let app = TestApp::with_limit(4096).await;
    let post = |body: Value| app.call("POST", "/api/v1/machines", Some(body));

    let (s, e) = post(json!({"mac": "52:54:00:zz:00:01"})).await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("mac"));
    let (s, e) = post(json!({"mac": "52:54:00:00:00:01", "role": "nosuch"})).await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("role"));
    let (s, e) = post(json!({"mac": "52:54:00:00:00:01", "role": "Bad Role"})).await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("role"));
    let (s, e) = post(json!({"role": "host"})).await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("mac"));
    let (s, e) = post(json!({"mac": "52:54:00:00:00:01", "colour": "red"})).await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("colour"));
    let (s, e) = post(json!({"mac": "52:54:00:00:00:01", "reserved_ip": "192.0.2.300"})).await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("reserved_ip"));
    let (s, e) = post(json!({"mac": "52:54:00:00:00:01", "hostname": "bad_name!"})).await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("hostname"));
    let (s, e) =
        post(json!({"mac": "52:54:00:00:00:01", "inventory": {"disks": [{"size_bytes": -1}]}}))
            .await;
    assert_error(
        s,
        &e,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("inventory.disks[0].size_bytes"),
    );
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/rules",
            Some(json!({"role": "host", "match": {}})),
        )
        .await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("match"));
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/rules",
            Some(json!({"role": "host", "match": {"min_cpus": 8, "max_cpus": 4}})),
        )
        .await;
    assert_error(
        s,
        &e,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("match.min_cpus"),
    );
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/machines/52:54:00:00:00:01/state",
            Some(json!({"state": "flying"})),
        )
        .await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("state"));

    // Malformed MACs and ids in the path, unknown query parameters and bad filters: 400.
    let (s, e) = app.call("GET", "/api/v1/machines/not-a-mac", None).await;
    assert_error(s, &e, StatusCode::BAD_REQUEST, Some("mac"));
    let (s, e) = app.call("GET", "/api/v1/rules/abc", None).await;
    assert_error(s, &e, StatusCode::BAD_REQUEST, Some("id"));
    let (s, e) = app.call("GET", "/api/v1/machines?sate=ready", None).await;
    assert_error(s, &e, StatusCode::BAD_REQUEST, Some("sate"));
    let (s, e) = app
        .call("GET", "/api/v1/machines?state=sleeping", None)
        .await;
    assert_error(s, &e, StatusCode::BAD_REQUEST, Some("state"));
    let (s, e) = app
        .call(
            "GET",
            "/api/v1/machines/52:54:00:00:00:01/events?limit=0",
            None,
        )
        .await;
    assert_error(s, &e, StatusCode::BAD_REQUEST, Some("limit"));

    // Syntax errors, trailing garbage, wrong content type, oversize bodies.
    let raw = |body: &'static str, ctype: &'static str| {
        Request::post("/api/v1/machines")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
            .header(header::CONTENT_TYPE, ctype)
            .body(Body::from(body))
            .unwrap()
    };
    for (body, ctype, want) in [
        ("{\"mac\": ", "application/json", StatusCode::BAD_REQUEST),
        (
            "{\"mac\": \"52:54:00:00:00:01\"} xx",
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "not json at all",
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            "{\"mac\": \"52:54:00:00:00:01\"}",
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let (s, _, b) = app.raw(raw(body, ctype)).await;
        let e: Value = serde_json::from_slice(&b).unwrap();
        assert_error(s, &e, want, None);
    }
    let big = json!({"mac": "52:54:00:00:00:01", "hostname": "a".repeat(10_000)}).to_string();
    let req = Request::post("/api/v1/machines")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .unwrap();
    let (s, _, b) = app.raw(req).await;
    let e: Value = serde_json::from_slice(&b).unwrap();
    assert_error(s, &e, StatusCode::PAYLOAD_TOO_LARGE, None);

    // Unknown routes and methods answer JSON too.
    let (s, e) = app.call("GET", "/api/v1/nothing-here", None).await;
    assert_error(s, &e, StatusCode::NOT_FOUND, None);
    let (s, e) = app.call("PUT", "/api/v1/machines", None).await;
    assert_error(s, &e, StatusCode::METHOD_NOT_ALLOWED, None);

    // None of the refused calls wrote anything.
    let (_, list) = app.call("GET", "/api/v1/machines", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn conflicts_name_the_states() {
    let app = TestApp::new().await;
    app.call(
        "POST",
        "/api/v1/machines",
        Some(json!({"mac": "52:54:00:00:00:01", "hostname": "a", "reserved_ip": "192.0.2.5"})),
    )
    .await;
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:00:01"})),
        )
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:00:02", "hostname": "A"})),
        )
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": "52:54:00:00:00:02", "reserved_ip": "192.0.2.5"})),
        )
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);

    let (s, e) = app
        .call(
            "POST",
            "/api/v1/machines/52:54:00:00:00:01/state",
            Some(json!({"state": "active"})),
        )
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    assert_eq!(e["code"], "illegal_transition");
    assert_eq!(
        e["message"],
        "machine 52:54:00:00:00:01: cannot move from discovered to active; from discovered the allowed states are: ready, failed, lost, retired"
    );
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/machines/52:54:00:00:00:01/state",
            Some(json!({"state": "ready"})),
        )
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    assert!(e["message"].as_str().unwrap().contains("no role"), "{e}");
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = TestApp::new().await;
    let (s, doc) = app.call_as(None, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/machines",
        "/api/v1/machines/{mac}",
        "/api/v1/machines/{mac}/role",
        "/api/v1/machines/{mac}/state",
        "/api/v1/machines/{mac}/events",
        "/api/v1/roles",
        "/api/v1/roles/{name}",
        "/api/v1/rules",
        "/api/v1/rules/{id}",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn metrics_count_requests_and_machines() {
    let app = TestApp::new().await;
    app.call(
        "POST",
        "/api/v1/machines",
        Some(json!({"mac": "52:54:00:00:00:01", "role": "web"})),
    )
    .await;
    app.call("GET", "/api/v1/machines/52:54:00:00:00:99", None)
        .await;
    let (_, _, body) = app
        .raw(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("cosm_machines{state=\"ready\"} 1"), "{text}");
    assert!(
        text.contains(
            "cosm_http_requests_total{method=\"POST\",route=\"/api/v1/machines\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("route=\"/api/v1/machines/{mac}\",status=\"404\"} 1"),
        "{text}"
    );
}

// --- The lifecycle, as a property: no sequence of API calls reaches a forbidden state. ---

/// The lifecycle of DESIGN.md, written out independently of the implementation.
fn spec_allows(from: &str, to: &str) -> bool {
    let allowed: &[&str] = match from {
        "discovered" => &["ready", "failed", "lost", "retired"],
        "ready" => &["discovered", "deploying", "lost", "retired"],
        "deploying" => &["deployed", "failed", "ready"],
        "deployed" => &["active", "failed", "lost", "ready", "retired"],
        "active" => &["lost", "failed", "ready", "retired"],
        "failed" => &["discovered", "ready", "retired"],
        "lost" => &[
            "discovered",
            "ready",
            "active",
            "deployed",
            "fenced",
            "retired",
        ],
        "fenced" => &["ready", "retired"],
        "retired" => &["discovered"],
        _ => &[],
    };
    allowed.contains(&to)
}

const STATES: [&str; 9] = [
    "discovered",
    "ready",
    "deploying",
    "deployed",
    "active",
    "failed",
    "lost",
    "fenced",
    "retired",
];
const ROLES: [Option<&str>; 3] = [Some("host"), Some("storage"), None];

#[derive(Debug, Clone)]
enum Op {
    Create {
        m: usize,
        role: Option<&'static str>,
    },
    SetState {
        m: usize,
        to: &'static str,
    },
    SetRole {
        m: usize,
        role: Option<&'static str>,
    },
    PatchRole {
        m: usize,
        role: Option<&'static str>,
    },
    Delete {
        m: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0usize..3;
    prop_oneof![
        (m.clone(), prop::sample::select(ROLES.to_vec()))
            .prop_map(|(m, role)| Op::Create { m, role }),
        (m.clone(), prop::sample::select(STATES.to_vec()))
            .prop_map(|(m, to)| Op::SetState { m, to }),
        (m.clone(), prop::sample::select(STATES.to_vec()))
            .prop_map(|(m, to)| Op::SetState { m, to }),
        (m.clone(), prop::sample::select(ROLES.to_vec()))
            .prop_map(|(m, role)| Op::SetRole { m, role }),
        (m.clone(), prop::sample::select(ROLES.to_vec()))
            .prop_map(|(m, role)| Op::PatchRole { m, role }),
        m.prop_map(|m| Op::Delete { m }),
    ]
}

async fn snapshot(app: &TestApp, mac: &str) -> Option<Value> {
    let (s, v) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    (s == StatusCode::OK).then_some(v)
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let app = TestApp::new().await;
    let macs = [
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
        "52:54:00:00:00:03",
    ];
    for op in ops {
        let mac = match &op {
            Op::Create { m, .. }
            | Op::SetState { m, .. }
            | Op::SetRole { m, .. }
            | Op::PatchRole { m, .. }
            | Op::Delete { m } => macs[*m],
        };
        let before = snapshot(&app, mac).await;
        let (status, body) = match &op {
            Op::Create { role, .. } => {
                app.call(
                    "POST",
                    "/api/v1/machines",
                    Some(json!({"mac": mac, "role": role})),
                )
                .await
            }
            Op::SetState { to, .. } => {
                app.call(
                    "POST",
                    &format!("/api/v1/machines/{mac}/state"),
                    Some(json!({"state": to})),
                )
                .await
            }
            Op::SetRole { role, .. } => {
                app.call(
                    "PUT",
                    &format!("/api/v1/machines/{mac}/role"),
                    Some(json!({"role": role})),
                )
                .await
            }
            Op::PatchRole { role, .. } => {
                app.call(
                    "PATCH",
                    &format!("/api/v1/machines/{mac}"),
                    Some(json!({"role": role})),
                )
                .await
            }
            Op::Delete { .. } => {
                app.call("DELETE", &format!("/api/v1/machines/{mac}"), None)
                    .await
            }
        };
        prop_assert!(status.as_u16() < 500, "{op:?} answered {status}: {body}");
        let after = snapshot(&app, mac).await;
        if !status.is_success() {
            prop_assert_eq!(
                &before,
                &after,
                "refused {:?} ({}) changed the machine",
                op,
                status
            );
            continue;
        }
        if let (Some(b), Some(a)) = (&before, &after) {
            let (from, to) = (b["state"].as_str().unwrap(), a["state"].as_str().unwrap());
            if from != to {
                prop_assert!(
                    spec_allows(from, to),
                    "{op:?} moved {mac} from {from} to {to}"
                );
                // Lost remembers where from, and leaves only back there (or fenced/retired).
                if to == "lost" {
                    prop_assert_eq!(a["lost_from"].as_str(), Some(from));
                }
                if from == "lost" && to != "fenced" && to != "retired" {
                    prop_assert_eq!(
                        b["lost_from"].as_str(),
                        Some(to),
                        "left lost for another state"
                    );
                }
            }
        }
        if before.is_none() {
            if let Some(a) = &after {
                let st = a["state"].as_str().unwrap();
                prop_assert!(st == "discovered" || st == "ready", "created in state {st}");
            }
        }
        if let (Some(b), None) = (&before, &after) {
            let st = b["state"].as_str().unwrap();
            prop_assert!(
                ["discovered", "ready", "failed", "retired"].contains(&st),
                "deleted while {st}"
            );
        }
        if let Some(a) = &after {
            let st = a["state"].as_str().unwrap();
            let has_role = !a["role"].is_null();
            if ["ready", "deploying", "deployed", "active"].contains(&st) {
                prop_assert!(has_role, "{mac} is {st} without a role");
            }
            if st == "discovered" {
                prop_assert!(!has_role, "{mac} is discovered but has role {}", a["role"]);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn no_call_sequence_breaks_the_lifecycle(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops))?;
    }
}

#[tokio::test]
async fn agent_enrolment_credentials_and_desired_state() {
    let app = TestApp::new().await;
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "x", "scope": "agent"})),
        )
        .await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("scope"));
    // An enrolment token may only enrol.
    let (_, enroll_tok) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "ramdisk", "scope": "enroll"})),
        )
        .await;
    let enroll_tok = enroll_tok["token"].as_str().unwrap().to_string();
    let inventory = json!({"cpu": {"model": "QEMU", "sockets": 1, "cores": 2, "threads": 2}, "memory_bytes": 1u64 << 30,
        "disks": [{"name": "vda", "size_bytes": 10u64 << 30}], "firmware": "bios", "kernel": "6.1.0"});
    let (s, e) = app
        .call_as(Some(&enroll_tok), "GET", "/api/v1/machines", None)
        .await;
    assert_error(s, &e, StatusCode::FORBIDDEN, None);
    let (s, enrolled) = app
        .call_as(
            Some(&enroll_tok),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": "52:54:00:00:00:42", "inventory": inventory})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{enrolled}");
    assert_eq!(enrolled["machine"]["state"], "discovered");
    assert_eq!(enrolled["machine"]["inventory"]["cpu"]["threads"], 2);
    assert_eq!(enrolled["heartbeat_secs"], 5);
    let cred = enrolled["credential"].as_str().unwrap().to_string();

    // The node credential heartbeats and reads its desired state, and nothing else.
    let (s, hb) = app
        .call_as(
            Some(&cred),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(json!({"cpu_percent": 3.5})),
        )
        .await;
    assert_eq!(
        (s, hb["desired_generation"].as_u64()),
        (StatusCode::OK, Some(0))
    );
    let (s, e) = app
        .call_as(Some(&cred), "GET", "/api/v1/machines", None)
        .await;
    assert_error(s, &e, StatusCode::FORBIDDEN, None);
    let (s, e) = app
        .call_as(
            Some(&cred),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": "52:54:00:00:00:43", "inventory": {}})),
        )
        .await;
    assert_error(s, &e, StatusCode::FORBIDDEN, None);
    // The admin token is not an agent: it cannot heartbeat for a machine.
    let (s, e) = app
        .call("POST", "/api/v1/agent/heartbeat", Some(json!({})))
        .await;
    assert_error(s, &e, StatusCode::FORBIDDEN, None);

    // An action raises the generation; the agent sees it, reports it unsupported, and the
    // report lands on the timeline and empties the queue.
    let (s, m) = app
        .call(
            "POST",
            "/api/v1/machines/52:54:00:00:00:42/actions",
            Some(json!({"kind": "flash-bios"})),
        )
        .await;
    assert_eq!(
        (s, m["desired_generation"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (s, e) = app
        .call(
            "POST",
            "/api/v1/machines/52:54:00:00:00:42/actions",
            Some(json!({"kind": "Rm -rf"})),
        )
        .await;
    assert_error(s, &e, StatusCode::UNPROCESSABLE_ENTITY, Some("kind"));
    let (_, hb) = app
        .call_as(
            Some(&cred),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(json!({})),
        )
        .await;
    assert_eq!(hb["desired_generation"], 1);
    let (s, desired) = app
        .call_as(Some(&cred), "GET", "/api/v1/agent/desired", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(desired["generation"], 1);
    let id = desired["actions"][0]["id"].as_u64().unwrap();
    assert_eq!(desired["actions"][0]["kind"], "flash-bios");
    let (s, _) = app
        .call_as(Some(&cred), "POST", "/api/v1/agent/observed", Some(json!({"generation": 1, "results": [{"id": id, "status": "unsupported", "message": "unknown action"}]})))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, desired) = app
        .call_as(Some(&cred), "GET", "/api/v1/agent/desired", None)
        .await;
    assert_eq!(desired["actions"], json!([]));
    let (_, evs) = app
        .call("GET", "/api/v1/machines/52:54:00:00:00:42/events", None)
        .await;
    let text = evs.to_string();
    assert!(
        text.contains("agent registered: 2 CPUs")
            && text.contains("unsupported by the agent: unknown action"),
        "{text}"
    );

    // Enrolling again replaces the credential: the old one stops working.
    let (_, again) = app
        .call_as(
            Some(&enroll_tok),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": "52:54:00:00:00:42", "inventory": inventory})),
        )
        .await;
    let (s, e) = app
        .call_as(
            Some(&cred),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(json!({})),
        )
        .await;
    assert_error(s, &e, StatusCode::UNAUTHORIZED, None);
    let (s, _) = app
        .call_as(
            again["credential"].as_str(),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

/// Moves a machine through `states`, each move expected to succeed.
async fn walk(app: &TestApp, mac: &str, states: &[&str]) {
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

async fn get_text(
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
async fn boot_events(app: &TestApp, mac: &str, want: usize) -> Vec<String> {
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

#[tokio::test]
async fn ipxe_script_follows_the_machine_state() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:be:01";
    // Unknown: the agent ramdisk, with the enrolment token and the MAC on the kernel line.
    let (s, h, script) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{script}");
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(
        kernel.contains("http://192.0.2.1:8080/boot/vmlinuz?mac=52:54:00:00:be:01&step=kernel"),
        "{kernel}"
    );
    assert!(
        kernel.contains(" cosm.token=cosm_") && kernel.contains(" cosm.mac=52:54:00:00:be:01"),
        "{kernel}"
    );
    assert!(kernel.contains(" console=ttyS0"), "{kernel}");
    assert!(
        !kernel.contains("initrd="),
        "BIOS needs no initrd=: {kernel}"
    );
    // The token in the script is an enrol-only token.
    let token = kernel
        .split(" cosm.token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (st, _) = app
        .call_as(Some(token), "GET", "/api/v1/machines", None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // iPXE sends the MAC URL-encoded.
    let (s, _, uefi) = get_text(
        &app,
        "/boot/ipxe?mac=52%3A54%3A00%3A00%3Abe%3A01&arch=uefi",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        uefi.lines()
            .any(|l| l.starts_with("kernel ") && l.contains(" initrd=initramfs.img ")),
        "{uefi}"
    );

    // Deployed: the local disk, by firmware.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    walk(&app, mac, &["deploying", "deployed"]).await;
    let (_, _, bios) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert!(
        bios.contains("sanboot --no-describe --drive 0x80") && !bios.contains("kernel "),
        "{bios}"
    );
    let (_, _, uefi) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=uefi"), &[]).await;
    assert!(
        uefi.contains("\nexit 0\n") && !uefi.contains("sanboot"),
        "{uefi}"
    );
    // Each script fetch is on the machine's timeline.
    let events = boot_events(&app, mac, 1).await;
    assert!(
        events.iter().any(|m| m.contains("→ local disk")),
        "{events:?}"
    );

    // Fenced: nothing to boot.
    walk(&app, mac, &["lost", "fenced"]).await;
    let (_, _, fenced) = get_text(&app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert!(
        fenced.contains("poweroff") && !fenced.contains("kernel ") && !fenced.contains("sanboot"),
        "{fenced}"
    );

    // Bad input: a clear 400 naming the parameter.
    for (path, field) in [
        ("/boot/ipxe?arch=bios", "mac"),
        ("/boot/ipxe?mac=zz:54:00:00:be:01", "mac"),
        ("/boot/ipxe?mac=52:54:00:00:be:01&arch=sparc", "arch"),
    ] {
        let (s, _, body) = get_text(&app, path, &[]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.contains(field), "{path}: {body}");
    }
}

#[tokio::test]
async fn boot_files_support_range_and_head_and_land_on_the_timeline() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:be:02";
    let (s, v) = app
        .call("POST", "/api/v1/machines", Some(json!({"mac": mac})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Range: bytes 16..=31 of 0..=255.
    let req = Request::builder()
        .uri(format!("/boot/vmlinuz?mac={mac}&step=kernel"))
        .header(header::RANGE, "bytes=16-31")
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = app.raw(req).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, (16..=31u8).collect::<Vec<u8>>());
    assert_eq!(h[header::CONTENT_RANGE], "bytes 16-31/256");
    // HEAD: the length, no body.
    let req = Request::builder()
        .method("HEAD")
        .uri("/boot/vmlinuz")
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = app.raw(req).await;
    assert_eq!((s, body.len()), (StatusCode::OK, 0));
    assert_eq!(h[header::CONTENT_LENGTH], "256");
    // Whole files, staged from the iPXE and ramdisk directories.
    let (s, _, text) = get_text(
        &app,
        &format!("/boot/initramfs.img?mac={mac}&step=initrd"),
        &[],
    )
    .await;
    assert_eq!(
        (s, text.as_str()),
        (StatusCode::OK, "contents of initramfs.img")
    );
    let (s, _, text) = get_text(&app, "/boot/snponly.efi", &[]).await;
    assert_eq!(
        (s, text.as_str()),
        (StatusCode::OK, "contents of snponly.efi")
    );
    // Nothing outside the boot directory.
    for path in [
        "/boot/../cosm.redb",
        "/boot/%2e%2e/admin.token",
        "/boot/missing",
    ] {
        let (s, _, body) = get_text(&app, path, &[]).await;
        assert!(
            s == StatusCode::NOT_FOUND || s == StatusCode::BAD_REQUEST,
            "{path}: {s} {body}"
        );
        assert!(!body.contains("cosm_"), "{path} leaked a token");
    }
    // A script reports the step it gave up at.
    let (s, _, _) = get_text(
        &app,
        &format!("/boot/report?mac={mac}&step=initrd&arch=uefi"),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // The ranged kernel read (a resumed download) is not a boot step of its own.
    let events = boot_events(&app, mac, 2).await;
    assert_eq!(
        events[0], "initrd initramfs.img fetched over HTTP",
        "{events:?}"
    );
    assert!(events[1].contains("the initrd step failed"), "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn image_files(app: &TestApp) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app._dir.path().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn image_repository_checks_checksums_keeps_no_half_files_and_serves_ranges() {
    let app = TestApp::new().await;
    let data: Vec<u8> = (0..32_000_000u32).map(|i| (i % 251) as u8).collect();
    let put = |uri: String, body: Body| {
        Request::builder()
            .method("PUT")
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .unwrap()
    };
    // A wrong checksum: 422, and nothing kept.
    let wrong = sha256_hex(b"something else");
    let (s, _, body) = app
        .raw(put(
            format!("/api/v1/images/big.iso?sha256={wrong}"),
            Body::from(data.clone()),
        ))
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("nothing was stored"));
    assert!(image_files(&app).is_empty(), "{:?}", image_files(&app));
    let (_, v) = app.call("GET", "/api/v1/images", None).await;
    assert_eq!(v, json!([]));
    // No checksum declared: 400 naming it.
    let (s, _, body) = app
        .raw(put(
            "/api/v1/images/big.iso".into(),
            Body::from(data.clone()),
        ))
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("sha256"));
    // An upload interrupted after 1 MiB: an error, and no file (not even a temporary one).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(data[..1 << 20].to_vec()),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let stream = futures_util::stream::iter(chunks);
    let right = sha256_hex(&data);
    let (s, _, body) = app
        .raw(put(
            format!("/api/v1/images/big.iso?sha256={right}"),
            Body::from_stream(stream),
        ))
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("interrupted"));
    assert!(image_files(&app).is_empty(), "{:?}", image_files(&app));
    // The right checksum: stored, listed, downloadable whole and by range.
    let (s, _, body) = app
        .raw(put(
            format!("/api/v1/images/big.iso?sha256={right}"),
            Body::from(data.clone()),
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let (_, v) = app.call("GET", "/api/v1/images/big.iso", None).await;
    assert_eq!(
        (v["size_bytes"].as_u64(), v["sha256"].as_str()),
        (Some(32_000_000), Some(right.as_str()))
    );
    assert_eq!(image_files(&app), vec!["big.iso".to_string()]);
    let get = |uri: &str, range: Option<&str>| {
        let mut r = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin));
        if let Some(range) = range {
            r = r.header(header::RANGE, range);
        }
        r.body(Body::empty()).unwrap()
    };
    let (s, _, body) = app.raw(get("/api/v1/images/big.iso/content", None)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body == data, "the download differs from the upload");
    let (s, h, body) = app
        .raw(get(
            "/api/v1/images/big.iso/content",
            Some("bytes=31999990-"),
        ))
        .await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, data[31_999_990..].to_vec());
    assert_eq!(h[header::CONTENT_RANGE], "bytes 31999990-31999999/32000000");
    // Installers fetch the same file without a token.
    let (s, _, body) = get_text(&app, "/boot/images/big.iso", &[("range", "bytes=0-3")]).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{body}");
    // Bad names are refused; reading needs a token; delete removes record and file.
    let (s, _, _) = app
        .raw(put(
            format!("/api/v1/images/.hidden?sha256={right}"),
            Body::empty(),
        ))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app.call_as(None, "GET", "/api/v1/images", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app.call("DELETE", "/api/v1/images/big.iso", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(image_files(&app).is_empty());
    let (s, _) = app.call("DELETE", "/api/v1/images/big.iso", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn kickstart_and_install_reports_drive_ready_deploying_deployed() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:be:05";
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "storage", "hostname": "st1"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // What cosmctl kickstart render shows.
    let (s, _, ks) = get_text(
        &app,
        &format!("/api/v1/machines/{mac}/kickstart"),
        &[("authorization", &format!("Bearer {}", app.admin))],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{ks}");
    assert!(
        ks.contains("\nnfs-utils\n")
            && ks.contains("--hostname=st1")
            && ks.contains("url --url=http://192.0.2.1:8080/repo/rocky-9/"),
        "{ks}"
    );
    // The installer's fetch moves it to deploying.
    let (s, _, served) = get_text(&app, &format!("/boot/ks/{mac}"), &[]).await;
    assert_eq!((s, served == ks), (StatusCode::OK, true));
    let (_, m) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_eq!(m["state"], "deploying");
    // The report needs the enrol token from the kickstart.
    let token = ks
        .lines()
        .find_map(|l| l.strip_prefix("token='"))
        .unwrap()
        .trim_end_matches('\'')
        .to_string();
    let report =
        json!({"mac": mac, "ok": false, "message": "installer failed: no space left on device"});
    let (s, _) = app
        .call_as(
            Some(&app.read_token().await),
            "POST",
            "/api/v1/agent/install-report",
            Some(report.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, m) = app
        .call_as(
            Some(&token),
            "POST",
            "/api/v1/agent/install-report",
            Some(report),
        )
        .await;
    assert_eq!(
        (s, m["state"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{m}"
    );
    let (_, ev) = app
        .call("GET", &format!("/api/v1/machines/{mac}/events"), None)
        .await;
    assert!(ev.to_string().contains("no space left on device"), "{ev}");
    // A failed machine gets no kickstart until it is redeployed; then the report succeeds.
    let (s, _, body) = get_text(&app, &format!("/boot/ks/{mac}"), &[]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, m) = app
        .call(
            "POST",
            &format!("/api/v1/machines/{mac}/redeploy"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (s, m["state"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{m}"
    );
    let (s, _, _) = get_text(&app, &format!("/boot/ks/{mac}"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let ok = json!({"mac": mac, "ok": true, "message": "kickstart %post finished"});
    let (s, m) = app
        .call_as(
            Some(&token),
            "POST",
            "/api/v1/agent/install-report",
            Some(ok.clone()),
        )
        .await;
    assert_eq!(
        (s, m["state"].as_str()),
        (StatusCode::OK, Some("deployed")),
        "{m}"
    );
    // A second report is refused: nothing is being installed.
    let (s, _) = app
        .call_as(
            Some(&token),
            "POST",
            "/api/v1/agent/install-report",
            Some(ok),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // Without installer images in the repository a ready machine still boots (the ramdisk)
    // and its timeline says why.
    let other = "52:54:00:00:be:06";
    app.call(
        "POST",
        "/api/v1/machines",
        Some(json!({"mac": other, "role": "web"})),
    )
    .await;
    let (_, _, script) = get_text(&app, &format!("/boot/ipxe?mac={other}&arch=bios"), &[]).await;
    assert!(script.contains("agent ramdisk"), "{script}");
    // Boot events are recorded in the background: wait for them, as boot_events does.
    let ev = boot_events(&app, other, 2).await;
    assert!(ev.iter().any(|m| m.contains("rocky-9-vmlinuz")), "{ev:?}");
}
