//! Power control of a machine behind one trait, [`PowerDriver`]: Redfish, IPMI (through
//! `ipmitool`) and `exec` (an operator's fence command, Pacemaker style).
//!
//! [`driver`] makes the driver a machine's [`PowerSettings`] name. Fencing needs more than
//! "off was accepted": [`fence`] powers the machine off and polls until its BMC confirms it
//! is off, or fails.

mod exec;
mod ipmi;
mod redfish;

use cosm_wire::{MacAddr, PowerAction, PowerSettings, PowerState};
use std::time::{Duration, Instant};

pub use exec::Exec;
pub use ipmi::Ipmi;
pub use redfish::Redfish;

/// Why a power call failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// Nothing answered at the BMC's address.
    #[error("the BMC at {address} is unreachable: {detail}")]
    Unreachable { address: String, detail: String },
    /// The BMC answered but refused the credentials.
    #[error("the BMC at {address} refused the credentials of user {username:?}")]
    AuthFailed { address: String, username: String },
    /// The BMC (or fence command) answered and said no.
    #[error("{driver} {action} failed: {detail}")]
    Failed {
        driver: &'static str,
        action: String,
        detail: String,
    },
    /// The call did not finish in time.
    #[error("{driver} {action} did not finish within {secs} s")]
    Timeout {
        driver: &'static str,
        action: String,
        secs: u64,
    },
    /// Fencing: off was accepted but the machine was not seen off.
    #[error("power-off was not confirmed: the machine still reports {state} after {secs} s")]
    NotConfirmed { state: PowerState, secs: u64 },
}

/// One machine's power.
#[async_trait::async_trait]
pub trait PowerDriver: Send + Sync + std::fmt::Debug {
    /// `redfish`, `ipmi` or `exec`.
    fn name(&self) -> &'static str;
    /// Reads the machine's power state.
    async fn status(&self) -> Result<PowerState, PowerError>;
    /// Asks for `action`; returns once the BMC accepted it (not when it is done).
    async fn act(&self, action: PowerAction) -> Result<(), PowerError>;
}

/// The driver for `settings`; `mac` is the machine's, for the exec driver's environment.
pub fn driver(settings: &PowerSettings, mac: MacAddr) -> Box<dyn PowerDriver> {
    match settings {
        PowerSettings::Exec {
            command,
            address,
            timeout_secs,
        } => Box::new(Exec::new(
            command.clone(),
            mac,
            address.clone(),
            Duration::from_secs(u64::from(*timeout_secs)),
        )),
        PowerSettings::Redfish {
            url,
            username,
            password,
            system,
            insecure_tls,
        } => Box::new(Redfish::new(
            url,
            username,
            password,
            system.clone(),
            *insecure_tls,
        )),
        PowerSettings::Ipmi {
            host,
            port,
            username,
            password,
        } => Box::new(Ipmi::new(host, *port, username, password)),
    }
}

/// Fencing: hard power-off, then polls the power state until the BMC says off. Returns how
/// long it took. A machine already off is confirmed at once (its off is not sent again).
pub async fn fence(
    driver: &dyn PowerDriver,
    confirm_within: Duration,
) -> Result<Duration, PowerError> {
    let start = Instant::now();
    if driver.status().await? == PowerState::Off {
        return Ok(start.elapsed());
    }
    driver.act(PowerAction::Off).await?;
    let mut last = PowerState::On;
    while start.elapsed() < confirm_within {
        last = driver.status().await?;
        if last == PowerState::Off {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(PowerError::NotConfirmed {
        state: last,
        secs: confirm_within.as_secs(),
    })
}
