//! VM records, keyed by name, with their indexes (by host, by NIC MAC) and timelines. What
//! a VM may do is decided by the application layer's commands (`app::vms`); this file only
//! reads and writes records.

use super::engine::{decode, encode, Page, Store, StoreCommand, Tx};
use super::events::{append_bounded, remove_timeline, timeline_page};
use super::schema::{VMS, VMS_BY_HOST, VM_EVENTS, VM_EVENT_COUNTS, VM_GENERATIONS, VM_MACS};
use super::StoreError;
use cosm_wire::{MacAddr, Vm, VmEvent, VmName, VmState};
use redb::ReadableTable;

/// Where a VM's tenant-network ports are wired: its host and the destination of a live
/// migration under way (empty without such a port).
pub fn port_hosts(vm: Option<&Vm>) -> Vec<MacAddr> {
    let Some(vm) = vm.filter(|v| v.nics.iter().any(|n| n.network.is_some())) else {
        return Vec::new();
    };
    let mut out: Vec<MacAddr> = vm.host.into_iter().collect();
    for op in &vm.pending_ops {
        if let cosm_wire::VmOpKind::Migrate { to, .. } = &op.kind {
            out.push(*to);
        }
    }
    out
}

/// The VMs placed on `host`, through the host index, in name order.
fn vms_of(
    idx: &impl ReadableTable<(u64, &'static str), ()>,
    vms: &impl ReadableTable<&'static str, &'static [u8]>,
    host: MacAddr,
) -> Result<Vec<Vm>, StoreError> {
    let k = host.to_u64();
    let mut out = Vec::new();
    for row in idx.range((k, "")..(k + 1, ""))? {
        let (key, _) = row?;
        if let Some(v) = vms.get(key.value().1)? {
            out.push(decode("vms", v.value())?);
        }
    }
    Ok(out)
}

impl<C: StoreCommand> Store<C> {
    pub fn vm(&self, name: &VmName) -> Result<Option<Vm>, StoreError> {
        self.get(VMS, name.as_str())
    }

    /// One page of VMs in name order after `after`, optionally only one host's or one
    /// state's.
    pub fn vms_page(
        &self,
        host: Option<MacAddr>,
        state: Option<VmState>,
        after: Option<&VmName>,
        limit: usize,
    ) -> Result<Page<Vm>, StoreError> {
        self.page(VMS, after.map(|a| a.as_str()), limit, |v: &Vm| {
            host.is_none_or(|h| v.host == Some(h)) && state.is_none_or(|s| v.state == s)
        })
    }

    /// Every VM placed on `host` (from the index), in name order.
    pub fn vms_on(&self, host: MacAddr) -> Result<Vec<Vm>, StoreError> {
        let r = self.db.begin_read()?;
        vms_of(&r.open_table(VMS_BY_HOST)?, &r.open_table(VMS)?, host)
    }

    /// The generation of `host`'s VM set (0 before its first VM).
    pub fn vm_generation(&self, host: MacAddr) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(VM_GENERATIONS)?;
        Ok(t.get(host.to_u64())?.map_or(0, |v| v.value()))
    }

    /// Every VM, in name order (placement and `/api/v1/hosts` sum them per host).
    pub fn all_vms(&self) -> Result<Vec<Vm>, StoreError> {
        self.all(VMS)
    }

    /// A page of a VM's timeline going back in time, like a machine's.
    pub fn vm_events_page(
        &self,
        vm: &Vm,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<VmEvent>, StoreError> {
        let r = self.db.begin_read()?;
        timeline_page(&r.open_table(VM_EVENTS)?, "vm_events", vm.id, before, limit)
    }

    /// Number of VMs in each state (every state listed, zeros included).
    pub fn vm_counts(&self) -> Result<Vec<(VmState, u64)>, StoreError> {
        let mut counts: Vec<(VmState, u64)> = VmState::ALL.iter().map(|s| (*s, 0)).collect();
        for v in self.all_vms()? {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == v.state) {
                c.1 += 1;
            }
        }
        Ok(counts)
    }
}

