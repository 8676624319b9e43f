//! The appliance's store: the only module that touches redb.
//!
//! Every write is a [`Command`] value applied in one place ([`apply_command`]), by one writer
//! thread that groups the commands waiting at the same moment into one write transaction,
//! so one fsync covers many writes and the rate is not one fsync per write. A caller's
//! future resolves only after the transaction holding its command is durable on disk.
//! Reads go straight to redb through read transactions and never wait for the writer.
//!
//! Later the same commands travel through a Raft log so that three appliances share one
//! state; callers build commands and read, and need not change when that happens.
//!
//! Records are JSON values in redb tables; the schema version in the `meta` table decides
//! which migrations run at open.

use crate::lifecycle::{self, IllegalTransition};
use crate::rules;
use cosm_wire::{
    CreateMachine, Event, EventKind, Lease, MacAddr, Machine, MachineId, MachineState, Role,
    RoleName, RoleSpec, Rule, RuleSpec, Scope, Timestamp, TokenInfo, UpdateMachine,
};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The schema this binary writes. Bump it together with a new entry in [`MIGRATIONS`].
pub const SCHEMA_VERSION: u64 = 1;

/// `MIGRATIONS[i]` upgrades a store from schema `i + 1` to `i + 2`, inside the same write
/// transaction that records the new version, so a crash mid-migration leaves the old schema.
type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;
const MIGRATIONS: &[Migration] = &[];

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MACHINES: TableDefinition<u64, &[u8]> = TableDefinition::new("machines");
const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
const RULES: TableDefinition<u64, &[u8]> = TableDefinition::new("rules");
/// Keyed by (MAC as u64, global event sequence) so one machine's timeline is one range.
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
const EVENT_COUNTS: TableDefinition<u64, u64> = TableDefinition::new("event_counts");
/// DHCP leases keyed by IPv4 address (as u32).
const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Keyed by the SHA-256 of the token (hex); the token itself is never stored.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

const SEED_ROLES: [(&str, &str); 4] = [
    (
        "center",
        "Management node: runs the control plane and its database",
    ),
    ("web", "Portal and REST API front end"),
    ("host", "Hypervisor (KVM or Xen) running virtual machines"),
    (
        "storage",
        "Shared storage: images, virtual disks, metadata (NFS, iSCSI)",
    ),
];

/// The largest number of commands grouped into one transaction.
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    #[error("{message}")]
    Conflict { message: String },
    #[error("machine {mac}: {err}")]
    IllegalTransition {
        mac: MacAddr,
        err: IllegalTransition,
    },
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "the store was written by a newer COSM (schema {found}); this binary understands schema {supported} at most"
    )]
    TooNew { found: u64, supported: u64 },
    #[error("store I/O failed: {message}")]
    Db { message: String },
    #[error("corrupt record in table {table}")]
    Corrupt {
        table: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the store writer has stopped")]
    WriterGone,
}

macro_rules! db_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db { message: redb::Error::from(e).to_string() }
            }
        }
    )*};
}
db_from!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A stored API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub info: TokenInfo,
    pub hash: String,
}

/// Every write the store knows. Built by callers, applied by the writer thread.
#[derive(Debug, Clone)]
pub enum Command {
    CreateMachine(CreateMachine),
    UpdateMachine {
        mac: MacAddr,
        update: UpdateMachine,
    },
    SetRole {
        mac: MacAddr,
        role: Option<RoleName>,
    },
    SetState {
        mac: MacAddr,
        to: MachineState,
        reason: Option<String>,
    },
    DeleteMachine {
        mac: MacAddr,
    },
    CreateRole(RoleSpec),
    DeleteRole(RoleName),
    CreateRule(RuleSpec),
    DeleteRule(u64),
    CreateToken {
        name: String,
        scope: Scope,
        hash: String,
    },
    DeleteToken(u64),
    /// An agent enrols: the machine is created (role rules apply) or its inventory updated,
    /// and its previous agent credentials are replaced by `credential_hash`.
    Enroll {
        mac: MacAddr,
        inventory: cosm_wire::Inventory,
        credential_hash: String,
    },
    /// Queues an action for a machine's agent and bumps its desired generation.
    QueueAction {
        mac: MacAddr,
        kind: String,
    },
    /// An agent reports on its actions: finished ones leave the queue, each lands on the
    /// timeline.
    ReportObserved {
        mac: MacAddr,
        results: Vec<cosm_wire::ActionResult>,
    },
    /// Records a DHCP lease change (bound, released, declined).
    PutLease(Lease),
    /// Appends an event to a machine's timeline; a MAC with no machine record is ignored.
    RecordEvent {
        mac: MacAddr,
        kind: EventKind,
        message: String,
    },
    /// An image's file is in place (renamed into the repository); record it, replacing
    /// any record of the same name.
    PutImage(cosm_wire::Image),
    DeleteImage(String),
}

