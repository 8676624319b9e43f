//! Runs the netboot DHCP server inside the appliance: leases become durable through the
//! store (grouped commits), known machines and their reservations come from the store,
//! and each machine's DHCP steps land on its timeline.

use crate::config::DhcpSettings;
use crate::store::{Command, Store};
use cosm_netboot::dhcp::server::{self, DhcpHandle, LeaseSink};
use cosm_netboot::dhcp::{Host, Hosts};
use cosm_wire::{EventKind, Lease, MacAddr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The same DHCP step of the same machine is recorded at most once per this interval, so
/// a client stuck in a loop cannot flood its timeline or the store.
const NOTE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct StoreSink {
    store: Store,
    hosts: watch::Receiver<Arc<Hosts>>,
    last: Mutex<HashMap<(MacAddr, String), Instant>>,
}

impl LeaseSink for StoreSink {
    async fn persist(&self, lease: Lease) -> Result<(), String> {
        self.store
            .apply(Command::PutLease(lease))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn note(&self, mac: MacAddr, step: &str) {
        if !self.hosts.borrow().is_known(&mac) {
            return;
        }
        let key = (
            mac,
            step.split_whitespace().next().unwrap_or("").to_string(),
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
        let store = self.store.clone();
        let message = step.to_string();
        tokio::spawn(async move {
            if let Err(e) = store
                .apply(Command::RecordEvent {
                    mac,
                    kind: EventKind::Dhcp,
                    message,
                })
                .await
            {
                tracing::warn!(error = %e, %mac, "cannot record a DHCP event");
            }
        });
    }
}

fn hosts_of(store: &Store) -> Hosts {
    match store.machines(None, None) {
        Ok(ms) => Hosts::new(ms.into_iter().map(|m| {
            (
                m.mac,
                Host {
                    reserved_ip: m.reserved_ip,
                    hostname: m.hostname,
                },
            )
        })),
        Err(e) => {
            tracing::error!(error = %e, "cannot read machines for DHCP; serving with none known");
            Hosts::default()
        }
    }
}

/// Starts DHCP; the returned future serves until `shutdown` changes.
pub async fn start(
    settings: DhcpSettings,
    store: Store,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(DhcpHandle, impl std::future::Future<Output = ()>)> {
    let leases = store.leases()?;
    let (hosts_tx, hosts_rx) = watch::channel(Arc::new(hosts_of(&store)));
    // Reload known machines whenever a command changed them.
    let mut changed = store.machines_changed();
    let refresher_store = store.clone();
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            let hosts = hosts_of(&refresher_store);
            if hosts_tx.send(Arc::new(hosts)).is_err() {
                break;
            }
        }
    });
    let sink = Arc::new(StoreSink {
        store,
        hosts: hosts_rx.clone(),
        last: Mutex::default(),
    });
    let n = leases.len();
    let mode = settings.core.mode;
    let (handle, serve) = server::start(
        settings.core,
        settings.listen.clone(),
        leases,
        hosts_rx,
        sink,
        shutdown,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for DHCP on dhcp.listen = {}: {e}",
            settings.listen.addr
        )
    })?;
    tracing::info!(addr = %handle.local_addr, mode = ?mode, leases = n, interface = ?settings.listen.interface, "DHCP listening");
    Ok((handle, serve))
}
