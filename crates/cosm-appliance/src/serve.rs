//! Runs the appliance: builds it ([`crate::assembly`]), serves HTTP and HTTPS on the API
//! port ([`crate::api_tls`] has the certificate) until SIGINT or SIGTERM, then lets
//! in-flight requests finish and closes the store.

use crate::assembly::{Assembly, Network};
use crate::config::Config;
use anyhow::Context;

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Watch the signals before anything is announced: a SIGTERM that arrived after "HTTP API
    // listening" but before the first poll of a lazily registered handler killed the process
    // with the default action (exit by signal instead of a clean stop).
    let shutdown = shutdown_signal()?;
    let limits = connection_limits(&config);
    // Before the store opens: a wrong certificate setting stops the start at once.
    let cert = crate::api_tls::load_or_create(&config)?;
    if cert.created {
        tracing::info!(cert = %cert.cert_file.display(), key = %cert.key_file.display(), "made a self-signed certificate for HTTPS on the API port");
    }
    let assembly = Assembly::build(&config, Network::AsConfigured).await?;
    if let Some((token, path)) = &assembly.first_admin {
        // Shown once, on stderr, outside the log format so it is not lost in JSON logs.
        eprintln!(
            "\nFirst start: created an admin API token. It is shown only this once and saved (mode 0600) in {}:\n\n    {token}\n\nUse it with: export COSM_TOKEN=$(cat {})\n",
            path.display(),
            path.display()
        );
        tracing::info!(path = %path.display(), "first admin API token created");
    }
    let router = crate::http::router(assembly.state.clone());
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on api.listen = {}", config.api_listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        fingerprint = %cert.fingerprint,
        cert = %cert.cert_file.display(),
        "HTTPS on the API port: {}",
        cert.describe()
    );
    tracing::info!(%addr, "HTTP API listening");
    crate::http::serve(
        listener,
        router,
        limits,
        Some(cert.server_config.clone()),
        shutdown,
    )
    .await
    .context("HTTP server failed")?;
    assembly.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Raises the open-file limit to its hard maximum (a default soft limit of 1024 was
/// exhausted by ~1,000 idle connections) and keeps `api.max_connections` below what is
/// left after a reserve for the store, TFTP transfers, DHCP and the boot files.
fn connection_limits(config: &Config) -> crate::config::HttpLimits {
    const RESERVE: u64 = 512;
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let mut limits = config.http_limits;
    let room = nofile.saturating_sub(RESERVE).max(16) as usize;
    if limits.max_connections > room {
        tracing::warn!(
            configured = limits.max_connections,
            open_file_limit = nofile,
            using = room,
            "api.max_connections is above what the open-file limit leaves room for; raise LimitNOFILE (systemd) or ulimit -n"
        );
        limits.max_connections = room;
    }
    tracing::info!(
        open_file_limit = nofile,
        max_connections = limits.max_connections,
        idle_timeout_secs = limits.idle_timeout.as_secs(),
        "HTTP connection limits"
    );
    limits
}

/// Registers SIGTERM and SIGINT handlers now and returns a future that ends at the first of
/// them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
    })
}
