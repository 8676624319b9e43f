//! The appliance and cosmctl as an operator uses them: real processes on loopback.

use cosm_e2e::{bin, ok_stdout, Appliance};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn a_machine_added_with_cosmctl_survives_a_restart() {
    let mut app = Appliance::start().unwrap();
    assert!(app.log_text().contains("first admin API token created"));
    let mode = std::fs::metadata(app.dir.path().join("data/admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token must be private");

    ok_stdout(&app.cosmctl(&["machines", "add", "52:54:00:aa:bb:01", "--role", "host"]));
    let list = ok_stdout(&app.cosmctl(&["machines", "list"]));
    assert!(
        list.contains("52:54:00:aa:bb:01") && list.contains("host") && list.contains("ready"),
        "{list}"
    );

    assert!(
        app.stop().unwrap(),
        "SIGTERM must give a clean exit; log:\n{}",
        app.log_text()
    );
    app.restart().unwrap();
    assert!(
        !app.log_text().contains("first admin API token created"),
        "the token is shown only on the first start"
    );

    let json = ok_stdout(&app.cosmctl(&["--json", "machines", "list"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["mac"], "52:54:00:aa:bb:01");
    assert_eq!(v[0]["role"], "host");
    assert_eq!(v[0]["state"], "ready");

    let events = ok_stdout(&app.cosmctl(&["events", "52:54:00:aa:bb:01"]));
    assert!(events.contains("ready"), "{events}");
}

#[test]
fn cosmctl_reports_api_errors_and_exits_nonzero() {
    let app = Appliance::start().unwrap();
    ok_stdout(&app.cosmctl(&["machines", "add", "52:54:00:aa:bb:02"]));
    let out = app.cosmctl(&["machines", "set-state", "52:54:00:aa:bb:02", "active"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot move from discovered to active") && err.contains("409"),
        "{err}"
    );

    let out = app.cosmctl(&["machines", "add", "52:54:00:aa:bb:03", "--role", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown role") && err.contains("role"),
        "{err}"
    );

    // A malformed MAC is refused before any request is made.
    let out = app.cosmctl(&["machines", "show", "not-a-mac"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_config_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "data_dir = \"d\"\n[api]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
    )
    .unwrap();
    let out = Command::new(bin("cosm-appliance"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&cfg.display().to_string()) && err.contains("api.lisen"),
        "{err}"
    );
    assert!(
        !dir.path().join("d").exists(),
        "a refused config must not create anything"
    );

    let out = Command::new(bin("cosm-appliance"))
        .args(["serve", "--config", "/nonexistent/cosm.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cosm.toml"));
}

#[test]
fn a_second_appliance_on_the_same_data_dir_is_refused() {
    let app = Appliance::start().unwrap();
    let out = Command::new(bin("cosm-appliance"))
        .args(["serve", "--config"])
        .arg(app.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another cosm-appliance may be running"),
        "{err}"
    );
}

#[test]
fn every_binary_answers_help() {
    for (name, words) in [
        (
            "cosm-appliance",
            &["serve", "check-config", "create-token"][..],
        ),
        (
            "cosmctl",
            &["machines", "roles", "rules", "events", "vms", "hosts"][..],
        ),
        ("cosm-agent", &["Usage"][..]),
    ] {
        let out = Command::new(bin(name)).arg("--help").output().unwrap();
        let text = ok_stdout(&out);
        for w in words {
            assert!(text.contains(w), "{name} --help lacks {w}:\n{text}");
        }
    }
}

#[test]
fn the_example_config_is_accepted() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/appliance.toml");
    let out = Command::new(bin("cosm-appliance"))
        .args(["check-config", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let text = ok_stdout(&out);
    assert!(
        text.contains("api.listen") && text.contains("127.0.0.1:8080"),
        "{text}"
    );
}

/// Hardening (issue 11, item 16): an emptied store is refused with a clear error, and the
/// admin and enrol tokens of the store it replaced are not overwritten (before, an empty
/// file was taken for a first start and both token files were replaced).
#[test]
fn an_empty_store_is_refused_and_the_token_files_are_kept() {
    let mut app = Appliance::start().unwrap();
    assert!(app.stop().unwrap(), "the appliance stops cleanly");
    let data = app.dir.path().join("data");
    let admin = std::fs::read(data.join("admin.token")).unwrap();
    let enroll = std::fs::read(data.join("enroll.token")).unwrap();
    std::fs::write(data.join("cosm.redb"), b"").unwrap();
    let mut child = Command::new(bin("cosm-appliance"))
        .args(["serve", "--config"])
        .arg(app.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: an appliance that took the empty file for a new store would keep serving.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the appliance started on an empty store instead of refusing it");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("empty (0 bytes)") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(std::fs::read(data.join("admin.token")).unwrap(), admin);
    assert_eq!(std::fs::read(data.join("enroll.token")).unwrap(), enroll);
    assert_eq!(std::fs::metadata(data.join("cosm.redb")).unwrap().len(), 0);
}

/// Hardening (issue 11, item 11): ~1,000 idle connections used to exhaust the appliance's
/// file descriptors (`/healthz` timed out, TFTP could not open sockets), and a connection
/// that sent nothing stayed open for good. Now a silent connection is closed after
/// `api.idle_timeout_secs`, at most `api.max_connections` are open at once, and the
/// API keeps answering while more than that many idle connections are held against it.
#[test]
fn idle_connections_are_bounded_and_closed() {
    use std::io::Read;
    use std::net::TcpStream;
    // The extra lines land in the config's [api] section.
    let app = Appliance::start_with(None, "max_connections = 40\nidle_timeout_secs = 2\n").unwrap();
    let (pid, addr) = (
        app.pid(),
        app.url().trim_start_matches("http://").to_string(),
    );
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();

    // A connection that sends nothing is closed by the server.
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let t = std::time::Instant::now();
    let n = silent.read(&mut [0u8; 64]).unwrap_or(0);
    assert_eq!(n, 0, "the server sent data to a silent connection");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "a silent connection was not closed within 8 s"
    );

    // 300 idle connections: the appliance holds at most 40 of them.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let held = fds();
    assert!(
        held <= before + 45,
        "{} descriptors open with 300 idle connections (was {before})",
        held
    );
    // The API still answers (the idle ones time out and free their slots).
    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/healthz")).send() {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz did not answer within 15 s while idle connections were held"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(idle);
}

/// Issue 11, item 12: lists come in pages of at most 1,000 (500 by default); cosmctl
/// follows the `Link` of each page, so `machines list` still shows every machine.
#[test]
fn cosmctl_lists_every_machine_across_pages() {
    const N: u64 = 1_100;
    let app = Appliance::start().unwrap();
    let url = app.url();
    let token = app.token();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (url, token) = (&url, &token);
            s.spawn(move || {
                let http = cosm_e2e::client(token);
                for i in (t..N).step_by(8) {
                    let mac = format!("52:54:00:10:{:02x}:{:02x}", i / 256, i % 256);
                    let resp = http
                        .post(format!("{url}/api/v1/machines"))
                        .json(&serde_json::json!({"mac": mac, "hostname": format!("n{i}")}))
                        .send()
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().unwrap());
                }
            });
        }
    });
    // One page alone is not everything: the appliance pages.
    let http = cosm_e2e::client(&token);
    let first = http.get(format!("{url}/api/v1/machines")).send().unwrap();
    assert!(
        first.headers().contains_key("link"),
        "no Link on a first page of {N}"
    );
    assert_eq!(first.json::<Vec<serde_json::Value>>().unwrap().len(), 500);

    let json = ok_stdout(&app.cosmctl(&["--json", "machines", "list"]));
    let v: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let macs: Vec<&str> = v.iter().map(|m| m["mac"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..N)
        .map(|i| format!("52:54:00:10:{:02x}:{:02x}", i / 256, i % 256))
        .collect();
    assert_eq!(macs, want, "every machine once, in MAC order");
    let table = ok_stdout(&app.cosmctl(&["machines", "list", "--state", "discovered"]));
    assert_eq!(
        table.lines().filter(|l| l.contains("52:54:00:10:")).count(),
        N as usize,
        "{}",
        &table[..table.len().min(500)]
    );
    // The e2e helper pages too.
    let all = app.api("/api/v1/machines?limit=1000").unwrap();
    assert_eq!(all.as_array().unwrap().len(), N as usize);
}
