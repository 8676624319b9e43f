//! `cosm-agent`: the COSM node agent.
//!
//! This release carries the command-line surface and `inventory`, which prints what the
//! agent would report about this machine's hardware. Enrolment, heartbeat and
//! desired-state reconciliation are the next piece of work (see ARCHITECTURE.md); until
//! then `run` says so and exits non-zero rather than pretending to work.

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
    /// Enrol and run the agent loop (not available in this release).
    Run {
        /// Appliance URL, e.g. http://192.0.2.1:8080 (kernel command line: cosm.appliance=URL).
        #[arg(long, env = "COSM_APPLIANCE")]
        appliance: Option<String>,
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
        Cmd::Run { .. } => {
            eprintln!("error: the agent loop (enrolment, inventory, heartbeat) is not implemented in this release");
            std::process::exit(2);
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
