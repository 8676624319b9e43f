//! The appliance configuration: a TOML file read once at start.
//!
//! [`file`] holds the file format (serde, unknown keys refused); [`Config`] is the checked
//! runtime form, made from it with `TryFrom`. Every error names the file and the key.

use cosm_kickstart::{Release, Templates};
use cosm_netboot::dhcp::server::Listen;
use cosm_netboot::dhcp::DhcpConfig;
use cosm_netboot::tftp::TftpSettings;
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
pub mod file;
mod install;
mod network;

/// The checked configuration the appliance runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub api_listen: SocketAddr,
    pub max_body_bytes: usize,
    /// HTTP connection bounds (`api.max_connections`, `api.idle_timeout_secs`).
    pub http_limits: HttpLimits,
    /// The certificate of HTTPS on the API port (`api.tls_cert`, `api.tls_key`).
    pub api_tls: ApiTls,
    pub events_per_machine: u64,
    /// `None` when DHCP is off.
    pub dhcp: Option<DhcpSettings>,
    pub heartbeat_secs: u32,
    pub missed_beats: u32,
    /// How long a machine an install made `deployed` may boot its installed system before
    /// it is `failed` (`agents.first_boot_secs`); `None`: forever.
    pub first_boot: Option<std::time::Duration>,
    /// Bounds on enrolment (see `app::agents`).
    pub enroll_limits: EnrollLimits,
    pub boot: BootSettings,
    /// `None` when TFTP is off (no `[tftp]` section, or `enabled = false`).
    pub tftp: Option<TftpSettings>,
    pub kickstart: KickstartSettings,
    /// Directory of the image repository's files.
    pub images_dir: PathBuf,
    pub max_upload_bytes: u64,
    /// How far VM placement may exceed hosts' capacity (`[vms]`): vCPUs per CPU thread,
    /// memory per byte.
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// `[ha] enabled`: fence dead hosts and restart their HA VMs.
    pub ha_enabled: bool,
    /// `[ha] alarm_webhook`: where alarm changes are POSTed.
    pub alarm_webhook: Option<String>,
    /// `[console]`: how long a console session lasts unused, and at most.
    pub session_idle: std::time::Duration,
    pub session_max: std::time::Duration,
}

/// Bounds on enrolment from the provisioning network, where anyone holds the enrol token.
#[derive(Debug, Clone, Copy)]
pub struct EnrollLimits {
    /// No machine is created by enrolment while this many are `discovered`.
    pub max_discovered: usize,
    /// Enrolments that create a machine: sustained rate and burst (a token bucket).
    pub per_sec: u32,
    pub burst: u32,
}

impl Default for EnrollLimits {
    fn default() -> Self {
        EnrollLimits {
            max_discovered: 4096,
            per_sec: 50,
            burst: 1000,
        }
    }
}

/// HTTP connection bounds (`api.max_connections`, `api.idle_timeout_secs`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub idle_timeout: std::time::Duration,
}

/// The self-signed certificate's file in data_dir (PEM).
pub const SELF_SIGNED_CERT: &str = "console-cert.pem";
/// The self-signed certificate's private key in data_dir (PEM, mode 0600).
pub const SELF_SIGNED_KEY: &str = "console-key.pem";

/// Where the certificate of HTTPS on the API port comes from (see [`crate::api_tls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// `api.tls_cert` and `api.tls_key`: the operator's PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// Neither key: a self-signed certificate, made at the first start and kept in data_dir
    /// (`console-cert.pem`, `console-key.pem`).
    SelfSigned { cert: PathBuf, key: PathBuf },
}

/// How machines are installed.
#[derive(Debug, Clone)]
pub struct KickstartSettings {
    pub release: Release,
    pub templates: std::sync::Arc<Templates>,
    pub templates_dir: Option<PathBuf>,
    pub root_password_hash: Option<String>,
    pub ssh_keys: Vec<String>,
    pub timezone: String,
    pub selinux: String,
    pub firewall: bool,
    pub repo_url: Option<String>,
    pub installer_kernel: String,
    pub installer_initrd: String,
    pub installer_args: String,
    pub xen_roles: Vec<String>,
    pub xen_repo_url: String,
}

/// Boot files and the iPXE scripts' settings.
#[derive(Debug, Clone)]
pub struct BootSettings {
    pub dir: PathBuf,
    pub ipxe_dir: PathBuf,
    pub ramdisk_dir: PathBuf,
    pub agent_dir: PathBuf,
    pub kernel_args: String,
    pub retries: u32,
    /// No trailing slash.
    pub appliance_url: String,
}

