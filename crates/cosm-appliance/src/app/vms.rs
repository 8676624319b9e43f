//! Virtual machines (issue 12): their records, where they are placed, what their host's
//! agent is told, and what its reports change.
//!
//! A VM is created `scheduled` on a host chosen by [`placement`] inside the same command
//! that writes it (so two creates can never both take a host's last free memory), or
//! refused with every host's reason. From then on the host's agent is told the VM's desired
//! state (`DesiredVm`, part of its desired state; every change the agent must act on raises
//! the host's VM generation) and reports the domains it really has; [`observe`] turns a
//! report into state moves (`running`, `stopped`, `failed`), each on the VM's timeline.
//! One-off operations (reboot, snapshots, live migration) are queued on the VM with ids
//! and leave the queue when the agent reports their outcome.
//!
//! A live migration is two steps, each a command: `StartMigration` chooses the destination
//! and queues the operation on the source (state `migrating`); the source's report of its
//! outcome moves the VM's host (or returns it to `running` with the reason). The
//! destination's agent is told about the VM only once it is its host, so it never starts
//! a second copy; until then the arriving domain is one it does not manage.

use super::placement::{self, HostLoad, Overcommit, Request};
use crate::store::{StoreError, Tx};
use cosm_wire::{
    bridge_name, BridgeName, DesiredVm, DomainPower, MacAddr, NicRequest, ObservedDomain,
    PortOwner, PowerWanted, SnapshotName, Vm, VmBoot, VmDisk, VmName, VmNic, VmNote, VmOp,
    VmOpKind, VmOpResult, VmSnapshot, VmState,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A create request with its images pinned (by the caller, from the repository).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewVm {
    pub name: VmName,
    pub kind: cosm_wire::VmKind,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<VmDisk>,
    pub nics: Vec<NicRequest>,
    pub boot: Option<VmBoot>,
    pub ha: bool,
    pub anti_affinity: Option<String>,
    pub host: Option<MacAddr>,
    pub start: bool,
}

/// A host VMs may go to, as its agent last reported it (the caller gathers these; what
/// is already placed on it is read inside the command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub host: MacAddr,
    pub cpus: u32,
    pub memory_mib: u64,
    pub storage_bytes: u64,
    pub cpu_percent: f32,
    pub migration_uri: Option<String>,
    /// It reports a VXLAN endpoint, so it can carry tenant networks.
    #[serde(default)]
    pub vtep: bool,
}

/// Whether a candidate can take this VM: one with a tenant-network NIC needs a host with a
/// VXLAN endpoint.
fn carries(c: &Candidate, on_networks: bool) -> bool {
    !on_networks || c.vtep
}

const GIB: u64 = 1 << 30;

/// What a VM takes from its host's storage, in GiB rounded up (blank disks; an overlay
/// starts empty).
fn storage_gib(disks: &[VmDisk]) -> u64 {
    let bytes: u64 = disks
        .iter()
        .map(|d| match d {
            VmDisk::Blank { size_bytes } => *size_bytes,
            VmDisk::Image { .. } => 0,
        })
        .sum();
    bytes.div_ceil(GIB)
}

/// Each candidate with what its VMs take (all but `except`).
fn loads(
    tx: &Tx<'_>,
    candidates: &[Candidate],
    except: Option<&VmName>,
) -> Result<Vec<HostLoad>, StoreError> {
    let mut out = Vec::with_capacity(candidates.len());
    for c in candidates {
        let mut h = HostLoad {
            host: c.host,
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            storage_gib: c.storage_bytes / GIB,
            used_vcpus: 0,
            used_memory_mib: 0,
            used_storage_gib: 0,
            cpu_percent: c.cpu_percent,
            groups: BTreeSet::new(),
        };
        for vm in tx.vms_on(c.host)? {
            if Some(&vm.name) == except {
                continue;
            }
            h.used_vcpus += vm.vcpus;
            h.used_memory_mib += vm.memory_mib;
            h.used_storage_gib += storage_gib(&vm.disks);
            if let Some(g) = vm.anti_affinity {
                h.groups.insert(g);
            }
        }
        out.push(h);
    }
    Ok(out)
}

