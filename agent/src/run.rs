//! The agent loop: enrol, heartbeat, and converge to the desired state the appliance hands
//! down. The agent pulls; it never listens. When the appliance is away it retries with
//! backoff and never exits because of it.

use crate::inventory::read_inventory;
use crate::settings::Settings;
use anyhow::{bail, Context};
use cosm_wire::{
    ActionResult, ActionStatus, AgentAction, DesiredState, Enroll, Enrolled, Heartbeat,
    HeartbeatReply, Inventory, MacAddr, Observed,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How actions are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionMode {
    /// Really reboot or power off (`reboot -f`, `poweroff -f`).
    Execute,
    /// Report the action done without doing it (tests, and trying an agent out).
    DryRun,
}

/// The loop's options beyond [`Settings`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Filesystem root the inventory is read from.
    pub root: PathBuf,
    pub actions: ActionMode,
    /// Enrol once (storing the credential) and return: for installers, e.g. the kickstart
    /// `%post`, which enrols the installed system before its first boot.
    pub enroll_only: bool,
}

/// Outcome of one HTTP call, as the loop needs it.
enum Call<T> {
    Ok(T),
    /// The credential was refused: enrol again.
    Unauthorized,
}

struct Agent {
    settings: Settings,
    opts: RunOptions,
    http: reqwest::blocking::Client,
    mac: MacAddr,
    credential: Option<String>,
    heartbeat: Duration,
    observed_generation: u64,
    /// Kept between beats so CPU usage is measured over the interval; `None` where sysinfo
    /// cannot read this system (the heartbeat then carries zeros).
    system: Option<Option<sysinfo::System>>,
}

fn credential_path(state_dir: &Path) -> PathBuf {
    state_dir.join("credential")
}

