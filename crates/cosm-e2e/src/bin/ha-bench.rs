//! `make bench` part 4: host high availability (issue 13). Three figures:
//!
//! 1. Host failure → its HA VMs running elsewhere: a virtual rack of three hosts whose
//!    real `cosm-agent` runs the simulated hypervisor (`--simulate-vms`, no QEMU), 1 s
//!    heartbeats, 3 missed beats. Each run kills every process of one host's namespace;
//!    its fence command (`exec` power settings) says the host is off once its namespace
//!    is empty. Detection, fence and total, over five runs.
//! 2. Detection with 1,000 simulated hosts beating every second to one appliance (peer
//!    probes simulated in-process), and the appliance's CPU while they beat.
//! 3. False positives under a 20 s appliance stall (SIGSTOP): evacuations started, hosts
//!    fenced and `host_lost` alarms raised afterwards; expected none.
//!
//! Run through `make bench` (root: network namespaces). Not pinned to a CPU.

use anyhow::{bail, Context};
use cosm_e2e::bench::{alive, cpu_seconds, figure, print_report, Figure};
use cosm_e2e::rack::Rack;
use cosm_e2e::simagent::{FleetStats, SimAgent, SimProbes};
use cosm_e2e::{list_all_async, Appliance};
use cosm_hypervisor::SimCluster;
use cosm_wire::Timestamp;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RACK_HOSTS: u8 = 3;
const HA_VMS: usize = 4;
const RUNS: usize = 5;
const SIM_HOSTS: u32 = 1_000;
const STALL: Duration = Duration::from_secs(20);
const AFTER_STALL: Duration = Duration::from_secs(15);
const AGENTS_CONFIG: &str = "[agents]\nheartbeat_secs = 1\nmissed_beats = 3\nmax_discovered = 100000\nenroll_per_sec = 100000\nenroll_burst = 100000\n";

/// The fence command of a rack host, `fence.sh NS ACTION`: the host is its network
/// namespace, on while a process runs in it; `off` kills them all; `on` is refused (a
/// fenced host comes back by the bench restarting its agent).
const FENCE_SCRIPT: &str = r#"#!/bin/sh
ns="$1"
case "$2" in
status)
    if [ -n "$(ip netns pids "$ns")" ]; then echo on; else echo off; fi ;;
off)
    for p in $(ip netns pids "$ns"); do kill -9 "$p"; done ;;
*)
    exit 1 ;;
esac
"#;

