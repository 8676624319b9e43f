//! `cosmctl vms …`: virtual machines on the VM hosts, and `cosmctl hosts`: the hosts
//! themselves with their capacity and what their VMs take.
//!
//! Every change (create, start, stop, reboot, migrate, snapshots, delete) is carried out by
//! the host's agent after the appliance answers; `--wait` follows the VM until it is done
//! (see [`crate::vm_wait`]).

use crate::output::{age, dash, human_bytes, kv_table, print, print_table, table, time, Ctx};
use crate::vm_spec::{parse_disk, parse_memory, parse_nic, KindArg, VmStateArg, NIC_HELP};
use crate::vm_wait::{wait, Goal};
use anyhow::Result;
use clap::{Args, Subcommand};
use cosm_wire::{
    BootRequest, CreateSnapshot, CreateVm, DiskRequest, HostView, MacAddr, MigrateVm, NicRequest,
    SnapshotName, StopVm, Timestamp, Vm, VmConsole, VmDisk, VmEvent, VmName, VmNic, VmSnapshot,
    VmState,
};
use std::time::{Duration, Instant};

pub(crate) const VMS_ABOUT: &str = "\
Virtual machines on the VM hosts (machines of role `host` whose agents run libvirt).

The appliance keeps what you ask for and places each VM on a host; that host's agent makes
libvirt match within seconds and reports back. So every change here is asynchronous: the
command returns as soon as the appliance has recorded it, and the VM's STATE says how far
its host got. Pass --wait to wait until it is done (every 500 ms, at most 300 s unless
--wait=SECS); a VM that becomes `failed` ends the wait with its reason and exit status 1.

States:
  pending    recorded, no host yet
  scheduled  placed on a host; its agent is making it
  running    its host reports it running
  stopped    its host reports it off (after `vms stop`, or created with --no-start)
  migrating  a live migration to another host is under way
  failed     its host could not make it (`vms show` says why); start it again or delete it
  deleting   its host is destroying it; the record goes when the host reports it gone

Exit status: 0 when done; 1 when the appliance refuses (a 409 `no_host` from `vms create`
means no host has room for the VM, and says why for each host: see `vms create --help`), when
the VM fails while --wait waits, or when the wait times out (the operation goes on); 2 on a
usage error.

Examples:
  cosmctl vms create web-01 --vcpus 2 --memory 2G --disk image=debian-12.qcow2 --nic br0 --wait
  cosmctl vms list --state running
  cosmctl vms migrate web-01 --wait
  cosmctl vms console web-01 --follow
  cosmctl hosts";

/// Subcommands of `cosmctl vms`.
#[derive(Debug, Subcommand)]
pub(crate) enum VmsCmd {
    /// List VMs (all pages), optionally only one host's or one state's.
    #[command(visible_alias = "ls")]
    List {
        /// Only VMs placed on this host (its MAC; see `cosmctl hosts`).
        #[arg(long, value_name = "MAC")]
        host: Option<MacAddr>,
        /// Only VMs in this state.
        #[arg(long, value_name = "STATE", value_enum)]
        state: Option<VmStateArg>,
    },
    /// Show one VM in detail, with the last entries of its timeline.
    Show {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// How many of its latest timeline entries to show.
        #[arg(long, value_name = "N", default_value_t = 10)]
        events: u32,
    },
    /// Create a VM: the appliance places it and its host's agent makes it.
    #[command(after_help = create_after())]
    Create(Box<CreateArgs>),
    /// Power a VM on; a `failed` VM is tried again.
    Start {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Power a VM off: an ACPI shutdown request, then forced off after --timeout.
    Stop {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// Seconds the guest gets to shut down before it is forced off [default: 60].
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(0..=3600))]
        timeout: Option<u32>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Reboot a running VM.
    Reboot {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Delete a VM: its host destroys and undefines it (its disks go too), then its record
    /// goes. A VM without a host is deleted at once.
    #[command(visible_alias = "rm")]
    Delete {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Live-migrate a running VM to another host (--to, or the best other host).
    ///
    /// It is `migrating` until its source host reports the outcome; then it runs on the new
    /// host, or stays where it was with the reason in its message. With --wait, prints the
    /// old and new host and how long it took, and exits 1 if it did not move.
    Migrate {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// The host to move to (its MAC; see `cosmctl hosts`).
        #[arg(long, value_name = "MAC")]
        to: Option<MacAddr>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Take, list, revert to and delete snapshots (disk and, if running, memory).
    #[command(subcommand, alias = "snapshots")]
    Snapshot(SnapshotCmd),
    /// Print the last lines of a VM's serial console, as its host last reported them.
    Console {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// How many of the last lines (1-200).
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=200))]
        lines: u32,
        /// Keep going: look every second and print new lines as they come; stop with Ctrl-C.
        #[arg(long, short)]
        follow: bool,
    },
    /// Show a VM's timeline, oldest first.
    Events {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// Show at most this many of the newest entries.
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
}

/// Seconds `--wait` waits when given without a value.
const DEFAULT_WAIT: &str = "300";

/// `--wait[=SECS]`.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct WaitArg {
    /// Wait until its host has done it, at most SECS seconds (300 without a value); a
    /// progress line goes to stderr.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = DEFAULT_WAIT,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub(crate) wait: Option<u64>,
}

