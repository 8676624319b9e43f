//! Agent work in controllers. Each kind of work on a machine (power, enrolment; later VMs
//! and image writes) is a [`Controller`] on its own thread. The [`Dispatcher`] hands each
//! queued action to the controller for its kind over a channel and picks the outcomes up
//! from another; unknown kinds it reports `unsupported` itself.
//!
//! The heartbeat loop owns the dispatcher and must never wait for a controller: an action
//! may take minutes (a live migration, an image write), and an agent whose heartbeats stop
//! gets its machine marked `lost`, and once fencing exists, powered off while healthy.
//! Controllers do not talk to the appliance about their work either: the loop fetches the
//! desired state and reports the outcomes (the enrolment controller's enrolment is the
//! work itself). A disruptive step (a reboot) waits until the appliance has recorded the
//! outcome, see [`Controller::after_report`].
//!
//! The VM controller ([`crate::vms`]) is not one of these: it reconciles a set (the desired
//! VMs) rather than carrying out actions, and it posts its own reports
//! (`/api/v1/agent/vms`), so that a slow libvirt never holds a heartbeat or an `observed`
//! report.
//!
//! Every controller has a simulated form that reports the action done, after an optional
//! delay, without doing anything: `cosm-agent run --dry-run-actions`, and the simulated
//! agents of the scale tests (`cosm-e2e`), which run the same controllers.

use crate::enrolment::Enroller;
use cosm_wire::{ActionKind, ActionResult, ActionStatus, AgentAction};
use std::collections::HashMap;
use std::fmt;
use std::sync::mpsc;
use std::time::Duration;

/// How controllers carry out actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionMode {
    /// Really do the work (`reboot -f`, `poweroff -f`, enrol again).
    Execute,
    /// Report each action done without doing it, `delay` after it was handed over (tests,
    /// trying an agent out, simulated agents).
    Simulated { delay: Duration },
}

/// What a controller says about one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutcome {
    pub status: ActionStatus,
    pub message: String,
}

impl ActionOutcome {
    pub fn done(message: impl Into<String>) -> ActionOutcome {
        ActionOutcome {
            status: ActionStatus::Done,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> ActionOutcome {
        ActionOutcome {
            status: ActionStatus::Failed,
            message: message.into(),
        }
    }
    pub fn unsupported(message: impl Into<String>) -> ActionOutcome {
        ActionOutcome {
            status: ActionStatus::Unsupported,
            message: message.into(),
        }
    }
}

/// One kind of work on the machine. It runs on its own thread, one action at a time, so
/// `run` may block for as long as the work takes.
pub trait Controller: Send {
    /// Short name, for its thread and for messages (`power`, `enrolment`).
    fn name(&self) -> &'static str;
    /// The action kinds it carries out; asked once, when its thread starts.
    fn kinds(&self) -> Vec<ActionKind>;
    /// Carries out one action (only of a kind from [`Controller::kinds`]).
    fn run(&mut self, action: &AgentAction) -> ActionOutcome;
    /// Runs once the appliance has recorded `outcome`. A disruptive step goes here: were
    /// the machine to reboot before the report, the action would still be queued and the
    /// machine would reboot again after it came back.
    fn after_report(&mut self, _action: &AgentAction, _outcome: &ActionOutcome) {}
}

/// Sleeps `delay`, then reports done: the simulated form of every controller.
fn simulate(delay: Duration, would: &str) -> ActionOutcome {
    std::thread::sleep(delay);
    ActionOutcome::done(format!("dry run: would {would}"))
}

/// Reboot and power-off.
#[derive(Debug)]
pub struct PowerController {
    /// `Some(delay)`: simulated.
    simulated: Option<Duration>,
}

impl PowerController {
    pub fn real() -> PowerController {
        PowerController { simulated: None }
    }

    pub fn simulated(delay: Duration) -> PowerController {
        PowerController {
            simulated: Some(delay),
        }
    }

    fn command(kind: &ActionKind) -> Option<[&'static str; 2]> {
        match kind {
            ActionKind::Reboot => Some(["reboot", "-f"]),
            ActionKind::PowerOff => Some(["poweroff", "-f"]),
            _ => None,
        }
    }
}

impl Controller for PowerController {
    fn name(&self) -> &'static str {
        "power"
    }

    fn kinds(&self) -> Vec<ActionKind> {
        vec![ActionKind::Reboot, ActionKind::PowerOff]
    }

    fn run(&mut self, action: &AgentAction) -> ActionOutcome {
        let Some(cmd) = PowerController::command(&action.kind) else {
            return ActionOutcome::unsupported(format!(
                "the power controller does not do {:?}",
                action.kind.as_str()
            ));
        };
        let cmd = cmd.join(" ");
        match self.simulated {
            Some(delay) => simulate(delay, &format!("run {cmd}")),
            // The command itself runs in `after_report`.
            None => ActionOutcome::done(format!("running {cmd}")),
        }
    }

    fn after_report(&mut self, action: &AgentAction, outcome: &ActionOutcome) {
        let Some(cmd) = PowerController::command(&action.kind) else {
            return;
        };
        if self.simulated.is_some() || outcome.status != ActionStatus::Done {
            return;
        }
        match std::process::Command::new(cmd[0]).args(&cmd[1..]).status() {
            Ok(status) if !status.success() => {
                eprintln!("error: {} exited with {status}", cmd.join(" "))
            }
            Ok(_) => {}
            Err(e) => eprintln!("error: cannot run {}: {e}", cmd.join(" ")),
        }
    }
}

/// Re-register: enrol again with a fresh inventory (after a hardware change). The new
/// credential reaches the heartbeat loop through the [`Enroller`]'s shared session.
#[derive(Debug)]
pub struct EnrolmentController {
    work: Enrolment,
}

#[derive(Debug)]
enum Enrolment {
    Real(Enroller),
    Simulated(Duration),
}

impl EnrolmentController {
    pub fn real(enroller: Enroller) -> EnrolmentController {
        EnrolmentController {
            work: Enrolment::Real(enroller),
        }
    }

