//! Hypervisor hosts and the VM workflows as [`App`] offers them (issue 12).
//!
//! What hosts' agents report (capacity, domains, console lines) is kept in memory
//! ([`HostReports`]), like heartbeats: it is re-sent every few seconds, so an appliance
//! restart loses nothing that does not come back at the next report. Only what a report
//! changes about a VM's record (its state, host, snapshots, finished operations) is
//! written, as one `ReportVms` command, and only when [`vms::observe`] says it changes.

use super::placement::Overcommit;
use super::vms::{self, Candidate, NewVm};
use super::{App, AppError, Op};
use crate::store::Page;
use cosm_wire::{
    BootRequest, CreateVm, DiskRequest, HostCapacity, HostView, ImageRef, MacAddr, MachineState,
    ObservedDomain, PowerWanted, Timestamp, Vm, VmBoot, VmConsole, VmDisk, VmEvent, VmName,
    VmOpKind, VmReport, VmState,
};
use std::collections::HashMap;
use std::sync::Mutex;

/// The most console lines kept per VM.
pub const CONSOLE_LINES: usize = 200;

/// What one host's agent last reported.
#[derive(Debug, Clone)]
struct HostEntry {
    capacity: HostCapacity,
    at: Timestamp,
    domains: Vec<ObservedDomain>,
    consoles: HashMap<String, (Timestamp, Vec<String>)>,
    /// The VNIs whose bridge and VXLAN device were up after its last network pass.
    net_ready: Vec<u32>,
}

/// The latest report of every host, in memory.
#[derive(Debug, Default)]
pub struct HostReports {
    hosts: Mutex<HashMap<MacAddr, HostEntry>>,
    /// Where each host's agent answers peer probes, in MAC order: a host's peers are its
    /// next [`cosm_wire::MAX_PEERS`] neighbours on this ring.
    probes: Mutex<std::collections::BTreeMap<MacAddr, String>>,
    /// Raised when a host's VXLAN endpoint or ready networks change: other hosts' FDB peers
    /// and held-back migrations depend on them, so it is part of every desired generation.
    net_epoch: std::sync::atomic::AtomicU64,
}

impl HostReports {
    fn record(&self, host: MacAddr, report: &VmReport) {
        {
            let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            match &report.capacity.probe {
                Some(p) if probes.get(&host) != Some(p) => {
                    probes.insert(host, p.clone());
                }
                Some(_) => {}
                None => {
                    probes.remove(&host);
                }
            }
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let at = Timestamp::now();
        let ready = report
            .network
            .as_ref()
            .map(|n| n.ready.clone())
            .unwrap_or_default();
        let fresh = !hosts.contains_key(&host);
        let entry = hosts.entry(host).or_insert_with(|| HostEntry {
            capacity: report.capacity.clone(),
            at,
            domains: Vec::new(),
            consoles: HashMap::new(),
            net_ready: Vec::new(),
        });
        if fresh || entry.capacity.vtep != report.capacity.vtep || entry.net_ready != ready {
            self.net_epoch
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        entry.net_ready = ready;
        entry.capacity = report.capacity.clone();
        entry.at = at;
        entry.domains = report.domains.clone();
        for d in &report.domains {
            if let Some(lines) = &d.console {
                let start = lines.len().saturating_sub(CONSOLE_LINES);
                entry
                    .consoles
                    .insert(d.name.clone(), (at, lines[start..].to_vec()));
            }
        }
        entry
            .consoles
            .retain(|name, _| report.domains.iter().any(|d| &d.name == name));
        // Console lines are not kept twice.
        for d in &mut entry.domains {
            d.console = None;
        }
    }

    /// The host's VXLAN endpoint, as last reported.
    pub fn vtep(&self, host: MacAddr) -> Option<std::net::Ipv4Addr> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.get(&host).and_then(|e| e.capacity.vtep)
    }

    /// Whether the host reported network `vni` up after its last pass.
    pub fn net_ready(&self, host: MacAddr, vni: u32) -> bool {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.get(&host).is_some_and(|e| e.net_ready.contains(&vni))
    }

    pub fn net_epoch(&self) -> u64 {
        self.net_epoch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops what a host reported (it was fenced): it is no placement candidate and no
    /// one's peer until it reports again.
    pub fn forget(&self, host: MacAddr) {
        self.net_epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host);
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host);
    }