impl Command {
    /// Does this command change machine records (so DHCP must reload its hosts)?
    fn touches_machines(&self) -> bool {
        matches!(
            self,
            Command::CreateMachine(_)
                | Command::UpdateMachine { .. }
                | Command::SetRole { .. }
                | Command::SetState { .. }
                | Command::DeleteMachine { .. }
        )
    }
}

/// What a command produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Machine(Machine),
    Role(Role),
    Rule(Rule),
    Token(TokenInfo),
    Deleted,
    /// Written (or, for an event of an unknown MAC, deliberately skipped).
    Done,
}

/// Counters the writer keeps, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub commits: AtomicU64,
    pub commands: AtomicU64,
    pub failed_commits: AtomicU64,
}

/// Store settings.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Events kept per machine; older ones are dropped.
    pub events_per_machine: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            events_per_machine: 1000,
        }
    }
}

struct Job {
    cmd: Command,
    at: Timestamp,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Handle to the store. Cheap to clone; when the last clone drops, the writer finishes
/// the commands it holds and the database file is closed before the drop returns.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: Arc<Writer>,
    stats: Arc<StoreStats>,
    machines_changed: tokio::sync::watch::Receiver<u64>,
}

struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn jobs(&self) -> Result<&mpsc::Sender<Job>, StoreError> {
        self.jobs.as_ref().ok_or(StoreError::WriterGone)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop; joining it releases its database handle.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store file, migrates it, and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        init_schema(&db)?;
        let db = Arc::new(db);
        let stats = Arc::new(StoreStats::default());
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer_db = db.clone();
        let writer_stats = stats.clone();
        let (changed_tx, machines_changed) = tokio::sync::watch::channel(0u64);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer_db, rx, options, &writer_stats, &changed_tx))
            .map_err(|e| StoreError::Db {
                message: format!("cannot start the writer thread: {e}"),
            })?;
        let writer = Arc::new(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        });
        Ok(Store {
            db,
            writer,
            stats,
            machines_changed,
        })
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Bumped after every commit that changed machine records.
    pub fn machines_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.machines_changed.clone()
    }

    /// Every lease record, by address.
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        read_all(&self.db, LEASES, "leases")
    }

    /// Every image record, by name.
    pub fn images(&self) -> Result<Vec<cosm_wire::Image>, StoreError> {
        read_all(&self.db, IMAGES, "images")
    }

    pub fn image(&self, name: &str) -> Result<Option<cosm_wire::Image>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(IMAGES)?;
        let v = t.get(name)?;
        v.map(|v| decode("images", v.value())).transpose()
    }

    /// The lease record of one address, if any.
    pub fn lease(&self, ip: std::net::Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(LEASES)?;
        let v = t.get(u32::from(ip))?;
        v.map(|v| decode("leases", v.value())).transpose()
    }

    /// Applies one command; resolves once it is durable (or refused).
    pub async fn apply(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            cmd,
            at: Timestamp::now(),
            reply,
        };
        self.writer
            .jobs()?
            .send(job)
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues a command now, in the caller's order, without waiting; the returned future
    /// resolves once it is durable (or refused). `Err(cmd)` gives the command back when the
    /// writer's queue is full (the caller may [`Store::apply`] it instead) or gone.
    #[allow(clippy::result_large_err)]
    pub fn submit(
        &self,
        cmd: Command,
    ) -> Result<impl std::future::Future<Output = Result<Outcome, StoreError>>, Command> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            cmd,
            at: Timestamp::now(),
            reply,
        };
        let Ok(jobs) = self.writer.jobs() else {
            return Err(job.cmd);
        };
        match jobs.try_send(job) {
            Ok(()) => Ok(async move { rx.await.map_err(|_| StoreError::WriterGone)? }),
            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                Err(job.cmd)
            }
        }
    }

    /// [`Store::apply`] for code outside an async runtime (offline CLI commands).
    pub fn apply_blocking(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            cmd,
            at: Timestamp::now(),
            reply,
        };
        self.writer
            .jobs()?
            .blocking_send(job)
            .map_err(|_| StoreError::WriterGone)?;
        rx.blocking_recv().map_err(|_| StoreError::WriterGone)?
    }

    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(META)?;
        Ok(t.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn machine(&self, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(MACHINES)?;
        let v = t.get(mac.to_u64())?;
        v.map(|v| decode("machines", v.value())).transpose()
    }

    /// Machines in MAC order, optionally only those with this role and/or state.
    pub fn machines(
        &self,
        role: Option<&RoleName>,
        state: Option<MachineState>,
    ) -> Result<Vec<Machine>, StoreError> {
        let mut all: Vec<Machine> = read_all(&self.db, MACHINES, "machines")?;
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

    pub fn roles(&self) -> Result<Vec<Role>, StoreError> {
        read_all(&self.db, ROLES, "roles")
    }

    pub fn role(&self, name: &RoleName) -> Result<Option<Role>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(ROLES)?;
        let v = t.get(name.as_str())?;
        v.map(|v| decode("roles", v.value())).transpose()
    }

    /// Rules in evaluation order.
    pub fn rules(&self) -> Result<Vec<Rule>, StoreError> {
        let mut out: Vec<Rule> = read_all(&self.db, RULES, "rules")?;
        out.sort_by_key(|r| (r.priority, r.id));
        Ok(out)
    }

    pub fn rule(&self, id: u64) -> Result<Option<Rule>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(RULES)?;
        let v = t.get(id)?;
        v.map(|v| decode("rules", v.value())).transpose()
    }

    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(TOKENS)?;
        let v = t.get(hash)?;
        v.map(|v| decode("tokens", v.value())).transpose()
    }

    pub fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let records: Vec<TokenRecord> = read_all(&self.db, TOKENS, "tokens")?;
        let mut out: Vec<TokenInfo> = records.into_iter().map(|r| r.info).collect();
        out.sort_by_key(|t| t.id);
        Ok(out)
    }
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { table, source })
}