    pub fn simulated(delay: Duration) -> EnrolmentController {
        EnrolmentController {
            work: Enrolment::Simulated(delay),
        }
    }
}

impl Controller for EnrolmentController {
    fn name(&self) -> &'static str {
        "enrolment"
    }

    fn kinds(&self) -> Vec<ActionKind> {
        vec![ActionKind::ReRegister]
    }

    fn run(&mut self, _action: &AgentAction) -> ActionOutcome {
        match &self.work {
            Enrolment::Real(enroller) => match enroller.enroll() {
                Ok(()) => ActionOutcome::done("enrolled again with a fresh inventory"),
                Err(e) => ActionOutcome::failed(format!("{e:#}")),
            },
            Enrolment::Simulated(delay) => simulate(*delay, "enrol again with a fresh inventory"),
        }
    }
}

/// The real agent's controllers.
pub fn controllers(mode: ActionMode, enroller: Enroller) -> Vec<Box<dyn Controller>> {
    match mode {
        ActionMode::Execute => vec![
            Box::new(PowerController::real()),
            Box::new(EnrolmentController::real(enroller)),
        ],
        ActionMode::Simulated { delay } => simulated_controllers(delay),
    }
}

/// Every controller in its simulated form.
pub fn simulated_controllers(delay: Duration) -> Vec<Box<dyn Controller>> {
    vec![
        Box::new(PowerController::simulated(delay)),
        Box::new(EnrolmentController::simulated(delay)),
    ]
}

/// One action's outcome, waiting to be reported to the appliance.
#[derive(Debug)]
pub struct Finished {
    pub action: AgentAction,
    pub outcome: ActionOutcome,
    /// Told when the appliance has recorded the outcome, so the controller can take its
    /// after-report step; `None` when the dispatcher decided the outcome itself.
    reported: Option<mpsc::Sender<()>>,
}

impl Finished {
    pub fn result(&self) -> ActionResult {
        ActionResult {
            id: self.action.id,
            status: self.outcome.status,
            message: self.outcome.message.clone(),
        }
    }
}

/// The agent's log line for a finished action (tests look for it).
impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "action {} ({}): {:?} {}",
            self.action.id, self.action.kind, self.outcome.status, self.outcome.message
        )
    }
}

