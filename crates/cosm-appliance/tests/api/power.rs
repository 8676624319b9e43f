//! Power settings, power calls through the `exec` driver (a real fence script), alarms and
//! evacuations (issue 13).

use crate::common::{assert_error, TestApp};
use axum::http::StatusCode;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

const MAC: &str = "52:54:00:aa:00:01";

async fn machine(app: &TestApp) {
    let (s, v) = app
        .call("POST", "/api/v1/machines", Some(json!({"mac": MAC})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// A fence script keeping the power state in a file; `off` fails when `fail` exists.
fn fence_script(dir: &std::path::Path) -> String {
    let path = dir.join("fence.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nD={d}\necho \"$COSM_MACHINE_MAC $1\" >> $D/calls\ncase \"$1\" in\n  status) cat $D/state 2>/dev/null || echo on;;\n  off) [ -e $D/fail ] && {{ echo 'PDU says no' >&2; exit 3; }}; echo off > $D/state;;\n  on) echo on > $D/state;;\n  pxe-once) : ;;\n  *) exit 2;;\nesac\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn settings_are_written_never_read_back_with_their_secret() {
    let app = TestApp::new().await;
    machine(&app).await;
    let path = format!("/api/v1/machines/{MAC}/power-settings");
    let (s, v) = app.call("GET", &path, None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, None);
    let (s, v) = app
        .call(
            "PUT",
            &path,
            Some(json!({"driver": "ipmi", "host": "10.0.0.5", "username": "admin", "password": "hunter2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["password_set"], true);
    assert_eq!(v["address"], "10.0.0.5:623");
    let (s, v) = app.call("GET", &path, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v.to_string().contains("hunter2"), "{v}");
    // Not on the timeline either.
    let (_, ev) = app
        .call("GET", &format!("/api/v1/machines/{MAC}/events"), None)
        .await;
    assert!(ev.to_string().contains("power settings set"), "{ev}");
    assert!(!ev.to_string().contains("hunter2"), "{ev}");
    // A read token may look, not write.
    let read = app.read_token().await;
    let (s, _) = app.call_as(Some(&read), "GET", &path, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call_as(
            Some(&read),
            "PUT",
            &path,
            Some(json!({"driver": "exec", "command": ["/bin/true"]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Bad settings are refused, naming the problem.
    let (s, v) = app
        .call(
            "PUT",
            &path,
            Some(json!({"driver": "exec", "command": ["fence.sh"]})),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("power_settings"),
    );
    assert!(
        v["message"].as_str().unwrap().contains("absolute path"),
        "{v}"
    );
    let (s, v) = app
        .call("PUT", &path, Some(json!({"driver": "wake-on-lan"})))
        .await;
    assert!(s.is_client_error(), "{s} {v}");
    let (s, _) = app.call("DELETE", &path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.call("DELETE", &path, None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, None);
    let (s, v) = app
        .call(
            "GET",
            "/api/v1/machines/52:54:00:aa:00:99/power-settings",
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, None);
}

#[tokio::test]
async fn power_calls_run_the_driver_and_land_on_the_timeline() {
    let app = TestApp::new().await;
    machine(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let script = fence_script(dir.path());
    let (s, v) = app
        .call(
            "PUT",
            &format!("/api/v1/machines/{MAC}/power-settings"),
            Some(json!({"driver": "exec", "command": [script]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let power = format!("/api/v1/machines/{MAC}/power");
    let (s, v) = app.call("GET", &power, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "on");
    let (s, v) = app
        .call("POST", &power, Some(json!({"action": "off"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "off");
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert!(calls.contains(&format!("{MAC} off")), "{calls}");
    // A failing BMC: 502 with what it said, and the failure on the timeline.
    std::fs::write(dir.path().join("fail"), "").unwrap();
    let (s, v) = app
        .call("POST", &power, Some(json!({"action": "off"})))
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["code"], "bmc_failed");
    assert!(
        v["message"].as_str().unwrap().contains("PDU says no"),
        "{v}"
    );
    let (s, v) = app
        .call("POST", &power, Some(json!({"action": "reboot"})))
        .await;
    assert!(s.is_client_error(), "{s} {v}");
    let (_, ev) = app
        .call("GET", &format!("/api/v1/machines/{MAC}/events"), None)
        .await;
    let text = ev.to_string();
    assert!(
        text.contains("power off by bootstrap-admin through exec: done"),
        "{text}"
    );
    assert!(text.contains("failed after"), "{text}");
}

#[tokio::test]
async fn alarms_and_evacuations_list_and_validate_their_query() {
    let app = TestApp::new().await;
    let (s, v) = app.call("GET", "/api/v1/alarms", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!([]));
    let (s, v) = app.call("GET", "/api/v1/alarms?all=maybe", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("all"));
    let (s, v) = app.call("GET", "/api/v1/alarms?limit=0", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("limit"));
    let (s, v) = app.call("GET", "/api/v1/evacuations", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!([]));
}
