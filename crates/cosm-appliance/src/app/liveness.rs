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
    /// one lost window has passed: the appliance may just have restarted).
    started: Instant,
}

impl Liveness {
    pub fn new(heartbeat: Duration, missed_beats: u32) -> Liveness {
        Liveness {
            beats: Mutex::default(),
            heartbeat,
            missed_beats,
            started: Instant::now(),
        }
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
            None => now.saturating_duration_since(self.started) > window,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overdue_once_then_back() {
        let l = Liveness::new(Duration::from_millis(100), 3);
        let mac = MacAddr::new([2, 0, 0, 0, 0, 1]);
        assert!(!l.beat(mac, Heartbeat::default()));
        let now = Instant::now();
        assert!(l.overdue(now + Duration::from_millis(250)).is_empty());
        assert_eq!(l.overdue(now + Duration::from_millis(400)).len(), 1);
        assert!(
            l.overdue(now + Duration::from_millis(800)).is_empty(),
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
        l.beat(seen, Heartbeat::default());
        let now = Instant::now();
        assert!(!l.is_silent(seen, now + Duration::from_millis(250)));
        assert!(l.is_silent(seen, now + Duration::from_millis(350)));
        assert!(l.is_silent(unseen, start + Duration::from_millis(350)));
        l.beat(seen, Heartbeat::default());
        assert!(!l.is_silent(seen, Instant::now()));
    }
}
