//! `cosmctl leases …`: the DHCP lease table.

use crate::output::{dash, print_table, table, time, Ctx};
use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use cosm_wire::{Lease, MacAddr};

/// Subcommands of `cosmctl leases`.
#[derive(Debug, Subcommand)]
pub(crate) enum LeasesCmd {
    /// List lease records (bound, released, declined), by address.
    #[command(visible_alias = "ls")]
    List {
        /// Only this MAC's lease.
        #[arg(long)]
        mac: Option<MacAddr>,
        /// Only leases in this state.
        #[arg(long, value_enum)]
        state: Option<LeaseStateArg>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LeaseStateArg {
    Bound,
    Released,
    Declined,
}

/// Runs a `cosmctl leases` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: LeasesCmd) -> Result<()> {
    match cmd {
        LeasesCmd::List { mac, state } => {
            let mut query = Vec::new();
            if let Some(m) = mac {
                query.push(("mac", m.to_string()));
            }
            if let Some(s) = state {
                let s = match s {
                    LeaseStateArg::Bound => "bound",
                    LeaseStateArg::Released => "released",
                    LeaseStateArg::Declined => "declined",
                };
                query.push(("state", s.to_string()));
            }
            let reply = ctx.api.get_all("/leases", &query)?;
            ctx.show(reply, |leases: Vec<Lease>| {
                let mut t = table(&["IP", "MAC", "STATE", "EXPIRES", "CLIENT HOSTNAME", "RELAY"]);
                for l in &leases {
                    t.add_row(vec![
                        l.ip.to_string(),
                        l.mac.to_string(),
                        format!("{:?}", l.state).to_lowercase(),
                        time(l.expires_at),
                        dash(l.client_hostname.as_deref()),
                        dash(l.relay.map(|r| r.to_string()).as_deref()),
                    ]);
                }
                print_table(&t)
            })
        }
    }
}
