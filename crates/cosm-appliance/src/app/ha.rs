//! Host high availability (issue 13): a silent hypervisor host is checked three ways,
//! fenced, and its HA VMs are restarted on the survivors — never twice.
//!
//! **The failure model.** A host is declared dead only when three checks agree:
//! 1. the appliance has had no heartbeat from its agent for the lost window
//!    (`agents.heartbeat_secs × agents.missed_beats`; liveness is in memory);
//! 2. its peers — the other hosts' agents, which probe it over the data network every
//!    heartbeat and report in their own heartbeats — have had no answer from it for the
//!    same window (at least one live peer must watch it: with none, nothing is fenced);
//! 3. its BMC (the machine's power settings) answers.
//!
//! It is then **fenced**: hard power-off and a power status that confirms off. Only a
//! confirmed fence moves its VMs; a fence that fails (BMC unreachable, no power settings,
//! off not confirmed) restarts nothing and raises `fence_failed` (safety over
//! availability), and is retried. If more than half of the hosts are silent at once, the
//! appliance assumes it is the one cut off and fences nobody (`appliance_isolated`). A
//! stall of the appliance itself (a paused process, a host under load) does not count as
//! silence: [`Liveness`](super::liveness::Liveness) forgives the time it did not watch.
//!
//! **Evacuation** is recorded step by step (`Evacuation`, one record per host): `fencing`
//! before the power-off call, `fenced` once confirmed (the host's machine goes `fenced`,
//! its non-HA VMs `failed`), then each HA VM placed on a survivor (one command each:
//! a VM already moved is not moved again), `done` when each runs there. After a restart
//! the appliance resumes from the record: a `fencing` host is fenced again (fencing is
//! idempotent), placed VMs are not placed twice.

use super::hosts::is_host;
use super::placement::Overcommit;
use super::vms::{self, Candidate};
use super::{App, AppError, Op, Outcome};
use crate::store::{StoreError, Tx};
use cosm_wire::{
    Alarm, AlarmKind, EvacuatedVm, EvacuatedVmStatus, Evacuation, EvacuationPhase, EventKind,
    MacAddr, MachineState, Severity, VmName, VmState,
};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long fencing waits for the BMC to report the host off.
const FENCE_CONFIRM: Duration = Duration::from_secs(30);
/// How often a failed fence is tried again.
const FENCE_RETRY: Duration = Duration::from_secs(15);

/// HA settings (`[ha]`).
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// Off: hosts are still marked lost, but nobody is fenced or evacuated.
    pub enabled: bool,
    /// Where raised and cleared alarms are POSTed (JSON), if anywhere.
    pub webhook: Option<String>,
}

impl Default for HaSettings {
    fn default() -> Self {
        HaSettings {
            enabled: true,
            webhook: None,
        }
    }
}

/// The HA engine's memory: which fences are running now, and when a failed one may be
/// tried again. Everything that must survive a restart is in the store.
#[derive(Debug)]
pub struct Ha {
    pub settings: HaSettings,
    fencing: Mutex<HashSet<MacAddr>>,
    retry_at: Mutex<std::collections::HashMap<MacAddr, Instant>>,
    webhook: Option<tokio::sync::mpsc::Sender<serde_json::Value>>,
}

impl Ha {
    pub fn new(settings: HaSettings) -> Ha {
        let webhook = settings.webhook.clone().map(spawn_webhook);
        Ha {
            settings,
            fencing: Mutex::default(),
            retry_at: Mutex::default(),
            webhook,
        }
    }
}

/// The webhook sink: a bounded queue drained by one task that POSTs each alarm change,
/// tried three times; a full queue drops (and logs) rather than blocking HA.
fn spawn_webhook(url: String) -> tokio::sync::mpsc::Sender<serde_json::Value> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(256);
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "alarm webhook disabled: cannot build an HTTP client");
                return;
            }
        };
        while let Some(body) = rx.recv().await {
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=3 {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) => {
                        tracing::warn!(%url, status = %r.status(), attempt, "alarm webhook refused the alarm")
                    }
                    Err(e) => {
                        tracing::warn!(%url, error = %e, attempt, "alarm webhook unreachable")
                    }
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    });
    tx
}

// ---- commands (applied by the store, one transaction each) ----

