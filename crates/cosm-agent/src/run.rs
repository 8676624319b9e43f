//! The heartbeat loop: enrol, heartbeat, and when the desired state's generation moves,
//! fetch it and hand its actions to the controllers ([`crate::controller`]); report their
//! outcomes as they finish. The agent pulls; it never listens. When the appliance is away
//! it retries with backoff and never exits because of it.
//!
//! The loop carries out no action itself and never waits for a controller: it beats every
//! interval however long an action takes, because a machine whose heartbeats stop is
//! marked `lost`. The VMs of each desired state go to the VM controller ([`crate::vms`]),
//! which reports the host's domains itself. On hypervisor hosts each heartbeat also carries
//! what the probe thread ([`crate::peers`]) saw of the peers the previous reply named; the
//! one exception to "the agent never listens" is that thread's UDP probe responder.

use crate::controller::{controllers, Dispatcher, Finished};
use crate::enrolment::{credential_path, stored_credential, Enroller};
use crate::inventory::read_inventory;
use crate::peers::{PeersConfig, PeersHandle};
use crate::settings::Settings;
use crate::vms::{HttpReportSink, VmConfig, VmController, VmControllerHandle};
use anyhow::{bail, Context};
use cosm_wire::{DesiredState, Heartbeat, HeartbeatReply, Inventory, MacAddr, Observed, RoleName};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::controller::ActionMode;

/// The loop's options beyond [`Settings`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Filesystem root the inventory is read from.
    pub root: PathBuf,
    pub actions: ActionMode,
    /// Enrol once (storing the credential) and return: for installers, e.g. the kickstart
    /// `%post`, which enrols the installed system before its first boot.
    pub enroll_only: bool,
    /// The VM controller, when this machine is a hypervisor host (or simulates one).
    pub vms: Option<VmOptions>,
}

/// Which hypervisor the VM controller drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmDriver {
    /// libvirt at this URI (needs the `libvirt` feature).
    Libvirt(String),
    /// An in-memory host of this size: VMs are defined and "run" without QEMU.
    Simulated(cosm_hypervisor::HostInfo),
}

/// The VM controller's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    pub driver: VmDriver,
    /// Time between reconcile passes.
    pub interval: Duration,
    /// Reported as this host's libvirt URI for incoming live migrations.
    pub migration_uri: Option<String>,
    /// Where VM files live (`--vm-dir`; the state directory unless given).
    pub dir: PathBuf,
    /// Where the probe responder listens (`--probe-listen`); `None` answers no probe.
    pub probe_listen: Option<SocketAddr>,
    /// The probe address reported to the appliance (`--probe-advertise`); by default the
    /// address this host reaches the appliance from, with the responder's port.
    pub probe_advertise: Option<SocketAddr>,
    /// `--self-fence-after`: hard-stop the managed VMs after hearing neither the appliance
    /// nor any peer for this long; zero is off.
    pub self_fence_after: Duration,
    /// `--vtep-ip`: this host's VXLAN endpoint; without it the host makes no tenant
    /// network (and says so when asked for one).
    pub vtep: Option<std::net::Ipv4Addr>,
    /// `--vtep-dev`: the data network's interface for the VXLAN devices.
    pub vtep_dev: Option<String>,
}

/// The probe address to report: `advertise` if given; else, when the responder answers,
/// its own address if bound to one, or else the local address the kernel picks to reach
/// the appliance, with the responder's port. `None` when nothing answers probes or the
/// address cannot be found (the appliance then has no peer check for this host).
pub fn probe_address(
    local: SocketAddr,
    respond: bool,
    advertise: Option<SocketAddr>,
    appliance: &str,
) -> Option<SocketAddr> {
    if let Some(a) = advertise {
        return Some(a);
    }
    if !respond {
        return None;
    }
    if !local.ip().is_unspecified() {
        return Some(local);
    }
    let url = reqwest::Url::parse(appliance).ok()?;
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_or_known_default()?;
    let target = (host, port)
        .to_socket_addrs()
        .ok()?
        .find(|a| a.is_ipv4() == local.is_ipv4())?;
    let any: IpAddr = if local.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    // A connected UDP socket sends nothing; it only makes the kernel choose the route.
    let probe = UdpSocket::bind((any, 0)).ok()?;
    probe.connect(target).ok()?;
    Some(SocketAddr::new(probe.local_addr().ok()?.ip(), local.port()))
}

