//! The web console's wire types: site settings (the first-run wizard), sessions, and the
//! live rack's cards. The console is a client of the same API as `cosmctl`; these are the
//! few shapes only it needs.

use crate::{MacAddr, MachineState, RoleName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use utoipa::ToSchema;

/// How the appliance's DHCP answers on the provisioning network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DhcpModeSetting {
    /// Hands out addresses from the pool and boots machines.
    Authoritative,
    /// Beside the site's DHCP server: answers only PXE clients, with boot options.
    Proxy,
    /// No DHCP answers at all (machines are booted some other way).
    Off,
}

/// The provisioning network (wizard step 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// The appliance's NIC on the provisioning network (informative: DHCP keeps its
    /// socket; a different interface needs a restart).
    pub interface: String,
    /// `a.b.c.d/len`.
    pub subnet: String,
    /// The appliance's own address there: DHCP's server identifier.
    #[schema(value_type = String, format = Ipv4)]
    pub appliance_ip: Ipv4Addr,
    #[schema(value_type = String, format = Ipv4)]
    pub pool_start: Ipv4Addr,
    #[schema(value_type = String, format = Ipv4)]
    pub pool_end: Ipv4Addr,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub dns: Vec<Ipv4Addr>,
    pub mode: DhcpModeSetting,
}

/// What installs machines (wizard step 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OsSettings {
    /// A release id such as `rocky-9`.
    pub release: String,
    /// The install source (`inst.repo`); `None`: the installer has none.
    pub mirror_url: Option<String>,
    /// A crypt(3) hash (`openssl passwd -6`); `None`: root logins locked.
    pub root_password_hash: Option<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    pub timezone: String,
}

/// What a machine needs to take a role (wizard step 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RoleRequirements {
    pub min_cpus: u32,
    pub min_memory_mib: u64,
    pub min_disks: u32,
    /// Of the largest disk.
    pub min_disk_gib: u64,
}

/// The site settings the first-run wizard writes. They live in the store and take effect
/// without a restart; the TOML file keeps what the appliance needs before its store opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `None` when the appliance serves no DHCP and was never given a network.
    pub network: Option<NetworkSettings>,
    pub os: OsSettings,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleRequirements>,
}

/// Where an effective setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SettingSource {
    /// Written through the console or `PUT /api/v1/settings`.
    Store,
    /// The TOML file.
    File,
    /// Built in.
    Default,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EffectiveSetting {
    /// Dotted, e.g. `network.pool_start`.
    pub key: String,
    pub value: String,
    pub source: SettingSource,
}

/// One of the appliance's network interfaces, for the wizard's picker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InterfaceInfo {
    pub name: String,
    /// `a.b.c.d/len` for each IPv4 address.
    pub addresses: Vec<String>,
}

/// `GET /api/v1/settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SettingsView {
    pub settings: Settings,
    pub effective: Vec<EffectiveSetting>,
    pub interfaces: Vec<InterfaceInfo>,
    pub releases: Vec<String>,
    pub setup_complete: bool,
}

/// A wizard step, for `POST /api/v1/settings/validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SettingsStep {
    Network,
    Os,
    Roles,
    /// Every step: what `PUT /api/v1/settings` checks.
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateSettings {
    pub step: SettingsStep,
    pub settings: Settings,
}

/// One refused value: the dotted field and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// A new admin password for console logins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub password: String,
}

/// `POST /api/v1/session`: the admin password, or an API token (the session then has the
/// token's scope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub password: Option<String>,
    pub token: Option<String>,
}

/// A console session, as the console sees it (the session id itself is only in the
/// HttpOnly cookie).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub user: String,
    pub scope: crate::Scope,
    /// Sent back in `X-CSRF-Token` on every changing request.
    pub csrf: String,
    /// Unix milliseconds; each request moves it on (idle expiry).
    pub expires_at: u64,
    pub setup_complete: bool,
    pub password_set: bool,
}

/// Whether a machine meets a role's requirements, and which ones it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Validation {
    pub ok: bool,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Done,
    Active,
    Pending,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProgressStep {
    pub name: String,
    pub state: StepState,
    /// Unix ms of the timeline event that completed it.
    pub at: Option<u64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailedStep {
    pub step: String,
    pub message: String,
    /// The last timeline lines before the failure.
    pub log_tail: Vec<String>,
}

/// A machine's way through its boot and install, built from its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub percent: u8,
    pub steps: Vec<ProgressStep>,
    pub failed: Option<FailedStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CardDisk {
    pub name: String,
    pub size_bytes: u64,
}

/// A machine on the console's rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RackCard {
    pub mac: MacAddr,
    pub hostname: Option<String>,
    pub role: Option<RoleName>,
    pub state: MachineState,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    /// `bios` or `uefi`.
    pub firmware: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub disks: Vec<CardDisk>,
    /// Per role: whether the machine meets its requirements.
    pub validations: BTreeMap<String, Validation>,
    /// `None` until a deploy starts.
    pub progress: Option<Progress>,
}

/// One `rack` event of `GET /api/v1/rack/stream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RackSnapshot {
    pub machines: Vec<RackCard>,
    pub roles: Vec<String>,
}
