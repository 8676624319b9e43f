//! The application layer: every workflow of the appliance and its preconditions.
//!
//! A workflow that writes is one [`Command`] ([`command`]), applied by the store inside one
//! transaction, so the checks it makes and the writes they guard are never apart. The
//! workflows live by subject: [`machines`] (registration, role, state, lost and back),
//! [`deploy`] (kickstart fetched, install report, redeploy), [`agents`] (enrolment,
//! actions), [`catalog`] (roles, rules, tokens, images). [`lifecycle`] and [`rules`] are the
//! pure decisions they call. Around them: [`liveness`] (heartbeats, in memory),
//! [`timeline`] (boot steps onto timelines), [`boot`] (what a machine boots, its
//! kickstart), [`images`] (the repository's files), [`tokens`] (secrets and hashes).
//!
//! [`App`] is what the HTTP layer calls: one method per workflow, so a handler parses,
//! calls one method and renders. Multi-step work to come (migrate, evacuate, fence) gets
//! its home here as steps recorded in the store, each step one command, resumable after a
//! restart.
//!
//! This layer knows no HTTP: its errors are [`AppError`] values that the HTTP layer maps to
//! statuses.

mod agents;
pub mod boot;
mod catalog;
pub mod command;
pub mod console;
mod deploy;
pub mod ha;
pub mod hosts;
pub mod images;
pub mod install;
pub mod lifecycle;
pub mod liveness;
mod machines;
mod net;
pub mod placement;
pub mod power;
pub mod rules;
pub mod settings;
pub mod timeline;
pub mod tokens;
pub mod vms;

pub use agents::{EnrolBy, EnrollGate};
pub use command::{Command, Op, Outcome};
pub use deploy::installable;
pub use machines::{dhcp_only, effective_state, WATCHED};

use crate::store::StoreError;
use cosm_wire::{ActionKind, Enroll, Heartbeat, MacAddr, Machine, MachineState, Scope, TokenInfo};
use std::sync::Arc;

/// The store of this application's commands.
pub type Store = crate::store::Store<Command>;