/// Every record of a table, in key order.
fn read_all<K: redb::Key + 'static, T: DeserializeOwned>(
    db: &Database,
    def: TableDefinition<K, &[u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let r = db.begin_read()?;
    let t = r.open_table(def)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        out.push(decode(name, v.value())?);
    }
    Ok(out)
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain data types to JSON cannot fail (no maps with non-string
    // keys, no custom serializers that error).
    serde_json::to_vec(v).expect("store records serialize to JSON")
}

/// Creates missing tables, seeds a new store, and runs pending migrations.
fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        txn.open_table(MACHINES)?;
        txn.open_table(RULES)?;
        txn.open_table(EVENTS)?;
        txn.open_table(EVENT_COUNTS)?;
        txn.open_table(TOKENS)?;
        txn.open_table(LEASES)?;
        txn.open_table(IMAGES)?;
        let found = meta.get("schema_version")?.map(|v| v.value());
        match found {
            None => {
                let mut roles = txn.open_table(ROLES)?;
                let now = Timestamp::now();
                for (name, description) in SEED_ROLES {
                    let role = Role {
                        name: name.parse().expect("seed role names are valid"),
                        description: description.to_string(),
                        builtin: true,
                        created_at: now,
                    };
                    roles.insert(name, encode(&role).as_slice())?;
                }
                meta.insert("schema_version", SCHEMA_VERSION)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(v) => {
                txn.open_table(ROLES)?;
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

fn writer_loop(
    db: &Database,
    mut rx: mpsc::Receiver<Job>,
    options: StoreOptions,
    stats: &StoreStats,
    machines_changed: &tokio::sync::watch::Sender<u64>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = apply_batch(db, &batch, options);
        stats
            .commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match results {
            Ok(results) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                if batch.iter().any(|j| j.cmd.touches_machines()) {
                    machines_changed.send_modify(|n| *n += 1);
                }
                for (job, result) in batch.into_iter().zip(results) {
                    // A caller that went away (client disconnected) does not undo its write.
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, commands = batch.len(), "store commit failed; nothing in this batch was written");
                let message = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Db {
                        message: message.clone(),
                    }));
                }
            }
        }
    }
}

/// Applies a batch in one transaction. A command refused for a reason of its own (conflict,
/// invalid input) leaves no trace and does not affect the others; an I/O error fails the
/// whole batch and nothing is written.
fn apply_batch(
    db: &Database,
    batch: &[Job],
    options: StoreOptions,
) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut tx = Tx {
            txn: &txn,
            at: job.at,
            options,
        };
        match apply_command(&mut tx, &job.cmd) {
            Err(e @ (StoreError::Db { .. } | StoreError::Corrupt { .. })) => return Err(e),
            r => results.push(r),
        }
    }
    txn.commit()?;
    Ok(results)
}

/// One command inside a write transaction. Every command checks everything it can refuse
/// for before it writes anything, so a refused command leaves the transaction untouched.
struct Tx<'t> {
    txn: &'t WriteTransaction,
    at: Timestamp,
    options: StoreOptions,
}

