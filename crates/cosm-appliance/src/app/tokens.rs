//! API tokens: generation, hashing and the first admin token.
//!
//! Tokens are 160 random bits, so a fast hash (SHA-256) is the right way to store them:
//! a slow password hash such as argon2 protects low-entropy secrets and would cost every
//! API call tens of milliseconds. Only the hash is stored; the secret is shown once.

use super::{Op, Outcome, Store};
use crate::store::StoreError;
use cosm_wire::{Scope, TokenInfo};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Prefix of every token, so a leaked one is easy to recognise in logs and scanners.
pub const TOKEN_PREFIX: &str = "cosm_";

/// A fresh random token.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the admin token to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates a token in the store and returns its secret. Refused scopes or names surface as
/// store errors.
pub async fn create_token(
    store: &Store,
    name: &str,
    scope: Scope,
) -> Result<(TokenInfo, String), StoreError> {
    let token = generate_token();
    let op = Op::CreateToken {
        name: name.to_string(),
        scope,
        hash: hash_token(&token),
    };
    match store.run(op).await? {
        Outcome::Token(info) => Ok((info, token)),
        other => unreachable!("CreateToken produced {other:?}"),
    }
}

/// Writes a token to `path` with mode 0600, replacing any older file.
pub fn write_token_file(path: &Path, token: &str) -> Result<(), BootstrapError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| BootstrapError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// On the first start (no token in the store) creates an admin token, writes it to
/// `<data_dir>/admin.token` (0600) and returns it so the caller can show it once.
pub async fn bootstrap_admin(
    store: &Store,
    data_dir: &Path,
) -> Result<Option<(String, PathBuf)>, BootstrapError> {
    if !store.tokens()?.is_empty() {
        return Ok(None);
    }
    let (_, token) = create_token(store, "bootstrap-admin", Scope::Admin).await?;
    let path = data_dir.join("admin.token");
    write_token_file(&path, &token)?;
    Ok(Some((token, path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hashes_stable() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 40);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