/// The fence command of a simulated host: always off already, so fencing is instant.
const FENCE_OFF_SCRIPT: &str = "#!/bin/sh\n[ \"$1\" = status ] && echo off\nexit 0\n";

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn write_script(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Milliseconds between two API timestamps (`b` − `a`), if both parse.
fn between(a: &Value, b: &Value) -> Option<Duration> {
    let a: Timestamp = a.as_str()?.parse().ok()?;
    let b: Timestamp = b.as_str()?.parse().ok()?;
    Some(Duration::from_millis(
        b.as_millis().saturating_sub(a.as_millis()),
    ))
}

fn ts(ms: u64) -> Value {
    Value::String(Timestamp::from_millis(ms).to_string())
}

/// p50, min and max of durations.
fn summary(d: &[Duration]) -> String {
    if d.is_empty() {
        return "no run got there".into();
    }
    let mut d = d.to_vec();
    d.sort_unstable();
    format!(
        "p50 {}, min {}, max {} ({} runs)",
        secs(d[(d.len() - 1) / 2]),
        secs(d[0]),
        secs(d[d.len() - 1]),
        d.len()
    )
}

/// Whether an API timestamp is at or after `ms` (Unix milliseconds).
fn at_or_after(v: &Value, ms: u64) -> bool {
    v.as_str()
        .and_then(|s| s.parse::<Timestamp>().ok())
        .is_some_and(|t| t.as_millis() >= ms)
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// 1 and 3. The virtual rack.

fn kill_namespace(ns: &str) -> anyhow::Result<usize> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()?;
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    for p in &pids {
        let _ = std::process::Command::new("kill").args(["-9", p]).status();
    }
    Ok(pids.len())
}

fn start_rack(out: &mut Vec<Figure>, fence: &Path) -> anyhow::Result<Rack> {
    let t = Instant::now();
    let mut rack = Rack::start("hab", AGENTS_CONFIG)?;
    for n in 1..=RACK_HOSTS {
        let i = rack.add_host(n)?;
        rack.start_simulated_host_agent(i)?;
    }
    for i in 0..rack.hosts.len() {
        rack.wait_host_registered(i, Duration::from_secs(60))?;
        let mac = rack.hosts[i].mac.clone();
        rack.make_vm_host(&mac)?;
        rack.app.api_send(
            "PUT",
            &format!("/api/v1/machines/{mac}/power-settings"),
            &json!({"driver": "exec", "command": [fence.display().to_string(), rack.hosts[i].ns.name()]}),
        )?;
    }
    rack.wait_hosts_reporting(RACK_HOSTS.into(), Duration::from_secs(60))?;
    for i in 1..=HA_VMS {
        rack.app.api_send(
            "POST",
            "/api/v1/vms",
            &json!({"name": format!("ha-{i}"), "kind": "tcg", "vcpus": 1, "memory_mib": 64, "ha": true}),
        )?;
    }
    wait(Duration::from_secs(60), "the HA VMs running", || {
        Ok(vms(&rack)?
            .values()
            .filter(|v| v["state"] == "running")
            .count()
            == HA_VMS)
    })?;
    figure(
        out,
        format!("virtual rack: {RACK_HOSTS} simulated-VM hosts reporting, {HA_VMS} HA VMs running"),
        secs(t.elapsed()),
    );
    Ok(rack)
}

fn vms(rack: &Rack) -> anyhow::Result<BTreeMap<String, Value>> {
    Ok(array(rack.app.api("/api/v1/vms")?)
        .into_iter()
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), v)))
        .collect())
}

