//! Power control of a machine through its BMC (Redfish, IPMI) or an operator's fence
//! command (`exec`), and the HA records built on it: peer probes and alarms (issue 13).
//!
//! A machine's [`PowerSettings`] hold secrets (BMC passwords). They are written through the
//! API but never read back: the API answers with [`PowerSettingsView`], which says only
//! whether a password is set.

use crate::{MacAddr, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// How the appliance reaches one machine's power: body of
/// `PUT /api/v1/machines/{mac}/power-settings`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "driver", rename_all = "snake_case", deny_unknown_fields)]
pub enum PowerSettings {
    /// A Redfish BMC: `url` is the service root's origin (`https://10.0.0.5`); `system` is
    /// the ComputerSystem's id under `/redfish/v1/Systems/` (the only one when absent).
    Redfish {
        url: String,
        username: String,
        password: String,
        #[serde(default)]
        system: Option<String>,
        /// Accept a self-signed BMC certificate (most BMCs ship one). Default true.
        #[serde(default = "yes")]
        insecure_tls: bool,
    },
    /// An IPMI BMC, through `ipmitool -I lanplus` (the password goes in the environment,
    /// never on a command line).
    Ipmi {
        host: String,
        #[serde(default = "ipmi_port")]
        port: u16,
        username: String,
        password: String,
    },
    /// An operator's fence command, Pacemaker style: `command… ACTION` where ACTION is
    /// `on`, `off`, `cycle`, `status` or `pxe-once`, with `COSM_POWER_ACTION`,
    /// `COSM_MACHINE_MAC` and `COSM_MACHINE_ADDRESS` in its environment. Exit 0 is
    /// success; `status` prints `on` or `off`.
    Exec {
        command: Vec<String>,
        #[serde(default)]
        address: Option<String>,
        #[serde(default = "exec_timeout")]
        timeout_secs: u32,
    },
}

fn yes() -> bool {
    true
}
fn ipmi_port() -> u16 {
    623
}
fn exec_timeout() -> u32 {
    30
}

impl PowerSettings {
    pub fn driver_name(&self) -> &'static str {
        match self {
            PowerSettings::Redfish { .. } => "redfish",
            PowerSettings::Ipmi { .. } => "ipmi",
            PowerSettings::Exec { .. } => "exec",
        }
    }

    /// What the API shows: everything but the password.
    pub fn view(&self) -> PowerSettingsView {
        match self {
            PowerSettings::Redfish {
                url,
                username,
                password,
                system,
                ..
            } => PowerSettingsView {
                driver: "redfish".into(),
                address: url.clone(),
                username: Some(username.clone()),
                password_set: !password.is_empty(),
                system: system.clone(),
                command: None,
            },
            PowerSettings::Ipmi {
                host,
                port,
                username,
                password,
            } => PowerSettingsView {
                driver: "ipmi".into(),
                address: format!("{host}:{port}"),
                username: Some(username.clone()),
                password_set: !password.is_empty(),
                system: None,
                command: None,
            },
            PowerSettings::Exec {
                command, address, ..
            } => PowerSettingsView {
                driver: "exec".into(),
                address: address.clone().unwrap_or_default(),
                username: None,
                password_set: false,
                system: None,
                command: command.first().cloned(),
            },
        }
    }

    /// Checks what can be checked without reaching the BMC.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PowerSettings::Redfish { url, username, .. } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("url {url:?} is not an http:// or https:// URL"));
                }
                if username.is_empty() {
                    return Err("username is empty".into());
                }
            }
            PowerSettings::Ipmi { host, username, .. } => {
                if host.is_empty() || host.starts_with('-') {
                    return Err(format!("host {host:?} is not a BMC address"));
                }
                if username.is_empty() {
                    return Err("username is empty".into());
                }
            }
            PowerSettings::Exec {
                command,
                timeout_secs,
                ..
            } => {
                if command.is_empty() || !command[0].starts_with('/') {
                    return Err(
                        "command must start with an absolute path to the fence program".into(),
                    );
                }
                if !(1..=600).contains(timeout_secs) {
                    return Err(format!("timeout_secs {timeout_secs} is outside 1..=600"));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PowerSettings {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.view(), f)
    }
}

/// A machine's power settings as the API shows them: no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PowerSettingsView {
    /// `redfish`, `ipmi` or `exec`.
    pub driver: String,
    /// The BMC's URL or `host:port`, or the exec driver's address.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub password_set: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The exec driver's program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// What may be asked of a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    On,
    /// Hard off (no guest shutdown): what fencing needs.
    Off,
    /// Off then on.
    Cycle,
    /// Boot from the network once at the next power-on (Redfish boot source override,
    /// IPMI `chassis bootdev pxe`).
    PxeOnce,
}

impl PowerAction {
    pub const ALL: [PowerAction; 4] = [
        PowerAction::On,
        PowerAction::Off,
        PowerAction::Cycle,
        PowerAction::PxeOnce,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
            PowerAction::PxeOnce => "pxe-once",
        }
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PowerAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PowerAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown power action {s:?} (on, off, cycle, pxe-once)"))
    }
}