/// What an existing VM asks of a host.
fn request_of(vm: &Vm) -> Request {
    Request {
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        storage_gib: storage_gib(&vm.disks),
        anti_affinity: vm.anti_affinity.clone(),
    }
}

fn no_host(e: placement::NoHost) -> StoreError {
    StoreError::Conflict {
        code: "no_host",
        message: e.to_string(),
    }
}

/// The host for `req`: `wanted` if it is a candidate and the VM fits there, else the best.
fn choose(
    hosts: &[HostLoad],
    req: &Request,
    oc: &Overcommit,
    wanted: Option<MacAddr>,
) -> Result<MacAddr, StoreError> {
    let Some(w) = wanted else {
        return placement::place(hosts, req, oc).map_err(no_host);
    };
    let Some(h) = hosts.iter().find(|h| h.host == w) else {
        return Err(StoreError::Conflict {
            code: "no_host",
            message: format!(
                "{w} is not a VM host: a host is a machine of role host in deployed or active whose agent reports its hypervisor"
            ),
        });
    };
    placement::fits(h, req, oc).map_err(|why| StoreError::Conflict {
        code: "no_host",
        message: format!(
            "VM does not fit host {w} ({} vCPUs, {} MiB): {why}",
            req.vcpus, req.memory_mib
        ),
    })?;
    Ok(w)
}

/// A MAC for a NIC or port that was given none: 52:54:00 and three octets from a counter,
/// skipping any a VM or port already holds.
pub(super) fn fresh_mac(tx: &mut Tx<'_>) -> Result<MacAddr, StoreError> {
    for _ in 0..1_000 {
        let n = tx.next_vm_mac_number()?;
        let b = n.to_be_bytes();
        let mac = MacAddr::new([0x52, 0x54, 0x00, b[5], b[6], b[7]]);
        if tx.vm_with_mac(mac)?.is_none() && tx.port(mac)?.is_none() {
            return Ok(mac);
        }
    }
    Err(StoreError::conflict(
        "no free VM MAC address found in 1,000 tries",
    ))
}

