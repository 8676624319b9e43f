//! Machines, their lifecycle states and their event timeline.

use crate::{Inventory, MacAddr, MachineId, RoleName, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use utoipa::ToSchema;

/// Where a machine is in its life. The allowed moves between states are enforced by the
/// appliance (`lifecycle` module); this type only names them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Seen (PXE, agent or an operator) but has no role yet.
    Discovered,
    /// Has a role; will be installed on its next boot.
    Ready,
    /// The installer is running.
    Deploying,
    /// Installed; boots from its own disk.
    Deployed,
    /// Installed and its agent reports in.
    Active,
    /// Installation or commissioning failed.
    Failed,
    /// Heartbeats stopped.
    Lost,
    /// Cut off (power/storage) after it was found dead, so its workloads can move safely.
    Fenced,
    /// Taken out of service by an operator.
    Retired,
}

impl MachineState {
    pub const ALL: [MachineState; 9] = [
        MachineState::Discovered,
        MachineState::Ready,
        MachineState::Deploying,
        MachineState::Deployed,
        MachineState::Active,
        MachineState::Failed,
        MachineState::Lost,
        MachineState::Fenced,
        MachineState::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Discovered => "discovered",
            MachineState::Ready => "ready",
            MachineState::Deploying => "deploying",
            MachineState::Deployed => "deployed",
            MachineState::Active => "active",
            MachineState::Failed => "failed",
            MachineState::Lost => "lost",
            MachineState::Fenced => "fenced",
            MachineState::Retired => "retired",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = MachineState::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?}; states are {}", all.join(", "))
            })
    }
}

/// A machine as the appliance records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub id: MachineId,
    pub mac: MacAddr,
    pub hostname: Option<String>,
    pub role: Option<RoleName>,
    pub state: MachineState,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub reserved_ip: Option<Ipv4Addr>,
    pub inventory: Option<Inventory>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the machine entered its current state.
    pub state_since: Timestamp,
    /// While `lost`: the state it was in when its heartbeats stopped, to return to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_from: Option<MachineState>,
    /// Desired-state generation for its agent; bumped by every change the agent must act on.
    #[serde(default)]
    pub desired_generation: u64,
    /// Actions queued for its agent, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_actions: Vec<crate::AgentAction>,
    /// Raised each time the machine becomes `ready`: its install token (in its boot script
    /// and kickstart) is good for this round only, and only while it is ready or deploying.
    #[serde(default)]
    pub install_round: u32,
    /// Recorded by the DHCP server when it first saw the machine network-boot (rather than
    /// registered by an operator or enrolled by an agent). Until it is registered or
    /// enrolled it counts against `dhcp.max_unknown_leases` and expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovered_by_dhcp: bool,
    /// Set when an install report made the machine `deployed`: its installed system's
    /// agent has not beaten yet. Its first heartbeat makes it `active`. A machine an
    /// operator moved to `deployed` is never activated by heartbeats.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaits_installed_agent: bool,
}

/// Body of `POST /api/v1/machines`: pre-register a MAC, optionally with its role.
/// Without a role, the role rules are tried; with no match the machine stays `discovered`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMachine {
    pub mac: MacAddr,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub role: Option<RoleName>,
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub reserved_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub inventory: Option<Inventory>,
}

/// Body of `PATCH /api/v1/machines/{mac}`. A field left out is unchanged; a field set to
/// `null` is cleared.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMachine {
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub hostname: Option<Option<String>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub role: Option<Option<RoleName>>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub reserved_ip: Option<Option<Ipv4Addr>>,
}

/// Body of `PUT /api/v1/machines/{mac}/role`: `null` clears the role.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub role: Option<RoleName>,
}

/// Body of `POST /api/v1/machines/{mac}/state`: ask for a lifecycle transition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetState {
    pub state: MachineState,
    /// Why, for the timeline.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Distinguishes "field absent" (outer `None`) from "field is null" (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<T: Serialize, S: Serializer>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// What kind of thing happened to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The machine was first recorded.
    Created,
    /// Its lifecycle state changed.
    StateChanged,
    /// Its role was set, changed or cleared.
    RoleChanged,
    /// A role rule gave it its role.
    RuleMatched,
    /// Hostname or reserved address changed.
    Updated,
    /// A DHCP step of its boot: DISCOVER, OFFER, REQUEST, ACK, NAK, DECLINE, RELEASE; and
    /// the IPv6 router advertisement answering its firmware's router solicitation.
    Dhcp,
    /// Its agent enrolled (or enrolled again).
    AgentRegistered,
    /// An action was queued for its agent, or the agent reported on one.
    AgentAction,
    /// A TFTP read of its boot: the file, or why it was refused or stopped.
    Tftp,
    /// An HTTP boot step: iPXE script, kernel, initrd, a file, or a step its script
    /// reported as failed.
    Boot,
    /// A power call through its BMC or fence command, and what came of it.
    Power,
    /// High availability: a check of a silent host, its fencing, its evacuation.
    Ha,
    /// Tenant networking on a host: what its agent's reconcile created or repaired, or
    /// could not do.
    Network,
}

/// One entry of a machine's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Position in the appliance-wide event sequence; increases with time.
    pub seq: u64,
    pub at: Timestamp,
    pub mac: MacAddr,
    pub kind: EventKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<MachineState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<MachineState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_tells_absent_from_null() {
        let u: UpdateMachine = serde_json::from_str(r#"{"hostname": null}"#).unwrap();
        assert_eq!(u.hostname, Some(None));
        assert_eq!(u.role, None);
        let u: UpdateMachine = serde_json::from_str(r#"{"role": "web"}"#).unwrap();
        assert_eq!(u.role, Some(Some("web".parse().unwrap())));
    }

    #[test]
    fn state_names_round_trip() {
        for s in MachineState::ALL {
            assert_eq!(s.as_str().parse::<MachineState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("bogus".parse::<MachineState>().is_err());
    }
}
