//! `cosmctl alarms` and `cosmctl evacuations`: what host HA has raised and done — alarms
//! (a host lost, fenced, a fence that failed, VMs without room) and each fenced host's
//! evacuation, VM by VM. Read-only: alarms clear themselves when their cause goes.

use crate::output::{age, dash, print_table, table, wire_name, Ctx};
use anyhow::Result;
use clap::Args;
use cosm_wire::{Alarm, EvacuatedVm, Evacuation, Timestamp};

pub(crate) const ALARMS_ABOUT: &str = "\
List the appliance's alarms, newest first: only the active ones unless --all.

Kinds:
  host_lost              a VM host stopped heartbeating
  host_fenced            a lost host was powered off so its HA VMs could move
  fence_failed           powering a lost host off failed: its VMs are NOT restarted elsewhere
                         (see `cosmctl evacuations`; check its BMC with
                         `cosmctl machines power status MAC`)
  evacuation_incomplete  some HA VMs of a fenced host are not running elsewhere yet
  no_capacity            a VM fits on no host
  appliance_isolated     most hosts went silent at once: the appliance assumes it is the one
                         cut off and fences nobody
  vm_down                a VM that is not HA went down with its host and stays down

An alarm clears itself when its cause goes; CLEARED says when.";

/// Arguments of `cosmctl alarms`.
#[derive(Debug, Args)]
pub(crate) struct AlarmsArgs {
    /// Include cleared alarms.
    #[arg(long)]
    pub(crate) all: bool,
}

pub(crate) const EVACUATIONS_ABOUT: &str = "\
List the fenced hosts' evacuations, newest first. PHASE is one of
  fencing       the host was declared lost; it is being powered off
  fence_failed  power-off failed or was not confirmed: nothing is restarted; retried
  fenced        off and confirmed: its HA VMs are being placed and started elsewhere
  done          every HA VM runs elsewhere (or none was left)
FENCED AFTER is the seconds from the start to the confirmed power-off. VMS shows each VM
of the host as NAME→HOST:STATUS, STATUS one of pending, placed, running, no_capacity,
not_ha (a VM that is not HA stays down).";

/// Runs `cosmctl alarms`.
pub(crate) fn alarms(ctx: &Ctx, args: AlarmsArgs) -> Result<()> {
    let query = if args.all {
        vec![("all", "true".to_string())]
    } else {
        Vec::new()
    };
    let reply = ctx.api.get("/alarms", &query)?;
    ctx.show(reply, |alarms: Vec<Alarm>| {
        if alarms.is_empty() {
            eprintln!(
                "{}",
                if args.all {
                    "no alarms"
                } else {
                    "no active alarms"
                }
            );
            return Ok(());
        }
        print_table(&alarms_table(&alarms, Timestamp::now()))
    })
}

pub(crate) fn alarms_table(alarms: &[Alarm], now: Timestamp) -> comfy_table::Table {
    let mut t = table(&[
        "ID", "SEVERITY", "KIND", "SUBJECT", "RAISED", "CLEARED", "MESSAGE",
    ]);
    for a in alarms {
        t.add_row(vec![
            a.id.to_string(),
            a.severity.as_str().to_string(),
            a.kind.as_str().to_string(),
            a.subject.clone(),
            age(a.raised_at, now),
            dash(a.cleared_at.map(|c| age(c, now))),
            a.message.clone(),
        ]);
    }
    t
}

/// Runs `cosmctl evacuations`.
pub(crate) fn evacuations(ctx: &Ctx) -> Result<()> {
    let reply = ctx.api.get("/evacuations", &[])?;
    ctx.show(reply, |evs: Vec<Evacuation>| {
        if evs.is_empty() {
            eprintln!("no evacuations: no host has been fenced");
            return Ok(());
        }
        print_table(&evacuations_table(&evs, Timestamp::now()))
    })
}

pub(crate) fn evacuations_table(evs: &[Evacuation], now: Timestamp) -> comfy_table::Table {
    let mut t = table(&["HOST", "PHASE", "STARTED", "FENCED AFTER (s)", "VMS"]);
    for e in evs {
        let phase = match &e.error {
            Some(err) if !err.trim().is_empty() => format!("{}: {}", wire_name(&e.phase), err),
            _ => wire_name(&e.phase),
        };
        t.add_row(vec![
            e.host.to_string(),
            phase,
            age(e.started_at, now),
            dash(fenced_after(e)),
            dash(Some(
                e.vms.iter().map(vm_outcome).collect::<Vec<_>>().join("\n"),
            )),
        ]);
    }
    t
}