fn apply_command(tx: &mut Tx<'_>, cmd: &Command) -> Result<Outcome, StoreError> {
    match cmd {
        Command::CreateMachine(spec) => create_machine(tx, spec).map(Outcome::Machine),
        Command::UpdateMachine { mac, update } => {
            update_machine(tx, *mac, update).map(Outcome::Machine)
        }
        Command::SetRole { mac, role } => {
            let m = tx.machine(*mac)?;
            if let Some(r) = role {
                tx.require_role(r)?;
            }
            set_role(tx, m, role.clone()).map(Outcome::Machine)
        }
        Command::SetState { mac, to, reason } => {
            let m = tx.machine(*mac)?;
            set_state(tx, m, *to, reason.as_deref()).map(Outcome::Machine)
        }
        Command::DeleteMachine { mac } => delete_machine(tx, *mac).map(|_| Outcome::Deleted),
        Command::CreateRole(spec) => create_role(tx, spec).map(Outcome::Role),
        Command::DeleteRole(name) => delete_role(tx, name).map(|_| Outcome::Deleted),
        Command::CreateRule(spec) => create_rule(tx, spec).map(Outcome::Rule),
        Command::DeleteRule(id) => {
            let mut t = tx.txn.open_table(RULES)?;
            if t.remove(*id)?.is_none() {
                return Err(StoreError::NotFound {
                    what: "rule",
                    key: id.to_string(),
                });
            }
            Ok(Outcome::Deleted)
        }
        Command::CreateToken { name, scope, hash } => {
            let id = tx.next_id("next_token_id")?;
            let info = TokenInfo {
                id,
                name: name.clone(),
                scope: *scope,
                created_at: tx.at,
                mac: None,
            };
            let rec = TokenRecord {
                info: info.clone(),
                hash: hash.clone(),
            };
            tx.txn
                .open_table(TOKENS)?
                .insert(hash.as_str(), encode(&rec).as_slice())?;
            Ok(Outcome::Token(info))
        }
        Command::Enroll {
            mac,
            inventory,
            credential_hash,
        } => enroll(tx, *mac, inventory, credential_hash).map(Outcome::Machine),
        Command::QueueAction { mac, kind } => {
            let mut m = tx.machine(*mac)?;
            let id = tx.next_id("next_action_id")?;
            m.pending_actions.push(cosm_wire::AgentAction {
                id,
                kind: kind.clone(),
                queued_at: tx.at,
            });
            m.desired_generation += 1;
            tx.event(
                *mac,
                EventKind::AgentAction,
                format!(
                    "action {id} ({kind}) queued; desired generation {}",
                    m.desired_generation
                ),
                None,
                None,
            )?;
            tx.put_machine(&mut m)?;
            Ok(Outcome::Machine(m))
        }
        Command::ReportObserved { mac, results } => {
            let mut m = tx.machine(*mac)?;
            for r in results {
                let Some(pos) = m.pending_actions.iter().position(|a| a.id == r.id) else {
                    continue;
                };
                let action = m.pending_actions.remove(pos);
                let status = match r.status {
                    cosm_wire::ActionStatus::Done => "done",
                    cosm_wire::ActionStatus::Failed => "failed",
                    cosm_wire::ActionStatus::Unsupported => "unsupported by the agent",
                };
                let detail = if r.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.message)
                };
                tx.event(
                    *mac,
                    EventKind::AgentAction,
                    format!("action {} ({}) {status}{detail}", action.id, action.kind),
                    None,
                    None,
                )?;
            }
            tx.put_machine(&mut m)?;
            Ok(Outcome::Machine(m))
        }
        Command::PutLease(lease) => {
            let mut t = tx.txn.open_table(LEASES)?;
            t.insert(u32::from(lease.ip), encode(lease).as_slice())?;
            Ok(Outcome::Done)
        }
        Command::RecordEvent { mac, kind, message } => {
            if tx.machine(*mac).is_ok() {
                tx.event(*mac, *kind, message.clone(), None, None)?;
            }
            Ok(Outcome::Done)
        }
        Command::PutImage(image) => {
            let mut t = tx.txn.open_table(IMAGES)?;
            t.insert(image.name.as_str(), encode(image).as_slice())?;
            Ok(Outcome::Done)
        }
        Command::DeleteImage(name) => {
            let mut t = tx.txn.open_table(IMAGES)?;
            if t.remove(name.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    what: "image",
                    key: name.clone(),
                });
            }
            Ok(Outcome::Deleted)
        }
        Command::DeleteToken(id) => {
            let mut t = tx.txn.open_table(TOKENS)?;
            let mut found = None;
            for row in t.iter()? {
                let (k, v) = row?;
                let rec: TokenRecord = decode("tokens", v.value())?;
                if rec.info.id == *id {
                    found = Some(k.value().to_string());
                    break;
                }
            }
            let Some(hash) = found else {
                return Err(StoreError::NotFound {
                    what: "token",
                    key: id.to_string(),
                });
            };
            t.remove(hash.as_str())?;
            Ok(Outcome::Deleted)
        }
    }
}