impl Tx<'_> {
    pub fn find_vm(&self, name: &VmName) -> Result<Option<Vm>, StoreError> {
        self.get(VMS, name.as_str())
    }

    /// The VM, or `NotFound`.
    pub fn vm(&self, name: &VmName) -> Result<Vm, StoreError> {
        self.find_vm(name)?.ok_or_else(|| StoreError::NotFound {
            what: "VM",
            key: name.to_string(),
        })
    }

    /// Every VM placed on `host`, from the index.
    pub fn vms_on(&self, host: MacAddr) -> Result<Vec<Vm>, StoreError> {
        vms_of(
            &self.txn.open_table(VMS_BY_HOST)?,
            &self.txn.open_table(VMS)?,
            host,
        )
    }

    /// Every VM, in name order.
    pub fn all_vms(&self) -> Result<Vec<Vm>, StoreError> {
        self.all(VMS)
    }

    /// The VM whose NIC has this MAC, if any.
    pub fn vm_with_mac(&self, mac: MacAddr) -> Result<Option<String>, StoreError> {
        let t = self.txn.open_table(VM_MACS)?;
        let found = t.get(mac.to_u64())?.map(|v| v.value().to_string());
        Ok(found)
    }

    /// Raises `host`'s VM generation: its agent fetches its desired state again.
    pub fn bump_vm_generation(&mut self, host: MacAddr) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(VM_GENERATIONS)?;
        let next = t.get(host.to_u64())?.map_or(0, |v| v.value()) + 1;
        t.insert(host.to_u64(), next)?;
        self.changed.vms += 1;
        Ok(())
    }

    pub fn next_vm_id(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_vm_id")
    }

    /// The next number of the counter VM NIC MACs are made from.
    pub fn next_vm_mac_number(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_vm_mac")
    }

    pub fn next_vm_op_id(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_vm_op_id")
    }

    /// Writes the record, stamped with the command's time, and moves its index entries
    /// (host, NIC MACs). The caller has checked that its MACs are free.
    pub fn put_vm(&mut self, vm: &mut Vm) -> Result<(), StoreError> {
        vm.updated_at = self.at;
        let old = self.find_vm(&vm.name)?;
        if port_hosts(old.as_ref()) != port_hosts(Some(vm)) {
            // Where its tenant-network ports are changed: other hosts' FDB peers too.
            self.bump_net_generation()?;
        }
        let (old_host, old_macs) = old.map_or((None, Vec::new()), |o| {
            (o.host, o.nics.iter().map(|n| n.mac).collect())
        });
        if old_host != vm.host {
            let mut idx = self.txn.open_table(VMS_BY_HOST)?;
            if let Some(h) = old_host {
                idx.remove((h.to_u64(), vm.name.as_str()))?;
            }
            if let Some(h) = vm.host {
                idx.insert((h.to_u64(), vm.name.as_str()), ())?;
            }
        }
        let new_macs: Vec<MacAddr> = vm.nics.iter().map(|n| n.mac).collect();
        if old_macs != new_macs {
            let mut macs = self.txn.open_table(VM_MACS)?;
            for m in &old_macs {
                macs.remove(m.to_u64())?;
            }
            for m in &new_macs {
                let held = macs.get(m.to_u64())?.map(|v| v.value().to_string());
                if let Some(other) = held.filter(|o| o != vm.name.as_str()) {
                    return Err(StoreError::Db {
                        message: format!(
                            "index broken: MAC {m} of VM {} is held by VM {other}; nothing was written",
                            vm.name
                        ),
                    });
                }
                macs.insert(m.to_u64(), vm.name.as_str())?;
            }
        }
        self.txn
            .open_table(VMS)?
            .insert(vm.name.as_str(), encode(vm).as_slice())?;
        self.changed.vms += 1;
        Ok(())
    }

    /// Removes the VM, its index entries and its timeline.
    pub fn remove_vm(&mut self, vm: &Vm) -> Result<(), StoreError> {
        self.txn.open_table(VMS)?.remove(vm.name.as_str())?;
        if let Some(h) = vm.host {
            self.txn
                .open_table(VMS_BY_HOST)?
                .remove((h.to_u64(), vm.name.as_str()))?;
        }
        {
            let mut macs = self.txn.open_table(VM_MACS)?;
            for n in &vm.nics {
                macs.remove(n.mac.to_u64())?;
            }
        }
        // Its tenant-network ports go with it.
        for n in vm.nics.iter().filter(|n| n.network.is_some()) {
            self.remove_port(n.mac)?;
        }
        remove_timeline(
            &mut self.txn.open_table(VM_EVENTS)?,
            &mut self.txn.open_table(VM_EVENT_COUNTS)?,
            vm.id,
        )?;
        self.changed.vms += 1;
        Ok(())
    }

    /// Appends an event to a VM's timeline, dropping its oldest beyond the store's limit.
    pub fn vm_event(
        &mut self,
        vm: &Vm,
        message: String,
        from_state: Option<VmState>,
        to_state: Option<VmState>,
    ) -> Result<(), StoreError> {
        let seq = self.next_id("next_vm_event_seq")?;
        let ev = VmEvent {
            seq,
            at: self.at,
            vm: vm.name.clone(),
            message,
            from_state,
            to_state,
            host: vm.host,
        };
        append_bounded(
            &mut self.txn.open_table(VM_EVENTS)?,
            &mut self.txn.open_table(VM_EVENT_COUNTS)?,
            (vm.id, seq),
            &encode(&ev),
            self.options.events_per_machine,
        )?;
        self.changed.vms += 1;
        Ok(())
    }
}