pub(super) fn create(
    tx: &mut Tx<'_>,
    new: &NewVm,
    candidates: &[Candidate],
    oc: &Overcommit,
) -> Result<Vm, StoreError> {
    if tx.find_vm(&new.name)?.is_some() {
        return Err(StoreError::conflict(format!(
            "a VM named {} already exists",
            new.name
        )));
    }
    let req = Request {
        vcpus: new.vcpus,
        memory_mib: new.memory_mib,
        storage_gib: storage_gib(&new.disks),
        anti_affinity: new.anti_affinity.clone(),
    };
    let on_networks = new.nics.iter().any(|n| n.network.is_some());
    let fit: Vec<Candidate> = candidates
        .iter()
        .filter(|c| carries(c, on_networks))
        .cloned()
        .collect();
    if on_networks && fit.is_empty() && !candidates.is_empty() {
        return Err(StoreError::conflict(
            "no host reports a VXLAN endpoint (cosm-agent --vtep-ip), and a VM on a tenant network needs one",
        ));
    }
    let host = choose(&loads(tx, &fit, None)?, &req, oc, new.host)?;
    let mut nics = Vec::with_capacity(new.nics.len());
    let mut ports = Vec::new();
    for (i, n) in new.nics.iter().enumerate() {
        let mac = match n.mac {
            Some(m) => {
                let taken = tx.vm_with_mac(m)?.map(|v| format!("VM {v}")).or(tx
                    .port(m)?
                    .map(|p| format!("a port on network {}", p.network)));
                if let Some(other) = taken {
                    return Err(StoreError::Invalid {
                        field: "nics",
                        message: format!("nics[{i}].mac {m} is already used by {other}"),
                    });
                }
                if nics.iter().any(|x: &VmNic| x.mac == m) {
                    return Err(StoreError::Invalid {
                        field: "nics",
                        message: format!("nics[{i}].mac {m} is given twice"),
                    });
                }
                m
            }
            None => fresh_mac(tx)?,
        };
        match (&n.bridge, &n.network) {
            (Some(bridge), None) => {
                if n.ip.is_some() || !n.security_groups.is_empty() {
                    return Err(StoreError::Invalid {
                        field: "nics",
                        message: format!(
                            "nics[{i}]: ip and security_groups go with a network, not a bridge"
                        ),
                    });
                }
                nics.push(VmNic::on_bridge(bridge.clone(), mac));
            }
            (None, Some(network)) => {
                let (port, net) = super::net::new_port(
                    tx,
                    &format!("nics[{i}]"),
                    network,
                    mac,
                    n.ip,
                    &n.security_groups,
                    PortOwner::Vm(new.name.clone()),
                )?;
                nics.push(VmNic {
                    bridge: BridgeName::new(&bridge_name(net.vni)).map_err(|e| {
                        StoreError::Invalid {
                            field: "nics",
                            message: e.to_string(),
                        }
                    })?,
                    mac,
                    network: Some(network.clone()),
                    ip: Some(port.ip),
                    mtu: Some(net.mtu),
                });
                ports.push((port, net));
            }
            _ => {
                return Err(StoreError::Invalid {
                    field: "nics",
                    message: format!("nics[{i}] needs either a bridge or a network"),
                })
            }
        }
    }
    let mut boot = new.boot.clone();
    if let (Some(b), Some((port, net))) = (&mut boot, ports.first()) {
        // Static addressing: a direct-boot guest gets its first port's address as the
        // kernel's standard `ip=` parameter (initramfs-tools and the test guest read it).
        if !b.cmdline.split_whitespace().any(|w| w.starts_with("ip=")) {
            let arg = format!(
                "ip={}::{}:{}::eth0:off",
                port.ip,
                net.gateway,
                net.cidr.netmask()
            );
            b.cmdline = if b.cmdline.is_empty() {
                arg
            } else {
                format!("{} {arg}", b.cmdline)
            };
        }
    }
    let mut vm = Vm {
        id: tx.next_vm_id()?,
        name: new.name.clone(),
        kind: new.kind,
        vcpus: new.vcpus,
        memory_mib: new.memory_mib,
        disks: new.disks.clone(),
        nics,
        boot,
        ha: new.ha,
        anti_affinity: new.anti_affinity.clone(),
        power: if new.start {
            PowerWanted::Running
        } else {
            PowerWanted::Stopped
        },
        stop_timeout_secs: cosm_wire::DEFAULT_STOP_TIMEOUT_SECS,
        state: VmState::Scheduled,
        host: Some(host),
        pending_ops: Vec::new(),
        snapshots: Vec::new(),
        message: None,
        created_at: tx.at,
        updated_at: tx.at,
        state_since: tx.at,
    };
    let how = if new.host.is_some() {
        "on the host asked for"
    } else {
        "the host with the most memory left"
    };
    tx.put_vm(&mut vm)?;
    // Recorded and placed in one command: both moves are on the timeline.
    tx.vm_event(
        &vm,
        format!(
            "recorded ({} vCPUs, {} MiB, {})",
            vm.vcpus, vm.memory_mib, vm.kind
        ),
        None,
        Some(VmState::Pending),
    )?;
    tx.vm_event(
        &vm,
        format!("placed on {host}, {how}"),
        Some(VmState::Pending),
        Some(VmState::Scheduled),
    )?;
    tx.bump_vm_generation(host)?;
    Ok(vm)
}

fn move_state(vm: &mut Vm, to: VmState, at: cosm_wire::Timestamp) -> Option<VmState> {
    if vm.state == to {
        return None;
    }
    let from = vm.state;
    vm.state = to;
    vm.state_since = at;
    Some(from)
}

/// Writes the VM with an event, and tells its host's agent.
fn save(
    tx: &mut Tx<'_>,
    vm: &mut Vm,
    message: String,
    from: Option<VmState>,
) -> Result<(), StoreError> {
    tx.put_vm(vm)?;
    let to = from.map(|_| vm.state);
    tx.vm_event(vm, message, from, to)?;
    if let Some(h) = vm.host {
        tx.bump_vm_generation(h)?;
    }
    Ok(())
}

