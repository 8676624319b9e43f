//! Agents: enrolment, credentials, heartbeats, desired state and reports.

use super::common::*;
use axum::http::StatusCode;
use serde_json::json;

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

/// Hardening (issue 11, item 5, second half): deleting a machine revokes its agent
/// credential, so a stale credential does not work again when the MAC is registered anew.
#[tokio::test]
async fn deleting_a_machine_revokes_its_agent_credential() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:a0:0d";
    let inventory =
        json!({"cpu": {"model": "x", "sockets": 1, "cores": 1, "threads": 1}, "memory_bytes": 1});
    let (s, enrolled) = app
        .call(
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": inventory})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{enrolled}");
    let cred = enrolled["credential"].as_str().unwrap().to_string();
    let beat = json!({"observed_generation": 0});
    let (s, _) = app
        .call_as(
            Some(&cred),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(beat.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call("POST", "/api/v1/machines", Some(json!({"mac": mac})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = app
        .call_as(Some(&cred), "POST", "/api/v1/agent/heartbeat", Some(beat))
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the deleted machine's credential still works: {v}"
    );
    let (_, tokens) = app.call("GET", "/api/v1/tokens", None).await;
    assert!(
        !tokens.as_array().unwrap().iter().any(|t| t["mac"] == mac),
        "{tokens}"
    );
}
