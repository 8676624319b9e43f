//! The one place the appliance is put together from its configuration: the store, the
//! first admin token, the boot directory, the image repository, liveness and its monitor,
//! DHCP (with IPv6 router advertisements) and TFTP when configured, and the metrics. `serve` runs what this builds, and the
//! API tests build the same thing (without the network services) through [`Assembly::build`].

use crate::app::boot::{BootContext, TftpTimeline};
use crate::app::images::ImageRepo;
use crate::app::liveness::{self, Liveness};
use crate::app::timeline::Timeline;
use crate::app::{tokens, App, Store};
use crate::config::Config;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::store::StoreOptions;
use anyhow::Context;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether to start the services that own sockets besides the HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// DHCP and TFTP as the config says (the daemon).
    AsConfigured,
    /// Neither, whatever the config says (tests that drive the router directly).
    Off,
}

/// A built appliance: the state the HTTP layer serves, and the background work.
#[derive(Debug)]
pub struct Assembly {
    pub state: AppState,
    /// The admin token made at the first start (shown once), and where it was saved.
    pub first_admin: Option<(String, std::path::PathBuf)>,
    stop: watch::Sender<bool>,
    monitor: JoinHandle<()>,
    /// The first-boot deadline's monitor (`agents.first_boot_secs`; none when 0).
    first_boot: Option<JoinHandle<()>>,
    ha: JoinHandle<()>,
    dhcp: Option<JoinHandle<()>>,
}

/// Opens the store of a configuration, creating the data directory if needed.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let path = config.data_dir.join("cosm.redb");
    let options = StoreOptions {
        events_per_machine: config.events_per_machine,
    };
    // The store's errors say what is wrong (locked by another process, empty, damaged).
    Store::open(&path, options).with_context(|| format!("cannot open the store {}", path.display()))
}

impl Assembly {
    pub async fn build(config: &Config, network: Network) -> anyhow::Result<Assembly> {
        let store = open_store(config)?;
        tracing::info!(
            config = %config.path.display(),
            data_dir = %config.data_dir.display(),
            schema = store.schema_version()?,
            machines = store.machines(None, None)?.len(),
            "store open"
        );
        let first_admin = tokens::bootstrap_admin(&store, &config.data_dir).await?;
        let (stop, stop_rx) = watch::channel(false);
        let timeline = Arc::new(Timeline::new(store.clone()));
        let subnets = config
            .dhcp
            .as_ref()
            .map(|d| d.core.subnets.clone())
            .unwrap_or_default();
        let mut boot = BootContext::prepare(
            config.boot.clone(),
            config.kickstart.clone(),
            &config.data_dir,
            subnets,
            store.clone(),
            timeline.clone(),
        )
        .await?;
        // This appliance leases the machines their addresses: an install token is then
        // handed only to the address leased to its machine.
        boot.install_needs_lease = config
            .dhcp
            .as_ref()
            .is_some_and(|d| d.core.mode == cosm_netboot::dhcp::Mode::Authoritative);
        // Site settings written through the console are in force from the start.
        let stored = store.site_settings()?;
        if let Some(s) = &stored {
            boot.apply_os(&s.os);
            tracing::info!("site settings from the store are in force (GET /api/v1/settings shows each value and where it came from)");
        }
        let live = Arc::new(crate::app::settings::Live::new(config, stored));
        let images = ImageRepo::open(config.images_dir.clone(), config.max_upload_bytes)
            .with_context(|| {
                format!(
                    "cannot open the image repository {}",
                    config.images_dir.display()
                )
            })?;
        let mut tftp = None;
        let mut dhcp_handle = None;
        let mut ra_handle = None;
        let mut dhcp = None;
        if network == Network::AsConfigured {
            if let Some(settings) = config.tftp.clone() {
                let listen = settings.listen;
                let observer = Arc::new(TftpTimeline(timeline.clone()));
                let handle = cosm_netboot::tftp::start(settings, observer, stop_rx.clone())
                    .with_context(|| format!("cannot serve TFTP on tftp.listen = {listen}"))?;
                tracing::info!(addr = %handle.local_addr, root = %config.boot.dir.display(), "TFTP listening (read-only)");
                tftp = Some(handle);
            } else if config.dhcp.is_some() {
                tracing::warn!("DHCP is on but TFTP is off (no [tftp] section): BIOS and UEFI PXE clients will not get their iPXE binary; iPXE and UEFI HTTP Boot clients still boot");
            }
            if let Some(settings) = config.dhcp.clone() {
                let started = crate::dhcp_service::start(
                    settings,
                    store.clone(),
                    timeline,
                    stop_rx,
                    live.subscribe(),
                )
                .await?;
                dhcp_handle = Some(started.dhcp);
                ra_handle = started.ra;
                dhcp = Some(tokio::spawn(started.serve));
            } else {
                tracing::info!("DHCP is off (no [dhcp] section, or mode = \"off\")");
            }
        }
        let metrics = Metrics::new(store.clone(), dhcp_handle, ra_handle, tftp);
        let liveness = Arc::new(Liveness::new(
            std::time::Duration::from_secs(config.heartbeat_secs.into()),
            config.missed_beats,
        ));
        let monitor = tokio::spawn(liveness::monitor(liveness.clone(), store.clone()));
        let first_boot = config
            .first_boot
            .map(|limit| tokio::spawn(liveness::first_boot_monitor(store.clone(), limit)));
        let app = App {
            store,
            liveness,
            boot: Some(Arc::new(boot)),
            images: Some(images),
            enroll_gate: Arc::new(crate::app::EnrollGate::new(config.enroll_limits)),
            bulk_reads: Arc::new(crate::app::BulkReads::per_cpu()),
            hosts: Arc::new(crate::app::hosts::HostReports::default()),
            overcommit: crate::app::placement::Overcommit {
                cpu: config.cpu_overcommit,
                memory: config.memory_overcommit,
            },
            ha: Arc::new(crate::app::ha::Ha::new(crate::app::ha::HaSettings {
                enabled: config.ha_enabled,
                webhook: config.alarm_webhook.clone(),
            })),
            sessions: Arc::new(crate::app::console::Sessions::new(
                config.session_idle,
                config.session_max,
            )),
            settings: live,
        };
        let ha = tokio::spawn(crate::app::ha::run(app.clone()));
        Ok(Assembly {
            state: AppState {
                app,
                metrics,
                max_body_bytes: config.max_body_bytes,
            },
            first_admin,
            stop,
            monitor,
            first_boot,
            ha,
            dhcp,
        })
    }

    /// Stops the background work and waits for it; the store closes when the last handle
    /// (this assembly's and the router's) is dropped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.monitor.abort();
        let _ = self.monitor.await;
        if let Some(t) = self.first_boot {
            t.abort();
            let _ = t.await;
        }
        self.ha.abort();
        let _ = self.ha.await;
        if let Some(t) = self.dhcp {
            let _ = t.await;
        }
    }
}
