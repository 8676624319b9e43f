//! `cosmctl machines …` and `cosmctl events`: listing, registering, changing and removing
//! machines, and reading a machine's event timeline. `machines power` and
//! `machines power-settings` live in [`crate::power`].

use crate::output::{
    age, dash, gib, human_bytes, kv_table, print, print_table, table, time, wire_name, Ctx,
};
use anyhow::Result;
use clap::builder::PossibleValue;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use cosm_wire::{
    CreateMachine, Event, Inventory, MacAddr, Machine, MachineState, RoleName, SetRole, SetState,
    Timestamp, UpdateMachine,
};
use std::net::Ipv4Addr;

/// A lifecycle state as a command-line value, so that `--help` and shell completion list
/// the states the wire type knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateArg(pub(crate) MachineState);

static STATE_ARGS: [StateArg; MachineState::ALL.len()] = {
    let mut out = [StateArg(MachineState::Discovered); MachineState::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = StateArg(MachineState::ALL[i]);
        i += 1;
    }
    out
};

impl ValueEnum for StateArg {
    fn value_variants<'a>() -> &'a [Self] {
        &STATE_ARGS
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.as_str()))
    }
}

/// Subcommands of `cosmctl machines`.
#[derive(Debug, Subcommand)]
pub(crate) enum MachinesCmd {
    /// List machines, optionally only those with a given role and/or state.
    #[command(visible_alias = "ls")]
    List {
        /// Only machines with this role.
        #[arg(long, value_name = "ROLE")]
        role: Option<RoleName>,
        /// Only machines in this lifecycle state.
        #[arg(long, value_name = "STATE", value_enum)]
        state: Option<StateArg>,
    },
    /// Show one machine in detail, with a summary of its hardware inventory once its agent
    /// has reported one.
    Show {
        /// MAC address of the machine, e.g. 52:54:00:aa:bb:01.
        mac: MacAddr,
    },
    /// Pre-register a machine by its MAC address before it first boots.
    ///
    /// Without --role the appliance tries its role rules; with no match the machine stays
    /// `discovered` until it is given a role.
    #[command(
        after_help = "Example:\n  cosmctl machines add 52:54:00:aa:bb:01 --role web --hostname web-01 --ip 10.0.0.21"
    )]
    Add {
        /// MAC address of the machine's boot NIC, e.g. 52:54:00:aa:bb:01 (`-` separators
        /// and bare hex are accepted too).
        mac: MacAddr,
        /// Role to give it (see `cosmctl roles list`).
        #[arg(long, value_name = "ROLE")]
        role: Option<RoleName>,
        /// Hostname to install it with.
        #[arg(long, value_name = "HOSTNAME")]
        hostname: Option<String>,
        /// IPv4 address to reserve for it.
        #[arg(long, value_name = "ADDRESS")]
        ip: Option<Ipv4Addr>,
    },
    /// Give a machine a role, or take its role away with --clear.
    #[command(
        after_help = "Examples:\n  cosmctl machines set-role 52:54:00:aa:bb:01 storage\n  cosmctl machines set-role 52:54:00:aa:bb:01 --clear"
    )]
    SetRole {
        /// MAC address of the machine.
        mac: MacAddr,
        /// The new role (see `cosmctl roles list`).
        #[arg(required_unless_present = "clear")]
        role: Option<RoleName>,
        /// Remove the machine's role instead of setting one.
        #[arg(long, conflicts_with = "role")]
        clear: bool,
    },
    /// Change a machine's hostname and/or reserved IP address.
    Update(UpdateArgs),
    /// Ask for a lifecycle transition; the appliance refuses moves its lifecycle does not
    /// allow.
    #[command(
        after_help = "Example:\n  cosmctl machines set-state 52:54:00:aa:bb:01 failed --reason \"bad DIMM\""
    )]
    SetState {
        /// MAC address of the machine.
        mac: MacAddr,
        /// The state to move to.
        #[arg(value_enum)]
        state: StateArg,
        /// Why, recorded in the machine's event timeline.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Install a machine again: back to `ready` (from deployed, active or failed) and, if
    /// its agent is running, a reboot into the installer. The machine needs a role.
    #[command(visible_alias = "deploy")]
    Redeploy {
        /// MAC address of the machine.
        mac: MacAddr,
    },
    /// Let a new agent enrol a machine (a replaced disk, a reinstalled OS, a lost
    /// credential): its agent credentials are revoked, and the next agent that enrols with
    /// the enrol token gets the machine. Without this, a machine that has an agent is
    /// enrolled again only with that agent's credential or its install token.
    Reregister {
        /// MAC address of the machine.
        mac: MacAddr,
    },
    /// Take a machine out of service (the same as `set-state MAC retired`).
    Retire {
        /// MAC address of the machine.
        mac: MacAddr,
        /// Why, recorded in the machine's event timeline.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Power a machine on, off (hard), cycle it, read its power, or PXE-boot it once,
    /// through its BMC or fence command.
    #[command(subcommand, long_about = crate::power::POWER_ABOUT)]
    Power(crate::power::PowerCmd),
    /// Set, show or clear how the appliance reaches a machine's power (Redfish, IPMI, exec).
    #[command(subcommand, long_about = crate::power::SETTINGS_ABOUT)]
    PowerSettings(crate::power::PowerSettingsCmd),
    /// Delete a machine's record from the appliance.
    #[command(visible_alias = "delete")]
    Rm {
        /// MAC address of the machine.
        mac: MacAddr,
    },
}

/// Arguments of `cosmctl machines update`.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("change").required(true).multiple(true)
        .args(["hostname", "clear_hostname", "ip", "clear_ip"])),
    after_help = "Examples:\n  cosmctl machines update 52:54:00:aa:bb:01 --hostname db-02\n  cosmctl machines update 52:54:00:aa:bb:01 --ip 10.0.0.31 --clear-hostname"
)]
pub(crate) struct UpdateArgs {
    /// MAC address of the machine.
    pub(crate) mac: MacAddr,
    /// New hostname.
    #[arg(long, value_name = "HOSTNAME", conflicts_with = "clear_hostname")]
    pub(crate) hostname: Option<String>,
    /// Remove the hostname.
    #[arg(long)]
    pub(crate) clear_hostname: bool,
    /// New reserved IPv4 address.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "clear_ip")]
    pub(crate) ip: Option<Ipv4Addr>,
    /// Remove the reserved IP address.
    #[arg(long)]
    pub(crate) clear_ip: bool,
}

