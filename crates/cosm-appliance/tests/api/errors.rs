//! Bad input gets a JSON error naming the field.

use super::common::*;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};

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
