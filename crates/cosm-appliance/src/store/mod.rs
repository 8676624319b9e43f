//! The appliance's store: the only module that touches redb.
//!
//! - `engine`: the writer thread and group commit ([`Store`], [`Tx`], [`StoreCommand`]),
//!   and the change feed derived from the writes each commit made.
//! - `schema`: the tables, the schema version and its migrations.
//! - one file per resource (`machines`, `events`, `roles`, `tokens`, `leases`): typed
//!   reads on [`Store`] and typed writes on [`Tx`].
//!
//! The store does not decide anything: the commands (what may happen to a machine, a
//! role, a token) are the application layer's, applied here inside one transaction each.
//! Later the same commands travel through a replicated log so that three appliances share
//! one state; they carry their own time, so applying them is deterministic.

mod engine;
mod error;
mod events;
mod ha;
mod leases;
mod machines;
mod net;
mod roles;
mod schema;
mod settings;
mod tokens;
mod vms;

pub use engine::{Changes, Page, Store, StoreCommand, StoreOptions, StoreStats, Tx};
pub use error::StoreError;
pub use schema::SCHEMA_VERSION;
pub use settings::PasswordHash;
pub use tokens::TokenRecord;
pub use vms::port_hosts;

impl Tx<'_> {
    pub fn next_machine_id(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_machine_id")
    }

    pub fn next_action_id(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_action_id")
    }
}
