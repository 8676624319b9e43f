//! API tokens, keyed by the SHA-256 of the secret (the secret itself is never stored).

use super::engine::{decode, encode, Store, StoreCommand, Tx};
use super::schema::TOKENS;
use super::StoreError;
use cosm_wire::{MacAddr, Scope, TokenInfo};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

/// A stored API token: what the API shows of it, and the hash it is found by.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub info: TokenInfo,
    pub hash: String,
}

impl<C: StoreCommand> Store<C> {
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get(TOKENS, hash)
    }

    /// Every token, by id.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let records: Vec<TokenRecord> = self.all(TOKENS)?;
        let mut out: Vec<TokenInfo> = records.into_iter().map(|r| r.info).collect();
        out.sort_by_key(|t| t.id);
        Ok(out)
    }
}

impl Tx<'_> {
    pub fn next_token_id(&mut self) -> Result<u64, StoreError> {
        self.next_id("next_token_id")
    }

    pub fn put_token(&mut self, rec: &TokenRecord) -> Result<(), StoreError> {
        self.txn
            .open_table(TOKENS)?
            .insert(rec.hash.as_str(), encode(rec).as_slice())?;
        self.changed.tokens += 1;
        Ok(())
    }

    /// Removes the token with this id; false when there is none.
    pub fn remove_token(&mut self, id: u64) -> Result<bool, StoreError> {
        let hash = self.tokens_where(|info| info.id == id)?.into_iter().next();
        match hash {
            Some(h) => {
                self.txn.open_table(TOKENS)?.remove(h.as_str())?;
                self.changed.tokens += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes every agent credential bound to this MAC; returns how many.
    pub fn remove_agent_credentials(&mut self, mac: MacAddr) -> Result<usize, StoreError> {
        let stale =
            self.tokens_where(|info| info.scope == Scope::Agent && info.mac == Some(mac))?;
        let mut t = self.txn.open_table(TOKENS)?;
        for h in &stale {
            t.remove(h.as_str())?;
        }
        if !stale.is_empty() {
            self.changed.tokens += 1;
        }
        Ok(stale.len())
    }

    /// Whether an agent credential is bound to this MAC.
    pub fn has_agent_credential(&self, mac: MacAddr) -> Result<bool, StoreError> {
        Ok(!self
            .tokens_where(|info| info.scope == Scope::Agent && info.mac == Some(mac))?
            .is_empty())
    }

    /// The hashes of the tokens whose info matches.
    fn tokens_where(&self, f: impl Fn(&TokenInfo) -> bool) -> Result<Vec<String>, StoreError> {
        let t = self.txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let rec: TokenRecord = decode("tokens", v.value())?;
            if f(&rec.info) {
                out.push(k.value().to_string());
            }
        }
        Ok(out)
    }
}
