//! Site settings and the console's admin password (schema 7): one small key → JSON table.
//! What a value may be is `app::settings`'s; here are only reads and writes.

use super::engine::{encode, Store, StoreCommand, Tx};
use super::schema::SETTINGS;
use super::StoreError;
use cosm_wire::Settings;
use serde::{Deserialize, Serialize};

const SITE: &str = "site";
const ADMIN_PASSWORD: &str = "admin_password";

/// The console admin's password, as an argon2 PHC string (never the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    pub phc: String,
    pub set_at: cosm_wire::Timestamp,
}

impl<C: StoreCommand> Store<C> {
    /// The site settings written through the console or the API; `None` before the
    /// first-run wizard was applied.
    pub fn site_settings(&self) -> Result<Option<Settings>, StoreError> {
        self.get(SETTINGS, SITE)
    }

    pub fn admin_password(&self) -> Result<Option<PasswordHash>, StoreError> {
        self.get(SETTINGS, ADMIN_PASSWORD)
    }
}

impl Tx<'_> {
    pub fn put_site_settings(&mut self, s: &Settings) -> Result<(), StoreError> {
        self.txn
            .open_table(SETTINGS)?
            .insert(SITE, encode(s).as_slice())?;
        self.changed.settings += 1;
        Ok(())
    }

    pub fn put_admin_password(&mut self, p: &PasswordHash) -> Result<(), StoreError> {
        self.txn
            .open_table(SETTINGS)?
            .insert(ADMIN_PASSWORD, encode(p).as_slice())?;
        self.changed.settings += 1;
        Ok(())
    }
}
