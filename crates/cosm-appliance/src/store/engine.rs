//! The write engine: one writer thread applies commands, grouping the ones waiting at the
//! same moment into one write transaction, so one fsync covers many writes. A caller's
//! future resolves only after the transaction holding its command is durable on disk.
//!
//! The engine does not know what a command means: it calls [`StoreCommand::apply`] with a
//! [`Tx`], whose typed accessors (one file per resource) are the only way to the tables.
//! What a commit changed is derived from the writes the commands made (every accessor that
//! writes marks its table in [`Changes`]), never from a list of command kinds.

use super::schema;
use super::StoreError;
use cosm_wire::Timestamp;
use redb::{Database, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// The largest number of commands grouped into one transaction.
const MAX_BATCH: usize = 512;

/// A write the engine can apply. Applying must be deterministic: everything a command
/// needs (its time included) is in the value, so the same commands applied to the same
/// store give the same result (what a replicated command log needs).
pub trait StoreCommand: Send + 'static {
    type Outcome: Send + 'static;
    /// When the command was issued; every record and event it writes carries this time.
    fn at(&self) -> Timestamp;
    /// Checks everything it can refuse for before it writes anything, so a refused
    /// command leaves the transaction untouched.
    fn apply(&self, tx: &mut Tx<'_>) -> Result<Self::Outcome, StoreError>;
}

/// Which tables a commit wrote: each field counts the commits that wrote that table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub machines: u64,
    pub events: u64,
    pub roles: u64,
    pub rules: u64,
    pub tokens: u64,
    pub leases: u64,
    pub images: u64,
    pub vms: u64,
    /// Power settings, alarms and evacuations.
    pub ha: u64,
    /// Tenant networks and security groups.
    pub net: u64,
    /// Site settings and the console password.
    pub settings: u64,
}

impl Changes {
    fn add(&mut self, other: &Changes) {
        self.machines += other.machines.min(1);
        self.events += other.events.min(1);
        self.roles += other.roles.min(1);
        self.rules += other.rules.min(1);
        self.tokens += other.tokens.min(1);
        self.leases += other.leases.min(1);
        self.images += other.images.min(1);
        self.vms += other.vms.min(1);
        self.ha += other.ha.min(1);
        self.settings += other.settings.min(1);
        self.net += other.net.min(1);
    }

    fn any(&self) -> bool {
        *self != Changes::default()
    }
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

type Reply<C> = oneshot::Sender<Result<<C as StoreCommand>::Outcome, StoreError>>;

struct Job<C: StoreCommand> {
    cmd: C,
    reply: Reply<C>,
}

/// Handle to the store. Cheap to clone; when the last clone drops, the writer finishes
/// the commands it holds and the database file is closed before the drop returns.
pub struct Store<C: StoreCommand> {
    pub(super) db: Arc<Database>,
    writer: Arc<Writer<C>>,
    stats: Arc<StoreStats>,
    changes: watch::Receiver<Changes>,
}

impl<C: StoreCommand> Clone for Store<C> {
    fn clone(&self) -> Self {
        Store {
            db: self.db.clone(),
            writer: self.writer.clone(),
            stats: self.stats.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<C: StoreCommand> std::fmt::Debug for Store<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

struct Writer<C: StoreCommand> {
    jobs: Option<mpsc::Sender<Job<C>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<C: StoreCommand> Writer<C> {
    fn jobs(&self) -> Result<&mpsc::Sender<Job<C>>, StoreError> {
        self.jobs.as_ref().ok_or(StoreError::WriterGone)
    }
}

impl<C: StoreCommand> Drop for Writer<C> {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop; joining it releases its database handle.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<C: StoreCommand> Store<C> {
    /// Opens (or creates) the store file, migrates it, and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store<C>, StoreError> {
        let db = open_file(path)?;
        schema::init(&db, |txn| super::roles::seed(txn, Timestamp::now()))?;
        let db = Arc::new(db);
        let stats = Arc::new(StoreStats::default());
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer_db = db.clone();
        let writer_stats = stats.clone();
        let (changes_tx, changes) = watch::channel(Changes::default());
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer_db, rx, options, &writer_stats, &changes_tx))
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
            changes,
        })
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The change feed: moves after every commit, counting the commits per table.
    pub fn changes(&self) -> watch::Receiver<Changes> {
        self.changes.clone()
    }

    /// Applies one command; resolves once it is durable (or refused).
    pub async fn apply(&self, cmd: C) -> Result<C::Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .jobs()?
            .send(Job { cmd, reply })
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
        cmd: C,
    ) -> Result<impl std::future::Future<Output = Result<C::Outcome, StoreError>>, C> {
        let (reply, rx) = oneshot::channel();
        let job = Job { cmd, reply };
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
    pub fn apply_blocking(&self, cmd: C) -> Result<C::Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .jobs()?
            .blocking_send(Job { cmd, reply })
            .map_err(|_| StoreError::WriterGone)?;
        rx.blocking_recv().map_err(|_| StoreError::WriterGone)?
    }

    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(schema::META)?;
        Ok(t.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    /// One record by key.
    pub(super) fn get<'k, K: redb::Key + 'static, T: DeserializeOwned>(
        &self,
        def: TableDefinition<K, &[u8]>,
        key: impl std::borrow::Borrow<K::SelfType<'k>>,
    ) -> Result<Option<T>, StoreError> {
        let r = self.db.begin_read()?;
        read_one(&r.open_table(def)?, def.name(), key)
    }

    /// Every record of a table, in key order.
    pub(super) fn all<K: redb::Key + 'static, T: DeserializeOwned>(
        &self,
        def: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let r = self.db.begin_read()?;
        read_every(&r.open_table(def)?, def.name())
    }