/// Raises an alarm unless one of the same kind and subject is active (then its message is
/// updated). Returns the alarm when it is new.
pub(super) fn raise_alarm(
    tx: &mut Tx<'_>,
    kind: AlarmKind,
    severity: Severity,
    subject: &str,
    message: &str,
) -> Result<Option<Alarm>, StoreError> {
    if let Some(mut a) = tx.active_alarm(kind, subject)? {
        if a.message != message {
            a.message = message.to_string();
            tx.put_alarm(&a)?;
        }
        return Ok(None);
    }
    let a = Alarm {
        id: tx.next_alarm_id()?,
        kind,
        severity,
        subject: subject.to_string(),
        message: message.to_string(),
        raised_at: tx.at,
        cleared_at: None,
    };
    tx.put_alarm(&a)?;
    Ok(Some(a))
}

/// Clears the active alarm of this kind and subject; returns it when there was one.
pub(super) fn clear_alarm(
    tx: &mut Tx<'_>,
    kind: AlarmKind,
    subject: &str,
) -> Result<Option<Alarm>, StoreError> {
    let Some(mut a) = tx.active_alarm(kind, subject)? else {
        return Ok(None);
    };
    a.cleared_at = Some(tx.at);
    tx.put_alarm(&a)?;
    Ok(Some(a))
}

fn open(e: &Evacuation) -> bool {
    e.phase != EvacuationPhase::Done
}

/// The three checks agreed: the host's evacuation starts (`fencing`), listing its VMs.
/// A host with an open evacuation keeps it (nothing is started twice).
pub(super) fn begin_fence(
    tx: &mut Tx<'_>,
    host: MacAddr,
    checks: &str,
) -> Result<Evacuation, StoreError> {
    if let Some(e) = tx.evacuation(host)?.filter(open) {
        return Ok(e);
    }
    let mut m = tx.machine(host)?;
    if m.state == MachineState::Fenced {
        return Err(StoreError::conflict(format!(
            "host {host} is already fenced"
        )));
    }
    if m.state != MachineState::Lost {
        super::machines::transition(tx, &mut m, MachineState::Lost, checks)?;
        tx.put_machine(&mut m)?;
    }
    let vms = tx
        .vms_on(host)?
        .into_iter()
        .filter(|v| v.state != VmState::Deleting)
        .map(|v| EvacuatedVm {
            status: if v.ha {
                EvacuatedVmStatus::Pending
            } else {
                EvacuatedVmStatus::NotHa
            },
            name: v.name,
            to: None,
        })
        .collect();
    let e = Evacuation {
        host,
        phase: EvacuationPhase::Fencing,
        checks: checks.to_string(),
        started_at: tx.at,
        fenced_at: None,
        finished_at: None,
        error: None,
        vms,
    };
    tx.event(
        host,
        EventKind::Ha,
        format!("declared dead ({checks}); fencing"),
        None,
        None,
    )?;
    tx.put_evacuation(&e)?;
    Ok(e)
}

/// How a fence ended. Confirmed off: the host is `fenced`, its non-HA VMs `failed`; else
/// `fence_failed` and nothing moves.
pub(super) fn fence_done(
    tx: &mut Tx<'_>,
    host: MacAddr,
    result: &Result<String, String>,
) -> Result<Evacuation, StoreError> {
    let mut e = tx
        .evacuation(host)?
        .filter(open)
        .ok_or_else(|| StoreError::conflict(format!("host {host} has no evacuation under way")))?;
    if e.phase == EvacuationPhase::Fenced {
        return Ok(e);
    }
    match result {
        Ok(how) => {
            let mut m = tx.machine(host)?;
            if m.state != MachineState::Lost && m.state != MachineState::Fenced {
                // It beat again while being fenced: it is off now all the same.
                super::machines::transition(tx, &mut m, MachineState::Lost, "fenced")?;
            }
            if m.state != MachineState::Fenced {
                super::machines::transition(
                    tx,
                    &mut m,
                    MachineState::Fenced,
                    &format!("fenced: {how}"),
                )?;
                tx.put_machine(&mut m)?;
            }
            e.phase = EvacuationPhase::Fenced;
            e.fenced_at = Some(tx.at);
            e.error = None;
            for v in &e.vms {
                if v.status == EvacuatedVmStatus::NotHa && tx.find_vm(&v.name)?.is_some() {
                    vms::mark_down(tx, &v.name, host)?;
                }
            }
        }
        Err(why) => {
            e.phase = EvacuationPhase::FenceFailed;
            e.error = Some(why.clone());
            tx.event(
                host,
                EventKind::Ha,
                format!("fence failed: {why}; its VMs are not restarted anywhere"),
                None,
                None,
            )?;
        }
    }
    tx.put_evacuation(&e)?;
    Ok(e)
}

