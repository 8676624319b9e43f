//! Agent workflows: enrolment (the machine is created or its inventory replaced, and it
//! gets one credential), actions queued for an agent (each raises the desired generation),
//! and the agent's reports on them.

use super::machines::{self, effective_state};
use crate::config::EnrollLimits;
use crate::store::{StoreError, TokenRecord, Tx};
use cosm_wire::{
    ActionKind, ActionResult, ActionStatus, AgentAction, CreateMachine, EventKind, Inventory,
    MacAddr, Machine, MachineState, Scope, TokenInfo,
};

/// The largest inventory an agent may send, as JSON: real servers' inventories are a few
/// KiB; without a bound each enrolment could grow the store by megabytes.
const MAX_INVENTORY_BYTES: usize = 64 * 1024;

/// Who asks to enrol a machine, as the enrolment rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolBy {
    /// An operator's admin token.
    Operator,
    /// The machine itself: its agent's credential, or its install token (the agent its
    /// installer puts on the disk).
    Itself,
    /// The enrol token every agent ramdisk boots with, which anyone on the provisioning
    /// network can read.
    EnrolToken,
}

/// Whether an enrolment may replace the agent credential a machine already has.
///
/// The machine itself and operators may. The enrol token is public, so with it alone a
/// host could take over any machine's agent: it may replace an agent only where the
/// appliance sends the machine to the ramdisk (which keeps its credential in memory and
/// enrols at every boot) and only once that agent has been silent for the lost window. A
/// machine on its local disk keeps its credential on the disk and never needs the enrol
/// token again.
pub(super) fn may_replace_agent(
    m: &Machine,
    by: EnrolBy,
    agent_silent: bool,
) -> Result<(), StoreError> {
    let refuse = |why: String| {
        Err(StoreError::Conflict {
            code: "agent_enrolled",
            message: format!(
                "{} already has an agent and {why}: enrol with that agent's credential, or an operator runs `cosmctl machines reregister {}` to let a new agent enrol",
                m.mac, m.mac
            ),
        })
    };
    match by {
        EnrolBy::Operator | EnrolBy::Itself => Ok(()),
        EnrolBy::EnrolToken => {
            let state = effective_state(m);
            if matches!(
                state,
                MachineState::Deployed
                    | MachineState::Active
                    | MachineState::Fenced
                    | MachineState::Retired
            ) {
                refuse(format!(
                    "is {state}: it boots from its disk, where its agent keeps its credential, so the enrol token cannot replace it"
                ))
            } else if !agent_silent {
                refuse("that agent is heartbeating (a new one is let in with the enrol token only after the old one missed its heartbeats)".to_string())
            } else {
                Ok(())
            }
        }
    }
}

pub(super) fn enroll(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    inventory: &Inventory,
    credential_hash: &str,
    max_discovered: usize,
    (by, agent_silent): (EnrolBy, bool),
) -> Result<Machine, StoreError> {
    let size = serde_json::to_vec(inventory)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_INVENTORY_BYTES {
        return Err(StoreError::Invalid {
            field: "inventory",
            message: format!(
                "the inventory is {size} bytes of JSON; at most {MAX_INVENTORY_BYTES} are accepted"
            ),
        });
    }
    if let Some(m) = tx.find_machine(mac)? {
        if tx.has_agent_credential(mac)? {
            may_replace_agent(&m, by, agent_silent)?;
        }
    } else {
        let discovered = tx
            .all_machines()?
            .iter()
            .filter(|m| m.state == MachineState::Discovered)
            .count();
        if discovered >= max_discovered {
            return Err(StoreError::Conflict {
                code: "discovered_cap",
                message: format!(
                    "{discovered} machines are already discovered (agents.max_discovered = {max_discovered}): give them roles or delete them before more enrol"
                ),
            });
        }
    }
    let mut m = match tx.find_machine(mac)? {
        Some(mut m) => {
            m.inventory = Some(inventory.clone());
            tx.put_machine(&mut m)?;
            m
        }
        None => machines::create(
            tx,
            &CreateMachine {
                mac,
                hostname: None,
                role: None,
                reserved_ip: None,
                inventory: Some(inventory.clone()),
            },
        )?,
    };
    // One credential per machine: enrolling again revokes the previous one.
    tx.remove_agent_credentials(mac)?;
    let info = TokenInfo {
        id: tx.next_token_id()?,
        name: format!("agent {mac}"),
        scope: Scope::Agent,
        created_at: tx.at,
        mac: Some(mac),
    };
    tx.put_token(&TokenRecord {
        info,
        hash: credential_hash.to_string(),
    })?;
    let gib = inventory.memory_bytes as f64 / (1u64 << 30) as f64;
    tx.event(
        mac,
        EventKind::AgentRegistered,
        format!(
            "agent registered: {} CPUs, {gib:.1} GiB memory, {} disks, {} NICs, kernel {}",
            inventory.cpu_count(),
            inventory.disks.len(),
            inventory.nics.len(),
            inventory.kernel.as_deref().unwrap_or("unknown")
        ),
        None,
        None,
    )?;
    m.updated_at = tx.at;
    Ok(m)
}