impl UpdateArgs {
    /// The PATCH body: fields not mentioned are left out (unchanged), cleared ones are null.
    pub(crate) fn to_update(&self) -> UpdateMachine {
        fn change<T: Clone>(set: &Option<T>, clear: bool) -> Option<Option<T>> {
            if clear {
                Some(None)
            } else {
                set.clone().map(Some)
            }
        }
        UpdateMachine {
            hostname: change(&self.hostname, self.clear_hostname),
            role: None,
            reserved_ip: change(&self.ip, self.clear_ip),
        }
    }
}

/// Arguments of `cosmctl events`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  cosmctl events 52:54:00:aa:bb:01 --limit 20")]
pub(crate) struct EventsArgs {
    /// MAC address of the machine.
    pub(crate) mac: MacAddr,
    /// Show at most this many events.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: u32,
}

fn machine_path(mac: &MacAddr) -> String {
    format!("/machines/{mac}")
}

/// Runs a `cosmctl machines` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: MachinesCmd) -> Result<()> {
    match cmd {
        MachinesCmd::List { role, state } => {
            let mut query = Vec::new();
            if let Some(r) = &role {
                query.push(("role", r.to_string()));
            }
            if let Some(s) = state {
                query.push(("state", s.0.to_string()));
            }
            let reply = ctx.api.get_all("/machines", &query)?;
            ctx.show(reply, |ms: Vec<Machine>| print_list(&ms))
        }
        MachinesCmd::Show { mac } => {
            let reply = ctx.api.get(&machine_path(&mac), &[])?;
            ctx.show(reply, |m: Machine| {
                print_table(&kv_table(details(&m, Timestamp::now())))
            })
        }
        MachinesCmd::Add {
            mac,
            role,
            hostname,
            ip,
        } => {
            let body = CreateMachine {
                mac,
                hostname,
                role,
                reserved_ip: ip,
                inventory: None,
            };
            let reply = ctx.api.post("/machines", &body)?;
            ctx.show(reply, |m: Machine| {
                print(&format!("created machine {} ({})", m.mac, brief(&m)))
            })
        }
        MachinesCmd::SetRole { mac, role, clear } => {
            let body = SetRole {
                role: if clear { None } else { role },
            };
            let reply = ctx
                .api
                .put(&format!("{}/role", machine_path(&mac)), &body)?;
            ctx.show(reply, |m: Machine| {
                let what = match &m.role {
                    Some(r) => format!("now has role {r}"),
                    None => "no longer has a role".to_string(),
                };
                print(&format!("machine {} {what} (state {})", m.mac, m.state))
            })
        }
        MachinesCmd::Update(args) => {
            let reply = ctx.api.patch(&machine_path(&args.mac), &args.to_update())?;
            ctx.show(reply, |m: Machine| {
                print(&format!(
                    "updated machine {} (hostname {}, ip {})",
                    m.mac,
                    dash(m.hostname.as_deref()),
                    dash(m.reserved_ip)
                ))
            })
        }
        MachinesCmd::SetState { mac, state, reason } => set_state(ctx, mac, state.0, reason),
        MachinesCmd::Retire { mac, reason } => set_state(ctx, mac, MachineState::Retired, reason),
        MachinesCmd::Reregister { mac } => {
            let reply = ctx.api.post(
                &format!("{}/reregister", machine_path(&mac)),
                &serde_json::json!({}),
            )?;
            ctx.show(reply, |m: Machine| {
                println!(
                    "machine {mac} ({}): its agent credentials are revoked; the next agent to enrol with the enrol token gets it",
                    m.state
                );
                Ok(())
            })
        }
        MachinesCmd::Redeploy { mac } => {
            let reply = ctx.api.post(
                &format!("{}/redeploy", machine_path(&mac)),
                &serde_json::json!({}),
            )?;
            ctx.show(reply, |m: Machine| {
                let reboot = if m
                    .pending_actions
                    .iter()
                    .any(|a| a.kind == cosm_wire::ActionKind::Reboot)
                {
                    "; its agent was told to reboot into the installer"
                } else {
                    "; it is installed at its next network boot"
                };
                println!("machine {mac} is {}{reboot}", m.state);
                Ok(())
            })
        }
        MachinesCmd::Power(cmd) => crate::power::run_power(ctx, cmd),
        MachinesCmd::PowerSettings(cmd) => crate::power::run_settings(ctx, cmd),
        MachinesCmd::Rm { mac } => {
            let reply = ctx.api.delete(&machine_path(&mac))?;
            ctx.done(reply, format!("deleted machine {mac}"))
        }
    }
}

