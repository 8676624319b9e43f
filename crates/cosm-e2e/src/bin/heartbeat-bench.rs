//! `make bench` part 2: heartbeat capacity. Simulated agents beat once a second against a
//! release-built appliance; the fleet grows step by step until the appliance's p99 answer
//! time passes 50 ms. Prints agents held, p50/p99 answer times, appliance CPU, failures.
//!
//! Run through `make bench` (the appliance is pinned to CPU 0, this client to CPU 1).

use cosm_e2e::bench::cpu_seconds;
use cosm_e2e::simagent::{FleetStats, SimAgent};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEPS: [u32; 10] = [
    500, 1000, 2000, 4000, 6000, 8000, 10_000, 12_000, 14_000, 16_000,
];
const STEP_SECS: u64 = 10;
const P99_LIMIT_MS: f64 = 50.0;

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var("COSM_BIN").unwrap_or_else(|_| "target/release/cosm-appliance".into());
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("appliance.toml");
    std::fs::write(&cfg, "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:18099\"\n[agents]\nheartbeat_secs = 1\nmissed_beats = 5\nmax_discovered = 100000\nenroll_per_sec = 100000\nenroll_burst = 100000\n")?;
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0", &bin, "serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let base = "http://127.0.0.1:18099".to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(10))
        .build()?;
    let token_path = dir.path().join("data/admin.token");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() || !token_path.exists() {
        anyhow::ensure!(Instant::now() < deadline, "the appliance did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(&token_path)?.trim().to_string();

    println!("Heartbeat capacity: simulated agents at 1 beat/s, {STEP_SECS} s per step, appliance on CPU 0");
    println!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>8} {:>6}",
        "agents", "beats/s", "p50 ms", "p99 ms", "max ms", "cpu %", "lost"
    );
    let mut enrolled = 0u32;
    let mut held = 0u32;
    let mut stops: Vec<Arc<AtomicBool>> = Vec::new();
    let samples: Arc<Mutex<Vec<u32>>> = Arc::default();
    for &n in &STEPS {
        // Enrol the additional agents and start them beating, spread over the second.
        let stop = Arc::new(AtomicBool::new(false));
        stops.push(stop.clone());
        let stats = Arc::new(FleetStats::default());
        while enrolled < n {
            let batch: Vec<_> = (enrolled..(enrolled + 200).min(n))
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
        tokio::time::sleep(Duration::from_secs(2)).await;
        samples.lock().unwrap().clear();
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(STEP_SECS)).await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(pid) - cpu0) / secs * 100.0;
        let mut s = std::mem::take(&mut *samples.lock().unwrap());
        s.sort_unstable();
        let lost: Vec<serde_json::Value> = http
            .get(format!("{base}/api/v1/machines?state=lost"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let (p50, p99, max) = (
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            percentile(&s, 1.0),
        );
        println!(
            "{n:>8} {:>10.0} {p50:>9.2} {p99:>9.2} {max:>9.1} {cpu:>8.0} {:>6}",
            s.len() as f64 / secs,
            lost.len()
        );
        if p99 > P99_LIMIT_MS || !lost.is_empty() {
            break;
        }
        held = n;
    }
    for s in &stops {
        s.store(true, Ordering::Relaxed);
    }
    println!("held {held} agents at 1 beat/s with p99 <= {P99_LIMIT_MS} ms (goal 10,000)");
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