    /// The hosts `host` probes: the next [`cosm_wire::MAX_PEERS`] hosts after it on the
    /// ring of hosts that report a probe address (empty if `host` reports none).
    pub fn peers_of(&self, host: MacAddr) -> Vec<cosm_wire::Peer> {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        if !probes.contains_key(&host) {
            return Vec::new();
        }
        use std::ops::Bound::{Excluded, Unbounded};
        probes
            .range((Excluded(host), Unbounded))
            .chain(probes.range(..host))
            .take(cosm_wire::MAX_PEERS)
            .map(|(mac, probe)| cosm_wire::Peer {
                mac: *mac,
                probe: probe.clone(),
            })
            .collect()
    }

    fn get(&self, host: MacAddr) -> Option<HostEntry> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.get(&host).cloned()
    }

    fn all(&self) -> Vec<(MacAddr, HostEntry)> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = hosts.iter().map(|(m, e)| (*m, e.clone())).collect();
        v.sort_by_key(|(m, _)| *m);
        v
    }
}

/// Whether a machine may hold VMs (and HA watches it): role `host`, installed, and not
/// still booting its freshly installed system (an image install's machine is a host from
/// its installed agent's first heartbeat on).
pub(super) fn is_host(m: &cosm_wire::Machine) -> bool {
    m.role.as_ref().is_some_and(|r| r.as_str() == "host")
        && matches!(m.state, MachineState::Deployed | MachineState::Active)
        && !m.awaits_installed_agent
}

/// Checks the numbers of a create request the way a host's libvirt would refuse them.
fn check_request(req: &CreateVm) -> Result<(), AppError> {
    let bad = |field: &'static str, message: String| {
        AppError::Store(crate::store::StoreError::Invalid { field, message })
    };
    if !(1..=256).contains(&req.vcpus) {
        return Err(bad(
            "vcpus",
            format!("vcpus {} is outside 1..=256", req.vcpus),
        ));
    }
    if !(16..=(4 << 20)).contains(&req.memory_mib) {
        return Err(bad(
            "memory_mib",
            format!("memory_mib {} is outside 16..=4194304", req.memory_mib),
        ));
    }
    if req.disks.len() > 16 || req.nics.len() > 16 {
        return Err(bad("disks", "at most 16 disks and 16 NICs".into()));
    }
    for (i, d) in req.disks.iter().enumerate() {
        if let DiskRequest::Blank { size_bytes } = d {
            if *size_bytes < (1 << 20) || *size_bytes > (64 << 40) {
                return Err(bad(
                    "disks",
                    format!("disks[{i}].size_bytes {size_bytes} is outside 1 MiB..=64 TiB"),
                ));
            }
        }
    }
    if req.kind == cosm_wire::VmKind::XenPv && req.boot.is_none() {
        return Err(bad(
            "boot",
            "a xen-pv VM needs a direct kernel boot (boot.kernel)".into(),
        ));
    }
    if let Some(b) = &req.boot {
        if b.cmdline.chars().any(|c| c.is_control()) || b.cmdline.len() > 4096 {
            return Err(bad(
                "boot.cmdline",
                "the kernel command line holds a control character or is longer than 4096".into(),
            ));
        }
    }
    if let Some(g) = &req.anti_affinity {
        if g.is_empty() || g.len() > 64 || g.chars().any(|c| c.is_control()) {
            return Err(bad(
                "anti_affinity",
                "an anti-affinity group is 1-64 characters without control characters".into(),
            ));
        }
    }
    Ok(())
}

impl App {
    /// A file of the image repository, pinned by its sha256.
    fn pin_image(&self, field: &'static str, name: &str) -> Result<ImageRef, AppError> {
        match self.store.image(name)? {
            Some(img) => Ok(ImageRef {
                image: img.name,
                sha256: img.sha256,
            }),
            None => Err(AppError::Store(crate::store::StoreError::Invalid {
                field,
                message: format!(
                    "{field}: the image repository has no image {name:?} (cosmctl images list)"
                ),
            })),
        }
    }

    /// Why `mac` is not among [`App::vm_candidates`], for error messages.
    fn why_not_host(&self, mac: MacAddr) -> Result<String, AppError> {
        let Some(m) = self.store.machine(mac)? else {
            return Ok("no such machine".into());
        };
        let role = m.role.as_ref().map_or("none", |r| r.as_str());
        Ok(if m.awaits_installed_agent {
            format!(
                "it has role {role} and is {}, booting its installed system (its agent has not beaten from there yet)",
                m.state
            )
        } else if !is_host(&m) {
            format!("it has role {role} and is {}", m.state)
        } else {
            format!(
                "it is {}, but its agent has not reported its hypervisor",
                m.state
            )
        })
    }

