//! The command catalogue: every write the appliance makes, as a serializable value that
//! carries its own time. [`Command::apply`] dispatches each operation to the workflow that
//! owns it (machines, deploy, agents, catalog), inside one store transaction, so the checks a
//! workflow makes and the writes they guard can never be separated by another write.

use super::placement::Overcommit;
use super::vms::{self, Candidate, NewVm};
use super::{agents, catalog, deploy, ha, machines, net, power};
use crate::store::{StoreCommand, StoreError, Tx};
use cosm_wire::{
    ActionKind, ActionResult, CreateMachine, EventKind, Image, Inventory, Lease, MacAddr, Machine,
    MachineState, ObservedDomain, PowerWanted, Role, RoleName, RoleSpec, Rule, RuleSpec, Scope,
    Timestamp, TokenInfo, UpdateMachine, Vm, VmName, VmNote, VmOpKind, VmOpResult,
};
use serde::{Deserialize, Serialize};

/// One write: an operation and the time it was issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub at: Timestamp,
    pub op: Op,
}

impl Command {
    /// The operation, stamped with the current time.
    pub fn now(op: Op) -> Command {
        Command {
            at: Timestamp::now(),
            op,
        }
    }
}

impl From<Op> for Command {
    fn from(op: Op) -> Command {
        Command::now(op)
    }
}

