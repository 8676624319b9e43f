//! The VM controller: makes this host's hypervisor match the VMs of the desired state
//! (`DesiredState::vms`) and reports what the host really has (`POST
//! /api/v1/agent/vms`, a [`VmReport`]).
//!
//! It runs on a thread of its own, fed through a [`VmControllerHandle`]: the heartbeat loop
//! hands it each desired state it fetches and never waits for it. Unlike the action
//! controllers ([`crate::controller`]), it reports by itself, because its report carries the
//! host's domains every few seconds whether or not anything was asked, and because a slow
//! libvirt (a hung `list`, a long migration) must never hold a heartbeat.
//!
//! Each pass (at once when a new set arrives, then every `interval`) first makes the host's
//! tenant networking match `DesiredState::networks` when it is given ([`crate::network`]:
//! bridges must exist before a domain on them starts, and running it every pass repairs
//! drift), then lists the domains and,
//! for each desired VM, decides one step ([`decide`], pure): define (downloading its
//! images first), start, stop, delete, or nothing; then carries out its queued operations.
//! Steps that can take long (downloads, a graceful shutdown, a live migration) run on a
//! short-lived job thread per VM, so one VM never holds up another or the report; a VM
//! with a job running is left alone until it ends.
//!
//! A VM's files may already exist when it is defined: every host of a rack shares the VM
//! directory, and a VM the appliance restarts here after its old host was fenced comes with
//! its disks. They are used as they are (the hypervisor makes only missing disk files), so
//! the guest keeps its data. When the host fences itself ([`crate::peers`],
//! [`SelfFencer`]), every managed domain is hard-stopped and nothing is defined, started or
//! operated on until the agent has the appliance's desired state again.
//!
//! What it must not do: touch a domain the desired set does not list (those are reported
//! `managed: false` and never started, stopped or undefined; a VM arriving by incoming live
//! migration is one until the appliance lists it here, and so is the stale definition a
//! fenced host still has of a VM that was restarted elsewhere), run a queued operation
//! twice, or keep a downloaded file whose sha256 is not the pinned one. Errors never end the
//! thread: a failing VM gets one note per distinct message and is retried with backoff.

use anyhow::{bail, Context};
use cosm_hypervisor::{
    BootSpec, DiskSource, DiskSpec, HostInfo, Hypervisor, HypervisorError, NicSpec,
    ShutdownOutcome, VmPower, VmSpec,
};
use cosm_wire::{
    DesiredVm, DomainPower, HostCapacity, HostNetworks, ImageRef, ObservedDomain, PowerWanted,
    VmDisk, VmName, VmNic, VmNote, VmOp, VmOpKind, VmOpResult, VmReport,
};

use crate::network::{Logged, NetBook, NetReconciler, NoVtep};
use sha2::{Digest, Sha256};

/// The hypervisor API the controller drives, for callers that build one (the simulated
/// agents of `cosm-e2e` run the controller on a `SimHypervisor`).
pub use cosm_hypervisor::{HostInfo as HypervisorSize, SimCluster, SimHypervisor};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How many console lines a report carries for a domain.
pub const CONSOLE_LINES: usize = 50;
/// Console bytes one report carries at most, so a host with many chatty guests stays well
/// under the appliance's body limit (`api.max_body_bytes`, 1 MiB by default); consoles
/// that do not fit go in the next reports.
const CONSOLE_BUDGET: usize = 256 * 1024;
/// Longer console lines are cut to this many characters.
const CONSOLE_LINE_CHARS: usize = 512;
/// A report is sent when something changed, and at least this often.
pub const REPORT_AT_LEAST_EVERY: Duration = Duration::from_secs(10);
/// The longest a failing VM waits before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the host's storage size is read again.
const STORAGE_REFRESH: Duration = Duration::from_secs(60);

/// Where the agent's bearer credential comes from: the enroller's session in the real
/// agent (it changes when the agent enrols again), a fixed string for a simulated agent.
pub type CredentialSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Where reports go. The agent posts them to the appliance ([`HttpReportSink`]); the unit
/// tests keep them.
pub trait ReportSink: Send {
    /// Delivers a report; `Ok` means the appliance accepted it (its results and notes are
    /// then not sent again).
    fn send(&mut self, report: &VmReport) -> anyhow::Result<()>;
}

/// Posts reports to `POST {appliance}/api/v1/agent/vms` with the agent's credential.
pub struct HttpReportSink {
    url: String,
    credential: CredentialSource,
    /// Made on the controller's thread at first use: a blocking client may not be made or
    /// dropped inside an async runtime, and the simulated agents build this in one.
    http: Option<reqwest::blocking::Client>,
}

impl std::fmt::Debug for HttpReportSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReportSink")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpReportSink {
    pub fn new(appliance: &str, credential: CredentialSource) -> HttpReportSink {
        HttpReportSink {
            url: format!("{}/api/v1/agent/vms", appliance.trim_end_matches('/')),
            credential,
            http: None,
        }
    }
}

fn http_client() -> anyhow::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // Image downloads may be large; a stalled one still ends (and is retried), so the
        // VM's job cannot hang for ever. Reports set their own, short, timeout.
        .timeout(Duration::from_secs(30 * 60))
        .build()
        .context("cannot build the HTTP client")
}

