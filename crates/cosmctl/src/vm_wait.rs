//! `--wait` for VM operations. The appliance answers an operation at once (202) and a
//! host's agent carries it out within seconds; waiting is polling the VM every 500 ms until
//! it reaches the goal, fails, or the timeout passes. [`judge`] decides from one look at
//! the VM (pure, unit-tested); [`wait`] is the loop, with a progress line on stderr.

use crate::api::ApiError;
use crate::output::Ctx;
use anyhow::{bail, Result};
use cosm_wire::{MacAddr, Vm, VmEvent, VmState};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the VM is looked at while waiting.
const POLL: Duration = Duration::from_millis(500);

/// What a wait waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Goal {
    /// The VM in this state (running after create/start, stopped after stop).
    State(VmState),
    /// The VM's record gone (404) after delete.
    Gone,
    /// A queued operation (reboot, snapshot) reported by the host's agent.
    Op { id: u64, what: String },
    /// A live migration finished: running again, on another host than `from`.
    Migrated { from: Option<MacAddr> },
}

impl Goal {
    fn describe(&self) -> String {
        match self {
            Goal::State(s) => format!("be {s}"),
            Goal::Gone => "be deleted".to_string(),
            Goal::Op { what, id } => format!("finish the {what} (operation {id})"),
            Goal::Migrated { .. } => "finish its live migration".to_string(),
        }
    }
}

/// One look at the VM, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Wait,
    Done,
    /// The wait ends in failure, with why.
    Failed(String),
}

/// Whether `vm` (`None`: it is gone) has reached `goal`.
pub(crate) fn judge(goal: &Goal, vm: Option<&Vm>) -> Verdict {
    let Some(vm) = vm else {
        return match goal {
            Goal::Gone => Verdict::Done,
            _ => Verdict::Failed("the VM was deleted while waiting".to_string()),
        };
    };
    let why = || {
        vm.message
            .clone()
            .unwrap_or_else(|| "its agent gave no reason".to_string())
    };
    if vm.state == VmState::Failed && *goal != Goal::Gone {
        return Verdict::Failed(format!("VM {} failed: {}", vm.name, why()));
    }
    match goal {
        Goal::State(s) if vm.state == *s => Verdict::Done,
        Goal::State(_) | Goal::Gone => Verdict::Wait,
        Goal::Op { id, .. } => {
            if vm.pending_ops.iter().any(|o| o.id == *id) {
                Verdict::Wait
            } else {
                Verdict::Done
            }
        }
        Goal::Migrated { from } => match vm.state {
            VmState::Migrating => Verdict::Wait,
            _ if vm.host != *from => Verdict::Done,
            _ => Verdict::Failed(format!(
                "VM {} was not moved: {}",
                vm.name,
                vm.message
                    .clone()
                    .unwrap_or_else(|| "the migration did not happen".to_string())
            )),
        },
    }
}

/// `scheduled on 52:54:00:00:c0:01`: where a VM is, for the progress line.
fn whereabouts(vm: &Vm) -> String {
    match vm.host {
        Some(h) => format!("{} on {h}", vm.state),
        None => vm.state.to_string(),
    }
}

