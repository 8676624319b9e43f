//! The web console's server side (issue 15): console sessions (in memory, like liveness:
//! a restart logs everyone out, which is the safe direction), the admin password, and the
//! rack's cards with each machine's role validations and deploy progress built from its
//! timeline.

use super::settings;
use super::{App, AppError};
use crate::store::PasswordHash;
use argon2::password_hash::{rand_core::OsRng, PasswordHasher, PasswordVerifier, SaltString};
use cosm_wire::{
    CardDisk, EventKind, FailedStep, FirmwareMode, MacAddr, Machine, MachineState, Progress,
    ProgressStep, RackCard, RackSnapshot, RoleRequirements, Scope, SessionInfo, StepState,
    Timestamp, Validation,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie that carries a console session's id.
pub const SESSION_COOKIE: &str = "cosm_session";
/// The header a cookie-authenticated changing request must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Shortest admin password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// One logged-in console.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub scope: Scope,
    /// The token the session was opened with (0: the admin password).
    pub token_id: u64,
    pub csrf: String,
    created: Instant,
    last_used: Instant,
}

/// Console sessions by the SHA-256 of their id (the id itself is only in the cookie).
#[derive(Debug)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max: Duration,
    /// Failed logins per address in the current window: guessing is slowed to
    /// [`MAX_FAILURES`] tries a minute per address.
    failures: Mutex<HashMap<Option<std::net::IpAddr>, (u32, Instant)>>,
    /// One argon2 computation at a time: logins from many addresses at once wait their
    /// turn instead of taking every core from DHCP, boot and heartbeats.
    hashing: tokio::sync::Semaphore,
}