impl Tx<'_> {
    fn next_id(&mut self, key: &str) -> Result<u64, StoreError> {
        let mut meta = self.txn.open_table(META)?;
        let next = meta.get(key)?.map(|v| v.value()).unwrap_or(1);
        meta.insert(key, next + 1)?;
        Ok(next)
    }

    fn machine(&self, mac: MacAddr) -> Result<Machine, StoreError> {
        let t = self.txn.open_table(MACHINES)?;
        let v = t.get(mac.to_u64())?;
        match v {
            Some(v) => decode("machines", v.value()),
            None => Err(StoreError::NotFound {
                what: "machine",
                key: mac.to_string(),
            }),
        }
    }

    fn put_machine(&mut self, m: &mut Machine) -> Result<(), StoreError> {
        m.updated_at = self.at;
        let mut t = self.txn.open_table(MACHINES)?;
        t.insert(m.mac.to_u64(), encode(m).as_slice())?;
        Ok(())
    }

    fn all_machines(&self) -> Result<Vec<Machine>, StoreError> {
        let t = self.txn.open_table(MACHINES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode("machines", v.value())?);
        }
        Ok(out)
    }

    fn require_role(&self, role: &RoleName) -> Result<(), StoreError> {
        let t = self.txn.open_table(ROLES)?;
        if t.get(role.as_str())?.is_some() {
            Ok(())
        } else {
            let names: Vec<String> = t
                .iter()?
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                .collect();
            Err(StoreError::Invalid {
                field: "role",
                message: format!("unknown role {role:?}; known roles: {}", names.join(", ")),
            })
        }
    }

    fn event(
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
        // Bounded retention: drop the oldest events of this machine beyond the limit.
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
        Ok(())
    }

    fn transition(
        &mut self,
        m: &mut Machine,
        to: MachineState,
        why: &str,
    ) -> Result<(), StoreError> {
        lifecycle::check(m.state, to)
            .map_err(|err| StoreError::IllegalTransition { mac: m.mac, err })?;
        let from = m.state;
        if to == MachineState::Lost {
            m.lost_from = Some(from);
        } else if from == MachineState::Lost {
            m.lost_from = None;
        }
        m.state = to;
        m.state_since = self.at;
        self.event(
            m.mac,
            EventKind::StateChanged,
            why.to_string(),
            Some(from),
            Some(to),
        )
    }
}

fn enroll(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    inventory: &cosm_wire::Inventory,
    credential_hash: &str,
) -> Result<Machine, StoreError> {
    let mut m = match tx.machine(mac) {
        Ok(mut m) => {
            m.inventory = Some(inventory.clone());
            tx.put_machine(&mut m)?;
            m
        }
        Err(StoreError::NotFound { .. }) => create_machine(
            tx,
            &CreateMachine {
                mac,
                hostname: None,
                role: None,
                reserved_ip: None,
                inventory: Some(inventory.clone()),
            },
        )?,
        Err(e) => return Err(e),
    };
    // One credential per machine: enrolling again revokes the previous one.
    let mut tokens = tx.txn.open_table(TOKENS)?;
    let mut stale = Vec::new();
    for row in tokens.iter()? {
        let (k, v) = row?;
        let rec: TokenRecord = decode("tokens", v.value())?;
        if rec.info.scope == Scope::Agent && rec.info.mac == Some(mac) {
            stale.push(k.value().to_string());
        }
    }
    for k in stale {
        tokens.remove(k.as_str())?;
    }
    drop(tokens);
    let id = tx.next_id("next_token_id")?;
    let info = TokenInfo {
        id,
        name: format!("agent {mac}"),
        scope: Scope::Agent,
        created_at: tx.at,
        mac: Some(mac),
    };
    let rec = TokenRecord {
        info,
        hash: credential_hash.to_string(),
    };
    tx.txn
        .open_table(TOKENS)?
        .insert(credential_hash, encode(&rec).as_slice())?;
    let gib = inventory.memory_bytes as f64 / (1u64 << 30) as f64;
    tx.event(
        mac,
        EventKind::AgentRegistered,
        format!(
            "agent registered: {} CPUs, {gib:.1} GiB memory, {} disks, {} NICs, kernel {}",
            inventory.cpu_count(),
            inventory.disks.len(),
            inventory.nics.len(),
            inventory.kernel.as_deref().unwrap_or("unknown")
        ),
        None,
        None,
    )?;
    m.updated_at = tx.at;
    Ok(m)
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

/// Refuses a hostname or reserved address that another machine already holds.
fn check_unique(
    tx: &Tx<'_>,
    mac: MacAddr,
    hostname: Option<&str>,
    ip: Option<Ipv4Addr>,
) -> Result<(), StoreError> {
    if hostname.is_none() && ip.is_none() {
        return Ok(());
    }
    for other in tx.all_machines()? {
        if other.mac == mac {
            continue;
        }
        if hostname.is_some() && other.hostname.as_deref() == hostname {
            return Err(StoreError::Conflict {
                message: format!(
                    "hostname {} is already used by machine {}",
                    hostname.unwrap_or_default(),
                    other.mac
                ),
            });
        }
        if ip.is_some() && other.reserved_ip == ip {
            return Err(StoreError::Conflict {
                message: format!(
                    "address {} is already reserved for machine {}",
                    ip.map(|i| i.to_string()).unwrap_or_default(),
                    other.mac
                ),
            });
        }
    }
    Ok(())
}

fn create_machine(tx: &mut Tx<'_>, spec: &CreateMachine) -> Result<Machine, StoreError> {
    if let Ok(existing) = tx.machine(spec.mac) {
        return Err(StoreError::Conflict {
            message: format!(
                "machine {} already exists (state {})",
                spec.mac, existing.state
            ),
        });
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
    let rule = if spec.role.is_none() {
        let t = tx.txn.open_table(RULES)?;
        let mut all: Vec<Rule> = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            all.push(decode("rules", v.value())?);
        }
        drop(t);
        let hit = rules::first_match(&all, &spec.mac, spec.inventory.as_ref()).cloned();
        if let Some(r) = &hit {
            // A rule may name a role deleted since; such a rule is skipped, not obeyed.
            if tx.require_role(&r.role).is_err() {
                tracing::warn!(rule = r.id, role = %r.role, "role rule names a role that no longer exists");
                None
            } else {
                hit
            }
        } else {
            None
        }
    } else {
        None
    };

    let id = MachineId(tx.next_id("next_machine_id")?);
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
        tx.event(
            m.mac,
            EventKind::RoleChanged,
            format!("role set to {role}"),
            None,
            None,
        )?;
        tx.transition(&mut m, MachineState::Ready, "role given at registration")?;
    } else if let Some(rule) = rule {
        m.role = Some(rule.role.clone());
        tx.event(
            m.mac,
            EventKind::RuleMatched,
            format!(
                "rule {} (priority {}) gave role {}",
                rule.id, rule.priority, rule.role
            ),
            None,
            None,
        )?;
        tx.transition(&mut m, MachineState::Ready, "role given by a rule")?;
    }
    tx.put_machine(&mut m)?;
    Ok(m)
}

