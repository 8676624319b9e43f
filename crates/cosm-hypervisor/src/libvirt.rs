//! `LibvirtHypervisor`: the `Hypervisor` trait on libvirt through the `virt` crate, for
//! `qemu:///system`, `xen:///system` and the `test:///default` driver the tests use. It
//! also makes a VM's qcow2 disk files (`qemu-img`) and reads its console log file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::domain_snapshot::DomainSnapshot;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::sys;

use crate::spec::{DiskSource, DiskSpec, SnapshotName, VmName, VmSpec};
use crate::xml::{console_path, domain_xml, snapshot_xml};
use crate::{
    DomainInfo, HostInfo, Hypervisor, HypervisorError, ShutdownOutcome, VmPower, MAX_CONSOLE_LINES,
    SHUTDOWN_POLL,
};

/// One connection to one host's libvirt. A `test:///default` connection holds its own
/// private state (a fresh host with one domain, `test`), which lasts as long as it does.
#[derive(Debug)]
pub struct LibvirtHypervisor {
    uri: String,
    conn: Connect,
}

/// The most a console tail reads from the end of the log file.
const CONSOLE_READ_LIMIT: u64 = 1 << 20;

fn is_code(e: &virt::error::Error, code: ErrorNumber) -> bool {
    e.code() == Enum::Known(code)
}

fn power_of(state: virt::domain::DomainStateEnum) -> VmPower {
    match state {
        Enum::Known(DomainState::Running) => VmPower::Running,
        Enum::Known(DomainState::Blocked) => VmPower::Blocked,
        Enum::Known(DomainState::Paused) => VmPower::Paused,
        Enum::Known(DomainState::Shutdown) => VmPower::ShuttingDown,
        Enum::Known(DomainState::Shutoff) => VmPower::ShutOff,
        Enum::Known(DomainState::Crashed) => VmPower::Crashed,
        Enum::Known(DomainState::PMSuspended) => VmPower::Suspended,
        Enum::Known(DomainState::NoState) | Enum::Unknown(_) => VmPower::Unknown,
    }
}

impl LibvirtHypervisor {
    /// Connects to `uri` (`qemu:///system`, `xen:///system`, `test:///default`, or a remote
    /// URI). libvirt's default error callback, which prints every error to stderr, is
    /// turned off: errors come back as values.
    pub fn connect(uri: &str) -> Result<LibvirtHypervisor, HypervisorError> {
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|source| HypervisorError::Connect {
            uri: uri.to_string(),
            source,
        })?;
        Ok(LibvirtHypervisor {
            uri: uri.to_string(),
            conn,
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn domain(&self, name: &VmName) -> Result<Domain, HypervisorError> {
        self.conn
            .lookup_domain_by_name(name.as_str())
            .map_err(|e| self.classify("look up", name, e))
    }

    fn power(&self, name: &VmName, dom: &Domain) -> Result<VmPower, HypervisorError> {
        let (state, _reason) = dom.state().map_err(|e| self.classify("read", name, e))?;
        Ok(power_of(state))
    }

    /// Turns libvirt's error codes into this crate's variants where one fits; an operation
    /// the domain's state refuses becomes `WrongState` with the state it is in. (Drivers
    /// differ in the codes they use for this, the test driver says "internal error", so
    /// each operation also checks the state itself first: `require`.)
    fn classify(&self, op: &'static str, name: &VmName, e: virt::error::Error) -> HypervisorError {
        if is_code(&e, ErrorNumber::NoDomain) {
            return HypervisorError::NotFound {
                name: name.to_string(),
            };
        }
        if is_code(&e, ErrorNumber::OperationInvalid) {
            let power = self
                .conn
                .lookup_domain_by_name(name.as_str())
                .and_then(|d| d.state())
                .map(|(s, _)| power_of(s));
            if let Ok(power) = power {
                return HypervisorError::WrongState {
                    name: name.to_string(),
                    op,
                    power,
                };
            }
        }
        HypervisorError::Libvirt {
            op,
            name: name.to_string(),
            source: e,
        }
    }

    fn snapshot(
        &self,
        name: &VmName,
        dom: &Domain,
        snapshot: &SnapshotName,
    ) -> Result<DomainSnapshot, HypervisorError> {
        Domain::lookup_snapshot_by_name(dom, snapshot.as_str(), 0).map_err(|e| {
            if is_code(&e, ErrorNumber::NoDomainSnapshot) {
                HypervisorError::SnapshotNotFound {
                    name: name.to_string(),
                    snapshot: snapshot.to_string(),
                }
            } else {
                self.classify("look up a snapshot of", name, e)
            }
        })
    }

    fn require(
        &self,
        name: &VmName,
        dom: &Domain,
        op: &'static str,
        ok: fn(VmPower) -> bool,
    ) -> Result<(), HypervisorError> {
        let power = self.power(name, dom)?;
        if ok(power) {
            Ok(())
        } else {
            Err(HypervisorError::WrongState {
                name: name.to_string(),
                op,
                power,
            })
        }
    }
}

impl Hypervisor for LibvirtHypervisor {
    fn define(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        spec.validate()?;
        match self.conn.lookup_domain_by_name(spec.name.as_str()) {
            Ok(_) => {
                return Err(HypervisorError::AlreadyExists {
                    name: spec.name.to_string(),
                })
            }
            Err(e) if is_code(&e, ErrorNumber::NoDomain) => {}
            Err(e) => return Err(self.classify("look up", &spec.name, e)),
        }
        let made = create_disk_files(&spec.disks)?;
        self.conn
            .define_domain_xml(&domain_xml(spec))
            .map(drop)
            .map_err(|e| {
                // Leave nothing behind for a VM that does not exist.
                for path in &made {
                    let _ = std::fs::remove_file(path);
                }
                self.classify("define", &spec.name, e)
            })
    }

    fn start(&self, name: &VmName) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        self.require(name, &dom, "start", |p| !p.is_active())?;
        dom.create()
            .map(drop)
            .map_err(|e| self.classify("start", name, e))
    }

    fn shutdown(
        &self,
        name: &VmName,
        timeout: Duration,
    ) -> Result<ShutdownOutcome, HypervisorError> {
        let dom = self.domain(name)?;
        self.require(name, &dom, "shut down", |p| p == VmPower::Running)?;
        dom.shutdown()
            .map_err(|e| self.classify("shut down", name, e))?;
        let deadline = Instant::now() + timeout;
        loop {
            if !self.power(name, &dom)?.is_active() {
                return Ok(ShutdownOutcome::Graceful);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(SHUTDOWN_POLL.min(deadline - Instant::now()));
        }
        match dom.destroy() {
            Ok(()) => Ok(ShutdownOutcome::Forced),
            // It went off between our last look and the destroy.
            Err(e) if is_code(&e, ErrorNumber::OperationInvalid) => Ok(ShutdownOutcome::Graceful),
            Err(e) => Err(self.classify("destroy", name, e)),
        }
    }

    fn destroy(&self, name: &VmName) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        self.require(name, &dom, "destroy", VmPower::is_active)?;
        dom.destroy().map_err(|e| self.classify("destroy", name, e))
    }

    fn reboot(&self, name: &VmName) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        self.require(name, &dom, "reboot", |p| p == VmPower::Running)?;
        dom.reboot(sys::VIR_DOMAIN_REBOOT_DEFAULT)
            .map_err(|e| self.classify("reboot", name, e))
    }

