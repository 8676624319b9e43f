//! The appliance configuration: a TOML file read once at start.
//!
//! [`file`] holds the file format (serde, unknown keys refused); [`Config`] is the checked
//! runtime form, made from it with `TryFrom`. Every error names the file and the key.

use cosm_kickstart::{Release, Templates};
use cosm_netboot::dhcp::server::Listen;
use cosm_netboot::dhcp::{Boot, DhcpConfig, Mode, Pool, Subnet, UnknownMacs};
use cosm_netboot::tftp::TftpSettings;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
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
        #[serde(default)]
        pub dhcp: Option<Dhcp>,
        #[serde(default)]
        pub agents: Agents,
        #[serde(default)]
        pub boot: Boot,
        #[serde(default)]
        pub tftp: Option<Tftp>,
        #[serde(default)]
        pub kickstart: Kickstart,
        #[serde(default)]
        pub images: Images,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Kickstart {
        /// centos-7, centos-stream-9, rocky-8, rocky-9, alma-8, alma-9.
        pub release: String,
        /// Templates here replace the built-in ones of the same name.
        pub templates_dir: Option<String>,
        pub root_password_hash: Option<String>,
        pub ssh_keys: Vec<String>,
        pub timezone: String,
        pub selinux: String,
        pub firewall: bool,
        /// Install source mirror (inst.repo and `url`); default: the image repository's
        /// `<release>-repo/` tree is not served, so this or media in the repository is needed.
        pub repo_url: Option<String>,
        /// Image-repository names of the installer kernel and initrd.
        pub installer_kernel: Option<String>,
        pub installer_initrd: Option<String>,
        pub installer_args: String,
        /// Roles whose machines are Xen hosts (the `host` template with Xen).
        pub xen_roles: Vec<String>,
        pub xen_repo_url: String,
    }

    impl Default for Kickstart {
        fn default() -> Self {
            Kickstart {
                release: "rocky-9".into(),
                templates_dir: None,
                root_password_hash: None,
                ssh_keys: Vec::new(),
                timezone: "Etc/UTC".into(),
                selinux: "enforcing".into(),
                firewall: true,
                repo_url: None,
                installer_kernel: None,
                installer_initrd: None,
                installer_args: "console=tty0 console=ttyS0,115200".into(),
                xen_roles: Vec::new(),
                xen_repo_url: "http://mirror.centos.org/centos/7/virt/x86_64/xen/".into(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Images {
        /// Largest upload accepted, in MiB.
        pub max_upload_mib: u64,
    }

    impl Default for Images {
        fn default() -> Self {
            Images {
                max_upload_mib: 16 * 1024,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Boot {
        /// Directory served over TFTP and at `/boot/<file>`; relative to data_dir.
        pub dir: String,
        /// Where the iPXE binaries (undionly.kpxe, ipxe.efi, snponly.efi) are copied from.
        pub ipxe_dir: String,
        /// Where the agent ramdisk (vmlinuz, initramfs.img) is copied from.
        pub ramdisk_dir: String,
        /// Appended to the ramdisk's kernel command line.
        pub kernel_args: String,
        /// Download attempts per step of an iPXE script before it reports and gives up.
        pub retries: u32,
        /// Where cosm-agent and cosm-agent.service are copied from, for installed systems.
        pub agent_dir: String,
        /// The appliance's URL as machines reach it; default dhcp.boot.http_base, or
        /// http://<api.listen>.
        pub appliance_url: Option<String>,
    }

    impl Default for Boot {
        fn default() -> Self {
            Boot {
                dir: "boot".into(),
                ipxe_dir: "/usr/lib/ipxe".into(),
                ramdisk_dir: "/usr/share/cosm/ramdisk".into(),
                kernel_args: "console=tty0 console=ttyS0,115200".into(),
                retries: 3,
                agent_dir: "/usr/lib/cosm".into(),
                appliance_url: None,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Tftp {
        pub enabled: bool,
        pub listen: String,
        pub max_transfers: usize,
        pub block_size_limit: u16,
        pub window_size_limit: u16,
        pub timeout_ms: u64,
        pub max_send_retries: u32,
        pub cache_mib: u64,
    }

    impl Default for Tftp {
        fn default() -> Self {
            Tftp {
                enabled: true,
                listen: "0.0.0.0:69".into(),
                max_transfers: 256,
                block_size_limit: 1468,
                window_size_limit: 64,
                timeout_ms: 2000,
                max_send_retries: 5,
                cache_mib: 512,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Agents {
        /// Seconds between agent heartbeats.
        pub heartbeat_secs: u32,
        /// A machine is `lost` after this many intervals without a heartbeat.
        pub missed_beats: u32,
    }

    impl Default for Agents {
        fn default() -> Self {
            Agents {
                heartbeat_secs: 5,
                missed_beats: 3,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dhcp {
        /// `authoritative`, `proxy` or `off`.
        #[serde(default = "default_mode")]
        pub mode: String,
        #[serde(default = "default_dhcp_listen")]
        pub listen: String,
        #[serde(default)]
        pub interface: Option<String>,
        pub server_id: String,
        #[serde(default = "default_unknown")]
        pub unknown_macs: String,
        #[serde(default = "default_max_unknown")]
        pub max_unknown_leases: usize,
        #[serde(default = "default_offer_hold")]
        pub offer_hold_secs: u32,
        #[serde(default = "default_quarantine")]
        pub decline_quarantine_secs: u32,
        #[serde(default = "default_per_mac_rate")]
        pub per_mac_rate: u32,
        #[serde(default)]
        pub per_relay_rate: u32,
        /// ICMP echo probe of a new address before it is offered, in ms; 0 = off.
        #[serde(default)]
        pub probe_timeout_ms: u32,
        #[serde(default = "default_client_port")]
        pub client_port: u16,
        #[serde(default = "default_relay_port")]
        pub relay_port: u16,
        #[serde(default)]
        pub boot: DhcpBoot,
        #[serde(default)]
        pub subnets: Vec<DhcpSubnet>,
    }

    fn default_mode() -> String {
        "authoritative".into()
    }
    fn default_dhcp_listen() -> String {
        "0.0.0.0:67".into()
    }
    fn default_unknown() -> String {
        "discover".into()
    }
    fn default_max_unknown() -> usize {
        4096
    }
    fn default_offer_hold() -> u32 {
        30
    }
    fn default_quarantine() -> u32 {
        600
    }
    fn default_per_mac_rate() -> u32 {
        20
    }
    fn default_client_port() -> u16 {
        68
    }
    fn default_relay_port() -> u16 {
        67
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DhcpBoot {
        pub tftp_server: Option<String>,
        pub bios_file: Option<String>,
        pub uefi_x64_file: Option<String>,
        pub uefi_arm64_file: Option<String>,
        pub http_base: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DhcpSubnet {
        pub cidr: String,
        #[serde(default)]
        pub pools: Vec<String>,
        #[serde(default)]
        pub routers: Vec<String>,
        #[serde(default)]
        pub dns: Vec<String>,
        #[serde(default)]
        pub domain: Option<String>,
        #[serde(default)]
        pub mtu: Option<u16>,
        #[serde(default = "default_lease_time")]
        pub lease_time_secs: u32,
        #[serde(default)]
        pub relays: Vec<String>,
    }

    fn default_lease_time() -> u32 {
        3600
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
    /// `None` when DHCP is off.
    pub dhcp: Option<DhcpSettings>,
    pub heartbeat_secs: u32,
    pub missed_beats: u32,
    pub boot: BootSettings,
    /// `None` when TFTP is off (no `[tftp]` section, or `enabled = false`).
    pub tftp: Option<TftpSettings>,
    pub kickstart: KickstartSettings,
    /// Directory of the image repository's files.
    pub images_dir: PathBuf,
    pub max_upload_bytes: u64,
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
        let dhcp = match f.dhcp {
            Some(d) => {
                dhcp_settings(d, api_listen).map_err(|(key, message)| invalid(&key, message))?
            }
            None => None,
        };
        if !(1..=3600).contains(&f.agents.heartbeat_secs) {
            return Err(invalid(
                "agents.heartbeat_secs",
                format!("{} is outside 1..=3600", f.agents.heartbeat_secs),
            ));
        }
        if !(1..=100).contains(&f.agents.missed_beats) {
            return Err(invalid(
                "agents.missed_beats",
                format!("{} is outside 1..=100", f.agents.missed_beats),
            ));
        }
        let rel = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_relative() {
                data_dir.join(p)
            } else {
                p
            }
        };
        if !(1..=20).contains(&f.boot.retries) {
            return Err(invalid(
                "boot.retries",
                format!("{} is outside 1..=20", f.boot.retries),
            ));
        }
        let appliance_url = f
            .boot
            .appliance_url
            .clone()
            .or_else(|| dhcp.as_ref().map(|d| d.core.boot.http_base.clone()))
            .unwrap_or_else(|| format!("http://{api_listen}"))
            .trim_end_matches('/')
            .to_string();
        if !appliance_url.starts_with("http://") && !appliance_url.starts_with("https://") {
            return Err(invalid(
                "boot.appliance_url",
                format!("{appliance_url:?} is not an http:// URL"),
            ));
        }
        if f.boot.kernel_args.contains(['\n', '\r']) {
            return Err(invalid("boot.kernel_args", "must be one line".into()));
        }
        let boot = BootSettings {
            dir: rel(&f.boot.dir),
            ipxe_dir: rel(&f.boot.ipxe_dir),
            ramdisk_dir: rel(&f.boot.ramdisk_dir),
            agent_dir: rel(&f.boot.agent_dir),
            kernel_args: f.boot.kernel_args.clone(),
            retries: f.boot.retries,
            appliance_url,
        };
        let tftp = match f.tftp {
            Some(t) if t.enabled => {
                Some(tftp_settings(t, &boot.dir).map_err(|(key, message)| invalid(&key, message))?)
            }
            _ => None,
        };
        let k = f.kickstart;
        let release = Release::parse(&k.release).ok_or_else(|| {
            invalid(
                "kickstart.release",
                format!(
                    "{:?} is not one of {}",
                    k.release,
                    Release::ALL.map(|r| r.id()).join(", ")
                ),
            )
        })?;
        let templates_dir = k.templates_dir.as_deref().map(rel);
        let templates = Templates::new(templates_dir.as_deref())
            .map_err(|e| invalid("kickstart.templates_dir", e.to_string()))?;
        if !matches!(k.selinux.as_str(), "enforcing" | "permissive" | "disabled") {
            return Err(invalid(
                "kickstart.selinux",
                format!("{:?} is not enforcing, permissive or disabled", k.selinux),
            ));
        }
        if let Some(h) = &k.root_password_hash {
            if !h.starts_with('$') || h.contains(char::is_whitespace) {
                return Err(invalid(
                    "kickstart.root_password_hash",
                    "must be a crypt(3) hash such as $6$salt$… (make one with `openssl passwd -6`)"
                        .into(),
                ));
            }
        }
        for (i, key) in k.ssh_keys.iter().enumerate() {
            if key.contains(['\n', '\r']) || !key.starts_with("ssh-") && !key.starts_with("ecdsa-")
            {
                return Err(invalid(
                    &format!("kickstart.ssh_keys[{i}]"),
                    "must be one public key line (ssh-ed25519 AAAA… comment)".into(),
                ));
            }
        }
        for (key, value) in [
            ("kickstart.installer_args", &k.installer_args),
            ("kickstart.timezone", &k.timezone),
        ] {
            if value.contains(['\n', '\r', '$', '#']) {
                return Err(invalid(key, "must be one line without $ or #".into()));
            }
        }
        let kickstart = KickstartSettings {
            release,
            templates: std::sync::Arc::new(templates),
            templates_dir,
            installer_kernel: k
                .installer_kernel
                .unwrap_or_else(|| format!("{}-vmlinuz", release.id())),
            installer_initrd: k
                .installer_initrd
                .unwrap_or_else(|| format!("{}-initrd.img", release.id())),
            root_password_hash: k.root_password_hash,
            ssh_keys: k.ssh_keys,
            timezone: k.timezone,
            selinux: k.selinux,
            firewall: k.firewall,
            repo_url: k.repo_url,
            installer_args: k.installer_args,
            xen_roles: k.xen_roles,
            xen_repo_url: k.xen_repo_url,
        };
        if !(1..=1 << 30).contains(&f.images.max_upload_mib) {
            return Err(invalid(
                "images.max_upload_mib",
                format!("{} is outside 1..=1073741824", f.images.max_upload_mib),
            ));
        }
        Ok(Config {
            kickstart,
            images_dir: data_dir.join("images"),
            max_upload_bytes: f.images.max_upload_mib << 20,
            boot,
            tftp,
            heartbeat_secs: f.agents.heartbeat_secs,
            missed_beats: f.agents.missed_beats,
            path: path.to_path_buf(),
            data_dir,
            api_listen,
            max_body_bytes: f.api.max_body_bytes as usize,
            events_per_machine: f.events.retain_per_machine,
            dhcp,
        })
    }
}

type KeyError = (String, String);

fn tftp_settings(t: file::Tftp, root: &Path) -> Result<TftpSettings, KeyError> {
    let listen: SocketAddr = t.listen.parse().map_err(|_| {
        (
            "tftp.listen".to_string(),
            format!("{:?} is not an address:port such as 0.0.0.0:69", t.listen),
        )
    })?;
    let range = |key: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err((format!("tftp.{key}"), format!("{v} is outside {lo}..={hi}")))
        }
    };
    range("max_transfers", t.max_transfers as u64, 1, 100_000)?;
    // RFC 2348 allows 8..=65464; larger than the MTU only makes fragments.
    range("block_size_limit", t.block_size_limit.into(), 512, 65464)?;
    range("window_size_limit", t.window_size_limit.into(), 1, 65535)?;
    range("timeout_ms", t.timeout_ms, 100, 255_000)?;
    range("max_send_retries", t.max_send_retries.into(), 1, 100)?;
    range("cache_mib", t.cache_mib, 0, 1 << 20)?;
    Ok(TftpSettings {
        listen,
        root: root.to_path_buf(),
        max_transfers: t.max_transfers,
        block_size_limit: t.block_size_limit,
        window_size_limit: t.window_size_limit,
        timeout: std::time::Duration::from_millis(t.timeout_ms),
        max_send_retries: t.max_send_retries,
        cache_bytes: t.cache_mib << 20,
    })
}

fn ipv4(key: &str, s: &str) -> Result<Ipv4Addr, KeyError> {
    s.trim()
        .parse()
        .map_err(|_| (key.to_string(), format!("{s:?} is not an IPv4 address")))
}

fn dhcp_settings(d: file::Dhcp, api_listen: SocketAddr) -> Result<Option<DhcpSettings>, KeyError> {
    let k = |name: &str| format!("dhcp.{name}");
    let mode = match d.mode.as_str() {
        "off" => return Ok(None),
        "authoritative" => Mode::Authoritative,
        "proxy" => Mode::Proxy,
        other => {
            return Err((
                k("mode"),
                format!("{other:?} is not one of authoritative, proxy, off"),
            ))
        }
    };
    let listen: SocketAddrV4 = d.listen.parse().map_err(|_| {
        (
            k("listen"),
            format!(
                "{:?} is not an IPv4 address:port such as 0.0.0.0:67",
                d.listen
            ),
        )
    })?;
    let server_id = ipv4(&k("server_id"), &d.server_id)?;
    if server_id.is_unspecified() || server_id.is_broadcast() {
        return Err((
            k("server_id"),
            "must be this appliance's address on the provisioning network".into(),
        ));
    }
    let unknown_macs = match d.unknown_macs.as_str() {
        "discover" => UnknownMacs::Discover,
        "ignore" => UnknownMacs::Ignore,
        other => {
            return Err((
                k("unknown_macs"),
                format!("{other:?} is not one of discover, ignore"),
            ))
        }
    };
    if d.probe_timeout_ms > 5000 {
        return Err((k("probe_timeout_ms"), "must be 0 (off) to 5000 ms".into()));
    }
    if !(1..=3600).contains(&d.offer_hold_secs) {
        return Err((k("offer_hold_secs"), "must be 1..=3600".into()));
    }
    let mut subnets: Vec<Subnet> = Vec::new();
    for (i, s) in d.subnets.into_iter().enumerate() {
        let sk = |name: &str| format!("dhcp.subnets[{i}].{name}");
        let (net, len) = s.cidr.split_once('/').ok_or_else(|| {
            (
                sk("cidr"),
                format!("{:?} is not a network such as 192.0.2.0/24", s.cidr),
            )
        })?;
        let network = ipv4(&sk("cidr"), net)?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| (sk("cidr"), format!("prefix length {len:?} must be 8..=30")))?;
        let mut subnet = Subnet {
            network,
            prefix_len,
            pools: Vec::new(),
            routers: Vec::new(),
            dns: Vec::new(),
            domain: s.domain.clone(),
            mtu: s.mtu,
            lease_time_secs: s.lease_time_secs,
            relays: Vec::new(),
        };
        if u32::from(network) & !u32::from(subnet.mask()) != 0 {
            return Err((
                sk("cidr"),
                format!("{} has host bits set for /{prefix_len}", s.cidr),
            ));
        }
        if !(10..=31_536_000).contains(&s.lease_time_secs) {
            return Err((
                sk("lease_time_secs"),
                "must be 10..=31536000 (seconds)".into(),
            ));
        }
        if let Some(mtu) = s.mtu {
            if mtu < 576 {
                return Err((sk("mtu"), "must be at least 576".into()));
            }
        }
        for (j, p) in s.pools.iter().enumerate() {
            let pk = format!("dhcp.subnets[{i}].pools[{j}]");
            let (a, b) = p.split_once('-').ok_or_else(|| {
                (
                    pk.clone(),
                    format!("{p:?} is not a range such as 192.0.2.100-192.0.2.200"),
                )
            })?;
            let pool = Pool {
                first: ipv4(&pk, a)?,
                last: ipv4(&pk, b)?,
            };
            if pool.first > pool.last || !subnet.contains(pool.first) || !subnet.contains(pool.last)
            {
                return Err((
                    pk,
                    format!("{p} is not an ascending range inside {}", s.cidr),
                ));
            }
            let overlaps = subnets
                .iter()
                .flat_map(|o| o.pools.iter())
                .chain(subnet.pools.iter())
                .any(|o| o.first <= pool.last && pool.first <= o.last);
            if overlaps {
                return Err((pk, format!("{p} overlaps another pool")));
            }
            subnet.pools.push(pool);
        }
        subnet.routers = s
            .routers
            .iter()
            .map(|r| ipv4(&sk("routers"), r))
            .collect::<Result<_, _>>()?;
        subnet.dns = s
            .dns
            .iter()
            .map(|r| ipv4(&sk("dns"), r))
            .collect::<Result<_, _>>()?;
        subnet.relays = s
            .relays
            .iter()
            .map(|r| ipv4(&sk("relays"), r))
            .collect::<Result<_, _>>()?;
        subnets.push(subnet);
    }
    if subnets.is_empty() && mode == Mode::Authoritative {
        return Err((
            k("subnets"),
            "authoritative mode needs at least one [[dhcp.subnets]]".into(),
        ));
    }
    let tftp_server = match &d.boot.tftp_server {
        Some(t) => ipv4("dhcp.boot.tftp_server", t)?,
        None => server_id,
    };
    let http_base = d
        .boot
        .http_base
        .clone()
        .unwrap_or_else(|| format!("http://{server_id}:{}", api_listen.port()))
        .trim_end_matches('/')
        .to_string();
    if !http_base.starts_with("http://") && !http_base.starts_with("https://") {
        return Err((
            "dhcp.boot.http_base".into(),
            format!("{http_base:?} is not an http:// URL"),
        ));
    }
    let core = DhcpConfig {
        mode,
        server_id,
        subnets,
        unknown_macs,
        max_unknown_leases: d.max_unknown_leases,
        offer_hold_secs: d.offer_hold_secs,
        decline_quarantine_secs: d.decline_quarantine_secs,
        boot: Boot {
            tftp_server,
            bios_file: d.boot.bios_file.unwrap_or_else(|| "undionly.kpxe".into()),
            uefi_x64_file: d.boot.uefi_x64_file.unwrap_or_else(|| "ipxe.efi".into()),
            uefi_arm64_file: d.boot.uefi_arm64_file,
            http_base,
        },
    };
    let listen = Listen {
        addr: listen,
        interface: d.interface,
        client_port: d.client_port,
        relay_port: d.relay_port,
        per_mac_rate: d.per_mac_rate,
        per_relay_rate: d.per_relay_rate,
        probe_timeout_ms: d.probe_timeout_ms,
    };
    Ok(Some(DhcpSettings { core, listen }))
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