/// Every operation the appliance knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateMachine(CreateMachine),
    UpdateMachine {
        mac: MacAddr,
        update: UpdateMachine,
    },
    SetRole {
        mac: MacAddr,
        role: Option<RoleName>,
    },
    SetState {
        mac: MacAddr,
        to: MachineState,
        reason: Option<String>,
    },
    DeleteMachine {
        mac: MacAddr,
    },
    /// A watched machine's heartbeats stopped: it becomes `lost`, remembering its state.
    MarkLost {
        mac: MacAddr,
        reason: String,
    },
    /// A lost machine's heartbeats resumed: it returns to the state it was lost from.
    Resume {
        mac: MacAddr,
    },
    /// A deployed machine's installed agent beats for the first time: it is `active`.
    Activate {
        mac: MacAddr,
    },
    /// A machine an install made `deployed` whose installed agent has not beaten within
    /// `limit_secs` of the report: it is `failed`, `last_step` (its timeline's newest
    /// entry) in the reason.
    FirstBootOverdue {
        mac: MacAddr,
        limit_secs: u64,
        last_step: String,
    },
    /// Start an install over: back to `ready` and, when its agent is alive, a reboot.
    Redeploy {
        mac: MacAddr,
        by: String,
        agent_alive: bool,
    },
    /// The installer fetched its kickstart: a `ready` machine becomes `deploying`.
    StartInstall {
        mac: MacAddr,
        release: String,
        /// An image install: the image's name (`None`: a kickstart).
        #[serde(default)]
        image: Option<String>,
    },
    /// The installer reports how the install ended: `deploying` → `deployed` or `failed`.
    ReportInstall {
        mac: MacAddr,
        ok: bool,
        message: String,
    },
    CreateRole(RoleSpec),
    DeleteRole(RoleName),
    CreateRule(RuleSpec),
    DeleteRule(u64),
    CreateToken {
        name: String,
        scope: Scope,
        hash: String,
    },
    DeleteToken(u64),
    /// An agent enrols: the machine is created (role rules apply) or its inventory updated,
    /// and its previous agent credentials are replaced by `credential_hash`.
    Enroll {
        mac: MacAddr,
        inventory: Inventory,
        credential_hash: String,
        /// Refused when it would create a machine while this many are `discovered`.
        max_discovered: usize,
        /// Who asks; decides whether an agent credential the machine has may be replaced.
        by: agents::EnrolBy,
        /// The machine's current agent has been silent for the lost window.
        agent_silent: bool,
    },
    /// An operator lets a new agent enrol a machine: its agent credentials are revoked,
    /// so the next enrolment with the enrol token is accepted.
    Reregister {
        mac: MacAddr,
        by: String,
    },
    /// Queues an action for a machine's agent and bumps its desired generation.
    QueueAction {
        mac: MacAddr,
        kind: ActionKind,
    },
    /// An agent reports on its actions: finished ones leave the queue, each lands on the
    /// timeline.
    ReportObserved {
        mac: MacAddr,
        results: Vec<ActionResult>,
    },
    /// DHCP saw a new MAC network-boot and offered it an address: it is recorded as
    /// `discovered`, marked as known to DHCP alone, with the DHCP step on its timeline.
    DhcpDiscovered {
        mac: MacAddr,
        step: String,
    },
    /// Deletes the machines DHCP alone knows that were recorded before `cutoff`.
    ExpireDhcpOnly {
        cutoff: Timestamp,
    },
    /// Records a DHCP lease change (bound, released, declined).
    PutLease(Lease),
    /// Appends an event to a machine's timeline; a MAC with no machine record is ignored.
    RecordEvent {
        mac: MacAddr,
        kind: EventKind,
        message: String,
    },
    /// An image's file is in place (renamed into the repository); record it, replacing
    /// any record of the same name.
    PutImage(Image),
    DeleteImage(String),
    /// A role image's manifest is attached to its uploaded file.
    SetImageManifest {
        name: String,
        manifest: cosm_wire::ImageManifest,
    },
    /// How a role's machines are installed (`None`: automatic).
    SetInstallMethod {
        role: RoleName,
        method: Option<cosm_wire::InstallMethod>,
    },
    /// Records a VM on the best of `candidates` (or the one it asks for) where it fits.
    CreateVm {
        new: NewVm,
        candidates: Vec<Candidate>,
        overcommit: Overcommit,
    },
    /// Start or stop a VM.
    SetVmPower {
        name: VmName,
        power: PowerWanted,
        stop_timeout_secs: Option<u32>,
        by: String,
    },
    /// Queues a reboot or a snapshot operation for the VM's host.
    QueueVmOp {
        name: VmName,
        kind: VmOpKind,
        by: String,
    },
    /// Chooses a live migration's destination and queues it on the source.
    StartMigration {
        name: VmName,
        to: Option<MacAddr>,
        candidates: Vec<Candidate>,
        overcommit: Overcommit,
        by: String,
    },
    DeleteVm {
        name: VmName,
        by: String,
    },
    /// Sets (or with `None` removes) a machine's power settings.
    SetPowerSettings {
        mac: MacAddr,
        settings: Option<cosm_wire::PowerSettings>,
        by: String,
    },
    RaiseAlarm {
        kind: cosm_wire::AlarmKind,
        severity: cosm_wire::Severity,
        subject: String,
        message: String,
    },
    ClearAlarm {
        kind: cosm_wire::AlarmKind,
        subject: String,
    },
    /// HA: the three checks agreed on a host; its evacuation starts (`fencing`).
    BeginFence {
        host: MacAddr,
        checks: String,
    },
    /// HA: how the fence ended (`Ok`: how it was confirmed off; `Err`: why not).
    FenceDone {
        host: MacAddr,
        result: Result<String, String>,
    },
    /// HA: the host beat again before it was fenced; its evacuation ends, nothing moved.
    CancelEvacuation {
        host: MacAddr,
    },
    /// HA: one HA VM of a fenced host goes to a survivor.
    EvacuateVm {
        host: MacAddr,
        name: VmName,
        candidates: Vec<Candidate>,
        overcommit: Overcommit,
    },
    /// HA: records which moved VMs run, and the end of the evacuation.
    EvacuationProgress {
        host: MacAddr,
    },
    CreateNetwork(cosm_wire::CreateNetwork),
    DeleteNetwork(cosm_wire::NetworkName),
    /// Creates or replaces a security group.
    PutSecGroup(cosm_wire::SecurityGroup),
    DeleteSecGroup(cosm_wire::SecGroupName),
    CreatePort(cosm_wire::CreatePort),
    DeletePort(MacAddr),
    SetPortGroups {
        mac: MacAddr,
        groups: Vec<cosm_wire::SecGroupName>,
    },
    /// What a host's network reconcile changed or failed at, for its timeline.
    NetworkNotes {
        host: MacAddr,
        lines: Vec<String>,
    },
    /// Replaces the site settings (checked by `app::settings` before).
    PutSettings(cosm_wire::Settings),
    /// Sets the console admin's password hash.
    SetAdminPassword(crate::store::PasswordHash),
    /// A host's agent reported its domains, operation outcomes and notes.
    ReportVms {
        host: MacAddr,
        domains: Vec<ObservedDomain>,
        results: Vec<VmOpResult>,
        notes: Vec<VmNote>,
    },
}