/// Stores the node credential with mode 0600 (written to a temporary file, then renamed).
fn store_credential(state_dir: &Path, credential: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let path = credential_path(state_dir);
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    writeln!(f, "{credential}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The MAC to enrol as: the configured one, else the first NIC with link, else the first.
fn pick_mac(settings: &Settings, inventory: &Inventory) -> anyhow::Result<MacAddr> {
    if let Some(m) = settings.mac {
        return Ok(m);
    }
    inventory
        .nics
        .iter()
        .find(|n| n.link_up)
        .or_else(|| inventory.nics.first())
        .map(|n| n.mac)
        .context("no network interface found to enrol as; pass --mac or boot with cosm.mac=")
}

/// Runs until the process is stopped. Errors only for problems a retry cannot fix.
pub fn run(settings: Settings, opts: RunOptions) -> anyhow::Result<()> {
    let inventory = read_inventory(&opts.root)?;
    let mac = pick_mac(&settings, &inventory)?;
    let credential = std::fs::read_to_string(credential_path(&settings.state_dir))
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    if credential.is_none() && settings.token.is_none() {
        bail!(
            "no enrolment token and no stored credential in {}: pass --token, set COSM_TOKEN, or boot with cosm.token=",
            settings.state_dir.display()
        );
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .context("cannot build the HTTP client")?;
    let mut agent = Agent {
        settings,
        opts,
        http,
        mac,
        credential,
        heartbeat: Duration::from_secs(5),
        observed_generation: 0,
        system: None,
    };
    if agent.opts.enroll_only {
        let token = agent.settings.token.clone();
        if token.is_none() {
            bail!("--enroll-only needs an enrolment token (--token, COSM_TOKEN or cosm.token=)");
        }
        agent.enroll()?;
        let stored = credential_path(&agent.settings.state_dir);
        if !stored.exists() {
            bail!(
                "enrolled, but the credential could not be stored in {}",
                stored.display()
            );
        }
        return Ok(());
    }
    agent.main_loop();
    Ok(())
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/agent/{path}", self.settings.appliance)
    }

    /// Enrols with a fresh inventory. Needs the enrolment token.
    fn enroll(&mut self) -> anyhow::Result<()> {
        let token = self.settings.token.clone().context(
            "the stored credential was refused and there is no enrolment token to enrol again",
        )?;
        let inventory = read_inventory(&self.opts.root)?;
        let body = Enroll {
            mac: self.mac,
            inventory,
        };
        let resp = self
            .http
            .post(self.url("enroll"))
            .bearer_auth(&token)
            .json(&body)
            .send()?;
        if !resp.status().is_success() {
            bail!(
                "enrolment refused: {} {}",
                resp.status(),
                resp.text().unwrap_or_default()
            );
        }
        let e: Enrolled = resp.json()?;
        if let Err(err) = store_credential(&self.settings.state_dir, &e.credential) {
            // In a ramdisk without a writable state dir the credential lives in memory only.
            eprintln!("warning: {err:#}");
        }
        self.credential = Some(e.credential);
        self.heartbeat = Duration::from_secs(e.heartbeat_secs.max(1).into());
        eprintln!(
            "enrolled as {} (machine {}, state {})",
            self.mac, e.machine.id, e.machine.state
        );
        Ok(())
    }

    fn utilisation(&mut self) -> Heartbeat {
        let observed_generation = self.observed_generation;
        let Some(sys) = self
            .system
            .get_or_insert_with(|| sysinfo::System::new().ok())
        else {
            return Heartbeat {
                observed_generation,
                ..Default::default()
            };
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let (disk_total, disk_used) = sysinfo::Disks::new_with_refreshed_list()
            .map(|d| {
                d.iter().fold((0u64, 0u64), |(t, u), disk| {
                    (
                        t + disk.total_space(),
                        u + disk.total_space().saturating_sub(disk.available_space()),
                    )
                })
            })
            .unwrap_or((0, 0));
        Heartbeat {
            cpu_percent: sys.global_cpu_usage(),
            memory_used_bytes: sys.used_memory(),
            memory_total_bytes: sys.total_memory(),
            disk_used_bytes: disk_used,
            disk_total_bytes: disk_total,
            uptime_secs: sysinfo::System::uptime().unwrap_or(0),
            observed_generation,
        }
    }

    fn heartbeat_once(&mut self) -> anyhow::Result<Call<u64>> {
        let cred = self.credential.clone().context("not enrolled")?;
        let body = self.utilisation();
        let resp = self
            .http
            .post(self.url("heartbeat"))
            .bearer_auth(&cred)
            .json(&body)
            .send()?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED
            || resp.status() == reqwest::StatusCode::NOT_FOUND
        {
            return Ok(Call::Unauthorized);
        }
        if !resp.status().is_success() {
            bail!("heartbeat answered {}", resp.status());
        }
        Ok(Call::Ok(resp.json::<HeartbeatReply>()?.desired_generation))
    }

    /// Fetches the desired state, acts on it, and reports what it did.
    fn converge(&mut self) -> anyhow::Result<()> {
        let cred = self.credential.clone().context("not enrolled")?;
        let desired: DesiredState = self
            .http
            .get(self.url("desired"))
            .bearer_auth(&cred)
            .send()?
            .error_for_status()?
            .json()?;
        let mut results = Vec::new();
        let mut after = Vec::new();
        for action in &desired.actions {
            let (status, message) = self.act(action, &mut after);
            eprintln!(
                "action {} ({}): {status:?} {message}",
                action.id, action.kind
            );
            results.push(ActionResult {
                id: action.id,
                status,
                message,
            });
        }
        let report = Observed {
            generation: desired.generation,
            role: desired.role.clone(),
            results,
        };
        self.http
            .post(self.url("observed"))
            .bearer_auth(&cred)
            .json(&report)
            .send()?
            .error_for_status()?;
        self.observed_generation = desired.generation;
        // Disruptive actions run only after the appliance has heard about them.
        for cmd in after {
            if let Err(e) = std::process::Command::new(cmd[0]).args(&cmd[1..]).status() {
                eprintln!("error: cannot run {}: {e}", cmd.join(" "));
            }
        }
        Ok(())
    }

    fn act(
        &mut self,
        action: &AgentAction,
        after: &mut Vec<Vec<&'static str>>,
    ) -> (ActionStatus, String) {
        let disruptive: Option<Vec<&'static str>> = match action.kind.as_str() {
            "reboot" => Some(vec!["reboot", "-f"]),
            "power-off" => Some(vec!["poweroff", "-f"]),
            "re-register" => {
                return match self.enroll() {
                    Ok(()) => (
                        ActionStatus::Done,
                        "enrolled again with a fresh inventory".into(),
                    ),
                    Err(e) => (ActionStatus::Failed, format!("{e:#}")),
                };
            }
            other => {
                return (
                    ActionStatus::Unsupported,
                    format!("this agent does not know the action {other:?}"),
                )
            }
        };
        match (self.opts.actions, disruptive) {
            (ActionMode::DryRun, Some(cmd)) => (
                ActionStatus::Done,
                format!("dry run: would run {}", cmd.join(" ")),
            ),
            (ActionMode::Execute, Some(cmd)) => {
                after.push(cmd.clone());
                (ActionStatus::Done, format!("running {}", cmd.join(" ")))
            }
            (_, None) => (ActionStatus::Unsupported, String::new()),
        }
    }

    fn main_loop(&mut self) {
        let mut backoff = Duration::from_secs(1);
        let max_backoff = Duration::from_secs(30);
        let mut enrolled = self.credential.is_some() && self.settings.token.is_none();
        loop {
            let started = Instant::now();
            let step = (|| -> anyhow::Result<()> {
                if !enrolled {
                    self.enroll()?;
                    enrolled = true;
                }
                match self.heartbeat_once()? {
                    Call::Unauthorized => {
                        eprintln!("the appliance refused this node's credential; enrolling again");
                        enrolled = false;
                    }
                    Call::Ok(generation) if generation > self.observed_generation => {
                        self.converge()?
                    }
                    Call::Ok(_) => {}
                }
                Ok(())
            })();
            match step {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    std::thread::sleep(self.heartbeat.saturating_sub(started.elapsed()));
                }
                Err(e) => {
                    eprintln!("warning: {e:#}; retrying in {} s", backoff.as_secs());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }
}