/// The host beats again before it could be fenced: its evacuation ends with nothing moved
/// (only from `fencing` or `fence_failed`: a fenced host stays fenced).
pub(super) fn cancel_evacuation(tx: &mut Tx<'_>, host: MacAddr) -> Result<Evacuation, StoreError> {
    let mut e = tx
        .evacuation(host)?
        .filter(open)
        .ok_or_else(|| StoreError::conflict(format!("host {host} has no evacuation under way")))?;
    if !matches!(
        e.phase,
        EvacuationPhase::Fencing | EvacuationPhase::FenceFailed
    ) {
        return Err(StoreError::conflict(format!(
            "host {host} is already fenced: its evacuation goes on"
        )));
    }
    e.phase = EvacuationPhase::Done;
    e.finished_at = Some(tx.at);
    e.error = Some("the host's agent beat again before it was fenced: nothing was moved".into());
    tx.event(
        host,
        EventKind::Ha,
        "heartbeats resumed before the host was fenced: not fenced, nothing moved".to_string(),
        None,
        None,
    )?;
    tx.put_evacuation(&e)?;
    Ok(e)
}

/// Places one HA VM of a fenced host on a survivor (see [`vms::evacuate`]).
pub(super) fn evacuate_vm(
    tx: &mut Tx<'_>,
    host: MacAddr,
    name: &VmName,
    candidates: &[Candidate],
    oc: &Overcommit,
) -> Result<Evacuation, StoreError> {
    let mut e = tx
        .evacuation(host)?
        .filter(open)
        .ok_or_else(|| StoreError::conflict(format!("host {host} has no evacuation under way")))?;
    if e.phase != EvacuationPhase::Fenced {
        return Err(StoreError::conflict(format!(
            "host {host} is not confirmed off: nothing of it is restarted"
        )));
    }
    let Some(i) = e.vms.iter().position(|v| &v.name == name) else {
        return Ok(e);
    };
    let (status, to) = match tx.find_vm(name)? {
        None => (EvacuatedVmStatus::Running, None),
        Some(_) => match vms::evacuate(tx, name, host, candidates, oc) {
            Ok(Some(dest)) => (EvacuatedVmStatus::Placed, Some(dest)),
            Ok(None) => (EvacuatedVmStatus::Placed, tx.vm(name)?.host),
            Err(StoreError::Conflict {
                code: "no_host", ..
            }) => (EvacuatedVmStatus::NoCapacity, None),
            Err(other) => return Err(other),
        },
    };
    e.vms[i].status = status;
    e.vms[i].to = to;
    tx.put_evacuation(&e)?;
    Ok(e)
}

/// Marks placed VMs that run on their survivor, and the evacuation `done` when no VM is
/// left to move.
pub(super) fn evacuation_progress(
    tx: &mut Tx<'_>,
    host: MacAddr,
) -> Result<Evacuation, StoreError> {
    let mut e = tx.evacuation(host)?.ok_or_else(|| StoreError::NotFound {
        what: "evacuation",
        key: host.to_string(),
    })?;
    if e.phase != EvacuationPhase::Fenced {
        return Ok(e);
    }
    let mut changed = false;
    for v in &mut e.vms {
        if v.status != EvacuatedVmStatus::Placed {
            continue;
        }
        let up = match tx.find_vm(&v.name)? {
            None => true,
            Some(vm) => {
                vm.host != Some(host)
                    && (vm.state == VmState::Running || vm.power == cosm_wire::PowerWanted::Stopped)
            }
        };
        if up {
            v.status = EvacuatedVmStatus::Running;
            changed = true;
        }
    }
    let finished = e.vms.iter().all(|v| {
        matches!(
            v.status,
            EvacuatedVmStatus::Running | EvacuatedVmStatus::NotHa
        )
    });
    if finished {
        e.phase = EvacuationPhase::Done;
        e.finished_at = Some(tx.at);
        let moved = e
            .vms
            .iter()
            .filter(|v| v.status == EvacuatedVmStatus::Running)
            .count();
        let down = e.vms.len() - moved;
        tx.event(
            host,
            EventKind::Ha,
            format!("evacuation done: {moved} HA VM(s) running elsewhere, {down} not HA left down"),
            None,
            None,
        )?;
        changed = true;
    }
    if changed {
        tx.put_evacuation(&e)?;
    }
    Ok(e)
}

// ---- the engine ----