/// What a command produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Machine(Machine),
    Role(Role),
    Rule(Rule),
    Token(TokenInfo),
    Deleted,
    /// Written (or, for an event of an unknown MAC, deliberately skipped).
    Done,
    /// How many records the operation removed.
    Removed(usize),
    /// A VM as the operation left it; `None`: it is gone.
    Vm(Option<Box<Vm>>),
    /// An alarm raised or cleared now (`None`: nothing changed).
    Alarm(Option<Box<cosm_wire::Alarm>>),
    Evacuation(Box<cosm_wire::Evacuation>),
    Network(Box<cosm_wire::Network>),
    SecGroup(Box<cosm_wire::SecurityGroup>),
    Port(Box<cosm_wire::Port>),
    Image(Box<Image>),
}

impl Outcome {
    /// The machine a machine operation produced.
    pub fn into_machine(self) -> Machine {
        match self {
            Outcome::Machine(m) => m,
            other => unreachable!("a machine operation produced {other:?}"),
        }
    }

    /// The VM a VM operation produced (`None`: deleted).
    pub fn into_vm(self) -> Option<Vm> {
        match self {
            Outcome::Vm(v) => v.map(|b| *b),
            other => unreachable!("a VM operation produced {other:?}"),
        }
    }
}

fn vm_outcome(vm: Vm) -> Outcome {
    Outcome::Vm(Some(Box::new(vm)))
}

impl StoreCommand for Command {
    type Outcome = Outcome;

    fn at(&self) -> Timestamp {
        self.at
    }

