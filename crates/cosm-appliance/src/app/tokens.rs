//! API tokens: generation, hashing and the first admin token; and machines' install
//! tokens.
//!
//! Tokens are 160 random bits, so a fast hash (SHA-256) is the right way to store them:
//! a slow password hash such as argon2 protects low-entropy secrets and would cost every
//! API call tens of milliseconds. Only the hash is stored; the secret is shown once.
//!
//! An install token is not stored at all: it is an HMAC, under the appliance's install key
//! (`<data_dir>/install.key`), of the machine's MAC, creation time and install round. So it
//! is the same in the machine's boot script and kickstart, is bound to that one machine,
//! and dies when the round ends (the install is reported, or the machine is redeployed or
//! deleted and made again) without a write to revoke it.

use super::{Op, Outcome, Store};
use crate::store::StoreError;
use cosm_wire::{MacAddr, Machine, Scope, TokenInfo};
use hmac::{Hmac, Mac};
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

/// Prefix of install tokens: `cosm_i_<mac, 12 hex digits>_<40 hex digits>`.
pub const INSTALL_PREFIX: &str = "cosm_i_";

/// The secret install tokens are derived with.
#[derive(Clone)]
pub struct InstallKey([u8; 32]);

impl std::fmt::Debug for InstallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstallKey(…)")
    }
}

impl InstallKey {
    pub fn generate() -> InstallKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        InstallKey(key)
    }

    /// Reads `path` (64 hex digits), or makes a new key there (0600) when it is missing.
    /// A file that exists but holds no key is an error: replacing it would silently break
    /// every install in progress.
    pub fn load_or_create(path: &Path) -> anyhow::Result<InstallKey> {
        use anyhow::Context;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
                let bytes = bytes.with_context(|| {
                    format!(
                        "{} does not hold an install key (64 hex digits): remove it to make a new one (installs in progress must then start over)",
                        path.display()
                    )
                })?;
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(InstallKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = InstallKey::generate();
                write_token_file(path, &hex::encode(key.0))?;
                tracing::info!(path = %path.display(), "created the install key that machines' install tokens are derived with");
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The HMAC of `m`'s current install round, before its tag is read or checked.
    fn round_mac(&self, m: &Machine) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(
            format!(
                "cosm install token\0{}\0{}\0{}",
                m.mac,
                m.created_at.as_millis(),
                m.install_round
            )
            .as_bytes(),
        );
        mac
    }

    fn prefix(m: &Machine) -> String {
        format!("{INSTALL_PREFIX}{}_", m.mac.to_string().replace(':', ""))
    }

    /// The install token of `m` in its current install round.
    pub fn token(&self, m: &Machine) -> String {
        let tag = self.round_mac(m).finalize().into_bytes();
        format!("{}{}", Self::prefix(m), hex::encode(&tag[..20]))
    }

    /// Whether `token` is `m`'s install token now: right round, and `m` ready or deploying.
    /// The tag is checked in constant time (hmac's own comparison).
    pub fn accepts(&self, m: &Machine, token: &str) -> bool {
        use cosm_wire::MachineState::{Deploying, Ready};
        let Some(tag) = token
            .strip_prefix(&Self::prefix(m))
            .and_then(|t| hex::decode(t).ok())
            .filter(|t| t.len() == 20)
        else {
            return false;
        };
        matches!(super::effective_state(m), Ready | Deploying)
            && self.round_mac(m).verify_truncated_left(&tag).is_ok()
    }
}

/// The machine an install token names (not yet whether it is valid).
pub fn install_token_mac(token: &str) -> Option<MacAddr> {
    let rest = token.strip_prefix(INSTALL_PREFIX)?;
    let (mac, _) = rest.split_once('_')?;
    if mac.len() != 12 || !mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let pairs: Vec<&str> = (0..6).map(|i| &mac[i * 2..i * 2 + 2]).collect();
    pairs.join(":").parse().ok()
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
