//! Telling the appliance how an install goes: [`InstallProgress`] posts, at most every
//! `progress_every_secs` and at each phase change. The posts go out from a thread of their
//! own; one that fails is logged and forgotten: progress is for the timeline, the install
//! never waits on it and never fails because of it.

use cosm_wire::{InstallProgress, MacAddr};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The phases, in order, as `InstallProgress::phase` names them.
pub const STREAMING: &str = "streaming";
pub const VERIFYING: &str = "verifying";
pub const PARTITIONING: &str = "partitioning";
pub const CONFIGURING: &str = "configuring";
pub const ENROLLING: &str = "enrolling";

/// When a progress post is due: the first, each phase change, and otherwise not before
/// `every` after the last one.
#[derive(Debug, Clone)]
pub struct ProgressClock {
    every: Duration,
    last: Option<(Instant, String)>,
}

impl ProgressClock {
    pub fn new(every: Duration) -> Self {
        ProgressClock { every, last: None }
    }

    /// Whether an update in `phase` at `now` should be sent; if so, it counts as sent.
    pub fn due(&mut self, phase: &str, now: Instant) -> bool {
        let due = match &self.last {
            None => true,
            Some((at, last_phase)) => {
                last_phase != phase || now.saturating_duration_since(*at) >= self.every
            }
        };
        if due {
            self.last = Some((now, phase.to_string()));
        }
        due
    }
}

/// Average MiB/s of `bytes` over `elapsed` (0 before any time passed).
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// Posts that wait for the poster thread: each phase's latest, in phase order.
#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<InstallProgress>,
    /// A post is under way.
    posting: bool,
    /// No more updates come; the thread ends once `waiting` is empty.
    closed: bool,
}

impl Queue {
    /// Queues `p`, replacing a waiting update of the same phase (only the latest counts).
    fn push(&mut self, p: InstallProgress) {
        match self.waiting.back_mut() {
            Some(last) if last.phase == p.phase => *last = p,
            _ => self.waiting.push_back(p),
        }
    }
}

type Shared = Arc<(Mutex<Queue>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends progress for one install from a thread of its own, so a slow or absent appliance
/// never slows the install down.
#[derive(Debug)]
pub struct Progress {
    mac: MacAddr,
    total: u64,
    started: Instant,
    clock: ProgressClock,
    shared: Shared,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// `appliance`: base URL; `total`: compressed bytes of the image.
    pub fn new(
        http: reqwest::blocking::Client,
        appliance: &str,
        token: &str,
        mac: MacAddr,
        total: u64,
        every: Duration,
    ) -> Self {
        let shared: Shared = Arc::default();
        let url = format!("{appliance}/api/v1/agent/install-progress");
        let token = token.to_string();
        let poster = shared.clone();
        let thread = std::thread::Builder::new()
            .name("install-progress".into())
            .spawn(move || post_until_closed(&poster, &http, &url, &token))
            .map_err(|e| eprintln!("warning: no progress thread ({e}); progress is not posted"))
            .ok();
        Progress {
            mac,
            total,
            started: Instant::now(),
            clock: ProgressClock::new(every),
            shared,
            thread,
        }
    }

    /// Restarts the speed measurement (when the stream begins).
    pub fn start(&mut self) {
        self.started = Instant::now();
    }

    /// Queues `bytes` verified so far in `phase`, if due; never waits for the post.
    pub fn update(&mut self, phase: &str, bytes: u64) {
        if !self.clock.due(phase, Instant::now()) {
            return;
        }
        let body = InstallProgress {
            mac: self.mac,
            phase: phase.to_string(),
            bytes,
            total: self.total,
            mib_per_s: mib_per_s(bytes, self.started.elapsed()),
        };
        eprintln!(
            "install: {phase} {}% ({bytes} of {} bytes, {:.1} MiB/s)",
            body.percent(),
            self.total,
            body.mib_per_s
        );
        if self.thread.is_some() {
            lock(&self.shared).push(body);
            self.shared.1.notify_all();
        }
    }

    /// Sends what is still waiting, for up to `patience`, and stops the thread (so no
    /// progress arrives after the report).
    pub fn finish(mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let mut q = lock(&self.shared);
        q.closed = true;
        self.shared.1.notify_all();
        while !q.waiting.is_empty() || q.posting {
            let now = Instant::now();
            if now >= deadline {
                eprintln!("warning: progress posts still waiting after {patience:?}; dropped");
                q.waiting.clear();
                return;
            }
            q = self
                .shared
                .1
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(q);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.shared.1.notify_all();
    }
}

/// The poster thread: one post at a time, in queue order, until closed and empty.
fn post_until_closed(shared: &Shared, http: &reqwest::blocking::Client, url: &str, token: &str) {
    loop {
        let body = {
            let mut q = lock(shared);
            loop {
                if let Some(b) = q.waiting.pop_front() {
                    q.posting = true;
                    break b;
                }
                if q.closed {
                    return;
                }
                q = shared.1.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let sent = http
            .post(url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .json(&body)
            .send()
            .and_then(|r| r.error_for_status());
        if let Err(e) = sent {
            eprintln!(
                "warning: the progress post failed (the install goes on): {}",
                e.without_url()
            );
        }
        lock(shared).posting = false;
        shared.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_at_phase_changes_and_at_most_every_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = ProgressClock::new(2 * s);
        assert!(c.due(STREAMING, t0));
        assert!(!c.due(STREAMING, t0 + s));
        assert!(c.due(STREAMING, t0 + 2 * s));
        assert!(!c.due(STREAMING, t0 + 3 * s));
        assert!(
            c.due(VERIFYING, t0 + 3 * s),
            "a phase change is always sent"
        );
        assert!(c.due(PARTITIONING, t0 + 3 * s));
        assert!(!c.due(PARTITIONING, t0 + 4 * s));
    }

    #[test]
    fn waiting_posts_keep_each_phase_once_in_order() {
        let p = |phase: &str, bytes| InstallProgress {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            phase: phase.into(),
            bytes,
            total: 100,
            mib_per_s: 1.0,
        };
        let mut q = Queue::default();
        q.push(p(STREAMING, 10));
        q.push(p(STREAMING, 20));
        q.push(p(VERIFYING, 100));
        q.push(p(PARTITIONING, 100));
        let got: Vec<(&str, u64)> = q
            .waiting
            .iter()
            .map(|p| (p.phase.as_str(), p.bytes))
            .collect();
        assert_eq!(
            got,
            [(STREAMING, 20), (VERIFYING, 100), (PARTITIONING, 100)]
        );
    }

    #[test]
    fn percent_and_speed_are_derived() {
        let p = InstallProgress {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            phase: STREAMING.into(),
            bytes: 3 << 20,
            total: 12 << 20,
            mib_per_s: mib_per_s(3 << 20, Duration::from_millis(1500)),
        };
        assert_eq!(p.percent(), 25);
        assert!((p.mib_per_s - 2.0).abs() < 1e-9, "{}", p.mib_per_s);
        assert_eq!(mib_per_s(5, Duration::ZERO), 0.0);
    }
}
