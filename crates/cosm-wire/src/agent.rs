//! What the node agent and the appliance say to each other under `/api/v1/agent/`.
//!
//! The agent pulls: it enrols with its inventory, then heartbeats, fetches its desired
//! state (a generation number, its role and queued actions) and reports what it observed.

use crate::{Inventory, MacAddr, Machine, RoleName, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
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
    /// What this host's agent saw of its peers' probe responders (hypervisor hosts only):
    /// the second of the three checks before a host is declared dead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<crate::PeerSeen>,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    /// When this is above what the agent observed, it fetches its desired state.
    pub desired_generation: u64,
    /// The hypervisor hosts this host's agent should probe (UDP) and report on in its
    /// next heartbeats: its neighbours on a ring of the active hosts, at most
    /// [`MAX_PEERS`]. Empty on machines that are not hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<crate::Peer>,
}

/// The most peers one host probes: each host is watched by this many others, however
/// large the rack.
pub const MAX_PEERS: usize = 8;

/// What an agent is asked to do. On the wire it is the plain string (`"reboot"`,
/// `"power-off"`, `"re-register"`); a kind this build does not name is kept as
/// [`ActionKind::Other`] rather than refused, because a newer appliance may queue an action
/// an older agent does not know, and that agent must still be able to read its desired
/// state and report the action `unsupported`.
///
/// Parse it ([`FromStr`], or serde) rather than building `Other` by hand: parsing checks
/// the name and never puts a known kind into `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// Restart the machine (`reboot -f`).
    Reboot,
    /// Switch the machine off (`poweroff -f`).
    PowerOff,
    /// Enrol again with a fresh inventory (after a hardware change).
    ReRegister,
    /// A well-formed kind this build does not know.
    Other(String),
}

/// Why a string is not an action kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an action kind is 1-32 lowercase letters, digits and '-', e.g. reboot, power-off, re-register"
)]
pub struct ActionKindError {
    /// What was given, untrimmed.
    pub input: String,
}

impl ActionKind {
    pub fn as_str(&self) -> &str {
        match self {
            ActionKind::Reboot => "reboot",
            ActionKind::PowerOff => "power-off",
            ActionKind::ReRegister => "re-register",
            ActionKind::Other(s) => s,
        }
    }
}

impl FromStr for ActionKind {
    type Err = ActionKindError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let ok = !t.is_empty()
            && t.len() <= 32
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(ActionKindError {
                input: s.to_string(),
            });
        }
        Ok(match t {
            "reboot" => ActionKind::Reboot,
            "power-off" => ActionKind::PowerOff,
            "re-register" => ActionKind::ReRegister,
            other => ActionKind::Other(other.to_string()),
        })
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ActionKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ActionKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// In the OpenAPI document an action kind is a string (a named schema, like the
/// identities): clients see the wire shape, not the Rust enum.
impl utoipa::PartialSchema for ActionKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[a-z0-9-]{1,32}$"))
            .examples([serde_json::json!("reboot")])
            .description(Some(
                "What an agent is asked to do: reboot, power-off, re-register. An agent reports a kind it does not know as unsupported.",
            ))
            .into()
    }
}

impl ToSchema for ActionKind {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ActionKind")
    }
}

/// An action queued for a machine's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentAction {
    pub id: u64,
    pub kind: ActionKind,
    pub queued_at: Timestamp,
}

/// Body of `POST /api/v1/machines/{mac}/actions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueAction {
    pub kind: ActionKind,
}