/// Seconds from the start of an evacuation to its confirmed power-off, e.g. `12.4`.
pub(crate) fn fenced_after(e: &Evacuation) -> Option<String> {
    let fenced = e.fenced_at?;
    let ms = fenced.as_millis().saturating_sub(e.started_at.as_millis());
    Some(format!("{:.1}", ms as f64 / 1000.0))
}

/// `db-1→52:54:00:00:c0:02:running`, or `web-1:pending` before it has a host.
pub(crate) fn vm_outcome(vm: &EvacuatedVm) -> String {
    match &vm.to {
        Some(to) => format!("{}→{to}:{}", vm.name, wire_name(&vm.status)),
        None => format!("{}:{}", vm.name, wire_name(&vm.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use cosm_wire::{AlarmKind, EvacuatedVmStatus, EvacuationPhase, Severity};

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000_000 + secs * 1000)
    }

    #[test]
    fn alarms_flags() {
        let cli = Cli::try_parse_from(["cosmctl", "alarms", "--all", "--json"]).unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Alarms(AlarmsArgs { all: true })
        ));
        let cli = Cli::try_parse_from(["cosmctl", "alarms"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Alarms(AlarmsArgs { all: false })
        ));
        assert!(Cli::try_parse_from(["cosmctl", "evacuations", "extra"]).is_err());
    }

    #[test]
    fn alarm_rows_use_wire_names_and_ages() {
        let alarms = [
            Alarm {
                id: 7,
                kind: AlarmKind::FenceFailed,
                severity: Severity::Critical,
                subject: "52:54:00:00:c0:01".into(),
                message: "BMC unreachable".into(),
                raised_at: at(0),
                cleared_at: None,
            },
            Alarm {
                id: 3,
                kind: AlarmKind::HostLost,
                severity: Severity::Warning,
                subject: "52:54:00:00:c0:02".into(),
                message: "no heartbeat for 30 s".into(),
                raised_at: at(0),
                cleared_at: Some(at(3600 + 120)),
            },
        ];
        let text = alarms_table(&alarms, at(2 * 3600)).to_string();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            rows[0],
            ["ID", "SEVERITY", "KIND", "SUBJECT", "RAISED", "CLEARED", "MESSAGE"]
        );
        assert_eq!(
            rows[1],
            [
                "7",
                "critical",
                "fence_failed",
                "52:54:00:00:c0:01",
                "2h00m ago",
                "-",
                "BMC unreachable"
            ]
        );
        assert_eq!(rows[2][2], "host_lost");
        assert_eq!(rows[2][5], "58m ago");
    }

    fn evacuation() -> Evacuation {
        Evacuation {
            host: "52:54:00:00:c0:01".parse().unwrap(),
            phase: EvacuationPhase::Fenced,
            checks: "no heartbeat, no peer answer, no ping".into(),
            started_at: at(10),
            fenced_at: Some(Timestamp::from_millis(1_000_000_000 + 22_450)),
            finished_at: None,
            error: None,
            vms: vec![
                EvacuatedVm {
                    name: "db-1".parse().unwrap(),
                    status: EvacuatedVmStatus::Running,
                    to: Some("52:54:00:00:c0:02".parse().unwrap()),
                },
                EvacuatedVm {
                    name: "scratch".parse().unwrap(),
                    status: EvacuatedVmStatus::NotHa,
                    to: None,
                },
            ],
        }
    }

    #[test]
    fn evacuation_rows() {
        let e = evacuation();
        assert_eq!(fenced_after(&e).as_deref(), Some("12.4"));
        assert_eq!(vm_outcome(&e.vms[0]), "db-1→52:54:00:00:c0:02:running");
        assert_eq!(vm_outcome(&e.vms[1]), "scratch:not_ha");
        let text = evacuations_table(&[e], at(70)).to_string();
        for want in [
            "52:54:00:00:c0:01",
            "fenced",
            "1m ago",
            "12.4",
            "db-1→52:54:00:00:c0:02:running",
            "scratch:not_ha",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }

        let mut failing = evacuation();
        failing.phase = EvacuationPhase::FenceFailed;
        failing.fenced_at = None;
        failing.error = Some("BMC timed out".into());
        failing.vms.clear();
        assert_eq!(fenced_after(&failing), None);
        let text = evacuations_table(&[failing], at(70)).to_string();
        assert!(text.contains("fence_failed: BMC timed out"), "{text}");
        // No fence time and no VMs: both cells are dashes.
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], ["-", "-"], "{text}");
    }
}
