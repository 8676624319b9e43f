//! Machine records, keyed by MAC, and their indexes by hostname and reserved address
//! (kept here, by every write of a machine record). What a machine may do is decided by
//! the application layer's commands; this file only reads and writes records.

use super::engine::{decode, Page, Store, StoreCommand, Tx};
use super::schema::{EVENTS, EVENT_COUNTS, MACHINES, MACHINE_HOSTNAMES, MACHINE_IPS};
use super::StoreError;
use cosm_wire::{MacAddr, Machine, MachineState, RoleName};
use redb::ReadableTable;
use std::net::Ipv4Addr;

/// The indexed fields of a stored machine record, read without decoding the rest.
#[derive(serde::Deserialize)]
struct Indexed {
    hostname: Option<String>,
    reserved_ip: Option<Ipv4Addr>,
}

impl<C: StoreCommand> Store<C> {
    pub fn machine(&self, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
        self.get(MACHINES, mac.to_u64())
    }

    /// Machines in MAC order, optionally only those with this role and/or state.
    pub fn machines(
        &self,
        role: Option<&RoleName>,
        state: Option<MachineState>,
    ) -> Result<Vec<Machine>, StoreError> {
        let mut all: Vec<Machine> = self.all(MACHINES)?;
        all.retain(|m| {
            role.is_none_or(|r| m.role.as_ref() == Some(r)) && state.is_none_or(|s| m.state == s)
        });
        Ok(all)
    }

    /// One page of machines in MAC order, after `after`, optionally only those with this
    /// role and/or state.
    pub fn machines_page(
        &self,
        role: Option<&RoleName>,
        state: Option<MachineState>,
        after: Option<MacAddr>,
        limit: usize,
    ) -> Result<Page<Machine>, StoreError> {
        self.page(MACHINES, after.map(|m| m.to_u64()), limit, |m: &Machine| {
            role.is_none_or(|r| m.role.as_ref() == Some(r)) && state.is_none_or(|s| m.state == s)
        })
    }

    /// The machine holding this hostname, from the index.
    pub fn machine_with_hostname(&self, hostname: &str) -> Result<Option<MacAddr>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(MACHINE_HOSTNAMES)?;
        Ok(t.get(hostname)?.map(|v| MacAddr::from_u64(v.value())))
    }

    /// The machine this address is reserved for, from the index.
    pub fn machine_with_ip(&self, ip: Ipv4Addr) -> Result<Option<MacAddr>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(MACHINE_IPS)?;
        Ok(t.get(u32::from(ip))?.map(|v| MacAddr::from_u64(v.value())))
    }

    /// Number of machines in each state (every state listed, zeros included).
    pub fn machine_counts(&self) -> Result<Vec<(MachineState, u64)>, StoreError> {
        let mut counts: Vec<(MachineState, u64)> =
            MachineState::ALL.iter().map(|s| (*s, 0)).collect();
        for m in self.machines(None, None)? {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == m.state) {
                c.1 += 1;
            }
        }
        Ok(counts)
    }
}

impl Tx<'_> {
    /// The machine, or `NotFound`.
    pub fn machine(&self, mac: MacAddr) -> Result<Machine, StoreError> {
        self.find_machine(mac)?.ok_or_else(|| StoreError::NotFound {
            what: "machine",
            key: mac.to_string(),
        })
    }

    pub fn find_machine(&self, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
        self.get(MACHINES, mac.to_u64())
    }

    /// The machine holding this hostname (from the index, not a scan).
    pub fn machine_with_hostname(&self, hostname: &str) -> Result<Option<MacAddr>, StoreError> {
        let t = self.txn.open_table(MACHINE_HOSTNAMES)?;
        let found = t.get(hostname)?.map(|v| MacAddr::from_u64(v.value()));
        Ok(found)
    }

    /// The machine this address is reserved for (from the index, not a scan).
    pub fn machine_with_ip(&self, ip: Ipv4Addr) -> Result<Option<MacAddr>, StoreError> {
        let t = self.txn.open_table(MACHINE_IPS)?;
        let found = t.get(u32::from(ip))?.map(|v| MacAddr::from_u64(v.value()));
        Ok(found)
    }

    /// Writes the record, stamped with the command's time, and moves its index entries.
    /// The caller has checked that no other machine holds its hostname or address (the
    /// check is a refusal and must come before any write); finding one here is a broken
    /// invariant, which fails the whole transaction rather than steal the entry.
    pub fn put_machine(&mut self, m: &mut Machine) -> Result<(), StoreError> {
        m.updated_at = self.at;
        let k = m.mac.to_u64();
        let mut t = self.txn.open_table(MACHINES)?;
        let old: Option<Indexed> = t
            .get(k)?
            .map(|v| decode("machines", v.value()))
            .transpose()?;
        let (old_host, old_ip) = old.map_or((None, None), |o| (o.hostname, o.reserved_ip));
        if old_host != m.hostname {
            let mut hosts = self.txn.open_table(MACHINE_HOSTNAMES)?;
            if let Some(h) = &old_host {
                hosts.remove(h.as_str())?;
            }
            if let Some(h) = &m.hostname {
                claim(&mut hosts, h.as_str(), k, "hostname")?;
            }
        }
        if old_ip != m.reserved_ip {
            let mut ips = self.txn.open_table(MACHINE_IPS)?;
            if let Some(ip) = old_ip {
                ips.remove(u32::from(ip))?;
            }
            if let Some(ip) = m.reserved_ip {
                claim(&mut ips, u32::from(ip), k, "reserved address")?;
            }
        }
        t.insert(k, super::engine::encode(m).as_slice())?;
        self.changed.machines += 1;
        Ok(())
    }

    pub fn all_machines(&self) -> Result<Vec<Machine>, StoreError> {
        self.all(MACHINES)
    }

    /// Removes a machine record and its whole timeline.
    pub fn remove_machine(&mut self, mac: MacAddr) -> Result<(), StoreError> {
        let k = mac.to_u64();
        let old: Option<Indexed> = self
            .txn
            .open_table(MACHINES)?
            .remove(k)?
            .map(|v| decode("machines", v.value()))
            .transpose()?;
        if let Some(old) = old {
            if let Some(h) = &old.hostname {
                self.txn.open_table(MACHINE_HOSTNAMES)?.remove(h.as_str())?;
            }
            if let Some(ip) = old.reserved_ip {
                self.txn.open_table(MACHINE_IPS)?.remove(u32::from(ip))?;
            }
        }
        super::events::remove_timeline(
            &mut self.txn.open_table(EVENTS)?,
            &mut self.txn.open_table(EVENT_COUNTS)?,
            k,
        )?;
        self.changed.machines += 1;
        self.changed.events += 1;
        Ok(())
    }
}

/// Points an index entry at machine `mac`, unless another machine holds it.
fn claim<'k, K: redb::Key + 'static>(
    index: &mut redb::Table<'_, K, u64>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
    mac: u64,
    what: &str,
) -> Result<(), StoreError> {
    if let Some(holder) = index.insert(key, mac)?.map(|v| v.value()) {
        if holder != mac {
            return Err(StoreError::Db {
                message: format!(
                    "index broken: the {what} of machine {} is held by machine {}; nothing was written",
                    MacAddr::from_u64(mac),
                    MacAddr::from_u64(holder)
                ),
            });
        }
    }
    Ok(())
}