/// The DHCP service: what the core decides with and how the shell listens.
#[derive(Debug, Clone)]
pub struct DhcpSettings {
    pub core: DhcpConfig,
    pub listen: Listen,
    /// Machines DHCP alone recorded are deleted after this long; `None`: kept.
    pub discovered_expiry: Option<std::time::Duration>,
    /// Send IPv6 router advertisements on the provisioning segment while the DHCP mode in
    /// force is authoritative (`dhcp.router_advertisements`).
    pub router_advertisements: bool,
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
            let key = field_path(&e.path().to_string(), e.inner().message());
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
        for (key, ratio) in [
            ("vms.cpu_overcommit", f.vms.cpu_overcommit),
            ("vms.memory_overcommit", f.vms.memory_overcommit),
        ] {
            if !(0.1..=64.0).contains(&ratio) {
                return Err(invalid(
                    key,
                    format!("{ratio} is outside 0.1..=64 (1.0 places exactly the host's capacity)"),
                ));
            }
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
        if !(16..=1_000_000).contains(&f.api.max_connections) {
            return Err(invalid(
                "api.max_connections",
                format!("{} is outside 16..=1000000", f.api.max_connections),
            ));
        }
        if !(1..=3600).contains(&f.api.idle_timeout_secs) {
            return Err(invalid(
                "api.idle_timeout_secs",
                format!("{} is outside 1..=3600", f.api.idle_timeout_secs),
            ));
        }
        if !(10..=1_000_000).contains(&f.events.retain_per_machine) {
            return Err(invalid(
                "events.retain_per_machine",
                format!("{} is outside 10..=1000000", f.events.retain_per_machine),
            ));
        }
        let dhcp = match f.dhcp {
            Some(d) => network::dhcp_settings(d, api_listen)
                .map_err(|(key, message)| invalid(&key, message))?,
            None => None,
        };
        if !(1..=3600).contains(&f.agents.heartbeat_secs) {
            return Err(invalid(
                "agents.heartbeat_secs",
                format!("{} is outside 1..=3600", f.agents.heartbeat_secs),
            ));
        }
        if f.agents.first_boot_secs > 86_400 {
            return Err(invalid(
                "agents.first_boot_secs",
                format!(
                    "{} is more than a day (86400); 0 waits forever",
                    f.agents.first_boot_secs
                ),
            ));
        }
        if !(1..=100).contains(&f.agents.missed_beats) {
            return Err(invalid(
                "agents.missed_beats",
                format!("{} is outside 1..=100", f.agents.missed_beats),
            ));
        }
        for (key, value, max) in [
            (
                "agents.max_discovered",
                f.agents.max_discovered as u64,
                1_000_000,
            ),
            (
                "agents.enroll_per_sec",
                u64::from(f.agents.enroll_per_sec),
                100_000,
            ),
            (
                "agents.enroll_burst",
                u64::from(f.agents.enroll_burst),
                1_000_000,
            ),
        ] {
            if !(1..=max).contains(&value) {
                return Err(invalid(key, format!("{value} is outside 1..={max}")));
            }
        }
        let rel = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_relative() {
                data_dir.join(p)
            } else {
                p
            }
        };
        let api_tls = match (&f.api.tls_cert, &f.api.tls_key) {
            (None, None) => ApiTls::SelfSigned {
                cert: data_dir.join(SELF_SIGNED_CERT),
                key: data_dir.join(SELF_SIGNED_KEY),
            },
            (Some(cert), Some(key)) => {
                for (k, v) in [("api.tls_cert", cert), ("api.tls_key", key)] {
                    if v.trim().is_empty() {
                        return Err(invalid(k, "must not be empty".into()));
                    }
                }
                ApiTls::Files {
                    cert: rel(cert),
                    key: rel(key),
                }
            }
            (Some(_), None) => {
                return Err(invalid(
                    "api.tls_key",
                    "is missing: api.tls_cert is set, and a certificate needs its private key (set both, or neither for a self-signed certificate)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "api.tls_cert",
                    "is missing: api.tls_key is set, and a key needs its certificate (set both, or neither for a self-signed certificate)".into(),
                ))
            }
        };
        let boot = install::boot_settings(&f.boot, dhcp.as_ref(), api_listen, &rel)
            .map_err(|(key, message)| invalid(&key, message))?;
        let tftp = match f.tftp {
            Some(t) if t.enabled => Some(
                network::tftp_settings(t, &boot.dir)
                    .map_err(|(key, message)| invalid(&key, message))?,
            ),
            _ => None,
        };
        let kickstart = install::kickstart_settings(f.kickstart, &rel)
            .map_err(|(key, message)| invalid(&key, message))?;
        if !(1..=1 << 30).contains(&f.images.max_upload_mib) {
            return Err(invalid(
                "images.max_upload_mib",
                format!("{} is outside 1..=1073741824", f.images.max_upload_mib),
            ));
        }
        if let Some(url) = &f.ha.alarm_webhook {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "ha.alarm_webhook",
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
        }
        for (key, v) in [
            ("console.session_idle_secs", f.console.session_idle_secs),
            ("console.session_max_secs", f.console.session_max_secs),
        ] {
            if !(1..=30 * 86400).contains(&v) {
                return Err(invalid(key, format!("{v} is outside 1..=2592000")));
            }
        }
        Ok(Config {
            session_idle: std::time::Duration::from_secs(f.console.session_idle_secs),
            session_max: std::time::Duration::from_secs(f.console.session_max_secs),
            ha_enabled: f.ha.enabled,
            alarm_webhook: f.ha.alarm_webhook.clone(),
            kickstart,
            images_dir: data_dir.join("images"),
            max_upload_bytes: f.images.max_upload_mib << 20,
            cpu_overcommit: f.vms.cpu_overcommit,
            memory_overcommit: f.vms.memory_overcommit,
            boot,
            tftp,
            heartbeat_secs: f.agents.heartbeat_secs,
            missed_beats: f.agents.missed_beats,
            first_boot: (f.agents.first_boot_secs > 0)
                .then(|| std::time::Duration::from_secs(f.agents.first_boot_secs.into())),
            enroll_limits: EnrollLimits {
                max_discovered: f.agents.max_discovered,
                per_sec: f.agents.enroll_per_sec,
                burst: f.agents.enroll_burst,
            },
            path: path.to_path_buf(),
            data_dir,
            api_listen,
            max_body_bytes: f.api.max_body_bytes as usize,
            http_limits: HttpLimits {
                max_connections: f.api.max_connections,
                idle_timeout: std::time::Duration::from_secs(f.api.idle_timeout_secs),
            },
            api_tls,
            events_per_machine: f.events.retain_per_machine,
            dhcp,
        })
    }
}

