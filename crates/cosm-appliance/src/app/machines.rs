//! Machine workflows: registration, updates, role and state changes, deletion, and the
//! liveness moves (lost, and back to the state it was lost from). Each runs inside one
//! store transaction and checks everything it can refuse for before it writes.

use super::{lifecycle, rules};
use crate::store::{StoreError, Tx};
use cosm_wire::{
    CreateMachine, EventKind, MacAddr, Machine, MachineId, MachineState, RoleName, Timestamp,
    UpdateMachine,
};
use std::net::Ipv4Addr;

/// States a silent machine can be declared lost from.
pub const WATCHED: [MachineState; 4] = [
    MachineState::Discovered,
    MachineState::Ready,
    MachineState::Deployed,
    MachineState::Active,
];

/// The state a machine acts on: a lost machine is still what it was when it went silent
/// (it boots, and comes back, as that).
/// Whether DHCP alone knows this machine: it recorded it, and since then no operator gave
/// it a role, name or address and no agent enrolled it.
pub fn dhcp_only(m: &Machine) -> bool {
    m.discovered_by_dhcp
        && m.state == MachineState::Discovered
        && m.inventory.is_none()
        && m.role.is_none()
        && m.hostname.is_none()
        && m.reserved_ip.is_none()
}

/// A network-booting MAC DHCP has not seen before: recorded as `discovered`, with the
/// DHCP step that showed it.
pub(super) fn dhcp_discovered(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    step: &str,
) -> Result<Machine, StoreError> {
    let mut m = create(
        tx,
        &CreateMachine {
            mac,
            hostname: None,
            role: None,
            reserved_ip: None,
            inventory: None,
        },
    )?;
    if m.state == MachineState::Discovered && m.role.is_none() {
        m.discovered_by_dhcp = true;
        tx.put_machine(&mut m)?;
    }
    tx.event(mac, EventKind::Dhcp, step.to_string(), None, None)?;
    Ok(m)
}

/// Deletes the machines DHCP alone knows that were recorded before `cutoff`; returns how
/// many.
pub(super) fn expire_dhcp_only(tx: &mut Tx<'_>, cutoff: Timestamp) -> Result<usize, StoreError> {
    let stale: Vec<MacAddr> = tx
        .all_machines()?
        .into_iter()
        .filter(|m| dhcp_only(m) && m.created_at < cutoff)
        .map(|m| m.mac)
        .collect();
    for mac in &stale {
        // Never enrolled, so there are no agent credentials to revoke.
        tx.remove_machine(*mac)?;
    }
    Ok(stale.len())
}

pub fn effective_state(m: &Machine) -> MachineState {
    match (m.state, m.lost_from) {
        (MachineState::Lost, Some(from)) => from,
        (s, _) => s,
    }
}

/// Whether a machine may move to `to`: the lifecycle, and a lost machine returns only to
/// the state it was lost from (or is fenced or retired), so a discovered machine that went
/// silent cannot come back as `deployed`.
fn check_move(m: &Machine, to: MachineState) -> Result<(), StoreError> {
    lifecycle::check(m.state, to).map_err(|err| StoreError::Conflict {
        code: "illegal_transition",
        message: format!("machine {}: {err}", m.mac),
    })?;
    if m.state == MachineState::Lost
        && !matches!(to, MachineState::Fenced | MachineState::Retired)
        && m.lost_from.is_some_and(|from| from != to)
    {
        let from = m.lost_from.map(|s| s.as_str()).unwrap_or("?");
        return Err(StoreError::conflict(format!(
            "machine {} was lost while {from}; it can only return to {from} (or be fenced or retired)",
            m.mac
        )));
    }
    Ok(())
}

