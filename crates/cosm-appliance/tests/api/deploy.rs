//! The deploy workflow: kickstarts, install reports, redeploy, and their races.

use super::common::*;
use axum::http::StatusCode;
use serde_json::json;

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

/// A machine with a role, moved to `state` through the API.
async fn machine_in(app: &TestApp, mac: &str, states: &[&str]) {
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "host"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    walk(app, mac, states).await;
}

/// State changes on a machine's timeline, as "from → to".
async fn state_changes(app: &TestApp, mac: &str) -> Vec<String> {
    let (_, evs) = app
        .call("GET", &format!("/api/v1/machines/{mac}/events"), None)
        .await;
    evs.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "state_changed")
        .map(|e| {
            format!(
                "{} → {}",
                e["from_state"].as_str().unwrap_or("-"),
                e["to_state"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[tokio::test]
async fn racing_install_reports_exactly_one_wins() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:be:11";
    machine_in(&app, mac, &["deploying"]).await;
    // Eight installers (or forgers) report at the same moment, half success, half failure.
    // Each report is one command that checks `deploying` and moves in the same
    // transaction, so exactly one can act on that state.
    let reports = (0..8).map(|i| {
        let body = json!({"mac": mac, "ok": i % 2 == 0, "message": format!("report {i}")});
        app.call("POST", "/api/v1/agent/install-report", Some(body))
    });
    let results = futures_util::future::join_all(reports).await;
    let won: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for (s, v) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(
            (*s, v["code"].as_str()),
            (StatusCode::CONFLICT, Some("not_deploying")),
            "{v}"
        );
    }
    let changes = state_changes(&app, mac).await;
    let from_deploying: Vec<_> = changes
        .iter()
        .filter(|c| c.starts_with("deploying"))
        .collect();
    assert_eq!(from_deploying.len(), 1, "{changes:?}");
    let (_, m) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_eq!(&m["state"], &won[0].1["state"]);
}

#[tokio::test]
async fn racing_redeploys_exactly_one_wins_and_one_reboot_is_queued() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:be:12";
    machine_in(&app, mac, &["deploying", "deployed"]).await;
    // Its agent is alive, so a redeploy also queues a reboot into the installer.
    app.assembly
        .state
        .app
        .liveness
        .beat(mac.parse().unwrap(), cosm_wire::Heartbeat::default());
    let path = format!("/api/v1/machines/{mac}/redeploy");
    let results =
        futures_util::future::join_all((0..4).map(|_| app.call("POST", &path, None))).await;
    let won = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(won, 1, "{results:?}");
    for (s, v) in results.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["code"], "redeploy_pending", "{v}");
    }
    let (_, m) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_eq!(m["state"], "ready");
    let actions = m["pending_actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{m}");
    assert_eq!(actions[0]["kind"], "reboot");
    assert_eq!(
        state_changes(&app, mac).await.last().map(String::as_str),
        Some("deployed → ready")
    );
}
