//! API tokens, keyed by the SHA-256 of the secret (the secret itself is never stored).

use super::engine::{decode, encode, Page, Store, StoreCommand, Tx};
use super::schema::{TOKENS, TOKEN_IDS};
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

    /// One page of tokens by id, after the id `after`: a range of the id index, each
    /// record found by its hash.
    pub fn tokens_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<TokenInfo>, StoreError> {
        use std::ops::Bound;
        let r = self.db.begin_read()?;
        let ids = r.open_table(TOKEN_IDS)?;
        let tokens = r.open_table(TOKENS)?;
        let rows = match after {
            Some(a) => ids.range::<u64>((Bound::Excluded(a), Bound::Unbounded))?,
            None => ids.iter()?,
        };
        let mut page = Page::default();
        for row in rows {
            let (_, hash) = row?;
            let Some(v) = tokens.get(hash.value())? else {
                continue;
            };
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            let rec: TokenRecord = decode("tokens", v.value())?;
            page.items.push(rec.info);
        }
        Ok(page)
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
        self.txn
            .open_table(TOKEN_IDS)?
            .insert(rec.info.id, rec.hash.as_str())?;
        self.changed.tokens += 1;
        Ok(())
    }

    /// Removes the token with this id (found through the id index); false when there is
    /// none.
    pub fn remove_token(&mut self, id: u64) -> Result<bool, StoreError> {
        let hash = self
            .txn
            .open_table(TOKEN_IDS)?
            .remove(id)?
            .map(|h| h.value().to_string());
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
        let mut ids = self.txn.open_table(TOKEN_IDS)?;
        for (h, id) in &stale {
            t.remove(h.as_str())?;
            ids.remove(*id)?;
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

    /// The hashes and ids of the tokens whose info matches.
    fn tokens_where(
        &self,
        f: impl Fn(&TokenInfo) -> bool,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let t = self.txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let rec: TokenRecord = decode("tokens", v.value())?;
            if f(&rec.info) {
                out.push((k.value().to_string(), rec.info.id));
            }
        }
        Ok(out)
    }
}