    fn apply(&self, tx: &mut Tx<'_>) -> Result<Outcome, StoreError> {
        use Outcome::Machine as M;
        match &self.op {
            Op::CreateMachine(spec) => machines::create(tx, spec).map(M),
            Op::UpdateMachine { mac, update } => machines::update(tx, *mac, update).map(M),
            Op::SetRole { mac, role } => machines::set_role(tx, *mac, role.clone()).map(M),
            Op::SetState { mac, to, reason } => {
                machines::set_state(tx, *mac, *to, reason.as_deref()).map(M)
            }
            Op::DeleteMachine { mac } => machines::delete(tx, *mac).map(|_| Outcome::Deleted),
            Op::MarkLost { mac, reason } => machines::mark_lost(tx, *mac, reason).map(M),
            Op::FirstBootOverdue {
                mac,
                limit_secs,
                last_step,
            } => machines::first_boot_overdue(tx, *mac, *limit_secs, last_step).map(M),
            Op::Resume { mac } => machines::resume(tx, *mac).map(M),
            Op::Activate { mac } => machines::activate(tx, *mac).map(M),
            Op::RecordEvent { mac, kind, message } => {
                machines::record_event(tx, *mac, *kind, message).map(|_| Outcome::Done)
            }
            Op::Redeploy {
                mac,
                by,
                agent_alive,
            } => deploy::redeploy(tx, *mac, by, *agent_alive).map(M),
            Op::StartInstall {
                mac,
                release,
                image,
            } => deploy::start_install(tx, *mac, release, image.as_deref()).map(M),
            Op::ReportInstall { mac, ok, message } => {
                deploy::report_install(tx, *mac, *ok, message).map(M)
            }
            Op::Enroll {
                mac,
                inventory,
                credential_hash,
                max_discovered,
                by,
                agent_silent,
            } => agents::enroll(
                tx,
                *mac,
                inventory,
                credential_hash,
                *max_discovered,
                (*by, *agent_silent),
            )
            .map(M),
            Op::Reregister { mac, by } => agents::reregister(tx, *mac, by).map(M),
            Op::QueueAction { mac, kind } => agents::queue_action(tx, *mac, kind).map(M),
            Op::ReportObserved { mac, results } => {
                agents::report_observed(tx, *mac, results).map(M)
            }
            Op::CreateRole(spec) => catalog::create_role(tx, spec).map(Outcome::Role),
            Op::DeleteRole(name) => catalog::delete_role(tx, name).map(|_| Outcome::Deleted),
            Op::CreateRule(spec) => catalog::create_rule(tx, spec).map(Outcome::Rule),
            Op::DeleteRule(id) => catalog::delete_rule(tx, *id).map(|_| Outcome::Deleted),
            Op::CreateToken { name, scope, hash } => {
                catalog::create_token(tx, name, *scope, hash).map(Outcome::Token)
            }
            Op::DeleteToken(id) => catalog::delete_token(tx, *id).map(|_| Outcome::Deleted),
            Op::DhcpDiscovered { mac, step } => machines::dhcp_discovered(tx, *mac, step).map(M),
            Op::ExpireDhcpOnly { cutoff } => {
                machines::expire_dhcp_only(tx, *cutoff).map(Outcome::Removed)
            }
            Op::PutLease(lease) => tx.put_lease(lease).map(|_| Outcome::Done),
            Op::PutImage(image) => tx.put_image(image).map(|_| Outcome::Done),
            Op::DeleteImage(name) => catalog::delete_image(tx, name).map(|_| Outcome::Deleted),
            Op::SetImageManifest { name, manifest } => {
                catalog::set_image_manifest(tx, name, manifest).map(|i| Outcome::Image(Box::new(i)))
            }
            Op::SetInstallMethod { role, method } => {
                catalog::set_install_method(tx, role, *method).map(Outcome::Role)
            }
            Op::CreateVm {
                new,
                candidates,
                overcommit,
            } => vms::create(tx, new, candidates, overcommit).map(vm_outcome),
            Op::SetVmPower {
                name,
                power,
                stop_timeout_secs,
                by,
            } => vms::set_power(tx, name, *power, *stop_timeout_secs, by).map(vm_outcome),
            Op::QueueVmOp { name, kind, by } => vms::queue_op(tx, name, kind, by).map(vm_outcome),
            Op::StartMigration {
                name,
                to,
                candidates,
                overcommit,
                by,
            } => vms::start_migration(tx, name, *to, candidates, overcommit, by).map(vm_outcome),
            Op::DeleteVm { name, by } => {
                vms::delete(tx, name, by).map(|v| Outcome::Vm(v.map(Box::new)))
            }
            Op::SetPowerSettings { mac, settings, by } => {
                power::set_settings(tx, *mac, settings.as_ref(), by).map(|_| Outcome::Done)
            }
            Op::RaiseAlarm {
                kind,
                severity,
                subject,
                message,
            } => ha::raise_alarm(tx, *kind, *severity, subject, message)
                .map(|a| Outcome::Alarm(a.map(Box::new))),
            Op::ClearAlarm { kind, subject } => {
                ha::clear_alarm(tx, *kind, subject).map(|a| Outcome::Alarm(a.map(Box::new)))
            }
            Op::BeginFence { host, checks } => {
                ha::begin_fence(tx, *host, checks).map(|e| Outcome::Evacuation(Box::new(e)))
            }
            Op::FenceDone { host, result } => {
                ha::fence_done(tx, *host, result).map(|e| Outcome::Evacuation(Box::new(e)))
            }
            Op::EvacuateVm {
                host,
                name,
                candidates,
                overcommit,
            } => ha::evacuate_vm(tx, *host, name, candidates, overcommit)
                .map(|e| Outcome::Evacuation(Box::new(e))),
            Op::CancelEvacuation { host } => {
                ha::cancel_evacuation(tx, *host).map(|e| Outcome::Evacuation(Box::new(e)))
            }
            Op::EvacuationProgress { host } => {
                ha::evacuation_progress(tx, *host).map(|e| Outcome::Evacuation(Box::new(e)))
            }
            Op::CreateNetwork(req) => {
                net::create_network(tx, req).map(|n| Outcome::Network(Box::new(n)))
            }
            Op::DeleteNetwork(name) => net::delete_network(tx, name).map(|_| Outcome::Deleted),
            Op::PutSecGroup(g) => net::put_secgroup(tx, g).map(|g| Outcome::SecGroup(Box::new(g))),
            Op::DeleteSecGroup(name) => net::delete_secgroup(tx, name).map(|_| Outcome::Deleted),
            Op::CreatePort(req) => net::create_port(tx, req).map(|p| Outcome::Port(Box::new(p))),
            Op::DeletePort(mac) => net::delete_port(tx, *mac).map(|_| Outcome::Deleted),
            Op::PutSettings(settings) => tx.put_site_settings(settings).map(|_| Outcome::Done),
            Op::SetAdminPassword(hash) => tx.put_admin_password(hash).map(|_| Outcome::Done),
            Op::SetPortGroups { mac, groups } => {
                net::set_port_groups(tx, *mac, groups).map(|p| Outcome::Port(Box::new(p)))
            }
            Op::NetworkNotes { host, lines } => net::network_notes(tx, *host, lines),
            Op::ReportVms {
                host,
                domains,
                results,
                notes,
            } => vms::apply_report(tx, *host, domains, results, notes).map(Outcome::Removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreOptions, SCHEMA_VERSION};
    use cosm_wire::{CreateMachine, EventKind, MacAddr, MachineState, RuleSpec};
    use std::path::Path;

    type Store = crate::app::Store;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn open(dir: &Path) -> Store {
        Store::open(
            &dir.join("cosm.redb"),
            StoreOptions {
                events_per_machine: 5,
            },
        )
        .unwrap()
    }

    fn create(mac_s: &str, role: Option<&str>) -> Command {
        Command::now(Op::CreateMachine(CreateMachine {
            mac: mac(mac_s),
            hostname: None,
            role: role.map(|r| r.parse().unwrap()),
            reserved_ip: None,
            inventory: None,
        }))
    }

    #[tokio::test]
    async fn survives_reopen_and_seeds_roles_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.apply(create("52:54:00:aa:bb:01", Some("host")))
                .await
                .unwrap();
            assert_eq!(s.roles().unwrap().len(), 4);
        }
        let s = open(dir.path());
        let m = s.machine(mac("52:54:00:aa:bb:01")).unwrap().unwrap();
        assert_eq!(m.state, MachineState::Ready);
        assert_eq!(m.role.unwrap().as_str(), "host");
        assert_eq!(s.roles().unwrap().len(), 4);
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn a_refused_command_in_a_batch_leaves_the_others_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let cmds = vec![
            create("52:54:00:00:00:01", None),
            create("52:54:00:00:00:01", None), // duplicate: refused
            create("52:54:00:00:00:02", Some("nosuchrole")), // unknown role: refused
            create("52:54:00:00:00:03", Some("web")),
        ];
        let results = futures_join(&s, cmds).await;
        assert!(results[0].is_ok());
        assert!(matches!(
            results[1],
            Err(crate::store::StoreError::Conflict { .. })
        ));
        assert!(matches!(
            results[2],
            Err(crate::store::StoreError::Invalid { field: "role", .. })
        ));
        assert!(results[3].is_ok());
        let macs: Vec<String> = s
            .machines(None, None)
            .unwrap()
            .iter()
            .map(|m| m.mac.to_string())
            .collect();
        assert_eq!(macs, ["52:54:00:00:00:01", "52:54:00:00:00:03"]);
        // The refused machine left no events behind.
        assert!(s.events(mac("52:54:00:00:00:02"), 10).unwrap().is_empty());
    }

