//! Agent workflows: enrolment (the machine is created or its inventory replaced, and it
//! gets one credential), actions queued for an agent (each raises the desired generation),
//! and the agent's reports on them.

use super::machines;
use crate::store::{StoreError, TokenRecord, Tx};
use cosm_wire::{
    ActionKind, ActionResult, ActionStatus, AgentAction, CreateMachine, EventKind, Inventory,
    MacAddr, Machine, Scope, TokenInfo,
};

pub(super) fn enroll(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    inventory: &Inventory,
    credential_hash: &str,
) -> Result<Machine, StoreError> {
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
