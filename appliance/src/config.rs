//! The appliance configuration: a TOML file read once at start.
//!
//! [`file`] holds the file format (serde, unknown keys refused); [`Config`] is the checked
//! runtime form, made from it with `TryFrom`. Every error names the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {}{message}", key_prefix(.key))]
    Invalid {
        path: PathBuf,
        /// Dotted key, e.g. `api.listen`; empty for a syntax error outside any key.
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

/// The file format, exactly as written on disk.
pub mod file {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ConfigFile {
        /// Directory for the store and the admin token. Created if missing.
        pub data_dir: String,
        #[serde(default)]
        pub api: Api,
        #[serde(default)]
        pub events: Events,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Api {
        pub listen: String,
        pub max_body_bytes: u64,
    }

    impl Default for Api {
        fn default() -> Self {
            Api {
                listen: "127.0.0.1:8080".into(),
                max_body_bytes: 1024 * 1024,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Events {
        pub retain_per_machine: u64,
    }

    impl Default for Events {
        fn default() -> Self {
            Events {
                retain_per_machine: 1000,
            }
        }
    }
}

/// The checked configuration the appliance runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub max_body_bytes: usize,
    pub events_per_machine: u64,
}

impl Config {
    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses config text; `path` is only used to name the file in errors and to resolve a
    /// relative `data_dir` against the file's directory.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let parsed: file::ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = crate::api::field_path(&e.path().to_string(), e.inner().message());
            let mut message = e.inner().message().to_string();
            if let Some(span) = e.inner().span() {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                message = format!("{message} (line {line})");
            }
            ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            }
        })?;
        Config::try_from((path, parsed))
    }
}

impl TryFrom<(&Path, file::ConfigFile)> for Config {
    type Error = ConfigError;

    fn try_from((path, f): (&Path, file::ConfigFile)) -> Result<Self, Self::Error> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if f.data_dir.trim().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        let mut data_dir = PathBuf::from(&f.data_dir);
        if data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            data_dir = base.join(data_dir);
        }
        let api_listen: SocketAddr = f.api.listen.parse().map_err(|_| {
            invalid(
                "api.listen",
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:8080 or [::]:8080",
                    f.api.listen
                ),
            )
        })?;
        if !(1024..=64 * 1024 * 1024).contains(&f.api.max_body_bytes) {
            return Err(invalid(
                "api.max_body_bytes",
                format!("{} is outside 1024..=67108864", f.api.max_body_bytes),
            ));
        }
        if !(10..=1_000_000).contains(&f.events.retain_per_machine) {
            return Err(invalid(
                "events.retain_per_machine",
                format!("{} is outside 10..=1000000", f.events.retain_per_machine),
            ));
        }
        Ok(Config {
            path: path.to_path_buf(),
            data_dir,
            api_listen,
            max_body_bytes: f.api.max_body_bytes as usize,
            events_per_machine: f.events.retain_per_machine,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(Path::new("/etc/cosm/appliance.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs found in {}", dir.display());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("data_dir = \"/x\"\n[api]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n");
        assert!(
            e.starts_with("/etc/cosm/appliance.toml: key `api.listne`: unknown field"),
            "{e}"
        );
        let e = err("data_dir = \"/x\"\nbogus = 1\n");
        assert!(e.contains("key `bogus`"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err("data_dir = \"/x\"\n[api]\nlisten = \"localhost\"\n");
        assert!(e.contains("key `api.listen`"), "{e}");
        let e = err("data_dir = \"/x\"\n[api]\nmax_body_bytes = \"big\"\n");
        assert!(
            e.contains("key `api.max_body_bytes`") && e.contains("line 3"),
            "{e}"
        );
        let e = err("[api]\n");
        assert!(e.contains("data_dir"), "{e}");
        let e = err("data_dir = \"/x\"\n[events]\nretain_per_machine = 1\n");
        assert!(e.contains("key `events.retain_per_machine`"), "{e}");
    }

    #[test]
    fn relative_data_dir_is_beside_the_file() {
        let c = Config::parse(
            Path::new("/etc/cosm/appliance.toml"),
            "data_dir = \"state\"",
        )
        .unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/cosm/state"));
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8080");
    }
}