/// Why a workflow did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A part of the appliance that is not configured here (network boot, images).
    #[error("{message}")]
    Off { code: &'static str, message: String },
    /// Input the workflow cannot use (a kickstart that does not render, …).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error(transparent)]
    Upload(#[from] images::UploadError),
    #[error("{message}")]
    NotFound { message: String },
    /// A machine's BMC (or fence command) failed the call.
    #[error("{message}")]
    Bmc { code: &'static str, message: String },
    /// The caller's credential does not allow this.
    #[error("{message}")]
    Forbidden { message: String },
    /// Too many requests of this kind; try again after `retry_after_secs`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
}

/// A machine the caller names, or a `NotFound` with a hint for the caller.
fn known_machine(store: &Store, mac: MacAddr, hint: &str) -> Result<Machine, AppError> {
    store.machine(mac)?.ok_or_else(|| AppError::NotFound {
        message: format!("machine {mac} not found{hint}"),
    })
}

impl Store {
    /// Applies one operation, stamped now.
    pub async fn run(&self, op: Op) -> Result<Outcome, StoreError> {
        self.apply(Command::now(op)).await
    }

    /// Applies a machine operation and returns the machine.
    pub async fn run_machine(&self, op: Op) -> Result<Machine, StoreError> {
        self.run(op).await.map(Outcome::into_machine)
    }
}

/// Everything the workflows need; cheap to clone.
#[derive(Debug, Clone)]
pub struct App {
    pub store: Store,
    pub liveness: Arc<liveness::Liveness>,
    /// `None` when the appliance does not serve network boot.
    pub boot: Option<Arc<boot::BootContext>>,
    /// `None`: no image repository.
    pub images: Option<images::ImageRepo>,
    /// Bounds on enrolments that create machines.
    pub enroll_gate: Arc<EnrollGate>,
    /// The reads whose cost grows with the store (lists), off the async workers.
    pub bulk_reads: Arc<BulkReads>,
    /// What VM hosts' agents last reported (in memory).
    pub hosts: Arc<hosts::HostReports>,
    /// How far VM placement may exceed hosts' capacity.
    pub overcommit: placement::Overcommit,
    /// Host HA: settings and what the engine has under way (in memory).
    pub ha: Arc<ha::Ha>,
    /// Console sessions (in memory).
    pub sessions: Arc<console::Sessions>,
    /// The site settings in force.
    pub settings: Arc<settings::Live>,
}

/// Reads whose cost grows with the store (a page of a list, the machine counts of
/// `/metrics`) run on tokio's blocking threads, never on the async workers that answer
/// `/healthz` and heartbeats, and at most `permits` of them at once: a burst of 2,000
/// lists then waits in a fair queue for a few threads instead of filling the blocking pool
/// (where point reads and the heartbeat path would queue behind it) or every core. Point
/// reads (one key: a token, a machine) stay where they are: one B-tree lookup in cached
/// pages costs less than the hop to another thread.
#[derive(Debug)]
pub struct BulkReads {
    permits: tokio::sync::Semaphore,
    size: usize,
}

impl BulkReads {
    /// At most `size` bulk reads at once (at least one).
    pub fn new(size: usize) -> BulkReads {
        let size = size.max(1);
        BulkReads {
            permits: tokio::sync::Semaphore::new(size),
            size,
        }
    }

    /// One per CPU this process may run on: a list then never holds every core.
    pub fn per_cpu() -> BulkReads {
        BulkReads::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `read` on a blocking thread once a permit is free, and returns what it made.
    pub async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AppError::Store(StoreError::WriterGone))?;
        tokio::task::spawn_blocking(read).await.map_err(|e| {
            AppError::Store(StoreError::Db {
                message: format!("a bulk read failed: {e}"),
            })
        })
    }
}

impl App {
    pub fn boot(&self) -> Result<&Arc<boot::BootContext>, AppError> {
        self.boot.as_ref().ok_or_else(|| AppError::Off {
            code: "boot_off",
            message: "network boot is not configured on this appliance".into(),
        })
    }

    pub fn images(&self) -> Result<&images::ImageRepo, AppError> {
        self.images.as_ref().ok_or_else(|| AppError::Off {
            code: "images_off",
            message: "this appliance has no image repository".into(),
        })
    }

    /// A machine by MAC, or `NotFound` naming it.
    pub fn machine(&self, mac: MacAddr) -> Result<Machine, AppError> {
        known_machine(&self.store, mac, "")
    }

    /// An agent enrols: returns its machine and its new credential (shown only here).
    /// Whether it may replace the machine's current agent depends on `by` (see
    /// [`agents::may_replace_agent`]).
    pub async fn enroll(&self, body: Enroll, by: EnrolBy) -> Result<(Machine, String), AppError> {
        if self.store.machine(body.mac)?.is_none() {
            if let Err(retry_after_secs) = self.enroll_gate.take() {
                tracing::warn!(mac = %body.mac, "enrolment of a new machine refused: rate limit");
                return Err(AppError::RateLimited {
                    message: format!(
                        "too many new machines are enrolling (agents.enroll_per_sec = {}, agents.enroll_burst = {}); try again in {retry_after_secs} s",
                        self.enroll_gate.limits.per_sec, self.enroll_gate.limits.burst
                    ),
                    retry_after_secs,
                });
            }
        }
        let credential = tokens::generate_token();
        let op = Op::Enroll {
            mac: body.mac,
            inventory: body.inventory,
            credential_hash: tokens::hash_token(&credential),
            max_discovered: self.enroll_gate.limits.max_discovered,
            by,
            agent_silent: self.liveness.is_silent(body.mac, std::time::Instant::now()),
        };
        let machine = self.store.run_machine(op).await?;
        self.liveness.beat(machine.mac, Heartbeat::default());
        Ok((machine, credential))
    }

    /// A heartbeat: recorded in memory; a lost machine returns to the state it was lost
    /// from. Returns the machine as it is now.
    pub async fn heartbeat(&self, mac: MacAddr, beat: Heartbeat) -> Result<Machine, AppError> {
        self.liveness.beat(mac, beat);
        let m = known_machine(&self.store, mac, "; enrol again")?;
        if m.state == MachineState::Deployed && m.awaits_installed_agent {
            return match self.store.run_machine(Op::Activate { mac }).await {
                Ok(active) => {
                    tracing::info!(%mac, "machine active: its installed agent beats");
                    Ok(active)
                }
                Err(e) => {
                    tracing::warn!(%mac, error = %e, "a deployed machine's agent beats but it cannot become active");
                    Ok(m)
                }
            };
        }
        if m.state != MachineState::Lost {
            return Ok(m);
        }
        match self.store.run_machine(Op::Resume { mac }).await {
            Ok(back) => {
                tracing::info!(%mac, state = %back.state, "machine back: heartbeats resumed");
                Ok(back)
            }
            Err(e) => {
                tracing::warn!(%mac, error = %e, "a lost machine beats again but cannot return");
                Ok(m)
            }
        }
    }

    /// Starts a machine's install over (see [`deploy`]).
    /// Without a live agent to reboot it, a machine with power settings is set to boot
    /// from the network once and power-cycled through its BMC (issue 13).
    pub async fn redeploy(&self, mac: MacAddr, by: &str) -> Result<Machine, AppError> {
        let agent_alive = self.liveness.is_alive(mac);
        let op = Op::Redeploy {
            mac,
            by: by.to_string(),
            agent_alive,
        };
        let m = self.store.run_machine(op).await?;
        if !agent_alive && self.store.power_settings(mac)?.is_some() {
            if let Err(e) = self.pxe_boot(mac, by).await {
                return Err(match e {
                    AppError::Bmc { code, message } => AppError::Bmc {
                        code,
                        message: format!(
                            "machine {mac} is ready for its install, but booting it from the network through its BMC failed: {message}"
                        ),
                    },
                    other => other,
                });
            }
        }
        Ok(m)
    }

    /// The machine an install token is valid for now, if any (see [`tokens::InstallKey`]).
    pub fn install_caller(&self, token: &str) -> Result<Option<MacAddr>, StoreError> {
        let (Some(boot), Some(mac)) = (self.boot.as_ref(), tokens::install_token_mac(token)) else {
            return Ok(None);
        };
        Ok(self
            .store
            .machine(mac)?
            .filter(|m| boot.install_key.accepts(m, token))
            .map(|m| m.mac))
    }

    /// An operator lets a new agent enrol `mac` (its agent credentials are revoked).
    pub async fn reregister(&self, mac: MacAddr, by: &str) -> Result<Machine, StoreError> {
        let op = Op::Reregister {
            mac,
            by: by.to_string(),
        };
        self.store.run_machine(op).await
    }

    /// The machine an installer asks for `what` (its kickstart, its install plan), when it
    /// may be installed and `token` is its current install token (the `url` of its boot
    /// script carries it); else nothing is served: 404, 409 or 403.
    pub(super) fn installing_machine(
        &self,
        mac: MacAddr,
        token: Option<&str>,
        what: &str,
        url: &str,
    ) -> Result<Machine, AppError> {
        let boot = self.boot()?;
        let m = self.store.machine(mac)?.ok_or_else(|| AppError::NotFound {
            message: format!("no machine {mac}"),
        })?;
        installable(&m)?;
        if !token.is_some_and(|t| boot.install_key.accepts(&m, t)) {
            tracing::warn!(%mac, with_token = token.is_some(), "{what} refused: no valid install token");
            return Err(AppError::Forbidden {
                message: format!(
                    "{what} of {mac} needs its install token (?token=): the {url} URL of its boot script carries it; a token of an earlier install round no longer works"
                ),
            });
        }
        Ok(m)
    }

    /// The installer of `mac` fetches its kickstart with the install token its boot script
    /// gave it: rendered, then the machine moves to `deploying` (a refused move serves
    /// nothing). Without that token nothing is served and nothing moves: the URL is open
    /// to the whole provisioning network.
    pub async fn installer_kickstart(
        &self,
        mac: MacAddr,
        token: Option<&str>,
    ) -> Result<String, AppError> {
        let boot = self.boot()?;
        let m = self.installing_machine(mac, token, "the kickstart", "inst.ks=")?;
        let text = boot.render_kickstart(&m)?;
        let release = boot.kickstart().release.name().to_string();
        let m = self
            .store
            .run_machine(Op::StartInstall {
                mac,
                release,
                image: None,
            })
            .await?;
        boot.timeline.note(
            mac,
            cosm_wire::EventKind::Boot,
            format!(
                "kickstart served ({}, role {})",
                boot.kickstart().release.name(),
                m.role.map(|r| r.to_string()).unwrap_or_default()
            ),
        );
        Ok(text)
    }

    /// Queues an agent action.
    pub async fn queue_action(
        &self,
        mac: MacAddr,
        kind: ActionKind,
    ) -> Result<Machine, StoreError> {
        self.store.run_machine(Op::QueueAction { mac, kind }).await
    }

    /// Creates an API token of `scope`; returns its record and its secret (shown once).
    pub async fn create_token(
        &self,
        name: &str,
        scope: Scope,
    ) -> Result<(TokenInfo, String), StoreError> {
        tokens::create_token(&self.store, name, scope).await
    }

    /// The inventory-less view the agent gets of its machine's desired state.
    pub fn desired(&self, mac: MacAddr) -> Result<cosm_wire::DesiredState, AppError> {
        let m = known_machine(&self.store, mac, "; enrol again")?;
        let generation = self.desired_generation(&m)?;
        let (_, mut vms) = self.desired_vms(mac)?;
        let networks = if !App::runs_vms(&m) {
            // A fenced host runs nothing until an operator returns it to service.
            vms.clear();
            None
        } else if hosts::is_host(&m) {
            let nets = self.host_networks(mac)?;
            self.hold_migrations(&mut vms)?;
            Some(nets)
        } else {
            None
        };
        Ok(cosm_wire::DesiredState {
            generation,
            role: m.role,
            actions: m.pending_actions,
            vms,
            networks,
        })
    }

    /// The hosts `mac`'s agent should probe (issue 13's second check).
    pub fn peers_of(&self, mac: MacAddr) -> Vec<cosm_wire::Peer> {
        self.hosts.peers_of(mac)
    }

    /// The generation an agent's desired state is at: its machine's plus its VM set's plus
    /// the tenant networks' (stored, and what hosts reported of their endpoints).
    pub fn desired_generation(&self, m: &Machine) -> Result<u64, AppError> {
        Ok(m.desired_generation
            + self.store.vm_generation(m.mac)?
            + self.store.net_generation()?
            + self.hosts.net_epoch())
    }
}