/// An operator lets a new agent enrol: the machine's agent credentials are revoked.
pub(super) fn reregister(tx: &mut Tx<'_>, mac: MacAddr, by: &str) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    let revoked = tx.remove_agent_credentials(mac)?;
    tx.event(
        mac,
        EventKind::AgentRegistered,
        format!(
            "re-registration allowed by {by}: {revoked} agent credential(s) revoked; the next agent to enrol with the enrol token gets this machine"
        ),
        None,
        None,
    )?;
    m.updated_at = tx.at;
    Ok(m)
}

/// Adds an action to a machine's queue and raises its desired generation; the caller
/// writes the record.
pub(super) fn push_action(
    tx: &mut Tx<'_>,
    m: &mut Machine,
    kind: &ActionKind,
) -> Result<(), StoreError> {
    let id = tx.next_action_id()?;
    m.pending_actions.push(AgentAction {
        id,
        kind: kind.clone(),
        queued_at: tx.at,
    });
    m.desired_generation += 1;
    tx.event(
        m.mac,
        EventKind::AgentAction,
        format!(
            "action {id} ({kind}) queued; desired generation {}",
            m.desired_generation
        ),
        None,
        None,
    )
}

pub(super) fn queue_action(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    kind: &ActionKind,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    push_action(tx, &mut m, kind)?;
    tx.put_machine(&mut m)?;
    Ok(m)
}

pub(super) fn report_observed(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    results: &[ActionResult],
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    for r in results {
        let Some(pos) = m.pending_actions.iter().position(|a| a.id == r.id) else {
            continue;
        };
        let action = m.pending_actions.remove(pos);
        let status = match r.status {
            ActionStatus::Done => "done",
            ActionStatus::Failed => "failed",
            ActionStatus::Unsupported => "unsupported by the agent",
        };
        let detail = if r.message.is_empty() {
            String::new()
        } else {
            format!(": {}", r.message)
        };
        tx.event(
            mac,
            EventKind::AgentAction,
            format!("action {} ({}) {status}{detail}", action.id, action.kind),
            None,
            None,
        )?;
    }
    tx.put_machine(&mut m)?;
    Ok(m)
}

/// The token bucket of enrolments that create machines (in memory: a restart refills it).
#[derive(Debug)]
pub struct EnrollGate {
    pub limits: EnrollLimits,
    started: std::time::Instant,
    bucket: std::sync::Mutex<cosm_netboot::rate::RateLimiter<()>>,
}

impl EnrollGate {
    pub fn new(limits: EnrollLimits) -> EnrollGate {
        EnrollGate {
            limits,
            started: std::time::Instant::now(),
            bucket: std::sync::Mutex::new(cosm_netboot::rate::RateLimiter::with_burst(
                limits.per_sec,
                limits.burst,
            )),
        }
    }

    /// Takes one enrolment; `Err(seconds)` says when the next one is possible.
    pub fn take(&self) -> Result<(), u64> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket
            .take((), now_ms)
            .map_err(|ms| ms.div_ceil(1000).max(1))
    }
}