    /// The hosts VMs may go to now, with what their agents last reported.
    pub fn vm_candidates(&self) -> Result<Vec<Candidate>, AppError> {
        let mut out = Vec::new();
        for (mac, e) in self.hosts.all() {
            let Some(m) = self.store.machine(mac)? else {
                continue;
            };
            if !is_host(&m) {
                continue;
            }
            out.push(Candidate {
                host: mac,
                cpus: e.capacity.vcpus,
                memory_mib: e.capacity.memory_mib,
                storage_bytes: e.capacity.storage_bytes,
                cpu_percent: self.liveness.last(&mac).map_or(0.0, |(_, b)| b.cpu_percent),
                migration_uri: e.capacity.migration_uri.clone(),
                vtep: e.capacity.vtep.is_some(),
            });
        }
        Ok(out)
    }

    pub fn overcommit(&self) -> Overcommit {
        self.overcommit
    }

    /// Records and places a VM; `Conflict { code: "no_host" }` with every host's reason
    /// when it fits nowhere.
    pub async fn create_vm(&self, req: CreateVm) -> Result<Vm, AppError> {
        check_request(&req)?;
        let mut disks = Vec::with_capacity(req.disks.len());
        for d in &req.disks {
            disks.push(match d {
                DiskRequest::Blank { size_bytes } => VmDisk::Blank {
                    size_bytes: *size_bytes,
                },
                DiskRequest::Image { image } => {
                    let r = self.pin_image("disks", image)?;
                    VmDisk::Image {
                        image: r.image,
                        sha256: r.sha256,
                    }
                }
            });
        }
        let boot = match &req.boot {
            None => None,
            Some(BootRequest {
                kernel,
                initrd,
                cmdline,
            }) => Some(VmBoot {
                kernel: self.pin_image("boot.kernel", kernel)?,
                initrd: initrd
                    .as_deref()
                    .map(|i| self.pin_image("boot.initrd", i))
                    .transpose()?,
                cmdline: cmdline.clone(),
            }),
        };
        let new = NewVm {
            name: req.name,
            kind: req.kind,
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            disks,
            nics: req.nics,
            boot,
            ha: req.ha,
            anti_affinity: req.anti_affinity,
            host: req.host,
            start: req.start,
        };
        let candidates = self.vm_candidates()?;
        if let Some(w) = new.host {
            if !candidates.iter().any(|c| c.host == w) {
                return Err(AppError::Store(crate::store::StoreError::Conflict {
                    code: "no_host",
                    message: format!(
                        "{w} is not a VM host ({}): a host is a machine of role host in deployed or active whose agent reports its hypervisor",
                        self.why_not_host(w)?
                    ),
                }));
            }
        }
        let op = Op::CreateVm {
            new,
            candidates,
            overcommit: self.overcommit,
        };
        Ok(self.store.run(op).await?.into_vm().expect("a created VM"))
    }

    pub fn vm(&self, name: &VmName) -> Result<Vm, AppError> {
        self.store.vm(name)?.ok_or_else(|| AppError::NotFound {
            message: format!("VM {name} not found"),
        })
    }

    pub async fn vms_page(
        &self,
        host: Option<MacAddr>,
        state: Option<VmState>,
        after: Option<VmName>,
        limit: usize,
    ) -> Result<Page<Vm>, AppError> {
        let store = self.store.clone();
        self.bulk_reads
            .run(move || store.vms_page(host, state, after.as_ref(), limit))
            .await?
            .map_err(AppError::from)
    }