    /// One page of a table in key order: the first `limit` records after the key `after`
    /// (from the start without one) that `keep` accepts. Reads one range from the cursor
    /// and stops one record past the page, never the whole table (unless `keep` refuses
    /// most records, which a filter can).
    pub(super) fn page<'k, K: redb::Key + 'static, T: DeserializeOwned>(
        &self,
        def: TableDefinition<K, &[u8]>,
        after: Option<K::SelfType<'k>>,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Page<T>, StoreError> {
        use std::ops::Bound;
        let r = self.db.begin_read()?;
        let t = r.open_table(def)?;
        let rows = match after {
            Some(a) => t.range::<K::SelfType<'k>>((Bound::Excluded(a), Bound::Unbounded))?,
            None => t.iter()?,
        };
        let mut page = Page::default();
        for row in rows {
            let (_, v) = row?;
            let item: T = decode(def.name(), v.value())?;
            if !keep(&item) {
                continue;
            }
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            page.items.push(item);
        }
        Ok(page)
    }
}

/// One page of a list: its records, and whether more follow the last one (the caller
/// makes the next cursor from the last record's key).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            more: false,
        }
    }
}

/// One record of a table (read or write transaction alike).
fn read_one<'k, K: redb::Key + 'static, T: DeserializeOwned>(
    t: &impl ReadableTable<K, &'static [u8]>,
    table: &str,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> Result<Option<T>, StoreError> {
    let v = t.get(key)?;
    v.map(|v| decode(table, v.value())).transpose()
}

/// Every record of a table, in key order.
fn read_every<K: redb::Key + 'static, T: DeserializeOwned>(
    t: &impl ReadableTable<K, &'static [u8]>,
    table: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        out.push(decode(table, v.value())?);
    }
    Ok(out)
}

/// Opens the database file, creating it (mode 0600: it holds token hashes and the whole
/// inventory) only when there is none. A file that exists but is empty or damaged is
/// refused, never taken for a first start: that would make new tokens over the old ones.
fn open_file(path: &Path) -> Result<Database, StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let damaged = |why: String| StoreError::Damaged {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => return Err(damaged("it is empty (0 bytes)".into())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Db {
                    message: format!("cannot create {}: {e}", path.display()),
                })?;
        }
        Err(e) => return Err(damaged(e.to_string())),
    }
    // redb asserts on some damaged files instead of returning an error; a panic here is a
    // damaged store, not a crash of the appliance.
    let opened = std::panic::catch_unwind(|| Database::create(path));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(StoreError::Locked {
                path: path.to_path_buf(),
            })
        }
        Ok(Err(redb::DatabaseError::Storage(e))) => return Err(damaged(e.to_string())),
        Ok(Err(source)) => {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(_) => return Err(damaged("its structure is invalid".into())),
    };
    // A store made by an older version may have been created 0644.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(db)
}

pub(super) fn decode<T: DeserializeOwned>(table: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table: table_name(table),
        source,
    })
}