/// The help after `vms create`'s options: disks, then NICs (see [`NIC_HELP`]), then the rest.
fn create_after() -> String {
    format!("{CREATE_DISKS}\n{NIC_HELP}\n{CREATE_AFTER}")
}

const CREATE_DISKS: &str = "\
Disks: --disk image=NAME is a copy-on-write overlay of a file of the image repository (see
`cosmctl images list`), pinned by its sha256 when the VM is created; --disk blank=SIZE is
an empty disk. Give --disk several times for several disks, the first is the boot disk.";

const CREATE_AFTER: &str = "\
Sizes: a whole number with M (MiB), G (GiB) or T (TiB): 512M, 2G; a --memory without a unit
is MiB.

A 409 `no_host` answer means the VM fits on no host, and says why for each host (not enough
free memory or vCPUs, its anti-affinity group is already there, or there is no host at all:
a host is a machine of role `host`, deployed or active, whose agent reports its hypervisor;
see `cosmctl hosts`). Nothing is recorded then.

Examples:
  cosmctl vms create web-01 --vcpus 2 --memory 2G --disk image=debian-12.qcow2 --nic br0 --wait
  cosmctl vms create db-1 --vcpus 4 --memory 8G --disk blank=100G --nic br0 --ha --anti-affinity db
  cosmctl vms create app-01 --vcpus 1 --memory 1G --disk blank=10G --nic network=tenant-a,group=ssh
  cosmctl vms create pv1 --kind xen-pv --vcpus 1 --memory 512M --kernel vmlinuz --cmdline console=hvc0";

/// Arguments of `cosmctl vms create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The VM's name (its libvirt domain name): letters, digits, '.', '_', '-'.
    pub(crate) name: VmName,
    /// Virtual CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) vcpus: u32,
    /// Memory, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub(crate) memory: u64,
    /// Hypervisor and guest type.
    #[arg(long, value_enum, value_name = "KIND", default_value = "kvm")]
    pub(crate) kind: KindArg,
    /// A disk: image=NAME (a copy of a repository image) or blank=SIZE; repeatable.
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk)]
    pub(crate) disks: Vec<DiskRequest>,
    /// A NIC: BRIDGE[,mac=MAC] on a host bridge, or
    /// network=NAME[,mac=MAC][,ip=IP][,group=GROUP]... on a tenant network; repeatable.
    #[arg(long = "nic", value_name = "SPEC", value_parser = parse_nic)]
    pub(crate) nics: Vec<NicRequest>,
    /// Boot this kernel (a repository image) directly instead of from disk.
    #[arg(long, value_name = "IMAGE")]
    pub(crate) kernel: Option<String>,
    /// The initrd for --kernel (a repository image).
    #[arg(long, value_name = "IMAGE", requires = "kernel")]
    pub(crate) initrd: Option<String>,
    /// The kernel command line for --kernel.
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    pub(crate) cmdline: Option<String>,
    /// Restart it on another host when its host dies.
    #[arg(long)]
    pub(crate) ha: bool,
    /// VMs of the same group are never placed on the same host.
    #[arg(long, value_name = "GROUP")]
    pub(crate) anti_affinity: Option<String>,
    /// Place it on this host (its MAC) instead of the one with the most free memory.
    #[arg(long, value_name = "MAC")]
    pub(crate) host: Option<MacAddr>,
    /// Only define it; do not power it on (--wait then waits for `stopped`).
    #[arg(long)]
    pub(crate) no_start: bool,
    #[command(flatten)]
    pub(crate) wait: WaitArg,
}

impl CreateArgs {
    /// The `POST /api/v1/vms` body.
    pub(crate) fn to_request(&self) -> CreateVm {
        CreateVm {
            name: self.name.clone(),
            kind: self.kind.0,
            vcpus: self.vcpus,
            memory_mib: self.memory,
            disks: self.disks.clone(),
            nics: self.nics.clone(),
            boot: self.kernel.as_ref().map(|k| BootRequest {
                kernel: k.clone(),
                initrd: self.initrd.clone(),
                cmdline: self.cmdline.clone().unwrap_or_default(),
            }),
            ha: self.ha,
            anti_affinity: self.anti_affinity.clone(),
            host: self.host,
            start: !self.no_start,
        }
    }
}