fn refuse_while(vm: &Vm, states: &[VmState], what: &str) -> Result<(), StoreError> {
    if states.contains(&vm.state) {
        return Err(StoreError::Conflict {
            code: "wrong_state",
            message: format!("VM {} is {}: cannot {what} now", vm.name, vm.state),
        });
    }
    Ok(())
}

pub(super) fn set_power(
    tx: &mut Tx<'_>,
    name: &VmName,
    power: PowerWanted,
    stop_timeout_secs: Option<u32>,
    by: &str,
) -> Result<Vm, StoreError> {
    let mut vm = tx.vm(name)?;
    let what = match power {
        PowerWanted::Running => "start",
        PowerWanted::Stopped => "stop",
    };
    refuse_while(&vm, &[VmState::Deleting, VmState::Migrating], what)?;
    vm.power = power;
    if let Some(t) = stop_timeout_secs {
        vm.stop_timeout_secs = t;
    }
    let mut from = None;
    if vm.state == VmState::Failed {
        // Asking again is how a failed VM is retried.
        vm.message = None;
        from = move_state(&mut vm, VmState::Scheduled, tx.at);
    }
    let msg = match power {
        PowerWanted::Running => format!("start asked by {by}"),
        PowerWanted::Stopped => format!(
            "stop asked by {by} (ACPI, forced after {} s)",
            vm.stop_timeout_secs
        ),
    };
    save(tx, &mut vm, msg, from)?;
    Ok(vm)
}

pub(super) fn queue_op(
    tx: &mut Tx<'_>,
    name: &VmName,
    kind: &VmOpKind,
    by: &str,
) -> Result<Vm, StoreError> {
    let mut vm = tx.vm(name)?;
    refuse_while(
        &vm,
        &[VmState::Deleting, VmState::Migrating, VmState::Pending],
        &kind.to_string(),
    )?;
    match kind {
        VmOpKind::Reboot if vm.state != VmState::Running => {
            return Err(StoreError::Conflict {
                code: "wrong_state",
                message: format!("VM {} is {}: only a running VM reboots", vm.name, vm.state),
            })
        }
        VmOpKind::SnapshotRevert { snapshot } | VmOpKind::SnapshotDelete { snapshot }
            if !vm.snapshots.iter().any(|s| &s.name == snapshot) =>
        {
            return Err(StoreError::NotFound {
                what: "snapshot",
                key: format!("{snapshot} of VM {}", vm.name),
            })
        }
        VmOpKind::SnapshotCreate { snapshot }
            if vm.snapshots.iter().any(|s| &s.name == snapshot) =>
        {
            return Err(StoreError::conflict(format!(
                "VM {} already has a snapshot named {snapshot}",
                vm.name
            )))
        }
        VmOpKind::Migrate { .. } => {
            return Err(StoreError::conflict(
                "a migration is started with StartMigration",
            ))
        }
        _ => {}
    }
    let id = tx.next_vm_op_id()?;
    vm.pending_ops.push(VmOp {
        id,
        kind: kind.clone(),
        queued_at: tx.at,
    });
    save(
        tx,
        &mut vm,
        format!("{kind} asked by {by} (operation {id})"),
        None,
    )?;
    Ok(vm)
}