fn set_state(ctx: &Ctx, mac: MacAddr, state: MachineState, reason: Option<String>) -> Result<()> {
    let body = SetState { state, reason };
    let reply = ctx
        .api
        .post(&format!("{}/state", machine_path(&mac)), &body)?;
    ctx.show(reply, |m: Machine| {
        print(&format!("machine {} is now {}", m.mac, m.state))
    })
}

/// `role web, state ready` — the gist of a machine after a change.
fn brief(m: &Machine) -> String {
    match &m.role {
        Some(r) => format!("role {r}, state {}", m.state),
        None => format!("no role, state {}", m.state),
    }
}

fn print_list(ms: &[Machine]) -> Result<()> {
    if ms.is_empty() {
        eprintln!("no machines found");
        return Ok(());
    }
    let now = Timestamp::now();
    let mut t = table(&[
        "MAC",
        "HOSTNAME",
        "ROLE",
        "STATE",
        "IP",
        "CPUS",
        "MEMORY (GiB)",
        "DISKS",
        "SINCE",
    ]);
    for m in ms {
        let inv = m.inventory.as_ref();
        t.add_row(vec![
            m.mac.to_string(),
            dash(m.hostname.as_deref()),
            dash(m.role.as_ref()),
            m.state.to_string(),
            dash(m.reserved_ip),
            dash(inv.map(Inventory::cpu_count).filter(|n| *n > 0)),
            dash(inv.map(|i| i.memory_bytes).filter(|b| *b > 0).map(gib)),
            dash(inv.map(|i| i.disks.len())),
            age(m.state_since, now),
        ]);
    }
    print_table(&t)
}

