//! Agents: enrolment, credentials, heartbeats, desired state and reports.

use super::common::*;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
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

    // Enrolling again (with the agent's own credential: the public enrol token may not
    // replace a heartbeating agent) replaces the credential: the old one stops working.
    let (_, again) = app
        .call_as(
            Some(&cred),
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

/// Hardening (issue 11, item 5, first half): the enrol token is on every ramdisk kernel
/// line, so anyone on the provisioning network has it. With it alone they replaced any
/// machine's agent: its inventory, and a credential that took the real agent's place.
/// Now a machine that has an agent is enrolled again only by that agent's credential, an
/// operator (reregister, or an admin token), or — where the machine boots the ramdisk and
/// its agent missed its heartbeats — the enrol token.
#[tokio::test]
async fn the_enrol_token_cannot_take_over_a_machine_that_has_an_agent() {
    // A lost window of one second, so a silent agent is seen as silent quickly.
    let app = TestApp::with(64 * 1024, "heartbeat_secs = 1\nmissed_beats = 1").await;
    let enroll_tok = app.enroll_token().await;
    let enrol = |token: String, mac: &'static str, cpus: u32| {
        let app = &app;
        async move {
            let body = json!({"mac": mac, "inventory": {"cpu": {"model": "x", "sockets": 1, "cores": cpus, "threads": cpus}, "memory_bytes": 1}});
            app.call_as(Some(&token), "POST", "/api/v1/agent/enroll", Some(body))
                .await
        }
    };
    let beat = |cred: String| {
        let app = &app;
        async move {
            app.call_as(
                Some(&cred),
                "POST",
                "/api/v1/agent/heartbeat",
                Some(json!({})),
            )
            .await
            .0
        }
    };
    let mac = "52:54:00:00:a1:01";
    let (s, first) = enrol(enroll_tok.clone(), mac, 2).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let cred = first["credential"].as_str().unwrap().to_string();
    assert_eq!(beat(cred.clone()).await, StatusCode::OK);

    // The attacker's enrolment: refused, the real agent keeps working, nothing replaced.
    let (s, e) = enrol(enroll_tok.clone(), mac, 64).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_enrolled")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("reregister"), "{e}");
    assert_eq!(beat(cred.clone()).await, StatusCode::OK);
    let (_, m) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_eq!(m["inventory"]["cpu"]["cores"], 2, "{m}");

    // The agent itself may enrol again (a fresh inventory), with its own credential.
    let (s, again) = enrol(cred.clone(), mac, 4).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    let cred2 = again["credential"].as_str().unwrap().to_string();
    assert_eq!(beat(cred.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(beat(cred2.clone()).await, StatusCode::OK);

    // An operator lets a new agent in: the credential is revoked, the enrol token works.
    let (s, v) = app
        .call_as(
            Some(&app.read_token().await),
            "POST",
            &format!("/api/v1/machines/{mac}/reregister"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app
        .call("POST", &format!("/api/v1/machines/{mac}/reregister"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(beat(cred2.clone()).await, StatusCode::UNAUTHORIZED);
    let (s, v) = enrol(enroll_tok.clone(), mac, 8).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // A discovered machine boots the ramdisk, which enrols at every boot with the enrol
    // token: once its old agent has missed its heartbeats, the new one is let in.
    let ramdisk = "52:54:00:00:a1:02";
    let (s, v) = enrol(enroll_tok.clone(), ramdisk, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = enrol(enroll_tok.clone(), ramdisk, 1).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (s, v) = enrol(enroll_tok.clone(), ramdisk, 1).await;
    assert_eq!(s, StatusCode::OK, "after the lost window: {v}");

    // A deployed machine boots from its disk, where its agent keeps its credential: the
    // enrol token never replaces that agent, silent or not; an admin still may.
    let deployed = "52:54:00:00:a1:03";
    let (s, v) = enrol(enroll_tok.clone(), deployed, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call(
            "PUT",
            &format!("/api/v1/machines/{deployed}/role"),
            Some(json!({"role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    walk(&app, deployed, &["deploying", "deployed"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (s, e) = enrol(enroll_tok.clone(), deployed, 1).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_enrolled")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("deployed"), "{e}");
    let (s, v) = enrol(app.admin.clone(), deployed, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

/// Enrols `mac` with a small inventory and the admin token.
async fn enroll(app: &TestApp, mac: &str) -> (StatusCode, serde_json::Value) {
    app.call("POST", "/api/v1/agent/enroll", Some(enroll_body(mac)))
        .await
}

fn enroll_body(mac: &str) -> serde_json::Value {
    json!({"mac": mac, "inventory": {"cpu": {"model": "x", "sockets": 1, "cores": 1, "threads": 1}, "memory_bytes": 1}})
}

/// Hardening (issue 11, item 7): enrolment is bounded in size, in the number of machines it
/// may leave `discovered`, and in rate (10,000 random MACs were accepted, 1 MB inventories
/// grew the store by 2 MB each).
#[tokio::test]
async fn enrolment_is_bounded_in_size_count_and_rate() {
    let app = TestApp::with(
        4 << 20,
        "max_discovered = 3\nenroll_per_sec = 1\nenroll_burst = 100",
    )
    .await;
    // Size: a 1 MiB inventory is refused and leaves no machine.
    let mut big = enroll_body("52:54:00:00:b0:99");
    big["inventory"]["cpu"]["model"] = json!("x".repeat(1 << 20));
    let (s, v) = app.call("POST", "/api/v1/agent/enroll", Some(big)).await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("inventory"));
    let (s, _) = app
        .call("GET", "/api/v1/machines/52:54:00:00:b0:99", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Count: three discovered machines, then no more.
    for n in 1..=3 {
        let (s, v) = enroll(&app, &format!("52:54:00:00:b0:0{n}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = enroll(&app, "52:54:00:00:b0:04").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("discovered_cap")),
        "{v}"
    );
    // A known machine still enrols again; giving one a role makes room for a new one.
    let (s, _) = enroll(&app, "52:54:00:00:b0:01").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call(
            "PUT",
            "/api/v1/machines/52:54:00:00:b0:01/role",
            Some(json!({"role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = enroll(&app, "52:54:00:00:b0:04").await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn enrolments_of_new_machines_are_rate_limited() {
    let app = TestApp::with(64 * 1024, "enroll_per_sec = 1\nenroll_burst = 2").await;
    for n in 1..=2 {
        let (s, v) = enroll(&app, &format!("52:54:00:00:b1:0{n}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let req = Request::post("/api/v1/agent/enroll")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(enroll_body("52:54:00:00:b1:03").to_string()))
        .unwrap();
    let (s, h, body) = app.raw(req).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(h.get(header::RETRY_AFTER).unwrap(), "1");
    // A machine that is already known is not held back.
    let (s, _) = enroll(&app, "52:54:00:00:b1:01").await;
    assert_eq!(s, StatusCode::OK);
}
