//! Tenant networks and security groups through the API (issue 14, the model only).

use crate::common::{assert_error, TestApp};
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn networks_get_vnis_and_gateways_and_bad_ones_name_the_field() {
    let app = TestApp::new().await;
    let (s, a) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "tenant-a", "cidr": "10.20.0.0/24"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(
        (a["vni"].as_u64(), a["gateway"].as_str(), a["mtu"].as_u64()),
        (Some(1), Some("10.20.0.1"), Some(1450))
    );
    // The next gets the next free VNI; the same subnet is fine in another tenant network.
    let (s, b) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "tenant-b", "cidr": "10.20.0.0/24"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["vni"], 2);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "tenant-a", "cidr": "10.30.0.0/24"})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.0/24", "vni": 2})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("vni"));
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.9/24"})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("cidr"));
    assert!(
        v["message"].as_str().unwrap().contains("10.30.0.0/24"),
        "{v}"
    );
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.0/24", "gateway": "10.31.0.1"})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("gateway"));
    let (s, v) = app.call("GET", "/api/v1/networks", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "nothing refused was recorded: {v}"
    );
    // Read may look, not create.
    let read = app.read_token().await;
    let (s, _) = app
        .call_as(
            Some(&read),
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "d", "cidr": "10.40.0.0/24"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.call("DELETE", "/api/v1/networks/tenant-a", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.call("GET", "/api/v1/networks/tenant-a", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, None);
    // Its VNI is free again.
    let (_, c) = app
        .call(
            "POST",
            "/api/v1/networks",
            Some(json!({"name": "c", "cidr": "10.30.0.0/24"})),
        )
        .await;
    assert_eq!(c["vni"], 1, "{c}");
}

#[tokio::test]
async fn security_groups_check_rules_and_references() {
    let app = TestApp::new().await;
    let ssh = json!({"name": "ssh", "rules": [
        {"direction": "ingress", "protocol": "tcp", "ports": [22, 22], "remote": {"cidr": "0.0.0.0/0"}}
    ]});
    let (s, v) = app
        .call("PUT", "/api/v1/secgroups/ssh", Some(ssh.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let web = json!({"name": "web", "rules": [
        {"direction": "ingress", "protocol": "tcp", "ports": [80, 80], "remote": {"group": "ssh"}}
    ]});
    let (s, v) = app.call("PUT", "/api/v1/secgroups/web", Some(web)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call("PUT", "/api/v1/secgroups/bad", Some(json!({"name": "bad", "rules": [
            {"direction": "ingress", "protocol": "icmp", "ports": [1, 2], "remote": {"cidr": "10.0.0.0/8"}}
        ]})))
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("rules"));
    let (s, v) = app
        .call(
            "PUT",
            "/api/v1/secgroups/bad",
            Some(json!({"name": "bad", "rules": [
                {"direction": "egress", "protocol": "any", "remote": {"group": "nobody"}}
            ]})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("rules"));
    assert!(v["message"].as_str().unwrap().contains("nobody"), "{v}");
    let (s, v) = app.call("PUT", "/api/v1/secgroups/other", Some(ssh)).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("name"));
    // Named by web: not deleted.
    let (s, v) = app.call("DELETE", "/api/v1/secgroups/ssh", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    let (s, _) = app.call("DELETE", "/api/v1/secgroups/web", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.call("DELETE", "/api/v1/secgroups/ssh", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = app.call("GET", "/api/v1/secgroups", None).await;
    assert_eq!(v, json!([]));
}