/// Subcommands of `cosmctl vms snapshot`.
#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Take a snapshot of a VM (its disk, and its memory if it runs).
    Create {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// The snapshot's name: letters, digits, '.', '_', '-'.
        snapshot: SnapshotName,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// List a VM's snapshots, as its host last reported them.
    #[command(visible_alias = "ls")]
    List { name: VmName },
    /// Return a VM to a snapshot (its disk, and its memory and power if taken running).
    Revert {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// The snapshot's name: letters, digits, '.', '_', '-'.
        snapshot: SnapshotName,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Delete a snapshot.
    #[command(visible_alias = "rm")]
    Delete {
        /// The VM's name (see `cosmctl vms list`).
        name: VmName,
        /// The snapshot's name: letters, digits, '.', '_', '-'.
        snapshot: SnapshotName,
        #[command(flatten)]
        wait: WaitArg,
    },
}

fn vm_path(name: &VmName) -> String {
    format!("/vms/{name}")
}

/// Runs a `cosmctl vms` subcommand.
pub(crate) fn run(ctx: &Ctx, cmd: VmsCmd) -> Result<()> {
    match cmd {
        VmsCmd::List { host, state } => {
            let mut query = Vec::new();
            if let Some(h) = host {
                query.push(("host", h.to_string()));
            }
            if let Some(s) = state {
                query.push(("state", s.0.to_string()));
            }
            let reply = ctx.api.get_all("/vms", &query)?;
            ctx.show(reply, |vms: Vec<Vm>| print_list(&vms))
        }
        VmsCmd::Show { name, events } => {
            let reply = ctx.api.get(&vm_path(&name), &[])?;
            if ctx.json {
                return ctx.show(reply, |_: serde_json::Value| Ok(()));
            }
            let vm: Vm = reply.parse()?;
            print_table(&kv_table(details(&vm, Timestamp::now())))?;
            if events > 0 {
                let evs = vm_events(ctx, &name, events)?;
                if !evs.is_empty() {
                    print("")?;
                    print_table(&events_table(&evs))?;
                }
            }
            Ok(())
        }
        VmsCmd::Create(args) => create(ctx, &args),
        VmsCmd::Start { name, wait } => {
            let reply = ctx
                .api
                .post(&format!("{}/start", vm_path(&name)), &serde_json::json!({}))?;
            after_op(ctx, reply, wait, Goal::State(VmState::Running), "start")
        }
        VmsCmd::Stop {
            name,
            timeout,
            wait,
        } => {
            let reply = ctx.api.post(
                &format!("{}/stop", vm_path(&name)),
                &StopVm {
                    timeout_secs: timeout,
                },
            )?;
            after_op(ctx, reply, wait, Goal::State(VmState::Stopped), "stop")
        }
        VmsCmd::Reboot { name, wait } => {
            let reply = ctx.api.post(
                &format!("{}/reboot", vm_path(&name)),
                &serde_json::json!({}),
            )?;
            after_queued_op(ctx, reply, wait, "reboot")
        }
        VmsCmd::Delete { name, wait } => {
            let reply = ctx.api.delete(&vm_path(&name))?;
            if reply.status == reqwest::StatusCode::NO_CONTENT {
                return ctx.done(reply, format!("deleted VM {name} (it had no host)"));
            }
            let vm: Vm = reply.parse()?;
            match wait.wait {
                None => ctx.done(
                    reply,
                    format!(
                        "VM {name} is {}: its host {} destroys it, then its record goes (--wait waits for that)",
                        vm.state,
                        dash(vm.host)
                    ),
                ),
                Some(secs) => {
                    let started = Instant::now();
                    wait_for(ctx, &vm.name, &Goal::Gone, secs)?;
                    report(
                        ctx,
                        None,
                        format!("deleted VM {name} in {}", took(started.elapsed())),
                    )
                }
            }
        }
        VmsCmd::Migrate { name, to, wait } => {
            let reply = ctx.api.post(
                &format!("{}/migrate", vm_path(&name)),
                &MigrateVm { host: to },
            )?;
            let vm: Vm = reply.parse()?;
            let from = vm.host;
            let to = vm.pending_ops.iter().rev().find_map(|o| match &o.kind {
                cosm_wire::VmOpKind::Migrate { to, .. } => Some(*to),
                _ => None,
            });
            let Some(secs) = wait.wait else {
                return ctx.show(reply, |_: Vm| {
                    print(&format!(
                        "VM {name} is migrating from {} to {}; --wait waits for it (`cosmctl vms show {name}` follows it)",
                        dash(from),
                        dash(to)
                    ))
                });
            };
            let started = Instant::now();
            let done = wait_for(ctx, &vm.name, &Goal::Migrated { from }, secs)?;
            report(
                ctx,
                done.as_ref(),
                format!(
                    "VM {name} live-migrated: {} → {} in {}",
                    dash(from),
                    dash(done.as_ref().and_then(|v| v.host)),
                    took(started.elapsed())
                ),
            )
        }
        VmsCmd::Snapshot(cmd) => snapshot(ctx, cmd),
        VmsCmd::Console {
            name,
            lines,
            follow,
        } => console(ctx, &name, lines, follow),
        VmsCmd::Events { name, limit } => {
            let reply = ctx.api.get(
                &format!("{}/events", vm_path(&name)),
                &[("limit", limit.to_string())],
            )?;
            ctx.show(reply, |evs: Vec<VmEvent>| {
                if evs.is_empty() {
                    eprintln!("no events for VM {name}");
                    return Ok(());
                }
                print_table(&events_table(&evs))
            })
        }
    }
}

fn create(ctx: &Ctx, args: &CreateArgs) -> Result<()> {
    let body = args.to_request();
    let reply = ctx.api.post("/vms", &body)?;
    let vm: Vm = reply.parse()?;
    let Some(secs) = args.wait.wait else {
        return ctx.show(reply, |vm: Vm| {
            print(&format!(
                "created VM {} on host {} ({}); its host's agent makes it now: follow it with `cosmctl vms show {}`, or pass --wait",
                vm.name,
                dash(vm.host),
                vm.state,
                vm.name
            ))
        });
    };
    let goal = if body.start {
        VmState::Running
    } else {
        VmState::Stopped
    };
    let started = Instant::now();
    let done = wait_for(ctx, &vm.name, &Goal::State(goal), secs)?;
    report(
        ctx,
        done.as_ref(),
        format!(
            "VM {} is {goal} on host {} ({})",
            vm.name,
            dash(done.as_ref().and_then(|v| v.host)),
            took(started.elapsed())
        ),
    )
}

/// After a power change: say what was asked, or wait for `goal`.
fn after_op(
    ctx: &Ctx,
    reply: crate::api::Reply,
    wait: WaitArg,
    goal: Goal,
    what: &str,
) -> Result<()> {
    let vm: Vm = reply.parse()?;
    let Some(secs) = wait.wait else {
        return ctx.show(reply, |vm: Vm| {
            print(&format!(
                "asked VM {} to {what} (it is {} now); its host's agent does it within seconds (--wait waits for it)",
                vm.name, vm.state
            ))
        });
    };
    let started = Instant::now();
    let done = wait_for(ctx, &vm.name, &goal, secs)?;
    let state = done
        .as_ref()
        .map_or("gone".to_string(), |v| v.state.to_string());
    report(
        ctx,
        done.as_ref(),
        format!("VM {} is {state} ({})", vm.name, took(started.elapsed())),
    )
}

/// After an operation queued for the host's agent (reboot, snapshots): say so, or wait
/// until the agent reports it.
fn after_queued_op(ctx: &Ctx, reply: crate::api::Reply, wait: WaitArg, what: &str) -> Result<()> {
    let vm: Vm = reply.parse()?;
    let id = vm.pending_ops.last().map(|o| o.id);
    let (Some(secs), Some(id)) = (wait.wait, id) else {
        return ctx.show(reply, |vm: Vm| {
            print(&format!(
                "queued the {what} of VM {} (operation {}); its host's agent does it within seconds (--wait waits for it)",
                vm.name,
                dash(id)
            ))
        });
    };
    let started = Instant::now();
    let goal = Goal::Op {
        id,
        what: what.to_string(),
    };
    let done = wait_for(ctx, &vm.name, &goal, secs)?;
    report(
        ctx,
        done.as_ref(),
        format!(
            "the {what} of VM {} is done ({})",
            vm.name,
            took(started.elapsed())
        ),
    )
}

fn wait_for(ctx: &Ctx, name: &VmName, goal: &Goal, secs: u64) -> Result<Option<Vm>> {
    wait(ctx, name.as_str(), goal, secs)
}

/// The end of a wait: the VM as JSON with `--json` (and the message on stderr), or the
/// message.
fn report(ctx: &Ctx, vm: Option<&Vm>, message: String) -> Result<()> {
    if ctx.json {
        if let Some(vm) = vm {
            print(&serde_json::to_string_pretty(vm)?)?;
        }
        eprintln!("{message}");
        Ok(())
    } else {
        print(&message)
    }
}

/// `4.2 s`.
fn took(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create {
            name,
            snapshot,
            wait,
        } => {
            let reply = ctx.api.post(
                &format!("{}/snapshots", vm_path(&name)),
                &CreateSnapshot {
                    name: snapshot.clone(),
                },
            )?;
            after_queued_op(ctx, reply, wait, &format!("snapshot {snapshot}"))
        }
        SnapshotCmd::List { name } => {
            let reply = ctx.api.get(&format!("{}/snapshots", vm_path(&name)), &[])?;
            ctx.show(reply, |snaps: Vec<VmSnapshot>| {
                if snaps.is_empty() {
                    eprintln!("VM {name} has no snapshots");
                    return Ok(());
                }
                let mut t = table(&["SNAPSHOT"]);
                for s in &snaps {
                    t.add_row(vec![s.name.to_string()]);
                }
                print_table(&t)
            })
        }
        SnapshotCmd::Revert {
            name,
            snapshot,
            wait,
        } => {
            let reply = ctx.api.post(
                &format!("{}/snapshots/{snapshot}/revert", vm_path(&name)),
                &serde_json::json!({}),
            )?;
            after_queued_op(ctx, reply, wait, &format!("revert to snapshot {snapshot}"))
        }
        SnapshotCmd::Delete {
            name,
            snapshot,
            wait,
        } => {
            let reply = ctx
                .api
                .delete(&format!("{}/snapshots/{snapshot}", vm_path(&name)))?;
            after_queued_op(
                ctx,
                reply,
                wait,
                &format!("deletion of snapshot {snapshot}"),
            )
        }
    }
}