/// Rows of `machines show`.
fn details(m: &Machine, now: Timestamp) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("MAC", m.mac.to_string()),
        ("ID", m.id.to_string()),
        ("HOSTNAME", dash(m.hostname.as_deref())),
        ("ROLE", dash(m.role.as_ref())),
        (
            "STATE",
            format!(
                "{} since {} ({})",
                m.state,
                time(m.state_since),
                age(m.state_since, now)
            ),
        ),
        ("RESERVED IP", dash(m.reserved_ip)),
        ("CREATED", time(m.created_at)),
        ("UPDATED", time(m.updated_at)),
    ];
    match &m.inventory {
        None => rows.push(("INVENTORY", "not reported yet".to_string())),
        Some(inv) => rows.extend(inventory_rows(inv)),
    }
    rows
}

/// A readable summary of a hardware inventory.
fn inventory_rows(inv: &Inventory) -> Vec<(&'static str, String)> {
    let cpu = &inv.cpu;
    let model = if cpu.model.trim().is_empty() {
        "unknown model"
    } else {
        cpu.model.trim()
    };
    let disks = if inv.disks.is_empty() {
        "none".to_string()
    } else {
        inv.disks
            .iter()
            .map(|d| {
                let mut s = format!(
                    "{} {} {}",
                    d.name,
                    human_bytes(d.size_bytes),
                    if d.rotational { "HDD" } else { "SSD" }
                );
                if let Some(model) = d.model.as_deref().filter(|s| !s.trim().is_empty()) {
                    s.push_str(&format!(" {}", model.trim()));
                }
                s
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let nics = if inv.nics.is_empty() {
        "none".to_string()
    } else {
        inv.nics
            .iter()
            .map(|n| {
                let link = match (n.link_up, n.speed_mbps) {
                    (true, Some(speed)) => format!("up {speed} Mb/s"),
                    (true, None) => "up".to_string(),
                    (false, _) => "down".to_string(),
                };
                format!("{} {} {link}", n.name, n.mac)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let dmi = &inv.dmi;
    let mut system: Vec<&str> = [dmi.vendor.as_deref(), dmi.product.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect();
    let serial = dmi
        .serial
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .map(|s| format!("(serial {s})"));
    system.extend(serial.as_deref());
    vec![
        (
            "CPU",
            format!(
                "{model}: {} socket(s), {} core(s), {} thread(s)",
                cpu.sockets, cpu.cores, cpu.threads
            ),
        ),
        ("MEMORY", human_bytes(inv.memory_bytes)),
        ("DISKS", disks),
        ("NICS", nics),
        ("SYSTEM", dash(Some(system.join(" ")))),
        ("FIRMWARE", dash(inv.firmware.as_ref().map(wire_name))),
        ("KERNEL", dash(inv.kernel.as_deref())),
    ]
}

/// Runs `cosmctl events`.
pub(crate) fn events(ctx: &Ctx, args: EventsArgs) -> Result<()> {
    let reply = ctx.api.get(
        &format!("{}/events", machine_path(&args.mac)),
        &[("limit", args.limit.to_string())],
    )?;
    ctx.show(reply, |evs: Vec<Event>| {
        if evs.is_empty() {
            eprintln!("no events for machine {}", args.mac);
            return Ok(());
        }
        let mut t = table(&["TIME", "KIND", "STATE CHANGE", "MESSAGE"]);
        for e in &evs {
            t.add_row(vec![
                time(e.at),
                wire_name(&e.kind),
                state_change(e.from_state, e.to_state),
                e.message.clone(),
            ]);
        }
        print_table(&t)
    })
}

/// `discovered → ready`, `→ ready`, or `-`.
fn state_change(from: Option<MachineState>, to: Option<MachineState>) -> String {
    match (from, to) {
        (Some(f), Some(t)) => format!("{f} → {t}"),
        (None, Some(t)) => format!("→ {t}"),
        (Some(f), None) => format!("{f} →"),
        (None, None) => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<MachinesCmd, clap::Error> {
        let cli = Cli::try_parse_from([&["cosmctl", "machines"], args].concat())?;
        match cli.command {
            Command::Machines(m) => Ok(m),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn update_tells_unchanged_from_cleared() {
        let MachinesCmd::Update(u) =
            parse(&["update", "52:54:00:aa:bb:01", "--hostname", "db-02"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_string(&u.to_update()).unwrap(),
            r#"{"hostname":"db-02"}"#
        );

        let MachinesCmd::Update(u) = parse(&[
            "update",
            "525400aabb01",
            "--clear-hostname",
            "--ip",
            "10.0.0.5",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            serde_json::to_string(&u.to_update()).unwrap(),
            r#"{"hostname":null,"reserved_ip":"10.0.0.5"}"#
        );
        // Nothing to change, or contradictory flags, are usage errors.
        assert!(parse(&["update", "52:54:00:aa:bb:01"]).is_err());
        assert!(parse(&[
            "update",
            "52:54:00:aa:bb:01",
            "--ip",
            "10.0.0.5",
            "--clear-ip"
        ])
        .is_err());
    }

    #[test]
    fn identities_are_parsed_by_clap() {
        assert!(parse(&["show", "not-a-mac"]).is_err());
        assert!(parse(&["add", "52:54:00:aa:bb:01", "--role", "Bad_Role"]).is_err());
        assert!(parse(&["list", "--state", "bogus"]).is_err());
        let MachinesCmd::List { role, state } =
            parse(&["list", "--role", "web", "--state", "ready"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(role.unwrap().as_str(), "web");
        assert_eq!(state.unwrap().0, MachineState::Ready);
    }

    #[test]
    fn set_role_needs_a_role_or_clear() {
        assert!(parse(&["set-role", "52:54:00:aa:bb:01"]).is_err());
        assert!(parse(&["set-role", "52:54:00:aa:bb:01", "web", "--clear"]).is_err());
        let MachinesCmd::SetRole { role, clear, .. } =
            parse(&["set-role", "52:54:00:aa:bb:01", "--clear"]).unwrap()
        else {
            panic!()
        };
        assert!(role.is_none() && clear);
    }

    #[test]
    fn every_state_is_a_value() {
        let names: Vec<String> = StateArg::value_variants()
            .iter()
            .filter_map(|s| s.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        let want: Vec<&str> = MachineState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, want);
    }

    #[test]
    fn state_change_text() {
        use MachineState::*;
        assert_eq!(
            state_change(Some(Discovered), Some(Ready)),
            "discovered → ready"
        );
        assert_eq!(state_change(None, Some(Discovered)), "→ discovered");
        assert_eq!(state_change(None, None), "-");
    }
}