/// Answer to `GET /api/v1/agent/desired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesiredState {
    pub generation: u64,
    pub role: Option<RoleName>,
    pub actions: Vec<AgentAction>,
    /// The VMs this machine should have, when it is a hypervisor host; a VM not listed is
    /// not this host's business (a domain COSM does not know is never touched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<crate::DesiredVm>,
    /// The tenant networks this host carries (hypervisor hosts): bridges, VXLAN peers,
    /// ports and their rules. `None`: leave the host's networking alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<crate::HostNetworks>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_kinds_round_trip_as_their_strings() {
        for (kind, text) in [
            (ActionKind::Reboot, "reboot"),
            (ActionKind::PowerOff, "power-off"),
            (ActionKind::ReRegister, "re-register"),
            (ActionKind::Other("flash-bios".into()), "flash-bios"),
        ] {
            assert_eq!(kind.as_str(), text);
            assert_eq!(kind.to_string(), text);
            assert_eq!(text.parse::<ActionKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<ActionKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn unknown_kinds_are_kept_and_known_ones_never_land_in_other() {
        assert_eq!(
            "flash-bios2".parse::<ActionKind>().unwrap(),
            ActionKind::Other("flash-bios2".into())
        );
        assert_eq!(
            " reboot\n".parse::<ActionKind>().unwrap(),
            ActionKind::Reboot
        );
        assert_eq!(
            " live-migrate ".parse::<ActionKind>().unwrap(),
            ActionKind::Other("live-migrate".into())
        );
        assert!(format!("{:?}", "-".parse::<ActionKind>().unwrap()).contains("Other"));
    }

    #[test]
    fn malformed_kinds_are_refused_with_the_rule() {
        let long = "a".repeat(33);
        for s in [
            "",
            "  ",
            "Rm -rf",
            "REBOOT",
            "re_register",
            "power off",
            "é",
            &long,
        ] {
            let e = s.parse::<ActionKind>().unwrap_err();
            assert_eq!(e.input, s);
            assert_eq!(
                e.to_string(),
                "an action kind is 1-32 lowercase letters, digits and '-', e.g. reboot, power-off, re-register"
            );
            assert!(serde_json::from_value::<ActionKind>(serde_json::json!(s)).is_err());
        }
        assert!("a".repeat(32).parse::<ActionKind>().is_ok());
        // Not a string at all.
        assert!(serde_json::from_value::<ActionKind>(serde_json::json!(7)).is_err());
    }

    #[test]
    fn queue_action_refusal_names_the_field() {
        // The appliance's JSON extractor reports the path of a deserialize error; the
        // refusal must come from inside `kind`, with the rule in the message.
        let body = br#"{"kind": "Rm -rf"}"#;
        let mut de = serde_json::Deserializer::from_slice(body);
        let e = QueueAction::deserialize(&mut de).unwrap_err();
        assert!(e.to_string().contains("1-32 lowercase letters"), "{e}");
        let q: QueueAction = serde_json::from_str(r#"{"kind": "power-off"}"#).unwrap();
        assert_eq!(q.kind, ActionKind::PowerOff);
    }

    #[test]
    fn desired_state_keeps_its_json_shape() {
        let json = serde_json::json!({
            "generation": 3,
            "role": "host",
            "actions": [
                {"id": 1, "kind": "reboot", "queued_at": "2024-05-01T10:00:00.000Z"},
                {"id": 2, "kind": "flash-bios", "queued_at": "2024-05-01T10:00:01.000Z"},
            ],
        });
        let d: DesiredState = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(d.actions[0].kind, ActionKind::Reboot);
        assert_eq!(d.actions[1].kind, ActionKind::Other("flash-bios".into()));
        assert_eq!(serde_json::to_value(&d).unwrap(), json);
    }

    #[test]
    fn openapi_shows_the_kind_as_a_named_string_schema() {
        let mut schemas = Vec::new();
        <AgentAction as ToSchema>::schemas(&mut schemas);
        let (_, schema) = schemas
            .iter()
            .find(|(name, _)| name == "ActionKind")
            .expect("AgentAction brings the ActionKind schema along");
        let v = serde_json::to_value(schema).unwrap();
        assert_eq!(v["type"], "string", "{v}");
        let agent_action =
            serde_json::to_value(<AgentAction as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(
            agent_action["properties"]["kind"]["$ref"], "#/components/schemas/ActionKind",
            "{agent_action}"
        );
    }
}