pub(super) fn start_migration(
    tx: &mut Tx<'_>,
    name: &VmName,
    to: Option<MacAddr>,
    candidates: &[Candidate],
    oc: &Overcommit,
    by: &str,
) -> Result<Vm, StoreError> {
    let mut vm = tx.vm(name)?;
    let Some(from_host) = vm.host else {
        return Err(StoreError::conflict(format!(
            "VM {} has no host to migrate from",
            vm.name
        )));
    };
    if vm.state != VmState::Running {
        return Err(StoreError::Conflict {
            code: "wrong_state",
            message: format!(
                "VM {} is {}: only a running VM is live-migrated",
                vm.name, vm.state
            ),
        });
    }
    if !vm.snapshots.is_empty() {
        return Err(StoreError::Conflict {
            code: "wrong_state",
            message: format!(
                "VM {} has {} snapshot(s): libvirt cannot migrate a domain with snapshots; delete them first",
                vm.name,
                vm.snapshots.len()
            ),
        });
    }
    if to == Some(from_host) {
        return Err(StoreError::Invalid {
            field: "host",
            message: format!("VM {} already runs on {from_host}", vm.name),
        });
    }
    let others: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.host != from_host && c.migration_uri.is_some())
        .filter(|c| carries(c, vm.nics.iter().any(|n| n.network.is_some())))
        .cloned()
        .collect();
    let req = request_of(&vm);
    let dest = choose(&loads(tx, &others, Some(&vm.name))?, &req, oc, to)?;
    let uri = others
        .iter()
        .find(|c| c.host == dest)
        .and_then(|c| c.migration_uri.clone())
        .unwrap_or_default();
    let id = tx.next_vm_op_id()?;
    vm.pending_ops.push(VmOp {
        id,
        kind: VmOpKind::Migrate { to: dest, uri },
        queued_at: tx.at,
    });
    let from = move_state(&mut vm, VmState::Migrating, tx.at);
    save(
        tx,
        &mut vm,
        format!("live migration from {from_host} to {dest} asked by {by} (operation {id})"),
        from,
    )?;
    Ok(vm)
}

/// Deletes a VM: at once when it has no host (or its host is gone), else it is `deleting`
/// until its agent reports the domain gone. Returns the record as it is now (`None`: gone).
pub(super) fn delete(tx: &mut Tx<'_>, name: &VmName, by: &str) -> Result<Option<Vm>, StoreError> {
    let mut vm = tx.vm(name)?;
    // A fenced host is off and runs nothing: its VMs are deleted from the record at once
    // (their files on shared storage stay; see the HA section of the README).
    let host_known = match vm.host {
        Some(h) => tx
            .find_machine(h)?
            .is_some_and(|m| m.state != cosm_wire::MachineState::Fenced),
        None => false,
    };
    if !host_known {
        tx.remove_vm(&vm)?;
        return Ok(None);
    }
    if vm.state == VmState::Deleting {
        return Ok(Some(vm));
    }
    let from = move_state(&mut vm, VmState::Deleting, tx.at);
    save(tx, &mut vm, format!("delete asked by {by}"), from)?;
    Ok(Some(vm))
}

/// HA evacuation (issue 13): a VM of `from_host`, which is fenced (confirmed off), is
/// placed on the best survivor among `candidates` and started there from its disks on
/// shared storage. `Ok(None)`: it is no longer on `from_host` (already moved: a resumed
/// evacuation does nothing twice). A VM that fits nowhere is left where it is (`no_host`).
pub(super) fn evacuate(
    tx: &mut Tx<'_>,
    name: &VmName,
    from_host: MacAddr,
    candidates: &[Candidate],
    oc: &Overcommit,
) -> Result<Option<MacAddr>, StoreError> {
    let mut vm = tx.vm(name)?;
    if vm.host != Some(from_host) {
        return Ok(None);
    }
    let survivors: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.host != from_host)
        .filter(|c| carries(c, vm.nics.iter().any(|n| n.network.is_some())))
        .cloned()
        .collect();
    let req = request_of(&vm);
    let dest = choose(&loads(tx, &survivors, Some(&vm.name))?, &req, oc, None)?;
    vm.host = Some(dest);
    // Whatever was queued was for the dead host's agent.
    vm.pending_ops.clear();
    vm.message = None;
    let from = move_state(&mut vm, VmState::Scheduled, tx.at);
    save(
        tx,
        &mut vm,
        format!("HA: its host {from_host} was fenced (confirmed off); restarting on {dest} from its disks"),
        from,
    )?;
    Ok(Some(dest))
}

/// A VM that went down with its fenced host and is not HA: `failed`, saying so; it stays
/// on the host's record (that host's agent is told nothing while it is fenced).
pub(super) fn mark_down(tx: &mut Tx<'_>, name: &VmName, host: MacAddr) -> Result<(), StoreError> {
    let mut vm = tx.vm(name)?;
    if vm.host != Some(host) || vm.state == VmState::Failed {
        return Ok(());
    }
    let why = format!(
        "its host {host} was fenced and it is not HA: it stays down (start it once the host is back, or recreate it)"
    );
    vm.message = Some(why.clone());
    let from = move_state(&mut vm, VmState::Failed, tx.at);
    tx.put_vm(&mut vm)?;
    tx.vm_event(&vm, why, from, from.map(|_| VmState::Failed))?;
    Ok(())
}

