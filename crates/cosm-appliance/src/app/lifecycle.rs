//! The machine lifecycle as an explicit state machine.
//!
//! `discovered → ready → deploying → deployed → active` is the happy path; `failed`, `lost`,
//! `fenced` and `retired` are the ways out of it and back. Every state change anywhere in the
//! appliance goes through [`check`]; nothing else decides whether a move is legal.

use cosm_wire::MachineState::{self, *};

/// The states reachable in one step from `from`.
pub fn allowed_from(from: MachineState) -> &'static [MachineState] {
    match from {
        // An operator or a rule gives a role; commissioning can fail; or it is thrown out.
        // Its discovery agent may also go silent.
        Discovered => &[Ready, Failed, Lost, Retired],
        // The installer starts, the role is taken back, it goes silent, or it is thrown out.
        Ready => &[Discovered, Deploying, Lost, Retired],
        // The installer succeeds, fails, or is cancelled to start over.
        Deploying => &[Deployed, Failed, Ready],
        // The installed system reports in; or goes silent, fails, is redeployed or retired.
        Deployed => &[Active, Failed, Lost, Ready, Retired],
        Active => &[Lost, Failed, Ready, Retired],
        // Retry with a role, drop back to discovered, or give up.
        Failed => &[Discovered, Ready, Retired],
        // Heartbeats resume (back to the state it was lost from), or the HA monitor fences
        // it, or it is retired.
        Lost => &[Discovered, Ready, Active, Deployed, Fenced, Retired],
        // A fenced machine is redeployed or retired, never silently resumed.
        Fenced => &[Ready, Active, Retired],
        // Recommissioning starts from scratch.
        Retired => &[Discovered],
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot move from {from} to {to}; from {from} the allowed states are: {}", list(.allowed))]
pub struct IllegalTransition {
    pub from: MachineState,
    pub to: MachineState,
    pub allowed: &'static [MachineState],
}

fn list(states: &[MachineState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    names.join(", ")
}

/// Checks one move. Staying in the same state is not a transition and is refused too, so
/// a caller cannot record a state change that did not happen.
pub fn check(from: MachineState, to: MachineState) -> Result<(), IllegalTransition> {
    let allowed = allowed_from(from);
    if allowed.contains(&to) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to, allowed })
    }
}

/// States from which a machine record may be deleted outright. A machine that is installed
/// or being installed must be retired first, so a slip of the finger cannot drop it.
pub const DELETABLE: [MachineState; 4] = [Discovered, Ready, Failed, Retired];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_is_allowed() {
        let path = [Discovered, Ready, Deploying, Deployed, Active];
        for w in path.windows(2) {
            check(w[0], w[1]).unwrap();
        }
    }

    #[test]
    fn refusal_names_current_and_allowed_states() {
        let err = check(Discovered, Active).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot move from discovered to active; from discovered the allowed states are: ready, failed, lost, retired"
        );
    }

    #[test]
    fn no_self_loops_and_every_state_reachable() {
        for s in MachineState::ALL {
            assert!(check(s, s).is_err(), "{s} -> {s}");
            let reachable = MachineState::ALL
                .iter()
                .any(|from| allowed_from(*from).contains(&s));
            assert!(reachable, "{s} is unreachable");
        }
    }
}
