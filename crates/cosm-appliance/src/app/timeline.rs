//! Boot steps onto machines' timelines, from the DHCP, TFTP and HTTP boot servers.
//!
//! Each step is recorded only for machines the store knows, and the same kind of step of
//! the same machine at most once per [`NOTE_INTERVAL`], so a client stuck in a loop cannot
//! flood its timeline or the store. Safe to call from any thread: the write runs on the
//! runtime the timeline was made on.

use super::{Command, Op, Store};
use cosm_wire::{EventKind, MacAddr};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const NOTE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Timeline {
    store: Store,
    runtime: tokio::runtime::Handle,
    last: Mutex<HashMap<(MacAddr, EventKind, String), Instant>>,
}

impl Timeline {
    /// Must be called inside the tokio runtime that will do the writes.
    pub fn new(store: Store) -> Timeline {
        Timeline {
            store,
            runtime: tokio::runtime::Handle::current(),
            last: Mutex::default(),
        }
    }

    /// The MAC holding the lease of `ip`, if the appliance gave it one.
    pub fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        let ip: Ipv4Addr = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
        };
        self.store.lease(ip).ok().flatten().map(|l| l.mac)
    }

    /// Records `message` unless the same step (kind and first word) of this machine was
    /// recorded less than [`NOTE_INTERVAL`] ago.
    pub fn note(&self, mac: MacAddr, kind: EventKind, message: String) {
        if !matches!(self.store.machine(mac), Ok(Some(_))) {
            return;
        }
        let key = (
            mac,
            kind,
            message.split_whitespace().next().unwrap_or("").to_string(),
        );
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if last
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < NOTE_INTERVAL)
            {
                return;
            }
            if last.len() > 50_000 {
                last.retain(|_, t| now.duration_since(*t) < NOTE_INTERVAL);
            }
            last.insert(key, now);
        }
        // Queued here, in call order, so the timeline keeps the order steps happened in.
        let cmd = Command::now(Op::RecordEvent { mac, kind, message });
        let store = self.store.clone();
        let queued = store.submit(cmd);
        self.runtime.spawn(async move {
            let result = match queued {
                Ok(done) => done.await,
                Err(cmd) => store.apply(cmd).await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, %mac, "cannot record a boot event");
            }
        });
    }
}
