//! The tables, the schema version and its migrations. Records are JSON values; keys are
//! chosen so that the reads the appliance makes are ranges (one machine's timeline is one
//! range of `events`, a page of any list is one range from its cursor), and the index
//! tables answer the lookups that would otherwise scan a whole table (which machine holds a
//! hostname or an address).

use super::engine::decode;
use super::StoreError;
use cosm_wire::Machine;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

/// The schema this binary writes. Bump it together with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: u64 = 7;

/// `MIGRATIONS[i]` upgrades a store from schema `i + 1` to `i + 2`, inside the same write
/// transaction that records the new version, so a crash mid-migration leaves the old schema.
type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;
const MIGRATIONS: &[Migration] = &[
    build_indexes,
    vm_tables,
    ha_tables,
    net_tables,
    port_table,
    settings_table,
];

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

/// Index (schema 2): a machine's hostname → its MAC (as u64). Kept by `Tx::put_machine`
/// and `Tx::remove_machine`, so a hostname is found without reading every machine.
pub(super) const MACHINE_HOSTNAMES: TableDefinition<&str, u64> =
    TableDefinition::new("machine_hostnames");
/// Index (schema 2): a machine's reserved IPv4 address (as u32) → its MAC (as u64).
pub(super) const MACHINE_IPS: TableDefinition<u32, u64> = TableDefinition::new("machine_ips");
/// Index (schema 2): token id → the token's hash (its key in [`TOKENS`]), so tokens are
/// listed by id one page at a time and removed by id without a scan.
pub(super) const TOKEN_IDS: TableDefinition<u64, &str> = TableDefinition::new("token_ids");
/// Index (schema 2): rules in evaluation order, (priority, id) → ().
/// VMs by name (schema 3).
pub(super) const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
/// (host MAC, VM name) for every placed VM: a host's VMs without a scan.
pub(super) const VMS_BY_HOST: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("vms_by_host");
/// NIC MAC → VM name: a MAC is used by one VM NIC at most.
pub(super) const VM_MACS: TableDefinition<u64, &str> = TableDefinition::new("vm_macs");
/// VMs' timelines: (VM id, event sequence) → event, and the count per VM.
pub(super) const VM_EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("vm_events");
/// Host MAC → the generation of its VM set, raised by every change its agent must act on;
/// the agent's desired generation is the machine's plus this.
pub(super) const VM_GENERATIONS: TableDefinition<u64, u64> = TableDefinition::new("vm_generations");
pub(super) const VM_EVENT_COUNTS: TableDefinition<u64, u64> =
    TableDefinition::new("vm_event_counts");
/// Machine MAC → its power settings (schema 4). Holds BMC passwords: never listed by the
/// API, only written and used.
pub(super) const POWER: TableDefinition<u64, &[u8]> = TableDefinition::new("power");
/// Alarms by id (schema 4), raised and cleared.
pub(super) const ALARMS: TableDefinition<u64, &[u8]> = TableDefinition::new("alarms");
/// (kind, subject) → id of the alarm raised and not cleared, so one condition raises once.
pub(super) const ALARMS_ACTIVE: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("alarms_active");
/// Host MAC → its latest fencing and evacuation (schema 4).
pub(super) const EVACUATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("evacuations");
/// Tenant networks by name (schema 5).
pub(super) const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
/// VNI → the network's name: a VNI belongs to one network.
pub(super) const NETWORK_VNIS: TableDefinition<u32, &str> = TableDefinition::new("network_vnis");
/// Security groups by name (schema 5).
pub(super) const SECGROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("secgroups");
/// Ports by MAC (`aa:bb:…`): VM NICs on tenant networks and host-owned ports.
pub(super) const PORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("ports");
/// Site settings and the console's admin password hash, by key (schema 7).
pub(super) const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
pub(super) const RULE_ORDER: TableDefinition<(i32, u64), ()> = TableDefinition::new("rule_order");

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
        txn.open_table(MACHINE_HOSTNAMES)?;
        txn.open_table(MACHINE_IPS)?;
        txn.open_table(TOKEN_IDS)?;
        txn.open_table(RULE_ORDER)?;
        txn.open_table(VMS)?;
        txn.open_table(VMS_BY_HOST)?;
        txn.open_table(VM_MACS)?;
        txn.open_table(VM_EVENTS)?;
        txn.open_table(VM_EVENT_COUNTS)?;
        txn.open_table(VM_GENERATIONS)?;
        txn.open_table(POWER)?;
        txn.open_table(ALARMS)?;
        txn.open_table(ALARMS_ACTIVE)?;
        txn.open_table(EVACUATIONS)?;
        txn.open_table(NETWORKS)?;
        txn.open_table(NETWORK_VNIS)?;
        txn.open_table(SECGROUPS)?;
        txn.open_table(PORTS)?;
        txn.open_table(SETTINGS)?;
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