/// Polls VM `name` until `goal`, at most `timeout_secs`. Answers the VM as last seen
/// (`None` once it is gone). Fails when the VM fails, when an operation is reported failed
/// and on timeout, each with a message that says what to do.
pub(crate) fn wait(ctx: &Ctx, name: &str, goal: &Goal, timeout_secs: u64) -> Result<Option<Vm>> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_secs);
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let path = format!("/vms/{name}");
    loop {
        let vm = match ctx.api.get(&path, &[]) {
            Ok(reply) => Some(reply.parse::<Vm>()?),
            Err(e)
                if e.downcast_ref::<ApiError>()
                    .is_some_and(|a| a.status == 404) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let verdict = judge(goal, vm.as_ref());
        let state = vm.as_ref().map_or("gone".to_string(), whereabouts);
        let line = format!("waiting for VM {name} to {}: {state}", goal.describe());
        if tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r{line} ({:.0} s)\x1b[K",
                started.elapsed().as_secs_f64()
            );
            let _ = err.flush();
        } else if line != last_line {
            eprintln!("{line}");
        }
        last_line = line;
        let end_line = || {
            if tty {
                eprintln!();
            }
        };
        match verdict {
            Verdict::Done => {
                end_line();
                if let (Goal::Op { id, what }, Some(vm)) = (goal, &vm) {
                    if let Some(failure) = op_failure(ctx, name, *id)? {
                        bail!("the {what} of VM {} failed: {failure}", vm.name);
                    }
                }
                return Ok(vm);
            }
            Verdict::Failed(why) => {
                end_line();
                bail!("{why}");
            }
            Verdict::Wait => {}
        }
        if Instant::now() >= deadline {
            end_line();
            bail!(
                "gave up after {timeout_secs} s waiting for VM {name} to {}: it is {state}. \
                 The appliance keeps at it; follow it with `cosmctl vms show {name}`, or wait \
                 longer with --wait=SECS",
                goal.describe()
            );
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// The failure an operation's timeline entry reports (`reboot failed: … (operation 7)`).
fn op_failure(ctx: &Ctx, name: &str, id: u64) -> Result<Option<String>> {
    let reply = ctx
        .api
        .get(&format!("/vms/{name}/events"), &[("limit", "200".into())])?;
    let events: Vec<VmEvent> = reply.parse()?;
    Ok(op_outcome(&events, id))
}

/// The message of the entry that reports operation `id` failed, if one does.
fn op_outcome(events: &[VmEvent], id: u64) -> Option<String> {
    let tag = format!("(operation {id})");
    events
        .iter()
        .rev()
        .find(|e| e.message.contains(&tag))
        .filter(|e| e.message.contains(" failed"))
        .map(|e| e.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_wire::{PowerWanted, Timestamp, VmKind, VmOp, VmOpKind};

    fn vm(state: VmState, host: Option<MacAddr>) -> Vm {
        let t = Timestamp::from_millis(1_000);
        Vm {
            id: 1,
            name: "vm1".parse().unwrap(),
            kind: VmKind::Kvm,
            vcpus: 1,
            memory_mib: 512,
            disks: vec![],
            nics: vec![],
            boot: None,
            ha: false,
            anti_affinity: None,
            power: PowerWanted::Running,
            stop_timeout_secs: 60,
            state,
            host,
            pending_ops: vec![],
            snapshots: vec![],
            message: None,
            created_at: t,
            updated_at: t,
            state_since: t,
        }
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0xc0, n])
    }

    #[test]
    fn states_and_gone() {
        let running = Goal::State(VmState::Running);
        assert_eq!(
            judge(&running, Some(&vm(VmState::Scheduled, Some(mac(1))))),
            Verdict::Wait
        );
        assert_eq!(
            judge(&running, Some(&vm(VmState::Running, Some(mac(1))))),
            Verdict::Done
        );
        let mut failed = vm(VmState::Failed, Some(mac(1)));
        failed.message = Some("image sha256 mismatch".into());
        assert_eq!(
            judge(&running, Some(&failed)),
            Verdict::Failed("VM vm1 failed: image sha256 mismatch".into())
        );
        assert!(matches!(judge(&running, None), Verdict::Failed(_)));
        assert_eq!(
            judge(&Goal::Gone, Some(&vm(VmState::Deleting, None))),
            Verdict::Wait
        );
        assert_eq!(judge(&Goal::Gone, Some(&failed)), Verdict::Wait);
        assert_eq!(judge(&Goal::Gone, None), Verdict::Done);
    }

    #[test]
    fn operations_and_migrations() {
        let goal = Goal::Op {
            id: 7,
            what: "reboot".into(),
        };
        let mut v = vm(VmState::Running, Some(mac(1)));
        v.pending_ops.push(VmOp {
            id: 7,
            kind: VmOpKind::Reboot,
            queued_at: Timestamp::from_millis(1),
        });
        assert_eq!(judge(&goal, Some(&v)), Verdict::Wait);
        v.pending_ops.clear();
        assert_eq!(judge(&goal, Some(&v)), Verdict::Done);

        let goal = Goal::Migrated { from: Some(mac(1)) };
        assert_eq!(
            judge(&goal, Some(&vm(VmState::Migrating, Some(mac(1))))),
            Verdict::Wait
        );
        assert_eq!(
            judge(&goal, Some(&vm(VmState::Running, Some(mac(2))))),
            Verdict::Done
        );
        let mut stayed = vm(VmState::Running, Some(mac(1)));
        stayed.message = Some("live migration to x failed: unsafe".into());
        assert_eq!(
            judge(&goal, Some(&stayed)),
            Verdict::Failed("VM vm1 was not moved: live migration to x failed: unsafe".into())
        );
    }

    #[test]
    fn an_operations_failure_is_found_in_the_timeline() {
        let ev = |seq: u64, message: &str| VmEvent {
            seq,
            at: Timestamp::from_millis(seq),
            vm: "vm1".parse().unwrap(),
            message: message.into(),
            from_state: None,
            to_state: None,
            host: None,
        };
        let events = [
            ev(1, "reboot done (operation 3)"),
            ev(2, "reboot failed: domain is not running (operation 4)"),
        ];
        assert_eq!(op_outcome(&events, 3), None);
        assert_eq!(
            op_outcome(&events, 4).as_deref(),
            Some("reboot failed: domain is not running (operation 4)")
        );
        assert_eq!(op_outcome(&events, 5), None);
        // Operation 1 is not operation 14.
        assert_eq!(
            op_outcome(&[ev(1, "reboot failed: x (operation 14)")], 1),
            None
        );
    }
}