/// States in which the role may be changed, and what happens to the state.
fn set_role(
    tx: &mut Tx<'_>,
    mut m: Machine,
    role: Option<RoleName>,
) -> Result<Machine, StoreError> {
    use MachineState::*;
    if m.role == role {
        return Ok(m);
    }
    let next_state = match (m.state, &role) {
        (Discovered | Failed, Some(_)) => Some(Ready),
        (Ready, Some(_)) => None,
        (Ready, None) => Some(Discovered),
        (Failed, None) => None,
        // A running machine changes role in place; its agent converges to the new role
        // (the seed design: storage can become host without stopping the service).
        (Deployed | Active, Some(_)) => None,
        (state, _) => {
            return Err(StoreError::Conflict {
                message: format!(
                    "machine {} is {state}: its role can be set in states discovered, ready, failed, deployed and active, and cleared in ready and failed",
                    m.mac
                ),
            })
        }
    };
    let msg = match (&m.role, &role) {
        (None, Some(r)) => format!("role set to {r}"),
        (Some(old), Some(r)) => format!("role changed from {old} to {r}"),
        (Some(old), None) => format!("role {old} cleared"),
        (None, None) => unreachable!("equal roles returned early"),
    };
    m.role = role;
    tx.event(m.mac, EventKind::RoleChanged, msg, None, None)?;
    if let Some(to) = next_state {
        tx.transition(&mut m, to, "role changed")?;
    }
    tx.put_machine(&mut m)?;
    Ok(m)
}

fn set_state(
    tx: &mut Tx<'_>,
    mut m: Machine,
    to: MachineState,
    reason: Option<&str>,
) -> Result<Machine, StoreError> {
    lifecycle::check(m.state, to)
        .map_err(|err| StoreError::IllegalTransition { mac: m.mac, err })?;
    // A lost machine returns only to the state it was lost from (or is fenced or retired):
    // a discovered machine that went silent must not come back as `deployed`.
    if m.state == MachineState::Lost
        && !matches!(to, MachineState::Fenced | MachineState::Retired)
        && m.lost_from.is_some_and(|from| from != to)
    {
        return Err(StoreError::Conflict {
            message: format!(
                "machine {} was lost while {}; it can only return to {} (or be fenced or retired)",
                m.mac,
                m.lost_from.map(|s| s.as_str()).unwrap_or("?"),
                m.lost_from.map(|s| s.as_str()).unwrap_or("?"),
            ),
        });
    }
    if to == MachineState::Ready && m.role.is_none() {
        return Err(StoreError::Conflict {
            message: format!("machine {} has no role; set a role to make it ready", m.mac),
        });
    }
    if to == MachineState::Discovered {
        if let Some(old) = m.role.take() {
            tx.event(
                m.mac,
                EventKind::RoleChanged,
                format!("role {old} cleared"),
                None,
                None,
            )?;
        }
    }
    tx.transition(&mut m, to, reason.unwrap_or("requested"))?;
    tx.put_machine(&mut m)?;
    Ok(m)
}

fn update_machine(tx: &mut Tx<'_>, mac: MacAddr, u: &UpdateMachine) -> Result<Machine, StoreError> {
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
        set_role_allowed(&m, role.as_ref())?;
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
            notes.push(format!(
                "reserved address {}",
                ip.map(|i| i.to_string())
                    .unwrap_or_else(|| "cleared".into())
            ));
            m.reserved_ip = ip;
        }
    }
    if !notes.is_empty() {
        tx.event(mac, EventKind::Updated, notes.join(", "), None, None)?;
    }
    match &u.role {
        Some(role) => set_role(tx, m, role.clone()),
        None => {
            tx.put_machine(&mut m)?;
            Ok(m)
        }
    }
}

