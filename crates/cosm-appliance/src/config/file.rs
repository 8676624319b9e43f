//! The config file's format: what TOML the appliance accepts (unknown keys are refused).
//! `config` turns it into checked runtime settings.

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
    #[serde(default)]
    pub vms: Vms,
    #[serde(default)]
    pub ha: Ha,
    #[serde(default)]
    pub console: Console,
}

/// The web console's sessions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// A session unused this long is over (default 1800 s).
    pub session_idle_secs: u64,
    /// A session is over this long after its login, used or not (default 12 h).
    pub session_max_secs: u64,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            session_idle_secs: 1800,
            session_max_secs: 12 * 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ha {
    /// Fence dead hypervisor hosts and restart their HA VMs elsewhere (default true).
    pub enabled: bool,
    /// Alarms raised and cleared are POSTed here as JSON (`{"event": "raised", "alarm": …}`).
    pub alarm_webhook: Option<String>,
}

impl Default for Ha {
    fn default() -> Self {
        Ha {
            enabled: true,
            alarm_webhook: None,
        }
    }
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
pub struct Vms {
    /// vCPUs placed per physical CPU thread of a host.
    pub cpu_overcommit: f64,
    /// Memory placed per byte of a host's physical memory (1.0: no overcommit).
    pub memory_overcommit: f64,
}

impl Default for Vms {
    fn default() -> Self {
        Vms {
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
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
    /// Enrolment refuses to create a machine while this many are `discovered`.
    pub max_discovered: usize,
    /// Enrolments that create a machine, per second (sustained), and in a burst.
    pub enroll_per_sec: u32,
    pub enroll_burst: u32,
    /// A machine an install made `deployed` whose installed system's agent has not beaten
    /// this many seconds after the install report is `failed`; 0: it waits forever.
    pub first_boot_secs: u32,
}

impl Default for Agents {
    fn default() -> Self {
        Agents {
            heartbeat_secs: 5,
            missed_beats: 3,
            max_discovered: 4096,
            enroll_per_sec: 50,
            enroll_burst: 1000,
            first_boot_secs: 1800,
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
    /// A machine DHCP alone recorded (never registered, never enrolled) is deleted after
    /// this many seconds; 0 = never.
    #[serde(default = "default_discovered_expiry")]
    pub discovered_expiry_secs: u64,
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
    /// ICMPv6 router advertisements on the provisioning segment (router lifetime 0, no
    /// prefix), which end network-boot firmware's wait for IPv6 autoconfiguration. Unset:
    /// on in authoritative mode, off in proxy mode.
    #[serde(default)]
    pub router_advertisements: Option<bool>,
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
fn default_discovered_expiry() -> u64 {
    3600
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
    /// HTTP connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// A connection with no traffic either way for this many seconds is closed (a silent
    /// client, an idle keep-alive); so is one whose request headers take longer.
    pub idle_timeout_secs: u64,
    /// HTTPS on the same port: a PEM certificate chain and its PEM private key, both or
    /// neither (relative to data_dir). Neither: a self-signed certificate made once in
    /// data_dir.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1024 * 1024,
            max_connections: 4096,
            idle_timeout_secs: 30,
            tls_cert: None,
            tls_key: None,
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
