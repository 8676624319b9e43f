//! `cosm-appliance`: the COSM provisioning appliance daemon.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use cosm_appliance::config::Config;
use cosm_wire::Scope;
use std::path::PathBuf;

/// The COSM bare-metal provisioning appliance.
///
/// Keeps the inventory of machines (by MAC), their roles and lifecycle in an embedded
/// store, and serves the REST API that `cosmctl` and the agents use.
///
/// Examples:
///   cosm-appliance serve --config /etc/cosm/appliance.toml
///   cosm-appliance check-config --config /etc/cosm/appliance.toml
///   cosm-appliance create-token --config /etc/cosm/appliance.toml --name ops --scope read
#[derive(Debug, Parser)]
#[command(name = "cosm-appliance", version, verbatim_doc_comment)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    /// Log filter, e.g. `info`, `debug`, `cosm_appliance=debug,tower_http=info`.
    /// RUST_LOG, when set, wins.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the appliance until SIGINT/SIGTERM. On the first start it creates an admin API
    /// token, prints it once and saves it (0600) as <data_dir>/admin.token.
    Serve {
        /// The TOML config file (see examples/appliance.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and print the settings it results in; exit 1 if it is invalid.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create an API token directly in the store, e.g. when the admin token is lost.
    /// The appliance must be stopped (the store is opened exclusively).
    CreateToken {
        #[arg(long, short)]
        config: PathBuf,
        /// A name for the token, shown in audit log lines.
        #[arg(long)]
        name: String,
        /// `admin` may do everything; `read` only GET calls.
        #[arg(long, value_enum, default_value_t = ScopeArg::Admin)]
        scope: ScopeArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScopeArg {
    Admin,
    Read,
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed: the process that read it is
        // gone) is dropped; reporting that with `eprintln!` would panic the thread that
        // logged, and the appliance would stop answering.
        .log_internal_errors(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    if let Err(e) = run(cli.command) {
        tracing::error!("{e:#}");
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { config } => {
            let config = Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(cosm_appliance::serve::run(config))
        }
        Cmd::CheckConfig { config } => {
            let c = Config::load(&config)?;
            println!("{}: OK", c.path.display());
            println!("  data_dir                  {}", c.data_dir.display());
            println!("  api.listen                {}", c.api_listen);
            println!("  api.max_body_bytes        {}", c.max_body_bytes);
            // The certificate files are read and checked here too (exit 1 when they are
            // wrong); a self-signed certificate not made yet is only described.
            println!(
                "  api HTTPS (same port)     {}",
                cosm_appliance::api_tls::check(&c)?
            );
            println!(
                "  api connections           at most {}, closed after {} s without traffic",
                c.http_limits.max_connections,
                c.http_limits.idle_timeout.as_secs()
            );
            println!(
                "  agents                    heartbeat {} s, lost after {} missed; enrolment: at most {} discovered, {}/s (burst {})",
                c.heartbeat_secs,
                c.missed_beats,
                c.enroll_limits.max_discovered,
                c.enroll_limits.per_sec,
                c.enroll_limits.burst
            );
            println!(
                "  first boot                {}",
                match c.first_boot {
                    Some(d) => format!(
                        "an installed system's agent must beat within {} s of the install report, else the machine is failed",
                        d.as_secs()
                    ),
                    None => "waits forever for an installed system's agent (first_boot_secs = 0)".into(),
                }
            );
            println!("  events.retain_per_machine {}", c.events_per_machine);
            println!("  boot.dir                  {}", c.boot.dir.display());
            println!("  boot.ipxe_dir             {}", c.boot.ipxe_dir.display());
            println!(
                "  boot.ramdisk_dir          {}",
                c.boot.ramdisk_dir.display()
            );
            println!("  boot.appliance_url        {}", c.boot.appliance_url);
            match &c.tftp {
                None => println!("  tftp                      off"),
                Some(t) => println!(
                    "  tftp                      {} (max {} transfers, blksize <= {}, windowsize <= {}, timeout {} ms, {} retries, cache {} MiB)",
                    t.listen,
                    t.max_transfers,
                    t.block_size_limit,
                    t.window_size_limit,
                    t.timeout.as_millis(),
                    t.max_send_retries,
                    t.cache_bytes >> 20
                ),
            }
            match &c.dhcp {
                None => println!("  dhcp                      off"),
                Some(d) => {
                    let core = &d.core;
                    println!("  dhcp.mode                 {:?}", core.mode);
                    println!(
                        "  dhcp.listen               {} (interface {})",
                        d.listen.addr,
                        d.listen.interface.as_deref().unwrap_or("any")
                    );
                    println!("  dhcp.server_id            {}", core.server_id);
                    println!(
                        "  dhcp.unknown_macs         {:?} (at most {} leases)",
                        core.unknown_macs, core.max_unknown_leases
                    );
                    println!("  dhcp.probe_timeout_ms     {}", d.listen.probe_timeout_ms);
                    println!(
                        "  dhcp.router_advertisements {}",
                        if d.router_advertisements {
                            "on while the mode is authoritative (IPv6 RAs: router lifetime 0, no prefix)"
                        } else {
                            "off"
                        }
                    );
                    println!(
                        "  dhcp.boot                 BIOS {}, UEFI {}, next-server {}, HTTP {}",
                        core.boot.bios_file,
                        core.boot.uefi_x64_file,
                        core.boot.tftp_server,
                        core.boot.http_base
                    );
                    for s in &core.subnets {
                        let pools: Vec<String> = s
                            .pools
                            .iter()
                            .map(|p| format!("{}-{} ({})", p.first, p.last, p.size()))
                            .collect();
                        println!(
                            "  dhcp.subnet               {}/{} pools {} lease {}s",
                            s.network,
                            s.prefix_len,
                            pools.join(", "),
                            s.lease_time_secs
                        );
                    }
                }
            }
            print_site_settings(&c);
            Ok(())
        }
        Cmd::CreateToken {
            config,
            name,
            scope,
        } => {
            let config = Config::load(&config)?;
            let store = cosm_appliance::assembly::open_store(&config)?;
            let scope = match scope {
                ScopeArg::Admin => Scope::Admin,
                ScopeArg::Read => Scope::Read,
            };
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let (info, token) = rt.block_on(cosm_appliance::app::tokens::create_token(
                &store, &name, scope,
            ))?;
            eprintln!(
                "created token {} ({:?}, id {}); it is not shown again:",
                info.name, info.scope, info.id
            );
            println!("{token}");
            Ok(())
        }
    }
}

/// The site settings in force (the console's wizard writes them to the store) with where
/// each value comes from. The store is read only when no appliance holds it.
fn print_site_settings(c: &Config) {
    use cosm_appliance::app::settings;
    let path = c.data_dir.join("cosm.redb");
    let stored = if path.exists() {
        match cosm_appliance::assembly::open_store(c) {
            Ok(store) => match store.site_settings() {
                Ok(s) => Some(s),
                Err(e) => {
                    println!("  site settings             cannot be read from the store: {e}");
                    return;
                }
            },
            Err(_) => {
                println!("  site settings             the store is in use (is the appliance running?): GET /api/v1/settings shows the values in force and their sources");
                return;
            }
        }
    } else {
        None
    };
    let file = settings::from_config(c);
    let stored = stored.flatten();
    println!(
        "  site settings             {} (store overrides file; file overrides built-in defaults):",
        if stored.is_some() {
            "set through the console or the API"
        } else {
            "from this file (the first-run wizard has not been applied)"
        }
    );
    for e in settings::effective(&file, stored.as_ref()) {
        let source = match e.source {
            cosm_wire::SettingSource::Store => "store",
            cosm_wire::SettingSource::File => "file",
            cosm_wire::SettingSource::Default => "default",
        };
        println!("    {:<34} {:<40} [{source}]", e.key, e.value);
    }
}
