//! A simulated node agent: the same HTTP API as `cosm-agent` (enrol, heartbeat, desired
//! state, observed), with an inventory made up from its number. Hundreds run as tokio tasks
//! in one test process, for scale tests and the heartbeat benchmark; it never replaces the
//! real agent in the end-to-end tests that boot it.
//!
//! Queued actions go through the agent's own dispatcher and controllers, in their
//! simulated forms ([`cosm_agent::controller`]), so both agents act alike. The heartbeat
//! task never waits for a controller: it hands actions over and picks up outcomes at each
//! beat. Controller threads start only when an agent first sees an action, so a fleet that
//! is only beating (the heartbeat benchmark) costs no threads.
//!
//! An agent given a simulated hypervisor ([`SimAgent::with_vm_host`]) also runs the real
//! agent's VM controller ([`cosm_agent::vms`]) on it, in-process: the desired VMs are
//! defined and "run" in memory, and the controller posts its own reports to
//! `/api/v1/agent/vms`, as on a real host.

use anyhow::{bail, Context};
use cosm_agent::controller::{simulated_controllers, Dispatcher};
use cosm_agent::vms::{HttpReportSink, SimHypervisor, VmConfig, VmController, VmControllerHandle};
use cosm_wire::{
    Cpu, DesiredState, Disk, Enroll, Enrolled, Heartbeat, HeartbeatReply, Inventory, MacAddr, Nic,
    Observed, Peer, PeerSeen,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// How often a simulated host's VM controller reconciles (the real agent's default).
pub const SIM_VM_INTERVAL: Duration = Duration::from_secs(2);

/// Counters shared by a fleet of simulated agents.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub beats: AtomicU64,
    pub failures: AtomicU64,
    /// Sum and max of heartbeat answer times, in microseconds.
    pub latency_sum_us: AtomicU64,
    pub latency_max_us: AtomicU64,
}

/// Peer probes of a simulated fleet, made up in-process: at scale (a thousand agents in
/// one process) no UDP probe is sent. An agent with probes reports, for each peer the
/// appliance handed it, an answer a moment ago, unless the peer is in `dead` (then it
/// never answered).
#[derive(Debug, Default)]
pub struct SimProbes {
    pub dead: Mutex<HashSet<MacAddr>>,
}

impl SimProbes {
    /// From now on `mac` answers no probe.
    pub fn kill(&self, mac: MacAddr) {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(mac);
    }

    fn seen(&self, peers: &[Peer]) -> Vec<PeerSeen> {
        let dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .map(|p| PeerSeen {
                mac: p.mac,
                // A live peer answered within the last probe round (the real agent probes
                // every heartbeat).
                last_answer_ms: (!dead.contains(&p.mac)).then_some(300),
            })
            .collect()
    }
}

/// One simulated agent, enrolled and beating until `stop` is set.
#[derive(Debug)]
pub struct SimAgent {
    pub mac: MacAddr,
    base: String,
    credential: String,
    http: reqwest::Client,
    /// How long each simulated action takes.
    action_delay: Duration,
    /// What its heartbeats say it converged to (see [`Actions`]).
    observed_generation: AtomicU64,
    /// The simulated hypervisor its VM controller drives, when it is a host.
    vm_host: Option<SimHypervisor>,
    /// Where it says it answers peer probes, and the fleet's simulated probes.
    probes: Option<(String, Arc<SimProbes>)>,
    /// The peers the last heartbeat reply handed it.
    peers: Mutex<Vec<Peer>>,
}