/// What the peers say of a silent host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerVerdict {
    /// A live peer had an answer from it within the window.
    Reachable { by: MacAddr, ms: u64 },
    /// Every live peer that watches it has had no answer for the window.
    Unreachable { peers: usize },
    /// No live peer watches it.
    Unknown,
}

impl App {
    /// Raises an alarm (once per kind and subject), logs it and sends it to the webhook.
    pub async fn raise_alarm(
        &self,
        kind: AlarmKind,
        severity: Severity,
        subject: String,
        message: String,
    ) -> Result<(), AppError> {
        let out = self
            .store
            .run(Op::RaiseAlarm {
                kind,
                severity,
                subject,
                message,
            })
            .await?;
        if let Outcome::Alarm(Some(a)) = out {
            tracing::warn!(kind = a.kind.as_str(), severity = a.severity.as_str(), subject = %a.subject, "alarm raised: {}", a.message);
            self.send_webhook("raised", &a);
        }
        Ok(())
    }

    pub async fn clear_alarm(&self, kind: AlarmKind, subject: String) -> Result<(), AppError> {
        let out = self.store.run(Op::ClearAlarm { kind, subject }).await?;
        if let Outcome::Alarm(Some(a)) = out {
            tracing::info!(kind = a.kind.as_str(), subject = %a.subject, "alarm cleared: {}", a.message);
            self.send_webhook("cleared", &a);
        }
        Ok(())
    }

    fn send_webhook(&self, event: &str, a: &Alarm) {
        if let Some(tx) = &self.ha.webhook {
            let body = serde_json::json!({"event": event, "alarm": a});
            if tx.try_send(body).is_err() {
                tracing::warn!(
                    alarm = a.id,
                    "alarm webhook queue full: this alarm change is not sent"
                );
            }
        }
    }

    /// What the live peers of `suspect` last said of it.
    pub fn peer_verdict(&self, suspect: MacAddr, hosts: &[MacAddr], now: Instant) -> PeerVerdict {
        let window_ms = self.liveness.lost_window().as_millis() as u64;
        let mut watching = 0;
        for &peer in hosts {
            if peer == suspect || self.liveness.is_silent(peer, now) {
                continue;
            }
            let Some((_, beat)) = self.liveness.last(&peer) else {
                continue;
            };
            for seen in beat.peers.iter().filter(|p| p.mac == suspect) {
                watching += 1;
                if let Some(ms) = seen.last_answer_ms {
                    if ms <= window_ms {
                        return PeerVerdict::Reachable { by: peer, ms };
                    }
                }
            }
        }
        if watching == 0 {
            PeerVerdict::Unknown
        } else {
            PeerVerdict::Unreachable { peers: watching }
        }
    }

    /// The hosts HA watches: machines of role `host`, installed, or lost from there.
    fn watched_hosts(&self) -> Result<Vec<cosm_wire::Machine>, AppError> {
        let role: cosm_wire::RoleName = "host".parse().expect("a valid role name");
        Ok(self
            .store
            .machines(Some(&role), None)?
            .into_iter()
            .filter(|m| {
                is_host(m)
                    || (m.state == MachineState::Lost
                        && matches!(
                            m.lost_from,
                            Some(MachineState::Active | MachineState::Deployed)
                        ))
            })
            .collect())
    }

