//! `make bench` part 3: virtual machines (issue 12). Three figures:
//!
//! 1. Reconcile at scale, simulated: 200 simulated hosts (each running the real agent VM
//!    controller on a simulated hypervisor) and 2,000 VMs created through the API; the
//!    time until all run, then the time until the fleet converges again after the
//!    appliance restarts, with 10% of the VMs killed while it was down.
//! 2. Create → running and create → marker on the console, for 20 real TCG guests on the
//!    three hosts of a virtual rack (p50, p99, max).
//! 3. Live migration of a 256 MiB guest between rack hosts, three times.
//!
//! Run through `make bench`. It is not pinned to a CPU: the guests of parts 2 and 3 need
//! both cores, and a pinned parent would pin its libvirtd and QEMU children too.

use anyhow::{bail, Context};
use cosm_e2e::bench::{alive, figure, print_report, Figure};
use cosm_e2e::guest::{api_console, guest_vm_request, upload_guest, vm_timeline};
use cosm_e2e::rack::Rack;
use cosm_e2e::simagent::{FleetStats, SimAgent};
use cosm_e2e::{list_all_async, Appliance};
use cosm_hypervisor::{SimCluster, SimHypervisor, VmName, VmPower};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIM_HOSTS: u32 = 200;
const SIM_VMS: u32 = 2_000;
/// The share of simulated VMs killed while the appliance is down, in percent.
const KILLED_PERCENT: u32 = 10;
const REAL_VMS: usize = 20;
const MIGRATIONS: usize = 3;

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The value at fraction `p` of sorted durations (nearest rank).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------------------------------
// 1. Reconcile at scale, simulated.

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> anyhow::Result<()> {
        let resp = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
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

    async fn count(&self, path: &str) -> anyhow::Result<usize> {
        Ok(list_all_async(&self.http, &self.token, &self.base, path)
            .await?
            .len())
    }

    async fn timeline(&self, vm: &str) -> anyhow::Result<Vec<String>> {
        let events = list_all_async(
            &self.http,
            &self.token,
            &self.base,
            &format!("/api/v1/vms/{vm}/events"),
        )
        .await?;
        Ok(events
            .iter()
            .filter_map(|e| e["message"].as_str().map(String::from))
            .collect())
    }

    /// Polls until `done` holds, checking every 250 ms; fails after `timeout`.
    async fn wait<F, Fut>(&self, what: &str, timeout: Duration, done: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        cosm_e2e::bench::poll_until(what, timeout, Duration::from_millis(250), done).await
    }
}

fn sim_vm_name(i: u32) -> String {
    format!("vm-{i:04}")
}