/// What a host's agent is told about one of its VMs.
pub fn desired(vm: &Vm) -> DesiredVm {
    DesiredVm {
        name: vm.name.clone(),
        kind: vm.kind,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disks: vm.disks.clone(),
        nics: vm.nics.clone(),
        boot: vm.boot.clone(),
        power: (vm.state != VmState::Deleting).then_some(vm.power),
        stop_timeout_secs: vm.stop_timeout_secs,
        ops: vm.pending_ops.clone(),
    }
}

/// What one host's report means for one of its VMs.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The record changes: write it with these timeline entries (message, from, to).
    Update {
        vm: Box<Vm>,
        events: Vec<(String, Option<VmState>, Option<VmState>)>,
        /// Hosts whose agents must look again (a migration's source and destination).
        bump: Vec<MacAddr>,
    },
    /// The VM was being deleted and its domain is gone: remove the record.
    Remove,
}

/// The outcome of one queued operation, applied to the VM; whether it moved hosts.
fn apply_result(
    vm: &mut Vm,
    r: &VmOpResult,
    host: MacAddr,
    at: cosm_wire::Timestamp,
    events: &mut Vec<(String, Option<VmState>, Option<VmState>)>,
    bump: &mut Vec<MacAddr>,
) {
    let Some(pos) = vm.pending_ops.iter().position(|o| o.id == r.id) else {
        return;
    };
    let op = vm.pending_ops.remove(pos);
    let outcome = if r.ok {
        "done".to_string()
    } else {
        format!("failed: {}", r.message)
    };
    let took = at.as_millis().saturating_sub(op.queued_at.as_millis());
    if let VmOpKind::Migrate { to, .. } = &op.kind {
        let from = move_state(vm, VmState::Running, at);
        if r.ok {
            vm.host = Some(*to);
            vm.message = None;
            events.push((
                format!(
                    "live-migrated from {host} to {to} in {:.1} s (operation {})",
                    took as f64 / 1000.0,
                    op.id
                ),
                from,
                from.map(|_| VmState::Running),
            ));
            bump.push(*to);
        } else {
            vm.message = Some(format!("live migration to {to} failed: {}", r.message));
            events.push((
                format!(
                    "live migration to {to} {outcome} (operation {}); it stays on {host}",
                    op.id
                ),
                from,
                from.map(|_| VmState::Running),
            ));
        }
        bump.push(host);
        return;
    }
    if !r.ok {
        vm.message = Some(format!("{}: {}", op.kind, r.message));
    }
    events.push((
        format!("{} {outcome} (operation {})", op.kind, op.id),
        None,
        None,
    ));
    bump.push(host);
}

