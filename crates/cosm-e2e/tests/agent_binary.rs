//! The real `cosm-agent` against a real appliance on loopback: enrolment with the inventory
//! of a fixture machine, the node credential (0600), heartbeats, the desired-state round
//! trip (a known action done, an unknown one reported unsupported), lost when the agent is
//! killed, and back when it restarts with its stored credential; and a 30-second action
//! that runs while the heartbeats go on.

use cosm_e2e::{bin, client, Appliance};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:12:34:56";

/// A running agent, killed by PID when dropped.
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An appliance expecting a heartbeat every second (lost after `missed_beats` missed), its
/// admin client, and an enrol token as the ramdisk gets one.
struct Fixture {
    app: Appliance,
    http: reqwest::blocking::Client,
    enroll_token: String,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::start_missed(2)
    }

    fn start_missed(missed_beats: u32) -> Fixture {
        let config = format!("[agents]\nheartbeat_secs = 1\nmissed_beats = {missed_beats}\n");
        let app = Appliance::start_with(None, &config).unwrap();
        let http = client(&app.token());
        let enroll: serde_json::Value = http
            .post(format!("{}/api/v1/tokens", app.url()))
            .json(&serde_json::json!({"name": "ramdisk", "scope": "enroll"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let enroll_token = enroll["token"].as_str().unwrap().to_string();
        Fixture {
            app,
            http,
            enroll_token,
        }
    }

    fn machine(&self) -> serde_json::Value {
        let url = format!("{}/api/v1/machines/{MAC}", self.app.url());
        self.http.get(url).send().unwrap().json().unwrap()
    }

    fn events(&self) -> String {
        let url = format!("{}/api/v1/machines/{MAC}/events", self.app.url());
        self.http.get(url).send().unwrap().text().unwrap()
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cosm-agent/tests/fixtures/qemu-vm")
}

fn start_agent(app: &Appliance, token: Option<&str>, state: &Path, log: &Path) -> AgentProc {
    start_agent_with(app, token, state, log, &[])
}

/// [`start_agent`] with more `cosm-agent run` flags.
fn start_agent_with(
    app: &Appliance,
    token: Option<&str>,
    state: &Path,
    log: &Path,
    extra: &[&str],
) -> AgentProc {
    let mut cmd = Command::new(bin("cosm-agent"));
    cmd.args([
        "run",
        "--appliance",
        &app.url(),
        "--cmdline",
        "/dev/null",
        "--dry-run-actions",
        "--root",
    ])
    .arg(fixture())
    .arg("--state-dir")
    .arg(state)
    .env_remove("COSM_TOKEN")
    .env_remove("COSM_APPLIANCE")
    .stdout(Stdio::null())
    .stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap(),
    );
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    cmd.args(extra);
    AgentProc(cmd.spawn().expect("cosm-agent starts"))
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn real_agent_enrols_beats_acts_and_is_lost_then_back() {
    let fx = Fixture::start();
    let (app, http, base) = (&fx.app, &fx.http, fx.app.url());
    let enroll_token = fx.enroll_token.clone();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("agent.log");
    let machine = || fx.machine();
    let events = || fx.events();

    let agent = start_agent(app, Some(&enroll_token), &state, &log);
    wait_until("enrolment", Duration::from_secs(20), || {
        machine()["state"] == "discovered"
    });

    // The stored inventory is exactly what the agent reads from the fixture machine.
    let out = Command::new(bin("cosm-agent"))
        .args(["inventory", "--json", "--root"])
        .arg(fixture())
        .output()
        .unwrap();
    let expected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(machine()["inventory"], expected);
    let mode = std::fs::metadata(state.join("credential"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Desired state: a known action is done (dry run), an unknown one is unsupported.
    for kind in ["reboot", "flash-bios"] {
        let r = http
            .post(format!("{base}/api/v1/machines/{MAC}/actions"))
            .json(&serde_json::json!({"kind": kind}))
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }
    wait_until(
        "the agent's report on both actions",
        Duration::from_secs(15),
        || {
            let e = events();
            e.contains("(reboot) done: dry run: would run reboot -f")
                && e.contains("(flash-bios) unsupported by the agent")
        },
    );
    assert_eq!(
        machine()["pending_actions"],
        serde_json::Value::Null,
        "the queue is empty again"
    );

    // Killed: lost after two missed beats. Restarted without a token: its stored credential
    // brings it back to the state it was lost from.
    drop(agent);
    wait_until("lost", Duration::from_secs(15), || {
        machine()["state"] == "lost"
    });
    let _agent = start_agent(app, None, &state, &log);
    wait_until("back", Duration::from_secs(15), || {
        machine()["state"] == "discovered"
    });
    let e = events();
    assert!(
        e.contains("no heartbeat for") && e.contains("heartbeats resumed"),
        "{e}"
    );
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        agent_log.contains("enrolled as 52:54:00:12:34:56"),
        "{agent_log}"
    );
}

/// Heartbeats the appliance has answered with 200, from its `/metrics` request counter:
/// counted outside the agent, by the party that would mark the machine lost.
fn heartbeats_answered(http: &reqwest::blocking::Client, base: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("cosm_http_requests_total{")
                && l.contains("route=\"/api/v1/agent/heartbeat\"")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A 30-second action runs in its controller while the heartbeat loop goes on: the machine
/// is never lost, the appliance hears a beat every second throughout, and the action is
/// reported done when it ends. When actions ran inside the heartbeat loop, its beats
/// stopped for the whole 30 s: the machine went `lost` after two missed beats, and the
/// appliance's counter stood still for 30 s.
#[test]
fn a_long_action_does_not_stop_the_heartbeats() {
    const INTERVAL: Duration = Duration::from_secs(1);
    // Lost after five missed beats: a 30 s stop is still caught many times over, while a
    // beat delayed by a busy CI machine is not taken for one.
    let fx = Fixture::start_missed(5);
    let (app, http, base) = (&fx.app, &fx.http, fx.app.url());
    let enroll_token = fx.enroll_token.clone();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let machine = || fx.machine();
    let events = || fx.events();
    let _agent = start_agent_with(
        app,
        Some(&enroll_token),
        &dir.path().join("state"),
        &log,
        &["--dry-run-action-secs", "30"],
    );
    wait_until("enrolment", Duration::from_secs(20), || {
        machine()["state"] == "discovered"
    });

    let r = http
        .post(format!("{base}/api/v1/machines/{MAC}/actions"))
        .json(&serde_json::json!({"kind": "reboot"}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    let queued = Instant::now();
    // When the appliance's heartbeat count moved, and to what.
    let mut beats: Vec<(Duration, u64)> = Vec::new();
    let mut done_after: Option<Duration> = None;
    // Watch for 35 s (longer only while the outcome is late, up to 40 s).
    while queued.elapsed() < Duration::from_secs(35) || done_after.is_none() {
        let now = queued.elapsed();
        assert!(
            now < Duration::from_secs(40),
            "the reboot was not reported done within 40 s; timeline:\n{}\nagent log:\n{}",
            events(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // The counter first, timed on its own: the gaps below are between two readings of it.
        let n = heartbeats_answered(http, &base);
        if beats.last().map(|b| b.1) != Some(n) {
            beats.push((queued.elapsed(), n));
        }
        let m = machine();
        assert_ne!(
            m["state"], "lost",
            "the machine was marked lost {now:?} after the action was queued"
        );
        if done_after.is_none() && events().contains("(reboot) done") {
            done_after = Some(now);
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    let done_after = done_after.unwrap();
    assert!(
        done_after >= Duration::from_secs(29) && done_after <= Duration::from_secs(36),
        "the 30 s action was reported done after {done_after:?}"
    );
    let first = beats.first().unwrap();
    let last = beats.last().unwrap();
    assert!(
        last.1 - first.1 >= 25,
        "the appliance counted {} heartbeats in {:?} (its /metrics counter \
         cosm_http_requests_total for POST /api/v1/agent/heartbeat, status 200)",
        last.1 - first.1,
        last.0 - first.0
    );
    let widest = beats
        .windows(2)
        .map(|w| (w[1].0 - w[0].0, w[0].0))
        .max()
        .unwrap();
    // The widest gap between two readings that saw the counter move. It includes this
    // loop's own polling (three requests and a 250 ms sleep per round), so it is held to
    // four intervals, not one: what it must catch is the agent falling silent for the
    // length of the action (30 s), which is how the bug this test guards against looked.
    assert!(
        widest.0 <= 4 * INTERVAL,
        "no heartbeat for {:?} from {:?} after the action was queued (interval {INTERVAL:?})",
        widest.0,
        widest.1
    );
    let e = events();
    assert!(!e.contains("no heartbeat for"), "{e}");
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        agent_log.contains("(reboot): Done dry run: would run reboot -f"),
        "{agent_log}"
    );
    assert_eq!(
        machine()["pending_actions"],
        serde_json::Value::Null,
        "the queue is empty again"
    );
}

#[test]
fn agent_without_settings_says_what_to_do() {
    let out = Command::new(bin("cosm-agent"))
        .args(["run", "--cmdline", "/dev/null"])
        .env_remove("COSM_APPLIANCE")
        .env_remove("COSM_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no appliance URL") && err.contains("cosm.appliance=URL"),
        "{err}"
    );
}

/// `--vtep-ip` is for hypervisor hosts, and `--vtep-dev` needs it: each mistake is named
/// before anything starts.
#[test]
fn vtep_flags_without_what_they_need_say_so() {
    for (args, says) in [
        (&["--vtep-ip", "192.0.2.11"][..], "give --hypervisor"),
        (
            &["--simulate-vms", "--vtep-dev", "br0"][..],
            "--vtep-dev br0 without --vtep-ip",
        ),
        (
            &[
                "--simulate-vms",
                "--vtep-ip",
                "192.0.2.11",
                "--vtep-dev",
                "a/b",
            ][..],
            "not a network interface name",
        ),
    ] {
        let out = Command::new(bin("cosm-agent"))
            .args(["run", "--cmdline", "/dev/null"])
            .args(["--appliance", "http://127.0.0.1:9", "--token", "t"])
            .args(args)
            .env_remove("COSM_HYPERVISOR")
            .env_remove("COSM_VTEP_IP")
            .env_remove("COSM_VTEP_DEV")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A hypervisor host's agent (here with the simulated hypervisor) answers peer probes on
/// `--probe-listen` with its own MAC and the prober's nonce, and ignores anything else.
#[test]
fn a_host_agent_answers_peer_probes() {
    let f = Fixture::start();
    let dir = tempfile::tempdir().unwrap();
    // A free port: bound and let go (nothing else on loopback takes it meanwhile).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _agent = start_agent_with(
        &f.app,
        Some(&f.enroll_token),
        &dir.path().join("state"),
        &dir.path().join("agent.log"),
        &["--mac", MAC, "--simulate-vms", "--probe-listen", &listen],
    );
    let me = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    me.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut probe = b"COSMprb1".to_vec();
    probe.extend_from_slice(b"nonce-42");
    probe.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 0x99]);
    let mut buf = [0u8; 64];
    let mut answer = None;
    wait_until(
        "the agent to answer a probe",
        Duration::from_secs(30),
        || {
            me.send_to(&probe, &listen).unwrap();
            if let Ok((n, from)) = me.recv_from(&mut buf) {
                assert_eq!(from.to_string(), listen);
                answer = Some(buf[..n].to_vec());
            }
            answer.is_some()
        },
    );
    let mut want = b"COSMans1".to_vec();
    want.extend_from_slice(b"nonce-42");
    want.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(answer.unwrap(), want);
    // The loop above may have sent several probes before the agent was up: their answers
    // are read off first, so that the checks below see only what comes after.
    std::thread::sleep(Duration::from_secs(1));
    while me.recv_from(&mut buf).is_ok() {}
    // Not a probe: no answer within two seconds, and the agent keeps answering probes.
    me.send_to(b"COSMprb1 but too long for a probe", &listen)
        .unwrap();
    me.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if let Ok((n, _)) = me.recv_from(&mut buf) {
        panic!(
            "a datagram that is not a probe was answered: {:?}",
            &buf[..n]
        );
    }
    let mut probe = b"COSMprb1".to_vec();
    probe.extend_from_slice(b"nonce-43");
    probe.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 0x99]);
    me.send_to(&probe, &listen).unwrap();
    me.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (n, _) = me
        .recv_from(&mut buf)
        .expect("no answer to a probe sent after the junk datagram");
    let mut want = b"COSMans1".to_vec();
    want.extend_from_slice(b"nonce-43");
    want.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(&buf[..n], &want[..]);
}
