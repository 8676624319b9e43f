//! Authentication and the access each token scope is granted.

use super::common::*;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::json;

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

/// Each route declares its access beside itself; this walks the routes a token of each
/// scope may and may not call (the rules the path-prefix check used to encode).
#[tokio::test]
async fn each_scope_reaches_only_the_routes_that_grant_it() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:a0:01";
    let read = app.read_token().await;
    let (_, enroll) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "boot", "scope": "enroll"})),
        )
        .await;
    let enroll = enroll["token"].as_str().unwrap().to_string();
    let inventory =
        json!({"cpu": {"model": "x", "sockets": 1, "cores": 1, "threads": 1}, "memory_bytes": 1});
    let (s, enrolled) = app
        .call_as(
            Some(&enroll),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": inventory})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "an enrol token enrols: {enrolled}");
    let agent = enrolled["credential"].as_str().unwrap().to_string();
    let machine = format!("/api/v1/machines/{mac}");
    let writes = [
        (
            "POST",
            "/api/v1/machines".to_string(),
            json!({"mac": "52:54:00:00:a0:02"}),
        ),
        ("PUT", format!("{machine}/role"), json!({"role": "web"})),
        ("PATCH", machine.clone(), json!({"hostname": "a1"})),
        (
            "DELETE",
            "/api/v1/machines/52:54:00:00:a0:02".to_string(),
            json!(null),
        ),
    ];
    let denied = |s: StatusCode| s == StatusCode::FORBIDDEN;
    let (s, _) = app
        .call_as(Some(&read), "GET", "/api/v1/machines", None)
        .await;
    assert!(!denied(s), "read may list machines");
    for (method, path, body) in &writes {
        let body = (!body.is_null()).then(|| body.clone());
        let (s, _) = app.call_as(Some(&read), method, path, body.clone()).await;
        assert!(denied(s), "read may not {method} {path}: {s}");
        let (s, v) = app.call(method, path, body).await;
        assert!(!denied(s), "admin may {method} {path}: {v}");
    }
    let (s, _) = app
        .call_as(Some(&read), "GET", "/api/v1/tokens", None)
        .await;
    assert!(denied(s), "read may not list tokens");
    let (s, _) = app
        .call_as(Some(&enroll), "GET", "/api/v1/machines", None)
        .await;
    assert!(denied(s), "enrol may not list machines");
    let beat = json!({"observed_generation": 0});
    let (s, _) = app
        .call_as(
            Some(&enroll),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(beat.clone()),
        )
        .await;
    assert!(denied(s), "enrol may not heartbeat");
    let (s, v) = app
        .call_as(Some(&agent), "POST", "/api/v1/agent/heartbeat", Some(beat))
        .await;
    assert_eq!(s, StatusCode::OK, "an agent heartbeats: {v}");
    // An agent credential enrols only its own machine again (issue 11, item 5: enrolling
    // a machine that has an agent needs that agent's credential), never another one.
    let (s, _) = app
        .call_as(
            Some(&agent),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": "52:54:00:00:a0:09", "inventory": inventory})),
        )
        .await;
    assert!(
        denied(s),
        "an agent credential may not enrol another machine"
    );
    let (s, v) = app
        .call_as(
            Some(&agent),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": inventory})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "an agent enrols its own machine again: {v}"
    );
    let agent = v["credential"].as_str().unwrap().to_string();
    let (s, _) = app
        .call_as(Some(&agent), "GET", "/api/v1/machines", None)
        .await;
    assert!(denied(s), "an agent credential may not list machines");
}

/// Hardening (issue 11, item 8): a kickstart carries the enrol token, the root password
/// hash and SSH keys, so reading one needs an admin token, not a read token.
#[tokio::test]
async fn a_read_token_cannot_fetch_a_kickstart() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:a0:0b";
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let path = format!("/api/v1/machines/{mac}/kickstart");
    let read = app.read_token().await;
    let (s, _) = app.call_as(Some(&read), "GET", &path, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, ks) = get_text(
        &app,
        &path,
        &[("authorization", &format!("Bearer {}", app.admin))],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{ks}");
}