/// The table names as static strings, for errors.
fn table_name(name: &str) -> &'static str {
    [
        "machines", "roles", "rules", "events", "leases", "images", "tokens",
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("unknown")
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain data types to JSON cannot fail (no maps with non-string
    // keys, no custom serializers that error).
    serde_json::to_vec(v).expect("store records serialize to JSON")
}

fn writer_loop<C: StoreCommand>(
    db: &Database,
    mut rx: mpsc::Receiver<Job<C>>,
    options: StoreOptions,
    stats: &StoreStats,
    changes: &watch::Sender<Changes>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats
            .commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match apply_batch(db, &batch, options) {
            Ok((results, changed)) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                if changed.any() {
                    changes.send_modify(|c| c.add(&changed));
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

type BatchResult<O> = (Vec<Result<O, StoreError>>, Changes);

/// Applies a batch in one transaction. A command refused for a reason of its own (conflict,
/// invalid input) leaves no trace and does not affect the others; an I/O error fails the
/// whole batch and nothing is written.
fn apply_batch<C: StoreCommand>(
    db: &Database,
    batch: &[Job<C>],
    options: StoreOptions,
) -> Result<BatchResult<C::Outcome>, StoreError> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    let mut changed = Changes::default();
    for job in batch {
        let mut tx = Tx {
            txn: &txn,
            at: job.cmd.at(),
            options,
            changed: Changes::default(),
        };
        match job.cmd.apply(&mut tx) {
            Err(e) if !e.is_refusal() => return Err(e),
            Err(e) => results.push(Err(e)),
            Ok(o) => {
                changed.add(&tx.changed);
                results.push(Ok(o));
            }
        }
    }
    txn.commit()?;
    Ok((results, changed))
}

/// One command inside a write transaction: the time it carries, and the accessors of each
/// resource (in the resource's file) that record which tables it wrote.
pub struct Tx<'t> {
    pub(super) txn: &'t WriteTransaction,
    /// When the command was issued.
    pub at: Timestamp,
    pub(super) options: StoreOptions,
    pub(super) changed: Changes,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// The next value of a counter kept in `meta` (ids, event sequence numbers).
    pub(super) fn next_id(&mut self, key: &str) -> Result<u64, StoreError> {
        let mut meta = self.txn.open_table(schema::META)?;
        let next = meta.get(key)?.map(|v| v.value()).unwrap_or(1);
        meta.insert(key, next + 1)?;
        Ok(next)
    }

    pub(super) fn get<'k, K: redb::Key + 'static, T: DeserializeOwned>(
        &self,
        def: TableDefinition<K, &[u8]>,
        key: impl std::borrow::Borrow<K::SelfType<'k>>,
    ) -> Result<Option<T>, StoreError> {
        read_one(&self.txn.open_table(def)?, def.name(), key)
    }

    pub(super) fn all<K: redb::Key + 'static, T: DeserializeOwned>(
        &self,
        def: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        read_every(&self.txn.open_table(def)?, def.name())
    }
}

/// A command that writes nothing, for the store's own tests (engine, schema).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Noop;

#[cfg(test)]
impl StoreCommand for Noop {
    type Outcome = ();
    fn at(&self) -> Timestamp {
        Timestamp::now()
    }
    fn apply(&self, _tx: &mut Tx<'_>) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema::{META, SCHEMA_VERSION};
    use super::*;

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
        let err = Store::<Noop>::open(&path, StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_commit_that_writes_nothing_moves_no_change_counter() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            Store::<Noop>::open(&dir.path().join("cosm.redb"), StoreOptions::default()).unwrap();
        s.apply(Noop).await.unwrap();
        assert_eq!(*s.changes().borrow(), Changes::default());
        assert_eq!(s.stats().commits.load(Ordering::Relaxed), 1);
    }

    /// Hardening (issue 11, item 16).
    #[test]
    fn an_empty_or_damaged_store_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosm.redb");
        std::fs::write(&path, b"").unwrap();
        let err = Store::<Noop>::open(&path, StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "nothing written"
        );
        // A real store, truncated.
        drop(Store::<Noop>::open(&dir.path().join("good.redb"), StoreOptions::default()).unwrap());
        let good = std::fs::read(dir.path().join("good.redb")).unwrap();
        for cut in [100, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            let err = Store::<Noop>::open(&path, StoreOptions::default()).unwrap_err();
            assert!(
                matches!(err, StoreError::Damaged { .. } | StoreError::Open { .. }),
                "truncated at {cut}: {err}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                good[..cut],
                "nothing written"
            );
        }
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(Store::<Noop>::open(&path, StoreOptions::default()).is_err());
    }

    #[test]
    fn a_new_store_is_private_and_a_second_opener_is_told_it_is_locked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosm.redb");
        let _first = Store::<Noop>::open(&path, StoreOptions::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = Store::<Noop>::open(&path, StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}
