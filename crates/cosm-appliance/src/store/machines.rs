//! Machine records, keyed by MAC. What a machine may do is decided by the application
//! layer's commands; this file only reads and writes records.

use super::engine::{Store, StoreCommand, Tx};
use super::schema::{EVENTS, EVENT_COUNTS, MACHINES};
use super::StoreError;
use cosm_wire::{MacAddr, Machine, MachineState, RoleName};
use redb::ReadableTable;

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

    /// Writes the record, stamped with the command's time.
    pub fn put_machine(&mut self, m: &mut Machine) -> Result<(), StoreError> {
        m.updated_at = self.at;
        let mut t = self.txn.open_table(MACHINES)?;
        t.insert(m.mac.to_u64(), super::engine::encode(m).as_slice())?;
        self.changed.machines += 1;
        Ok(())
    }

    pub fn all_machines(&self) -> Result<Vec<Machine>, StoreError> {
        self.all(MACHINES)
    }

    /// Removes a machine record and its whole timeline.
    pub fn remove_machine(&mut self, mac: MacAddr) -> Result<(), StoreError> {
        let k = mac.to_u64();
        self.txn.open_table(MACHINES)?.remove(k)?;
        let mut events = self.txn.open_table(EVENTS)?;
        let keys: Vec<(u64, u64)> = events
            .range((k, 0)..=(k, u64::MAX))?
            .map(|r| r.map(|(key, _)| key.value()))
            .collect::<Result<_, _>>()?;
        for key in keys {
            events.remove(key)?;
        }
        self.txn.open_table(EVENT_COUNTS)?.remove(k)?;
        self.changed.machines += 1;
        self.changed.events += 1;
        Ok(())
    }
}
