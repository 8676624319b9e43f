//! Roles and the rules that give a newly discovered machine its role.

use crate::{MacAddr, MacPrefix, RoleName, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A role a machine can play.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Role {
    pub name: RoleName,
    pub description: String,
    /// Seed roles (`center`, `web`, `host`, `storage`) cannot be deleted.
    pub builtin: bool,
    pub created_at: Timestamp,
    /// How its machines are installed; `None`: by image when the repository has an image
    /// for the role, else by kickstart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<crate::InstallMethod>,
}

/// Body of `PUT /api/v1/roles/{name}/install`: `null` goes back to automatic (image when
/// one exists for the role, else kickstart).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetInstallMethod {
    pub method: Option<crate::InstallMethod>,
}

/// Body of `POST /api/v1/roles`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub name: RoleName,
    #[serde(default)]
    pub description: String,
}

/// Conditions of a rule. Every condition given must hold (logical AND); at least one must
/// be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// This exact MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// MAC addresses starting with these octets (an OUI is three: `52:54:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_prefix: Option<MacPrefix>,
    /// At least this many logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpus: Option<u32>,
    /// At most this many logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<u32>,
    /// At least this much memory, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_mib: Option<u64>,
    /// At most this much memory, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    /// At least this many disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disks: Option<u32>,
    /// At most this many disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disks: Option<u32>,
    /// Its largest disk holds at least this many GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk_gib: Option<u64>,
    /// DMI system vendor contains this text (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_contains: Option<String>,
    /// DMI product name contains this text (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_contains: Option<String>,
}

impl RuleMatch {
    /// True when no condition is given (such a rule is refused: it would match everything).
    pub fn is_empty(&self) -> bool {
        *self == RuleMatch::default()
    }
}

/// Body of `POST /api/v1/rules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Role given to a machine this rule matches.
    pub role: RoleName,
    /// Lower runs first; equal priorities run in creation order. Default 100.
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default)]
    pub description: String,
    #[serde(rename = "match")]
    pub matches: RuleMatch,
}

fn default_priority() -> i32 {
    100
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rule {
    pub id: u64,
    pub role: RoleName,
    pub priority: i32,
    pub description: String,
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    pub created_at: Timestamp,
}
