//! Power settings, alarms and evacuations (issue 13). Only reads and writes: what may be
//! raised, cleared or fenced is the application layer's (`app::ha`).

use super::engine::{decode, encode, Store, StoreCommand, Tx};
use super::schema::{ALARMS, ALARMS_ACTIVE, EVACUATIONS, POWER};
use super::StoreError;
use cosm_wire::{Alarm, AlarmKind, Evacuation, MacAddr, PowerSettings};
use redb::ReadableTable;

impl<C: StoreCommand> Store<C> {
    /// A machine's power settings, secrets included: for the power drivers only.
    pub fn power_settings(&self, mac: MacAddr) -> Result<Option<PowerSettings>, StoreError> {
        self.get(POWER, mac.to_u64())
    }

    /// Alarms, newest first; only the active ones unless `all`; at most `limit`.
    pub fn alarms(&self, all: bool, limit: usize) -> Result<Vec<Alarm>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(ALARMS)?;
        let mut out = Vec::new();
        for row in t.iter()?.rev() {
            let (_, v) = row?;
            let a: Alarm = decode("alarms", v.value())?;
            if all || a.cleared_at.is_none() {
                out.push(a);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The active alarms, through the index (what `/metrics` counts).
    pub fn active_alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        let r = self.db.begin_read()?;
        let idx = r.open_table(ALARMS_ACTIVE)?;
        let t = r.open_table(ALARMS)?;
        let mut out = Vec::new();
        for row in idx.iter()? {
            let (_, id) = row?;
            if let Some(v) = t.get(id.value())? {
                out.push(decode("alarms", v.value())?);
            }
        }
        Ok(out)
    }

    pub fn evacuation(&self, host: MacAddr) -> Result<Option<Evacuation>, StoreError> {
        self.get(EVACUATIONS, host.to_u64())
    }

    /// Every host's latest evacuation.
    pub fn evacuations(&self) -> Result<Vec<Evacuation>, StoreError> {
        self.all(EVACUATIONS)
    }
}

impl Tx<'_> {
    pub fn power_settings(&self, mac: MacAddr) -> Result<Option<PowerSettings>, StoreError> {
        self.get(POWER, mac.to_u64())
    }

    pub fn put_power_settings(
        &mut self,
        mac: MacAddr,
        settings: &PowerSettings,
    ) -> Result<(), StoreError> {
        self.txn
            .open_table(POWER)?
            .insert(mac.to_u64(), encode(settings).as_slice())?;
        self.changed.ha += 1;
        Ok(())
    }

    /// False when there were none.
    pub fn remove_power_settings(&mut self, mac: MacAddr) -> Result<bool, StoreError> {
        let found = self.txn.open_table(POWER)?.remove(mac.to_u64())?.is_some();
        self.changed.ha += u64::from(found);
        Ok(found)
    }

    /// The active alarm of this kind about `subject`, if one is raised.
    pub fn active_alarm(
        &self,
        kind: AlarmKind,
        subject: &str,
    ) -> Result<Option<Alarm>, StoreError> {
        let idx = self.txn.open_table(ALARMS_ACTIVE)?;
        let id = idx.get((kind.as_str(), subject))?.map(|v| v.value());
        match id {
            Some(id) => self.get(ALARMS, id),
            None => Ok(None),
        }
    }

    /// Writes an alarm (new or updated) and keeps the active index.
    pub fn put_alarm(&mut self, alarm: &Alarm) -> Result<(), StoreError> {
        self.txn
            .open_table(ALARMS)?
            .insert(alarm.id, encode(alarm).as_slice())?;
        let mut idx = self.txn.open_table(ALARMS_ACTIVE)?;
        let key = (alarm.kind.as_str(), alarm.subject.as_str());
        if alarm.cleared_at.is_none() {
            idx.insert(key, alarm.id)?;
        } else {
            idx.remove(key)?;
        }
        self.changed.ha += 1;
        Ok(())
    }

    pub fn next_alarm_id(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_alarm_id")
    }

    pub fn evacuation(&self, host: MacAddr) -> Result<Option<Evacuation>, StoreError> {
        self.get(EVACUATIONS, host.to_u64())
    }

    pub fn put_evacuation(&mut self, e: &Evacuation) -> Result<(), StoreError> {
        self.txn
            .open_table(EVACUATIONS)?
            .insert(e.host.to_u64(), encode(e).as_slice())?;
        self.changed.ha += 1;
        Ok(())
    }
}