/// Moves a machine to `to` (see [`check_move`]) and writes the event; the caller writes
/// the record.
pub(super) fn transition(
    tx: &mut Tx<'_>,
    m: &mut Machine,
    to: MachineState,
    why: &str,
) -> Result<(), StoreError> {
    check_move(m, to)?;
    let from = m.state;
    if from == MachineState::Deployed && to != MachineState::Lost {
        // Out of `deployed` (not just unheard for a while): no first beat is awaited.
        m.awaits_installed_agent = false;
    }
    if to == MachineState::Lost {
        m.lost_from = Some(from);
    } else if from == MachineState::Lost {
        m.lost_from = None;
    }
    m.state = to;
    m.state_since = tx.at;
    if to == MachineState::Ready && from != MachineState::Lost {
        // A new install round: the install token of the last one stops working. (Back
        // from lost is the same round: the boot script it already has keeps working.)
        m.install_round += 1;
    }
    tx.event(
        m.mac,
        EventKind::StateChanged,
        why.to_string(),
        Some(from),
        Some(to),
    )
}

pub(super) fn create(tx: &mut Tx<'_>, spec: &CreateMachine) -> Result<Machine, StoreError> {
    if let Some(existing) = tx.find_machine(spec.mac)? {
        return Err(StoreError::conflict(format!(
            "machine {} already exists (state {})",
            spec.mac, existing.state
        )));
    }
    let hostname = spec
        .hostname
        .as_deref()
        .map(validate_hostname)
        .transpose()?;
    if let Some(r) = &spec.role {
        tx.require_role(r)?;
    }
    check_unique(tx, spec.mac, hostname.as_deref(), spec.reserved_ip)?;
    let rule = match &spec.role {
        Some(_) => None,
        None => {
            let all = tx.all_rules()?;
            let hit = rules::first_match(&all, &spec.mac, spec.inventory.as_ref()).cloned();
            // A rule may name a role deleted since; such a rule is skipped, not obeyed.
            match hit {
                Some(r) if tx.find_role(&r.role)?.is_none() => {
                    tracing::warn!(rule = r.id, role = %r.role, "role rule names a role that no longer exists");
                    None
                }
                hit => hit,
            }
        }
    };
    let id = MachineId(tx.next_machine_id()?);
    let mut m = Machine {
        id,
        mac: spec.mac,
        hostname,
        role: None,
        state: MachineState::Discovered,
        reserved_ip: spec.reserved_ip,
        inventory: spec.inventory.clone(),
        created_at: tx.at,
        updated_at: tx.at,
        state_since: tx.at,
        lost_from: None,
        install_round: 0,
        discovered_by_dhcp: false,
        awaits_installed_agent: false,
        desired_generation: 0,
        pending_actions: Vec::new(),
    };
    tx.event(
        m.mac,
        EventKind::Created,
        "machine recorded".into(),
        None,
        Some(MachineState::Discovered),
    )?;
    if let Some(role) = &spec.role {
        m.role = Some(role.clone());
        let msg = format!("role set to {role}");
        tx.event(m.mac, EventKind::RoleChanged, msg, None, None)?;
        transition(
            tx,
            &mut m,
            MachineState::Ready,
            "role given at registration",
        )?;
    } else if let Some(rule) = rule {
        m.role = Some(rule.role.clone());
        let msg = format!(
            "rule {} (priority {}) gave role {}",
            rule.id, rule.priority, rule.role
        );
        tx.event(m.mac, EventKind::RuleMatched, msg, None, None)?;
        transition(tx, &mut m, MachineState::Ready, "role given by a rule")?;
    }
    tx.put_machine(&mut m)?;
    Ok(m)
}

pub(super) fn update(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    u: &UpdateMachine,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    let hostname = match &u.hostname {
        Some(Some(h)) => Some(Some(validate_hostname(h)?)),
        other => other.clone(),
    };
    if let Some(Some(r)) = &u.role {
        tx.require_role(r)?;
    }
    check_unique(
        tx,
        mac,
        hostname.as_ref().and_then(|h| h.as_deref()),
        u.reserved_ip.flatten(),
    )?;
    // The role change is checked before anything is written, like every other refusal.
    if let Some(role) = &u.role {
        role_change(&m, role.as_ref())?;
    }
    let mut notes = Vec::new();
    if let Some(h) = hostname {
        if m.hostname != h {
            notes.push(format!("hostname {}", h.as_deref().unwrap_or("cleared")));
            m.hostname = h;
        }
    }
    if let Some(ip) = u.reserved_ip {
        if m.reserved_ip != ip {
            let shown = ip.map(|i| i.to_string());
            notes.push(format!(
                "reserved address {}",
                shown.as_deref().unwrap_or("cleared")
            ));
            m.reserved_ip = ip;
        }
    }
    if !notes.is_empty() {
        tx.event(mac, EventKind::Updated, notes.join(", "), None, None)?;
    }
    match &u.role {
        Some(role) => apply_role(tx, m, role.clone()),
        None => {
            tx.put_machine(&mut m)?;
            Ok(m)
        }
    }
}

