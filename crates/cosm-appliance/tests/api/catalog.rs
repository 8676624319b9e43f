//! Roles, role rules and API tokens.

use super::common::*;
use axum::http::StatusCode;
use serde_json::{json, Value};

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
