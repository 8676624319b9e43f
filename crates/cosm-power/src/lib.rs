//! Power control of a machine behind one trait, [`PowerDriver`]: Redfish, IPMI (through
//! `ipmitool`) and `exec` (an operator's fence command, Pacemaker style).
//!
//! [`driver`] makes the driver a machine's [`PowerSettings`] name. Fencing needs more than
//! "off was accepted": [`fence`] powers the machine off and polls until its BMC confirms it
//! is off, or fails.

mod exec;

use cosm_wire::{MacAddr, PowerAction, PowerSettings, PowerState};
use std::time::{Duration, Instant};

pub use exec::Exec;

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
        PowerSettings::Redfish { .. } | PowerSettings::Ipmi { .. } => {
            Box::new(Unimplemented(settings.driver_name()))
        }
    }
}

/// Placeholder until the BMC drivers land.
#[derive(Debug)]
struct Unimplemented(&'static str);

#[async_trait::async_trait]
impl PowerDriver for Unimplemented {
    fn name(&self) -> &'static str {
        self.0
    }
    async fn status(&self) -> Result<PowerState, PowerError> {
        Err(PowerError::Failed {
            driver: self.0,
            action: "status".into(),
            detail: "this driver is not built yet".into(),
        })
    }
    async fn act(&self, action: PowerAction) -> Result<(), PowerError> {
        Err(PowerError::Failed {
            driver: self.0,
            action: action.to_string(),
            detail: "this driver is not built yet".into(),
        })
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