    pub async fn vm_events_page(
        &self,
        name: &VmName,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<VmEvent>, AppError> {
        let vm = self.vm(name)?;
        Ok(self.store.vm_events_page(&vm, before, limit)?)
    }

    pub async fn set_vm_power(
        &self,
        name: VmName,
        power: PowerWanted,
        stop_timeout_secs: Option<u32>,
        by: &str,
    ) -> Result<Vm, AppError> {
        let op = Op::SetVmPower {
            name,
            power,
            stop_timeout_secs,
            by: by.to_string(),
        };
        Ok(self.store.run(op).await?.into_vm().expect("a VM"))
    }

    pub async fn queue_vm_op(
        &self,
        name: VmName,
        kind: VmOpKind,
        by: &str,
    ) -> Result<Vm, AppError> {
        let op = Op::QueueVmOp {
            name,
            kind,
            by: by.to_string(),
        };
        Ok(self.store.run(op).await?.into_vm().expect("a VM"))
    }

    pub async fn migrate_vm(
        &self,
        name: VmName,
        to: Option<MacAddr>,
        by: &str,
    ) -> Result<Vm, AppError> {
        let op = Op::StartMigration {
            name,
            to,
            candidates: self.vm_candidates()?,
            overcommit: self.overcommit,
            by: by.to_string(),
        };
        Ok(self.store.run(op).await?.into_vm().expect("a VM"))
    }

    /// Deletes a VM; `None` when it is gone at once, else the record, `deleting`.
    pub async fn delete_vm(&self, name: VmName, by: &str) -> Result<Option<Vm>, AppError> {
        let op = Op::DeleteVm {
            name,
            by: by.to_string(),
        };
        Ok(self.store.run(op).await?.into_vm())
    }

    /// The last `lines` lines of a VM's serial console, as its host last reported them.
    pub fn vm_console(&self, name: &VmName, lines: usize) -> Result<VmConsole, AppError> {
        let vm = self.vm(name)?;
        let found = vm
            .host
            .and_then(|h| self.hosts.get(h))
            .and_then(|e| e.consoles.get(name.as_str()).cloned());
        let (read_at, all) = match found {
            Some((at, l)) => (Some(at), l),
            None => (None, Vec::new()),
        };
        let start = all.len().saturating_sub(lines);
        Ok(VmConsole {
            vm: vm.name,
            host: vm.host,
            read_at,
            lines: all[start..].to_vec(),
        })
    }

    /// Every VM host: machines of role `host` in `deployed`/`active` that reported, with
    /// what their VMs take.
    pub async fn hosts(&self) -> Result<Vec<HostView>, AppError> {
        let mut out = Vec::new();
        for (mac, e) in self.hosts.all() {
            let Some(m) = self.store.machine(mac)? else {
                continue;
            };
            let vms = self.store.vms_on(mac)?;
            out.push(HostView {
                mac,
                hostname: m.hostname.clone(),
                machine_state: m.state,
                capacity: Some(e.capacity.clone()),
                reported_at: Some(e.at),
                vms: vms.len() as u32,
                allocated_vcpus: vms.iter().map(|v| v.vcpus).sum(),
                allocated_memory_mib: vms.iter().map(|v| v.memory_mib).sum(),
                unmanaged_domains: e
                    .domains
                    .iter()
                    .filter(|d| !d.managed)
                    .map(|d| d.name.clone())
                    .collect(),
            });
        }
        Ok(out)
    }

    /// A host's agent reports its domains. Kept in memory; what changes VM records is
    /// written as one command, only when something changes.
    pub async fn report_vms(&self, host: MacAddr, report: VmReport) -> Result<usize, AppError> {
        let m = self.machine(host)?;
        if m.state == MachineState::Fenced {
            // Its VMs were moved or marked down when it was fenced; until an operator
            // returns it to service, what it says changes nothing.
            tracing::debug!(%host, "VM report from a fenced host ignored");
            return Ok(0);
        }
        if !is_host(&m) {
            tracing::debug!(%host, role = ?m.role, state = %m.state, "VM report from a machine that is not a VM host (yet)");
        }
        self.hosts.record(host, &report);
        if let Some(net) = &report.network {
            let mut lines = net.changes.clone();
            if let Some(e) = &net.error {
                lines.push(format!("network reconcile failed: {e}"));
            }
            if !lines.is_empty() {
                for l in &lines {
                    tracing::info!(%host, "{l}");
                }
                self.store.run(Op::NetworkNotes { host, lines }).await?;
            }
        }
        let now = Timestamp::now();
        let mut changes = false;
        for vm in self.store.vms_on(host)? {
            let d = report.domains.iter().find(|d| d.name == vm.name.as_str());
            if vms::observe(&vm, host, d, &report.results, &report.notes, now).is_some() {
                changes = true;
                break;
            }
        }
        if !changes {
            return Ok(0);
        }
        let op = Op::ReportVms {
            host,
            domains: report
                .domains
                .into_iter()
                .map(|mut d| {
                    d.console = None;
                    d
                })
                .collect(),
            results: report.results,
            notes: report.notes,
        };
        match self.store.run(op).await? {
            super::Outcome::Removed(n) => Ok(n),
            _ => Ok(0),
        }
    }

    /// What a host's agent is told about its VMs, and its VM generation.
    pub fn desired_vms(&self, host: MacAddr) -> Result<(u64, Vec<cosm_wire::DesiredVm>), AppError> {
        let generation = self.store.vm_generation(host)?;
        let vms = self.store.vms_on(host)?;
        Ok((generation, vms.iter().map(vms::desired).collect()))
    }
}
