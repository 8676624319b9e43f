//! Wire types of the COSM REST API, shared by the appliance, the agent and `cosmctl`.
//!
//! Everything here is plain data with serde and OpenAPI schemas. Identities are newtypes
//! ([`MacAddr`], [`RoleName`], [`MachineId`]) parsed once at the edge, so no other layer
//! passes them around as strings. This crate must not depend on any server-side code: the
//! agent links it.

mod agent;
mod console;
mod ident;
mod image;
mod install;
mod inventory;
mod machine;
mod net;
mod power;
mod rule;
mod time;
mod vm;

pub use agent::{
    ActionKind, ActionKindError, ActionResult, ActionStatus, AgentAction, DesiredState, Enroll,
    Enrolled, Heartbeat, HeartbeatReply, Observed, QueueAction, MAX_PEERS,
};
pub use console::{
    CardDisk, DhcpModeSetting, EffectiveSetting, FailedStep, FieldError, InterfaceInfo, Login,
    NetworkSettings, OsSettings, Progress, ProgressStep, RackCard, RackSnapshot, RoleRequirements,
    SessionInfo, SetPassword, SettingSource, Settings, SettingsStep, SettingsView, StepState,
    ValidateSettings, Validation,
};
pub use ident::{MacAddr, MacPrefix, MachineId, ParseError, RoleName};
pub use image::{valid_image_name, Image, ImageManifest, ImagePackage, OsImage};
pub use install::{
    valid_install_path, InstallFile, InstallMethod, InstallPlan, InstallProgress, InstallReport,
    IMAGE_CHUNK_BYTES,
};
pub use inventory::{human_bytes, Cpu, Disk, Dmi, FirmwareMode, Inventory, Nic};
pub use machine::{
    CreateMachine, Event, EventKind, Machine, MachineState, SetRole, SetState, UpdateMachine,
};
pub use net::{
    allocate, bridge_name, free_vni, is_host_address, port_device, vxlan_name, CreateNetwork,
    CreatePort, Direction, GroupMembers, HostNetwork, HostNetworks, HostPort, NetError, NetReport,
    Network, Port, PortOwner, Protocol, Remote, SecRule, SecurityGroup, SetPortGroups, DEFAULT_MTU,
    MAX_VNI, VXLAN_OVERHEAD,
};
pub use power::{
    Alarm, AlarmKind, EvacuatedVm, EvacuatedVmStatus, Evacuation, EvacuationPhase, Peer, PeerSeen,
    PowerAction, PowerRequest, PowerSettings, PowerSettingsView, PowerState, PowerStatus, Severity,
};
pub use rule::{Role, RoleSpec, Rule, RuleMatch, RuleSpec, SetInstallMethod};
pub use time::Timestamp;
pub use vm::{
    BootRequest, BridgeName, CreateSnapshot, CreateVm, DesiredVm, DiskRequest, DomainPower,
    HostCapacity, HostView, ImageRef, MigrateVm, NameError, NetworkName, NicRequest,
    ObservedDomain, PowerWanted, SecGroupName, SnapshotName, StopVm, Vm, VmBoot, VmConsole, VmDisk,
    VmEvent, VmKind, VmName, VmNic, VmNote, VmOp, VmOpKind, VmOpResult, VmReport, VmSnapshot,
    VmState, DEFAULT_STOP_TIMEOUT_SECS,
};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The JSON body of every API error. `field` names the request field that was wrong, when
/// one was (`mac`, `role`, `match.min_cpus`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable error class, e.g. `invalid_field`, `conflict`, `not_found`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, as a dotted path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every call, including creating other tokens.
    Admin,
    /// Only reading calls (`GET`).
    Read,
    /// Only `POST /api/v1/agent/enroll`: the token put on a ramdisk's kernel command line.
    Enroll,
    /// One machine's agent (`/api/v1/agent/*` for its own MAC): issued at enrolment.
    Agent,
}

/// An API token as listed: the secret itself is never shown again after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub created_at: Timestamp,
    /// The machine an `agent` token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub scope: Scope,
}

/// Answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub info: TokenInfo,
    pub token: String,
}

/// Answer of `/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub schema_version: u32,
}

mod lease;
pub use lease::{Lease, LeaseState};
