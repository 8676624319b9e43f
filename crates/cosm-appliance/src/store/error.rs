//! The store's error type: refusals a command makes for its own reasons (the caller gets
//! them back and nothing was written) apart from I/O failures (the whole batch fails).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {key} not found")]
    NotFound { what: &'static str, key: String },
    /// The record is not in a state that allows the command; `code` is the API's error code
    /// (`conflict`, `illegal_transition`, `not_deploying`, …).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the store {path} is locked: another cosm-appliance may be running on the same data_dir (or cosm-appliance create-token is using it)")]
    Locked { path: PathBuf },
    #[error("the store {path} exists but cannot be read ({why}); nothing was changed. Restore it from a backup, or move it away to start with an empty store (which makes new admin and enrol tokens)")]
    Damaged { path: PathBuf, why: String },
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

impl StoreError {
    /// A plain conflict (code `conflict`).
    pub fn conflict(message: impl Into<String>) -> StoreError {
        StoreError::Conflict {
            code: "conflict",
            message: message.into(),
        }
    }

    /// Whether this error is a refusal of one command (the others of its batch go on), as
    /// opposed to a failure of the whole transaction.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound { .. } | StoreError::Conflict { .. } | StoreError::Invalid { .. }
        )
    }
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
