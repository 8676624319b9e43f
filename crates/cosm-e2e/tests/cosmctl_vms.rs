//! `cosmctl vms` and `cosmctl hosts` as an operator uses them: the real cosmctl binary
//! against a real appliance process. The VM host here is a stand-in made of HTTP calls with
//! a real agent credential (a machine of role `host`, its agent's VM reports), so that the
//! states `--wait` follows can be driven from the test; the real agent on libvirt is
//! tested elsewhere.

use cosm_e2e::{client, ok_stdout, Appliance};
use serde_json::{json, Value};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = "52:54:00:00:c0:01";
const HOST2: &str = "52:54:00:00:c0:02";

/// A deployed machine of role `host` whose "agent" reports a hypervisor; answers its agent
/// credential.
fn make_host(app: &Appliance, mac: &str) -> String {
    let http = client(&app.token());
    let base = app.url();
    let post = |path: &str, body: Value| -> Value {
        let resp = http
            .post(format!("{base}/api/v1{path}"))
            .json(&body)
            .send()
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    };
    post("/machines", json!({"mac": mac, "role": "host"}));
    for to in ["deploying", "deployed"] {
        post(&format!("/machines/{mac}/state"), json!({"state": to}));
    }
    let enrolled = post(
        "/agent/enroll",
        json!({"mac": mac, "inventory": {"cpu": {"model": "x", "sockets": 1, "cores": 4, "threads": 8}, "memory_bytes": 8u64 << 30}}),
    );
    let cred = enrolled["credential"].as_str().unwrap().to_string();
    report_results(app, &cred, json!([]), json!([]));
    cred
}

/// The host's agent reports every domain it has, and notes.
fn report(app: &Appliance, cred: &str, domains: Value, notes: Value) {
    send_report(app, cred, domains, notes, json!([]));
}

/// The host's agent reports every domain it has, and the outcomes of operations.
fn report_results(app: &Appliance, cred: &str, domains: Value, results: Value) {
    send_report(app, cred, domains, json!([]), results);
}

fn send_report(app: &Appliance, cred: &str, domains: Value, notes: Value, results: Value) {
    let body = json!({
        "capacity": {"vcpus": 8, "memory_mib": 8192, "storage_bytes": 100u64 << 30,
                     "migration_uri": "qemu+tcp://hv-1/system"},
        "domains": domains,
        "notes": notes,
        "results": results,
    });
    let resp = client(cred)
        .post(format!("{}/api/v1/agent/vms", app.url()))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "{}", resp.text().unwrap());
}