/// Turns one host's report into a change of `vm` (placed on `host`), if any. Pure, so the
/// caller can find the VMs a report changes without a write, and the command applies the
/// same decision inside its transaction.
pub fn observe(
    vm: &Vm,
    host: MacAddr,
    domain: Option<&ObservedDomain>,
    results: &[VmOpResult],
    notes: &[VmNote],
    at: cosm_wire::Timestamp,
) -> Option<Change> {
    if vm.host != Some(host) {
        return None;
    }
    if vm.state == VmState::Deleting && domain.is_none() {
        return Some(Change::Remove);
    }
    let mut next = vm.clone();
    let mut events = Vec::new();
    let mut bump = Vec::new();
    for r in results.iter().filter(|r| r.vm == vm.name) {
        apply_result(&mut next, r, host, at, &mut events, &mut bump);
    }
    for n in notes.iter().filter(|n| n.vm == vm.name) {
        if n.failed && next.state != VmState::Deleting {
            next.message = Some(n.message.clone());
            let from = move_state(&mut next, VmState::Failed, at);
            events.push((n.message.clone(), from, from.map(|_| VmState::Failed)));
        } else {
            events.push((n.message.clone(), None, None));
        }
    }
    // A VM that moved away in this report is observed on its new host from now on.
    if next.host == Some(host) {
        if let Some(d) = domain {
            let snaps: Vec<VmSnapshot> = d
                .snapshots
                .iter()
                .map(|s: &SnapshotName| VmSnapshot { name: s.clone() })
                .collect();
            if snaps != next.snapshots {
                next.snapshots = snaps;
            }
            let on = matches!(
                d.power,
                DomainPower::Running | DomainPower::Paused | DomainPower::ShuttingDown
            );
            let to = match (next.state, next.power, on) {
                (VmState::Deleting | VmState::Migrating, _, _) => None,
                (s, PowerWanted::Running, true) if s != VmState::Running => Some(VmState::Running),
                (s, PowerWanted::Stopped, false)
                    if s != VmState::Stopped && s != VmState::Failed =>
                {
                    Some(VmState::Stopped)
                }
                _ => None,
            };
            if let Some(to) = to {
                let from = move_state(&mut next, to, at);
                if to == VmState::Running {
                    next.message = None;
                }
                events.push((format!("{to} on {host}"), from, Some(to)));
            }
        }
    }
    if next == *vm && events.is_empty() {
        return None;
    }
    Some(Change::Update {
        vm: Box::new(next),
        events,
        bump,
    })
}

