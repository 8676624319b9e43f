//! Power control of machines through their BMCs (issue 13): settings kept in the store
//! (secrets never shown), calls through `cosm-power`, each call on the machine's timeline.

use super::{App, AppError, Op};
use crate::store::{StoreError, Tx};
use cosm_power::PowerError;
use cosm_wire::{EventKind, MacAddr, PowerAction, PowerSettings, PowerStatus};
use std::time::Instant;

pub(super) fn set_settings(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    settings: Option<&PowerSettings>,
    by: &str,
) -> Result<(), StoreError> {
    tx.machine(mac)?;
    let message = match settings {
        Some(s) => {
            s.validate().map_err(|message| StoreError::Invalid {
                field: "power_settings",
                message,
            })?;
            tx.put_power_settings(mac, s)?;
            let v = s.view();
            let target = v.command.unwrap_or(v.address);
            format!("power settings set by {by}: {} {target}", v.driver)
        }
        None => {
            if !tx.remove_power_settings(mac)? {
                return Err(StoreError::NotFound {
                    what: "power settings of machine",
                    key: mac.to_string(),
                });
            }
            format!("power settings removed by {by}")
        }
    };
    tx.event(mac, EventKind::Power, message, None, None)
}

/// A BMC's failure as the API shows it.
fn bmc_error(e: PowerError) -> AppError {
    let code = match e {
        PowerError::Unreachable { .. } => "bmc_unreachable",
        PowerError::AuthFailed { .. } => "bmc_auth_failed",
        PowerError::Timeout { .. } => "bmc_timeout",
        _ => "bmc_failed",
    };
    AppError::Bmc {
        code,
        message: e.to_string(),
    }
}

impl App {
    fn driver_of(
        &self,
        mac: MacAddr,
    ) -> Result<(PowerSettings, Box<dyn cosm_power::PowerDriver>), AppError> {
        self.machine(mac)?;
        let settings = self
            .store
            .power_settings(mac)?
            .ok_or_else(|| AppError::NotFound {
                message: format!(
                "machine {mac} has no power settings (cosmctl machines power-settings set {mac} …)"
            ),
            })?;
        let driver = cosm_power::driver(&settings, mac);
        Ok((settings, driver))
    }

    async fn note_power(&self, mac: MacAddr, message: String) {
        if let Err(e) = self
            .store
            .run(Op::RecordEvent {
                mac,
                kind: EventKind::Power,
                message,
            })
            .await
        {
            tracing::warn!(%mac, error = %e, "a power call is not on the timeline");
        }
    }

    /// Reads the machine's power state from its BMC.
    pub async fn power_status(&self, mac: MacAddr) -> Result<PowerStatus, AppError> {
        let (settings, driver) = self.driver_of(mac)?;
        let start = Instant::now();
        let state = driver.status().await.map_err(bmc_error)?;
        Ok(PowerStatus {
            mac,
            settings: settings.view(),
            state,
            took_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Asks the BMC for `action`, then reads the power state; the call and its outcome go
    /// on the machine's timeline.
    pub async fn power_action(
        &self,
        mac: MacAddr,
        action: PowerAction,
        by: &str,
    ) -> Result<PowerStatus, AppError> {
        let (settings, driver) = self.driver_of(mac)?;
        let start = Instant::now();
        let done = driver.act(action).await;
        let took = start.elapsed();
        match done {
            Err(e) => {
                self.note_power(
                    mac,
                    format!(
                        "power {action} by {by} through {} failed after {:.1} s: {e}",
                        driver.name(),
                        took.as_secs_f64()
                    ),
                )
                .await;
                tracing::warn!(%mac, %action, error = %e, "power call failed");
                Err(bmc_error(e))
            }
            Ok(()) => {
                let state = driver.status().await.map_err(bmc_error)?;
                self.note_power(
                    mac,
                    format!(
                        "power {action} by {by} through {}: done in {:.1} s, power is {state}",
                        driver.name(),
                        took.as_secs_f64()
                    ),
                )
                .await;
                tracing::info!(%mac, %action, %state, "power call done");
                Ok(PowerStatus {
                    mac,
                    settings: settings.view(),
                    state,
                    took_ms: start.elapsed().as_millis() as u64,
                })
            }
        }
    }

    /// Deploy through the BMC (issue 13): network boot once, then power-cycle (or on, when
    /// it is off), as MAAS and Ironic do for a machine without a live agent.
    pub async fn pxe_boot(&self, mac: MacAddr, by: &str) -> Result<PowerStatus, AppError> {
        self.power_action(mac, PowerAction::PxeOnce, by).await?;
        let now = self.power_status(mac).await?;
        let next = match now.state {
            cosm_wire::PowerState::Off => PowerAction::On,
            cosm_wire::PowerState::On => PowerAction::Cycle,
        };
        self.power_action(mac, next, by).await
    }

    pub async fn set_power_settings(
        &self,
        mac: MacAddr,
        settings: Option<PowerSettings>,
        by: &str,
    ) -> Result<(), AppError> {
        self.store
            .run(Op::SetPowerSettings {
                mac,
                settings,
                by: by.to_string(),
            })
            .await?;
        Ok(())
    }
}
