//! The tables, the schema version and its migrations. Records are JSON values; keys are
//! chosen so that the reads the appliance makes are ranges (one machine's timeline is one
//! range of `events`).

use super::StoreError;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

/// The schema this binary writes. Bump it together with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: u64 = 1;

/// `MIGRATIONS[i]` upgrades a store from schema `i + 1` to `i + 2`, inside the same write
/// transaction that records the new version, so a crash mid-migration leaves the old schema.
type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;
const MIGRATIONS: &[Migration] = &[];

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const MACHINES: TableDefinition<u64, &[u8]> = TableDefinition::new("machines");
pub(super) const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
pub(super) const RULES: TableDefinition<u64, &[u8]> = TableDefinition::new("rules");
/// Keyed by (MAC as u64, global event sequence) so one machine's timeline is one range.
pub(super) const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
pub(super) const EVENT_COUNTS: TableDefinition<u64, u64> = TableDefinition::new("event_counts");
/// DHCP leases keyed by IPv4 address (as u32).
pub(super) const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
pub(super) const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Keyed by the SHA-256 of the token (hex); the token itself is never stored.
pub(super) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// Creates missing tables, seeds a new store (`seed` runs in the same transaction), and
/// runs pending migrations.
pub(super) fn init(
    db: &Database,
    seed: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        txn.open_table(MACHINES)?;
        txn.open_table(ROLES)?;
        txn.open_table(RULES)?;
        txn.open_table(EVENTS)?;
        txn.open_table(EVENT_COUNTS)?;
        txn.open_table(TOKENS)?;
        txn.open_table(LEASES)?;
        txn.open_table(IMAGES)?;
        let found = meta.get("schema_version")?.map(|v| v.value());
        match found {
            None => {
                seed(&txn)?;
                meta.insert("schema_version", SCHEMA_VERSION)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(v) => {
                for (i, migrate) in MIGRATIONS.iter().enumerate() {
                    let from = i as u64 + 1;
                    if from >= v {
                        migrate(&txn)?;
                        meta.insert("schema_version", from + 1)?;
                    }
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}
