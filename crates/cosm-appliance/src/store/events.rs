//! Machines' timelines: events keyed by (MAC, global sequence), bounded per machine.

use super::engine::{decode, encode, Page, Store, StoreCommand, Tx};
use super::schema::{EVENTS, EVENT_COUNTS};
use super::StoreError;
use cosm_wire::{Event, EventKind, MacAddr, MachineState};
use redb::ReadableTable;

impl<C: StoreCommand> Store<C> {
    /// The newest `limit` events of a machine, oldest first.
    pub fn events(&self, mac: MacAddr, limit: usize) -> Result<Vec<Event>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(EVENTS)?;
        let k = mac.to_u64();
        let mut out = Vec::new();
        for row in t.range((k, 0)..=(k, u64::MAX))?.rev().take(limit) {
            let (_, v) = row?;
            out.push(decode("events", v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// A page of a machine's timeline going back in time: the newest `limit` events older
    /// than the event `before` (the newest of all without it), oldest first; `more` says
    /// that older events exist.
    pub fn events_page(
        &self,
        mac: MacAddr,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<Event>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(EVENTS)?;
        let k = mac.to_u64();
        let end = before.unwrap_or(u64::MAX);
        let mut page = Page::default();
        for row in t.range((k, 0)..(k, end))?.rev() {
            let (_, v) = row?;
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            page.items.push(decode("events", v.value())?);
        }
        page.items.reverse();
        Ok(page)
    }
}

impl Tx<'_> {
    /// Appends an event to a machine's timeline, dropping its oldest events beyond the
    /// store's limit.
    pub fn event(
        &mut self,
        mac: MacAddr,
        kind: EventKind,
        message: String,
        from_state: Option<MachineState>,
        to_state: Option<MachineState>,
    ) -> Result<(), StoreError> {
        let seq = self.next_id("next_event_seq")?;
        let ev = Event {
            seq,
            at: self.at,
            mac,
            kind,
            message,
            from_state,
            to_state,
        };
        let k = mac.to_u64();
        let mut events = self.txn.open_table(EVENTS)?;
        events.insert((k, seq), encode(&ev).as_slice())?;
        let mut counts = self.txn.open_table(EVENT_COUNTS)?;
        let mut count = counts.get(k)?.map(|v| v.value()).unwrap_or(0) + 1;
        while count > self.options.events_per_machine {
            let oldest = events
                .range((k, 0)..=(k, u64::MAX))?
                .next()
                .transpose()?
                .map(|(key, _)| key.value());
            match oldest {
                Some(key) => {
                    events.remove(key)?;
                    count -= 1;
                }
                None => break,
            }
        }
        counts.insert(k, count)?;
        self.changed.events += 1;
        Ok(())
    }
}
