//! Runs the appliance: opens the store, makes the first admin token, serves HTTP until
//! SIGINT or SIGTERM, then lets in-flight requests finish and closes the store.

use crate::api::{self, AppState};
use crate::auth;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions};
use anyhow::Context;

/// The store file inside the data directory.
pub fn store_path(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("cosm.redb")
}

/// Opens the store of a configuration, creating the data directory if needed.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let path = store_path(config);
    Store::open(
        &path,
        StoreOptions {
            events_per_machine: config.events_per_machine,
        },
    )
    .with_context(|| {
        format!(
            "cannot open the store {} (another cosm-appliance may be running on the same data_dir)",
            path.display()
        )
    })
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config)?;
    tracing::info!(
        config = %config.path.display(),
        data_dir = %config.data_dir.display(),
        schema = store.schema_version()?,
        machines = store.machines(None, None)?.len(),
        "store open"
    );
    if let Some((token, path)) = auth::bootstrap_admin(&store, &config.data_dir).await? {
        // Shown once, on stderr, outside the log format so it is not lost in JSON logs.
        eprintln!(
            "\nFirst start: created an admin API token. It is shown only this once and saved (mode 0600) in {}:\n\n    {token}\n\nUse it with: export COSM_TOKEN=$(cat {})\n",
            path.display(),
            path.display()
        );
        tracing::info!(path = %path.display(), "first admin API token created");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let timeline = std::sync::Arc::new(crate::timeline::Timeline::new(store.clone()));
    let boot = crate::boot::BootContext::prepare(
        config.boot.clone(),
        config.kickstart.clone(),
        &config.data_dir,
        config
            .dhcp
            .as_ref()
            .map(|d| d.core.subnets.clone())
            .unwrap_or_default(),
        store.clone(),
        timeline.clone(),
    )
    .await?;
    let images = crate::images::ImageDir::open(config.images_dir.clone(), config.max_upload_bytes)
        .with_context(|| {
            format!(
                "cannot open the image repository {}",
                config.images_dir.display()
            )
        })?;
    let mut tftp = None;
    if let Some(settings) = config.tftp.clone() {
        let listen = settings.listen;
        let handle = cosm_netboot::tftp::start(
            settings,
            std::sync::Arc::new(crate::boot::TftpTimeline(timeline.clone())),
            stop_rx.clone(),
        )
        .with_context(|| format!("cannot serve TFTP on tftp.listen = {listen}"))?;
        tracing::info!(addr = %handle.local_addr, root = %config.boot.dir.display(), "TFTP listening (read-only)");
        tftp = Some(handle);
    } else if config.dhcp.is_some() {
        tracing::warn!("DHCP is on but TFTP is off (no [tftp] section): BIOS and UEFI PXE clients will not get their iPXE binary; iPXE and UEFI HTTP Boot clients still boot");
    }
    let mut dhcp_handle = None;
    let mut dhcp_task = None;
    if let Some(settings) = config.dhcp.clone() {
        let (handle, serve) =
            crate::dhcp_service::start(settings, store.clone(), timeline.clone(), stop_rx.clone())
                .await?;
        dhcp_handle = Some(handle);
        dhcp_task = Some(tokio::spawn(serve));
    } else {
        tracing::info!("DHCP is off (no [dhcp] section, or mode = \"off\")");
    }
    let metrics = Metrics::new(store.clone(), dhcp_handle, tftp);
    let liveness = std::sync::Arc::new(crate::liveness::Liveness::new(
        std::time::Duration::from_secs(config.heartbeat_secs.into()),
        config.missed_beats,
    ));
    let monitor = tokio::spawn(crate::liveness::monitor(liveness.clone(), store.clone()));
    let app = api::router(AppState {
        liveness,
        store: store.clone(),
        metrics,
        max_body_bytes: config.max_body_bytes,
        boot: Some(std::sync::Arc::new(boot)),
        images: Some(images),
    });
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on api.listen = {}", config.api_listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP API listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("HTTP server failed")?;
    let _ = stop_tx.send(true);
    monitor.abort();
    let _ = monitor.await;
    if let Some(t) = dhcp_task {
        let _ = t.await;
    }
    drop(store);
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
}