fn wait(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if done().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Run {
    detection: Duration,
    fence: Duration,
    total: Duration,
}

fn one_failure(rack: &mut Rack, run: usize) -> anyhow::Result<Run> {
    // The host with the most HA VMs.
    let list = vms(rack)?;
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for v in list.values() {
        if let Some(h) = v["host"].as_str() {
            *per_host.entry(h.to_string()).or_default() += 1;
        }
    }
    let (mac, count) = per_host
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .context("no VM is on a host")?;
    let i = rack
        .hosts
        .iter()
        .position(|h| h.mac == mac)
        .context("the VMs' host is not a rack host")?;
    let ns = rack.hosts[i].ns.name().to_string();
    let killed_ms = now_ms();
    let killed = Instant::now();
    let n = kill_namespace(&ns)?;
    eprintln!("  run {run}: killed {n} processes of {mac} ({ns}), {count} HA VMs on it");
    let mut evacuation = Value::Null;
    let result = wait(Duration::from_secs(90), "evacuation done", || {
        let e = array(rack.app.api("/api/v1/evacuations")?)
            .into_iter()
            .find(|e| e["host"] == mac.as_str() && at_or_after(&e["started_at"], killed_ms));
        let Some(e) = e else { return Ok(false) };
        evacuation = e.clone();
        if e["phase"] != "done" {
            return Ok(false);
        }
        let list = vms(rack)?;
        Ok(list
            .values()
            .all(|v| v["state"] == "running" && v["host"].as_str().is_some_and(|h| h != mac)))
    });
    let total = killed.elapsed();
    if let Err(e) = result {
        bail!(
            "{e:#}; evacuation record: {evacuation}; VMs: {:?}; appliance log tail:\n{}",
            vms(rack).unwrap_or_default(),
            tail(&rack.app.log_text(), 3000)
        );
    }
    let detection = between(&ts(killed_ms), &evacuation["started_at"]).unwrap_or_default();
    let fence = between(&evacuation["started_at"], &evacuation["fenced_at"]).unwrap_or_default();
    eprintln!(
        "  run {run}: detection {}, fence {}, total {}",
        secs(detection),
        secs(fence),
        secs(total)
    );
    // Bring the host back: its agent again (same state directory, so its credential),
    // the machine back in service, and reporting.
    if let Some(pid) = rack.hosts[i].agent.take() {
        // Reaps the killed agent.
        let _ = rack.hosts[i].ns.try_wait(pid);
    }
    rack.start_simulated_host_agent(i)?;
    rack.app.api_send(
        "POST",
        &format!("/api/v1/machines/{mac}/state"),
        &json!({"state": "active", "reason": "ha-bench: host back"}),
    )?;
    let back = now_ms();
    wait(Duration::from_secs(60), "the host reporting again", || {
        Ok(array(rack.app.api("/api/v1/hosts")?).iter().any(|h| {
            h["mac"] == mac.as_str()
                && h["machine_state"] == "active"
                && at_or_after(&h["reported_at"], back)
        }))
    })?;
    Ok(Run {
        detection,
        fence,
        total,
    })
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_string()
}

fn host_failures(rack: &mut Rack, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    eprintln!("1. host failure → HA VMs running elsewhere, {RUNS} runs");
    let mut runs = Vec::new();
    for run in 1..=RUNS {
        match one_failure(rack, run) {
            Ok(r) => runs.push(r),
            Err(e) => {
                figure(
                    out,
                    format!("host failure run {run} FAILED"),
                    format!("{e:#}"),
                );
                break;
            }
        }
    }
    let pick = |f: fn(&Run) -> Duration| runs.iter().map(f).collect::<Vec<_>>();
    figure(
        out,
        "host killed → evacuation started (detection; 1 s beats × 3)",
        summary(&pick(|r| r.detection)),
    );
    figure(
        out,
        "evacuation started → fenced (exec fence command)",
        summary(&pick(|r| r.fence)),
    );
    let totals = pick(|r| r.total);
    let mut sorted = totals.clone();
    sorted.sort_unstable();
    let goal = sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .map_or("", |p| {
            if *p <= Duration::from_secs(10) {
                " — goal ≤ 10 s met"
            } else {
                " — goal ≤ 10 s MISSED"
            }
        });
    figure(
        out,
        format!("host killed → all {HA_VMS} HA VMs running on other hosts (total)"),
        format!("{}{goal}", summary(&totals)),
    );
    Ok(())
}

fn stall(rack: &Rack, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    eprintln!("3. appliance stalled (SIGSTOP) for {STALL:?}, then watched {AFTER_STALL:?}");
    let before = now_ms();
    let pid = rack.app.pid().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    std::thread::sleep(STALL);
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()?;
    std::thread::sleep(AFTER_STALL);
    let after = |v: &Value, field: &str| at_or_after(&v[field], before);
    let evacuations = array(rack.app.api("/api/v1/evacuations")?)
        .iter()
        .filter(|e| after(e, "started_at"))
        .count();
    let fenced = array(rack.app.api("/api/v1/machines")?)
        .iter()
        .filter(|m| m["state"] == "fenced")
        .count();
    let alarms: Vec<Value> = array(rack.app.api("/api/v1/alarms?all=true")?)
        .into_iter()
        .filter(|a| after(a, "raised_at"))
        .collect();
    let lost = alarms.iter().filter(|a| a["kind"] == "host_lost").count();
    figure(
        out,
        format!(
            "{}s appliance stall, {}s after: evacuations started / machines fenced / host_lost alarms (expected 0)",
            STALL.as_secs(),
            AFTER_STALL.as_secs()
        ),
        format!("{evacuations} / {fenced} / {lost}"),
    );
    if evacuations + fenced + lost > 0 {
        figure(
            out,
            "stall: alarms raised",
            alarms
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. A thousand simulated hosts.

async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let resp = http
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    if !resp.status().is_success() {
        bail!(
            "{method} {path} answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn wait_async<F, Fut>(timeout: Duration, what: &str, done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    cosm_e2e::bench::poll_until(what, timeout, Duration::from_millis(100), done).await
}

async fn simulated(out: &mut Vec<Figure>, dir: &Path, pids: &mut Vec<u32>) -> anyhow::Result<()> {
    eprintln!("2. detection with {SIM_HOSTS} simulated hosts beating every second");
    let fence = dir.join("fence-off.sh");
    write_script(&fence, FENCE_OFF_SCRIPT)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let app = Appliance::start_listening(None, &format!("127.0.0.1:{port}"), AGENTS_CONFIG)?;
    pids.push(app.pid());
    let (base, token) = (app.url(), app.token());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(30))
        .build()?;
    let cluster = SimCluster::new();
    let probes = Arc::new(SimProbes::default());
    let stats = Arc::new(FleetStats::default());
    let stop_all = Arc::new(AtomicBool::new(false));
    let victim_stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let mut macs = Vec::new();
    for i in 0..SIM_HOSTS {
        let agent = SimAgent::enroll(&http, &base, &token, i)
            .await?
            .with_vm_host(cluster.host(&format!("sim://host{i}")))
            // Nothing listens there: probes are simulated (SimProbes).
            .with_probes(format!("127.0.0.1:{}", 20_000 + i), probes.clone());
        macs.push(agent.mac);
        let offset = Duration::from_micros(u64::from(i) * 7919 % 1_000_000);
        let stop = if i == 0 {
            victim_stop.clone()
        } else {
            stop_all.clone()
        };
        tokio::spawn(agent.run(Duration::from_secs(1), offset, stop, stats.clone()));
    }
    for chunk in macs.chunks(20) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|mac| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                let fence = fence.display().to_string();
                let path = format!("/api/v1/machines/{mac}");
                tokio::spawn(async move {
                    use reqwest::Method;
                    send(
                        &http,
                        &base,
                        &token,
                        Method::PUT,
                        &format!("{path}/role"),
                        &json!({"role": "host"}),
                    )
                    .await?;
                    for state in ["deploying", "deployed", "active"] {
                        send(
                            &http,
                            &base,
                            &token,
                            Method::POST,
                            &format!("{path}/state"),
                            &json!({"state": state, "reason": "ha-bench host"}),
                        )
                        .await?;
                    }
                    send(
                        &http,
                        &base,
                        &token,
                        Method::PUT,
                        &format!("{path}/power-settings"),
                        &json!({"driver": "exec", "command": [fence]}),
                    )
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
    }
    wait_async(Duration::from_secs(180), "all hosts reporting", || async {
        Ok(list_all_async(&http, &token, &base, "/api/v1/hosts")
            .await?
            .iter()
            .filter(|h| h["capacity"]["probe"].is_string())
            .count()
            == SIM_HOSTS as usize)
    })
    .await?;
    figure(
        out,
        format!("{SIM_HOSTS} simulated hosts enrolled, made hosts, reporting"),
        secs(t.elapsed()),
    );
    // Steady state: everyone beats and reports peers for 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, beats0, t0) = (
        cpu_seconds(app.pid()),
        stats.beats.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let el = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(app.pid()) - cpu0) / el * 100.0;
    let beats = (stats.beats.load(Ordering::Relaxed) - beats0) as f64 / el;
    figure(
        out,
        format!("appliance CPU, {SIM_HOSTS} hosts beating (peers reported)"),
        format!("{cpu:.0} % of one core ({beats:.0} beats/s)"),
    );

    let victim = macs[0].to_string();
    let stopped_ms = now_ms();
    victim_stop.store(true, Ordering::Relaxed);
    probes.kill(macs[0]);
    // The victim notices `stop` at its next tick, up to a second later: its last beat may
    // come then. Detection is counted from the stop, so it may read up to 1 s long.
    let seen = std::sync::Mutex::new(Value::Null);
    let found = wait_async(Duration::from_secs(60), "the victim fenced", || {
        let (http, base, token, victim, seen) = (&http, &base, &token, &victim, &seen);
        async move {
            let e = list_all_async(http, token, base, "/api/v1/evacuations").await?;
            if let Some(e) = e.into_iter().find(|e| e["host"] == victim.as_str()) {
                let fenced = e["fenced_at"].is_string();
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = e;
                return Ok(fenced);
            }
            Ok(false)
        }
    })
    .await;
    let record = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = found {
        figure(
            out,
            format!("{SIM_HOSTS} hosts: detection FAILED"),
            format!(
                "{e:#}; evacuation: {record}; appliance log tail:\n{}",
                tail(&app.log_text(), 3000)
            ),
        );
    } else {
        let detection = between(&ts(stopped_ms), &record["started_at"]).unwrap_or_default();
        let fenced = between(&ts(stopped_ms), &record["fenced_at"]).unwrap_or_default();
        figure(
            out,
            format!("{SIM_HOSTS} hosts: heartbeats stopped → evacuation started (detection)"),
            secs(detection),
        );
        figure(
            out,
            format!("{SIM_HOSTS} hosts: heartbeats stopped → fenced"),
            secs(fenced),
        );
        figure(
            out,
            format!("{SIM_HOSTS} hosts: the evacuation's checks"),
            record["checks"].as_str().unwrap_or_default(),
        );
    }
    // A loaded appliance whose HA passes come more than 2 s apart forgives the gap as a
    // stall of its own (`Liveness::watch`), which delays detection: count those.
    let log = app.log_text();
    let forgiven: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("did not run for a while"))
        .collect();
    figure(
        out,
        format!("{SIM_HOSTS} hosts: appliance stalls forgiven (log warnings)"),
        format!(
            "{}{}",
            forgiven.len(),
            forgiven
                .last()
                .map_or(String::new(), |l| format!("; last: {}", tail(l, 200)))
        ),
    );
    let others = list_all_async(&http, &token, &base, "/api/v1/evacuations")
        .await?
        .iter()
        .filter(|e| e["host"] != victim.as_str())
        .count();
    figure(
        out,
        format!("{SIM_HOSTS} hosts: other hosts evacuated (expected 0)"),
        others.to_string(),
    );
    figure(
        out,
        format!("{SIM_HOSTS} hosts: heartbeats failed"),
        stats.failures.load(Ordering::Relaxed).to_string(),
    );
    stop_all.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(app);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut out = Vec::new();
    let mut pids = Vec::new();
    let dir = tempfile::tempdir()?;
    let fence = dir.path().join("fence.sh");
    write_script(&fence, FENCE_SCRIPT)?;
    match start_rack(&mut out, &fence) {
        Ok(mut rack) => {
            pids.push(rack.app.pid());
            if let Err(e) = host_failures(&mut rack, &mut out) {
                figure(&mut out, "host failure FAILED", format!("{e:#}"));
            }
            if let Err(e) = stall(&rack, &mut out) {
                figure(&mut out, "appliance stall FAILED", format!("{e:#}"));
            }
            for h in &rack.hosts {
                pids.extend(h.agent);
            }
            // Dropping the rack stops its agents, libvirtds and appliance.
        }
        Err(e) => figure(&mut out, "virtual rack FAILED", format!("{e:#}")),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Err(e) = rt.block_on(simulated(&mut out, dir.path(), &mut pids)) {
        figure(
            &mut out,
            format!("{SIM_HOSTS} simulated hosts FAILED"),
            format!("{e:#}"),
        );
    }
    drop(rt);
    std::thread::sleep(Duration::from_secs(2));
    let left: Vec<String> = pids
        .iter()
        .filter(|p| alive(**p))
        .map(u32::to_string)
        .collect();

    let started = format!("{} appliances and agents", pids.len());
    print_report("Host HA benchmarks (issue 13)", &out, &started, &left);
    Ok(())
}