/// A host's agent reported its domains: every VM of that host it changes.
pub(super) fn apply_report(
    tx: &mut Tx<'_>,
    host: MacAddr,
    domains: &[ObservedDomain],
    results: &[VmOpResult],
    notes: &[VmNote],
) -> Result<usize, StoreError> {
    let mut changed = 0;
    for vm in tx.vms_on(host)? {
        let domain = domains.iter().find(|d| d.name == vm.name.as_str());
        match observe(&vm, host, domain, results, notes, tx.at) {
            None => {}
            Some(Change::Remove) => {
                tx.remove_vm(&vm)?;
                tx.bump_vm_generation(host)?;
                changed += 1;
            }
            Some(Change::Update {
                vm: mut next,
                events,
                bump,
            }) => {
                next.updated_at = tx.at;
                tx.put_vm(&mut next)?;
                for (message, from, to) in events {
                    tx.vm_event(&next, message, from, to)?;
                }
                for h in bump {
                    tx.bump_vm_generation(h)?;
                }
                changed += 1;
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_wire::{Timestamp, VmKind};

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0x0f, n])
    }

    fn vm(state: VmState, power: PowerWanted) -> Vm {
        let at = Timestamp::from_millis(1_000);
        Vm {
            id: 1,
            name: VmName::new("vm1").unwrap(),
            kind: VmKind::Tcg,
            vcpus: 1,
            memory_mib: 128,
            disks: vec![],
            nics: vec![],
            boot: None,
            ha: false,
            anti_affinity: None,
            power,
            stop_timeout_secs: 60,
            state,
            host: Some(mac(1)),
            pending_ops: vec![],
            snapshots: vec![],
            message: None,
            created_at: at,
            updated_at: at,
            state_since: at,
        }
    }

    fn dom(power: DomainPower) -> ObservedDomain {
        ObservedDomain {
            name: "vm1".into(),
            power,
            managed: true,
            snapshots: vec![],
            console: None,
        }
    }

    fn at() -> Timestamp {
        Timestamp::from_millis(5_000)
    }

    fn state_after(v: &Vm, d: Option<&ObservedDomain>) -> Option<VmState> {
        match observe(v, mac(1), d, &[], &[], at()) {
            Some(Change::Update { vm, .. }) => Some(vm.state),
            _ => None,
        }
    }

    #[test]
    fn reports_move_states_only_where_the_wish_and_the_domain_agree() {
        use DomainPower as D;
        use PowerWanted as P;
        use VmState as S;
        let running = dom(D::Running);
        let off = dom(D::ShutOff);
        assert_eq!(
            state_after(&vm(S::Scheduled, P::Running), Some(&running)),
            Some(S::Running)
        );
        assert_eq!(
            state_after(&vm(S::Scheduled, P::Stopped), Some(&off)),
            Some(S::Stopped)
        );
        // Off while it should run: the agent starts it again; the state does not flap.
        assert_eq!(state_after(&vm(S::Running, P::Running), Some(&off)), None);
        // Running while it should be stopped: the agent is stopping it.
        assert_eq!(
            state_after(&vm(S::Running, P::Stopped), Some(&running)),
            None
        );
        assert_eq!(
            state_after(&vm(S::Stopped, P::Running), Some(&running)),
            Some(S::Running)
        );
        // Not there yet: the agent is defining it.
        assert_eq!(state_after(&vm(S::Scheduled, P::Running), None), None);
        // A failed VM that runs after all recovers.
        assert_eq!(
            state_after(&vm(S::Failed, P::Running), Some(&running)),
            Some(S::Running)
        );
        assert_eq!(
            state_after(&vm(S::Migrating, P::Running), Some(&running)),
            None
        );
        // Deleting: gone is the end.
        assert_eq!(
            observe(&vm(S::Deleting, P::Running), mac(1), None, &[], &[], at()),
            Some(Change::Remove)
        );
        assert_eq!(
            state_after(&vm(S::Deleting, P::Running), Some(&running)),
            None
        );
        // Another host's report says nothing about this VM.
        assert_eq!(
            observe(
                &vm(S::Scheduled, P::Running),
                mac(2),
                Some(&running),
                &[],
                &[],
                at()
            ),
            None
        );
    }

    #[test]
    fn a_migration_result_moves_the_host_or_keeps_it_with_the_reason() {
        let mut v = vm(VmState::Migrating, PowerWanted::Running);
        v.pending_ops.push(VmOp {
            id: 7,
            kind: VmOpKind::Migrate {
                to: mac(2),
                uri: "qemu+tcp://192.0.2.12/system".into(),
            },
            queued_at: Timestamp::from_millis(2_000),
        });
        let ok = VmOpResult {
            vm: v.name.clone(),
            id: 7,
            ok: true,
            message: String::new(),
        };
        let Some(Change::Update {
            vm: moved,
            events,
            bump,
        }) = observe(&v, mac(1), None, std::slice::from_ref(&ok), &[], at())
        else {
            panic!("no change")
        };
        assert_eq!(moved.host, Some(mac(2)));
        assert_eq!(moved.state, VmState::Running);
        assert!(moved.pending_ops.is_empty());
        assert!(events[0].0.contains("live-migrated from"), "{events:?}");
        assert!(events[0].0.contains("in 3.0 s"), "{events:?}");
        assert!(bump.contains(&mac(1)) && bump.contains(&mac(2)));
        let failed = VmOpResult {
            ok: false,
            message: "unsafe".into(),
            ..ok
        };
        let Some(Change::Update { vm: kept, .. }) = observe(
            &v,
            mac(1),
            Some(&dom(DomainPower::Running)),
            &[failed],
            &[],
            at(),
        ) else {
            panic!("no change")
        };
        assert_eq!(kept.host, Some(mac(1)));
        assert_eq!(kept.state, VmState::Running);
        assert!(kept.message.unwrap().contains("unsafe"));
    }

    #[test]
    fn a_failing_note_fails_the_vm_and_a_plain_note_only_lands_on_the_timeline() {
        let v = vm(VmState::Scheduled, PowerWanted::Running);
        let note = |failed| VmNote {
            vm: v.name.clone(),
            message: "image sha256 mismatch".into(),
            failed,
        };
        let Some(Change::Update { vm: f, events, .. }) =
            observe(&v, mac(1), None, &[], &[note(true)], at())
        else {
            panic!()
        };
        assert_eq!(f.state, VmState::Failed);
        assert_eq!(events[0].2, Some(VmState::Failed));
        let r = vm(VmState::Running, PowerWanted::Running);
        let Some(Change::Update {
            vm: same, events, ..
        }) = observe(
            &r,
            mac(1),
            Some(&dom(DomainPower::Running)),
            &[],
            &[note(false)],
            at(),
        )
        else {
            panic!()
        };
        assert_eq!(same.state, VmState::Running);
        assert_eq!(events.len(), 1);
    }
}
