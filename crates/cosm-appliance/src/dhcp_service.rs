//! Runs the netboot DHCP server inside the appliance: leases become durable through the
//! store (grouped commits), known machines and their reservations come from the store,
//! and each machine's DHCP steps land on its timeline.

use crate::app::timeline::Timeline;
use crate::app::{Op, Store};
use crate::config::DhcpSettings;
use crate::store::StoreError;
use cosm_netboot::dhcp::server::{self, DhcpHandle, LeaseSink};
use cosm_netboot::dhcp::{Host, Hosts};
use cosm_wire::{CreateMachine, EventKind, Lease, MacAddr};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug)]
struct StoreSink {
    store: Store,
    hosts: watch::Receiver<Arc<Hosts>>,
    timeline: Arc<Timeline>,
    /// Machines this sink recorded, until the hosts list has them.
    created: Mutex<HashSet<MacAddr>>,
}

impl LeaseSink for StoreSink {
    async fn persist(&self, lease: Lease) -> Result<(), String> {
        self.store
            .run(Op::PutLease(lease))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn note(&self, mac: MacAddr, step: &str) {
        // Most DHCP traffic is from machines the store does not know; skip those before
        // the timeline's own lookup.
        if self.hosts.borrow().is_known(&mac) || self.lock_created().contains(&mac) {
            self.timeline.note(mac, EventKind::Dhcp, step.to_string());
        }
    }

    fn boot_client(&self, mac: MacAddr, how: &str, step: &str) -> bool {
        if self.hosts.borrow().is_known(&mac) {
            return false;
        }
        {
            let mut created = self.lock_created();
            if !created.insert(mac) {
                return false;
            }
            if created.len() > 10_000 {
                // Old entries are in the hosts list by now.
                created.clear();
                created.insert(mac);
            }
        }
        tracing::info!(%mac, how, "new machine network-booting; recorded as discovered");
        let store = self.store.clone();
        let message = step.to_string();
        tokio::spawn(async move {
            let op = Op::CreateMachine(CreateMachine {
                mac,
                hostname: None,
                role: None,
                reserved_ip: None,
                inventory: None,
            });
            match store.run(op).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => {
                    tracing::warn!(error = %e, %mac, "cannot record a new machine");
                    return;
                }
            }
            let step = Op::RecordEvent {
                mac,
                kind: EventKind::Dhcp,
                message,
            };
            if let Err(e) = store.run(step).await {
                tracing::warn!(error = %e, %mac, "cannot record a DHCP event");
            }
        });
        true
    }
}

impl StoreSink {
    fn lock_created(&self) -> std::sync::MutexGuard<'_, HashSet<MacAddr>> {
        self.created.lock().unwrap_or_else(|e| e.into_inner())
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
    timeline: Arc<Timeline>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(DhcpHandle, impl std::future::Future<Output = ()>)> {
    let leases = store.leases()?;
    let (hosts_tx, hosts_rx) = watch::channel(Arc::new(hosts_of(&store)));
    // Reload known machines whenever a commit wrote machine records (the change feed
    // counts the commits per table, from the writes themselves).
    let mut changes = store.changes();
    let mut seen = changes.borrow().machines;
    let refresher_store = store.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let now = changes.borrow_and_update().machines;
            if now == seen {
                continue;
            }
            seen = now;
            let hosts = hosts_of(&refresher_store);
            if hosts_tx.send(Arc::new(hosts)).is_err() {
                break;
            }
        }
    });
    let sink = Arc::new(StoreSink {
        store,
        hosts: hosts_rx.clone(),
        timeline,
        created: Mutex::default(),
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