    /// One pass of the HA engine: checks silent hosts, starts fences, moves VMs of fenced
    /// hosts, and keeps the alarms true.
    pub async fn ha_pass(&self) -> Result<(), AppError> {
        let now = Instant::now();
        self.liveness.watch(now);
        let hosts = self.watched_hosts()?;
        let macs: Vec<MacAddr> = hosts.iter().map(|m| m.mac).collect();
        let silent: Vec<MacAddr> = macs
            .iter()
            .copied()
            .filter(|m| self.liveness.is_silent(*m, now))
            .collect();
        let evacuations = self.store.evacuations()?;
        let open_evac: HashSet<MacAddr> = evacuations
            .iter()
            .filter(|e| open(e))
            .map(|e| e.host)
            .collect();

        // Alarms of hosts that came back.
        for a in self.store.active_alarms()? {
            if a.kind == AlarmKind::HostLost {
                if let Ok(mac) = a.subject.parse::<MacAddr>() {
                    if !silent.contains(&mac) && !open_evac.contains(&mac) {
                        self.clear_alarm(AlarmKind::HostLost, a.subject.clone())
                            .await?;
                    }
                }
            }
            if a.kind == AlarmKind::HostFenced {
                if let Ok(mac) = a.subject.parse::<MacAddr>() {
                    let still = self
                        .store
                        .machine(mac)?
                        .is_some_and(|m| m.state == MachineState::Fenced);
                    if !still {
                        self.clear_alarm(AlarmKind::HostFenced, a.subject.clone())
                            .await?;
                    }
                }
            }
        }

        // Quorum: most hosts silent at once means this appliance is the one cut off.
        let isolated = macs.len() >= 2 && silent.len() * 2 > macs.len();
        if isolated {
            self.raise_alarm(
                AlarmKind::ApplianceIsolated,
                Severity::Critical,
                "appliance".into(),
                format!(
                    "{} of {} hosts are silent at once: this appliance assumes it is cut off and fences nobody",
                    silent.len(),
                    macs.len()
                ),
            )
            .await?;
        } else {
            self.clear_alarm(AlarmKind::ApplianceIsolated, "appliance".into())
                .await?;
        }

        if self.ha.settings.enabled && !isolated {
            for &mac in &silent {
                if open_evac.contains(&mac) || self.is_fencing(mac) {
                    continue;
                }
                let silent_for = self.liveness.last(&mac).map_or(
                    "never heard since the appliance started".to_string(),
                    |(d, _)| format!("no heartbeat for {:.1} s", d.as_secs_f64()),
                );
                match self.peer_verdict(mac, &macs, now) {
                    PeerVerdict::Reachable { by, ms } => {
                        self.raise_alarm(
                            AlarmKind::HostLost,
                            Severity::Warning,
                            mac.to_string(),
                            format!("{silent_for}, but peer {by} had an answer from it {ms} ms ago: the appliance's path to it is broken; not fenced"),
                        )
                        .await?;
                    }
                    PeerVerdict::Unknown => {
                        self.raise_alarm(
                            AlarmKind::HostLost,
                            Severity::Warning,
                            mac.to_string(),
                            format!("{silent_for}, and no live peer probes it: its death cannot be confirmed; not fenced"),
                        )
                        .await?;
                    }
                    PeerVerdict::Unreachable { peers } => {
                        self.raise_alarm(
                            AlarmKind::HostLost,
                            Severity::Critical,
                            mac.to_string(),
                            format!("{silent_for}; {peers} peer report(s) without an answer from it; fencing"),
                        )
                        .await?;
                        let checks = format!(
                            "heartbeats: {silent_for}; peers: {peers} report(s), none had an answer within {} s",
                            self.liveness.lost_window().as_secs()
                        );
                        self.start_fence(mac, checks, false);
                    }
                }
            }
        }

        // Evacuations under way (also those found after a restart).
        for e in evacuations.into_iter().filter(open) {
            match e.phase {
                EvacuationPhase::Fencing | EvacuationPhase::FenceFailed
                    if !self.is_fencing(e.host) && self.liveness.is_alive(e.host) =>
                {
                    // It came back before it was fenced: a live host is never powered off.
                    tracing::warn!(host = %e.host, "a host declared dead beats again before it was fenced: not fenced");
                    self.store
                        .run(Op::CancelEvacuation { host: e.host })
                        .await?;
                    self.clear_alarm(AlarmKind::FenceFailed, e.host.to_string())
                        .await?;
                }
                EvacuationPhase::Fencing => {
                    // After a restart, wait until the host has been silent for a window
                    // (it may beat at once), then fence again: fencing is idempotent.
                    if !self.is_fencing(e.host) && self.liveness.is_silent(e.host, now) {
                        tracing::info!(host = %e.host, "resuming the fence of a host (found under way)");
                        self.start_fence(e.host, e.checks.clone(), true);
                    }
                }
                EvacuationPhase::FenceFailed => {
                    let due = {
                        let r = self.ha.retry_at.lock().unwrap_or_else(|p| p.into_inner());
                        r.get(&e.host).is_none_or(|t| *t <= now)
                    };
                    if due
                        && !self.is_fencing(e.host)
                        && self.ha.settings.enabled
                        && self.liveness.is_silent(e.host, now)
                    {
                        self.start_fence(e.host, e.checks.clone(), true);
                    }
                }
                EvacuationPhase::Fenced => self.move_vms(e).await?,
                EvacuationPhase::Done => {}
            }
        }
        Ok(())
    }