impl ReportSink for HttpReportSink {
    fn send(&mut self, report: &VmReport) -> anyhow::Result<()> {
        if self.http.is_none() {
            self.http = Some(http_client()?);
        }
        let http = self.http.as_ref().expect("set above");
        let credential = (self.credential)().context("not enrolled yet")?;
        let resp = http
            .post(&self.url)
            .bearer_auth(credential)
            .timeout(Duration::from_secs(15))
            .json(report)
            .send()
            .with_context(|| format!("cannot post the VM report to {}", self.url))?;
        if !resp.status().is_success() {
            bail!(
                "the VM report to {} answered {}: {}",
                self.url,
                resp.status(),
                resp.text().unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// How the controller is set up.
#[derive(Clone)]
pub struct VmConfig {
    /// Where VM files live (the agent's state directory unless `--vm-dir` says otherwise):
    /// images are cached in `images/<sha256>`, each VM's files are in `vms/<name>/`.
    pub state_dir: PathBuf,
    /// Base URL of the appliance (images are downloaded from it).
    pub appliance: String,
    pub credential: CredentialSource,
    /// Time between passes.
    pub interval: Duration,
    /// What the report gives as this host's libvirt URI for incoming migrations.
    pub migration_uri: Option<String>,
    /// Download images and make the VM directories. Off for simulated hosts, whose
    /// hypervisor makes no files (a fleet of them would otherwise download every image).
    pub files: bool,
    /// What the report gives as where this host's agent answers peer probes (`ip:port`).
    pub probe: Option<String>,
    /// What the report gives as this host's VXLAN endpoint (`--vtep-ip`).
    pub vtep: Option<std::net::Ipv4Addr>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("state_dir", &self.state_dir)
            .field("appliance", &self.appliance)
            .field("interval", &self.interval)
            .field("migration_uri", &self.migration_uri)
            .field("files", &self.files)
            .field("probe", &self.probe)
            .field("vtep", &self.vtep)
            .finish_non_exhaustive()
    }
}

/// What a pass does to one desired VM, before its queued operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Download its images, make its files, define it; start it if `start`.
    Create {
        start: bool,
    },
    /// It is off and should run. `restart`: it was meant to be running all along (found
    /// off: killed, crashed, host rebooted), not just asked to start.
    Start {
        found: VmPower,
        restart: bool,
    },
    /// It is on and should be off: a graceful shutdown when running, else forced off.
    Stop {
        found: VmPower,
    },
    /// Being deleted: force it off if on, undefine it, remove its files.
    Delete {
        found: Option<VmPower>,
    },
    /// The host fenced itself ([`crate::peers`]): hard-stop it, whatever is wanted.
    Fence {
        found: VmPower,
    },
}

/// The step for one VM. `found`: its power, if this host has it. `was_wanted`: the power
/// wanted at the previous pass (`None` at the first). `migrated_away`: it left this host
/// by a migration this controller carried out, and must not be made again here.
pub fn decide(
    wanted: Option<PowerWanted>,
    found: Option<VmPower>,
    was_wanted: Option<PowerWanted>,
    migrated_away: bool,
) -> Step {
    match (wanted, found) {
        (None, None) => Step::Delete { found: None },
        (None, Some(p)) => Step::Delete { found: Some(p) },
        (Some(_), None) if migrated_away => Step::Nothing,
        (Some(w), None) => Step::Create {
            start: w == PowerWanted::Running,
        },
        (Some(PowerWanted::Running), Some(p)) if !p.is_active() => Step::Start {
            found: p,
            restart: was_wanted != Some(PowerWanted::Stopped),
        },
        // An ACPI shutdown in progress ends by itself.
        (Some(PowerWanted::Stopped), Some(p)) if p.is_active() && p != VmPower::ShuttingDown => {
            Step::Stop { found: p }
        }
        (Some(_), Some(_)) => Step::Nothing,
    }
}

/// The step for one VM while the host is fenced: hard-stop it if it is on; nothing else.
pub fn decide_fenced(found: Option<VmPower>) -> Step {
    match found {
        Some(p) if p.is_active() => Step::Fence { found: p },
        _ => Step::Nothing,
    }
}

fn domain_power(p: VmPower) -> DomainPower {
    match p {
        VmPower::Running | VmPower::Blocked => DomainPower::Running,
        VmPower::Paused | VmPower::Suspended => DomainPower::Paused,
        VmPower::ShuttingDown => DomainPower::ShuttingDown,
        VmPower::ShutOff => DomainPower::ShutOff,
        VmPower::Crashed => DomainPower::Crashed,
        VmPower::Unknown => DomainPower::Other,
    }
}

/// An error with its causes, one line.
fn chain(e: impl Into<anyhow::Error>) -> String {
    format!("{:#}", e.into())
}

/// The guest's disk device names: vda, vdb, … vdz, vdaa, … (xvd… for Xen).
pub fn disk_target(kind: cosm_wire::VmKind, index: usize) -> String {
    let prefix = if kind.is_xen() { "xvd" } else { "vd" };
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!(
        "{prefix}{}",
        String::from_utf8(letters).expect("ASCII letters")
    )
}

/// The NIC to define for `nic`: on a tenant network (`network` set) its tap is named
/// `port_device(mac)` — the name the host's network rules are written against — and has
/// the network's MTU; on a plain bridge libvirt names it.
pub fn nic_spec(nic: &VmNic) -> NicSpec {
    NicSpec {
        bridge: nic.bridge.clone(),
        mac: nic.mac,
        device: nic
            .network
            .as_ref()
            .map(|_| cosm_wire::port_device(&nic.mac)),
        mtu: nic.mtu,
    }
}

/// What the job threads share.
struct Shared {
    hv: Arc<dyn Hypervisor>,
    config: VmConfig,
    http: reqwest::blocking::Client,
    /// Why the host fenced itself, while it is fenced.
    fence_reason: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn images_dir(&self) -> PathBuf {
        self.config.state_dir.join("images")
    }

    fn vm_dir(&self, vm: &VmName) -> PathBuf {
        // `VmName` is a safe file name: letters, digits, '.', '_', '-', no leading dot.
        self.config.state_dir.join("vms").join(vm.as_str())
    }

    /// The cached file of `image`, downloaded first if it is not there.
    fn image(&self, vm: &VmName, image: &ImageRef) -> Result<PathBuf, String> {
        let sha = &image.sha256;
        if sha.len() != 64 || !sha.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(format!(
                "image {}: pinned sha256 {sha:?} is not 64 lowercase hex digits",
                image.image
            ));
        }
        if !cosm_wire::valid_image_name(&image.image) {
            return Err(format!("image name {:?} is not valid", image.image));
        }
        let dir = self.images_dir();
        let path = dir.join(sha);
        if path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // Per VM, so two VMs fetching one image at once do not write one file; the rename
        // is atomic and both have the same bytes.
        let part = dir.join(format!(".{sha}.{vm}.part"));
        let got = self.download(&image.image, &part);
        let fail = |message: String| {
            let _ = std::fs::remove_file(&part);
            Err(message)
        };
        match got {
            Err(e) => fail(format!("image {}: {}", image.image, chain(e))),
            Ok(got) if got != *sha => fail(format!(
                "image {}: expected sha256 {sha}, got {got}; the download was not kept",
                image.image
            )),
            Ok(_) => std::fs::rename(&part, &path).map(|()| path).or_else(|e| {
                fail(format!(
                    "image {}: cannot move it into {}: {e}",
                    image.image,
                    dir.display()
                ))
            }),
        }
    }

    /// Streams `GET {appliance}/api/v1/agent/images/{name}` into `into`; returns the
    /// sha256 of what came.
    fn download(&self, name: &str, into: &Path) -> anyhow::Result<String> {
        let url = format!("{}/api/v1/agent/images/{name}", self.config.appliance);
        let credential = (self.config.credential)().context("not enrolled yet")?;
        let mut resp = self
            .http
            .get(&url)
            .bearer_auth(credential)
            .send()
            .with_context(|| format!("cannot download {url}"))?;
        if !resp.status().is_success() {
            bail!("GET {url} answered {}", resp.status());
        }
        let file = std::fs::File::create(into)
            .with_context(|| format!("cannot create {}", into.display()))?;
        let mut out = HashingWriter {
            inner: std::io::BufWriter::new(file),
            hasher: Sha256::new(),
        };
        resp.copy_to(&mut out)
            .with_context(|| format!("downloading {url} into {}", into.display()))?;
        let file = out
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", into.display()))?;
        file.sync_all()
            .with_context(|| format!("writing {}", into.display()))?;
        Ok(hex::encode(out.hasher.finalize()))
    }

    /// The spec to define `vm` with; with `config.files`, downloads its images and makes
    /// its directory first.
    fn spec(&self, vm: &DesiredVm) -> Result<VmSpec, String> {
        let dir = self.vm_dir(&vm.name);
        let dir = std::path::absolute(&dir)
            .map_err(|e| format!("cannot make {} absolute: {e}", dir.display()))?;
        let image = |r: &ImageRef| -> Result<PathBuf, String> {
            if self.config.files {
                let path = self.image(&vm.name, r)?;
                std::path::absolute(&path)
                    .map_err(|e| format!("cannot make {} absolute: {e}", path.display()))
            } else {
                Ok(std::path::absolute(self.images_dir().join(&r.sha256))
                    .unwrap_or_else(|_| PathBuf::from("/nonexistent")))
            }
        };
        let mut spec = VmSpec::new(vm.name.clone(), vm.kind, vm.vcpus, vm.memory_mib);
        for (i, disk) in vm.disks.iter().enumerate() {
            let source = match disk {
                VmDisk::Blank { size_bytes } => DiskSource::Blank {
                    size_bytes: *size_bytes,
                },
                VmDisk::Image {
                    image: name,
                    sha256,
                } => DiskSource::Overlay {
                    base: image(&ImageRef {
                        image: name.clone(),
                        sha256: sha256.clone(),
                    })?,
                },
            };
            spec.disks.push(DiskSpec {
                source,
                path: dir.join(format!("disk{i}.qcow2")),
                target: disk_target(vm.kind, i),
            });
        }
        spec.nics = vm.nics.iter().map(nic_spec).collect();
        if let Some(boot) = &vm.boot {
            spec.boot = Some(BootSpec {
                kernel: image(&boot.kernel)?,
                initrd: boot.initrd.as_ref().map(image).transpose()?,
                cmdline: boot.cmdline.clone(),
            });
        }
        spec.console_log = Some(dir.join("console.log"));
        spec.validate().map_err(chain)?;
        if self.config.files {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(spec)
    }

    fn remove_dir(&self, vm: &VmName) -> Result<(), String> {
        let dir = self.vm_dir(vm);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
}

/// Writes through to `inner` and hashes what passes.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a job did for one VM.
#[derive(Debug)]
struct JobDone {
    vm: VmName,
    notes: Vec<VmNote>,
    results: Vec<VmOpResult>,
    /// Operations it did not get to (the VM is not defined here): they stay queued.
    skipped_ops: Vec<u64>,
    /// Why its step failed; `failed` when the VM cannot be made as asked.
    error: Option<(String, bool)>,
    migrated: bool,
}

/// One VM's step and operations, on a job thread.
fn work(shared: &Shared, vm: &DesiredVm, step: Step, ops: Vec<VmOp>) -> JobDone {
    let name = &vm.name;
    let hv = &*shared.hv;
    let mut done = JobDone {
        vm: name.clone(),
        notes: Vec::new(),
        results: Vec::new(),
        skipped_ops: Vec::new(),
        error: None,
        migrated: false,
    };
    let note = |message: String| VmNote {
        vm: name.clone(),
        message,
        failed: false,
    };
    let step_result: Result<(), (String, bool)> = match step {
        Step::Nothing => Ok(()),
        Step::Fence { found } => match hv.destroy(name) {
            // It went off by itself meanwhile: as good.
            Ok(()) | Err(HypervisorError::WrongState { .. }) => {
                eprintln!("SELF-FENCE: {name} hard-stopped (it was {found})");
                done.notes.push(note(format!(
                    "hard-stopped (it was {found}): this host fenced itself; {}",
                    shared_reason(shared)
                )));
                Ok(())
            }
            Err(e) => Err((
                format!("self-fence: cannot force it off: {}", chain(e)),
                false,
            )),
        },
        Step::Create { start } => (|| {
            let spec = shared.spec(vm).map_err(|m| (m, true))?;
            hv.define(&spec)
                .map_err(|e| (format!("cannot define it: {}", chain(e)), true))?;
            if start {
                hv.start(name).map_err(|e| {
                    (
                        format!("defined on this host, but cannot start it: {}", chain(e)),
                        true,
                    )
                })?;
                done.notes
                    .push(note("defined on this host and started".into()));
            } else {
                done.notes.push(note("defined on this host".into()));
            }
            Ok(())
        })(),
        Step::Start { found, restart } => match hv.start(name) {
            Ok(()) if restart => {
                done.notes
                    .push(note(format!("found {found}; started again")));
                Ok(())
            }
            Ok(()) => {
                done.notes.push(note("started".into()));
                Ok(())
            }
            Err(e) => Err((format!("cannot start it: {}", chain(e)), true)),
        },
        Step::Stop { found } => {
            let timeout = Duration::from_secs(vm.stop_timeout_secs.into());
            if found == VmPower::Running {
                match hv.shutdown(name, timeout) {
                    Ok(ShutdownOutcome::Graceful) => {
                        done.notes
                            .push(note("stopped: the guest powered off".into()));
                        Ok(())
                    }
                    Ok(ShutdownOutcome::Forced) => {
                        done.notes.push(note(format!(
                            "forced off: the guest did not power off within {} s",
                            vm.stop_timeout_secs
                        )));
                        Ok(())
                    }
                    Err(e) => Err((format!("cannot stop it: {}", chain(e)), false)),
                }
            } else {
                match hv.destroy(name) {
                    Ok(()) => {
                        done.notes
                            .push(note(format!("forced off (it was {found}, not running)")));
                        Ok(())
                    }
                    Err(e) => Err((format!("cannot force it off: {}", chain(e)), false)),
                }
            }
        }
        Step::Delete { found } => (|| {
            if let Some(p) = found {
                if p.is_active() {
                    match hv.destroy(name) {
                        Ok(()) | Err(HypervisorError::WrongState { .. }) => {}
                        Err(e) => {
                            return Err((format!("cannot force it off: {}", chain(e)), false))
                        }
                    }
                }
                // Snapshot metadata goes with it (both drivers undefine with it).
                match hv.undefine(name) {
                    Ok(()) | Err(HypervisorError::NotFound { .. }) => {}
                    Err(e) => return Err((format!("cannot undefine it: {}", chain(e)), false)),
                }
            }
            if shared.config.files {
                shared.remove_dir(name).map_err(|m| (m, false))?;
            }
            Ok(())
        })(),
    };
    if let Err(e) = step_result {
        done.error = Some(e);
    }
    // Operations.
    for op in ops {
        let result = |ok: bool, message: String| VmOpResult {
            vm: name.clone(),
            id: op.id,
            ok,
            message,
        };
        if vm.power.is_none() {
            done.results
                .push(result(false, format!("{name} is being deleted")));
            continue;
        }
        if done.migrated {
            done.results.push(result(
                false,
                format!("{name} migrated to another host before this operation"),
            ));
            continue;
        }
        match hv.state(name) {
            Err(HypervisorError::NotFound { .. }) => {
                done.skipped_ops.push(op.id);
                continue;
            }
            Err(e) => {
                done.results.push(result(false, chain(e)));
                continue;
            }
            Ok(_) => {}
        }
        let outcome = match &op.kind {
            VmOpKind::Reboot => hv.reboot(name).map(|()| "reboot requested".to_string()),
            VmOpKind::SnapshotCreate { snapshot } => hv
                .snapshot_create(name, snapshot)
                .map(|()| format!("snapshot {snapshot} taken")),
            VmOpKind::SnapshotRevert { snapshot } => hv
                .snapshot_revert(name, snapshot)
                .map(|()| format!("reverted to snapshot {snapshot}")),
            VmOpKind::SnapshotDelete { snapshot } => hv
                .snapshot_delete(name, snapshot)
                .map(|()| format!("snapshot {snapshot} deleted")),
            VmOpKind::Migrate { to, uri } => hv.migrate(name, uri, true).map(|()| {
                done.migrated = true;
                format!("migrated to {to} ({uri})")
            }),
        };
        done.results.push(match outcome {
            Ok(message) => result(true, message),
            Err(e) => result(false, format!("{}: {}", op.kind, chain(e))),
        });
    }
    done
}

/// A VM whose step failed: when it is tried again and what it said last.
#[derive(Debug)]
struct Failure {
    message: String,
    attempts: u32,
    next_try: Instant,
}

/// Messages to the controller's thread.
enum Msg {
    Desired(Vec<DesiredVm>, Option<HostNetworks>),
    JobDone(JobDone),
    /// Hard-stop every managed domain and start none until [`Msg::Resume`]; the reason.
    SelfFence(String),
    Resume,
    Stop,
}

/// Tells the VM controller that the host fenced itself ([`crate::peers`]); cheap to clone,
/// usable from any thread.
#[derive(Debug, Clone)]
pub struct SelfFencer {
    tx: mpsc::Sender<Msg>,
}

impl SelfFencer {
    /// Hard-stops every COSM-managed running domain and holds the controller (nothing is
    /// defined, started or operated on) until it is resumed.
    pub fn fence(&self, reason: String) {
        let _ = self.tx.send(Msg::SelfFence(reason));
    }
}

/// Why the host fenced itself, as the job threads see it.
fn shared_reason(shared: &Shared) -> String {
    shared
        .fence_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// The VM controller. Run it on its own thread with [`VmControllerHandle::start`]; the
/// tests drive it directly with [`VmController::pass`] and [`VmController::settle`].
pub struct VmController {
    hv: Arc<dyn Hypervisor>,
    config: VmConfig,
    sink: Box<dyn ReportSink>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    shared: Option<Arc<Shared>>,
    /// The last set handed over; `None` until the first (nothing is managed until then).
    desired: Option<Vec<DesiredVm>>,
    /// The power each VM was wanted in at the previous pass.
    was_wanted: HashMap<VmName, Option<PowerWanted>>,
    failures: HashMap<VmName, Failure>,
    /// Operations carried out or running, until the appliance stops listing them.
    ops_seen: HashSet<u64>,
    migrated_away: HashSet<VmName>,
    /// VMs a job is working on.
    busy: HashSet<VmName>,
    results: Vec<VmOpResult>,
    notes: Vec<VmNote>,
    /// Console lines as last accepted, per domain.
    console_sent: HashMap<String, Vec<String>>,
    /// The last accepted report, without results, notes and consoles, and when.
    last_sent: Option<(VmReport, Instant)>,
    storage: Option<(u64, Instant)>,
    /// The last error of the hypervisor's list or the sink, so each is logged once.
    last_warning: Option<String>,
    /// The host fenced itself, for this reason: managed domains are hard-stopped and
    /// nothing is started until the agent has the appliance's desired state again.
    held: Option<String>,
    /// Makes the host's tenant networking match `networks` ([`crate::network`]).
    net: Box<dyn NetReconciler>,
    /// `DesiredState::networks` as last handed over; `None`: host networking is left
    /// alone.
    networks: Option<HostNetworks>,
    /// What the network reconciles did since the last accepted report.
    net_book: NetBook,
}

impl std::fmt::Debug for VmController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmController")
            .field("config", &self.config)
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

impl VmController {
    pub fn new(
        hv: Arc<dyn Hypervisor>,
        config: VmConfig,
        sink: Box<dyn ReportSink>,
    ) -> VmController {
        let (tx, rx) = mpsc::channel();
        VmController {
            hv,
            config,
            sink,
            tx,
            rx,
            shared: None,
            desired: None,
            was_wanted: HashMap::new(),
            failures: HashMap::new(),
            ops_seen: HashSet::new(),
            migrated_away: HashSet::new(),
            busy: HashSet::new(),
            results: Vec::new(),
            notes: Vec::new(),
            console_sent: HashMap::new(),
            last_sent: None,
            storage: None,
            last_warning: None,
            held: None,
            net: Box::new(NoVtep),
            networks: None,
            net_book: NetBook::default(),
        }
    }

    /// Makes the host's tenant networking with `net` ([`crate::network::reconciler`]);
    /// without it, a host asked for networks reports that it has no `--vtep-ip`.
    pub fn with_network(mut self, net: Box<dyn NetReconciler>) -> VmController {
        self.net = net;
        self
    }

    /// Takes the tenant networks of a new desired state (`None`: leave host networking
    /// alone). The next pass reconciles them before anything else.
    pub fn set_networks(&mut self, networks: Option<HostNetworks>) {
        self.networks = networks;
    }

    /// Makes the host's tenant networking match the desired networks, if any were given;
    /// its changes and a new error go to the next report. Its failure never stops the pass.
    fn reconcile_networks(&mut self) {
        let Some(desired) = &self.networks else {
            self.net_book.set_ready(Vec::new());
            return;
        };
        let outcome = self.net.reconcile(desired);
        // What is up after the pass: every network asked for when it succeeded, none known
        // when it failed (a migration here waits for its networks to be listed).
        let mut ready: Vec<u32> = match &outcome {
            Ok(_) => desired.networks.iter().map(|n| n.vni).collect(),
            Err(_) => Vec::new(),
        };
        ready.sort_unstable();
        self.net_book.set_ready(ready);
        if let Ok(changes) = &outcome {
            for c in changes {
                eprintln!("network: {c}");
            }
        }
        match self.net_book.record(outcome) {
            Logged::Quiet => {}
            Logged::NewError(e) => {
                eprintln!("warning: network: {e}; the VMs are reconciled all the same, and the networks again at the next pass")
            }
            Logged::Recovered => eprintln!("network: the host's networks match again"),
        }
    }

    /// The sender the self-fence uses ([`crate::peers`]).
    pub fn self_fencer(&self) -> SelfFencer {
        SelfFencer {
            tx: self.tx.clone(),
        }
    }

    /// The host fenced itself: hard-stop every managed domain (at the next pass) and start
    /// nothing until [`VmController::resume`].
    pub fn self_fence(&mut self, reason: String) {
        eprintln!("SELF-FENCE: VM controller: stopping every COSM-managed domain: {reason}");
        if let Some(s) = &self.shared {
            *s.fence_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        }
        self.held = Some(reason);
    }

    /// The agent has the appliance's desired state again after a self-fence: converge to
    /// it as usual.
    pub fn resume(&mut self) {
        if self.held.take().is_some() {
            eprintln!("VM controller: the self-fence is lifted; the appliance answers again");
        }
        if let Some(s) = &self.shared {
            *s.fence_reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    fn warn_once(&mut self, message: String) {
        if self.last_warning.as_deref() != Some(&message) {
            eprintln!("warning: VM controller: {message}");
            self.last_warning = Some(message);
        }
    }

    /// Takes a new desired set: failing VMs are tried again at once.
    pub fn set_desired(&mut self, vms: Vec<DesiredVm>) {
        let listed: HashSet<u64> = vms
            .iter()
            .flat_map(|v| v.ops.iter().map(|o| o.id))
            .collect();
        // An id the appliance no longer lists does not come back.
        self.ops_seen.retain(|id| listed.contains(id));
        self.migrated_away
            .retain(|name| vms.iter().any(|v| v.name == *name));
        self.failures
            .retain(|name, _| vms.iter().any(|v| v.name == *name));
        let now = Instant::now();
        for f in self.failures.values_mut() {
            f.next_try = now;
        }
        self.desired = Some(vms);
    }

    fn shared(&mut self) -> anyhow::Result<Arc<Shared>> {
        if let Some(s) = &self.shared {
            return Ok(s.clone());
        }
        let s = Arc::new(Shared {
            hv: self.hv.clone(),
            config: self.config.clone(),
            http: http_client()?,
            fence_reason: std::sync::Mutex::new(self.held.clone()),
        });
        self.shared = Some(s.clone());
        Ok(s)
    }

    fn job_done(&mut self, done: JobDone) {
        self.busy.remove(&done.vm);
        for id in &done.skipped_ops {
            self.ops_seen.remove(id);
        }
        if done.migrated {
            self.migrated_away.insert(done.vm.clone());
        }
        self.notes.extend(done.notes);
        self.results.extend(done.results);
        match done.error {
            None => {
                self.failures.remove(&done.vm);
            }
            Some((message, failed)) => {
                let f = self.failures.entry(done.vm.clone()).or_insert(Failure {
                    message: String::new(),
                    attempts: 0,
                    next_try: Instant::now(),
                });
                if f.message != message {
                    self.notes.push(VmNote {
                        vm: done.vm.clone(),
                        message: message.clone(),
                        failed,
                    });
                    f.message = message;
                }
                f.attempts += 1;
                let backoff = self
                    .config
                    .interval
                    .saturating_mul(1 << f.attempts.min(10))
                    .min(MAX_BACKOFF);
                f.next_try = Instant::now() + backoff;
            }
        }
    }

    /// One pass: starts the jobs the VMs need and sends a report when one is due. Returns
    /// at once; the jobs report back through the controller's channel.
    pub fn pass(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg);
        }
        // Every pass, not only when the desired networks changed: this is what repairs
        // what was changed by hand within one interval.
        self.reconcile_networks();
        let domains = match self.hv.list() {
            Ok(d) => d,
            Err(e) => {
                // No report: an empty list would say every VM is gone.
                self.warn_once(format!("cannot list domains: {}", chain(e)));
                return;
            }
        };
        if let Some(desired) = self.desired.clone() {
            let shared = match self.shared() {
                Ok(s) => Some(s),
                Err(e) => {
                    self.warn_once(chain(e));
                    None
                }
            };
            let now = Instant::now();
            for vm in desired.iter().filter(|_| shared.is_some()) {
                if self.busy.contains(&vm.name) {
                    continue;
                }
                if self
                    .failures
                    .get(&vm.name)
                    .is_some_and(|f| f.next_try > now)
                {
                    continue;
                }
                let found = domains
                    .iter()
                    .find(|d| d.name == vm.name.as_str())
                    .map(|d| d.power);
                if found.is_some() {
                    self.migrated_away.remove(&vm.name);
                }
                let was = self.was_wanted.get(&vm.name).copied().flatten();
                let step = if self.held.is_some() {
                    decide_fenced(found)
                } else {
                    decide(vm.power, found, was, self.migrated_away.contains(&vm.name))
                };
                self.was_wanted.insert(vm.name.clone(), vm.power);
                // While fenced, operations stay queued: none is carried out.
                let ops: Vec<VmOp> = vm
                    .ops
                    .iter()
                    .filter(|op| self.held.is_none() && !self.ops_seen.contains(&op.id))
                    .cloned()
                    .collect();
                // A VM being deleted and already gone needs no job unless it has files
                // or operations to answer.
                let needless = match step {
                    Step::Nothing => true,
                    Step::Delete { found: None } => {
                        !self.config.files
                            || !shared.as_ref().is_some_and(|s| s.vm_dir(&vm.name).exists())
                    }
                    _ => false,
                };
                if needless && ops.is_empty() {
                    continue;
                }
                self.ops_seen.extend(ops.iter().map(|o| o.id));
                self.busy.insert(vm.name.clone());
                let shared = shared.clone().expect("filtered above");
                let tx = self.tx.clone();
                let vm = vm.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("vm-{}", vm.name))
                    .spawn(move || {
                        let done = work(&shared, &vm, step, ops);
                        let _ = tx.send(Msg::JobDone(done));
                    });
                if let Err(e) = spawned {
                    self.warn_once(format!("cannot start a job thread: {e}"));
                    self.busy.clear();
                    self.ops_seen.clear();
                    break;
                }
            }
            self.was_wanted
                .retain(|name, _| desired.iter().any(|v| v.name == *name));
        }
        self.report(&domains);
    }

    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Desired(vms, networks) => {
                self.set_desired(vms);
                self.set_networks(networks);
                true
            }
            Msg::JobDone(done) => {
                self.job_done(done);
                true
            }
            Msg::SelfFence(reason) => {
                self.self_fence(reason);
                true
            }
            Msg::Resume => {
                self.resume();
                true
            }
            Msg::Stop => false,
        }
    }

    fn capacity(&mut self) -> HostCapacity {
        let size = match self.hv.host_info() {
            Ok(s) => s,
            Err(e) => {
                self.warn_once(format!("cannot read the host's size: {}", chain(e)));
                HostInfo {
                    vcpus: 0,
                    memory_mib: 0,
                }
            }
        };
        let now = Instant::now();
        let storage = match self.storage {
            Some((bytes, at)) if now.duration_since(at) < STORAGE_REFRESH => bytes,
            _ => {
                let bytes = storage_bytes(&self.config.state_dir);
                self.storage = Some((bytes, now));
                bytes
            }
        };
        HostCapacity {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            storage_bytes: storage,
            migration_uri: self.config.migration_uri.clone(),
            probe: self.config.probe.clone(),
            vtep: self.config.vtep,
        }
    }

    fn report(&mut self, domains: &[cosm_hypervisor::DomainInfo]) {
        let managed: HashSet<&str> = self
            .desired
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        let mut observed = Vec::new();
        let mut budget = CONSOLE_BUDGET;
        for d in domains {
            let is_managed = managed.contains(d.name.as_str());
            let mut o = ObservedDomain {
                name: d.name.clone(),
                power: domain_power(d.power),
                managed: is_managed,
                snapshots: Vec::new(),
                console: None,
            };
            if is_managed {
                let name = VmName::new(&d.name).expect("a desired VM's name");
                o.snapshots = self.hv.snapshot_list(&name).unwrap_or_default();
                if let Ok(mut lines) = self.hv.console_tail(&name, CONSOLE_LINES) {
                    for l in &mut lines {
                        if let Some((cut, _)) = l.char_indices().nth(CONSOLE_LINE_CHARS) {
                            l.truncate(cut);
                        }
                    }
                    let size: usize = lines.iter().map(|l| l.len() + 4).sum();
                    if self.console_sent.get(&d.name) != Some(&lines) && size <= budget {
                        budget -= size;
                        o.console = Some(lines);
                    }
                }
            }
            observed.push(o);
        }
        let report = VmReport {
            capacity: self.capacity(),
            domains: observed,
            results: self.results.clone(),
            notes: self.notes.clone(),
            network: self.net_book.pending(),
        };
        let mut plain = report.clone();
        plain.results.clear();
        plain.notes.clear();
        plain.network = None;
        for d in &mut plain.domains {
            d.console = None;
        }
        let due = match &self.last_sent {
            None => true,
            Some((last, at)) => *last != report || at.elapsed() >= REPORT_AT_LEAST_EVERY,
        };
        if !due {
            return;
        }
        match self.sink.send(&report) {
            Ok(()) => {
                self.results.clear();
                self.notes.clear();
                self.net_book.reported();
                for d in &report.domains {
                    if let Some(lines) = &d.console {
                        self.console_sent.insert(d.name.clone(), lines.clone());
                    }
                }
                self.console_sent
                    .retain(|name, _| report.domains.iter().any(|d| d.name == *name));
                self.last_sent = Some((plain, Instant::now()));
                self.last_warning = None;
            }
            Err(e) => self.warn_once(format!("{}; sent again at the next pass", chain(e))),
        }
    }

    /// Waits up to `timeout` for the running jobs, passing as each ends, until no VM needs
    /// a job. For tests and for a clean stop.
    pub fn settle(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.pass();
            if self.busy.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(msg) => {
                    self.handle(msg);
                }
                Err(_) => return false,
            }
        }
    }

    /// The controller's thread: a pass at once on a new set, on a job's end, and every
    /// interval; until told to stop.
    fn run(mut self) {
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next {
                self.pass();
                next = Instant::now() + self.config.interval;
                continue;
            }
            match self.rx.recv_timeout(next - now) {
                Ok(msg) => {
                    if !self.handle(msg) {
                        return;
                    }
                    next = Instant::now();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// The size of the filesystem holding `dir` (free plus used bytes), from the mount table;
/// 0 if it cannot be found.
pub fn storage_bytes(dir: &Path) -> u64 {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
        return 0;
    };
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.total_space())
        .unwrap_or(0)
}

/// Owns the VM controller's thread. Dropping it stops the thread after its current pass
/// (jobs still running finish on their own threads).
#[derive(Debug)]
pub struct VmControllerHandle {
    tx: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Desired(..) => "Desired",
            Msg::JobDone(_) => "JobDone",
            Msg::SelfFence(_) => "SelfFence",
            Msg::Resume => "Resume",
            Msg::Stop => "Stop",
        })
    }
}