async fn simulated(out: &mut Vec<Figure>, started: &mut Started) -> anyhow::Result<()> {
    eprintln!("1. reconcile at scale: {SIM_HOSTS} simulated hosts, {SIM_VMS} VMs");
    // A fixed port, so the simulated agents find the appliance again after its restart.
    let port = free_port()?;
    let mut app = Appliance::start_listening(
        None,
        &format!("127.0.0.1:{port}"),
        "[agents]\nheartbeat_secs = 1\nmissed_beats = 5\nmax_discovered = 100000\nenroll_per_sec = 100000\nenroll_burst = 100000\n",
    )?;
    started.push(("cosm-appliance (simulated fleet)".into(), app.pid()));
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .timeout(Duration::from_secs(30))
            .build()?,
        base: app.url(),
        token: app.token(),
    });

    let cluster = SimCluster::new();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FleetStats::default());
    let mut hypervisors: BTreeMap<String, SimHypervisor> = BTreeMap::new();
    let mut macs = Vec::new();
    for i in 0..SIM_HOSTS {
        let hv = cluster.host(&format!("sim://host{i}"));
        let agent = SimAgent::enroll(&api.http, &api.base, &api.token, i)
            .await?
            .with_vm_host(hv.clone());
        let mac = agent.mac.to_string();
        hypervisors.insert(mac.clone(), hv);
        macs.push(mac);
        let offset = Duration::from_micros(u64::from(i) * 7919 % 1_000_000);
        tokio::spawn(agent.run(Duration::from_secs(1), offset, stop.clone(), stats.clone()));
    }
    let t = Instant::now();
    for chunk in macs.chunks(20) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|mac| {
                let (api, mac) = (api.clone(), mac.clone());
                tokio::spawn(async move {
                    let path = format!("/api/v1/machines/{mac}");
                    api.send(
                        reqwest::Method::PUT,
                        &format!("{path}/role"),
                        &json!({"role": "host"}),
                    )
                    .await?;
                    for state in ["deploying", "deployed", "active"] {
                        api.send(
                            reqwest::Method::POST,
                            &format!("{path}/state"),
                            &json!({"state": state, "reason": "vm-bench host"}),
                        )
                        .await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
    }
    api.wait("all hosts reporting", Duration::from_secs(120), || async {
        Ok(api.count("/api/v1/hosts").await? == SIM_HOSTS as usize)
    })
    .await?;
    figure(
        out,
        format!("{SIM_HOSTS} simulated hosts made VM hosts → all reporting"),
        secs(t.elapsed()),
    );

    // 2,000 VMs, 16 requests in flight.
    let t = Instant::now();
    let names: Vec<String> = (1..=SIM_VMS).map(sim_vm_name).collect();
    for chunk in names.chunks(16) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|name| {
                let (api, name) = (api.clone(), name.clone());
                tokio::spawn(async move {
                    api.send(
                        reqwest::Method::POST,
                        "/api/v1/vms",
                        &json!({"name": name, "kind": "tcg", "vcpus": 1, "memory_mib": 256}),
                    )
                    .await
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
    }
    let created = t.elapsed();
    api.wait("all VMs running", Duration::from_secs(600), || async {
        Ok(api.count("/api/v1/vms?state=running").await? == SIM_VMS as usize)
    })
    .await?;
    let running = t.elapsed();
    figure(
        out,
        format!("{SIM_VMS} VMs: POSTs answered (16 in flight)"),
        format!(
            "{} ({:.0} creates/s)",
            secs(created),
            f64::from(SIM_VMS) / created.as_secs_f64()
        ),
    );
    figure(
        out,
        format!("{SIM_VMS} VMs: first POST → all listed running"),
        secs(running),
    );

    // Restart the appliance (all times from its SIGTERM); while it is down, kill every
    // tenth VM on its host. The agents' VM controllers start them again on their own.
    let t = Instant::now();
    let clean = app.stop()?;
    let mut killed = BTreeSet::new();
    for (n, host) in list_running_from_cluster(&hypervisors) {
        let i: u32 = n.trim_start_matches("vm-").parse().unwrap_or(0);
        if i.is_multiple_of(100 / KILLED_PERCENT) {
            hypervisors[&host].kill(&VmName::new(&n)?, VmPower::Crashed)?;
            killed.insert(n);
        }
    }
    let killed_at = Instant::now();
    let killed_running = || {
        let running: BTreeSet<String> = list_running_from_cluster(&hypervisors)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        killed.iter().all(|n| running.contains(n))
    };
    let deadline = killed_at + Duration::from_secs(30);
    let mut restarted_while_down = None;
    while Instant::now() < deadline {
        if killed_running() {
            restarted_while_down = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Down at least 3 s, so the agents notice.
    let down_until = t + Duration::from_secs(3);
    tokio::time::sleep(down_until.saturating_duration_since(Instant::now())).await;
    app.restart()?;
    let listening = t.elapsed();
    started.push((
        "cosm-appliance (simulated fleet, restarted)".into(),
        app.pid(),
    ));
    anyhow::ensure!(
        app.url() == api.base,
        "the appliance came back on another port"
    );
    api.wait(
        "hosts back after the restart",
        Duration::from_secs(120),
        || async { Ok(api.count("/api/v1/hosts").await? == SIM_HOSTS as usize) },
    )
    .await?;
    let hosts_back = t.elapsed();
    api.wait(
        "VMs running after the restart",
        Duration::from_secs(300),
        || async { Ok(api.count("/api/v1/vms?state=running").await? == SIM_VMS as usize) },
    )
    .await?;
    let vms_running = t.elapsed();
    // The appliance's view of the kills: each killed VM's timeline says it was started
    // again (the agent's report is sent again until the appliance takes it).
    let mut on_timeline = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while on_timeline.len() < killed.len() && Instant::now() < deadline {
        for n in &killed {
            if !on_timeline.contains(n)
                && api
                    .timeline(n)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .any(|m| m.contains("started again"))
            {
                on_timeline.insert(n.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let timelines_done = t.elapsed();
    figure(
        out,
        "appliance SIGTERM → listening again (kept down >= 3 s)",
        format!("{} (clean exit: {clean})", secs(listening)),
    );
    figure(
        out,
        format!("SIGTERM → /api/v1/hosts lists all {SIM_HOSTS} again"),
        secs(hosts_back),
    );
    figure(
        out,
        format!("SIGTERM → all {SIM_VMS} listed running"),
        secs(vms_running),
    );
    figure(
        out,
        format!(
            "{} VMs killed while the appliance was down → running again on their hosts (agents alone)",
            killed.len()
        ),
        restarted_while_down.map_or("NOT within 30 s".into(), secs),
    );
    figure(
        out,
        "SIGTERM → every killed VM's timeline says `started again`",
        format!(
            "{} ({} of {})",
            secs(timelines_done),
            on_timeline.len(),
            killed.len()
        ),
    );
    let failures = stats.failures.load(Ordering::Relaxed);
    figure(
        out,
        "heartbeats failed (the restart's downtime included)",
        failures.to_string(),
    );
    stop.store(true, Ordering::Relaxed);
    // The agents notice `stop` at their next beat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(())
}

/// Every simulated guest that is running: (name, host MAC).
fn list_running_from_cluster(
    hypervisors: &BTreeMap<String, SimHypervisor>,
) -> Vec<(String, String)> {
    use cosm_hypervisor::Hypervisor;
    let mut out = Vec::new();
    for (mac, hv) in hypervisors {
        for d in hv.list().unwrap_or_default() {
            if d.power == VmPower::Running {
                out.push((d.name.to_string(), mac.clone()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// 2 and 3. Real guests on the virtual rack.

fn states(rack: &Rack) -> anyhow::Result<BTreeMap<String, Value>> {
    let vms = rack.app.api("/api/v1/vms")?;
    Ok(vms
        .as_array()
        .context("VM list")?
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), v.clone())))
        .collect())
}

fn console_has_marker(rack: &Rack, name: &str) -> bool {
    api_console(&rack.app, name).is_ok_and(|c| c.boots.iter().any(|(m, _)| m == name))
}

fn timeline(rack: &Rack, name: &str) -> Vec<String> {
    vm_timeline(&rack.app, name).unwrap_or_default()
}

/// The processes this run started, by name and PID, checked to be gone at the end.
type Started = Vec<(String, u32)>;

/// The rack's appliance, agents and libvirtds, and the QEMUs of `guests` on its hosts.
fn rack_processes(rack: &Rack, guests: &[String], started: &mut Started) {
    started.push(("cosm-appliance (rack)".into(), rack.app.pid()));
    for h in &rack.hosts {
        if let Some(pid) = h.agent {
            started.push((format!("cosm-agent of {}", h.mac), pid));
        }
        if let Some(pid) = h.libvirtd.pid() {
            started.push((format!("libvirtd of {}", h.mac), pid));
        }
        for g in guests {
            if let Some(pid) = h.libvirtd.guest_pid(g) {
                started.push((format!("qemu of {g}"), pid));
            }
        }
    }
}

fn start_rack(out: &mut Vec<Figure>) -> anyhow::Result<Rack> {
    let t = Instant::now();
    let mut rack = Rack::start("vmb", "")?;
    rack.start_hosts(3, Duration::from_secs(180))?;
    rack.wait_hosts_reporting(3, Duration::from_secs(60))?;
    upload_guest(&rack)?;
    figure(
        out,
        "virtual rack: 3 hosts up, reporting, images uploaded",
        secs(t.elapsed()),
    );
    Ok(rack)
}

fn create_to_running(
    rack: &Rack,
    out: &mut Vec<Figure>,
    started: &mut Started,
) -> anyhow::Result<()> {
    eprintln!("2. create → running: {REAL_VMS} TCG guests (1 vCPU, 128 MiB) on 3 hosts");
    let names: Vec<String> = (1..=REAL_VMS).map(|i| format!("lat-{i:02}")).collect();
    let mut posted: BTreeMap<String, Instant> = BTreeMap::new();
    let mut refused = Vec::new();
    for name in &names {
        let at = Instant::now();
        match rack
            .app
            .api_send("POST", "/api/v1/vms", &guest_vm_request(name, 128))
        {
            Ok(_) => {
                posted.insert(name.clone(), at);
            }
            Err(e) => refused.push(format!("{name}: {e:#}")),
        }
    }
    let mut running: BTreeMap<String, Duration> = BTreeMap::new();
    let mut marker: BTreeMap<String, Duration> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(420);
    while marker.len() < posted.len() && Instant::now() < deadline {
        let now = Instant::now();
        let list = states(rack)?;
        for (name, at) in &posted {
            if !running.contains_key(name)
                && list.get(name).is_some_and(|v| v["state"] == "running")
            {
                running.insert(name.clone(), now - *at);
            }
            if running.contains_key(name)
                && !marker.contains_key(name)
                && console_has_marker(rack, name)
            {
                marker.insert(name.clone(), Instant::now() - *at);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (what, m) in [
        ("POST → listed running", &running),
        ("POST → marker on the API console", &marker),
    ] {
        let mut d: Vec<Duration> = m.values().copied().collect();
        d.sort_unstable();
        figure(
            out,
            format!("{what} ({} of {REAL_VMS} got there)", d.len()),
            format!(
                "p50 {}, p99 {}, max {}",
                secs(percentile(&d, 0.5)),
                secs(percentile(&d, 0.99)),
                secs(percentile(&d, 1.0))
            ),
        );
    }
    if !refused.is_empty() {
        figure(out, "create refused", refused.join("; "));
    }
    let list = states(rack)?;
    let stuck: Vec<String> = posted
        .keys()
        .filter(|n| !marker.contains_key(*n))
        .map(|n| {
            format!(
                "{n}={}",
                list.get(n)
                    .map_or("gone".into(), |v| v["state"].to_string())
            )
        })
        .collect();
    if !stuck.is_empty() {
        figure(out, "not booted within 420 s", stuck.join(", "));
    }

    let guests: Vec<String> = posted.keys().cloned().collect();
    rack_processes(rack, &guests, started);

    // Make room for the migration: delete them all.
    for name in posted.keys() {
        let _ = rack
            .app
            .api_send("DELETE", &format!("/api/v1/vms/{name}"), &json!({}));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while states(rack)?.keys().any(|n| n.starts_with("lat-")) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the latency VMs were not deleted"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn migration(rack: &Rack, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    eprintln!("3. live migration of a 256 MiB guest, {MIGRATIONS} times");
    let name = "mig-256";
    rack.app
        .api_send("POST", "/api/v1/vms", &guest_vm_request(name, 256))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(states(rack)?
        .get(name)
        .is_some_and(|v| v["state"] == "running")
        && console_has_marker(rack, name))
    {
        anyhow::ensure!(Instant::now() < deadline, "{name} did not boot");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut took = Vec::new();
    let mut libvirt = Vec::new();
    for round in 1..=MIGRATIONS {
        let from = states(rack)?[name]["host"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let seen = timeline(rack, name)
            .iter()
            .filter(|m| m.starts_with("live-migrated from"))
            .count();
        let asked = Instant::now();
        rack.app
            .api_send("POST", &format!("/api/v1/vms/{name}/migrate"), &json!({}))?;
        let deadline = asked + Duration::from_secs(180);
        let to = loop {
            let v = states(rack)?.get(name).cloned().unwrap_or_default();
            if v["state"] == "running" && v["host"].as_str().is_some_and(|h| h != from) {
                break v["host"].as_str().unwrap_or_default().to_string();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "migration {round} did not finish: {v}; timeline {:?}",
                timeline(rack, name)
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        let d = asked.elapsed();
        took.push(d);
        // "live-migrated from A to B in X s (operation N)"
        let reported = timeline(rack, name)
            .iter()
            .filter(|m| m.starts_with("live-migrated from"))
            .nth(seen)
            .and_then(|m| {
                let (_, tail) = m.split_once(" in ")?;
                tail.split_whitespace().next()?.parse::<f64>().ok()
            });
        if let Some(s) = reported {
            libvirt.push(Duration::from_secs_f64(s));
        }
        figure(
            out,
            format!("migration {round}: {from} → {to}, POST → running there"),
            format!(
                "{} (libvirt: {})",
                secs(d),
                reported.map_or("not on the timeline".into(), |s| format!("{s:.1} s"))
            ),
        );
    }
    took.sort_unstable();
    libvirt.sort_unstable();
    figure(
        out,
        "migration median: POST → running on the new host",
        secs(percentile(&took, 0.5)),
    );
    if !libvirt.is_empty() {
        figure(
            out,
            "migration median: libvirt's own duration (timeline)",
            secs(percentile(&libvirt, 0.5)),
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut out = Vec::new();
    let mut started = Started::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Err(e) = rt.block_on(simulated(&mut out, &mut started)) {
        figure(&mut out, "reconcile at scale FAILED", format!("{e:#}"));
    }
    drop(rt);
    match start_rack(&mut out) {
        Ok(rack) => {
            if let Err(e) = create_to_running(&rack, &mut out, &mut started) {
                figure(&mut out, "create → running FAILED", format!("{e:#}"));
            }
            if let Err(e) = migration(&rack, &mut out) {
                figure(&mut out, "live migration FAILED", format!("{e:#}"));
            }
            rack_processes(&rack, &["mig-256".to_string()], &mut started);
            // Dropping the rack stops its agents, libvirtds (with their guests) and
            // appliance.
        }
        Err(e) => figure(&mut out, "virtual rack FAILED", format!("{e:#}")),
    }
    std::thread::sleep(Duration::from_secs(2));
    let left: Vec<String> = started
        .iter()
        .filter(|(_, pid)| alive(*pid))
        .map(|(what, pid)| format!("{what} [{pid}]"))
        .collect();

    let what = format!(
        "{} processes (appliances, agents, libvirtds, QEMUs)",
        started.len()
    );
    print_report("VM benchmarks (issue 12)", &out, &what, &left);
    Ok(())
}
