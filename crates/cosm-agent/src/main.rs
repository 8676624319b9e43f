//! `cosm-agent`: the COSM node agent.
//!
//! `run` enrols with the appliance, heartbeats and converges to its desired state (its
//! controllers carry out the queued actions on their own threads);
//! `inventory` prints what the agent reports about this machine's hardware.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// The COSM node agent: runs on every machine COSM manages, first inside the discovery
/// ramdisk, later as a service on the installed system.
///
/// It enrols with the appliance, reports the machine's hardware inventory, sends
/// heartbeats, and converges the machine to the desired state the appliance hands down.
#[derive(Debug, Parser)]
#[command(name = "cosm-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enrol with the appliance and run: heartbeats, desired state, actions. Settings come
    /// from flags/environment, then --config, then the kernel command line
    /// (cosm.appliance=URL cosm.token=TOKEN cosm.mac=MAC).
    Run {
        /// Appliance URL, e.g. http://192.0.2.1:8080.
        #[arg(long, env = "COSM_APPLIANCE")]
        appliance: Option<String>,
        /// Enrolment token (scope `enroll`); not needed once a credential is stored.
        #[arg(long, env = "COSM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The MAC to enrol as (default: first NIC with link).
        #[arg(long)]
        mac: Option<cosm_wire::MacAddr>,
        /// Directory for the node credential (mode 0600). Default /var/lib/cosm-agent.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// A TOML config file with keys appliance, token, mac, state_dir.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Kernel command line to read cosm.* settings from.
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// Filesystem root to read the inventory from.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Carry out no action: report each one (reboot, power-off, re-register) done
        /// without doing it.
        #[arg(long)]
        dry_run_actions: bool,
        /// For testing: each dry-run action takes N seconds, to exercise long actions.
        #[arg(
            long,
            value_name = "N",
            default_value_t = 0,
            requires = "dry_run_actions"
        )]
        dry_run_action_secs: u64,
        /// Enrol once, store the node credential in the state directory, and exit (what
        /// the kickstart %post runs, so the installed system boots already enrolled).
        #[arg(long)]
        enroll_only: bool,
    },
    /// Print this machine's hardware inventory (what the agent reports to the appliance).
    Inventory {
        /// Filesystem root to read `proc/` and `sys/` from (a copy of another machine's, or a
        /// test fixture).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Print the inventory as JSON (the wire format) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            appliance,
            token,
            mac,
            state_dir,
            config,
            cmdline,
            root,
            dry_run_actions,
            dry_run_action_secs,
            enroll_only,
        } => {
            let result = (|| -> anyhow::Result<()> {
                use cosm_agent::settings::{from_cmdline, from_file, merge, FileSettings};
                let flags = FileSettings {
                    appliance,
                    token,
                    mac,
                    state_dir,
                };
                let file = match &config {
                    Some(p) => from_file(p)?,
                    None => FileSettings::default(),
                };
                let kernel = from_cmdline(&std::fs::read_to_string(&cmdline).unwrap_or_default());
                let settings = merge(&[flags, file, kernel])?;
                let actions = if dry_run_actions {
                    cosm_agent::run::ActionMode::Simulated {
                        delay: std::time::Duration::from_secs(dry_run_action_secs),
                    }
                } else {
                    cosm_agent::run::ActionMode::Execute
                };
                cosm_agent::run::run(
                    settings,
                    cosm_agent::run::RunOptions {
                        root,
                        actions,
                        enroll_only,
                    },
                )
            })();
            if let Err(e) = result {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        Cmd::Inventory { root, json } => {
            if let Err(e) = print_inventory(&root, json) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
    }
}

/// Runs `cosm-agent inventory`.
fn print_inventory(root: &Path, json: bool) -> anyhow::Result<()> {
    let inventory = cosm_agent::inventory::read_inventory(root)?;
    if json {
        let text =
            serde_json::to_string_pretty(&inventory).context("cannot serialise the inventory")?;
        println!("{text}");
    } else {
        print!("{}", cosm_agent::inventory::summary(&inventory));
    }
    Ok(())
}