fn vm_events(ctx: &Ctx, name: &VmName, limit: u32) -> Result<Vec<VmEvent>> {
    ctx.api
        .get(
            &format!("{}/events", vm_path(name)),
            &[("limit", limit.to_string())],
        )?
        .parse()
}

fn events_table(evs: &[VmEvent]) -> comfy_table::Table {
    let mut t = table(&["TIME", "STATE CHANGE", "HOST", "MESSAGE"]);
    for e in evs {
        t.add_row(vec![
            time(e.at),
            state_change(e.from_state, e.to_state),
            dash(e.host),
            e.message.clone(),
        ]);
    }
    t
}

/// `scheduled → running`, `→ pending`, or `-`.
fn state_change(from: Option<VmState>, to: Option<VmState>) -> String {
    match (from, to) {
        (Some(f), Some(t)) => format!("{f} → {t}"),
        (None, Some(t)) => format!("→ {t}"),
        (Some(f), None) => format!("{f} →"),
        (None, None) => "-".to_string(),
    }
}

/// `512 MiB`, `2 GiB`, `1.5 GiB`: whole units as written on the command line.
fn memory(mib: u64) -> String {
    if mib < 1024 {
        format!("{mib} MiB")
    } else if mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{:.1} GiB", mib as f64 / 1024.0)
    }
}

