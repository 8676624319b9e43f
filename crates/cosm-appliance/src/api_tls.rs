//! The certificate of HTTPS on the API port: the operator's PEM files (`[api] tls_cert`,
//! `tls_key`), or else a self-signed certificate made at the first start and kept in
//! data_dir, so the web console's password and session cookies never cross the
//! provisioning network in clear text. iPXE, agents and kickstarts keep plain HTTP on the
//! same port ([`crate::http::serve`] tells them apart by the first byte).
//!
//! This module reads and writes the certificate files and builds the rustls server
//! configuration (with the ring provider, the one reqwest already compiles in); it does not
//! know sockets or HTTP.

pub use crate::config::{SELF_SIGNED_CERT, SELF_SIGNED_KEY};

use crate::config::{ApiTls, Config};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why HTTPS cannot be set up. `origin` says which setting the file comes from, e.g.
/// "/etc/cosm/appliance.toml: key `api.tls_key`".
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{origin}: cannot read {}", file.display())]
    Read {
        origin: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {}: {problem}", file.display())]
    Invalid {
        origin: String,
        file: PathBuf,
        problem: String,
    },
    #[error("cannot write the self-signed certificate's file {}", file.display())]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a self-signed certificate")]
    Generate(#[source] rcgen::Error),
}

/// The certificate in use and the server configuration built from it.
#[derive(Debug, Clone)]
pub struct ApiCert {
    /// The rustls configuration [`crate::http::serve`] accepts TLS connections with.
    pub server_config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the (first) certificate's DER, as `AB:CD:…` (what browsers and
    /// `openssl x509 -fingerprint -sha256` show).
    pub fingerprint: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub self_signed: bool,
    /// True when this start made the self-signed certificate.
    pub created: bool,
}

impl ApiCert {
    /// One log line for the operator, with the fingerprint to check the certificate by.
    pub fn describe(&self) -> String {
        if self.self_signed {
            format!(
                "self-signed certificate, SHA-256 fingerprint {}",
                self.fingerprint
            )
        } else {
            format!(
                "certificate {} (key {}), SHA-256 fingerprint {}",
                self.cert_file.display(),
                self.key_file.display(),
                self.fingerprint
            )
        }
    }
}

/// Loads the configured certificate, or the self-signed one in data_dir, making it (and
/// data_dir) when neither of its files exists yet.
pub fn load_or_create(config: &Config) -> Result<ApiCert, TlsError> {
    match &config.api_tls {
        ApiTls::Files { cert, key } => {
            let origin = |k: &str| format!("{}: key `{k}`", config.path.display());
            load(
                cert,
                key,
                &origin("api.tls_cert"),
                &origin("api.tls_key"),
                false,
            )
        }
        ApiTls::SelfSigned { cert, key } => {
            let origin = "the self-signed certificate (api.tls_cert and api.tls_key are not set)";
            let created = ensure_self_signed(cert, key, config.api_listen.ip(), origin)?;
            let mut loaded = load(cert, key, origin, origin, true)?;
            loaded.created = created;
            Ok(loaded)
        }
    }
}

/// What `check-config` prints about HTTPS: the certificate that will be used, checked when
/// its files exist; nothing is written.
pub fn check(config: &Config) -> Result<String, TlsError> {
    match &config.api_tls {
        ApiTls::SelfSigned { cert, key } if !cert.exists() && !key.exists() => {
            let sans = subject_alt_names(config.api_listen.ip());
            let names: Vec<String> = sans.iter().map(ToString::to_string).collect();
            Ok(format!(
                "self-signed, made at the first start as {} (for {}, localhost)",
                cert.display(),
                names.join(", ")
            ))
        }
        _ => {
            let c = load_or_create(config)?;
            Ok(if c.self_signed {
                format!("{} ({})", c.describe(), c.cert_file.display())
            } else {
                c.describe()
            })
        }
    }
}

fn load(
    cert_file: &Path,
    key_file: &Path,
    cert_origin: &str,
    key_origin: &str,
    self_signed: bool,
) -> Result<ApiCert, TlsError> {
    let read = |file: &Path, origin: &str| {
        std::fs::read(file).map_err(|source| TlsError::Read {
            origin: origin.to_string(),
            file: file.to_path_buf(),
            source,
        })
    };
    let invalid = |file: &Path, origin: &str, problem: String| TlsError::Invalid {
        origin: origin.to_string(),
        file: file.to_path_buf(),
        problem,
    };
    let cert_pem = read(cert_file, cert_origin)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_file, cert_origin, format!("is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(invalid(
            cert_file,
            cert_origin,
            "holds no certificate (a PEM block \"BEGIN CERTIFICATE\")".into(),
        ));
    }
    let key_pem = read(key_file, key_origin)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => "holds no private key (a PEM block \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")".to_string(),
            e => format!("is not a valid PEM private key ({e})"),
        };
        invalid(key_file, key_origin, problem)
    })?;
    let fingerprint = fingerprint(&certs[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            let problem = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "is not the private key of the certificate in {}",
                    cert_file.display()
                ),
                e => format!("cannot be used with the certificate ({e})"),
            };
            invalid(key_file, key_origin, problem)
        })?;
    // HTTP/2 for browsers (the console's server-sent events would otherwise share six
    // HTTP/1.1 connections with everything else), HTTP/1.1 for the rest.
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ApiCert {
        server_config: Arc::new(server_config),
        fingerprint,
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        self_signed,
        created: false,
    })
}