impl VmControllerHandle {
    /// Starts `controller` on a thread of its own.
    pub fn start(controller: VmController) -> std::io::Result<VmControllerHandle> {
        let tx = controller.tx.clone();
        let thread = std::thread::Builder::new()
            .name("controller-vms".into())
            .spawn(move || controller.run())?;
        Ok(VmControllerHandle {
            tx,
            thread: Some(thread),
        })
    }

    /// Hands over the VMs and tenant networks of a freshly fetched desired state (one
    /// message, so no pass sees the new VMs with the old networks); returns at once.
    pub fn set_desired(&self, vms: Vec<DesiredVm>, networks: Option<HostNetworks>) {
        let _ = self.tx.send(Msg::Desired(vms, networks));
    }

    /// The sender the self-fence uses.
    pub fn self_fencer(&self) -> SelfFencer {
        SelfFencer {
            tx: self.tx.clone(),
        }
    }

    /// Lifts a self-fence (after a desired state handed over with
    /// [`VmControllerHandle::set_desired`], which the controller takes first).
    pub fn resume(&self) {
        let _ = self.tx.send(Msg::Resume);
    }
}

impl Drop for VmControllerHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosm_hypervisor::{SimCluster, SimHypervisor, SnapshotName};
    use cosm_wire::{VmBoot, VmKind};
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Keeps the reports it accepts; refuses them while `refuse` is set.
    #[derive(Clone, Default)]
    struct Keep {
        reports: Arc<Mutex<Vec<VmReport>>>,
        refuse: Arc<AtomicBool>,
    }

    impl ReportSink for Keep {
        fn send(&mut self, report: &VmReport) -> anyhow::Result<()> {
            if self.refuse.load(Ordering::SeqCst) {
                bail!("the appliance is away");
            }
            self.reports.lock().unwrap().push(report.clone());
            Ok(())
        }
    }

    impl Keep {
        fn count(&self) -> usize {
            self.reports.lock().unwrap().len()
        }
        fn last(&self) -> VmReport {
            self.reports
                .lock()
                .unwrap()
                .last()
                .cloned()
                .expect("a report")
        }
        fn notes(&self) -> Vec<VmNote> {
            let r = self.reports.lock().unwrap();
            r.iter().flat_map(|r| r.notes.clone()).collect()
        }
        fn results(&self) -> Vec<VmOpResult> {
            let r = self.reports.lock().unwrap();
            r.iter().flat_map(|r| r.results.clone()).collect()
        }
    }

    /// A real HTTP server on loopback serving `files` under the agent's image route to the
    /// right bearer credential; counts the requests.
    struct ImageServer {
        url: String,
        requests: Arc<AtomicUsize>,
    }

    fn image_server(files: Vec<(&'static str, Vec<u8>)>) -> ImageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        // The thread ends with the test process; it holds no files.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let path = head[0].split_whitespace().nth(1).unwrap_or("").to_string();
                let authorised = head
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case("authorization: Bearer cred-1\r\n"));
                let body = files
                    .iter()
                    .find(|(name, _)| path == format!("/api/v1/agent/images/{name}"))
                    .map(|(_, b)| b.clone());
                let (status, body) = match (authorised, body) {
                    (false, _) => ("401 Unauthorized", Vec::new()),
                    (true, None) => ("404 Not Found", Vec::new()),
                    (true, Some(b)) => ("200 OK", b),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        ImageServer { url, requests }
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn name(s: &str) -> VmName {
        VmName::new(s).unwrap()
    }

    fn vm(n: &str, power: Option<PowerWanted>) -> DesiredVm {
        DesiredVm {
            name: name(n),
            kind: VmKind::Kvm,
            vcpus: 1,
            memory_mib: 256,
            disks: vec![VmDisk::Blank {
                size_bytes: 1 << 30,
            }],
            nics: Vec::new(),
            boot: None,
            power,
            stop_timeout_secs: 5,
            ops: Vec::new(),
        }
    }

    fn op(id: u64, kind: VmOpKind) -> VmOp {
        VmOp {
            id,
            kind,
            queued_at: "2026-01-01T00:00:00.000Z".parse().unwrap(),
        }
    }

    struct Setup {
        c: VmController,
        sink: Keep,
        hv: SimHypervisor,
        dir: tempfile::TempDir,
    }

    fn setup_with(hv: SimHypervisor, appliance: &str, files: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let sink = Keep::default();
        let config = VmConfig {
            state_dir: dir.path().to_path_buf(),
            appliance: appliance.to_string(),
            credential: Arc::new(|| Some("cred-1".to_string())),
            interval: Duration::from_millis(10),
            migration_uri: Some("qemu+tcp://host-a/system".into()),
            files,
            probe: Some("192.0.2.10:7946".into()),
            vtep: None,
        };
        let c = VmController::new(Arc::new(hv.clone()), config, Box::new(sink.clone()));
        Setup { c, sink, hv, dir }
    }

    fn setup() -> Setup {
        setup_with(SimHypervisor::new("sim://a"), "http://127.0.0.1:9", true)
    }

    const SETTLE: Duration = Duration::from_secs(20);

    fn power(hv: &SimHypervisor, n: &str) -> Option<VmPower> {
        hv.list()
            .unwrap()
            .into_iter()
            .find(|d| d.name == n)
            .map(|d| d.power)
    }

    fn messages(notes: &[VmNote]) -> Vec<String> {
        notes
            .iter()
            .map(|n| format!("{}: {}", n.vm, n.message))
            .collect()
    }

    #[test]
    fn decisions() {
        use PowerWanted::{Running, Stopped};
        use VmPower::{Crashed, Paused, ShutOff, ShuttingDown};
        assert_eq!(
            decide(Some(Running), None, None, false),
            Step::Create { start: true }
        );
        assert_eq!(
            decide(Some(Stopped), None, None, false),
            Step::Create { start: false }
        );
        assert_eq!(decide(Some(Running), None, None, true), Step::Nothing);
        assert_eq!(
            decide(Some(Running), Some(Crashed), Some(Running), false),
            Step::Start {
                found: Crashed,
                restart: true
            }
        );
        assert_eq!(
            decide(Some(Running), Some(ShutOff), Some(Stopped), false),
            Step::Start {
                found: ShutOff,
                restart: false
            }
        );
        assert_eq!(
            decide(Some(Running), Some(VmPower::Running), None, false),
            Step::Nothing
        );
        assert_eq!(
            decide(Some(Stopped), Some(Paused), None, false),
            Step::Stop { found: Paused }
        );
        assert_eq!(
            decide(Some(Stopped), Some(ShuttingDown), None, false),
            Step::Nothing
        );
        assert_eq!(
            decide(None, Some(VmPower::Running), None, false),
            Step::Delete {
                found: Some(VmPower::Running)
            }
        );
    }

    #[test]
    fn disk_targets_follow_the_kind() {
        assert_eq!(disk_target(VmKind::Kvm, 0), "vda");
        assert_eq!(disk_target(VmKind::Tcg, 25), "vdz");
        assert_eq!(disk_target(VmKind::Kvm, 26), "vdaa");
        assert_eq!(disk_target(VmKind::XenPv, 1), "xvdb");
    }

    #[test]
    fn defines_and_starts_then_reports_without_repeating_itself() {
        let mut s = setup();
        assert!(s.c.settle(SETTLE));
        let first = s.sink.last();
        assert!(first.domains.is_empty(), "nothing yet");
        assert_eq!(first.capacity.vcpus, SimHypervisor::DEFAULT_SIZE.vcpus);
        assert_eq!(
            first.capacity.migration_uri.as_deref(),
            Some("qemu+tcp://host-a/system")
        );
        assert_eq!(first.capacity.probe.as_deref(), Some("192.0.2.10:7946"));
        assert!(first.capacity.storage_bytes > 0);

        s.c.set_desired(vec![vm("vm1", Some(PowerWanted::Running))]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::Running));
        assert_eq!(
            messages(&s.sink.notes()),
            ["vm1: defined on this host and started"]
        );
        let r = s.sink.last();
        assert_eq!(r.domains.len(), 1);
        let d = &r.domains[0];
        assert!(d.managed && d.power == DomainPower::Running);
        assert_eq!(
            d.console.as_deref(),
            Some(&["[sim] vm1: powered on".to_string()][..])
        );
        assert!(s.dir.path().join("vms/vm1").is_dir());

        // Nothing changed: no report until REPORT_AT_LEAST_EVERY, and no new note.
        let sent = s.sink.count();
        s.c.set_desired(vec![vm("vm1", Some(PowerWanted::Running))]);
        assert!(s.c.settle(SETTLE));
        s.c.pass();
        assert_eq!(s.sink.count(), sent);
        assert_eq!(s.sink.notes().len(), 1);
    }

    #[test]
    fn a_vm_killed_outside_cosm_is_started_again_with_a_note() {
        let mut s = setup();
        s.c.set_desired(vec![vm("vm1", Some(PowerWanted::Running))]);
        assert!(s.c.settle(SETTLE));
        s.hv.kill(&name("vm1"), VmPower::ShutOff).unwrap();
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::Running));
        s.hv.kill(&name("vm1"), VmPower::Crashed).unwrap();
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::Running));
        assert_eq!(
            messages(&s.sink.notes()),
            [
                "vm1: defined on this host and started",
                "vm1: found shut off; started again",
                "vm1: found crashed; started again",
            ]
        );
        // The console changed (killed, powered on): the report carries it again.
        let console = s.sink.last().domains[0].console.clone().unwrap();
        assert_eq!(console.last().unwrap(), "[sim] vm1: powered on");
    }

    #[test]
    fn domains_cosm_did_not_ask_for_are_reported_and_never_touched() {
        let mut s = setup();
        for (n, on) in [("other-on", true), ("other-off", false)] {
            s.hv.define(&VmSpec::new(name(n), VmKind::Kvm, 1, 128))
                .unwrap();
            if on {
                s.hv.start(&name(n)).unwrap();
            }
        }
        // Before any desired state, and with a set that lists neither.
        assert!(s.c.settle(SETTLE));
        s.c.set_desired(vec![vm("vm1", Some(PowerWanted::Stopped))]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "other-on"), Some(VmPower::Running));
        assert_eq!(power(&s.hv, "other-off"), Some(VmPower::ShutOff));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::ShutOff));
        let r = s.sink.last();
        let by = |n: &str| r.domains.iter().find(|d| d.name == n).unwrap().clone();
        assert!(!by("other-on").managed && !by("other-off").managed);
        assert!(by("other-on").console.is_none(), "not read for others");
        assert!(by("vm1").managed);
        assert_eq!(messages(&s.sink.notes()), ["vm1: defined on this host"]);
    }

    #[test]
    fn stop_is_graceful_or_forced_and_says_which() {
        let mut s = setup();
        s.c.set_desired(vec![
            vm("vm1", Some(PowerWanted::Running)),
            vm("vm2", Some(PowerWanted::Running)),
        ]);
        assert!(s.c.settle(SETTLE));
        s.hv.set_ignores_acpi(&name("vm2"), true).unwrap();
        s.c.set_desired(vec![
            vm("vm1", Some(PowerWanted::Stopped)),
            vm("vm2", Some(PowerWanted::Stopped)),
        ]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::ShutOff));
        assert_eq!(power(&s.hv, "vm2"), Some(VmPower::ShutOff));
        let notes = messages(&s.sink.notes());
        assert!(notes.contains(&"vm1: stopped: the guest powered off".to_string()));
        assert!(
            notes.contains(&"vm2: forced off: the guest did not power off within 5 s".to_string())
        );
        // Asked to run again: "started", not "found shut off".
        s.c.set_desired(vec![vm("vm1", Some(PowerWanted::Running))]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(messages(&s.sink.notes()).last().unwrap(), "vm1: started");
    }

    #[test]
    fn a_deleted_vm_is_destroyed_undefined_and_its_files_removed() {
        let mut s = setup();
        s.c.set_desired(vec![vm("vm1", Some(PowerWanted::Running))]);
        assert!(s.c.settle(SETTLE));
        s.hv.snapshot_create(&name("vm1"), &SnapshotName::new("s1").unwrap())
            .unwrap();
        let mut deleting = vm("vm1", None);
        deleting.ops = vec![op(7, VmOpKind::Reboot)];
        s.c.set_desired(vec![deleting]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), None);
        assert!(!s.dir.path().join("vms/vm1").exists());
        assert!(
            s.sink.last().domains.is_empty(),
            "the report no longer lists it"
        );
        let r = s.sink.results();
        assert_eq!(r.len(), 1);
        assert!(!r[0].ok && r[0].message == "vm1 is being deleted");
    }

    #[test]
    fn each_operation_runs_once_and_its_result_is_sent_until_accepted() {
        let mut s = setup();
        let snap = SnapshotName::new("before").unwrap();
        let mut v = vm("vm1", Some(PowerWanted::Running));
        v.ops = vec![
            op(
                1,
                VmOpKind::SnapshotCreate {
                    snapshot: snap.clone(),
                },
            ),
            op(2, VmOpKind::Reboot),
            op(
                3,
                VmOpKind::SnapshotDelete {
                    snapshot: SnapshotName::new("nope").unwrap(),
                },
            ),
        ];
        s.sink.refuse.store(true, Ordering::SeqCst);
        s.c.set_desired(vec![v.clone()]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(s.sink.count(), 0);
        // The appliance is back; it still lists the ops (the results are not applied yet).
        s.sink.refuse.store(false, Ordering::SeqCst);
        s.c.set_desired(vec![v.clone()]);
        assert!(s.c.settle(SETTLE));
        s.c.set_desired(vec![v.clone()]);
        assert!(s.c.settle(SETTLE));
        let results = s.sink.results();
        let got: Vec<(u64, bool, &str)> = results
            .iter()
            .map(|r| (r.id, r.ok, r.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, true, "snapshot before taken"),
                (2, true, "reboot requested"),
                (
                    3,
                    false,
                    "delete snapshot nope: snapshot nope of VM vm1 not found"
                ),
            ]
        );
        assert_eq!(
            s.hv.snapshot_list(&name("vm1")).unwrap(),
            std::slice::from_ref(&snap)
        );
        assert_eq!(s.sink.last().domains[0].snapshots, [snap]);
    }

    #[test]
    fn live_migration_moves_the_vm_and_the_source_does_not_make_it_again() {
        let cluster = SimCluster::new();
        let b = cluster.host("sim://b");
        let mut s = setup_with(cluster.host("sim://a"), "http://127.0.0.1:9", false);
        let mut v = vm("vm1", Some(PowerWanted::Running));
        s.c.set_desired(vec![v.clone()]);
        assert!(s.c.settle(SETTLE));
        v.ops = vec![op(
            9,
            VmOpKind::Migrate {
                to: "52:54:00:00:00:0b".parse().unwrap(),
                uri: "sim://b".into(),
            },
        )];
        s.c.set_desired(vec![v.clone()]);
        assert!(s.c.settle(SETTLE));
        let r = s.sink.results();
        assert!(r[0].ok, "{r:?}");
        assert_eq!(r[0].message, "migrated to 52:54:00:00:00:0b (sim://b)");
        // Still listed here until the appliance moves it: not defined again.
        s.c.set_desired(vec![v]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), None);
        assert_eq!(power(&b, "vm1"), Some(VmPower::Running));
        assert!(s.sink.last().domains.is_empty());
    }

    #[test]
    fn images_are_downloaded_once_and_a_sha256_mismatch_is_refused() {
        let good = b"qcow2 base bytes".to_vec();
        let server = image_server(vec![
            ("base.qcow2", good.clone()),
            ("kernel", b"not what was pinned".to_vec()),
        ]);
        let mut s = setup_with(SimHypervisor::new("sim://a"), &server.url, true);
        let with_image = |n: &str| {
            let mut v = vm(n, Some(PowerWanted::Running));
            v.disks = vec![VmDisk::Image {
                image: "base.qcow2".into(),
                sha256: sha(&good),
            }];
            v
        };
        let mut bad = vm("bad", Some(PowerWanted::Running));
        bad.boot = Some(VmBoot {
            kernel: ImageRef {
                image: "kernel".into(),
                sha256: sha(b"the pinned kernel"),
            },
            initrd: None,
            cmdline: String::new(),
        });
        s.c.set_desired(vec![with_image("vm1")]);
        assert!(s.c.settle(SETTLE));
        s.c.set_desired(vec![with_image("vm1"), with_image("vm2"), bad.clone()]);
        assert!(s.c.settle(SETTLE));
        let cached = s.dir.path().join("images").join(sha(&good));
        assert_eq!(std::fs::read(&cached).unwrap(), good);
        assert_eq!(power(&s.hv, "vm2"), Some(VmPower::Running));
        assert_eq!(power(&s.hv, "bad"), None);
        // Tried again (a new set retries at once), the same failure is not noted again.
        s.c.set_desired(vec![with_image("vm1"), with_image("vm2"), bad]);
        assert!(s.c.settle(SETTLE));
        // vm1's download, then two for `bad`; vm2 used the cache.
        assert_eq!(server.requests.load(Ordering::SeqCst), 3);
        let failed: Vec<VmNote> = s.sink.notes().into_iter().filter(|n| n.failed).collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].vm, name("bad"));
        assert_eq!(
            failed[0].message,
            format!(
                "image kernel: expected sha256 {}, got {}; the download was not kept",
                sha(b"the pinned kernel"),
                sha(b"not what was pinned")
            )
        );
        let left: Vec<String> = std::fs::read_dir(s.dir.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [sha(&good)], "no partial or mismatched file kept");
    }

    #[test]
    fn a_self_fence_hard_stops_managed_domains_and_starts_none_until_resumed() {
        let mut s = setup();
        s.hv.define(&VmSpec::new(name("other"), VmKind::Kvm, 1, 128))
            .unwrap();
        s.hv.start(&name("other")).unwrap();
        s.c.set_desired(vec![
            vm("vm1", Some(PowerWanted::Running)),
            vm("vm2", Some(PowerWanted::Stopped)),
        ]);
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::Running));
        // Through the channel, as the probe thread does.
        s.c.self_fencer().fence("cut off for 60 s".into());
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::ShutOff));
        assert_eq!(power(&s.hv, "vm2"), Some(VmPower::ShutOff));
        assert_eq!(
            power(&s.hv, "other"),
            Some(VmPower::Running),
            "not COSM's: untouched"
        );
        let notes = messages(&s.sink.notes());
        assert_eq!(
            notes.last().unwrap(),
            "vm1: hard-stopped (it was running): this host fenced itself; cut off for 60 s"
        );
        // Held: the same desired state again, an operation and more passes start nothing.
        let mut again = vm("vm1", Some(PowerWanted::Running));
        again.ops = vec![op(5, VmOpKind::Reboot)];
        s.c.set_desired(vec![again.clone(), vm("vm2", Some(PowerWanted::Running))]);
        for _ in 0..5 {
            assert!(s.c.settle(SETTLE));
        }
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::ShutOff));
        assert_eq!(power(&s.hv, "vm2"), Some(VmPower::ShutOff));
        assert!(s.sink.results().is_empty(), "the operation stays queued");
        // A VM created while fenced (by something else) is stopped too.
        s.hv.start(&name("vm1")).unwrap();
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::ShutOff));
        // The appliance answers again and still wants them here.
        s.c.set_desired(vec![again, vm("vm2", Some(PowerWanted::Running))]);
        s.c.resume();
        assert!(s.c.settle(SETTLE));
        assert_eq!(power(&s.hv, "vm1"), Some(VmPower::Running));
        assert_eq!(power(&s.hv, "vm2"), Some(VmPower::Running));
        assert_eq!(s.sink.results().len(), 1, "the queued operation ran");
    }

    #[test]
    fn a_stale_definition_of_a_vm_that_moved_away_is_never_started() {
        // Host A ran vm1, was fenced (powered off) and comes back; the appliance restarted
        // vm1 on host B meanwhile, so A's desired state no longer lists it.
        let hv = SimHypervisor::new("sim://a");
        let mut s = setup_with(hv.clone(), "http://127.0.0.1:9", false);
        s.c.set_desired(vec![vm("vm1", Some(PowerWanted::Running))]);
        assert!(s.c.settle(SETTLE));
        hv.kill(&name("vm1"), VmPower::ShutOff).unwrap();
        drop(s);
        // The agent starts afresh after the reboot: before any desired state, and with
        // one that lists only another VM, it leaves the old definition alone.
        let mut s = setup_with(hv.clone(), "http://127.0.0.1:9", false);
        for _ in 0..3 {
            assert!(s.c.settle(SETTLE));
        }
        assert_eq!(power(&hv, "vm1"), Some(VmPower::ShutOff));
        s.c.set_desired(vec![vm("vm2", Some(PowerWanted::Running))]);
        for _ in 0..3 {
            assert!(s.c.settle(SETTLE));
        }
        assert_eq!(power(&hv, "vm1"), Some(VmPower::ShutOff));
        assert_eq!(power(&hv, "vm2"), Some(VmPower::Running));
        let r = s.sink.last();
        let stale = r.domains.iter().find(|d| d.name == "vm1").unwrap();
        assert!(!stale.managed && stale.power == DomainPower::ShutOff);
        assert!(
            !messages(&s.sink.notes())
                .iter()
                .any(|n| n.starts_with("vm1")),
            "nothing was done to vm1"
        );
        // The same on an agent that did not restart: dropped from the set while off, it
        // stays off (and stays defined: its disk on shared storage is the new host's now).
        s.c.set_desired(vec![vm("vm2", Some(PowerWanted::Running))]);
        hv.kill(&name("vm2"), VmPower::ShutOff).unwrap();
        s.c.set_desired(Vec::new());
        for _ in 0..3 {
            assert!(s.c.settle(SETTLE));
        }
        assert_eq!(power(&hv, "vm2"), Some(VmPower::ShutOff));
    }

    /// Evacuation: host A was fenced, and the appliance places its VM on host B. Every host
    /// shares the VM directory, so B finds the VM's disks already there and must define the
    /// domain on them as they are: a new overlay would lose the guest's data. Real libvirt
    /// (its in-process test driver) and real qemu-img, as the agent runs them.
    #[cfg(feature = "libvirt")]
    #[test]
    fn an_evacuated_vm_is_defined_on_its_existing_disks() {
        use cosm_hypervisor::LibvirtHypervisor;
        let shared = tempfile::tempdir().unwrap();
        // The base image, cached in the shared directory as A left it.
        let base = shared.path().join("base.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("1M")
            .status()
            .expect("qemu-img (Debian package qemu-utils)");
        assert!(made.success());
        let base_bytes = std::fs::read(&base).unwrap();
        std::fs::create_dir_all(shared.path().join("images")).unwrap();
        std::fs::rename(&base, shared.path().join("images").join(sha(&base_bytes))).unwrap();
        let mut desired = vm("evac-vm1", Some(PowerWanted::Running));
        desired.disks = vec![
            VmDisk::Image {
                image: "base.qcow2".into(),
                sha256: sha(&base_bytes),
            },
            VmDisk::Blank {
                size_bytes: 1 << 20,
            },
        ];
        let controller = |hv: Arc<dyn Hypervisor>, sink: Keep| {
            let config = VmConfig {
                state_dir: shared.path().to_path_buf(),
                // Nothing listens: a download would fail the test.
                appliance: "http://127.0.0.1:9".into(),
                credential: Arc::new(|| Some("cred-1".to_string())),
                interval: Duration::from_millis(10),
                migration_uri: None,
                files: true,
                probe: None,
                vtep: None,
            };
            VmController::new(hv, config, Box::new(sink))
        };
        let a = Arc::new(LibvirtHypervisor::connect("test:///default").unwrap());
        let mut on_a = controller(a.clone(), Keep::default());
        on_a.set_desired(vec![desired.clone()]);
        assert!(on_a.settle(SETTLE));
        assert_eq!(a.state(&name("evac-vm1")).unwrap(), VmPower::Running);
        let vm_dir = shared.path().join("vms/evac-vm1");
        let disks = [vm_dir.join("disk0.qcow2"), vm_dir.join("disk1.qcow2")];
        // The guest wrote to its disks (bytes past the qcow2 data do for this check).
        for d in &disks {
            let mut f = std::fs::OpenOptions::new().append(true).open(d).unwrap();
            f.write_all(b"guest data written on host A").unwrap();
        }
        let before: Vec<Vec<u8>> = disks.iter().map(|d| std::fs::read(d).unwrap()).collect();
        // A is fenced: its domain is gone from B's point of view.
        drop(on_a);
        a.destroy(&name("evac-vm1")).unwrap();
        a.undefine(&name("evac-vm1")).unwrap();
        // B: another agent, the same shared directory.
        let b = Arc::new(LibvirtHypervisor::connect("test:///default").unwrap());
        let sink = Keep::default();
        let mut on_b = controller(b.clone(), sink.clone());
        on_b.set_desired(vec![desired]);
        assert!(on_b.settle(SETTLE));
        assert_eq!(b.state(&name("evac-vm1")).unwrap(), VmPower::Running);
        assert_eq!(
            messages(&sink.notes()),
            ["evac-vm1: defined on this host and started"]
        );
        let after: Vec<Vec<u8>> = disks.iter().map(|d| std::fs::read(d).unwrap()).collect();
        assert!(before == after, "the disks were changed on host B");
        b.destroy(&name("evac-vm1")).unwrap();
        b.undefine(&name("evac-vm1")).unwrap();
    }

    type NetOutcome = Result<Vec<String>, String>;

    /// A reconciler that does what it is told: each call is logged with whether `vm1` was
    /// defined at the time, and answers the scripted outcome (the last one repeats).
    #[derive(Clone)]
    struct FakeNet {
        hv: SimHypervisor,
        calls: Arc<Mutex<Vec<bool>>>,
        outcomes: Arc<Mutex<Vec<NetOutcome>>>,
    }

    impl NetReconciler for FakeNet {
        fn reconcile(&mut self, desired: &HostNetworks) -> Result<Vec<String>, String> {
            assert_eq!(desired.networks[0].vni, 7);
            self.calls
                .lock()
                .unwrap()
                .push(power(&self.hv, "vm1").is_some());
            let mut o = self.outcomes.lock().unwrap();
            if o.len() > 1 {
                o.remove(0)
            } else {
                o[0].clone()
            }
        }
    }

    fn fake_net(s: &Setup, outcomes: Vec<NetOutcome>) -> FakeNet {
        FakeNet {
            hv: s.hv.clone(),
            calls: Arc::default(),
            outcomes: Arc::new(Mutex::new(outcomes)),
        }
    }

    fn tenant_nic(mac: &str) -> VmNic {
        VmNic {
            bridge: cosm_wire::BridgeName::new("cbr7").unwrap(),
            mac: mac.parse().unwrap(),
            network: Some("t".parse().unwrap()),
            ip: Some("10.20.0.2".parse().unwrap()),
            mtu: Some(1450),
        }
    }

    fn networks() -> HostNetworks {
        HostNetworks {
            networks: vec![cosm_wire::HostNetwork {
                name: "t".parse().unwrap(),
                vni: 7,
                cidr: "10.20.0.0/24".parse().unwrap(),
                mtu: 1450,
                peers: vec!["192.0.2.12".parse().unwrap()],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_tenant_nic_gets_its_port_device_and_mtu_and_a_bridge_nic_neither() {
        let t = nic_spec(&tenant_nic("52:54:00:ab:cd:ef"));
        assert_eq!(t.bridge.as_str(), "cbr7");
        assert_eq!(t.device.as_deref(), Some("cp525400abcdef"));
        assert_eq!(t.mtu, Some(1450));
        let plain = nic_spec(&VmNic::on_bridge(
            cosm_wire::BridgeName::new("br0").unwrap(),
            "52:54:00:00:00:01".parse().unwrap(),
        ));
        assert_eq!((plain.device, plain.mtu), (None, None));
    }

    #[test]
    fn networks_are_reconciled_before_the_vms_and_at_every_pass_and_reported_once() {
        let s = setup();
        let net = fake_net(
            &s,
            vec![
                Ok(vec!["made bridge cbr7".into(), "added FDB entry".into()]),
                Ok(vec![]),
            ],
        );
        let calls = net.calls.clone();
        let Setup { c, sink, hv, dir } = s;
        let mut c = c.with_network(Box::new(net));
        c.config.vtep = Some("192.0.2.11".parse().unwrap());

        // No networks desired: the host's networking is left alone.
        assert!(c.settle(SETTLE));
        assert!(calls.lock().unwrap().is_empty());
        assert_eq!(sink.last().network, None);
        assert_eq!(
            sink.last().capacity.vtep,
            Some("192.0.2.11".parse().unwrap())
        );

        let mut v = vm("vm1", Some(PowerWanted::Running));
        v.nics = vec![tenant_nic("52:54:00:ab:cd:ef")];
        c.set_desired(vec![v]);
        c.set_networks(Some(networks()));
        assert!(c.settle(SETTLE));
        assert_eq!(power(&hv, "vm1"), Some(VmPower::Running));
        let seen = calls.lock().unwrap().clone();
        assert!(!seen[0], "the first reconcile came before vm1 was made");
        let reports = sink.reports.lock().unwrap().clone();
        let with_net: Vec<_> = reports
            .iter()
            .filter_map(|r| r.network.clone())
            .filter(|n| !n.changes.is_empty())
            .collect();
        assert_eq!(
            with_net,
            [cosm_wire::NetReport {
                changes: vec!["made bridge cbr7".into(), "added FDB entry".into()],
                error: None,
                ready: vec![7],
            }],
            "the changes are reported once"
        );

        // Nothing changed, still reconciled at each pass (drift repair), nothing reported.
        let before = calls.lock().unwrap().len();
        c.pass();
        c.pass();
        assert_eq!(calls.lock().unwrap().len(), before + 2);
        assert_eq!(
            sink.last().network,
            Some(cosm_wire::NetReport {
                ready: vec![7],
                ..Default::default()
            }),
            "only the networks up"
        );

        // Networks no longer given: left alone again.
        c.set_networks(None);
        c.pass();
        assert_eq!(calls.lock().unwrap().len(), before + 2);
        drop(dir);
    }

    #[test]
    fn a_network_error_is_reported_until_accepted_and_does_not_stop_the_vms() {
        let s = setup();
        let net = fake_net(
            &s,
            vec![Err("cannot add cvx7: Operation not permitted".into())],
        );
        let calls = net.calls.clone();
        let Setup { c, sink, hv, dir } = s;
        let mut c = c.with_network(Box::new(net));
        sink.refuse.store(true, Ordering::SeqCst);
        c.set_desired(vec![vm("vm1", Some(PowerWanted::Running))]);
        c.set_networks(Some(networks()));
        assert!(c.settle(SETTLE));
        assert_eq!(power(&hv, "vm1"), Some(VmPower::Running), "the VMs went on");
        assert!(calls.lock().unwrap().len() >= 2);
        assert_eq!(sink.count(), 0);

        sink.refuse.store(false, Ordering::SeqCst);
        c.pass();
        let net = sink.last().network.expect("the error is reported");
        assert_eq!(
            net.error.as_deref(),
            Some("cannot add cvx7: Operation not permitted")
        );
        // Accepted: the same error is not reported again at every pass.
        let sent = sink.count();
        c.pass();
        c.pass();
        assert_eq!(sink.count(), sent);
        drop(dir);
    }

    #[test]
    fn without_a_vtep_a_host_asked_for_networks_says_to_set_one() {
        let mut s = setup();
        s.c.set_networks(Some(networks()));
        assert!(s.c.settle(SETTLE));
        let e = s.sink.last().network.unwrap().error.unwrap();
        assert!(e.contains("--vtep-ip"), "{e}");
        assert_eq!(s.sink.last().capacity.vtep, None);
    }

    #[test]
    fn the_handle_runs_passes_on_its_own_thread() {
        let s = setup();
        let sink = s.sink.clone();
        let hv = s.hv.clone();
        let handle = VmControllerHandle::start(s.c).unwrap();
        handle.set_desired(vec![vm("vm1", Some(PowerWanted::Running))], None);
        let deadline = Instant::now() + SETTLE;
        while power(&hv, "vm1") != Some(VmPower::Running)
            || !sink.notes().iter().any(|n| n.vm == name("vm1"))
        {
            assert!(
                Instant::now() < deadline,
                "the controller never started vm1"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(handle);
    }
}
