//! `cosm-agent`: the COSM node agent.
//!
//! This release carries only the command-line surface. Enrolment, inventory, heartbeat and
//! desired-state reconciliation are the next piece of work (see ARCHITECTURE.md); until
//! then `run` says so and exits non-zero rather than pretending to work.

use clap::{Parser, Subcommand};

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
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { .. } => {
            eprintln!("error: the agent loop (enrolment, inventory, heartbeat) is not implemented in this release");
            std::process::exit(2);
        }
    }
}