fn print_list(vms: &[Vm]) -> Result<()> {
    if vms.is_empty() {
        eprintln!("no VMs found");
        return Ok(());
    }
    let now = Timestamp::now();
    let mut t = table(&[
        "NAME", "STATE", "POWER", "HOST", "VCPUS", "MEMORY", "SINCE", "MESSAGE",
    ]);
    for vm in vms {
        t.add_row(vec![
            vm.name.to_string(),
            vm.state.to_string(),
            crate::output::wire_name(&vm.power),
            dash(vm.host),
            vm.vcpus.to_string(),
            memory(vm.memory_mib),
            age(vm.state_since, now),
            dash(vm.message.as_deref()),
        ]);
    }
    print_table(&t)
}

/// One NIC in `vms show`: `MAC on BRIDGE`, or on a tenant network
/// `MAC on network tenant-a, 198.51.100.2 (bridge cbr1, MTU 1450)`.
fn nic_line(n: &VmNic) -> String {
    match &n.network {
        None => format!("{} on {}", n.mac, n.bridge),
        Some(net) => {
            let mut s = format!("{} on network {net}", n.mac);
            if let Some(ip) = n.ip {
                s.push_str(&format!(", {ip}"));
            }
            s.push_str(&format!(" (bridge {}", n.bridge));
            if let Some(mtu) = n.mtu {
                s.push_str(&format!(", MTU {mtu}"));
            }
            s.push(')');
            s
        }
    }
}

