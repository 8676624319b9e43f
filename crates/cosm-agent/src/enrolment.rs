//! Enrolment with the appliance: send the MAC and a fresh inventory with the enrolment
//! token, get back the node's own credential and the heartbeat interval, and keep them in a
//! [`Session`] that the heartbeat loop and the enrolment controller share.
//!
//! Both enrol: the loop when it starts without a credential or its credential is refused,
//! the controller when the appliance queues `re-register`. This module does no heartbeats
//! and carries out no other action.

use crate::inventory::read_inventory;
use anyhow::{bail, Context};
use cosm_wire::{Enroll, Enrolled, MacAddr};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What enrolment gave the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The node credential, once enrolled (or read from the state directory).
    pub credential: Option<String>,
    /// How often the appliance expects a heartbeat.
    pub heartbeat: Duration,
}

/// Enrols this machine. Cheap to clone; clones share one [`Session`].
#[derive(Debug, Clone)]
pub struct Enroller {
    http: reqwest::blocking::Client,
    appliance: String,
    token: Option<String>,
    state_dir: PathBuf,
    mac: MacAddr,
    root: PathBuf,
    session: Arc<Mutex<Session>>,
    /// Held for a whole enrolment, so that the loop's and the controller's never
    /// interleave: each enrolment replaces the node's credential at the appliance, so the
    /// credential stored last must be the one the appliance issued last.
    enrolling: Arc<Mutex<()>>,
}

/// The file the node credential is kept in.
pub fn credential_path(state_dir: &Path) -> PathBuf {
    state_dir.join("credential")
}

/// The stored node credential, if there is one.
pub fn stored_credential(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(credential_path(state_dir))
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Enroller {
    /// `credential` is the stored one, if any; `heartbeat` the interval until the appliance
    /// says otherwise.
    pub fn new(
        http: reqwest::blocking::Client,
        settings: &crate::settings::Settings,
        mac: MacAddr,
        root: PathBuf,
        credential: Option<String>,
    ) -> Enroller {
        Enroller {
            http,
            appliance: settings.appliance.clone(),
            token: settings.token.clone(),
            state_dir: settings.state_dir.clone(),
            mac,
            root,
            session: Arc::new(Mutex::new(Session {
                credential,
                heartbeat: Duration::from_secs(5),
            })),
            enrolling: Arc::default(),
        }
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn credential(&self) -> Option<String> {
        lock(&self.session).credential.clone()
    }

    pub fn heartbeat(&self) -> Duration {
        lock(&self.session).heartbeat
    }

    /// Enrols with a fresh inventory and stores the new credential. Needs the enrolment
    /// token.
    pub fn enroll(&self) -> anyhow::Result<()> {
        let _one_at_a_time = lock(&self.enrolling);
        self.enroll_locked()
    }

    /// Enrols unless the credential is no longer `stale` (say, one the appliance refused):
    /// then the enrolment controller enrolled meanwhile, its credential is the valid one,
    /// and enrolling again would only replace it.
    pub fn enroll_unless_replaced(&self, stale: Option<&str>) -> anyhow::Result<()> {
        let _one_at_a_time = lock(&self.enrolling);
        if self.credential().as_deref() != stale {
            return Ok(());
        }
        self.enroll_locked()
    }

    fn enroll_locked(&self) -> anyhow::Result<()> {
        // The node's own credential first: the appliance lets the enrol token (which every
        // boot script carries) replace an agent only where the machine boots the ramdisk and
        // that agent is silent; its own credential always may. A refused credential (401)
        // falls back to the token.
        let mut bearers: Vec<String> = self.credential().into_iter().collect();
        bearers.extend(self.token.clone());
        if bearers.is_empty() {
            bail!(
                "the stored credential was refused and there is no enrolment token to enrol again"
            );
        }
        let inventory = read_inventory(&self.root)?;
        let body = Enroll {
            mac: self.mac,
            inventory,
        };
        let last = bearers.len() - 1;
        let mut resp = None;
        for (i, bearer) in bearers.iter().enumerate() {
            let r = self
                .http
                .post(format!("{}/api/v1/agent/enroll", self.appliance))
                .bearer_auth(bearer)
                .json(&body)
                .send()?;
            if r.status() == reqwest::StatusCode::UNAUTHORIZED && i < last {
                continue;
            }
            resp = Some(r);
            break;
        }
        let resp = resp.context("no enrolment answer")?;
        if !resp.status().is_success() {
            bail!(
                "enrolment refused: {} {}",
                resp.status(),
                resp.text().unwrap_or_default()
            );
        }
        let e: Enrolled = resp.json()?;
        if let Err(err) = store_credential(&self.state_dir, &e.credential) {
            // In a ramdisk without a writable state dir the credential lives in memory only.
            eprintln!("warning: {err:#}");
        }
        {
            let mut s = lock(&self.session);
            s.credential = Some(e.credential);
            s.heartbeat = Duration::from_secs(e.heartbeat_secs.max(1).into());
        }
        eprintln!(
            "enrolled as {} (machine {}, state {})",
            self.mac, e.machine.id, e.machine.state
        );
        Ok(())
    }
}
