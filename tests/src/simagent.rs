//! A simulated node agent: the same HTTP API as `cosm-agent` (enrol, heartbeat, desired
//! state), with an inventory made up from its number. Hundreds run as tokio tasks in one
//! test process, for scale tests and the heartbeat benchmark; it never replaces the real
//! agent in the end-to-end tests that boot it.

use anyhow::{bail, Context};
use cosm_wire::{Cpu, Disk, Enroll, Enrolled, Heartbeat, HeartbeatReply, Inventory, MacAddr, Nic};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The simulated machine number `n`: MAC 02:5a:00:xx:xx:xx (locally administered).
pub fn sim_mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr::new([0x02, 0x5a, b[0], b[1], b[2], b[3]])
}

pub fn sim_inventory(n: u32) -> Inventory {
    let cpus = 2 + (n % 4) * 2;
    Inventory {
        cpu: Cpu {
            model: "Simulated CPU".into(),
            sockets: 1,
            cores: cpus,
            threads: cpus,
        },
        memory_bytes: u64::from(4 + n % 8) << 30,
        disks: vec![Disk {
            name: "vda".into(),
            size_bytes: 100 << 30,
            ..Default::default()
        }],
        nics: vec![Nic {
            name: "eth0".into(),
            mac: sim_mac(n),
            link_up: true,
            speed_mbps: Some(10_000),
        }],
        kernel: Some("sim".into()),
        ..Default::default()
    }
}

/// Counters shared by a fleet of simulated agents.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub beats: AtomicU64,
    pub failures: AtomicU64,
    /// Sum and max of heartbeat answer times, in microseconds.
    pub latency_sum_us: AtomicU64,
    pub latency_max_us: AtomicU64,
}

/// One simulated agent, enrolled and beating until `stop` is set.
#[derive(Debug)]
pub struct SimAgent {
    pub mac: MacAddr,
    base: String,
    credential: String,
    http: reqwest::Client,
}

impl SimAgent {
    /// Enrols machine `n` with an enrolment (or admin) token.
    pub async fn enroll(
        http: &reqwest::Client,
        base: &str,
        token: &str,
        n: u32,
    ) -> anyhow::Result<SimAgent> {
        let body = Enroll {
            mac: sim_mac(n),
            inventory: sim_inventory(n),
        };
        let resp = http
            .post(format!("{base}/api/v1/agent/enroll"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .context("enrol")?;
        if !resp.status().is_success() {
            bail!(
                "enrol of {} answered {}: {}",
                body.mac,
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let e: Enrolled = resp.json().await?;
        Ok(SimAgent {
            mac: body.mac,
            base: base.to_string(),
            credential: e.credential,
            http: http.clone(),
        })
    }

    /// One heartbeat; returns the desired generation.
    pub async fn beat(&self, stats: &FleetStats) -> anyhow::Result<u64> {
        let start = Instant::now();
        let resp = self
            .http
            .post(format!("{}/api/v1/agent/heartbeat", self.base))
            .bearer_auth(&self.credential)
            .json(&Heartbeat {
                cpu_percent: 1.0,
                ..Default::default()
            })
            .send()
            .await;
        let us = start.elapsed().as_micros() as u64;
        match resp {
            Ok(r) if r.status().is_success() => {
                stats.beats.fetch_add(1, Ordering::Relaxed);
                stats.latency_sum_us.fetch_add(us, Ordering::Relaxed);
                stats.latency_max_us.fetch_max(us, Ordering::Relaxed);
                Ok(r.json::<HeartbeatReply>().await?.desired_generation)
            }
            Ok(r) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                bail!("heartbeat of {} answered {}", self.mac, r.status())
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
        }
    }

    /// Beats every `interval` (with a per-agent offset so a fleet is spread out) until
    /// `stop` is set.
    pub async fn run(
        self,
        interval: Duration,
        offset: Duration,
        stop: Arc<AtomicBool>,
        stats: Arc<FleetStats>,
    ) {
        tokio::time::sleep(offset).await;
        let mut tick = tokio::time::interval(interval);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let _ = self.beat(&stats).await;
        }
    }
}
