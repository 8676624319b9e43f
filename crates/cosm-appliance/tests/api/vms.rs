//! Virtual machines through the API (issue 12): placement over the hosts' reports, the
//! desired state a host's agent gets, the states its reports move, live migration's two
//! steps, and input errors. The agents here are HTTP calls with real agent credentials;
//! the real agent on a real libvirtd is `cosm-e2e/tests/vms.rs`.

use crate::common::{assert_error, upload_image, walk, TestApp};
use axum::http::StatusCode;
use serde_json::{json, Value};

/// A deployed machine of role `host` with its agent's credential.
pub(crate) struct Host {
    pub(crate) mac: String,
    pub(crate) cred: String,
}

pub(crate) async fn host(app: &TestApp, n: u8, memory_mib: u64) -> Host {
    let mac = format!("52:54:00:00:c0:{n:02x}");
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/machines",
            Some(json!({"mac": mac, "role": "host"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    walk(app, &mac, &["deploying", "deployed"]).await;
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/agent/enroll",
            Some(json!({"mac": mac, "inventory": {"cpu": {"model": "x", "sockets": 1, "cores": 4, "threads": 8}, "memory_bytes": memory_mib << 20}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let h = Host {
        mac,
        cred: v["credential"].as_str().unwrap().to_string(),
    };
    report(app, &h, memory_mib, json!([]), json!([])).await;
    h
}

async fn report(app: &TestApp, h: &Host, memory_mib: u64, domains: Value, results: Value) {
    let body = json!({
        "capacity": {"vcpus": 8, "memory_mib": memory_mib, "storage_bytes": 100u64 << 30,
                     "migration_uri": format!("qemu+tcp://{}/system", h.mac)},
        "domains": domains,
        "results": results,
    });
    let (s, v) = app
        .call_as(Some(&h.cred), "POST", "/api/v1/agent/vms", Some(body))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

fn running(name: &str) -> Value {
    json!({"name": name, "power": "running", "managed": true})
}

pub(crate) async fn create(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.call("POST", "/api/v1/vms", Some(body)).await
}

pub(crate) async fn vm(app: &TestApp, name: &str) -> Value {
    let (s, v) = app.call("GET", &format!("/api/v1/vms/{name}"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

pub(crate) async fn desired(app: &TestApp, h: &Host) -> Value {
    let (s, v) = app
        .call_as(Some(&h.cred), "GET", "/api/v1/agent/desired", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn timeline(app: &TestApp, name: &str) -> Vec<String> {
    let (s, v) = app
        .call("GET", &format!("/api/v1/vms/{name}/events"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

fn small(name: &str) -> Value {
    json!({"name": name, "kind": "tcg", "vcpus": 1, "memory_mib": 1024})
}

#[tokio::test]
async fn placement_spreads_vms_refuses_with_each_hosts_reason_and_keeps_anti_affinity() {
    let app = TestApp::new().await;
    // No host at all: 409 that says what a host is.
    let (s, v) = create(&app, small("early")).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    assert_eq!(v["code"], "no_host");
    assert!(
        v["message"].as_str().unwrap().contains("there is no host"),
        "{v}"
    );

    let hosts = [
        host(&app, 1, 4096).await,
        host(&app, 2, 4096).await,
        host(&app, 3, 4096).await,
    ];
    for i in 0..6 {
        let (s, v) = create(&app, small(&format!("web-{i}"))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["state"], "scheduled");
    }
    let (s, listed) = app.call("GET", "/api/v1/hosts", None).await;
    assert_eq!(s, StatusCode::OK);
    let per_host: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["vms"].as_u64().unwrap())
        .collect();
    assert_eq!(per_host, vec![2, 2, 2], "{listed}");
    for h in &hosts {
        let d = desired(&app, h).await;
        assert_eq!(d["vms"].as_array().unwrap().len(), 2, "{d}");
    }
    let (_, _, metrics) = crate::common::get_text(&app, "/metrics", &[]).await;
    assert!(metrics.contains("vms{state=\"scheduled\"} 6"), "{metrics}");

    // 2 GiB left on each host: 3 GiB fits nowhere, and the answer says why per host.
    let (s, v) = create(&app, json!({"name": "big", "vcpus": 1, "memory_mib": 3072})).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    let msg = v["message"].as_str().unwrap();
    for h in &hosts {
        assert!(
            msg.contains(&format!("{}: 2048 MiB free, 3072 needed", h.mac)),
            "{msg}"
        );
    }
    let (s, _) = app.call("GET", "/api/v1/vms/big", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused VM is not recorded");

    // Anti-affinity: three of a group on three hosts, the fourth has nowhere to go.
    let mut on = std::collections::BTreeSet::new();
    for i in 0..3 {
        let mut b = json!({"name": format!("db-{i}"), "vcpus": 1, "memory_mib": 256});
        b["anti_affinity"] = json!("db");
        let (s, v) = create(&app, b).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        on.insert(v["host"].as_str().unwrap().to_string());
    }
    assert_eq!(on.len(), 3, "{on:?}");
    let (s, v) = create(
        &app,
        json!({"name": "db-3", "vcpus": 1, "memory_mib": 256, "anti_affinity": "db"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("anti-affinity group \"db\""),
        "{v}"
    );

    // A host asked for by MAC, where the VM does not fit: the reason for that host.
    let (s, v) = create(
        &app,
        json!({"name": "pinned", "vcpus": 1, "memory_mib": 2048, "host": hosts[0].mac}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains(&hosts[0].mac),
        "{v}"
    );
}

#[tokio::test]
async fn a_vm_follows_its_agents_reports_through_every_state() {
    let app = TestApp::new().await;
    let h = host(&app, 1, 8192).await;
    let gen0 = desired(&app, &h).await["generation"].as_u64().unwrap();
    let (s, v) = create(&app, small("vm1")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["host"], h.mac.as_str());
    let nic_free = v["nics"].as_array().unwrap().is_empty();
    assert!(nic_free);

    // The heartbeat says there is something new; the desired state has the VM.
    let (s, hb) = app
        .call_as(
            Some(&h.cred),
            "POST",
            "/api/v1/agent/heartbeat",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let d = desired(&app, &h).await;
    assert!(hb["desired_generation"].as_u64().unwrap() > gen0);
    assert_eq!(d["generation"], hb["desired_generation"]);
    assert_eq!(d["vms"][0]["name"], "vm1");
    assert_eq!(d["vms"][0]["power"], "running");

    report(
        &app,
        &h,
        8192,
        json!([running("vm1"), {"name": "not-ours", "power": "running", "managed": false}]),
        json!([]),
    )
    .await;
    assert_eq!(vm(&app, "vm1").await["state"], "running");
    let (_, hosts) = app.call("GET", "/api/v1/hosts", None).await;
    assert_eq!(hosts[0]["unmanaged_domains"], json!(["not-ours"]));

    // Stop: the wish changes at once, the state when the agent reports the domain off.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/vms/vm1/stop",
            Some(json!({"timeout_secs": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "running");
    let d = desired(&app, &h).await;
    assert_eq!(d["vms"][0]["power"], "stopped");
    assert_eq!(d["vms"][0]["stop_timeout_secs"], 5);
    report(
        &app,
        &h,
        8192,
        json!([{"name": "vm1", "power": "shut_off", "managed": true}]),
        json!([]),
    )
    .await;
    assert_eq!(vm(&app, "vm1").await["state"], "stopped");
    // Reboot needs a running VM.
    let (s, v) = app.call("POST", "/api/v1/vms/vm1/reboot", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);

    let (s, _) = app.call("POST", "/api/v1/vms/vm1/start", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    report(&app, &h, 8192, json!([running("vm1")]), json!([])).await;
    assert_eq!(vm(&app, "vm1").await["state"], "running");

    // A reboot is an operation with an id, carried out once and reported once.
    let (s, v) = app.call("POST", "/api/v1/vms/vm1/reboot", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let op = v["pending_ops"][0]["id"].as_u64().unwrap();
    let d = desired(&app, &h).await;
    assert_eq!(d["vms"][0]["ops"][0]["op"], "reboot");
    report(
        &app,
        &h,
        8192,
        json!([running("vm1")]),
        json!([{"vm": "vm1", "id": op, "ok": true}]),
    )
    .await;
    let v = vm(&app, "vm1").await;
    assert_eq!(v["pending_ops"], json!([]));

    // A snapshot op; the snapshot list is what the host reports.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/vms/vm1/snapshots",
            Some(json!({"name": "s1"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let op = v["pending_ops"][0]["id"].as_u64().unwrap();
    report(
        &app,
        &h,
        8192,
        json!([{"name": "vm1", "power": "running", "managed": true, "snapshots": ["s1"]}]),
        json!([{"vm": "vm1", "id": op, "ok": true}]),
    )
    .await;
    let (_, snaps) = app.call("GET", "/api/v1/vms/vm1/snapshots", None).await;
    assert_eq!(snaps, json!([{"name": "s1"}]));
    let (s, v) = app
        .call("POST", "/api/v1/vms/vm1/snapshots/nope/revert", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // A note that it could not be made fails it, with the reason.
    report_note(&app, &h, "vm1", "image sha256 mismatch", true).await;
    let v = vm(&app, "vm1").await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["message"], "image sha256 mismatch");

    // Delete: `deleting` while the domain exists, gone when the host no longer has it.
    let (s, v) = app.call("DELETE", "/api/v1/vms/vm1", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "deleting");
    assert_eq!(desired(&app, &h).await["vms"][0]["power"], Value::Null);
    report(&app, &h, 8192, json!([running("vm1")]), json!([])).await;
    assert_eq!(vm(&app, "vm1").await["state"], "deleting");
    report(&app, &h, 8192, json!([]), json!([])).await;
    let (s, _) = app.call("GET", "/api/v1/vms/vm1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(desired(&app, &h)
        .await
        .get("vms")
        .is_none_or(|v| v == &json!([])));
}

async fn report_note(app: &TestApp, h: &Host, vm: &str, message: &str, failed: bool) {
    let body = json!({
        "capacity": {"vcpus": 8, "memory_mib": 8192, "storage_bytes": 1u64 << 40},
        "domains": [],
        "notes": [{"vm": vm, "message": message, "failed": failed}],
    });
    let (s, v) = app
        .call_as(Some(&h.cred), "POST", "/api/v1/agent/vms", Some(body))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

#[tokio::test]
async fn a_live_migration_moves_the_vm_only_when_its_source_reports_it_done() {
    let app = TestApp::new().await;
    let a = host(&app, 1, 8192).await;
    let (s, v) = create(
        &app,
        json!({"name": "mover", "vcpus": 1, "memory_mib": 512, "host": a.mac}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let b = host(&app, 2, 8192).await;
    // Not running yet: refused.
    let (s, v) = app.call("POST", "/api/v1/vms/mover/migrate", None).await;
    assert_error(s, &v, StatusCode::CONFLICT, None);
    report(&app, &a, 8192, json!([running("mover")]), json!([])).await;
    // To its own host: refused with the field.
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/vms/mover/migrate",
            Some(json!({"host": a.mac})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some("host"));

    let (s, v) = app.call("POST", "/api/v1/vms/mover/migrate", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "migrating");
    let op = &v["pending_ops"][0];
    assert_eq!(op["op"], "migrate");
    assert_eq!(op["to"], b.mac.as_str());
    assert_eq!(op["uri"], format!("qemu+tcp://{}/system", b.mac));
    // The destination is not told until the VM is its own: it never starts a copy.
    assert!(desired(&app, &b).await.get("vms").is_none());
    // Its arrival shows on the destination as a domain it does not manage; nothing moves.
    report(
        &app,
        &b,
        8192,
        json!([{"name": "mover", "power": "running", "managed": false}]),
        json!([]),
    )
    .await;
    assert_eq!(vm(&app, "mover").await["host"], a.mac.as_str());
    // Other operations wait for the migration.
    let (s, _) = app.call("POST", "/api/v1/vms/mover/reboot", None).await;
    assert_eq!(s, StatusCode::CONFLICT);

    let id = op["id"].as_u64().unwrap();
    report(
        &app,
        &a,
        8192,
        json!([]),
        json!([{"vm": "mover", "id": id, "ok": true}]),
    )
    .await;
    let v = vm(&app, "mover").await;
    assert_eq!(v["host"], b.mac.as_str());
    assert_eq!(v["state"], "running");
    assert_eq!(desired(&app, &b).await["vms"][0]["name"], "mover");
    assert!(desired(&app, &a).await.get("vms").is_none());
    let tl = timeline(&app, "mover").await;
    assert!(
        tl[0].starts_with("recorded (1 vCPUs, 512 MiB")
            && tl[1].starts_with(&format!("placed on {}", a.mac)),
        "{tl:?}"
    );
    assert!(
        tl.iter()
            .any(|m| m.starts_with(&format!("live-migrated from {} to {}", a.mac, b.mac))),
        "{tl:?}"
    );

    // A failed migration keeps the host and says why; snapshots block a migration.
    let (s, v) = app.call("POST", "/api/v1/vms/mover/migrate", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["pending_ops"][0]["id"].as_u64().unwrap();
    report(
        &app,
        &b,
        8192,
        json!([running("mover")]),
        json!([{"vm": "mover", "id": id, "ok": false, "message": "Migration without shared storage is unsafe"}]),
    )
    .await;
    let v = vm(&app, "mover").await;
    assert_eq!(
        (v["host"].as_str(), v["state"].as_str()),
        (Some(b.mac.as_str()), Some("running"))
    );
    assert!(v["message"].as_str().unwrap().contains("unsafe"), "{v}");
    report(
        &app,
        &b,
        8192,
        json!([{"name": "mover", "power": "running", "managed": true, "snapshots": ["s1"]}]),
        json!([]),
    )
    .await;
    let (s, v) = app.call("POST", "/api/v1/vms/mover/migrate", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("snapshot"), "{v}");
}

#[tokio::test]
async fn bad_vm_requests_are_refused_with_the_field_and_images_are_pinned() {
    let app = TestApp::new().await;
    let h = host(&app, 1, 8192).await;
    for (body, field) in [
        (json!({"name": "a b", "vcpus": 1, "memory_mib": 64}), "name"),
        (json!({"name": "ok", "vcpus": 0, "memory_mib": 64}), "vcpus"),
        (
            json!({"name": "ok", "vcpus": 1, "memory_mib": 1}),
            "memory_mib",
        ),
        (
            json!({"name": "ok", "vcpus": 1, "memory_mib": 64, "kind": "vmware"}),
            "kind",
        ),
        (
            json!({"name": "ok", "vcpus": 1, "memory_mib": 64, "disks": [{"image": {"image": "nope.qcow2"}}]}),
            "disks",
        ),
        (
            json!({"name": "ok", "vcpus": 1, "memory_mib": 64, "kind": "xen-pv"}),
            "boot",
        ),
        (
            json!({"name": "ok", "vcpus": 1, "memory_mib": 64, "nics": [{"bridge": "a-very-long-bridge"}]}),
            "nics[0].bridge",
        ),
    ] {
        let (s, v) = create(&app, body.clone()).await;
        assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
        let _ = &body;
    }
    let (s, v) = app.call("GET", "/api/v1/vms/a%20b", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("name"));

    upload_image(&app, "base.qcow2", b"pretend qcow2").await;
    upload_image(&app, "other.img", b"not for agents").await;
    let (s, v) = create(
        &app,
        json!({"name": "vm1", "vcpus": 1, "memory_mib": 64,
               "disks": [{"image": {"image": "base.qcow2"}}, {"blank": {"size_bytes": 1u64 << 30}}],
               "nics": [{"bridge": "br0"}, {"bridge": "br0", "mac": "52:54:00:12:34:56"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["disks"][0]["image"]["sha256"],
        crate::common::sha256_hex(b"pretend qcow2")
    );
    assert_ne!(v["nics"][0]["mac"], v["nics"][1]["mac"]);
    let (s, v2) = create(
        &app,
        json!({"name": "vm2", "vcpus": 1, "memory_mib": 64, "nics": [{"bridge": "br0", "mac": "52:54:00:12:34:56"}]}),
    )
    .await;
    assert_error(s, &v2, StatusCode::UNPROCESSABLE_ENTITY, Some("nics"));
    let (s, v2) = create(&app, json!({"name": "vm1", "vcpus": 1, "memory_mib": 64})).await;
    assert_error(s, &v2, StatusCode::CONFLICT, None);

    // The host's agent downloads its VMs' images, and no other.
    let (s, _) = app
        .call_as(
            Some(&h.cred),
            "GET",
            "/api/v1/agent/images/base.qcow2",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app
        .call_as(Some(&h.cred), "GET", "/api/v1/agent/images/other.img", None)
        .await;
    assert_error(s, &v, StatusCode::FORBIDDEN, None);
    // Operators cannot post as an agent.
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/agent/vms",
            Some(json!({"capacity": {"vcpus": 1, "memory_mib": 1, "storage_bytes": 1}, "domains": []})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The list pages by name.
    let (s, v) = app
        .call("GET", "/api/v1/vms?limit=1&state=scheduled", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, v) = app.call("GET", "/api/v1/vms?state=sleeping", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, Some("state"));
}

#[tokio::test]
async fn the_console_shows_the_last_lines_its_host_reported() {
    let app = TestApp::new().await;
    let h = host(&app, 1, 8192).await;
    let (s, _) = create(&app, small("talker")).await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, c) = app.call("GET", "/api/v1/vms/talker/console", None).await;
    assert_eq!(c["lines"], json!([]));
    assert!(c["read_at"].is_null());
    let lines: Vec<String> = (0..300).map(|i| format!("counter {i}")).collect();
    report(
        &app,
        &h,
        8192,
        json!([{"name": "talker", "power": "running", "managed": true, "console": lines}]),
        json!([]),
    )
    .await;
    let (s, c) = app
        .call("GET", "/api/v1/vms/talker/console?lines=3", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(
        c["lines"],
        json!(["counter 297", "counter 298", "counter 299"])
    );
    // A report without console lines keeps the last ones.
    report(&app, &h, 8192, json!([running("talker")]), json!([])).await;
    let (_, c) = app
        .call("GET", "/api/v1/vms/talker/console?lines=1", None)
        .await;
    assert_eq!(c["lines"], json!(["counter 299"]));
    let (s, c) = app
        .call("GET", "/api/v1/vms/talker/console?lines=0", None)
        .await;
    assert_error(s, &c, StatusCode::BAD_REQUEST, Some("lines"));
}
