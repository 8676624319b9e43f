//! Image installs (issue 16) through the API: role images with their manifests, the install
//! method per role, the plan behind `cosm.install=`, progress, the report, and `active` at
//! the installed agent's first heartbeat.

use super::common::*;
use axum::http::StatusCode;
use serde_json::{json, Value};

fn manifest(role: &str, data: &[u8]) -> Value {
    json!({"name": "cosm-test", "role": role, "release": "debian-12", "file": "x.img.zst",
           "size": data.len(), "sha256": sha256_hex(data), "raw_size": 64u64 << 20,
           "kernel": "6.1.0-56-amd64", "source_date_epoch": 1700000000,
           "packages": [{"name": "bash", "version": "5.2.15-2+b7", "arch": "amd64", "sha256": "ab"}]})
}

/// The `cosm.install=` URL of a machine's iPXE script, if it has one.
async fn install_url(app: &TestApp, mac: &str) -> Option<String> {
    let (s, _, script) = get_text(app, &format!("/boot/ipxe?mac={mac}&arch=bios"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{script}");
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cosm.install="))
        .map(str::to_string)
}

/// What the installer does at the end: enrols the installed system with the install token,
/// then reports success (→ `deployed`). Returns the installed agent's credential.
async fn enrol_and_report(app: &TestApp, token: &str, mac: &str, inventory: Value) -> String {
    let (s, enrolled) = app
        .call_as(
            Some(token),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": inventory})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{enrolled}");
    let (s, m) = app
        .call_as(
            Some(token),
            "POST",
            "/api/v1/agent/install-report",
            Some(json!({"mac": mac, "ok": true, "message": "written to /dev/vda"})),
        )
        .await;
    assert_eq!((s, m["state"].as_str()), (StatusCode::OK, Some("deployed")));
    enrolled["credential"].as_str().unwrap().to_string()
}

/// One heartbeat of the agent holding `credential`.
async fn beat(app: &TestApp, credential: &str) {
    let (s, e) = app
        .call_as(
            Some(credential),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(json!({"cpu_percent": 1.0})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
}

/// The machine's lifecycle state.
async fn state(app: &TestApp, mac: &str) -> String {
    let (s, m) = app
        .call("GET", &format!("/api/v1/machines/{mac}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    m["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_role_image_installs_its_role_by_plan_and_the_installed_agent_makes_it_active() {
    let app = TestApp::new().await;
    // 9 MiB + 5: three chunks, the last one short.
    let data: Vec<u8> = (0..(9u32 << 20) + 5).map(|i| (i % 253) as u8).collect();
    upload_image(&app, "cosm-web.img.zst", &data).await;

    // A manifest of another file is refused and leaves the image as it was.
    let mut other = manifest("web", &data);
    other["sha256"] = json!(sha256_hex(b"another file"));
    let (s, e) = app
        .call(
            "PUT",
            "/api/v1/images/cosm-web.img.zst/manifest",
            Some(other),
        )
        .await;
    assert_error(s, &e, StatusCode::CONFLICT, None);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("upload the image this manifest was built with"),
        "{e}"
    );
    let (s, e) = app
        .call(
            "PUT",
            "/api/v1/images/cosm-web.img.zst/manifest",
            Some(manifest("no-such-role", &data)),
        )
        .await;
    assert!(s.is_client_error(), "{s}: {e}");
    // A read token cannot attach one.
    let read = app.read_token().await;
    let (s, _) = app
        .call_as(
            Some(&read),
            "PUT",
            "/api/v1/images/cosm-web.img.zst/manifest",
            Some(manifest("web", &data)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, image) = app
        .call(
            "PUT",
            "/api/v1/images/cosm-web.img.zst/manifest",
            Some(manifest("web", &data)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{image}");
    assert_eq!(image["os"]["role"], "web");
    assert_eq!(image["os"]["packages"][0]["name"], "bash");
    let chunks = image["chunks"].as_array().unwrap().clone();
    assert_eq!(chunks.len(), 3, "{image}");
    assert_eq!(chunks[2], json!(sha256_hex(&data[8 << 20..])));

    // A ready web machine now boots the ramdisk told to install; a storage machine (no
    // image for its role) still gets the kickstart's installer path (here: no installer
    // images, so the plain ramdisk) and no plan.
    let mac = "52:54:00:00:1a:01";
    let inventory = json!({"cpu": {"model": "QEMU", "sockets": 1, "cores": 2, "threads": 2}, "memory_bytes": 1u64 << 30,
        "disks": [{"name": "vdb", "size_bytes": 10u64 << 30}, {"name": "vda", "size_bytes": 10u64 << 30}], "firmware": "bios", "kernel": "6.1.0"});
    let enroll = app.enroll_token().await;
    let (s, v) = app
        .call_as(
            Some(&enroll),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": inventory})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call(
            "PUT",
            &format!("/api/v1/machines/{mac}/role"),
            Some(json!({"role": "web"})),
        )
        .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("ready")));
    let url = install_url(&app, mac).await.expect("an image install");
    let path = url
        .strip_prefix("http://192.0.2.1:8080")
        .unwrap_or_else(|| panic!("{url}"));
    let storage = "52:54:00:00:1a:02";
    app.call(
        "POST",
        "/api/v1/machines",
        Some(json!({"mac": storage, "role": "storage"})),
    )
    .await;
    assert_eq!(install_url(&app, storage).await, None);

    // The plan is open, like a kickstart: nothing without the token.
    let (s, _, _) = get_text(&app, &format!("/boot/install/{mac}"), &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = get_text(&app, &format!("/boot/install/{mac}?token=wrong"), &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(state(&app, mac).await, "ready");
    let (s, _, plan) = get_text(&app, path, &[]).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["image"], "cosm-web.img.zst");
    assert_eq!(plan["sha256"], json!(sha256_hex(&data)));
    assert_eq!(plan["chunks"], json!(chunks));
    assert_eq!(plan["disk"], "vda", "the first disk by name: {plan}");
    assert_eq!(plan["root_partition"], "root");
    let files = plan["files"].as_array().unwrap();
    let hostname = files.iter().find(|f| f["path"] == "/etc/hostname").unwrap();
    assert_eq!(hostname["content"], "web-001a01\n");
    assert!(plan["image_url"]
        .as_str()
        .unwrap()
        .ends_with("/boot/images/cosm-web.img.zst?mac=52:54:00:00:1a:01&step=image"));
    assert_eq!(state(&app, mac).await, "deploying");
    let token = url.split("token=").nth(1).unwrap().to_string();

    // Progress lands on the timeline; another machine's install token cannot post it.
    let progress = json!({"mac": mac, "phase": "streaming", "bytes": 4u64 << 20,
                          "total": data.len(), "mib_per_s": 9.5});
    let (s, e) = app
        .call_as(
            Some(&read),
            "POST",
            "/api/v1/agent/install-progress",
            Some(progress.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    let (s, e) = app
        .call_as(
            Some(&token),
            "POST",
            "/api/v1/agent/install-progress",
            Some(progress),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
    // The installer enrols the installed system with the install token, then reports.
    let credential = enrol_and_report(&app, &token, mac, inventory).await;
    // The installed agent's first heartbeat: active.
    beat(&app, &credential).await;
    assert_eq!(state(&app, mac).await, "active");
    let (_, ev) = app
        .call("GET", &format!("/api/v1/machines/{mac}/events"), None)
        .await;
    let ev = ev.to_string();
    for line in [
        "install plan served: image cosm-web.img.zst",
        "installing: streaming 44% (4.0 MiB of 9.0 MiB) at 9.5 MiB/s",
        "its installer fetched the install plan of image cosm-web.img.zst (debian-12)",
        "first heartbeat since the install",
    ] {
        assert!(ev.contains(line), "no {line:?} in {ev}");
    }

    // The role set to kickstart: the same image no longer installs it.
    let (s, r) = app
        .call(
            "PUT",
            "/api/v1/roles/web/install",
            Some(json!({"method": "kickstart"})),
        )
        .await;
    assert_eq!(
        (s, r["install"].as_str()),
        (StatusCode::OK, Some("kickstart"))
    );
    let (s, _) = app
        .call(
            "POST",
            &format!("/api/v1/machines/{mac}/redeploy"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(install_url(&app, mac).await, None);
    // `image` for a role without an image: its machines are not installed, and the
    // timeline says why.
    let (s, _) = app
        .call(
            "PUT",
            "/api/v1/roles/storage/install",
            Some(json!({"method": "image"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // The timeline keeps one "install …" note per machine every 2 s.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(install_url(&app, storage).await, None);
    // Timeline notes are written in the background: wait for it (bounded).
    let mut ev = Value::Null;
    for _ in 0..50 {
        ev = app
            .call("GET", &format!("/api/v1/machines/{storage}/events"), None)
            .await
            .1;
        if ev
            .to_string()
            .contains("no image in the repository is for role storage")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        ev.to_string()
            .contains("no image in the repository is for role storage"),
        "{ev}"
    );
    let (s, e) = app
        .call(
            "PUT",
            "/api/v1/roles/web/install",
            Some(json!({"method": "iso"})),
        )
        .await;
    assert!(s.is_client_error(), "{e}");
}

#[tokio::test]
async fn heartbeats_do_not_activate_a_machine_an_operator_moved_to_deployed() {
    let app = TestApp::new().await;
    let mac = "52:54:00:00:1a:03";
    let enroll = app.enroll_token().await;
    let (s, v) = app
        .call_as(
            Some(&enroll),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": {}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let credential = v["credential"].as_str().unwrap().to_string();
    app.call(
        "PUT",
        &format!("/api/v1/machines/{mac}/role"),
        Some(json!({"role": "host"})),
    )
    .await;
    walk(&app, mac, &["deploying", "deployed"]).await;
    // Its agent beats (a host already up, as the rack's hosts are): the operator's next
    // move to `active` must still be theirs to make.
    beat(&app, &credential).await;
    assert_eq!(state(&app, mac).await, "deployed");
    walk(&app, mac, &["active"]).await;
}

/// An appliance whose lost window is one second, with a host image in its repository and
/// `mac` enrolled by its ramdisk agent and given the role `host` (ready). Returns it and
/// the machine's inventory.
async fn lost_window_app_with_a_ready_host(mac: &str) -> (TestApp, Value) {
    let app = host_image_app("heartbeat_secs = 1\nmissed_beats = 1").await;
    let inventory = ready_host(&app, mac).await;
    (app, inventory)
}

/// An appliance with these `[agents]` keys and an image for the `host` role.
async fn host_image_app(agents: &str) -> TestApp {
    let app = TestApp::with(64 * 1024, agents).await;
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    upload_image(&app, "cosm-host.img.zst", &data).await;
    let (s, e) = app
        .call(
            "PUT",
            "/api/v1/images/cosm-host.img.zst/manifest",
            Some(manifest("host", &data)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    app
}

/// Enrols `mac` with the discovery ramdisk's inventory and gives it the `host` role: it is
/// `ready`, to be installed from the host image. Returns its inventory.
async fn ready_host(app: &TestApp, mac: &str) -> Value {
    let inventory = json!({"cpu": {"model": "QEMU", "sockets": 1, "cores": 2, "threads": 2}, "memory_bytes": 4u64 << 30,
        "disks": [{"name": "vda", "size_bytes": 10u64 << 30}], "firmware": "uefi", "kernel": "6.1.0"});
    let enroll = app.enroll_token().await;
    let (s, v) = app
        .call_as(
            Some(&enroll),
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": inventory.clone()})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call(
            "PUT",
            &format!("/api/v1/machines/{mac}/role"),
            Some(json!({"role": "host"})),
        )
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{v}"
    );
    inventory
}

/// `ready` → plan fetched → enrolled and reported: `deployed`. Returns the installed
/// agent's credential.
async fn install(app: &TestApp, mac: &str, inventory: Value) -> String {
    let url = install_url(app, mac).await.expect("an image install");
    let (s, _, plan) = get_text(app, url.strip_prefix("http://192.0.2.1:8080").unwrap(), &[]).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let token = url.split("token=").nth(1).unwrap().to_string();
    enrol_and_report(app, &token, mac, inventory).await
}

/// A machine whose installed system never starts its agent does not stay `deployed`
/// forever: `agents.first_boot_secs` after its install report it is `failed`, and its
/// timeline says why and what it did last. One whose agent beats in time is `active` and
/// stays so; a failed one can be installed again.
#[tokio::test]
async fn an_installed_system_whose_agent_never_beats_fails_at_the_first_boot_deadline() {
    let app = host_image_app("heartbeat_secs = 1\nmissed_beats = 3\nfirst_boot_secs = 4").await;
    let (silent, beating) = ("52:54:00:00:1a:06", "52:54:00:00:1a:07");
    let inventory = ready_host(&app, silent).await;
    let silent_credential = install(&app, silent, inventory).await;
    let inventory = ready_host(&app, beating).await;
    let credential = install(&app, beating, inventory).await;
    let reported = std::time::Instant::now();

    // Before the deadline both are deployed; the beating one's agent beats every second.
    let mut failed_after = None;
    while reported.elapsed() < std::time::Duration::from_secs(30) {
        beat(&app, &credential).await;
        let elapsed = reported.elapsed();
        let st = state(&app, silent).await;
        if st == "failed" {
            failed_after = Some(elapsed);
            break;
        }
        assert_eq!(st, "deployed", "{elapsed:?} after the report");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let failed_after = failed_after.expect("still deployed 30 s after the report (deadline 4 s)");
    assert!(
        failed_after >= std::time::Duration::from_secs(4),
        "failed {failed_after:?} after the report, before its 4 s deadline"
    );
    assert_eq!(state(&app, beating).await, "active");
    let (_, ev) = app
        .call("GET", &format!("/api/v1/machines/{silent}/events"), None)
        .await;
    let last = ev.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["to_state"], "failed", "{ev}");
    let message = last["message"].as_str().unwrap();
    for words in [
        "did not beat within 4 s of the install report (agents.first_boot_secs)",
        "last on its timeline: install finished: written to /dev/vda",
    ] {
        assert!(message.contains(words), "{words:?} not in {message:?}");
    }

    // Its agent beating late does not make it active (a failed install is the operator's
    // to look at); it is installed again.
    beat(&app, &silent_credential).await;
    assert_eq!(state(&app, silent).await, "failed");
    let (s, m) = app
        .call("POST", &format!("/api/v1/machines/{silent}/redeploy"), None)
        .await;
    assert_eq!(
        (s, m["state"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{m}"
    );
}

/// A ready machine told to deploy reboots into its installer; its agent stops beating and,
/// on a short lost window, it is declared lost before its installer asks for anything. It
/// still boots as what it was: its boot script installs it, the install token it already
/// had keeps working (being lost is not a new install round), and the plan takes it on to
/// `deploying`.
#[tokio::test]
async fn a_ready_machine_lost_while_rebooting_into_its_installer_is_still_installed() {
    let mac = "52:54:00:00:1a:05";
    let (app, _) = lost_window_app_with_a_ready_host(mac).await;
    let before = install_url(&app, mac).await.expect("an image install");
    let mut waited = 0;
    while state(&app, mac).await != "lost" {
        assert!(waited < 100, "not declared lost within 10 s of silence");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    let now = install_url(&app, mac)
        .await
        .expect("a machine lost while ready boots its image installer");
    assert_eq!(now, before, "the same install round, the same token");
    let (s, _, plan) = get_text(
        &app,
        before.strip_prefix("http://192.0.2.1:8080").unwrap(),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(state(&app, mac).await, "deploying");
    let (_, ev) = app
        .call("GET", &format!("/api/v1/machines/{mac}/events"), None)
        .await;
    let ev = ev.to_string();
    assert!(ev.contains("its installer is heard from"), "{ev}");
}

/// A machine an image install made `deployed` reboots into its installed system, which
/// takes a real server minutes: it is not declared lost meanwhile, and a host is not
/// offered to VM placement (nor watched by HA) until its installed agent beats.
#[tokio::test]
async fn a_machine_booting_its_installed_system_is_not_lost_nor_a_host_until_it_beats() {
    let mac = "52:54:00:00:1a:04";
    let (app, inventory) = lost_window_app_with_a_ready_host(mac).await;
    let url = install_url(&app, mac).await.expect("an image install");
    let (s, _, plan) = get_text(
        &app,
        url.strip_prefix("http://192.0.2.1:8080").unwrap(),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    let token = url.split("token=").nth(1).unwrap().to_string();
    let credential = enrol_and_report(&app, &token, mac, inventory).await;

    // Three lost windows of silence: still deployed, and no host for a VM, even with its
    // hypervisor reported.
    let report = json!({"capacity": {"vcpus": 2, "memory_mib": 4096, "storage_bytes": 8u64 << 30,
                                     "migration_uri": "qemu+tcp://192.0.2.104/system"},
                        "domains": [], "results": []});
    let (s, e) = app
        .call_as(Some(&credential), "POST", "/api/v1/agent/vms", Some(report))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(state(&app, mac).await, "deployed");
    let vm = json!({"name": "early", "kind": "tcg", "vcpus": 1, "memory_mib": 64, "host": mac});
    let (s, e) = app.call("POST", "/api/v1/vms", Some(vm.clone())).await;
    assert!(
        s.is_client_error() && e.to_string().contains("booting its installed system"),
        "a VM was placed on a host still booting: {e}"
    );

    // Its installed agent beats: active, and a host.
    beat(&app, &credential).await;
    assert_eq!(state(&app, mac).await, "active");
    let (s, e) = app.call("POST", "/api/v1/vms", Some(vm)).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
}
