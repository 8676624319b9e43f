//! The deploy workflow: a `ready` machine's installer fetches its kickstart (→ `deploying`),
//! reports how the install ended (→ `deployed` or `failed`), and an operator can start it
//! over (redeploy → `ready`, with a reboot when its agent is alive). Each step is one
//! command, so two racing reports or redeploys cannot both act on the same state.

use super::agents;
use super::machines::transition;
use crate::store::{StoreError, Tx};
use cosm_wire::{ActionKind, MacAddr, Machine, MachineState};

/// The longest install message kept on the timeline, in characters.
const MAX_REPORT_CHARS: usize = 2000;

pub(super) fn redeploy(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    by: &str,
    agent_alive: bool,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    if m.role.is_none() {
        return Err(StoreError::Conflict {
            code: "no_role",
            message: format!("{mac} has no role: give it one (cosmctl machines set-role) and it is installed at its next boot"),
        });
    }
    if m.state == MachineState::Ready {
        if let Some(a) = m
            .pending_actions
            .iter()
            .find(|a| a.kind == ActionKind::Reboot)
        {
            return Err(StoreError::Conflict {
                code: "redeploy_pending",
                message: format!(
                    "{mac} is already being redeployed: it is ready and its agent has reboot action {} queued",
                    a.id
                ),
            });
        }
    } else {
        transition(
            tx,
            &mut m,
            MachineState::Ready,
            &format!("redeploy requested by {by}"),
        )?;
    }
    if agent_alive {
        agents::push_action(tx, &mut m, &ActionKind::Reboot)?;
    }
    tx.put_machine(&mut m)?;
    Ok(m)
}

/// Whether a machine in this state may be given its kickstart or install plan. A machine
/// declared lost while ready counts as ready: the agent that stopped beating was the one
/// told to reboot into the installer.
pub fn installable(m: &Machine) -> Result<(), StoreError> {
    if matches!(
        super::effective_state(m),
        MachineState::Ready | MachineState::Deploying
    ) {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            code: "not_installable",
            message: format!(
                "{} is {}: only ready or deploying machines are installed (cosmctl machines redeploy {} starts over)",
                m.mac, m.state, m.mac
            ),
        })
    }
}

pub(super) fn start_install(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    release: &str,
    image: Option<&str>,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    installable(&m)?;
    if let (MachineState::Lost, Some(from)) = (m.state, m.lost_from) {
        transition(tx, &mut m, from, "its installer is heard from")?;
    }
    if m.state == MachineState::Ready {
        let why = match image {
            None => format!("the installer fetched its kickstart ({release})"),
            Some(image) => {
                format!("its installer fetched the install plan of image {image} ({release})")
            }
        };
        transition(tx, &mut m, MachineState::Deploying, &why)?;
        tx.put_machine(&mut m)?;
    }
    Ok(m)
}

pub(super) fn report_install(
    tx: &mut Tx<'_>,
    mac: MacAddr,
    ok: bool,
    message: &str,
) -> Result<Machine, StoreError> {
    let mut m = tx.machine(mac)?;
    if m.state != MachineState::Deploying {
        return Err(StoreError::Conflict {
            code: "not_deploying",
            message: format!(
                "{mac} is {}, not deploying: no install was expected from it",
                m.state
            ),
        });
    }
    let message: String = message.chars().take(MAX_REPORT_CHARS).collect();
    let (to, why) = if ok {
        (
            MachineState::Deployed,
            format!("install finished: {message}"),
        )
    } else {
        (MachineState::Failed, format!("install failed: {message}"))
    };
    transition(tx, &mut m, to, &why)?;
    m.awaits_installed_agent = ok;
    tx.put_machine(&mut m)?;
    Ok(m)
}