/// Failed logins allowed per address and minute.
pub const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration) -> Sessions {
        Sessions {
            by_hash: Mutex::default(),
            idle,
            max,
            failures: Mutex::default(),
            hashing: tokio::sync::Semaphore::new(1),
        }
    }

    /// The longest a session lasts.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// `Err(seconds to wait)` when `ip` failed too many logins in the last minute.
    pub fn login_allowed(&self, ip: Option<std::net::IpAddr>) -> Result<(), u64> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match f.get(&ip) {
            Some((n, since)) if *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW => {
                Err((FAILURE_WINDOW - since.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn login_failed(&self, ip: Option<std::net::IpAddr>) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 100_000 {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_hash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session; returns its id (for the cookie) and the session.
    pub fn open(&self, user: &str, scope: Scope, token_id: u64) -> (String, Session) {
        let id = random_hex(32);
        let now = Instant::now();
        let s = Session {
            user: user.to_string(),
            scope,
            token_id,
            csrf: random_hex(32),
            created: now,
            last_used: now,
        };
        let mut map = self.lock();
        // Expired sessions go when new ones come, so the map stays as large as the
        // sessions in use.
        map.retain(|_, s| !self.expired(s, now));
        map.insert(hash_id(&id), s.clone());
        (id, s)
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) > self.idle || now.duration_since(s.created) > self.max
    }

    /// The session of a cookie's id, if it is open; using it moves its idle expiry on.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let key = hash_id(id);
        let s = map.get_mut(&key)?;
        if self.expired(s, now) {
            map.remove(&key);
            return None;
        }
        s.last_used = now;
        Some(s.clone())
    }

    pub fn close(&self, id: &str) -> bool {
        self.lock().remove(&hash_id(id)).is_some()
    }

    /// Ends every session opened with this token (it was revoked).
    pub fn close_token(&self, token_id: u64) {
        if token_id != 0 {
            self.lock().retain(|_, s| s.token_id != token_id);
        }
    }

    /// Unix ms at which `s` expires if unused from now.
    pub fn expires_at(&self, s: &Session) -> u64 {
        let now = Instant::now();
        let left = self
            .idle
            .min(self.max.saturating_sub(now.duration_since(s.created)));
        Timestamp::now().as_millis() + left.as_millis() as u64
    }
}

fn hashing(e: String) -> AppError {
    AppError::Unprocessable {
        code: "password",
        message: format!("cannot hash the password: {e}"),
    }
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl App {
    pub fn session_info(&self, s: &Session) -> Result<SessionInfo, AppError> {
        Ok(SessionInfo {
            user: s.user.clone(),
            scope: s.scope,
            csrf: s.csrf.clone(),
            expires_at: self.sessions.expires_at(s),
            setup_complete: self.store.site_settings()?.is_some(),
            password_set: self.store.admin_password()?.is_some(),
        })
    }

    /// Checks the admin password; `Ok(false)` when none is set or it does not match.
    pub async fn check_admin_password(&self, password: &str) -> Result<bool, AppError> {
        let Some(stored) = self.store.admin_password()? else {
            return Ok(false);
        };
        let password = password.to_string();
        // argon2 costs tens of milliseconds of CPU on purpose: off the async workers, one
        // at a time.
        let _turn = self.sessions.hashing.acquire().await;
        let ok = tokio::task::spawn_blocking(move || {
            argon2::PasswordHash::new(&stored.phc).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        Ok(ok)
    }

    /// Sets the console admin's password (argon2id, a fresh salt).
    pub async fn set_admin_password(&self, password: &str) -> Result<(), AppError> {
        let chars = password.chars().count();
        if chars < MIN_PASSWORD_CHARS || password.len() > 1024 {
            return Err(AppError::Store(crate::store::StoreError::Invalid {
                field: "password",
                message: format!(
                    "the password has {chars} characters; it needs at least {MIN_PASSWORD_CHARS} (and at most 1024 bytes)"
                ),
            }));
        }
        let password = password.to_string();
        let _turn = self.sessions.hashing.acquire().await;
        let phc = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| hashing(e.to_string()))?
        .map_err(|e| hashing(e.to_string()))?;
        self.store
            .run(super::Op::SetAdminPassword(PasswordHash {
                phc,
                set_at: Timestamp::now(),
            }))
            .await?;
        tracing::info!("console admin password set");
        Ok(())
    }

    /// Every machine as the rack shows it.
    pub async fn rack(&self) -> Result<RackSnapshot, AppError> {
        let app = self.clone();
        self.bulk_reads
            .run(move || {
                let reqs = app.role_requirements()?;
                let mut roles: Vec<String> = app
                    .store
                    .roles()?
                    .into_iter()
                    .map(|r| r.name.to_string())
                    .collect();
                roles.sort();
                let now = Timestamp::now();
                let leased: HashMap<MacAddr, std::net::Ipv4Addr> = app
                    .store
                    .leases()?
                    .into_iter()
                    .filter(|l| l.expires_at > now)
                    .map(|l| (l.mac, l.ip))
                    .collect();
                let mut machines = Vec::new();
                for m in app.store.machines(None, None)? {
                    if m.state == MachineState::Retired {
                        continue;
                    }
                    let events = app.store.events(m.mac, 200)?;
                    let ip = m.reserved_ip.or_else(|| leased.get(&m.mac).copied());
                    machines.push(card(&m, ip, &reqs, &events));
                }
                Ok::<_, AppError>(RackSnapshot { machines, roles })
            })
            .await?
    }

    /// The role requirements in force: stored settings, else the built-in ones.
    pub fn role_requirements(&self) -> Result<BTreeMap<String, RoleRequirements>, AppError> {
        Ok(self
            .store
            .site_settings()?
            .map(|s| s.roles)
            .unwrap_or_else(settings::default_requirements))
    }
}

/// A machine's card.
pub fn card(
    m: &Machine,
    ip: Option<std::net::Ipv4Addr>,
    reqs: &BTreeMap<String, RoleRequirements>,
    events: &[cosm_wire::Event],
) -> RackCard {
    let inv = m.inventory.as_ref();
    let validations = reqs
        .iter()
        .map(|(role, r)| {
            let failures = settings::role_failures(inv, r);
            (
                role.clone(),
                Validation {
                    ok: failures.is_empty(),
                    failures,
                },
            )
        })
        .collect();
    RackCard {
        mac: m.mac,
        hostname: m.hostname.clone(),
        role: m.role.clone(),
        state: m.state,
        ip,
        firmware: inv.and_then(|i| i.firmware).map(|f| match f {
            FirmwareMode::Bios => "bios".to_string(),
            FirmwareMode::Uefi => "uefi".to_string(),
        }),
        cpus: inv.map(|i| i.cpu_count()),
        memory_mib: inv.map(|i| i.memory_bytes >> 20),
        disks: inv
            .map(|i| {
                i.disks
                    .iter()
                    .map(|d| CardDisk {
                        name: d.name.clone(),
                        size_bytes: d.size_bytes,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        validations,
        progress: progress(events),
    }
}

/// Whether a timeline event completes a step.
type StepDone = fn(&cosm_wire::Event) -> bool;

/// The steps of a deploy, each with how to recognise on the timeline that it is done.
const STEPS: [(&str, StepDone); 8] = [
    ("Deploy requested", |e| {
        e.to_state == Some(MachineState::Ready)
    }),
    ("Network boot (DHCP)", |e| {
        e.kind == EventKind::Dhcp && e.message.contains("ACK")
    }),
    ("Installer script", |e| {
        // The kickstart's installer, or the agent ramdisk told to install an image.
        e.kind == EventKind::Boot
            && (e.message.contains("installer") || e.message.contains("image install ("))
    }),
    ("Installer kernel and initrd", |e| {
        e.kind == EventKind::Boot && e.message.contains("initrd") && e.message.contains("fetched")
    }),
    ("Kickstart fetched", |e| {
        e.to_state == Some(MachineState::Deploying)
    }),
    ("Agent enrolled", |e| e.kind == EventKind::AgentRegistered),
    ("Installed", |e| e.to_state == Some(MachineState::Deployed)),
    ("Sent to its local disk", |e| {
        e.kind == EventKind::Boot && e.message.contains("local disk")
    }),
];

/// A machine's deploy progress from its timeline: the last deploy round (from its latest
/// move to `ready`), each step done when its event came after the step before. `None`
/// when it has never been deployed.
pub fn progress(events: &[cosm_wire::Event]) -> Option<Progress> {
    let start = events
        .iter()
        .rposition(|e| e.to_state == Some(MachineState::Ready))?;
    let round = &events[start..];
    let mut steps = Vec::with_capacity(STEPS.len());
    let mut from = 0;
    let mut done = 0;
    for (name, is) in STEPS {
        let hit = round[from..].iter().position(is).map(|i| from + i);
        match hit {
            Some(i) if steps.len() == done => {
                done += 1;
                from = i;
                steps.push(ProgressStep {
                    name: name.to_string(),
                    state: StepState::Done,
                    at: Some(round[i].at.as_millis()),
                    message: Some(round[i].message.clone()),
                });
            }
            _ => steps.push(ProgressStep {
                name: name.to_string(),
                state: StepState::Pending,
                at: None,
                message: None,
            }),
        }
    }
    let failure = round[from..]
        .iter()
        .position(|e| e.to_state == Some(MachineState::Failed))
        .map(|i| from + i);
    let failed = failure.map(|i| {
        let step = steps
            .get(done)
            .map_or("after install".to_string(), |s| s.name.clone());
        FailedStep {
            step,
            message: round[i].message.clone(),
            log_tail: round[..=i]
                .iter()
                .rev()
                .take(10)
                .rev()
                .map(|e| format!("{:?}: {}", e.kind, e.message))
                .collect(),
        }
    });
    if let Some(s) = steps.get_mut(done) {
        s.state = if failed.is_some() {
            StepState::Failed
        } else {
            StepState::Active
        };
        if let Some(f) = &failed {
            s.message = Some(f.message.clone());
        }
    }
    Some(Progress {
        percent: (done * 100 / STEPS.len()) as u8,
        steps,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, message: &str, to: Option<MachineState>) -> cosm_wire::Event {
        cosm_wire::Event {
            seq: 0,
            at: Timestamp::from_millis(1),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            kind,
            message: message.into(),
            from_state: None,
            to_state: to,
        }
    }

    fn round() -> Vec<cosm_wire::Event> {
        use EventKind::*;
        vec![
            ev(Created, "recorded", None),
            ev(
                StateChanged,
                "redeploy requested",
                Some(MachineState::Ready),
            ),
            ev(Dhcp, "DHCPACK 192.0.2.100", None),
            ev(Boot, "script: Rocky Linux 9 installer", None),
            ev(
                Boot,
                "kernel rocky-9-vmlinuz fetched from the image repository",
                None,
            ),
            ev(
                Boot,
                "initrd rocky-9-initrd.img fetched from the image repository",
                None,
            ),
            ev(
                StateChanged,
                "the installer fetched its kickstart",
                Some(MachineState::Deploying),
            ),
        ]
    }

    #[test]
    fn no_deploy_round_no_progress() {
        assert_eq!(progress(&[ev(EventKind::Created, "x", None)]), None);
    }

    #[test]
    fn steps_follow_the_timeline_in_order() {
        let p = progress(&round()).unwrap();
        let states: Vec<StepState> = p.steps.iter().map(|s| s.state).collect();
        use StepState::*;
        assert_eq!(
            states,
            [Done, Done, Done, Done, Done, Active, Pending, Pending]
        );
        assert_eq!(p.percent, 62);
        assert!(p.failed.is_none());
        let mut all = round();
        all.push(ev(EventKind::AgentRegistered, "enrolled", None));
        all.push(ev(
            EventKind::StateChanged,
            "install finished",
            Some(MachineState::Deployed),
        ));
        all.push(ev(EventKind::Boot, "script → local disk", None));
        assert_eq!(progress(&all).unwrap().percent, 100);
    }

    #[test]
    fn a_failure_names_its_step_and_keeps_the_log_tail() {
        let mut evs = round();
        evs.push(ev(
            EventKind::StateChanged,
            "install failed: no disk",
            Some(MachineState::Failed),
        ));
        let p = progress(&evs).unwrap();
        let f = p.failed.unwrap();
        assert_eq!(f.step, "Agent enrolled");
        assert_eq!(f.message, "install failed: no disk");
        assert_eq!(
            f.log_tail.len(),
            7,
            "the round from its move to ready: {:?}",
            f.log_tail
        );
        assert!(f.log_tail.last().unwrap().contains("no disk"));
        assert_eq!(p.steps[5].state, StepState::Failed);
    }

    #[test]
    fn a_step_out_of_order_does_not_count() {
        use EventKind::*;
        // The kernel line before any DHCP of this round: DHCP is still the active step.
        let evs = vec![
            ev(StateChanged, "ready", Some(MachineState::Ready)),
            ev(Boot, "initrd x fetched", None),
        ];
        let p = progress(&evs).unwrap();
        assert_eq!(p.steps[1].state, StepState::Active);
        assert_eq!(p.percent, 12);
    }

    #[test]
    fn sessions_expire_when_idle_and_can_be_closed() {
        // One second idle: long enough that the first `get` is surely within it.
        let s = Sessions::new(Duration::from_secs(1), Duration::from_secs(60));
        let (id, sess) = s.open("admin", Scope::Admin, 0);
        assert_eq!(s.get(&id).unwrap().csrf, sess.csrf);
        assert!(s.get("not-a-session").is_none());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(s.get(&id).is_none(), "an idle session expires");
        let (id, _) = s.open("t", Scope::Read, 7);
        s.close_token(7);
        assert!(s.get(&id).is_none(), "revoking its token ends the session");
        let (id, _) = s.open("admin", Scope::Admin, 0);
        assert!(s.close(&id));
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
