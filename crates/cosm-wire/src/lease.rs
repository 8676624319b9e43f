//! DHCP leases as the appliance stores and lists them.

use crate::{MacAddr, Timestamp};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Acknowledged to the client; active until `expires_at`.
    Bound,
    /// Released by the client, or expired: free, but kept so the same MAC gets the same
    /// address back.
    Released,
    /// Declined by a client (address in use by someone else): quarantined until `expires_at`.
    Declined,
}

/// One address and who holds (or last held) it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub state: LeaseState,
    pub starts_at: Timestamp,
    pub expires_at: Timestamp,
    /// Hostname the client sent (option 12), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_hostname: Option<String>,
    /// Relay (giaddr) the request came through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub relay: Option<Ipv4Addr>,
}

impl Lease {
    /// Does this lease keep the address from anyone else at `now`?
    pub fn holds_address(&self, now: Timestamp) -> bool {
        match self.state {
            LeaseState::Bound | LeaseState::Declined => self.expires_at > now,
            LeaseState::Released => false,
        }
    }
}