/// The dotted path of the field a serde error is about. serde reports a missing or unknown
/// field with the path of the object that holds it and the name only in the message, so
/// the name is taken from there.
pub fn field_path(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let base = if path == "." { "" } else { path };
    match named {
        // serde_path_to_error already ends the path with an unknown field's name.
        Some(name) if base == name || base.ends_with(&format!(".{name}")) => base.to_string(),
        Some(name) if base.is_empty() => name.to_string(),
        Some(name) => format!("{base}.{name}"),
        None => base.to_string(),
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
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
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
        let e = err("data_dir = \"/x\"\n[vms]\nmemory_overcommit = 0\n");
        assert!(
            e.contains("key `vms.memory_overcommit`") && e.contains("0.1..=64"),
            "{e}"
        );
        let e = err("data_dir = \"/x\"\n[agents]\nfirst_boot_secs = 90000\n");
        assert!(
            e.contains("key `agents.first_boot_secs`") && e.contains("0 waits forever"),
            "{e}"
        );
    }

    #[test]
    fn the_first_boot_deadline_defaults_to_half_an_hour_and_0_turns_it_off() {
        let parse =
            |text: &str| Config::parse(Path::new("/etc/cosm/appliance.toml"), text).unwrap();
        let c = parse("data_dir = \"/x\"\n");
        assert_eq!(c.first_boot, Some(std::time::Duration::from_secs(1800)));
        let c = parse("data_dir = \"/x\"\n[agents]\nfirst_boot_secs = 0\n");
        assert_eq!(c.first_boot, None);
    }

    /// Hardening (issue 11, item 17): machines are never sent to `http://0.0.0.0:8080`.
    #[test]
    fn an_unreachable_appliance_url_is_refused() {
        for text in [
            "data_dir = \"/x\"\n[api]\nlisten = \"0.0.0.0:8080\"\n",
            "data_dir = \"/x\"\n[api]\nlisten = \"[::]:8080\"\n",
            "data_dir = \"/x\"\n[boot]\nappliance_url = \"http://0.0.0.0:8080/\"\n",
        ] {
            let e = err(text);
            assert!(
                e.contains("key `boot.appliance_url`") && e.contains("can reach"),
                "{text}: {e}"
            );
        }
        // With DHCP the URL comes from its server_id; an explicit URL is used as given.
        let dhcp = "data_dir = \"/x\"\n[api]\nlisten = \"0.0.0.0:8080\"\n[dhcp]\nmode = \"proxy\"\nserver_id = \"192.0.2.1\"\n";
        let c = Config::parse(Path::new("/x/a.toml"), dhcp).unwrap();
        assert_eq!(c.boot.appliance_url, "http://192.0.2.1:8080");
        let explicit = "data_dir = \"/x\"\n[api]\nlisten = \"0.0.0.0:8080\"\n[boot]\nappliance_url = \"http://192.0.2.1:8080\"\n";
        let c = Config::parse(Path::new("/x/a.toml"), explicit).unwrap();
        assert_eq!(c.boot.appliance_url, "http://192.0.2.1:8080");
    }

    #[test]
    fn dhcp_errors_name_the_key() {
        let base = "data_dir = \"/x\"\n[dhcp]\nserver_id = \"192.0.2.1\"\n";
        let e = err(base);
        assert!(e.contains("key `dhcp.subnets`"), "{e}");
        let e = err(&format!(
            "{base}[[dhcp.subnets]]\ncidr = \"192.0.2.0/24\"\npools = [\"192.0.2.10-192.0.3.5\"]\n"
        ));
        assert!(e.contains("key `dhcp.subnets[0].pools[0]`"), "{e}");
        let e = err(&format!(
            "{base}[[dhcp.subnets]]\ncidr = \"192.0.2.1/24\"\n"
        ));
        assert!(
            e.contains("key `dhcp.subnets[0].cidr`") && e.contains("host bits"),
            "{e}"
        );
        let e = err(&format!("{base}mode = \"maybe\"\n"));
        assert!(e.contains("key `dhcp.mode`"), "{e}");
        let e = err(&format!(
            "{base}[[dhcp.subnets]]\ncidr = \"192.0.2.0/24\"\nrouter = \"192.0.2.1\"\n"
        ));
        assert!(e.contains("dhcp.subnets") && e.contains("router"), "{e}");
        let ok = Config::parse(
            Path::new("/x.toml"),
            &format!("{base}[[dhcp.subnets]]\ncidr = \"192.0.2.0/24\"\npools = [\"192.0.2.10-192.0.2.20\"]\n"),
        )
        .unwrap();
        let d = ok.dhcp.unwrap();
        assert_eq!(d.core.boot.http_base, "http://192.0.2.1:8080");
        assert_eq!(d.listen.addr.to_string(), "0.0.0.0:67");
    }

    #[test]
    fn router_advertisements_default_to_the_mode_and_are_refused_in_proxy_mode() {
        let authoritative = "data_dir = \"/x\"\n[dhcp]\nserver_id = \"192.0.2.1\"\n";
        let subnet = "[[dhcp.subnets]]\ncidr = \"192.0.2.0/24\"\n";
        let proxy = "data_dir = \"/x\"\n[dhcp]\nmode = \"proxy\"\nserver_id = \"192.0.2.1\"\n";
        let ra = |text: &str| {
            Config::parse(Path::new("/x.toml"), text)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .dhcp
                .unwrap()
                .router_advertisements
        };
        assert!(
            ra(&format!("{authoritative}{subnet}")),
            "on by default when authoritative"
        );
        assert!(!ra(proxy), "off by default in proxy mode");
        assert!(!ra(&format!(
            "{authoritative}router_advertisements = false\n{subnet}"
        )));
        assert!(ra(&format!(
            "{authoritative}router_advertisements = true\n{subnet}"
        )));
        assert!(!ra(&format!("{proxy}router_advertisements = false\n")));
        let e = err(&format!("{proxy}router_advertisements = true\n"));
        assert!(
            e.contains("key `dhcp.router_advertisements`")
                && e.contains("authoritative")
                && e.contains("proxy mode"),
            "{e}"
        );
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let e = err("data_dir = \"/x\"\n[api]\ntls_cert = \"c.pem\"\n");
        assert!(
            e.contains("key `api.tls_key`") && e.contains("is missing"),
            "{e}"
        );
        let e = err("data_dir = \"/x\"\n[api]\ntls_key = \"k.pem\"\n");
        assert!(
            e.contains("key `api.tls_cert`") && e.contains("is missing"),
            "{e}"
        );
        let e = err("data_dir = \"/x\"\n[api]\ntls_cert = \"\"\ntls_key = \"k.pem\"\n");
        assert!(e.contains("key `api.tls_cert`: must not be empty"), "{e}");
        let c = Config::parse(
            Path::new("/etc/cosm/a.toml"),
            "data_dir = \"/x\"\n[api]\ntls_cert = \"c.pem\"\ntls_key = \"/etc/k.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            c.api_tls,
            ApiTls::Files {
                cert: "/x/c.pem".into(),
                key: "/etc/k.pem".into()
            }
        );
        let c = Config::parse(Path::new("/etc/cosm/a.toml"), "data_dir = \"/x\"").unwrap();
        assert_eq!(
            c.api_tls,
            ApiTls::SelfSigned {
                cert: "/x/console-cert.pem".into(),
                key: "/x/console-key.pem".into()
            }
        );
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