    async fn futures_join(
        s: &Store,
        cmds: Vec<Command>,
    ) -> Vec<Result<Outcome, crate::store::StoreError>> {
        let handles: Vec<_> = cmds
            .into_iter()
            .map(|c| {
                let s = s.clone();
                tokio::spawn(async move { s.apply(c).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn events_are_bounded_per_machine() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = mac("52:54:00:00:00:07");
        s.apply(create("52:54:00:00:00:07", None)).await.unwrap();
        for i in 0..10 {
            let role = if i % 2 == 0 {
                Some("host".parse().unwrap())
            } else {
                None
            };
            s.apply(Command::now(Op::SetRole { mac: m, role }))
                .await
                .unwrap();
        }
        let evs = s.events(m, 100).unwrap();
        assert_eq!(evs.len(), 5);
        assert!(evs.windows(2).all(|w| w[0].seq < w[1].seq));
        // The newest event is the last change: role cleared, ready → discovered.
        assert_eq!(evs.last().unwrap().to_state, Some(MachineState::Discovered));
    }

    #[tokio::test]
    async fn rules_apply_at_discovery() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.apply(Command::now(Op::CreateRule(RuleSpec {
            role: "storage".parse().unwrap(),
            priority: 10,
            description: "lab storage".into(),
            matches: cosm_wire::RuleMatch {
                mac_prefix: Some("52:54:01".parse().unwrap()),
                ..Default::default()
            },
        })))
        .await
        .unwrap();
        let Outcome::Machine(hit) = s.apply(create("52:54:01:00:00:01", None)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (hit.state, hit.role.as_ref().map(|r| r.as_str())),
            (MachineState::Ready, Some("storage"))
        );
        let Outcome::Machine(miss) = s.apply(create("52:54:02:00:00:01", None)).await.unwrap()
        else {
            panic!()
        };
        assert_eq!((miss.state, miss.role), (MachineState::Discovered, None));
        let kinds: Vec<EventKind> = s
            .events(hit.mac, 10)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::Created,
                EventKind::RuleMatched,
                EventKind::StateChanged
            ]
        );
        // A role given by a rule cannot be deleted while the rule names it.
        let err = s
            .apply(Command::now(Op::DeleteRole("storage".parse().unwrap())))
            .await
            .unwrap_err();
        assert!(matches!(err, crate::store::StoreError::Conflict { .. }));
    }

    #[tokio::test]
    async fn delete_needs_retire_for_installed_machines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let m = mac("52:54:00:00:00:09");
        s.apply(create("52:54:00:00:00:09", Some("host")))
            .await
            .unwrap();
        for to in [MachineState::Deploying, MachineState::Deployed] {
            s.apply(Command::now(Op::SetState {
                mac: m,
                to,
                reason: None,
            }))
            .await
            .unwrap();
        }
        let err = s
            .apply(Command::now(Op::DeleteMachine { mac: m }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("retire it first"), "{err}");
        s.apply(Command::now(Op::SetState {
            mac: m,
            to: MachineState::Retired,
            reason: None,
        }))
        .await
        .unwrap();
        s.apply(Command::now(Op::DeleteMachine { mac: m }))
            .await
            .unwrap();
        assert!(s.machine(m).unwrap().is_none());
        assert!(s.events(m, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_change_feed_follows_the_writes_of_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let before = *s.changes().borrow();
        // Enrolment creates a machine: the feed must say so (DHCP reloads its hosts from it).
        let inventory = cosm_wire::Inventory::default();
        s.apply(Command::now(Op::Enroll {
            mac: mac("52:54:00:00:00:0e"),
            inventory,
            credential_hash: "0".repeat(64),
            max_discovered: 10,
            by: agents::EnrolBy::EnrolToken,
            agent_silent: true,
        }))
        .await
        .unwrap();
        let after = *s.changes().borrow();
        assert_eq!(after.machines, before.machines + 1);
        assert_eq!(after.tokens, before.tokens + 1);
        // A lease touches no machine record.
        s.apply(Command::now(Op::PutLease(cosm_wire::Lease {
            ip: "192.0.2.10".parse().unwrap(),
            mac: mac("52:54:00:00:00:0e"),
            state: cosm_wire::LeaseState::Bound,
            starts_at: cosm_wire::Timestamp::now(),
            expires_at: cosm_wire::Timestamp::now(),
            client_hostname: None,
            relay: None,
        })))
        .await
        .unwrap();
        let leased = *s.changes().borrow();
        assert_eq!(leased.machines, after.machines);
        assert_eq!(leased.leases, after.leases + 1);
    }

    #[test]
    fn commands_round_trip_through_json_with_their_time() {
        let c = Command::now(Op::Redeploy {
            mac: mac("52:54:00:00:00:0f"),
            by: "ops".into(),
            agent_alive: true,
        });
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"op\":\"redeploy\""), "{text}");
        let back: Command = serde_json::from_str(&text).unwrap();
        assert_eq!(back.at, c.at);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    /// Issue 11, item 12: the hostname and address indexes follow every create, update,
    /// clear and delete, and a taken hostname or address is refused as before.
    #[tokio::test]
    async fn the_hostname_and_address_indexes_follow_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let (a, b) = (mac("52:54:00:00:10:01"), mac("52:54:00:00:10:02"));
        let ip = |t: &str| -> std::net::Ipv4Addr { t.parse().unwrap() };
        let add = |m: MacAddr, host: &str, addr: &str| {
            Command::now(Op::CreateMachine(CreateMachine {
                mac: m,
                hostname: Some(host.into()),
                role: None,
                reserved_ip: Some(addr.parse().unwrap()),
                inventory: None,
            }))
        };
        let update = |m: MacAddr, u: serde_json::Value| {
            Command::now(Op::UpdateMachine {
                mac: m,
                update: serde_json::from_value(u).unwrap(),
            })
        };
        s.apply(add(a, "Node-A", "10.0.0.1")).await.unwrap();
        assert_eq!(s.machine_with_hostname("node-a").unwrap(), Some(a));
        assert_eq!(s.machine_with_ip(ip("10.0.0.1")).unwrap(), Some(a));

        // Taken by a: refused with the same messages as before the indexes.
        let err = s.apply(add(b, "node-a", "10.0.0.2")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("hostname node-a is already used by machine {a}")
        );
        let err = s.apply(add(b, "node-b", "10.0.0.1")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("address 10.0.0.1 is already reserved for machine {a}")
        );
        assert_eq!(
            s.machine_with_hostname("node-b").unwrap(),
            None,
            "a refusal writes nothing"
        );

        // Renaming frees the old name and takes the new one; keeping them is no conflict.
        s.apply(update(
            a,
            serde_json::json!({"hostname": "node-a2", "reserved_ip": "10.0.0.1"}),
        ))
        .await
        .unwrap();
        assert_eq!(s.machine_with_hostname("node-a").unwrap(), None);
        assert_eq!(s.machine_with_hostname("node-a2").unwrap(), Some(a));
        assert_eq!(s.machine_with_ip(ip("10.0.0.1")).unwrap(), Some(a));
        s.apply(add(b, "node-a", "10.0.0.2")).await.unwrap();
        assert_eq!(s.machine_with_hostname("node-a").unwrap(), Some(b));

        // Clearing frees; another machine may then take it.
        s.apply(update(a, serde_json::json!({"reserved_ip": null})))
            .await
            .unwrap();
        assert_eq!(s.machine_with_ip(ip("10.0.0.1")).unwrap(), None);
        assert_eq!(s.machine_with_hostname("node-a2").unwrap(), Some(a), "kept");
        s.apply(update(b, serde_json::json!({"reserved_ip": "10.0.0.1"})))
            .await
            .unwrap();
        assert_eq!(s.machine_with_ip(ip("10.0.0.1")).unwrap(), Some(b));
        assert_eq!(s.machine_with_ip(ip("10.0.0.2")).unwrap(), None);

        // Other writes of the record (a role, a state) leave the entries alone.
        s.apply(Command::now(Op::SetRole {
            mac: b,
            role: Some("host".parse().unwrap()),
        }))
        .await
        .unwrap();
        assert_eq!(s.machine_with_hostname("node-a").unwrap(), Some(b));

        // Deleting frees both.
        s.apply(Command::now(Op::DeleteMachine { mac: b }))
            .await
            .unwrap();
        assert_eq!(s.machine_with_hostname("node-a").unwrap(), None);
        assert_eq!(s.machine_with_ip(ip("10.0.0.1")).unwrap(), None);
        s.apply(add(mac("52:54:00:00:10:03"), "node-a", "10.0.0.1"))
            .await
            .unwrap();

        // The index and the records agree.
        for m in s.machines(None, None).unwrap() {
            if let Some(h) = &m.hostname {
                assert_eq!(s.machine_with_hostname(h).unwrap(), Some(m.mac));
            }
            if let Some(i) = m.reserved_ip {
                assert_eq!(s.machine_with_ip(i).unwrap(), Some(m.mac));
            }
        }
    }
}