    fn is_fencing(&self, host: MacAddr) -> bool {
        self.ha
            .fencing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&host)
    }

    /// Fences `host` in its own task (a slow BMC holds up nobody else).
    fn start_fence(&self, host: MacAddr, checks: String, resumed: bool) {
        {
            let mut f = self.ha.fencing.lock().unwrap_or_else(|p| p.into_inner());
            if !f.insert(host) {
                return;
            }
        }
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.fence_host(host, &checks, resumed).await {
                tracing::error!(%host, error = %e, "fencing stopped on an error");
            }
            app.ha
                .fencing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&host);
        });
    }

    async fn fence_host(&self, host: MacAddr, checks: &str, resumed: bool) -> Result<(), AppError> {
        if !resumed {
            self.store
                .run(Op::BeginFence {
                    host,
                    checks: checks.to_string(),
                })
                .await?;
        }
        let result = match self.store.power_settings(host)? {
            None => Err(
                "the machine has no power settings (cosmctl machines power-settings set)"
                    .to_string(),
            ),
            Some(settings) => {
                let driver = cosm_power::driver(&settings, host);
                let bmc = match driver.status().await {
                    Ok(s) => format!("BMC said {s}"),
                    Err(e) => format!("BMC status failed: {e}"),
                };
                match cosm_power::fence(driver.as_ref(), FENCE_CONFIRM).await {
                    Ok(took) => Ok(format!(
                        "{bmc}; {} power-off confirmed off in {:.1} s",
                        driver.name(),
                        took.as_secs_f64()
                    )),
                    Err(e) => Err(format!("{bmc}; {e}")),
                }
            }
        };
        match &result {
            Ok(how) => {
                tracing::warn!(%host, "host fenced: {how}");
                self.hosts.forget(host);
            }
            Err(why) => {
                tracing::error!(%host, "fence failed: {why}");
                self.ha
                    .retry_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(host, Instant::now() + FENCE_RETRY);
            }
        }
        self.store
            .run(Op::FenceDone {
                host,
                result: result.clone(),
            })
            .await?;
        match result {
            Ok(how) => {
                self.clear_alarm(AlarmKind::FenceFailed, host.to_string())
                    .await?;
                self.raise_alarm(
                    AlarmKind::HostFenced,
                    Severity::Critical,
                    host.to_string(),
                    format!("host {host} was fenced: {how}"),
                )
                .await?;
                if let Some(e) = self.store.evacuation(host)? {
                    self.move_vms(e).await?;
                }
            }
            Err(why) => {
                self.raise_alarm(
                    AlarmKind::FenceFailed,
                    Severity::Critical,
                    host.to_string(),
                    format!("host {host} is declared dead but could not be fenced: {why}. Its VMs are NOT restarted elsewhere (they could be running still); fix its BMC or power it off by hand, then it is fenced at the next try"),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Places the fenced host's HA VMs that wait, then records which run.
    async fn move_vms(&self, e: Evacuation) -> Result<(), AppError> {
        let host = e.host;
        let waiting: Vec<VmName> = e
            .vms
            .iter()
            .filter(|v| {
                matches!(
                    v.status,
                    EvacuatedVmStatus::Pending | EvacuatedVmStatus::NoCapacity
                )
            })
            .map(|v| v.name.clone())
            .collect();
        for v in e
            .vms
            .iter()
            .filter(|v| v.status == EvacuatedVmStatus::NotHa)
        {
            self.raise_alarm(
                AlarmKind::VmDown,
                Severity::Warning,
                v.name.to_string(),
                format!(
                    "VM {} went down with its fenced host {host} and is not HA: it stays down",
                    v.name
                ),
            )
            .await?;
        }
        if !waiting.is_empty() {
            let candidates: Vec<Candidate> = self
                .vm_candidates()?
                .into_iter()
                .filter(|c| !self.liveness.is_silent(c.host, Instant::now()))
                .collect();
            for name in waiting {
                let out = self
                    .store
                    .run(Op::EvacuateVm {
                        host,
                        name: name.clone(),
                        candidates: candidates.clone(),
                        overcommit: self.overcommit,
                    })
                    .await?;
                if let Outcome::Evacuation(ev) = out {
                    let st = ev.vms.iter().find(|v| v.name == name);
                    match st.map(|v| (v.status, v.to)) {
                        Some((EvacuatedVmStatus::NoCapacity, _)) => {
                            self.raise_alarm(
                                AlarmKind::NoCapacity,
                                Severity::Critical,
                                name.to_string(),
                                format!("HA VM {name} of fenced host {host} fits on no survivor; retried"),
                            )
                            .await?;
                        }
                        Some((EvacuatedVmStatus::Placed, to)) => {
                            tracing::warn!(vm = %name, from = %host, to = ?to, "HA VM restarting on a survivor");
                            self.clear_alarm(AlarmKind::NoCapacity, name.to_string())
                                .await?;
                        }
                        _ => {}
                    }
                }
            }
        }
        let out = self.store.run(Op::EvacuationProgress { host }).await?;
        if let Outcome::Evacuation(ev) = out {
            let stuck = ev
                .vms
                .iter()
                .filter(|v| v.status == EvacuatedVmStatus::NoCapacity)
                .count();
            if ev.phase == EvacuationPhase::Done {
                self.clear_alarm(AlarmKind::EvacuationIncomplete, host.to_string())
                    .await?;
            } else if stuck > 0 {
                self.raise_alarm(
                    AlarmKind::EvacuationIncomplete,
                    Severity::Critical,
                    host.to_string(),
                    format!("{stuck} HA VM(s) of fenced host {host} are not running anywhere: no survivor has room"),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Whether `mac`'s agent should be told about its VMs: not while it is fenced.
    pub fn runs_vms(m: &cosm_wire::Machine) -> bool {
        m.state != MachineState::Fenced
    }
}

/// Runs HA passes until aborted, a few per heartbeat interval.
pub async fn run(app: App) {
    let tick =
        (app.liveness.heartbeat / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = app.ha_pass().await {
            tracing::warn!(error = %e, "HA pass failed; trying again at the next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::vms::NewVm;
    use crate::app::{Command, Store};
    use crate::store::StoreOptions;
    use cosm_wire::{CreateMachine, VmKind};

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0xc0, 0x48, n])
    }

    async fn run(store: &Store, op: Op) -> Result<Outcome, StoreError> {
        store.apply(Command::now(op)).await
    }

    fn candidate(n: u8) -> Candidate {
        Candidate {
            host: mac(n),
            cpus: 4,
            memory_mib: 1024,
            storage_bytes: 100 << 30,
            cpu_percent: 0.0,
            migration_uri: None,
            vtep: false,
        }
    }

    async fn evac(store: &Store, op: Op) -> Evacuation {
        match run(store, op).await.unwrap() {
            Outcome::Evacuation(e) => *e,
            other => panic!("{other:?}"),
        }
    }

    /// Three active hosts, on host 1: `ha-a` (HA, 512 MiB), `plain` (not HA).
    async fn rack(dir: &std::path::Path) -> Store {
        let store = Store::open(&dir.join("cosm.redb"), StoreOptions::default()).unwrap();
        for n in 1..=3 {
            run(
                &store,
                Op::CreateMachine(CreateMachine {
                    mac: mac(n),
                    hostname: None,
                    role: Some("host".parse().unwrap()),
                    reserved_ip: None,
                    inventory: None,
                }),
            )
            .await
            .unwrap();
            for to in [
                MachineState::Deploying,
                MachineState::Deployed,
                MachineState::Active,
            ] {
                run(
                    &store,
                    Op::SetState {
                        mac: mac(n),
                        to,
                        reason: None,
                    },
                )
                .await
                .unwrap();
            }
        }
        for (name, ha) in [("ha-a", true), ("plain", false)] {
            run(
                &store,
                Op::CreateVm {
                    new: NewVm {
                        name: name.parse().unwrap(),
                        kind: VmKind::Kvm,
                        vcpus: 1,
                        memory_mib: 512,
                        disks: Vec::new(),
                        nics: Vec::new(),
                        boot: None,
                        ha,
                        anti_affinity: None,
                        host: Some(mac(1)),
                        start: true,
                    },
                    candidates: vec![candidate(1)],
                    overcommit: Overcommit::default(),
                },
            )
            .await
            .unwrap();
        }
        store
    }

    #[tokio::test]
    async fn nothing_moves_before_a_confirmed_fence_and_nothing_moves_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = rack(dir.path()).await;
        let host = mac(1);
        let e = evac(
            &store,
            Op::BeginFence {
                host,
                checks: "test".into(),
            },
        )
        .await;
        assert_eq!(e.phase, EvacuationPhase::Fencing);
        assert_eq!(
            store.machine(host).unwrap().unwrap().state,
            MachineState::Lost
        );
        let statuses: Vec<_> = e
            .vms
            .iter()
            .map(|v| (v.name.as_str().to_string(), v.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("ha-a".to_string(), EvacuatedVmStatus::Pending),
                ("plain".to_string(), EvacuatedVmStatus::NotHa)
            ]
        );
        let survivors = vec![candidate(1), candidate(2), candidate(3)];
        let move_a = || Op::EvacuateVm {
            host,
            name: "ha-a".parse().unwrap(),
            candidates: survivors.clone(),
            overcommit: Overcommit::default(),
        };
        // Not confirmed off: refused.
        let err = run(&store, move_a()).await.unwrap_err().to_string();
        assert!(err.contains("not confirmed off"), "{err}");
        // A failed fence: still nothing moves.
        let e = evac(
            &store,
            Op::FenceDone {
                host,
                result: Err("BMC unreachable".into()),
            },
        )
        .await;
        assert_eq!(e.phase, EvacuationPhase::FenceFailed);
        assert!(run(&store, move_a()).await.is_err());
        let a = store.vm(&"ha-a".parse().unwrap()).unwrap().unwrap();
        assert_eq!(a.host, Some(host));
        // Confirmed: the host is fenced, the plain VM is failed, the HA VM moves once.
        let e = evac(
            &store,
            Op::FenceDone {
                host,
                result: Ok("off".into()),
            },
        )
        .await;
        assert_eq!(e.phase, EvacuationPhase::Fenced);
        assert_eq!(
            store.machine(host).unwrap().unwrap().state,
            MachineState::Fenced
        );
        let plain = store.vm(&"plain".parse().unwrap()).unwrap().unwrap();
        assert_eq!(plain.state, VmState::Failed);
        assert!(plain.message.unwrap().contains("not HA"));
        let e = evac(&store, move_a()).await;
        let to = e.vms[0].to.expect("placed");
        assert_ne!(to, host);
        assert_eq!(e.vms[0].status, EvacuatedVmStatus::Placed);
        let e = evac(&store, move_a()).await;
        assert_eq!(
            e.vms[0].to,
            Some(to),
            "a resumed evacuation does not move it again"
        );
        // Not running yet: not done.
        let e = evac(&store, Op::EvacuationProgress { host }).await;
        assert_eq!(e.phase, EvacuationPhase::Fenced);
        // A second begin on a host with an open evacuation changes nothing.
        let again = evac(
            &store,
            Op::BeginFence {
                host,
                checks: "again".into(),
            },
        )
        .await;
        assert_eq!(again.checks, "test");
    }

    #[tokio::test]
    async fn a_host_that_beats_again_before_its_fence_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = rack(dir.path()).await;
        let host = mac(1);
        evac(
            &store,
            Op::BeginFence {
                host,
                checks: "t".into(),
            },
        )
        .await;
        evac(
            &store,
            Op::FenceDone {
                host,
                result: Err("BMC down".into()),
            },
        )
        .await;
        let e = evac(&store, Op::CancelEvacuation { host }).await;
        assert_eq!(e.phase, EvacuationPhase::Done);
        assert!(e.error.unwrap().contains("nothing was moved"));
        let a = store.vm(&"ha-a".parse().unwrap()).unwrap().unwrap();
        assert_eq!((a.host, a.state), (Some(host), VmState::Scheduled));
        // A fenced host's evacuation is not cancelled.
        evac(
            &store,
            Op::BeginFence {
                host,
                checks: "t2".into(),
            },
        )
        .await;
        evac(
            &store,
            Op::FenceDone {
                host,
                result: Ok("off".into()),
            },
        )
        .await;
        let err = run(&store, Op::CancelEvacuation { host })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already fenced"), "{err}");
    }

    #[tokio::test]
    async fn alarms_raise_once_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = rack(dir.path()).await;
        let raise = |m: &str| Op::RaiseAlarm {
            kind: AlarmKind::HostLost,
            severity: Severity::Warning,
            subject: "h1".into(),
            message: m.into(),
        };
        let first = run(&store, raise("one")).await.unwrap();
        assert!(matches!(first, Outcome::Alarm(Some(_))));
        let second = run(&store, raise("two")).await.unwrap();
        assert!(matches!(second, Outcome::Alarm(None)), "raised once");
        let active = store.active_alarms().unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].message, "two");
        let cleared = run(
            &store,
            Op::ClearAlarm {
                kind: AlarmKind::HostLost,
                subject: "h1".into(),
            },
        )
        .await
        .unwrap();
        assert!(matches!(cleared, Outcome::Alarm(Some(_))));
        assert!(store.active_alarms().unwrap().is_empty());
        assert_eq!(store.alarms(true, 10).unwrap().len(), 1);
        assert!(store.alarms(false, 10).unwrap().is_empty());
    }
}