/// Connects to the hypervisor `driver` names.
pub fn hypervisor(
    driver: &VmDriver,
) -> anyhow::Result<std::sync::Arc<dyn cosm_hypervisor::Hypervisor>> {
    match driver {
        VmDriver::Simulated(size) => Ok(std::sync::Arc::new(
            cosm_hypervisor::SimHypervisor::new("sim:///local").with_size(*size),
        )),
        #[cfg(feature = "libvirt")]
        VmDriver::Libvirt(uri) => Ok(std::sync::Arc::new(
            cosm_hypervisor::LibvirtHypervisor::connect(uri)
                .with_context(|| format!("--hypervisor {uri}"))?,
        )),
        #[cfg(not(feature = "libvirt"))]
        VmDriver::Libvirt(uri) => bail!(
            "--hypervisor {uri}: this cosm-agent was built without libvirt (the ramdisk's \
             build, --no-default-features); use an agent built with the `libvirt` feature, \
             or --simulate-vms"
        ),
    }
}

/// The loop must enrol before its next heartbeat, unless the credential is no longer
/// `stale`: the enrolment controller enrolled meanwhile, and its credential is valid.
struct MustEnrol {
    stale: Option<String>,
}

/// Outcome of a heartbeat, as the loop needs it.
enum Beat {
    /// The desired generation.
    Ok(u64, Vec<cosm_wire::Peer>),
    /// This credential was refused (or the machine is gone): enrol again.
    Refused(String),
}

struct Agent {
    appliance: String,
    http: reqwest::blocking::Client,
    enroller: Enroller,
    dispatcher: Dispatcher,
    /// Generation and role of the last desired state fetched and handed to controllers.
    fetched_generation: u64,
    fetched_role: Option<RoleName>,
    /// A desired state was fetched and the appliance has not yet heard what the agent
    /// made of it (even with no action to report, the report says it was seen).
    report_due: bool,
    /// What heartbeats say the agent converged to: the last generation fetched, once all
    /// its actions are done and reported.
    observed_generation: u64,
    /// Kept between beats so CPU usage is measured over the interval; `None` where sysinfo
    /// cannot read this system (the heartbeat then carries zeros).
    system: Option<Option<sysinfo::System>>,
    /// The VM controller's thread, on hypervisor hosts.
    vms: Option<VmControllerHandle>,
    /// The peer probe thread, on hypervisor hosts.
    peers: Option<PeersHandle>,
}

/// The MAC to enrol as: the configured one, else the first NIC with link, else the first.
fn pick_mac(settings: &Settings, inventory: &Inventory) -> anyhow::Result<MacAddr> {
    if let Some(m) = settings.mac {
        return Ok(m);
    }
    inventory
        .nics
        .iter()
        .find(|n| n.link_up)
        .or_else(|| inventory.nics.first())
        .map(|n| n.mac)
        .context("no network interface found to enrol as; pass --mac or boot with cosm.mac=")
}

