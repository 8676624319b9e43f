//! Operations: the OpenAPI document and the metrics.

use super::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

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
