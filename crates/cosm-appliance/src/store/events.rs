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
        timeline_page(
            &r.open_table(EVENTS)?,
            "events",
            mac.to_u64(),
            before,
            limit,
        )
    }
}

/// A page of one subject's timeline in a table keyed by (subject, sequence), going back in
/// time: the newest `limit` entries older than `before` (the newest of all without it),
/// oldest first; `more` says that older entries exist.
pub(super) fn timeline_page<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<(u64, u64), &'static [u8]>,
    table: &str,
    subject: u64,
    before: Option<u64>,
    limit: usize,
) -> Result<Page<T>, StoreError> {
    let end = before.unwrap_or(u64::MAX);
    let mut page = Page::default();
    for row in t.range((subject, 0)..(subject, end))?.rev() {
        let (_, v) = row?;
        if page.items.len() == limit {
            page.more = true;
            break;
        }
        page.items.push(decode(table, v.value())?);
    }
    page.items.reverse();
    Ok(page)
}

/// Appends an entry to one subject's timeline and drops its oldest entries beyond `max`,
/// keeping the subject's count in `counts`.
pub(super) fn append_bounded(
    events: &mut redb::Table<'_, (u64, u64), &'static [u8]>,
    counts: &mut redb::Table<'_, u64, u64>,
    (subject, seq): (u64, u64),
    entry: &[u8],
    max: u64,
) -> Result<(), StoreError> {
    events.insert((subject, seq), entry)?;
    let mut count = counts.get(subject)?.map(|v| v.value()).unwrap_or(0) + 1;
    while count > max {
        let oldest = events
            .range((subject, 0)..=(subject, u64::MAX))?
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
    counts.insert(subject, count)?;
    Ok(())
}

/// Removes one subject's whole timeline and its count.
pub(super) fn remove_timeline(
    events: &mut redb::Table<'_, (u64, u64), &'static [u8]>,
    counts: &mut redb::Table<'_, u64, u64>,
    subject: u64,
) -> Result<(), StoreError> {
    let keys: Vec<(u64, u64)> = events
        .range((subject, 0)..=(subject, u64::MAX))?
        .map(|r| r.map(|(key, _)| key.value()))
        .collect::<Result<_, _>>()?;
    for key in keys {
        events.remove(key)?;
    }
    counts.remove(subject)?;
    Ok(())
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
        append_bounded(
            &mut self.txn.open_table(EVENTS)?,
            &mut self.txn.open_table(EVENT_COUNTS)?,
            (mac.to_u64(), seq),
            &encode(&ev),
            self.options.events_per_machine,
        )?;
        self.changed.events += 1;
        Ok(())
    }
}
