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
    // The report needs the install token from the kickstart, which the kickstart URL
    // carries too; without it the kickstart is not served and nothing moves.
    let token = install_token(&ks);
    let (s, _, _) = get_text(&app, &format!("/boot/ks/{mac}"), &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The installer's fetch moves it to deploying.
    let (s, _, served) = get_text(&app, &format!("/boot/ks/{mac}?token={token}"), &[]).await;
    assert_eq!((s, served == ks), (StatusCode::OK, true));
    let (_, m) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_eq!(m["state"], "deploying");
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
    // A new install round: a new token; the old one no longer fetches the kickstart.
    let (_, _, ks) = get_text(
        &app,
        &format!("/api/v1/machines/{mac}/kickstart"),
        &[("authorization", &format!("Bearer {}", app.admin))],
    )
    .await;
    let (s, _, _) = get_text(&app, &format!("/boot/ks/{mac}?token={token}"), &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let token = install_token(&ks);
    let (s, _, _) = get_text(&app, &format!("/boot/ks/{mac}?token={token}"), &[]).await;
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
    // A second report is refused: the install token died with the first, and nothing is
    // being installed.
    let (s, _) = app
        .call_as(
            Some(&token),
            "POST",
            "/api/v1/agent/install-report",
            Some(ok.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app
        .call("POST", "/api/v1/agent/install-report", Some(ok))
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

/// The install token a kickstart carries (`token='…'` in its %post).
fn install_token(ks: &str) -> String {
    ks.lines()
        .find_map(|l| l.strip_prefix("token='"))
        .expect("the kickstart carries a token")
        .trim_end_matches('\'')
        .to_string()
}

/// Stand-ins for the configured release's installer kernel and initrd, so ready machines
/// boot the installer.
async fn upload_installer(app: &TestApp) {
    upload_image(app, "rocky-9-vmlinuz", b"installer kernel").await;
    upload_image(app, "rocky-9-initrd.img", b"installer initrd").await;
}

/// The `inst.ks=` URL of a machine's boot script, as a path on the appliance.
async fn kickstart_url(app: &TestApp, mac: &str) -> String {
    let (s, _, script) = get_text(app, &format!("/boot/ipxe?mac={mac}&arch=uefi"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{script}");
    let url = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("inst.ks="))
        .unwrap_or_else(|| panic!("no inst.ks= in the script of {mac}: {script}"));
    url.strip_prefix("http://192.0.2.1:8080")
        .unwrap()
        .to_string()
}

/// Hardening (issue 11, item 6): with the enrol token (public: on every kernel line)
/// anyone could report the install of any deploying machine, and the tokenless
/// `GET /boot/ks/MAC` moved any ready machine to deploying. Each install round now has a
/// per-machine install token, only in that machine's boot script and kickstart; the
/// kickstart, the report and the installed agent's enrolment need it, and it dies with the
/// report.
#[tokio::test]
async fn each_install_needs_its_machines_single_use_install_token() {
    let app = TestApp::new().await;
    upload_installer(&app).await;
    let (a, b) = ("52:54:00:00:c6:0a", "52:54:00:00:c6:0b");
    for mac in [a, b] {
        let (s, v) = app
            .call(
                "POST",
                "/api/v1/machines",
                Some(json!({"mac": mac, "role": "web"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let enroll_tok = app.enroll_token().await;
    // Machine a's ramdisk agent enrolled and is heartbeating.
    let inventory =
        json!({"cpu": {"model": "x", "sockets": 1, "cores": 1, "threads": 1}, "memory_bytes": 1});
    let (s, v) = app
        .call_as(
            Some(&enroll_tok),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": a, "inventory": inventory})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Nothing without a token, or with the enrol token: not served, not moved.
    for q in ["".to_string(), format!("?token={enroll_tok}")] {
        let (s, _, body) = get_text(&app, &format!("/boot/ks/{a}{q}"), &[]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{q}: {body}");
        assert!(body.contains("install token"), "{body}");
    }
    let url_a = kickstart_url(&app, a).await;
    let url_b = kickstart_url(&app, b).await;
    let token_a = url_a.split("token=").nth(1).unwrap().to_string();
    let token_b = url_b.split("token=").nth(1).unwrap().to_string();
    assert_ne!(token_a, token_b);
    // b's token does not fetch a's kickstart.
    let (s, _, _) = get_text(&app, &format!("/boot/ks/{a}?token={token_b}"), &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, m) = app
        .call("GET", &format!("/api/v1/machines/{a}"), None)
        .await;
    assert_eq!(m["state"], "ready", "nothing moved it");
    // a's own URL: served (with the same token inside), and a is deploying.
    let (s, _, ks) = get_text(&app, &url_a, &[]).await;
    assert_eq!(s, StatusCode::OK, "{ks}");
    assert_eq!(install_token(&ks), token_a);
    assert!(
        !ks.contains(&enroll_tok),
        "the kickstart carries the enrol token"
    );
    let (_, m) = app
        .call("GET", &format!("/api/v1/machines/{a}"), None)
        .await;
    assert_eq!(m["state"], "deploying");

    // The install token is good for a's installer calls only.
    for (token, path) in [
        (&token_a, "/api/v1/machines"),
        (&token_a, "/api/v1/agent/desired"),
    ] {
        let (s, v) = app.call_as(Some(token), "GET", path, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let report = |mac: &str, ok: bool| json!({"mac": mac, "ok": ok, "message": "forged"});
    for (token, body) in [
        (&enroll_tok, report(a, false)),
        (&token_b, report(a, false)),
        (&token_a, report(b, false)),
    ] {
        let (s, v) = app
            .call_as(
                Some(token),
                "POST",
                "/api/v1/agent/install-report",
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }
    // The installed agent enrols with it, replacing the ramdisk's agent (which the enrol
    // token could not: it is heartbeating), and b's token cannot enrol a.
    let enrol = json!({"mac": a, "inventory": inventory});
    let (s, v) = app
        .call_as(
            Some(&enroll_tok),
            "POST",
            "/api/v1/agent/enroll",
            Some(enrol.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = app
        .call_as(
            Some(&token_b),
            "POST",
            "/api/v1/agent/enroll",
            Some(enrol.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app
        .call_as(Some(&token_a), "POST", "/api/v1/agent/enroll", Some(enrol))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The report, once.
    let ok = json!({"mac": a, "ok": true, "message": "kickstart %post finished"});
    let (s, m) = app
        .call_as(
            Some(&token_a),
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
    let (s, _) = app
        .call_as(
            Some(&token_a),
            "POST",
            "/api/v1/agent/install-report",
            Some(ok),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Redeployed: a new round, a new token; the old one fetches nothing.
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/machines/{a}/redeploy"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = get_text(&app, &url_a, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let new_url = kickstart_url(&app, a).await;
    assert_ne!(new_url, url_a);
    let (s, _, _) = get_text(&app, &new_url, &[]).await;
    assert_eq!(s, StatusCode::OK);
    // Deleted and registered anew: the token of its earlier life does not work.
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/machines/{b}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": b, "role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, _) = get_text(&app, &url_b, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// Hardening (issue 11, item 6, further): when this appliance's DHCP leases the
/// addresses, a machine's installer script — the one place its install token is served —
/// goes only to the address leased to that machine. Another host asking for the script of
/// that MAC gets the ramdisk script (no install token), and the machine's timeline says so.
#[tokio::test]
async fn the_install_token_goes_only_to_the_address_leased_to_its_machine() {
    let dhcp = r#"[dhcp]
server_id = "192.0.2.1"
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.150"]
"#;
    let app = TestApp::with_sections(64 * 1024, "", dhcp).await;
    upload_installer(&app).await;
    let (mac, other) = ("52:54:00:00:c6:1a", "52:54:00:00:c6:1b");
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let store = app.assembly.state.app.store.clone();
    let now = cosm_wire::Timestamp::now();
    for (ip, holder) in [("192.0.2.120", mac), ("192.0.2.121", other)] {
        let lease = cosm_wire::Lease {
            ip: ip.parse().unwrap(),
            mac: holder.parse().unwrap(),
            state: cosm_wire::LeaseState::Bound,
            starts_at: now,
            expires_at: cosm_wire::Timestamp::from_millis(now.as_millis() + 3_600_000),
            client_hostname: None,
            relay: None,
        };
        store
            .run(cosm_appliance::app::Op::PutLease(lease))
            .await
            .unwrap();
    }
    let script_from = |peer: Option<&str>| {
        let mut req = axum::http::Request::builder()
            .uri(format!("/boot/ipxe?mac={mac}&arch=uefi"))
            .body(axum::body::Body::empty())
            .unwrap();
        if let Some(p) = peer {
            let addr: std::net::SocketAddr = format!("{p}:40000").parse().unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(addr));
        }
        let app = &app;
        async move {
            let (s, _, body) = app.raw(req).await;
            assert_eq!(s, StatusCode::OK);
            String::from_utf8(body).unwrap()
        }
    };
    for peer in [Some("192.0.2.121"), Some("192.0.2.77"), None] {
        let script = script_from(peer).await;
        assert!(
            !script.contains("token=cosm_i_") && script.contains("agent ramdisk"),
            "a request from {peer:?} got the install token: {script}"
        );
    }
    let script = script_from(Some("192.0.2.120")).await;
    assert!(
        script.contains("/boot/ks/") && script.contains("token=cosm_i_"),
        "{script}"
    );
    // The first request noted two steps, in this order: the refusal, then the script.
    let ev = boot_events(&app, mac, 2).await;
    assert!(
        ev.iter()
            .any(|m| m.contains("this request came from 192.0.2.121")),
        "{ev:?}"
    );
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
