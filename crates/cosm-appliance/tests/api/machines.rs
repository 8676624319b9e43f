//! Machines: the endpoints round trip, and conflicts name the states.

use super::common::*;
use axum::http::StatusCode;
use serde_json::{json, Value};

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