/// Schema 4 → 5: tenant networks and security groups, created empty by `init`.
fn net_tables(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Schema 6 → 7: site settings and the console password (issue 15), created empty by
/// `init`.
fn settings_table(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Schema 5 → 6: ports (issue 14), created empty by `init`.
fn port_table(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Schema 3 → 4: power settings, alarms and evacuations, created empty by `init`.
fn ha_tables(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Schema 2 → 3: the VM tables, created empty by `init` before migrations run.
fn vm_tables(_txn: &WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Schema 1 → 2: builds the index tables from the records. Schema 1 already refused a
/// second machine with the same hostname or address, so the records cannot disagree; if
/// they do (a store edited by hand), the first machine in MAC order keeps the entry and the
/// other is logged.
fn build_indexes(txn: &WriteTransaction) -> Result<(), StoreError> {
    let machines = txn.open_table(MACHINES)?;
    let mut hostnames = txn.open_table(MACHINE_HOSTNAMES)?;
    let mut ips = txn.open_table(MACHINE_IPS)?;
    for row in machines.iter()? {
        let (k, v) = row?;
        let m: Machine = decode("machines", v.value())?;
        if let Some(h) = m.hostname.as_deref() {
            let held = hostnames.get(h)?.map(|v| v.value());
            match held {
                Some(other) => {
                    tracing::warn!(mac = %m.mac, hostname = h, other, "migration: hostname held by two machines; the first keeps it")
                }
                None => {
                    hostnames.insert(h, k.value())?;
                }
            }
        }
        if let Some(ip) = m.reserved_ip {
            let held = ips.get(u32::from(ip))?.map(|v| v.value());
            match held {
                Some(other) => {
                    tracing::warn!(mac = %m.mac, %ip, other, "migration: address reserved for two machines; the first keeps it")
                }
                None => {
                    ips.insert(u32::from(ip), k.value())?;
                }
            }
        }
    }
    let tokens = txn.open_table(TOKENS)?;
    let mut token_ids = txn.open_table(TOKEN_IDS)?;
    for row in tokens.iter()? {
        let (k, v) = row?;
        let rec: super::TokenRecord = decode("tokens", v.value())?;
        token_ids.insert(rec.info.id, k.value())?;
    }
    let rules = txn.open_table(RULES)?;
    let mut order = txn.open_table(RULE_ORDER)?;
    for row in rules.iter()? {
        let (_, v) = row?;
        let rule: cosm_wire::Rule = decode("rules", v.value())?;
        order.insert((rule.priority, rule.id), ())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::Noop;
    use crate::store::{Store, StoreOptions, TokenRecord};
    use cosm_wire::{MacAddr, Scope, Timestamp, TokenInfo};

    fn machine(mac: &str, hostname: Option<&str>, ip: Option<&str>) -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": 1, "mac": mac, "hostname": hostname, "role": null, "state": "discovered",
            "reserved_ip": ip, "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z", "state_since": "2024-01-01T00:00:00Z",
            "desired_generation": 0, "pending_actions": []
        }))
        .unwrap()
    }

    /// Issue 11, item 12: a store written by schema 1 (no index tables) opens, is migrated
    /// to schema 2, and gets its indexes built from its records.
    #[test]
    fn a_schema_1_store_opens_with_its_indexes_built() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosm.redb");
        let (a, b, c) = (
            "52:54:00:00:20:01",
            "52:54:00:00:20:02",
            "52:54:00:00:20:03",
        );
        {
            // What schema 1 wrote: its tables and records only.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                txn.open_table(META)
                    .unwrap()
                    .insert("schema_version", 1)
                    .unwrap();
                let mut ms = txn.open_table(MACHINES).unwrap();
                for m in [
                    machine(a, Some("web-1"), Some("10.1.0.5")),
                    machine(b, Some("web-2"), None),
                    machine(c, None, None),
                ] {
                    ms.insert(m.mac.to_u64(), serde_json::to_vec(&m).unwrap().as_slice())
                        .unwrap();
                }
                let mut ts = txn.open_table(TOKENS).unwrap();
                for id in [3u64, 1] {
                    let rec = TokenRecord {
                        info: TokenInfo {
                            id,
                            name: format!("t{id}"),
                            scope: Scope::Read,
                            created_at: Timestamp::now(),
                            mac: None,
                        },
                        hash: format!("hash{id}"),
                    };
                    ts.insert(
                        rec.hash.as_str(),
                        serde_json::to_vec(&rec).unwrap().as_slice(),
                    )
                    .unwrap();
                }
                let mut rules = txn.open_table(RULES).unwrap();
                for (id, priority) in [(1u64, 50), (2, -3)] {
                    let rule = serde_json::json!({"id": id, "role": "host", "priority": priority, "description": "",
                        "match": {}, "created_at": "2024-01-01T00:00:00Z"});
                    rules
                        .insert(id, serde_json::to_vec(&rule).unwrap().as_slice())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let s = Store::<Noop>::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let mac = |t: &str| -> MacAddr { t.parse().unwrap() };
        assert_eq!(s.machine_with_hostname("web-1").unwrap(), Some(mac(a)));
        assert_eq!(s.machine_with_hostname("web-2").unwrap(), Some(mac(b)));
        assert_eq!(
            s.machine_with_ip("10.1.0.5".parse().unwrap()).unwrap(),
            Some(mac(a))
        );
        let ids: Vec<u64> = s
            .tokens_page(None, 10)
            .unwrap()
            .items
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, [1, 3]);
        let rules: Vec<u64> = s
            .rules_page(None, 10)
            .unwrap()
            .items
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(rules, [2, 1]);
        drop(s);
        // Opening again runs no migration twice.
        let s = Store::<Noop>::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(s.machine_with_hostname("web-1").unwrap(), Some(mac(a)));
    }
}
