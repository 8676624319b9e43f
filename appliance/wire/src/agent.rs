//! What the node agent and the appliance say to each other under `/api/v1/agent/`.
//!
//! The agent pulls: it enrols with its inventory, then heartbeats, fetches its desired
//! state (a generation number, its role and queued actions) and reports what it observed.

use crate::{Inventory, MacAddr, Machine, RoleName, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /api/v1/agent/enroll` (enrolment or admin token).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    /// The MAC the machine is known by (the NIC it booted from).
    pub mac: MacAddr,
    pub inventory: Inventory,
}

/// Answer to an enrolment: the machine record and the node's own credential, which the
/// agent uses from then on (the enrolment token is not needed again).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Enrolled {
    pub machine: Machine,
    pub credential: String,
    /// How often the appliance expects a heartbeat.
    pub heartbeat_secs: u32,
}

/// Body of `POST /api/v1/agent/heartbeat`: a utilisation summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Heartbeat {
    /// Busy CPU over the last interval, 0-100.
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub uptime_secs: u64,
    /// The desired-state generation the agent has converged to.
    pub observed_generation: u64,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    /// When this is above what the agent observed, it fetches its desired state.
    pub desired_generation: u64,
}

/// An action queued for a machine's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentAction {
    pub id: u64,
    /// `reboot`, `power-off`, `re-register`; an agent reports other kinds as unsupported.
    pub kind: String,
    pub queued_at: Timestamp,
}

/// Body of `POST /api/v1/machines/{mac}/actions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueAction {
    pub kind: String,
}

/// Answer to `GET /api/v1/agent/desired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredState {
    pub generation: u64,
    pub role: Option<RoleName>,
    pub actions: Vec<AgentAction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Done,
    Failed,
    Unsupported,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    pub id: u64,
    pub status: ActionStatus,
    #[serde(default)]
    pub message: String,
}

/// Body of `POST /api/v1/agent/observed`: what the agent did about a generation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    pub generation: u64,
    #[serde(default)]
    pub role: Option<RoleName>,
    #[serde(default)]
    pub results: Vec<ActionResult>,
}