/// `cosmctl` started in the background (for `--wait`).
fn spawn_cosmctl(app: &Appliance, args: &[&str]) -> Child {
    app.command(&cosm_e2e::bin("cosmctl"))
        .args(args)
        .env("COSM_URL", app.url())
        .env("COSM_TOKEN", app.token())
        .env("HOME", app.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a background cosmctl to exit.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "cosmctl did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls the API until VM `name` is in `state` (the appliance applies reports at once,
/// but a spawned cosmctl needs a moment to have created its VM).
fn until_vm(app: &Appliance, name: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(v) = app.api(&format!("/api/v1/vms/{name}")) {
            if pred(&v) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "VM {name} never got there");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cosmctl_vms_without_a_host_refuses_with_the_409_then_lists_shows_and_waits() {
    // Heartbeats are not sent here: a long interval keeps the stand-in hosts from `lost`.
    let app = Appliance::start_with(None, "[agents]\nheartbeat_secs = 600\n").unwrap();

    // No host at all: the 409 no_host message is printed and the exit status is 1.
    let out = app.cosmctl(&["vms", "create", "early", "--vcpus", "1", "--memory", "512M"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ")
            && err.contains("there is no host")
            && err.contains("[HTTP 409 no_host]"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Bad input never reaches the appliance: a usage error naming the flag.
    let out = app.cosmctl(&["vms", "create", "x", "--vcpus", "1", "--memory", "2X"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--memory"), "{}", stderr(&out));
    let out = app.cosmctl(&["hosts"]);
    assert!(ok_stdout(&out).is_empty());
    assert!(stderr(&out).contains("no VM hosts"), "{}", stderr(&out));
    let list = ok_stdout(&app.cosmctl(&["--json", "vms", "list"]));
    assert_eq!(serde_json::from_str::<Value>(&list).unwrap(), json!([]));

    // With a host: created, scheduled there; listed and shown in tables and JSON.
    let cred = make_host(&app, HOST);
    let out = ok_stdout(&app.cosmctl(&[
        "vms", "create", "web-01", "--kind", "tcg", "--vcpus", "2", "--memory", "1G", "--nic",
        "br0", "--disk", "blank=2G",
    ]));
    assert!(
        out.contains(&format!("created VM web-01 on host {HOST} (scheduled)")),
        "{out}"
    );
    let table = ok_stdout(&app.cosmctl(&["vms", "list"]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "STATE", "POWER", "HOST", "VCPUS", "MEMORY", "SINCE", "MESSAGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..7],
        ["web-01", "scheduled", "running", HOST, "2", "1", "GiB"],
        "{table}"
    );
    let json_list: Value =
        serde_json::from_str(&ok_stdout(&app.cosmctl(&["--json", "vms", "list"]))).unwrap();
    assert_eq!(json_list[0]["name"], "web-01");
    assert_eq!(json_list[0]["memory_mib"], 1024);
    assert_eq!(json_list[0]["disks"][0]["blank"]["size_bytes"], 2u64 << 30);
    let filtered = ok_stdout(&app.cosmctl(&["vms", "list", "--state", "running"]));
    assert!(filtered.is_empty(), "{filtered}");

    let show = ok_stdout(&app.cosmctl(&["vms", "show", "web-01"]));
    for want in [
        "QEMU TCG",
        "scheduled since",
        HOST,
        "blank 2.0 GiB",
        "on br0",
        "TIME",
        "→ scheduled",
    ] {
        assert!(show.contains(want), "{want} missing:\n{show}");
    }
    let shown: Value = serde_json::from_str(&ok_stdout(
        &app.cosmctl(&["--json", "vms", "show", "web-01"]),
    ))
    .unwrap();
    assert_eq!(shown["host"], HOST);
    let out = app.cosmctl(&["vms", "show", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));

    let hosts = ok_stdout(&app.cosmctl(&["hosts"]));
    for want in [HOST, "1", "2/8", "1 GiB/8 GiB", "qemu+tcp://hv-1/system"] {
        assert!(hosts.contains(want), "{want} missing:\n{hosts}");
    }
    let hosts: Value =
        serde_json::from_str(&ok_stdout(&app.cosmctl(&["--json", "hosts"]))).unwrap();
    assert_eq!(hosts[0]["vms"], 1);

    // --wait follows the VM until its host reports it running.
    let waiting = spawn_cosmctl(&app, &["vms", "start", "web-01", "--wait=30"]);
    std::thread::sleep(Duration::from_millis(700));
    report(
        &app,
        &cred,
        json!([{"name": "web-01", "power": "running", "managed": true,
                "console": ["boot: ok", "login:"]}]),
        json!([]),
    );
    let out = finish(waiting);
    assert!(
        ok_stdout(&out).starts_with("VM web-01 is running"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("waiting for VM web-01 to be running"),
        "{}",
        stderr(&out)
    );
    let console = ok_stdout(&app.cosmctl(&["vms", "console", "web-01", "--lines", "1"]));
    assert_eq!(console, "login:\n");

    // A VM its host cannot make ends the wait with its reason and exit status 1.
    let waiting = spawn_cosmctl(
        &app,
        &[
            "vms",
            "create",
            "broken",
            "--vcpus",
            "1",
            "--memory",
            "256M",
            "--wait=30",
        ],
    );
    until_vm(&app, "broken", |v| v["state"] == "scheduled");
    report(
        &app,
        &cred,
        json!([{"name": "web-01", "power": "running", "managed": true}]),
        json!([{"vm": "broken", "message": "image sha256 mismatch", "failed": true}]),
    );
    let out = finish(waiting);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: VM broken failed: image sha256 mismatch"),
        "{}",
        stderr(&out)
    );

    // A wait that runs out says so, and the operation goes on.
    let out = app.cosmctl(&["vms", "stop", "web-01", "--wait=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("gave up after 1 s waiting for VM web-01 to be stopped"),
        "{}",
        stderr(&out)
    );

    // Migrate --wait: done when the source reports the migration, with both hosts.
    let cred2 = make_host(&app, HOST2);
    ok_stdout(&app.cosmctl(&["vms", "start", "web-01"]));
    report(
        &app,
        &cred,
        json!([{"name": "web-01", "power": "running", "managed": true}]),
        json!([]),
    );
    let waiting = spawn_cosmctl(&app, &["vms", "migrate", "web-01", "--wait=30"]);
    until_vm(&app, "web-01", |v| v["state"] == "migrating");
    let vm = app.api("/api/v1/vms/web-01").unwrap();
    let op = vm["pending_ops"][0]["id"].as_u64().unwrap();
    report_results(
        &app,
        &cred,
        json!([]),
        json!([{"vm": "web-01", "id": op, "ok": true}]),
    );
    let out = finish(waiting);
    let said = ok_stdout(&out);
    assert!(
        said.starts_with(&format!("VM web-01 live-migrated: {HOST} → {HOST2} in ")),
        "{said}{}",
        stderr(&out)
    );

    // Delete --wait: gone once its host no longer reports the domain.
    let waiting = spawn_cosmctl(&app, &["vms", "delete", "web-01", "--wait=30"]);
    until_vm(&app, "web-01", |v| v["state"] == "deleting");
    report(&app, &cred2, json!([]), json!([]));
    let out = finish(waiting);
    assert!(
        ok_stdout(&out).starts_with("deleted VM web-01"),
        "{}",
        stderr(&out)
    );
}
