//! Agent liveness, kept in memory: the last heartbeat of every machine whose agent beats.
//! Only state changes (a machine becoming `lost`, or coming back) reach the store.

use super::{Op, Store};
use cosm_wire::{Heartbeat, MacAddr};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Beat {
    last: Instant,
    summary: Heartbeat,
    /// Marked lost by the monitor (so it is not marked again every tick).
    lost: bool,
}

/// Heartbeats by machine.
#[derive(Debug)]
pub struct Liveness {
    beats: Mutex<HashMap<MacAddr, Beat>>,
    pub heartbeat: Duration,
    pub missed_beats: u32,
    /// When this appliance started watching (an agent unseen since counts as beating until
    /// one lost window has passed: the appliance may just have restarted). Moved forward
    /// by a stall, like every beat.
    started: Mutex<Instant>,
    /// When a watcher last looked ([`Liveness::watch`]).
    last_watch: Mutex<Instant>,
}

impl Liveness {
    pub fn new(heartbeat: Duration, missed_beats: u32) -> Liveness {
        Liveness {
            beats: Mutex::default(),
            heartbeat,
            missed_beats,
            started: Mutex::new(Instant::now()),
            last_watch: Mutex::new(Instant::now()),
        }
    }

    /// Called by every watcher at each tick. When the appliance itself did not run for a
    /// while (a paused process, a starved host: the gap since the last watch is longer than
    /// the lost window and 2 s), that time is forgiven: every beat moves forward by
    /// the gap, so a stall of the appliance is never taken for silence of its hosts.
    /// Returns the forgiven gap.
    pub fn watch(&self, now: Instant) -> Option<Duration> {
        let gap = {
            let mut last = self.last_watch.lock().unwrap_or_else(|e| e.into_inner());
            let gap = now.saturating_duration_since(*last);
            *last = now.max(*last);
            gap
        };
        // Only a gap that alone could make a live agent look silent (a lost window) is a
        // stall: a watcher merely scheduled late under load must not keep pushing every
        // beat forward, or a dead host would never be found on a busy appliance.
        if gap <= self.lost_window().max(Duration::from_secs(2)) {
            return None;
        }
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        for b in beats.values_mut() {
            b.last += gap;
        }
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) += gap;
        tracing::warn!(
            gap_secs = gap.as_secs_f64(),
            "the appliance did not run for a while: that time does not count as silence of any agent"
        );
        Some(gap)
    }

    /// How long an agent may be silent before its machine is lost.
    pub fn lost_window(&self) -> Duration {
        self.heartbeat * self.missed_beats
    }

    /// Whether the machine's agent has been silent for the lost window (or was marked
    /// lost). An agent not seen since the appliance started is silent only once a window
    /// has passed since the start.
    pub fn is_silent(&self, mac: MacAddr, now: Instant) -> bool {
        let window = self.lost_window();
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        match beats.get(&mac) {
            Some(b) => b.lost || now.saturating_duration_since(b.last) > window,
            None => {
                let started = *self.started.lock().unwrap_or_else(|e| e.into_inner());
                now.saturating_duration_since(started) > window
            }
        }
    }

    /// Records a beat; true when the machine had been marked lost.
    pub fn beat(&self, mac: MacAddr, summary: Heartbeat) -> bool {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        let prev = beats.insert(
            mac,
            Beat {
                last: Instant::now(),
                summary,
                lost: false,
            },
        );
        prev.is_some_and(|b| b.lost)
    }

    /// Machines whose last beat is older than `missed_beats` intervals, not yet marked;
    /// they are marked now.
    pub fn overdue(&self, now: Instant) -> Vec<(MacAddr, Duration)> {
        let limit = self.heartbeat * self.missed_beats;
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (mac, b) in beats.iter_mut() {
            let silent = now.saturating_duration_since(b.last);
            if !b.lost && silent > limit {
                b.lost = true;
                out.push((*mac, silent));
            }
        }
        out
    }

    /// The last utilisation summary and how long ago it came.
    pub fn last(&self, mac: &MacAddr) -> Option<(Duration, Heartbeat)> {
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats
            .get(mac)
            .map(|b| (b.last.elapsed(), b.summary.clone()))
    }

    /// Whether the machine's agent is heartbeating (seen and not marked lost).
    pub fn is_alive(&self, mac: MacAddr) -> bool {
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats.get(&mac).is_some_and(|b| !b.lost)
    }

    pub fn len(&self) -> usize {
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Marks machines lost when their heartbeats stop; runs until aborted. Which machines can
/// be lost is the `MarkLost` command's decision (see `app::machines`).
pub async fn monitor(liveness: std::sync::Arc<Liveness>, store: Store) {
    let tick = (liveness.heartbeat / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        liveness.watch(Instant::now());
        for (mac, silent) in liveness.overdue(Instant::now()) {
            let reason = format!(
                "no heartbeat for {:.1} s ({} missed)",
                silent.as_secs_f64(),
                liveness.missed_beats
            );
            match store.run(Op::MarkLost { mac, reason }).await {
                Ok(_) => {
                    tracing::warn!(%mac, silent_secs = silent.as_secs(), "machine lost: heartbeats stopped")
                }
                Err(e) => tracing::debug!(%mac, error = %e, "a silent machine is not marked lost"),
            }
        }
    }
}

/// Marks machines whose installed system's agent never beat `failed` `limit` after their
/// install report; runs until aborted. A task of its own: its scans never hold back the
/// lost monitor's ticks.
pub async fn first_boot_monitor(store: Store, limit: Duration) {
    // A deadline counts from the install report, but never from before this start: a
    // machine that booted while the appliance was down gets its whole time to beat.
    let started = cosm_wire::Timestamp::now();
    let every = (limit / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        first_boot_deadlines(&store, limit, started).await;
    }
}

/// Fails the machines an install made `deployed` whose installed agent has not beaten
/// within `limit` of the report (or of `started`, when later).
async fn first_boot_deadlines(store: &Store, limit: Duration, started: cosm_wire::Timestamp) {
    let reader = store.clone();
    let deployed = tokio::task::spawn_blocking(move || {
        reader.machines(None, Some(cosm_wire::MachineState::Deployed))
    })
    .await;
    let deployed = match deployed {
        Ok(Ok(machines)) => machines,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the deployed machines");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the deployed machines");
            return;
        }
    };
    let now = cosm_wire::Timestamp::now().as_millis();
    let limit_ms = limit.as_millis() as u64;
    for m in deployed.into_iter().filter(|m| m.awaits_installed_agent) {
        let since = m.state_since.as_millis().max(started.as_millis());
        if now.saturating_sub(since) < limit_ms {
            continue;
        }
        let last_step = match store.events(m.mac, 1) {
            Ok(evs) => evs
                .last()
                .map(|e| format!("{} ({})", e.message, e.at))
                .unwrap_or_else(|| "nothing".into()),
            Err(e) => format!("(the timeline could not be read: {e})"),
        };
        let op = Op::FirstBootOverdue {
            mac: m.mac,
            limit_secs: limit.as_secs(),
            last_step,
        };
        match store.run_machine(op).await {
            Ok(m) if m.state == cosm_wire::MachineState::Failed => tracing::warn!(
                mac = %m.mac,
                limit_secs = limit.as_secs(),
                "deployed machine failed: its installed system's agent never beat"
            ),
            // Its agent beat, or it was redeployed, meanwhile.
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(mac = %m.mac, error = %e, "a deployed machine past its first-boot deadline is not marked failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_once_then_back() {
        let l = Liveness::new(Duration::from_millis(100), 3);
        let mac = MacAddr::new([2, 0, 0, 0, 0, 1]);
        // The beat's own instant lies between these two.
        let before = Instant::now();
        assert!(!l.beat(mac, Heartbeat::default()));
        let after = Instant::now();
        assert!(l.overdue(before + Duration::from_millis(250)).is_empty());
        assert_eq!(l.overdue(after + Duration::from_millis(400)).len(), 1);
        assert!(
            l.overdue(after + Duration::from_millis(800)).is_empty(),
            "marked only once"
        );
        assert!(
            l.beat(mac, Heartbeat::default()),
            "the next beat reports it was lost"
        );
        assert!(!l.beat(mac, Heartbeat::default()));
    }

    #[test]
    fn silent_after_one_window_and_unseen_agents_only_after_one_since_start() {
        let l = Liveness::new(Duration::from_millis(100), 3);
        let (seen, unseen) = (
            MacAddr::new([2, 0, 0, 0, 0, 1]),
            MacAddr::new([2, 0, 0, 0, 0, 2]),
        );
        let start = Instant::now();
        assert!(
            !l.is_silent(unseen, start),
            "just after a restart nobody is silent"
        );
        let before = Instant::now();
        l.beat(seen, Heartbeat::default());
        let after = Instant::now();
        assert!(!l.is_silent(seen, before + Duration::from_millis(250)));
        assert!(l.is_silent(seen, after + Duration::from_millis(350)));
        assert!(l.is_silent(unseen, start + Duration::from_millis(350)));
        l.beat(seen, Heartbeat::default());
        assert!(!l.is_silent(seen, Instant::now()));
    }

    #[test]
    fn a_stall_of_the_appliance_is_not_silence() {
        let l = Liveness::new(Duration::from_millis(500), 3);
        let mac = MacAddr::new([2, 0, 0, 0, 0, 1]);
        l.beat(mac, Heartbeat::default());
        let t0 = Instant::now();
        assert_eq!(l.watch(t0 + Duration::from_millis(200)), None);
        // The appliance did not run for 20 s: the beat is 20 s old, but so is the watch.
        let after = t0 + Duration::from_secs(20);
        assert!(l.watch(after).is_some());
        assert!(
            !l.is_silent(mac, after),
            "silence during a stall is forgiven"
        );
        assert!(l.overdue(after).is_empty());
        // Silence after the stall counts again.
        assert!(l.is_silent(mac, after + Duration::from_secs(2)));
    }
}