    fn undefine(&self, name: &VmName) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        // Undefining a running domain would leave it running as a transient one, which
        // nobody asked for.
        self.require(name, &dom, "undefine", |p| !p.is_active())?;
        dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            .map_err(|e| self.classify("undefine", name, e))
    }

    fn state(&self, name: &VmName) -> Result<VmPower, HypervisorError> {
        let dom = self.domain(name)?;
        self.power(name, &dom)
    }

    fn list(&self) -> Result<Vec<DomainInfo>, HypervisorError> {
        let host = |source| HypervisorError::Connect {
            uri: self.uri.clone(),
            source,
        };
        let mut out = Vec::new();
        for dom in self.conn.list_all_domains(0).map_err(host)? {
            let name = dom.name().map_err(host)?;
            // A domain undefined between the list and this look is simply gone.
            match dom.state() {
                Ok((state, _)) => out.push(DomainInfo {
                    name,
                    power: power_of(state),
                }),
                Err(e) if is_code(&e, ErrorNumber::NoDomain) => {}
                Err(e) => return Err(host(e)),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn snapshot_create(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        if Domain::lookup_snapshot_by_name(&dom, snapshot.as_str(), 0).is_ok() {
            return Err(HypervisorError::SnapshotExists {
                name: name.to_string(),
                snapshot: snapshot.to_string(),
            });
        }
        dom.create_snapshot_xml(&snapshot_xml(snapshot), 0)
            .map(drop)
            .map_err(|e| self.classify("snapshot", name, e))
    }

    fn snapshot_list(&self, name: &VmName) -> Result<Vec<SnapshotName>, HypervisorError> {
        let dom = self.domain(name)?;
        let snaps = dom
            .list_all_snapshots(0)
            .map_err(|e| self.classify("list snapshots of", name, e))?;
        let mut out = Vec::new();
        for snap in snaps {
            let snap_name = snap
                .name()
                .map_err(|e| self.classify("list snapshots of", name, e))?;
            // Snapshots made outside COSM may have names `SnapshotName` refuses; COSM
            // cannot address those, so it does not list them.
            if let Ok(n) = SnapshotName::new(&snap_name) {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    fn snapshot_revert(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        let snap = self.snapshot(name, &dom, snapshot)?;
        snap.revert(0)
            .map_err(|e| self.classify("revert to a snapshot", name, e))
    }

    fn snapshot_delete(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
    ) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        let snap = self.snapshot(name, &dom, snapshot)?;
        snap.delete(0)
            .map_err(|e| self.classify("delete a snapshot of", name, e))
    }

    /// Peer-to-peer: this host's libvirtd connects to `dest_uri` itself (e.g.
    /// `qemu+tcp://192.0.2.12/system`), so the caller needs no route to the destination,
    /// only to its own daemon; QEMU's migration stream goes to the destination's
    /// `migration_address`. Disks are not copied: both hosts must see the VM's disk files
    /// at the same paths (shared storage). libvirt cannot tell shared from local files and
    /// refuses a local qcow2 as "unsafe", so that check is turned off (`UNSAFE`); a VM with
    /// snapshots is refused by libvirt.
    fn migrate(&self, name: &VmName, dest_uri: &str, live: bool) -> Result<(), HypervisorError> {
        let dom = self.domain(name)?;
        let running = self.power(name, &dom)?.is_active();
        let mut flags = sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE
            | sys::VIR_MIGRATE_UNSAFE;
        if !running {
            flags |= sys::VIR_MIGRATE_OFFLINE;
        } else if live {
            flags |= sys::VIR_MIGRATE_LIVE;
        }
        dom.migrate_to_uri(dest_uri, flags, None, 0)
            .map_err(|e| self.classify("migrate", name, e))
    }

    fn console_tail(&self, name: &VmName, lines: usize) -> Result<Vec<String>, HypervisorError> {
        let dom = self.domain(name)?;
        let xml = dom
            .xml_desc(0)
            .map_err(|e| self.classify("read the XML of", name, e))?;
        let path = console_path(&xml).ok_or_else(|| HypervisorError::NoConsole {
            name: name.to_string(),
        })?;
        tail_lines(&path, lines)
    }

    fn host_info(&self) -> Result<HostInfo, HypervisorError> {
        let info = self
            .conn
            .node_info()
            .map_err(|source| HypervisorError::HostInfo {
                uri: self.uri.clone(),
                source,
            })?;
        Ok(HostInfo {
            vcpus: info.cpus,
            // libvirt reports KiB.
            memory_mib: info.memory / 1024,
        })
    }
}

/// Creates the qcow2 files of `disks` that do not exist yet; returns the ones it made.
/// An existing file is the VM's own disk from before (a redefinition) and is kept.
fn create_disk_files(disks: &[DiskSpec]) -> Result<Vec<&Path>, HypervisorError> {
    let mut made = Vec::new();
    for disk in disks {
        if disk.path.exists() {
            continue;
        }
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2"]);
        match &disk.source {
            DiskSource::Blank { size_bytes } => {
                cmd.arg(&disk.path).arg(size_bytes.to_string());
            }
            // The base keeps its bytes: the overlay records it as a read-only backing file.
            DiskSource::Overlay { base } => {
                cmd.arg("-b")
                    .arg(base)
                    .args(["-F", "qcow2"])
                    .arg(&disk.path);
            }
        }
        let failed = |detail: String| {
            for path in &made {
                let _ = std::fs::remove_file(path);
            }
            HypervisorError::Disk {
                path: disk.path.clone(),
                detail,
            }
        };
        let out = cmd.output().map_err(|e| {
            failed(format!(
                "cannot run qemu-img ({e}); install the Debian package qemu-utils"
            ))
        })?;
        if !out.status.success() {
            return Err(failed(format!(
                "qemu-img failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        made.push(disk.path.as_path());
    }
    Ok(made)
}

/// The last `lines` lines of the file at `path`, reading at most `CONSOLE_READ_LIMIT`
/// bytes from its end. A file that does not exist yet is a console nothing was written to.
pub(crate) fn tail_lines(path: &Path, lines: usize) -> Result<Vec<String>, HypervisorError> {
    let lines = lines.min(MAX_CONSOLE_LINES);
    let io = |source| HypervisorError::Console {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let start = len.saturating_sub(CONSOLE_READ_LIMIT);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(CONSOLE_READ_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0); // cut in the middle
    }
    let from = all.len().saturating_sub(lines);
    Ok(all[from..]
        .iter()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_gives_the_last_lines_and_nothing_for_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert!(tail_lines(&path, 5).unwrap().is_empty());
        let text: String = (1..=20).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail_lines(&path, 2).unwrap(), ["line 19", "line 20"]);
        assert_eq!(tail_lines(&path, 100).unwrap().len(), 20);
        assert!(tail_lines(&path, 0).unwrap().is_empty());
    }

    #[test]
    fn a_long_log_is_read_from_its_end_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let line = "x".repeat(99);
        let text: String = (0..30_000).map(|i| format!("{i:05}{line}\n")).collect();
        assert!(text.len() as u64 > CONSOLE_READ_LIMIT);
        std::fs::write(&path, text).unwrap();
        let tail = tail_lines(&path, 3).unwrap();
        assert_eq!(tail.len(), 3);
        assert!(tail[2].starts_with("29999"), "{}", tail[2]);
        let most = tail_lines(&path, usize::MAX).unwrap();
        assert!(most.len() <= MAX_CONSOLE_LINES);
        assert!(most.iter().all(|l| l.len() == 104), "no partial first line");
    }
}