/// Runs until the process is stopped. Errors only for problems a retry cannot fix.
pub fn run(settings: Settings, opts: RunOptions) -> anyhow::Result<()> {
    let inventory = read_inventory(&opts.root)?;
    let mac = pick_mac(&settings, &inventory)?;
    let credential = stored_credential(&settings.state_dir);
    if credential.is_none() && settings.token.is_none() {
        bail!(
            "no enrolment token and no stored credential in {}: pass --token, set COSM_TOKEN, or boot with cosm.token=",
            settings.state_dir.display()
        );
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .context("cannot build the HTTP client")?;
    let enroller = Enroller::new(http.clone(), &settings, mac, opts.root.clone(), credential);
    if opts.enroll_only {
        if !enroller.has_token() {
            bail!("--enroll-only needs an enrolment token (--token, COSM_TOKEN or cosm.token=)");
        }
        enroller.enroll()?;
        let stored = credential_path(&settings.state_dir);
        if !stored.exists() {
            bail!(
                "enrolled, but the credential could not be stored in {}",
                stored.display()
            );
        }
        return Ok(());
    }
    let dispatcher = Dispatcher::start(controllers(opts.actions, enroller.clone()))
        .context("cannot start the controller threads")?;
    let (vms, peers) = match &opts.vms {
        None => (None, None),
        Some(vm) => {
            let hv = hypervisor(&vm.driver)?;
            let bind = vm
                .probe_listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            let socket = UdpSocket::bind(bind).with_context(|| {
                format!("cannot listen for peer probes on {bind} (--probe-listen)")
            })?;
            let local = socket.local_addr().context("the probe socket's address")?;
            let respond = vm.probe_listen.is_some();
            let probe = probe_address(local, respond, vm.probe_advertise, &settings.appliance);
            if respond && probe.is_none() {
                eprintln!(
                    "warning: cannot tell which address this host reaches the appliance \
                     from; peers cannot be told where to probe it (pass --probe-advertise)"
                );
            }
            let source = enroller.clone();
            let credential: crate::vms::CredentialSource =
                std::sync::Arc::new(move || source.credential());
            let config = VmConfig {
                state_dir: vm.dir.clone(),
                appliance: settings.appliance.clone(),
                credential: credential.clone(),
                interval: vm.interval,
                migration_uri: vm.migration_uri.clone(),
                files: matches!(vm.driver, VmDriver::Libvirt(_)),
                probe: probe.map(|a| a.to_string()),
                vtep: vm.vtep,
            };
            let net = crate::network::reconciler(
                vm.vtep,
                vm.vtep_dev.clone(),
                matches!(vm.driver, VmDriver::Simulated(_)),
            )?;
            let sink = HttpReportSink::new(&settings.appliance, credential);
            let controller = VmController::new(hv, config, Box::new(sink)).with_network(net);
            let fencer = controller.self_fencer();
            let handle = VmControllerHandle::start(controller)
                .context("cannot start the VM controller's thread")?;
            let peers = PeersHandle::start(
                socket,
                PeersConfig {
                    mac,
                    respond,
                    interval: enroller.heartbeat(),
                    self_fence_after: vm.self_fence_after,
                },
                Box::new(move |reason| fencer.fence(reason)),
            )
            .context("cannot start the peer probe thread")?;
            (Some(handle), Some(peers))
        }
    };
    let mut agent = Agent {
        appliance: settings.appliance,
        http,
        enroller,
        dispatcher,
        fetched_generation: 0,
        fetched_role: None,
        report_due: false,
        observed_generation: 0,
        system: None,
        vms,
        peers,
    };
    agent.main_loop();
    Ok(())
}

fn log_finished(finished: &[Finished]) {
    for f in finished {
        eprintln!("{f}");
    }
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/agent/{path}", self.appliance)
    }

    fn credential(&self) -> anyhow::Result<String> {
        self.enroller.credential().context("not enrolled")
    }

    fn utilisation(&mut self) -> Heartbeat {
        let observed_generation = self.observed_generation;
        let Some(sys) = self
            .system
            .get_or_insert_with(|| sysinfo::System::new().ok())
        else {
            return Heartbeat {
                observed_generation,
                ..Default::default()
            };
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let (disk_total, disk_used) = sysinfo::Disks::new_with_refreshed_list()
            .map(|d| {
                d.iter().fold((0u64, 0u64), |(t, u), disk| {
                    (
                        t + disk.total_space(),
                        u + disk.total_space().saturating_sub(disk.available_space()),
                    )
                })
            })
            .unwrap_or((0, 0));
        Heartbeat {
            cpu_percent: sys.global_cpu_usage(),
            memory_used_bytes: sys.used_memory(),
            memory_total_bytes: sys.total_memory(),
            disk_used_bytes: disk_used,
            disk_total_bytes: disk_total,
            uptime_secs: sysinfo::System::uptime().unwrap_or(0),
            observed_generation,
            peers: Vec::new(),
        }
    }

    fn heartbeat_once(&mut self) -> anyhow::Result<Beat> {
        let cred = self.credential()?;
        let mut body = self.utilisation();
        if let Some(p) = &self.peers {
            body.peers = p.seen();
        }
        let resp = self
            .http
            .post(self.url("heartbeat"))
            .bearer_auth(&cred)
            .json(&body)
            .send()?;
        // Whatever it says, the appliance is reachable: no reason to fence this host.
        if let Some(p) = &self.peers {
            p.heard_appliance();
        }
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED
            || resp.status() == reqwest::StatusCode::NOT_FOUND
        {
            return Ok(Beat::Refused(cred));
        }
        if !resp.status().is_success() {
            bail!("heartbeat answered {}", resp.status());
        }
        let reply = resp.json::<HeartbeatReply>()?;
        Ok(Beat::Ok(reply.desired_generation, reply.peers))
    }

    /// Fetches the desired state and hands its new actions to the controllers; returns at
    /// once, whatever the actions are.
    fn fetch_desired(&mut self) -> anyhow::Result<()> {
        let desired: DesiredState = self
            .http
            .get(self.url("desired"))
            .bearer_auth(self.credential()?)
            .send()?
            .error_for_status()?
            .json()?;
        self.dispatcher.dispatch(&desired.actions);
        if let Some(vms) = &self.vms {
            vms.set_desired(desired.vms, desired.networks);
        }
        self.fetched_generation = desired.generation;
        self.fetched_role = desired.role;
        self.report_due = true;
        Ok(())
    }

    /// Reports the outcomes that came in (each action once, when done), or that a fetched
    /// desired state was seen. Actions still running are left out: the appliance keeps
    /// them queued until their outcome comes.
    fn report(&mut self) -> anyhow::Result<()> {
        log_finished(self.dispatcher.collect());
        let results = self.dispatcher.results();
        if results.is_empty() && !self.report_due {
            return Ok(());
        }
        let report = Observed {
            generation: self.fetched_generation,
            role: self.fetched_role.clone(),
            results,
        };
        self.http
            .post(self.url("observed"))
            .bearer_auth(self.credential()?)
            .json(&report)
            .send()?
            .error_for_status()?;
        let ids: Vec<u64> = report.results.iter().map(|r| r.id).collect();
        self.dispatcher.reported(&ids);
        self.report_due = false;
        if self.dispatcher.is_idle() {
            self.observed_generation = self.fetched_generation;
        }
        Ok(())
    }

    /// One heartbeat and what follows from it.
    fn step(&mut self, must_enrol: &mut Option<MustEnrol>) -> anyhow::Result<()> {
        if let Some(m) = must_enrol {
            self.enroller.enroll_unless_replaced(m.stale.as_deref())?;
            *must_enrol = None;
        }
        match self.heartbeat_once()? {
            Beat::Refused(cred) => {
                eprintln!("the appliance refused this node's credential; enrolling again");
                *must_enrol = Some(MustEnrol { stale: Some(cred) });
                return Ok(());
            }
            Beat::Ok(generation, peers) => {
                let fenced = match &self.peers {
                    Some(p) => {
                        p.set_peers(&peers, self.enroller.heartbeat());
                        p.fenced()
                    }
                    None => false,
                };
                // `!=` rather than `>`: a machine deleted and enrolled again starts over.
                // After a self-fence the VMs start again only as a fresh desired state
                // says (the appliance may have restarted them elsewhere meanwhile).
                if generation != self.fetched_generation || fenced {
                    self.fetch_desired()?;
                }
                if fenced {
                    if let Some(vms) = &self.vms {
                        vms.resume();
                    }
                    if let Some(p) = &self.peers {
                        p.resumed();
                    }
                    eprintln!("the appliance answers again: the self-fence is lifted");
                }
            }
        }
        self.report()
    }

    /// Until the next heartbeat is due: report outcomes as controllers finish them.
    fn wait_for_outcomes(&mut self, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            if !self.dispatcher.wait(until - now) {
                continue;
            }
            if let Err(e) = self.report() {
                eprintln!("warning: {e:#}; the report is sent again with the next heartbeat");
            }
        }
    }

    fn main_loop(&mut self) {
        let mut backoff = Duration::from_secs(1);
        let max_backoff = Duration::from_secs(30);
        // With a token as well as a stored credential the agent enrols afresh at start, so
        // the appliance gets this boot's inventory.
        let mut must_enrol = if self.enroller.credential().is_some() && !self.enroller.has_token() {
            None
        } else {
            Some(MustEnrol {
                stale: self.enroller.credential(),
            })
        };
        loop {
            let started = Instant::now();
            let pause = match self.step(&mut must_enrol) {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    self.enroller.heartbeat().saturating_sub(started.elapsed())
                }
                Err(e) => {
                    eprintln!("warning: {e:#}; retrying in {} s", backoff.as_secs());
                    let pause = backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    pause
                }
            };
            self.wait_for_outcomes(Instant::now() + pause);
        }
    }
}