/// Rows of `vms show`.
fn details(vm: &Vm, now: Timestamp) -> Vec<(&'static str, String)> {
    let disks = if vm.disks.is_empty() {
        "none".to_string()
    } else {
        vm.disks
            .iter()
            .map(|d| match d {
                VmDisk::Blank { size_bytes } => format!("blank {}", human_bytes(*size_bytes)),
                VmDisk::Image { image, sha256 } => {
                    format!(
                        "image {image} (sha256 {}…)",
                        sha256.get(..12).unwrap_or(sha256)
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let nics = if vm.nics.is_empty() {
        "none".to_string()
    } else {
        vm.nics.iter().map(nic_line).collect::<Vec<_>>().join("\n")
    };
    let boot = match &vm.boot {
        None => "from disk".to_string(),
        Some(b) => {
            let mut s = format!("kernel {}", b.kernel.image);
            if let Some(i) = &b.initrd {
                s.push_str(&format!(", initrd {}", i.image));
            }
            if !b.cmdline.is_empty() {
                s.push_str(&format!(", cmdline {:?}", b.cmdline));
            }
            s
        }
    };
    let ops = vm
        .pending_ops
        .iter()
        .map(|o| {
            format!(
                "{} (operation {}, queued {})",
                o.kind,
                o.id,
                age(o.queued_at, now)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let snapshots = vm
        .snapshots
        .iter()
        .map(|s| s.name.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        ("NAME", vm.name.to_string()),
        ("ID", vm.id.to_string()),
        ("KIND", vm.kind.to_string()),
        (
            "STATE",
            format!(
                "{} since {} ({})",
                vm.state,
                time(vm.state_since),
                age(vm.state_since, now)
            ),
        ),
        (
            "POWER",
            format!(
                "{} wanted (a stop waits {} s before forcing it off)",
                crate::output::wire_name(&vm.power),
                vm.stop_timeout_secs
            ),
        ),
        ("HOST", dash(vm.host)),
        ("VCPUS", vm.vcpus.to_string()),
        ("MEMORY", memory(vm.memory_mib)),
        ("DISKS", disks),
        ("NICS", nics),
        ("BOOT", boot),
        ("HA", if vm.ha { "yes" } else { "no" }.to_string()),
        ("ANTI-AFFINITY", dash(vm.anti_affinity.as_deref())),
        ("PENDING OPS", dash(Some(ops))),
        ("SNAPSHOTS", dash(Some(snapshots))),
        ("MESSAGE", dash(vm.message.as_deref())),
        ("CREATED", time(vm.created_at)),
        ("UPDATED", time(vm.updated_at)),
    ]
}

/// The lines of `new` that follow what `old` already showed: `new` after the longest end
/// of `old` that it starts with. Both are the console's last lines, so when nothing of
/// `old` is left in `new` (more lines came than one look holds), all of `new` is new.
pub(crate) fn new_lines<'a>(old: &[String], new: &'a [String]) -> &'a [String] {
    let longest = old.len().min(new.len());
    for k in (1..=longest).rev() {
        if old[old.len() - k..] == new[..k] {
            return &new[k..];
        }
    }
    new
}

fn console(ctx: &Ctx, name: &VmName, lines: u32, follow: bool) -> Result<()> {
    let path = format!("{}/console", vm_path(name));
    let reply = ctx.api.get(&path, &[("lines", lines.to_string())])?;
    if !follow {
        return ctx.show(reply, |c: VmConsole| {
            if c.read_at.is_none() {
                eprintln!(
                    "VM {name}: its host has not reported console output yet (host {})",
                    dash(c.host)
                );
            }
            for l in &c.lines {
                print(l)?;
            }
            Ok(())
        });
    }
    // Following: print the first look, then each second the lines that are new. A look at
    // the most lines the appliance keeps gives the best overlap to find where we were.
    let first: VmConsole = reply.parse()?;
    for l in &first.lines {
        print(l)?;
    }
    let mut seen = first.lines;
    let mut read_at = first.read_at;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let c: VmConsole = ctx.api.get(&path, &[("lines", "200".into())])?.parse()?;
        if c.read_at == read_at {
            continue;
        }
        read_at = c.read_at;
        for l in new_lines(&seen, &c.lines) {
            print(l)?;
        }
        seen = c.lines;
    }
}

/// Runs `cosmctl hosts`.
pub(crate) fn hosts(ctx: &Ctx) -> Result<()> {
    let reply = ctx.api.get("/hosts", &[])?;
    ctx.show(reply, |hosts: Vec<HostView>| {
        if hosts.is_empty() {
            eprintln!(
                "no VM hosts: a host is a machine of role `host`, deployed or active, whose agent reports its hypervisor"
            );
            return Ok(());
        }
        print_table(&hosts_table(&hosts, Timestamp::now()))
    })
}

fn hosts_table(hosts: &[HostView], now: Timestamp) -> comfy_table::Table {
    let mut t = table(&[
        "MAC",
        "HOSTNAME",
        "STATE",
        "VMS",
        "VCPUS",
        "MEMORY",
        "MIGRATION-URI",
        "REPORTED",
        "UNMANAGED",
    ]);
    for h in hosts {
        let cap = h.capacity.as_ref();
        t.add_row(vec![
            h.mac.to_string(),
            dash(h.hostname.as_deref()),
            h.machine_state.to_string(),
            h.vms.to_string(),
            format!("{}/{}", h.allocated_vcpus, dash(cap.map(|c| c.vcpus))),
            format!(
                "{}/{}",
                memory(h.allocated_memory_mib),
                dash(cap.map(|c| memory(c.memory_mib)))
            ),
            dash(cap.and_then(|c| c.migration_uri.as_deref())),
            h.reported_at.map_or("never".to_string(), |at| age(at, now)),
            dash(Some(h.unmanaged_domains.join(", "))),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    const DEFAULT_WAIT_SECS: u64 = 300;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<VmsCmd, clap::Error> {
        let cli = Cli::try_parse_from([&["cosmctl", "vms"], args].concat())?;
        match cli.command {
            Command::Vms(v) => Ok(v),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn create_body(args: &[&str]) -> CreateVm {
        match parse(&[&["create"], args].concat()).unwrap() {
            VmsCmd::Create(c) => c.to_request(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_builds_the_request() {
        let body = create_body(&[
            "web-01",
            "--vcpus",
            "2",
            "--memory",
            "2G",
            "--disk",
            "image=debian-12.qcow2",
            "--disk",
            "blank=10G",
            "--nic",
            "br0",
            "--nic",
            "br1,mac=52:54:00:12:34:56",
            "--nic",
            "network=tenant-a,ip=198.51.100.10,group=ssh",
            "--ha",
            "--anti-affinity",
            "web",
            "--no-start",
        ]);
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "name": "web-01", "kind": "kvm", "vcpus": 2, "memory_mib": 2048,
                "disks": [{"image": {"image": "debian-12.qcow2"}}, {"blank": {"size_bytes": 10u64 << 30}}],
                "nics": [
                    {"bridge": "br0", "network": null, "mac": null, "ip": null, "security_groups": []},
                    {"bridge": "br1", "network": null, "mac": "52:54:00:12:34:56", "ip": null, "security_groups": []},
                    {"bridge": null, "network": "tenant-a", "mac": null, "ip": "198.51.100.10", "security_groups": ["ssh"]},
                ],
                "boot": null, "ha": true, "anti_affinity": "web", "host": null, "start": false,
            })
        );
        let body = create_body(&[
            "pv1",
            "--kind",
            "xen-pv",
            "--vcpus",
            "1",
            "--memory",
            "512M",
            "--kernel",
            "vmlinuz",
            "--cmdline",
            "console=hvc0",
        ]);
        assert_eq!(body.kind, cosm_wire::VmKind::XenPv);
        assert_eq!(
            body.boot,
            Some(BootRequest {
                kernel: "vmlinuz".into(),
                initrd: None,
                cmdline: "console=hvc0".into()
            })
        );
        assert!(body.start);
    }

    /// A refusal's text names the flag at fault.
    fn refused(args: &[&str], flag: &str) {
        let err = parse(args).unwrap_err().to_string();
        assert!(err.contains(flag), "{args:?}: {err}");
    }

    #[test]
    fn bad_input_is_refused_naming_the_flag() {
        let base = ["create", "vm1", "--vcpus", "1"];
        refused(&[&base[..], &["--memory", "2X"]].concat(), "--memory");
        refused(&[&base[..], &["--memory", "1.5G"]].concat(), "--memory");
        refused(
            &[&base[..], &["--memory", "1G", "--disk", "blank=10"]].concat(),
            "--disk",
        );
        refused(
            &[&base[..], &["--memory", "1G", "--disk", "debian.qcow2"]].concat(),
            "--disk",
        );
        refused(
            &[&base[..], &["--memory", "1G", "--nic", "br0,mac=xx"]].concat(),
            "--nic",
        );
        refused(
            &[&base[..], &["--memory", "1G", "--nic", "br0,ip=10.0.0.2"]].concat(),
            "--nic",
        );
        refused(
            &[&base[..], &["--memory", "1G", "--kind", "vmware"]].concat(),
            "--kind",
        );
        refused(
            &[&base[..], &["--memory", "1G", "--initrd", "i.img"]].concat(),
            "--kernel",
        );
        refused(
            &["create", "vm1", "--vcpus", "0", "--memory", "1G"],
            "--vcpus",
        );
        refused(&["create", "vm1", "--vcpus", "1"], "--memory");
        refused(&["create", "a b", "--vcpus", "1", "--memory", "1G"], "NAME");
        refused(&["stop", "vm1", "--timeout", "5000"], "--timeout");
        refused(&["list", "--state", "sleeping"], "--state");
        refused(&["list", "--host", "nope"], "--host");
        refused(&["console", "vm1", "--lines", "0"], "--lines");
        refused(&["snapshot", "create", "vm1", "bad name"], "SNAPSHOT");
    }

    #[test]
    fn wait_takes_an_optional_value() {
        let wait_of = |args: &[&str]| match parse(args).unwrap() {
            VmsCmd::Start { wait, .. } => wait.wait,
            other => panic!("{other:?}"),
        };
        assert_eq!(wait_of(&["start", "vm1"]), None);
        assert_eq!(
            wait_of(&["start", "vm1", "--wait"]),
            Some(DEFAULT_WAIT_SECS)
        );
        assert_eq!(wait_of(&["start", "vm1", "--wait=20"]), Some(20));
        // The value needs its `=`: in `--wait 20`, 20 is the VM's name.
        match parse(&["start", "--wait", "20"]).unwrap() {
            VmsCmd::Start { name, wait } => {
                assert_eq!((name.as_str(), wait.wait), ("20", Some(DEFAULT_WAIT_SECS)))
            }
            other => panic!("{other:?}"),
        }
        refused(&["start", "vm1", "--wait=soon"], "--wait");
        refused(&["start", "vm1", "--wait=0"], "--wait");
    }

    #[test]
    fn show_gives_a_nics_network_and_address() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(
            nic_line(&VmNic::on_bridge("br0".parse().unwrap(), mac)),
            "52:54:00:12:34:56 on br0"
        );
        let on_net = VmNic {
            bridge: "cbr7".parse().unwrap(),
            mac,
            network: Some("tenant-a".parse().unwrap()),
            ip: Some("198.51.100.2".parse().unwrap()),
            mtu: Some(1450),
        };
        assert_eq!(
            nic_line(&on_net),
            "52:54:00:12:34:56 on network tenant-a, 198.51.100.2 (bridge cbr7, MTU 1450)"
        );
        let bare = VmNic {
            ip: None,
            mtu: None,
            ..on_net
        };
        assert_eq!(
            nic_line(&bare),
            "52:54:00:12:34:56 on network tenant-a (bridge cbr7)"
        );
    }

    #[test]
    fn memory_is_shown_in_whole_units() {
        assert_eq!(memory(512), "512 MiB");
        assert_eq!(memory(2048), "2 GiB");
        assert_eq!(memory(1536), "1.5 GiB");
    }

    #[test]
    fn console_follow_prints_only_new_lines() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            new_lines(&s(&["a", "b", "c"]), &s(&["b", "c", "d", "e"])),
            s(&["d", "e"])
        );
        assert_eq!(new_lines(&s(&["a", "b"]), &s(&["a", "b"])), s(&[]));
        assert_eq!(new_lines(&[], &s(&["x"])), s(&["x"]));
        // Repeated lines: the longest overlap wins, so nothing is printed twice.
        assert_eq!(new_lines(&s(&["x", "x"]), &s(&["x", "x", "y"])), s(&["y"]));
        // Nothing in common: it all is new.
        assert_eq!(new_lines(&s(&["a"]), &s(&["b", "c"])), s(&["b", "c"]));
    }

    #[test]
    fn hosts_show_use_and_capacity() {
        let h = HostView {
            mac: "52:54:00:00:c0:01".parse().unwrap(),
            hostname: Some("hv-1".into()),
            machine_state: cosm_wire::MachineState::Active,
            capacity: Some(cosm_wire::HostCapacity {
                vcpus: 8,
                memory_mib: 16384,
                storage_bytes: 1 << 40,
                migration_uri: Some("qemu+tcp://hv-1/system".into()),
                probe: None,
                vtep: None,
            }),
            reported_at: Some(Timestamp::from_millis(10_000)),
            vms: 2,
            allocated_vcpus: 3,
            allocated_memory_mib: 3072,
            unmanaged_domains: vec!["legacy".into()],
        };
        let text = hosts_table(&[h], Timestamp::from_millis(15_000)).to_string();
        for want in [
            "hv-1",
            "active",
            "3/8",
            "3 GiB/16 GiB",
            "qemu+tcp://hv-1/system",
            "5s ago",
            "legacy",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