/// A controller's thread, as the dispatcher sees it.
#[derive(Debug)]
struct Worker {
    name: &'static str,
    kinds: Vec<ActionKind>,
    jobs: mpsc::Sender<AgentAction>,
}

/// Where an action the dispatcher has seen is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Running,
    Finished,
    Reported,
}

/// Hands actions to controllers, each at most once, and collects their outcomes until the
/// appliance has recorded them. Nothing here blocks except [`Dispatcher::wait`].
#[derive(Debug)]
pub struct Dispatcher {
    workers: Vec<Worker>,
    finished_tx: mpsc::Sender<Finished>,
    finished_rx: mpsc::Receiver<Finished>,
    /// Every action id handed out and not yet known to be gone from the queue: an action
    /// stays queued at the appliance until its outcome is reported, so each desired state
    /// lists it again.
    stages: HashMap<u64, Stage>,
    /// Outcomes not yet recorded by the appliance, oldest first.
    unreported: Vec<Finished>,
    /// An outcome [`Dispatcher::wait`] received, until [`Dispatcher::collect`] takes it.
    arrived: Option<Finished>,
}

/// A controller's thread: one action at a time, the outcome sent back, and the after-report
/// step once the dispatcher says the appliance has it.
fn serve(
    mut controller: Box<dyn Controller>,
    jobs: mpsc::Receiver<AgentAction>,
    finished: mpsc::Sender<Finished>,
) {
    for action in jobs {
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| controller.run(&action)));
        // A panicking controller must still answer, or the action would stay queued and
        // the agent would never converge.
        let outcome = run.unwrap_or_else(|_| {
            ActionOutcome::failed(format!("the {} controller panicked", controller.name()))
        });
        let (reported, on_reported) = mpsc::channel();
        let sent = finished.send(Finished {
            action: action.clone(),
            outcome: outcome.clone(),
            reported: Some(reported),
        });
        if sent.is_err() {
            return;
        }
        // Dropped without a word when the dispatcher goes away: then no after-report step.
        if on_reported.recv().is_ok() {
            controller.after_report(&action, &outcome);
        }
    }
}

impl Dispatcher {
    /// Starts one thread per controller.
    pub fn start(controllers: Vec<Box<dyn Controller>>) -> std::io::Result<Dispatcher> {
        let (finished_tx, finished_rx) = mpsc::channel();
        let mut workers = Vec::new();
        for controller in controllers {
            let (jobs, jobs_rx) = mpsc::channel();
            let name = controller.name();
            let kinds = controller.kinds();
            let finished = finished_tx.clone();
            std::thread::Builder::new()
                .name(format!("controller-{name}"))
                .spawn(move || serve(controller, jobs_rx, finished))?;
            workers.push(Worker { name, kinds, jobs });
        }
        Ok(Dispatcher {
            workers,
            finished_tx,
            finished_rx,
            stages: HashMap::new(),
            unreported: Vec::new(),
            arrived: None,
        })
    }

    /// Hands over the actions of a desired state that were not handed over before. Kinds
    /// no controller carries out are reported `unsupported` at once.
    pub fn dispatch(&mut self, queued: &[AgentAction]) {
        // Forget reported actions the appliance no longer lists: their ids do not come
        // back. While one is still listed (the report was sent but not yet applied) it is
        // remembered, so that no action runs twice.
        self.stages
            .retain(|id, stage| *stage != Stage::Reported || queued.iter().any(|a| a.id == *id));
        for action in queued {
            if self.stages.contains_key(&action.id) {
                continue;
            }
            self.stages.insert(action.id, Stage::Running);
            let outcome = match self.workers.iter().find(|w| w.kinds.contains(&action.kind)) {
                Some(w) => match w.jobs.send(action.clone()) {
                    Ok(()) => continue,
                    Err(_) => ActionOutcome::failed(format!("the {} controller stopped", w.name)),
                },
                None => ActionOutcome::unsupported(format!(
                    "this agent does not know the action {:?}",
                    action.kind.as_str()
                )),
            };
            // Through the channel like any outcome, so `collect` sees it in order.
            let _ = self.finished_tx.send(Finished {
                action: action.clone(),
                outcome,
                reported: None,
            });
        }
    }