pub(super) fn set_role(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    role: Option<RoleName>,
) -> Result<Machine, StoreError> {
    let m = tx.machine(mac)?;
    if let Some(r) = &role {
        tx.require_role(r)?;
    }
    apply_role(tx, m, role)
}

/// The one rule for role changes: in which states a role may be set or cleared, and the
/// state the machine moves to (`None`: it stays).
fn role_change(m: &Machine, role: Option<&RoleName>) -> Result<Option<MachineState>, StoreError> {
    use MachineState::*;
    match (m.state, role) {
        (Discovered | Failed, Some(_)) => Ok(Some(Ready)),
        (Ready, None) => Ok(Some(Discovered)),
        // A running machine changes role in place; its agent converges to the new role
        // (the seed design: storage can become host without stopping the service).
        (Ready | Deployed | Active, Some(_)) | (Failed, None) => Ok(None),
        _ if m.role.as_ref() == role => Ok(None),
        (state, _) => Err(StoreError::conflict(format!(
            "machine {} is {state}: its role can be set in states discovered, ready, failed, deployed and active, and cleared in ready and failed",
            m.mac
        ))),
    }
}

fn apply_role(
    tx: &mut Tx<'_>,
    mut m: Machine,
    role: Option<RoleName>,
) -> Result<Machine, StoreError> {
    if m.role == role {
        return Ok(m);
    }
    let next_state = role_change(&m, role.as_ref())?;
    let msg = match (&m.role, &role) {
        (None, Some(r)) => format!("role set to {r}"),
        (Some(old), Some(r)) => format!("role changed from {old} to {r}"),
        (Some(old), None) => format!("role {old} cleared"),
        (None, None) => unreachable!("equal roles returned early"),
    };
    m.role = role;
    tx.event(m.mac, EventKind::RoleChanged, msg, None, None)?;
    if let Some(to) = next_state {
        transition(tx, &mut m, to, "role changed")?;
    }
    tx.put_machine(&mut m)?;
    Ok(m)
}

pub(super) fn set_state(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    to: MachineState,
    reason: Option<&str>,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    check_move(&m, to)?;
    // Also for active and deployed: a machine that was fenced (or lost) without a role
    // must not come back as a working one (the lifecycle proptest found lost → fenced →
    // active for a machine with no role).
    if matches!(
        to,
        MachineState::Ready | MachineState::Active | MachineState::Deployed
    ) && m.role.is_none()
    {
        return Err(StoreError::conflict(format!(
            "machine {mac} has no role; set a role to make it {to}"
        )));
    }
    if to == MachineState::Discovered {
        if let Some(old) = m.role.take() {
            let msg = format!("role {old} cleared");
            tx.event(mac, EventKind::RoleChanged, msg, None, None)?;
        }
    }
    transition(tx, &mut m, to, reason.unwrap_or("requested"))?;
    tx.put_machine(&mut m)?;
    Ok(m)
}

pub(super) fn delete(tx: &mut Tx<'_>, mac: MacAddr) -> Result<(), StoreError> {
    let m = tx.machine(mac)?;
    if !lifecycle::DELETABLE.contains(&m.state) {
        return Err(StoreError::conflict(format!(
            "machine {mac} is {}: retire it first (machines can be deleted when discovered, ready, failed or retired)",
            m.state
        )));
    }
    tx.remove_machine(mac)?;
    // Its agent credentials go with it, so a MAC registered anew starts without them.
    tx.remove_agent_credentials(mac)?;
    Ok(())
}

