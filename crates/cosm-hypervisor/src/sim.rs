//! `SimHypervisor`: the `Hypervisor` trait in memory, for tests that need hundreds of hosts
//! in one process. Hosts share a `SimCluster` so that a VM can migrate between them. It
//! follows the libvirt driver's rules (the shared contract test in
//! `tests/hypervisor_contract.rs` runs one body against both), but makes no files and does
//! not wait: a guest honours ACPI at once, or (`set_ignores_acpi`) never.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::spec::{SnapshotName, VmName, VmSpec};
use crate::{DomainInfo, HostInfo, Hypervisor, HypervisorError, ShutdownOutcome, VmPower};

#[derive(Debug)]
struct SimVm {
    spec: VmSpec,
    power: VmPower,
    /// Each snapshot remembers the power state it was taken in; reverting restores it.
    snapshots: BTreeMap<SnapshotName, VmPower>,
    console: Vec<String>,
    ignores_acpi: bool,
}

impl SimVm {
    fn say(&mut self, line: String) {
        if self.spec.console_log.is_some() {
            self.console.push(line);
        }
    }
}

/// Simulated hosts by URI.
#[derive(Debug, Clone, Default)]
pub struct SimCluster {
    hosts: Arc<Mutex<BTreeMap<String, BTreeMap<VmName, SimVm>>>>,
}

impl SimCluster {
    pub fn new() -> SimCluster {
        SimCluster::default()
    }

    /// A host at `uri` (an existing one keeps its VMs).
    pub fn host(&self, uri: &str) -> SimHypervisor {
        self.lock().entry(uri.to_string()).or_default();
        SimHypervisor {
            uri: uri.to_string(),
            cluster: self.clone(),
            size: SimHypervisor::DEFAULT_SIZE,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<VmName, SimVm>>> {
        // A panic elsewhere leaves the maps consistent: every change is one insert/remove.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One simulated host.
#[derive(Debug, Clone)]
pub struct SimHypervisor {
    uri: String,
    cluster: SimCluster,
    /// What `host_info` reports.
    size: HostInfo,
}

fn wrong(name: &VmName, op: &'static str, power: VmPower) -> HypervisorError {
    HypervisorError::WrongState {
        name: name.to_string(),
        op,
        power,
    }
}

impl SimHypervisor {
    /// A host on a cluster of its own.
    pub fn new(uri: &str) -> SimHypervisor {
        SimCluster::new().host(uri)
    }

    /// The size a simulated host reports unless told otherwise: 64 vCPUs, 256 GiB.
    pub const DEFAULT_SIZE: HostInfo = HostInfo {
        vcpus: 64,
        memory_mib: 256 * 1024,
    };

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The same host, reporting `size` from `host_info`.
    pub fn with_size(mut self, size: HostInfo) -> SimHypervisor {
        self.size = size;
        self
    }

    /// Ends a running guest from outside the `Hypervisor` API, as when its QEMU process is
    /// killed or the guest crashes: it is then reported `power` (shut off or crashed).
    pub fn kill(&self, name: &VmName, power: VmPower) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            vm.power = power;
            vm.say(format!("[sim] {name}: killed"));
            Ok(())
        })
    }

    /// Makes the guest ignore ACPI, so `shutdown` has to force it off.
    pub fn set_ignores_acpi(&self, name: &VmName, ignores: bool) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            vm.ignores_acpi = ignores;
            Ok(())
        })
    }

    /// Runs `f` on the VM under the cluster lock.
    fn with_vm<T>(
        &self,
        name: &VmName,
        f: impl FnOnce(&mut SimVm) -> Result<T, HypervisorError>,
    ) -> Result<T, HypervisorError> {
        let mut hosts = self.cluster.lock();
        let vm = hosts
            .get_mut(&self.uri)
            .and_then(|h| h.get_mut(name))
            .ok_or_else(|| HypervisorError::NotFound {
                name: name.to_string(),
            })?;
        f(vm)
    }
}

impl Hypervisor for SimHypervisor {
    fn define(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        spec.validate()?;
        let mut hosts = self.cluster.lock();
        let host = hosts.entry(self.uri.clone()).or_default();
        if host.contains_key(&spec.name) {
            return Err(HypervisorError::AlreadyExists {
                name: spec.name.to_string(),
            });
        }
        host.insert(
            spec.name.clone(),
            SimVm {
                spec: spec.clone(),
                power: VmPower::ShutOff,
                snapshots: BTreeMap::new(),
                console: Vec::new(),
                ignores_acpi: false,
            },
        );
        Ok(())
    }

