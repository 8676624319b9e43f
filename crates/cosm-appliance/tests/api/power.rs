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

/// A tiny HTTP sink on loopback: every request body it gets, answered 204.
fn webhook_sink() -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10) {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (url, rx)
}

// Multi-threaded: the test blocks on the sink's channel while the webhook task posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_reach_the_webhook_the_api_and_metrics_raised_once_and_cleared() {
    let (url, hooks) = webhook_sink();
    let app =
        TestApp::with_sections(64 * 1024, "", &format!("[ha]\nalarm_webhook = \"{url}\"\n")).await;
    let core = &app.assembly.state.app;
    for _ in 0..2 {
        core.raise_alarm(
            cosm_wire::AlarmKind::FenceFailed,
            cosm_wire::Severity::Critical,
            "52:54:00:aa:00:07".into(),
            "BMC unreachable".into(),
        )
        .await
        .unwrap();
    }
    let (s, v) = app.call("GET", "/api/v1/alarms", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1, "raised once: {v}");
    assert_eq!(v[0]["kind"], "fence_failed");
    let (_, _, body) = {
        let req = axum::http::Request::builder()
            .uri("/metrics")
            .body(axum::body::Body::empty())
            .unwrap();
        app.raw(req).await
    };
    let metrics = String::from_utf8(body).unwrap();
    assert!(
        metrics.contains("cosm_alarms_active{kind=\"fence_failed\",severity=\"critical\"} 1"),
        "{metrics}"
    );
    core.clear_alarm(
        cosm_wire::AlarmKind::FenceFailed,
        "52:54:00:aa:00:07".into(),
    )
    .await
    .unwrap();
    let (_, v) = app.call("GET", "/api/v1/alarms", None).await;
    assert_eq!(v, json!([]));
    let (_, v) = app.call("GET", "/api/v1/alarms?all=true", None).await;
    assert!(v[0]["cleared_at"].is_string(), "{v}");
    // The webhook got the raise and the clear, once each, in order.
    let wait = std::time::Duration::from_secs(10);
    let first = hooks
        .recv_timeout(wait)
        .expect("the raise reached the webhook");
    let second = hooks
        .recv_timeout(wait)
        .expect("the clear reached the webhook");
    assert_eq!(first["event"], "raised");
    assert_eq!(first["alarm"]["kind"], "fence_failed");
    assert_eq!(second["event"], "cleared");
    assert!(
        hooks
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "nothing more"
    );
}