/// The same refusals as [`set_role`], without writing.
fn set_role_allowed(m: &Machine, role: Option<&RoleName>) -> Result<(), StoreError> {
    use MachineState::*;
    if m.role.as_ref() == role {
        return Ok(());
    }
    match (m.state, role) {
        (Discovered | Failed | Ready | Deployed | Active, Some(_)) | (Ready | Failed, None) => Ok(()),
        (state, _) => Err(StoreError::Conflict {
            message: format!(
                "machine {} is {state}: its role can be set in states discovered, ready, failed, deployed and active, and cleared in ready and failed",
                m.mac
            ),
        }),
    }
}

fn delete_machine(tx: &mut Tx<'_>, mac: MacAddr) -> Result<(), StoreError> {
    let m = tx.machine(mac)?;
    if !lifecycle::DELETABLE.contains(&m.state) {
        return Err(StoreError::Conflict {
            message: format!(
                "machine {mac} is {}: retire it first (machines can be deleted when discovered, ready, failed or retired)",
                m.state
            ),
        });
    }
    let k = mac.to_u64();
    tx.txn.open_table(MACHINES)?.remove(k)?;
    let mut events = tx.txn.open_table(EVENTS)?;
    let keys: Vec<(u64, u64)> = events
        .range((k, 0)..=(k, u64::MAX))?
        .map(|r| r.map(|(key, _)| key.value()))
        .collect::<Result<_, _>>()?;
    for key in keys {
        events.remove(key)?;
    }
    tx.txn.open_table(EVENT_COUNTS)?.remove(k)?;
    Ok(())
}

fn create_role(tx: &mut Tx<'_>, spec: &RoleSpec) -> Result<Role, StoreError> {
    let mut t = tx.txn.open_table(ROLES)?;
    if t.get(spec.name.as_str())?.is_some() {
        return Err(StoreError::Conflict {
            message: format!("role {} already exists", spec.name),
        });
    }
    let role = Role {
        name: spec.name.clone(),
        description: spec.description.clone(),
        builtin: false,
        created_at: tx.at,
    };
    t.insert(spec.name.as_str(), encode(&role).as_slice())?;
    Ok(role)
}