    fn start(&self, name: &VmName) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            if vm.power.is_active() {
                return Err(wrong(name, "start", vm.power));
            }
            vm.power = VmPower::Running;
            vm.say(format!("[sim] {name}: powered on"));
            Ok(())
        })
    }

    fn shutdown(
        &self,
        name: &VmName,
        _timeout: Duration,
    ) -> Result<ShutdownOutcome, HypervisorError> {
        self.with_vm(name, |vm| {
            if vm.power != VmPower::Running {
                return Err(wrong(name, "shut down", vm.power));
            }
            vm.say(format!("[sim] {name}: ACPI power button"));
            vm.power = VmPower::ShutOff;
            Ok(if vm.ignores_acpi {
                ShutdownOutcome::Forced
            } else {
                vm.say(format!("[sim] {name}: powered off"));
                ShutdownOutcome::Graceful
            })
        })
    }

    fn destroy(&self, name: &VmName) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            if !vm.power.is_active() {
                return Err(wrong(name, "destroy", vm.power));
            }
            vm.power = VmPower::ShutOff;
            Ok(())
        })
    }

    fn reboot(&self, name: &VmName) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            if vm.power != VmPower::Running {
                return Err(wrong(name, "reboot", vm.power));
            }
            vm.say(format!("[sim] {name}: rebooting"));
            Ok(())
        })
    }

    fn undefine(&self, name: &VmName) -> Result<(), HypervisorError> {
        let mut hosts = self.cluster.lock();
        let host = hosts.entry(self.uri.clone()).or_default();
        match host.get(name) {
            None => Err(HypervisorError::NotFound {
                name: name.to_string(),
            }),
            Some(vm) if vm.power.is_active() => Err(wrong(name, "undefine", vm.power)),
            Some(_) => {
                host.remove(name);
                Ok(())
            }
        }
    }

    fn state(&self, name: &VmName) -> Result<VmPower, HypervisorError> {
        self.with_vm(name, |vm| Ok(vm.power))
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let hosts = self.cluster.lock();
        let vms = hosts.get(&self.uri).into_iter().flatten();
        // BTreeMap order is name order.
        Ok(vms
            .map(|(name, vm)| DomainInfo {
                name: name.to_string(),
                power: vm.power,
            })
            .collect())
    }

    fn snapshot_create(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            if vm.snapshots.contains_key(snapshot) {
                return Err(HypervisorError::SnapshotExists {
                    name: name.to_string(),
                    snapshot: snapshot.to_string(),
                });
            }
            vm.snapshots.insert(snapshot.clone(), vm.power);
            Ok(())
        })
    }

    fn snapshot_list(&self, name: &VmName) -> Result<Vec<SnapshotName>, HypervisorError> {
        self.with_vm(name, |vm| Ok(vm.snapshots.keys().cloned().collect()))
    }

    fn snapshot_revert(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            let power =
                *vm.snapshots
                    .get(snapshot)
                    .ok_or_else(|| HypervisorError::SnapshotNotFound {
                        name: name.to_string(),
                        snapshot: snapshot.to_string(),
                    })?;
            vm.power = power;
            Ok(())
        })
    }

    fn snapshot_delete(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError> {
        self.with_vm(name, |vm| {
            vm.snapshots.remove(snapshot).map(drop).ok_or_else(|| {
                HypervisorError::SnapshotNotFound {
                    name: name.to_string(),
                    snapshot: snapshot.to_string(),
                }
            })
        })
    }

    /// Like libvirt, refuses a VM with snapshots (their metadata would not follow it) and
    /// a destination that already has a VM of that name.
    fn migrate(&self, name: &VmName, dest_uri: &str, _live: bool) -> Result<(), HypervisorError> {
        let mut hosts = self.cluster.lock();
        let vm = hosts
            .get(&self.uri)
            .and_then(|h| h.get(name))
            .ok_or_else(|| HypervisorError::NotFound {
                name: name.to_string(),
            })?;
        if !vm.snapshots.is_empty() {
            return Err(HypervisorError::MigrationRefused {
                name: name.to_string(),
                reason: format!("it has {} snapshots", vm.snapshots.len()),
            });
        }
        let dest = hosts
            .get(dest_uri)
            .ok_or_else(|| HypervisorError::UnknownSimHost {
                uri: dest_uri.to_string(),
            })?;
        if dest.contains_key(name) {
            return Err(HypervisorError::AlreadyExists {
                name: name.to_string(),
            });
        }
        let vm = hosts
            .get_mut(&self.uri)
            .and_then(|h| h.remove(name))
            .expect("looked up above under the same lock");
        hosts
            .get_mut(dest_uri)
            .expect("looked up above under the same lock")
            .insert(name.clone(), vm);
        Ok(())
    }

    fn console_tail(&self, name: &VmName, lines: usize) -> Result<Vec<String>, HypervisorError> {
        self.with_vm(name, |vm| {
            if vm.spec.console_log.is_none() {
                return Err(HypervisorError::NoConsole {
                    name: name.to_string(),
                });
            }
            let lines = lines.min(crate::MAX_CONSOLE_LINES);
            let from = vm.console.len().saturating_sub(lines);
            Ok(vm.console[from..].to_vec())
        })
    }

    fn host_info(&self) -> Result<HostInfo, HypervisorError> {
        Ok(self.size)
    }
}