    /// Outcomes that came in since the last call, without waiting: the one place where
    /// new outcomes show up, so the caller logs each exactly once.
    pub fn collect(&mut self) -> &[Finished] {
        let start = self.unreported.len();
        let waited = self.arrived.take();
        for f in waited.into_iter().chain(self.finished_rx.try_iter()) {
            self.stages.insert(f.action.id, Stage::Finished);
            self.unreported.push(f);
        }
        &self.unreported[start..]
    }

    /// Waits up to `timeout` for an outcome; true when one came ([`Dispatcher::collect`]
    /// then returns it). The real agent's loop sleeps here between heartbeats, so that it
    /// reports outcomes as soon as they come.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if self.arrived.is_none() {
            self.arrived = self.finished_rx.recv_timeout(timeout).ok();
        }
        self.arrived.is_some()
    }

    /// The outcomes to report, oldest first.
    pub fn results(&self) -> Vec<ActionResult> {
        self.unreported.iter().map(Finished::result).collect()
    }

    /// The appliance recorded the outcomes of `ids`: their controllers may take their
    /// after-report steps.
    pub fn reported(&mut self, ids: &[u64]) {
        let (done, keep): (Vec<Finished>, Vec<Finished>) = std::mem::take(&mut self.unreported)
            .into_iter()
            .partition(|f| ids.contains(&f.action.id));
        self.unreported = keep;
        for f in done {
            self.stages.insert(f.action.id, Stage::Reported);
            if let Some(tx) = f.reported {
                let _ = tx.send(());
            }
        }
    }

    /// Nothing running and nothing left to report: the agent has converged.
    pub fn is_idle(&self) -> bool {
        self.stages.values().all(|s| *s == Stage::Reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_wire::Timestamp;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn action(id: u64, kind: &str) -> AgentAction {
        AgentAction {
            id,
            kind: kind.parse().unwrap(),
            queued_at: Timestamp::from_millis(0),
        }
    }

    /// Waits (bounded) until `n` outcomes were collected in all.
    fn collect_n(d: &mut Dispatcher, n: usize) -> Vec<ActionResult> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.results().len() < n {
            assert!(Instant::now() < deadline, "only {:?}", d.results());
            d.wait(Duration::from_millis(50));
            d.collect();
        }
        d.results()
    }

    /// A controller that records what it was asked and when its after-report step ran.
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Controller for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn kinds(&self) -> Vec<ActionKind> {
            vec![ActionKind::Reboot]
        }
        fn run(&mut self, action: &AgentAction) -> ActionOutcome {
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            self.log.lock().unwrap().push(format!("run {}", action.id));
            if action.id == 99 {
                panic!("test panic");
            }
            ActionOutcome::done("ok")
        }
        fn after_report(&mut self, action: &AgentAction, _: &ActionOutcome) {
            self.log
                .lock()
                .unwrap()
                .push(format!("after {}", action.id));
        }
    }

    #[test]
    fn unknown_kinds_are_unsupported_at_once_and_messages_stay() {
        let mut d = Dispatcher::start(simulated_controllers(Duration::ZERO)).unwrap();
        d.dispatch(&[action(1, "flash-bios"), action(2, "reboot")]);
        let results = collect_n(&mut d, 2);
        let by_id = |id| results.iter().find(|r| r.id == id).unwrap().clone();
        assert_eq!(by_id(1).status, ActionStatus::Unsupported);
        assert_eq!(
            by_id(1).message,
            "this agent does not know the action \"flash-bios\""
        );
        assert_eq!(by_id(2).status, ActionStatus::Done);
        assert_eq!(by_id(2).message, "dry run: would run reboot -f");
        assert!(!d.is_idle());
        d.reported(&[1, 2]);
        assert!(d.is_idle());
        assert!(d.results().is_empty());
    }

    #[test]
    fn every_outcome_surfaces_once_whether_waited_for_or_not() {
        let mut d = Dispatcher::start(simulated_controllers(Duration::from_millis(200))).unwrap();
        d.dispatch(&[action(1, "reboot"), action(2, "flash-bios")]);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < 2 {
            assert!(Instant::now() < deadline, "only {seen:?}");
            d.wait(Duration::from_millis(50));
            seen.extend(d.collect().iter().map(|f| f.action.id));
        }
        assert_eq!(seen, [2, 1], "the unknown kind first, at once");
        assert!(!d.wait(Duration::from_millis(100)));
        assert!(d.collect().is_empty());
        assert_eq!(d.results().len(), 2, "both still to report");
    }

    #[test]
    fn each_action_runs_once_even_when_listed_again() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut d = Dispatcher::start(vec![Box::new(Recorder {
            log: log.clone(),
            gate: None,
        })])
        .unwrap();
        let queued = [action(1, "reboot")];
        d.dispatch(&queued);
        d.dispatch(&queued);
        collect_n(&mut d, 1);
        // Still listed after it finished, and after it was reported (the appliance has not
        // applied the report yet): not run again.
        d.dispatch(&queued);
        d.reported(&[1]);
        d.dispatch(&queued);
        // Gone from the queue, then (a new generation) listed afresh: forgotten, so it
        // would run again; the appliance never reuses an id, so this does not happen.
        d.dispatch(&[]);
        assert!(d.stages.is_empty());
        // The after-report stage runs on the controller's thread: wait for it, then give a
        // second run the time to show up if it were to happen.
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(log.lock().unwrap().as_slice(), ["run 1", "after 1"]);
    }

    #[test]
    fn after_report_waits_for_the_report() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut d = Dispatcher::start(vec![Box::new(Recorder {
            log: log.clone(),
            gate: None,
        })])
        .unwrap();
        d.dispatch(&[action(7, "reboot")]);
        collect_n(&mut d, 1);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(log.lock().unwrap().as_slice(), ["run 7"]);
        d.reported(&[7]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.lock().unwrap().as_slice(), ["run 7", "after 7"]);
    }

    #[test]
    fn a_long_action_never_blocks_the_caller() {
        let (open, gate) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut d = Dispatcher::start(vec![Box::new(Recorder {
            log,
            gate: Some(gate),
        })])
        .unwrap();
        let t = Instant::now();
        d.dispatch(&[action(1, "reboot"), action(2, "power-off")]);
        assert!(d.collect().iter().any(|f| f.action.id == 2));
        assert!(!d.wait(Duration::from_millis(50)));
        assert!(d.collect().is_empty());
        assert!(t.elapsed() < Duration::from_secs(2));
        open.send(()).unwrap();
        assert_eq!(collect_n(&mut d, 2)[1].id, 1);
    }

    #[test]
    fn a_panicking_controller_still_answers() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut d = Dispatcher::start(vec![Box::new(Recorder { log, gate: None })]).unwrap();
        d.dispatch(&[action(99, "reboot")]);
        let r = collect_n(&mut d, 1);
        assert_eq!(r[0].status, ActionStatus::Failed);
        assert_eq!(r[0].message, "the recorder controller panicked");
        // The thread lives on.
        d.reported(&[99]);
        d.dispatch(&[action(100, "reboot")]);
        assert_eq!(collect_n(&mut d, 1)[0].status, ActionStatus::Done);
    }

    #[test]
    fn simulated_controllers_take_their_delay() {
        const DELAY: Duration = Duration::from_secs(2);
        let mut d = Dispatcher::start(simulated_controllers(DELAY)).unwrap();
        let t = Instant::now();
        d.dispatch(&[action(1, "re-register"), action(2, "power-off")]);
        assert!(d.collect().is_empty());
        let r = collect_n(&mut d, 2);
        // The two controllers run side by side: both done in less than two delays.
        let took = t.elapsed();
        assert!(took >= DELAY && took < 2 * DELAY, "{took:?}");
        let messages: Vec<&str> = r.iter().map(|r| r.message.as_str()).collect();
        assert!(messages.contains(&"dry run: would enrol again with a fresh inventory"));
        assert!(messages.contains(&"dry run: would run poweroff -f"));
    }
}
