//! `cosm-agent`: the COSM node agent.
//!
//! `run` enrols with the appliance, heartbeats and converges to its desired state (its
//! controllers carry out the queued actions on their own threads; with `--hypervisor` or
//! `--simulate-vms`, the VM controller makes the host's VMs match);
//! `install` writes an image onto this machine's disk and configures it (the ramdisk, when
//! booted with `cosm.install=`); `inventory` prints what the agent reports about this
//! machine's hardware.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// The COSM node agent: runs on every machine COSM manages, first inside the discovery
/// ramdisk, later as a service on the installed system.
///
/// It enrols with the appliance, reports the machine's hardware inventory, sends
/// heartbeats, and converges the machine to the desired state the appliance hands down.
#[derive(Debug, Parser)]
#[command(name = "cosm-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once at start: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enrol with the appliance and run: heartbeats, desired state, actions. Settings come
    /// from flags/environment, then --config, then the kernel command line
    /// (cosm.appliance=URL cosm.token=TOKEN cosm.mac=MAC).
    Run {
        /// Appliance URL, e.g. http://192.0.2.1:8080.
        #[arg(long, env = "COSM_APPLIANCE")]
        appliance: Option<String>,
        /// Enrolment token (scope `enroll`); not needed once a credential is stored.
        #[arg(long, env = "COSM_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The MAC to enrol as (default: first NIC with link).
        #[arg(long)]
        mac: Option<cosm_wire::MacAddr>,
        /// Directory for the node credential (mode 0600) and, on hypervisor hosts, the VM
        /// controller's image cache and VM files. Default /var/lib/cosm-agent.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// A TOML config file with keys appliance, token, mac, state_dir, hypervisor,
        /// migration_uri, vtep_ip, vtep_dev.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Kernel command line to read cosm.* settings from.
        #[arg(long, default_value = "/proc/cmdline")]
        cmdline: PathBuf,
        /// Filesystem root to read the inventory from.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Carry out no action: report each one (reboot, power-off, re-register) done
        /// without doing it.
        #[arg(long)]
        dry_run_actions: bool,
        /// For testing: each dry-run action takes N seconds, to exercise long actions.
        #[arg(
            long,
            value_name = "N",
            default_value_t = 0,
            requires = "dry_run_actions"
        )]
        dry_run_action_secs: u64,
        /// Enrol once, store the node credential in the state directory, and exit (what
        /// the kickstart %post runs, so the installed system boots already enrolled).
        #[arg(long)]
        enroll_only: bool,
        /// Make this machine a hypervisor host: run the VM controller against the libvirt
        /// at this URI (e.g. qemu:///system). It defines, starts, stops and deletes the VMs
        /// the appliance places here, keeps their files under the state directory
        /// (images/, vms/<name>/), and reports every domain the host has; domains COSM did
        /// not ask for are reported and never touched. Without it (or --simulate-vms)
        /// there is no VM controller. Also `hypervisor` in the config file or
        /// cosm.hypervisor= on the kernel command line.
        #[arg(long, env = "COSM_HYPERVISOR", value_name = "URI")]
        hypervisor: Option<String>,
        /// Run the VM controller on a simulated hypervisor instead of libvirt: VMs are
        /// defined and "run" in memory, no QEMU, no files. For scale tests and trying the
        /// appliance out; the host reports --sim-host-vcpus and --sim-host-memory-mib.
        #[arg(long, conflicts_with = "hypervisor")]
        simulate_vms: bool,
        /// With --simulate-vms: the logical CPUs the simulated host reports.
        #[arg(
            long,
            value_name = "N",
            default_value_t = 64,
            requires = "simulate_vms"
        )]
        sim_host_vcpus: u32,
        /// With --simulate-vms: the memory (MiB) the simulated host reports.
        #[arg(
            long,
            value_name = "MIB",
            default_value_t = 262_144,
            requires = "simulate_vms"
        )]
        sim_host_memory_mib: u64,
        /// How often the VM controller compares the VMs with the desired state (it also
        /// does at once when a new desired state comes), e.g. 2s, 500ms.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
        vm_interval: std::time::Duration,
        /// The libvirt URI other hosts' libvirt reaches this host at for live migration
        /// (e.g. qemu+tcp://10.0.0.5/system), reported to the appliance, which hands it to
        /// the source host of a migration. Also `migration_uri` in the config file or
        /// cosm.migration_uri= on the kernel command line.
        #[arg(long, env = "COSM_MIGRATION_URI", value_name = "URI")]
        migration_uri: Option<String>,
        /// Where VM files live: images downloaded from the appliance in `images/<sha256>`,
        /// each VM's disks and console log in `vms/<name>/`. Default: the state
        /// directory. Live migration copies no disks, so hosts that migrate VMs to each
        /// other need this on storage they share, at the same path (QEMU must be able to
        /// enter it).
        #[arg(long, env = "COSM_VM_DIR", value_name = "DIR")]
        vm_dir: Option<PathBuf>,
        /// With the VM controller: where this host answers its peers' UDP probes (one of
        /// the appliance's three checks before it declares a host dead and restarts its
        /// VMs elsewhere), e.g. 0.0.0.0:7946; `off` answers none.
        #[arg(long, value_name = "IP:PORT|off", default_value = "0.0.0.0:7946", value_parser = parse_probe_listen)]
        probe_listen: ProbeListen,
        /// With the VM controller: the address peers should probe this host at, reported
        /// to the appliance. Default: the address this host reaches the appliance from,
        /// with the --probe-listen port.
        #[arg(long, value_name = "IP:PORT")]
        probe_advertise: Option<std::net::SocketAddr>,
        /// With the VM controller: after SECS without an answer from the appliance or
        /// from any peer, hard-stop every COSM-managed domain on this host (it is most
        /// likely cut off and its VMs about to be restarted elsewhere) and start none
        /// until the appliance answers again. 0 (the default) never does. Never acts while
        /// the appliance or any one peer answers, nor on a host with no peers.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        self_fence_after: u64,
        /// With the VM controller: this host's VXLAN tunnel endpoint, its IPv4 address on
        /// the data network (the network hosts reach each other on, e.g. 10.1.0.5).
        /// Reported to the appliance, which places VMs with a NIC on a tenant network only
        /// on hosts that have one, and names it to the other hosts of each network as
        /// their VXLAN peer. With it, the agent makes the tenant networks the appliance
        /// asks for (a bridge cbr<VNI> and a VXLAN device cvx<VNI> per network, the ports'
        /// rules) before it starts their VMs, and repairs them every --vm-interval. Also
        /// `vtep_ip` in the config file or cosm.vtep_ip= on the kernel command line.
        #[arg(long, env = "COSM_VTEP_IP", value_name = "IPV4")]
        vtep_ip: Option<std::net::Ipv4Addr>,
        /// With --vtep-ip: the data network's interface (the one holding the --vtep-ip
        /// address, e.g. eth1, bond0 or br0), which the VXLAN devices send through.
        /// Default: whichever interface the kernel routes each peer through. Also
        /// `vtep_dev` in the config file or cosm.vtep_dev= on the kernel command line.
        #[arg(long, env = "COSM_VTEP_DEV", value_name = "IFNAME")]
        vtep_dev: Option<String>,
    },
    /// Install this machine from an image: OVERWRITES A WHOLE DISK.
    ///
    /// Fetches the install plan at --plan (the appliance's URL with the machine's install
    /// token, what the agent ramdisk finds as cosm.install= on the kernel line), then:
    /// streams the plan's zstd-compressed disk image onto the disk, checking every 4 MiB
    /// chunk's sha256 against the plan before a byte of it reaches the disk; grows the
    /// GPT to the disk and the root partition to its end; mounts the root (ext4), writes
    /// the plan's files, enrols the installed system's agent with the install token and
    /// stores its credential there; and reports the outcome to the appliance, with
    /// progress along the way. The disk is the plan's, or the first non-removable disk
    /// large enough; everything on it is lost.
    ///
    /// Exit status: 0 installed and reported, 1 failed (reported when the appliance could
    /// be reached), 2 installed but the report could not be delivered. It never reboots;
    /// the ramdisk's /init does.
    Install {
        /// The install plan's URL, e.g.
        /// http://192.0.2.1:8080/boot/install/52:54:00:12:34:56?token=<install token>.
        #[arg(long, value_name = "URL")]
        plan: String,
        /// Write this whole disk (its device node, e.g. /dev/sdb) instead of the plan's
        /// or the first large enough.
        #[arg(long, value_name = "DEVICE")]
        disk: Option<PathBuf>,
    },
    /// Print this machine's hardware inventory (what the agent reports to the appliance).
    Inventory {
        /// Filesystem root to read `proc/` and `sys/` from (a copy of another machine's, or a
        /// test fixture).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Print the inventory as JSON (the wire format) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            appliance,
            token,
            mac,
            state_dir,
            config,
            cmdline,
            root,
            dry_run_actions,
            dry_run_action_secs,
            enroll_only,
            hypervisor,
            simulate_vms,
            sim_host_vcpus,
            sim_host_memory_mib,
            vm_interval,
            migration_uri,
            vm_dir,
            probe_listen,
            probe_advertise,
            self_fence_after,
            vtep_ip,
            vtep_dev,
        } => {
            let result = (|| -> anyhow::Result<()> {
                use cosm_agent::settings::{from_cmdline, from_file, merge, FileSettings};
                let flags = FileSettings {
                    appliance,
                    token,
                    mac,
                    state_dir,
                    hypervisor,
                    migration_uri,
                    vtep_ip,
                    vtep_dev,
                };
                let file = match &config {
                    Some(p) => from_file(p)?,
                    None => FileSettings::default(),
                };
                let kernel = from_cmdline(&std::fs::read_to_string(&cmdline).unwrap_or_default());
                let settings = merge(&[flags, file, kernel])?;
                use cosm_agent::run::{VmDriver, VmOptions};
                let driver = match (&settings.hypervisor, simulate_vms) {
                    (Some(uri), true) => anyhow::bail!(
                        "--simulate-vms and a hypervisor URI ({uri}, from the config file or the \
                         kernel command line) exclude each other"
                    ),
                    (Some(uri), false) => Some(VmDriver::Libvirt(uri.clone())),
                    (None, true) => Some(VmDriver::Simulated(cosm_hypervisor::HostInfo {
                        vcpus: sim_host_vcpus,
                        memory_mib: sim_host_memory_mib,
                    })),
                    (None, false) => None,
                };
                match (&driver, settings.vtep_ip, &settings.vtep_dev) {
                    (None, Some(ip), _) => anyhow::bail!(
                        "--vtep-ip {ip}: tenant networks are made by the VM controller; give \
                         --hypervisor (or --simulate-vms) too"
                    ),
                    (_, None, Some(dev)) => anyhow::bail!(
                        "--vtep-dev {dev} without --vtep-ip: give this host's address on the \
                         data network with --vtep-ip"
                    ),
                    _ => {}
                }
                let vms = driver.map(|driver| VmOptions {
                    driver,
                    interval: vm_interval,
                    migration_uri: settings.migration_uri.clone(),
                    dir: vm_dir.unwrap_or_else(|| settings.state_dir.clone()),
                    probe_listen: probe_listen.0,
                    probe_advertise,
                    self_fence_after: std::time::Duration::from_secs(self_fence_after),
                    vtep: settings.vtep_ip,
                    vtep_dev: settings.vtep_dev.clone(),
                });
                let actions = if dry_run_actions {
                    cosm_agent::run::ActionMode::Simulated {
                        delay: std::time::Duration::from_secs(dry_run_action_secs),
                    }
                } else {
                    cosm_agent::run::ActionMode::Execute
                };
                cosm_agent::run::run(
                    settings,
                    cosm_agent::run::RunOptions {
                        root,
                        actions,
                        enroll_only,
                        vms,
                    },
                )
            })();
            if let Err(e) = result {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        Cmd::Install { plan, disk } => {
            let mut opts = cosm_agent::install::Options::new(plan);
            opts.disk = disk;
            let outcome = cosm_agent::install::run(&opts);
            std::process::exit(outcome.exit_code());
        }
        Cmd::Inventory { root, json } => {
            if let Err(e) = print_inventory(&root, json) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
    }
}

/// `--probe-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct ProbeListen(Option<std::net::SocketAddr>);

fn parse_probe_listen(s: &str) -> Result<ProbeListen, String> {
    if s == "off" {
        return Ok(ProbeListen(None));
    }
    s.parse()
        .map(|a| ProbeListen(Some(a)))
        .map_err(|e| format!("{e}: expected IP:PORT (e.g. 0.0.0.0:7946) or off"))
}

/// Runs `cosm-agent inventory`.
fn print_inventory(root: &Path, json: bool) -> anyhow::Result<()> {
    let inventory = cosm_agent::inventory::read_inventory(root)?;
    if json {
        let text =
            serde_json::to_string_pretty(&inventory).context("cannot serialise the inventory")?;
        println!("{text}");
    } else {
        print!("{}", cosm_agent::inventory::summary(&inventory));
    }
    Ok(())
}
