//! `make bench` part 3: heartbeats under list load (issue 11, item 12). 10,000 machines
//! (simulated agents enrolled), 1,000 of them beating once a second against a
//! release-built appliance; then N clients list every machine in a loop, page by page
//! (`Link` rel="next", 1,000 a page). Prints heartbeat p50/p99/max with no lists and with
//! each list load, side by side, and the lists and pages answered per second.
//!
//! Run through `make bench` (the appliance is pinned to CPU 0, this client to CPU 1).

use cosm_e2e::simagent::{FleetStats, SimAgent};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MACHINES: u32 = 10_000;
const BEATING: u32 = 1_000;
const LOADS: [u32; 3] = [0, 200, 2000];
const STEP_SECS: u64 = 15;

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// One whole list, page by page, counting each page answered.
async fn list_all(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    pages: &AtomicU64,
) -> anyhow::Result<()> {
    let mut path = "/api/v1/machines?limit=1000".to_string();
    for _ in 0..1000 {
        let resp = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
        let next = resp
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(cosm_e2e::next_link);
        resp.bytes().await?;
        pages.fetch_add(1, Ordering::Relaxed);
        match next {
            Some(n) => path = n,
            None => break,
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var("COSM_BIN").unwrap_or_else(|_| "target/release/cosm-appliance".into());
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("appliance.toml");
    std::fs::write(&cfg, "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:18098\"\nmax_connections = 8192\n[agents]\nheartbeat_secs = 1\nmissed_beats = 30\nmax_discovered = 100000\nenroll_per_sec = 100000\nenroll_burst = 100000\n")?;
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0", &bin, "serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let base = "http://127.0.0.1:18098".to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(120))
        .build()?;
    let token_path = dir.path().join("data/admin.token");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() || !token_path.exists() {
        anyhow::ensure!(Instant::now() < deadline, "the appliance did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(&token_path)?.trim().to_string();

    // Enrol the beating agents first (enrolment counts the discovered machines, a read of
    // every machine), then register the rest of the machines through the API.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FleetStats::default());
    let samples: Arc<Mutex<Vec<u32>>> = Arc::default();
    let mut enrolled = 0u32;
    while enrolled < BEATING {
        let batch: Vec<_> = (enrolled..(enrolled + 200).min(BEATING))
            .map(|i| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                tokio::spawn(async move { SimAgent::enroll(&http, &base, &token, i).await })
            })
            .collect();
        for h in batch {
            let agent = h.await??;
            let (stop, stats, samples) = (stop.clone(), stats.clone(), samples.clone());
            let offset = Duration::from_micros(u64::from(enrolled) * 7919 % 1_000_000);
            tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let t = Instant::now();
                    if agent.beat(&stats).await.is_ok() {
                        samples.lock().unwrap().push(t.elapsed().as_micros() as u32);
                    }
                }
            });
            enrolled += 1;
        }
    }
    let mut created = BEATING;
    while created < MACHINES {
        let batch: Vec<_> = (created..(created + 200).min(MACHINES))
            .map(|i| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                tokio::spawn(async move {
                    let mac = cosm_e2e::simagent::sim_mac(i);
                    let inventory = cosm_e2e::simagent::sim_inventory(i);
                    http.post(format!("{base}/api/v1/machines"))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"mac": mac, "hostname": format!("node-{i}"), "inventory": inventory}))
                        .send()
                        .await?
                        .error_for_status()?;
                    anyhow::Ok(())
                })
            })
            .collect();
        for h in batch {
            h.await??;
        }
        created = (created + 200).min(MACHINES);
    }

    println!(
        "Heartbeats under list load: {MACHINES} machines, {BEATING} agents at 1 beat/s, clients listing every machine (1,000 a page) in a loop, {STEP_SECS} s per step, appliance on CPU 0"
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>9}",
        "listers",
        "beats/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failed",
        "lists/s",
        "pages/s",
        "healthz"
    );
    for &listers in &LOADS {
        let list_stop = Arc::new(AtomicBool::new(false));
        let lists = Arc::new(AtomicU64::new(0));
        let pages = Arc::new(AtomicU64::new(0));
        let loops: Vec<_> = (0..listers)
            .map(|_| {
                let (http, base, token) = (http.clone(), base.clone(), token.clone());
                let (list_stop, lists, pages) = (list_stop.clone(), lists.clone(), pages.clone());
                tokio::spawn(async move {
                    while !list_stop.load(Ordering::Relaxed) {
                        if list_all(&http, &base, &token, &pages).await.is_ok() {
                            lists.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        samples.lock().unwrap().clear();
        let failed0 = stats.failures.load(Ordering::Relaxed);
        let (lists0, pages0) = (lists.load(Ordering::Relaxed), pages.load(Ordering::Relaxed));
        let t0 = Instant::now();
        // One /healthz in the middle of the step, timed.
        tokio::time::sleep(Duration::from_secs(STEP_SECS / 2)).await;
        let h = Instant::now();
        let healthz = match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => {
                format!("{:.0} ms", h.elapsed().as_secs_f64() * 1000.0)
            }
            _ => "failed".into(),
        };
        tokio::time::sleep(Duration::from_secs(STEP_SECS - STEP_SECS / 2)).await;
        let secs = t0.elapsed().as_secs_f64();
        let mut s = std::mem::take(&mut *samples.lock().unwrap());
        s.sort_unstable();
        let failed = stats.failures.load(Ordering::Relaxed) - failed0;
        println!(
            "{listers:>8} {:>9.0} {:>9.2} {:>9.2} {:>9.1} {failed:>7} {:>9.1} {:>8.0} {healthz:>9}",
            s.len() as f64 / secs,
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            percentile(&s, 1.0),
            (lists.load(Ordering::Relaxed) - lists0) as f64 / secs,
            (pages.load(Ordering::Relaxed) - pages0) as f64 / secs,
        );
        list_stop.store(true, Ordering::Relaxed);
        for l in loops {
            l.abort();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