pub(super) fn mark_lost(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    reason: &str,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    if !WATCHED.contains(&m.state) {
        return Err(StoreError::conflict(format!(
            "machine {mac} is {}: only a discovered, ready, deployed or active machine is declared lost",
            m.state
        )));
    }
    if m.state == MachineState::Deployed && m.awaits_installed_agent {
        // Its installer's agent stopped on purpose: the machine is rebooting into its
        // installed system, which takes a real server minutes. Its first heartbeat from
        // there makes it active; until then it is neither lost nor a host HA watches.
        return Err(StoreError::conflict(format!(
            "machine {mac} is deployed and booting its installed system: its installer's agent stopped on purpose"
        )));
    }
    transition(tx, &mut m, MachineState::Lost, reason)?;
    tx.put_machine(&mut m)?;
    Ok(m)
}

/// A heartbeat from a lost machine: back to the state it was lost from. A machine that is
/// not lost is returned unchanged.
pub(super) fn resume(tx: &mut Tx<'_>, mac: MacAddr) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    if m.state != MachineState::Lost {
        return Ok(m);
    }
    let to = m.lost_from.unwrap_or(MachineState::Discovered);
    transition(tx, &mut m, to, "heartbeats resumed")?;
    tx.put_machine(&mut m)?;
    Ok(m)
}

/// A machine an install report made `deployed` whose agent beats runs its installed
/// system (a deployed machine boots from its disk, never the ramdisk): it becomes
/// `active`. Any other machine: nothing.
pub(super) fn activate(tx: &mut Tx<'_>, mac: MacAddr) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    if m.state != MachineState::Deployed || !m.awaits_installed_agent {
        return Ok(m);
    }
    transition(
        tx,
        &mut m,
        MachineState::Active,
        "its installed system's agent is running (first heartbeat since the install)",
    )?;
    tx.put_machine(&mut m)?;
    Ok(m)
}

/// A machine an install made `deployed` whose installed agent has not beaten `limit_secs`
/// after the report (its `state_since`) is `failed`: its installed system did not come up
/// (a disk the firmware does not boot, a kernel that panics, a network that never gets an
/// address). Anything else, or a deadline not reached yet by this command's time: nothing.
pub(super) fn first_boot_overdue(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    limit_secs: u64,
    last_step: &str,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    let waited_ms = tx.at.as_millis().saturating_sub(m.state_since.as_millis());
    if m.state != MachineState::Deployed
        || !m.awaits_installed_agent
        || waited_ms < limit_secs.saturating_mul(1000)
    {
        return Ok(m);
    }
    let why = format!(
        "its installed system's agent did not beat within {limit_secs} s of the install \
         report (agents.first_boot_secs): the installed system did not come up; last on \
         its timeline: {last_step}"
    );
    transition(tx, &mut m, MachineState::Failed, &why)?;
    tx.put_machine(&mut m)?;
    Ok(m)
}

pub(super) fn record_event(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    kind: EventKind,
    message: &str,
) -> Result<(), StoreError> {
    if tx.find_machine(mac)?.is_some() {
        tx.event(mac, kind, message.to_string(), None, None)?;
    }
    Ok(())
}

fn validate_hostname(h: &str) -> Result<String, StoreError> {
    let lower = h.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 253
        && lower.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(lower)
    } else {
        Err(StoreError::Invalid {
            field: "hostname",
            message: format!(
                "invalid hostname {h:?}: use DNS labels of letters, digits and '-' (1-63 characters each), separated by dots"
            ),
        })
    }
}

/// Refuses a hostname or reserved address that another machine already holds (looked up
/// in the store's indexes, so registering a machine does not read every machine).
fn check_unique(
    tx: &Tx<'_>,
    mac: MacAddr,
    hostname: Option<&str>,
    ip: Option<Ipv4Addr>,
) -> Result<(), StoreError> {
    if let Some(h) = hostname {
        if let Some(other) = tx.machine_with_hostname(h)?.filter(|o| *o != mac) {
            return Err(StoreError::conflict(format!(
                "hostname {h} is already used by machine {other}"
            )));
        }
    }
    if let Some(ip) = ip {
        if let Some(other) = tx.machine_with_ip(ip)?.filter(|o| *o != mac) {
            return Err(StoreError::conflict(format!(
                "address {ip} is already reserved for machine {other}"
            )));
        }
    }
    Ok(())
}