fn delete_role(tx: &mut Tx<'_>, name: &RoleName) -> Result<(), StoreError> {
    let role: Role = {
        let t = tx.txn.open_table(ROLES)?;
        let v = t.get(name.as_str())?;
        match v {
            Some(v) => decode("roles", v.value())?,
            None => {
                return Err(StoreError::NotFound {
                    what: "role",
                    key: name.to_string(),
                })
            }
        }
    };
    if role.builtin {
        return Err(StoreError::Conflict {
            message: format!("role {name} is built in and cannot be deleted"),
        });
    }
    let users: Vec<String> = tx
        .all_machines()?
        .into_iter()
        .filter(|m| m.role.as_ref() == Some(name))
        .map(|m| m.mac.to_string())
        .collect();
    if !users.is_empty() {
        return Err(StoreError::Conflict {
            message: format!(
                "role {name} is used by {} machine(s) ({}); give them another role first",
                users.len(),
                users.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let rules_using: Vec<u64> = {
        let t = tx.txn.open_table(RULES)?;
        let mut ids = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            let r: Rule = decode("rules", v.value())?;
            if &r.role == name {
                ids.push(r.id);
            }
        }
        ids
    };
    if !rules_using.is_empty() {
        return Err(StoreError::Conflict {
            message: format!(
                "role {name} is given by rule(s) {rules_using:?}; delete those rules first"
            ),
        });
    }
    tx.txn.open_table(ROLES)?.remove(name.as_str())?;
    Ok(())
}

fn create_rule(tx: &mut Tx<'_>, spec: &RuleSpec) -> Result<Rule, StoreError> {
    tx.require_role(&spec.role)?;
    if spec.matches.is_empty() {
        return Err(StoreError::Invalid {
            field: "match",
            message: "a rule needs at least one condition (mac, mac_prefix, min_cpus, …); a rule that matches everything is refused".into(),
        });
    }
    let m = &spec.matches;
    let bad_range =
        |lo: Option<u64>, hi: Option<u64>| matches!((lo, hi), (Some(l), Some(h)) if l > h);
    if bad_range(m.min_cpus.map(u64::from), m.max_cpus.map(u64::from)) {
        return Err(StoreError::Invalid {
            field: "match.min_cpus",
            message: "min_cpus is larger than max_cpus".into(),
        });
    }
    if bad_range(m.min_memory_mib, m.max_memory_mib) {
        return Err(StoreError::Invalid {
            field: "match.min_memory_mib",
            message: "min_memory_mib is larger than max_memory_mib".into(),
        });
    }
    if bad_range(m.min_disks.map(u64::from), m.max_disks.map(u64::from)) {
        return Err(StoreError::Invalid {
            field: "match.min_disks",
            message: "min_disks is larger than max_disks".into(),
        });
    }
    let id = tx.next_id("next_rule_id")?;
    let rule = Rule {
        id,
        role: spec.role.clone(),
        priority: spec.priority,
        description: spec.description.clone(),
        matches: spec.matches.clone(),
        created_at: tx.at,
    };
    tx.txn
        .open_table(RULES)?
        .insert(id, encode(&rule).as_slice())?;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn open(dir: &Path) -> Store {
        Store::open(
            &dir.join("cosm.redb"),
            StoreOptions {
                events_per_machine: 5,
            },
        )
        .unwrap()
    }

    fn create(mac_s: &str, role: Option<&str>) -> Command {
        Command::CreateMachine(CreateMachine {
            mac: mac(mac_s),
            hostname: None,
            role: role.map(|r| r.parse().unwrap()),
            reserved_ip: None,
            inventory: None,
        })
    }

    #[tokio::test]
    async fn survives_reopen_and_seeds_roles_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.apply(create("52:54:00:aa:bb:01", Some("host")))
                .await
                .unwrap();
            assert_eq!(s.roles().unwrap().len(), 4);
        }
        let s = open(dir.path());
        let m = s.machine(mac("52:54:00:aa:bb:01")).unwrap().unwrap();
        assert_eq!(m.state, MachineState::Ready);
        assert_eq!(m.role.unwrap().as_str(), "host");
        assert_eq!(s.roles().unwrap().len(), 4);
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn refuses_a_store_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosm.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&path, StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_refused_command_in_a_batch_leaves_the_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let cmds = vec![
            create("52:54:00:00:00:01", None),
            create("52:54:00:00:00:01", None), // duplicate: refused
            create("52:54:00:00:00:02", Some("nosuchrole")), // unknown role: refused
            create("52:54:00:00:00:03", Some("web")),
        ];
        let results = futures_join(&s, cmds).await;
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(StoreError::Conflict { .. })));
        assert!(matches!(
            results[2],
            Err(StoreError::Invalid { field: "role", .. })
        ));
        assert!(results[3].is_ok());
        let macs: Vec<String> = s
            .machines(None, None)
            .unwrap()
            .iter()
            .map(|m| m.mac.to_string())
            .collect();
        assert_eq!(macs, ["52:54:00:00:00:01", "52:54:00:00:00:03"]);
        // The refused machine left no events behind.
        assert!(s.events(mac("52:54:00:00:00:02"), 10).unwrap().is_empty());
    }

    async fn futures_join(s: &Store, cmds: Vec<Command>) -> Vec<Result<Outcome, StoreError>> {
        let handles: Vec<_> = cmds
            .into_iter()
            .map(|c| {
                let s = s.clone();
                tokio::spawn(async move { s.apply(c).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn events_are_bounded_per_machine() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = mac("52:54:00:00:00:07");
        s.apply(create("52:54:00:00:00:07", None)).await.unwrap();
        for i in 0..10 {
            let role = if i % 2 == 0 {
                Some("host".parse().unwrap())
            } else {
                None
            };
            s.apply(Command::SetRole { mac: m, role }).await.unwrap();
        }
        let evs = s.events(m, 100).unwrap();
        assert_eq!(evs.len(), 5);
        assert!(evs.windows(2).all(|w| w[0].seq < w[1].seq));
        // The newest event is the last change: role cleared, ready → discovered.
        assert_eq!(evs.last().unwrap().to_state, Some(MachineState::Discovered));
    }

    #[tokio::test]
    async fn rules_apply_at_discovery() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.apply(Command::CreateRule(RuleSpec {
            role: "storage".parse().unwrap(),
            priority: 10,
            description: "lab storage".into(),
            matches: cosm_wire::RuleMatch {
                mac_prefix: Some("52:54:01".parse().unwrap()),
                ..Default::default()
            },
        }))
        .await
        .unwrap();
        let Outcome::Machine(hit) = s.apply(create("52:54:01:00:00:01", None)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (hit.state, hit.role.as_ref().map(|r| r.as_str())),
            (MachineState::Ready, Some("storage"))
        );
        let Outcome::Machine(miss) = s.apply(create("52:54:02:00:00:01", None)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!((miss.state, miss.role), (MachineState::Discovered, None));
        let kinds: Vec<EventKind> = s
            .events(hit.mac, 10)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::Created,
                EventKind::RuleMatched,
                EventKind::StateChanged
            ]
        );
        // A role given by a rule cannot be deleted while the rule names it.
        let err = s
            .apply(Command::DeleteRole("storage".parse().unwrap()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
    }

    #[tokio::test]
    async fn delete_needs_retire_for_installed_machines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = mac("52:54:00:00:00:09");
        s.apply(create("52:54:00:00:00:09", Some("host")))
            .await
            .unwrap();
        for to in [MachineState::Deploying, MachineState::Deployed] {
            s.apply(Command::SetState {
                mac: m,
                to,
                reason: None,
            })
            .await
            .unwrap();
        }
        let err = s
            .apply(Command::DeleteMachine { mac: m })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("retire it first"), "{err}");
        s.apply(Command::SetState {
            mac: m,
            to: MachineState::Retired,
            reason: None,
        })
        .await
        .unwrap();
        s.apply(Command::DeleteMachine { mac: m }).await.unwrap();
        assert!(s.machine(m).unwrap().is_none());
        assert!(s.events(m, 10).unwrap().is_empty());
    }
}