/// `AB:CD:…`: SHA-256 of a certificate's DER.
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = sha2::Sha256::digest(cert);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Makes the self-signed certificate unless it exists; true when it made one. The key is
/// written first, so a key without a certificate is a first start cut short (no
/// fingerprint was shown yet) and a new pair is made; a certificate without its key is
/// refused, since a new pair would silently change the fingerprint operators checked.
fn ensure_self_signed(
    cert: &Path,
    key: &Path,
    listen: IpAddr,
    origin: &str,
) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, _) => {}
        (true, false) => {
            return Err(TlsError::Invalid {
                origin: origin.to_string(),
                file: key.to_path_buf(),
                problem: format!(
                    "is missing but the certificate {} is there: restore the key, or remove the certificate to make a new one (with a new fingerprint)",
                    cert.display()
                ),
            });
        }
    }
    let (cert_pem, key_pem) = generate(&subject_alt_names(listen))?;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            file: key.to_path_buf(),
            source,
        })?;
    }
    // The key first: a certificate is never left without its key.
    write_file(key, key_pem.as_bytes(), 0o600)?;
    write_file(cert, cert_pem.as_bytes(), 0o644)?;
    Ok(true)
}

/// The addresses the self-signed certificate names: the listen address, or every local
/// address when listening on all of them (0.0.0.0: IPv4 ones; `::`: both families).
pub fn subject_alt_names(listen: IpAddr) -> Vec<IpAddr> {
    let mut ips = if listen.is_unspecified() {
        local_addresses(listen.is_ipv6())
    } else {
        vec![listen]
    };
    ips.sort();
    ips.dedup();
    ips
}

fn local_addresses(with_v6: bool) -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if with_v6 {
        ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    }
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            for a in addrs {
                let Some(addr) = a.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    ips.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    if with_v6 {
                        ips.push(IpAddr::V6(v6.ip()));
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the local addresses for the self-signed certificate; it names only loopback")
        }
    }
    ips
}

fn generate(ips: &[IpAddr]) -> Result<(String, String), TlsError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "COSM appliance");
    params.distinguished_name = name;
    params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    params.subject_alt_names.push(SanType::DnsName(
        "localhost".try_into().map_err(TlsError::Generate)?,
    ));
    // ECDSA P-256: small, and accepted by every browser and curl.
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a file whole (a temporary beside it, then renamed) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| TlsError::Write {
        file: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, api: &str) -> Config {
        let text = format!("data_dir = \"data\"\n[api]\n{api}\n");
        Config::parse(&dir.join("appliance.toml"), &text).unwrap()
    }

    #[test]
    fn the_self_signed_certificate_is_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        let first = load_or_create(&c).unwrap();
        assert!(first.self_signed && first.created);
        let key = dir.path().join("data").join(SELF_SIGNED_KEY);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(&c).unwrap();
        assert!(!again.created);
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        assert!(check(&c).unwrap().contains(&first.fingerprint));
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_a_key_alone_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "");
        let first = load_or_create(&c).unwrap();
        std::fs::remove_file(dir.path().join("data").join(SELF_SIGNED_KEY)).unwrap();
        let e = load_or_create(&c).unwrap_err().to_string();
        assert!(
            e.contains(SELF_SIGNED_KEY)
                && e.contains("is missing")
                && e.contains("remove the certificate"),
            "{e}"
        );
        // A key alone: the first start stopped between the two files.
        std::fs::remove_file(dir.path().join("data").join(SELF_SIGNED_CERT)).unwrap();
        std::fs::write(dir.path().join("data").join(SELF_SIGNED_KEY), "partial").unwrap();
        let second = load_or_create(&c).unwrap();
        assert!(second.created && second.fingerprint != first.fingerprint);
    }

    #[test]
    fn bad_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let made = config(dir.path(), "");
        load_or_create(&made).unwrap();
        let data = dir.path().join("data");
        std::fs::write(data.join("other.pem"), "not pem at all\n").unwrap();
        let other_key = generate(&[IpAddr::from([127, 0, 0, 1])]).unwrap().1;
        std::fs::write(data.join("other-key.pem"), other_key).unwrap();
        let cases = [
            (
                "console-cert.pem",
                "missing.pem",
                "api.tls_key",
                "cannot read",
            ),
            (
                "other.pem",
                "console-key.pem",
                "api.tls_cert",
                "holds no certificate",
            ),
            (
                "console-cert.pem",
                "other.pem",
                "api.tls_key",
                "holds no private key",
            ),
            (
                "console-cert.pem",
                "other-key.pem",
                "api.tls_key",
                "is not the private key of the certificate",
            ),
        ];
        for (cert, key, named, problem) in cases {
            let c = config(
                dir.path(),
                &format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\""),
            );
            let e = load_or_create(&c).unwrap_err().to_string();
            assert!(
                e.contains("appliance.toml: key `") && e.contains(named) && e.contains(problem),
                "{cert} {key}: {e}"
            );
        }
    }

    #[test]
    fn all_addresses_name_the_local_ones() {
        let v4 = subject_alt_names("0.0.0.0".parse().unwrap());
        assert!(v4.contains(&"127.0.0.1".parse().unwrap()), "{v4:?}");
        assert!(v4.iter().all(IpAddr::is_ipv4), "{v4:?}");
        let one = subject_alt_names("192.0.2.1".parse().unwrap());
        assert_eq!(one, vec![IpAddr::from([192, 0, 2, 1])]);
    }
}