/// An agent's actions between beats. Kept out of [`SimAgent`] (which heartbeats borrow
/// across `.await`), because the dispatcher's channels may be moved between threads but not
/// shared.
#[derive(Debug, Default)]
struct Actions {
    /// Started at the first desired state that lists an action.
    dispatcher: Option<Dispatcher>,
    fetched_generation: u64,
    fetched_role: Option<cosm_wire::RoleName>,
    /// A desired state was fetched and not yet reported as seen.
    report_due: bool,
    /// The VM controller's thread, when the agent is a host.
    vms: Option<VmControllerHandle>,
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
            action_delay: Duration::ZERO,
            observed_generation: AtomicU64::new(0),
            vm_host: None,
            probes: None,
            peers: Mutex::default(),
        })
    }

    /// Makes this agent a hypervisor host: its VM controller runs on `host` (one thread,
    /// started when the agent runs), reconciling every `SIM_VM_INTERVAL`.
    pub fn with_vm_host(mut self, host: SimHypervisor) -> SimAgent {
        self.vm_host = Some(host);
        self
    }

    /// Makes this host report `probe` as its probe address and, in each heartbeat, what
    /// `probes` says of the peers the appliance handed it (see [`SimProbes`]).
    pub fn with_probes(mut self, probe: String, probes: Arc<SimProbes>) -> SimAgent {
        self.probes = Some((probe, probes));
        self
    }

    /// Starts the VM controller's thread on the agent's simulated hypervisor.
    fn start_vm_controller(&self, host: &SimHypervisor) -> anyhow::Result<VmControllerHandle> {
        let credential = self.credential.clone();
        let credential: cosm_agent::vms::CredentialSource =
            Arc::new(move || Some(credential.clone()));
        let config = VmConfig {
            // Simulated hosts make no files; the directory is only measured for capacity.
            state_dir: std::env::temp_dir(),
            appliance: self.base.clone(),
            credential: credential.clone(),
            interval: SIM_VM_INTERVAL,
            migration_uri: Some(host.uri().to_string()),
            files: false,
            probe: self.probes.as_ref().map(|(p, _)| p.clone()),
            vtep: None,
        };
        let sink = HttpReportSink::new(&self.base, credential);
        let controller = VmController::new(Arc::new(host.clone()), config, Box::new(sink));
        VmControllerHandle::start(controller).context("cannot start the VM controller")
    }

    /// Each action this agent carries out takes `delay` (default: none).
    pub fn with_action_delay(mut self, delay: Duration) -> SimAgent {
        self.action_delay = delay;
        self
    }

    /// One heartbeat; returns the desired generation.
    pub async fn beat(&self, stats: &FleetStats) -> anyhow::Result<u64> {
        let peers = match &self.probes {
            Some((_, probes)) => probes.seen(&self.peers.lock().unwrap_or_else(|e| e.into_inner())),
            None => Vec::new(),
        };
        let start = Instant::now();
        let resp = self
            .http
            .post(format!("{}/api/v1/agent/heartbeat", self.base))
            .bearer_auth(&self.credential)
            .json(&Heartbeat {
                cpu_percent: 1.0,
                observed_generation: self.observed_generation.load(Ordering::Relaxed),
                peers,
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
                let reply = r.json::<HeartbeatReply>().await?;
                if self.probes.is_some() {
                    *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = reply.peers;
                }
                Ok(reply.desired_generation)
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

    /// Fetches the desired state when `generation` moved, hands new actions to the
    /// simulated controllers, and reports the outcomes that came in. Never waits for a
    /// controller.
    async fn converge(&self, generation: u64, actions: &mut Actions) -> anyhow::Result<()> {
        if generation != actions.fetched_generation {
            let desired: DesiredState = self
                .http
                .get(format!("{}/api/v1/agent/desired", self.base))
                .bearer_auth(&self.credential)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if actions.dispatcher.is_none() && !desired.actions.is_empty() {
                let controllers = simulated_controllers(self.action_delay);
                actions.dispatcher = Some(
                    Dispatcher::start(controllers).context("cannot start controller threads")?,
                );
            }
            if let Some(d) = &mut actions.dispatcher {
                d.dispatch(&desired.actions);
            }
            if let Some(vms) = &actions.vms {
                vms.set_desired(desired.vms, desired.networks);
            }
            actions.fetched_generation = desired.generation;
            actions.fetched_role = desired.role;
            actions.report_due = true;
        }
        let results = match &mut actions.dispatcher {
            Some(d) => {
                d.collect();
                d.results()
            }
            None => Vec::new(),
        };
        if results.is_empty() && !actions.report_due {
            return Ok(());
        }
        let ids: Vec<u64> = results.iter().map(|r| r.id).collect();
        let report = Observed {
            generation: actions.fetched_generation,
            role: actions.fetched_role.clone(),
            results,
        };
        self.http
            .post(format!("{}/api/v1/agent/observed", self.base))
            .bearer_auth(&self.credential)
            .json(&report)
            .send()
            .await?
            .error_for_status()?;
        actions.report_due = false;
        let idle = match &mut actions.dispatcher {
            Some(d) => {
                d.reported(&ids);
                d.is_idle()
            }
            None => true,
        };
        if idle {
            self.observed_generation
                .store(actions.fetched_generation, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Beats every `interval` (with a per-agent offset so a fleet is spread out) until
    /// `stop` is set, and carries out queued actions through the simulated controllers.
    pub async fn run(
        self,
        interval: Duration,
        offset: Duration,
        stop: Arc<AtomicBool>,
        stats: Arc<FleetStats>,
    ) {
        tokio::time::sleep(offset).await;
        let mut tick = tokio::time::interval(interval);
        let mut actions = Actions::default();
        if let Some(host) = &self.vm_host {
            match self.start_vm_controller(host) {
                Ok(handle) => actions.vms = Some(handle),
                Err(e) => eprintln!("simulated agent {}: {e:#}", self.mac),
            }
        }
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if let Ok(generation) = self.beat(&stats).await {
                // A failed fetch or report is tried again at the next beat.
                let _ = self.converge(generation, &mut actions).await;
            }
        }
    }
}