/// A machine's power as its BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        })
    }
}

/// Body of `POST /api/v1/machines/{mac}/power`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    pub action: PowerAction,
}

/// Answer of `GET /api/v1/machines/{mac}/power` and of a power action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PowerStatus {
    pub mac: MacAddr,
    pub settings: PowerSettingsView,
    /// The power state read after the call.
    pub state: PowerState,
    /// How long the BMC took, in milliseconds.
    pub took_ms: u64,
}

/// Where one host's agent answers peer probes (UDP), in its desired state so its peers
/// know whom to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub mac: MacAddr,
    /// `ip:port` of the peer's probe responder.
    pub probe: String,
}

/// What one agent saw of one peer, in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerSeen {
    pub mac: MacAddr,
    /// Milliseconds since the peer last answered a probe; absent when it never did.
    #[serde(default)]
    pub last_answer_ms: Option<u64>,
}

/// How bad an alarm is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What an alarm is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// A host stopped heartbeating.
    HostLost,
    /// A host was powered off so its VMs could move.
    HostFenced,
    /// Fencing failed: its VMs are not restarted anywhere.
    FenceFailed,
    /// Some HA VMs of a fenced host are not running elsewhere yet.
    EvacuationIncomplete,
    /// A VM could not be placed: no host has room.
    NoCapacity,
    /// Most hosts went silent at once: the appliance assumes it is the one cut off and
    /// fences nobody.
    ApplianceIsolated,
    /// A VM that is not HA went down with its host and stays down.
    VmDown,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 7] = [
        AlarmKind::HostLost,
        AlarmKind::HostFenced,
        AlarmKind::FenceFailed,
        AlarmKind::EvacuationIncomplete,
        AlarmKind::NoCapacity,
        AlarmKind::ApplianceIsolated,
        AlarmKind::VmDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::HostLost => "host_lost",
            AlarmKind::HostFenced => "host_fenced",
            AlarmKind::FenceFailed => "fence_failed",
            AlarmKind::EvacuationIncomplete => "evacuation_incomplete",
            AlarmKind::NoCapacity => "no_capacity",
            AlarmKind::ApplianceIsolated => "appliance_isolated",
            AlarmKind::VmDown => "vm_down",
        }
    }
}

/// A raised (and maybe cleared) alarm: `GET /api/v1/alarms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alarm {
    pub id: u64,
    pub kind: AlarmKind,
    pub severity: Severity,
    /// What it is about: a machine's MAC, a VM's name, or `appliance`.
    pub subject: String,
    pub message: String,
    pub raised_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<Timestamp>,
}

/// Where a fenced host's evacuation is: `GET /api/v1/evacuations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvacuationPhase {
    /// The three checks agreed; the host is being powered off.
    Fencing,
    /// Power-off failed or was not confirmed: nothing is restarted; retried.
    FenceFailed,
    /// Powered off and confirmed: its HA VMs are being placed and started elsewhere.
    Fenced,
    /// Every HA VM runs elsewhere (or none was left to move).
    Done,
}

/// What became of one VM of a fenced host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvacuatedVmStatus {
    /// Waiting to be placed (the host is not confirmed off yet, or no room yet).
    Pending,
    /// Placed on a survivor; its agent is starting it.
    Placed,
    /// Running on the survivor.
    Running,
    /// No survivor has room; retried, alarm raised.
    NoCapacity,
    /// Not an HA VM: it stays down, reported.
    NotHa,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EvacuatedVm {
    pub name: crate::VmName,
    pub status: EvacuatedVmStatus,
    /// The survivor it was placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<MacAddr>,
}

/// One host's fencing and evacuation, recorded step by step so an appliance restart
/// resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Evacuation {
    pub host: MacAddr,
    pub phase: EvacuationPhase,
    /// What the three checks said when the host was declared dead.
    pub checks: String,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The last fence error, while `fence_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub vms: Vec<EvacuatedVm>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_never_show_the_password() {
        let s: PowerSettings = serde_json::from_str(
            r#"{"driver":"ipmi","host":"10.0.0.5","username":"admin","password":"s3cret"}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            PowerSettings::Ipmi {
                host: "10.0.0.5".into(),
                port: 623,
                username: "admin".into(),
                password: "s3cret".into()
            }
        );
        let shown = serde_json::to_string(&s.view()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(s.view().password_set);
    }

    #[test]
    fn validation_names_the_problem() {
        let s: PowerSettings =
            serde_json::from_str(r#"{"driver":"exec","command":["fence.sh"]}"#).unwrap();
        assert!(s.validate().unwrap_err().contains("absolute path"));
        let s: PowerSettings = serde_json::from_str(
            r#"{"driver":"redfish","url":"ftp://x","username":"a","password":"b"}"#,
        )
        .unwrap();
        assert!(s.validate().unwrap_err().contains("not an http"));
        assert!(serde_json::from_str::<PowerSettings>(r#"{"driver":"wol"}"#).is_err());
    }

    #[test]
    fn actions_round_trip() {
        for a in PowerAction::ALL {
            assert_eq!(a.as_str().parse::<PowerAction>().unwrap(), a);
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }
}
