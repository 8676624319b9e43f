//! A libvirtd of a test's own, inside a network namespace: the hypervisor of one virtual
//! host.
//!
//! [`PrivateLibvirtd::start`] runs `libvirtd --listen` in the namespace, in a mount
//! namespace of its own where `/run/libvirt`, `/var/lib/libvirt`, `/etc/libvirt`,
//! `/var/log/libvirt` and `/var/cache/libvirt` are bind-mounted from a temporary directory,
//! with its own pidfile. So several daemons run side by side on one machine, none touches
//! the machine's own libvirt, and two of them can migrate guests between each other: each
//! has its own `host_uuid` and hostname (libvirt refuses to migrate to "the same host"),
//! listens for libvirt clients on TCP at the namespace's address without authentication
//! (`qemu+tcp://ADDR/system`, [`PrivateLibvirtd::tcp_uri`]), and has QEMU take incoming
//! migrations on that address. Guests run as root with no relabelling and write their
//! console straight to files (no virtlogd).
//!
//! Dropping it destroys its guests (through libvirt, then by the pidfiles QEMU left) and
//! stops the daemon by PID. Needs root and libvirtd (Debian package
//! libvirt-daemon-system); [`require_libvirtd`] fails, never skips, naming what is missing.

use crate::netns::{run_checked, NetNs, RUN_TIMEOUT};
use anyhow::{bail, Context};
use cosm_hypervisor::{Hypervisor, LibvirtHypervisor, VmName};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The daemon's private directories (under its temporary directory) and where they are
/// mounted in its mount namespace.
const MOUNTS: [(&str, &str); 5] = [
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("etc", "/etc/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
];

/// How long the daemon may take to write its pidfile and open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One private libvirtd; see the module documentation.
#[derive(Debug)]
pub struct PrivateLibvirtd {
    dir: tempfile::TempDir,
    pid: Option<u32>,
    addr: Ipv4Addr,
    host_uuid: String,
    /// The network namespace it runs in: Drop signals a PID only while that PID is still a
    /// process of this namespace. A fenced host's daemon and guests die without removing
    /// their pidfiles, and PIDs are reused (pid_max may be 32768), so a stale pidfile could
    /// otherwise name another test's process.
    netns: String,
}

/// Fails unless we are root and libvirtd and QEMU are installed, naming the Debian package.
pub fn require_libvirtd() -> anyhow::Result<()> {
    crate::netns::require_root_tools(&["ip", "unshare"]);
    for (tool, package) in [
        ("libvirtd", "libvirt-daemon-system"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            bail!("`{tool}` is missing: install the Debian package {package} (`make deps` does)");
        }
    }
    Ok(())
}

impl PrivateLibvirtd {
    /// Starts a libvirtd inside `ns`, listening for clients and incoming migrations on
    /// `addr` (an address the namespace already has), and waits for its socket.
    pub fn start(ns: &NetNs, addr: Ipv4Addr) -> anyhow::Result<PrivateLibvirtd> {
        require_libvirtd()?;
        let host_uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .context("cannot read a fresh UUID from /proc/sys/kernel/random/uuid")?
            .trim()
            .to_string();
        // From here on Drop stops whatever started.
        let mut daemon = PrivateLibvirtd {
            dir: tempfile::Builder::new().prefix("cosm-libvirtd").tempdir()?,
            pid: None,
            addr,
            host_uuid,
            netns: ns.name().to_string(),
        };
        let root = daemon.dir.path().to_path_buf();
        let mut script = String::from("set -e; ");
        for (private, public) in MOUNTS {
            std::fs::create_dir_all(root.join(private))?;
            std::fs::create_dir_all(public)?;
            script += &format!(
                "mount --bind '{}' '{public}'; ",
                root.join(private).display()
            );
        }
        daemon.write_config()?;
        std::fs::create_dir_all(daemon.guest_dir())?;
        let pidfile = daemon.pidfile();
        // Its own hostname too: libvirt refuses a migration between two daemons that
        // report the same one.
        script += &format!(
            "hostname '{}'; exec libvirtd -d --listen -p '{}'",
            ns.name(),
            pidfile.display()
        );
        let mut cmd = ns.command("unshare");
        cmd.args(["-m", "-u", "--propagation", "private", "sh", "-c"])
            .arg(&script);
        run_checked(cmd, RUN_TIMEOUT).context("cannot start libvirtd")?;
        let socket = root.join("run/libvirt-sock");
        let deadline = Instant::now() + START_TIMEOUT;
        while daemon.pid.is_none() || !socket.exists() {
            daemon.pid = read_pid(&pidfile);
            if Instant::now() > deadline {
                bail!(
                    "libvirtd in {} did not come up within {START_TIMEOUT:?} (pid {:?}, socket {}); its log: {}",
                    ns.name(),
                    daemon.pid,
                    socket.display(),
                    root.join("log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// The machine's libvirt configuration without its guests, networks and pools, plus
    /// what makes this daemon a host of its own.
    fn write_config(&self) -> anyhow::Result<()> {
        let etc = self.dir.path().join("etc");
        run_checked(
            {
                let mut c = Command::new("cp");
                c.arg("-a").arg("/etc/libvirt/.").arg(&etc);
                c
            },
            RUN_TIMEOUT,
        )?;
        for sub in ["qemu", "qemu/networks/autostart", "storage/autostart"] {
            for entry in std::fs::read_dir(etc.join(sub)).into_iter().flatten() {
                let path = entry?.path();
                let guest_or_link = sub != "qemu" || path.extension().is_some_and(|e| e == "xml");
                if guest_or_link && !path.is_dir() {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let addr = self.addr;
        append(
            &etc.join("libvirtd.conf"),
            &format!(
                "host_uuid = \"{}\"\nlisten_tcp = 1\nlisten_tls = 0\nlisten_addr = \"{addr}\"\n\
                 auth_tcp = \"none\"\n",
                self.host_uuid
            ),
        )?;
        // QEMU's output into files (no virtlogd); guests as root with no relabelling, so
        // the test's scratch files stay its own; incoming migrations on our address.
        append(
            &etc.join("qemu.conf"),
            &format!(
                "stdio_handler = \"file\"\nuser = \"root\"\ngroup = \"root\"\n\
                 dynamic_ownership = 0\nsecurity_driver = \"none\"\n\
                 migration_address = \"{addr}\"\nmigration_host = \"{addr}\"\n"
            ),
        )
    }

    /// For local clients (tests, the host's agent): the daemon's unix socket.
    pub fn uri(&self) -> String {
        format!(
            "qemu+unix:///system?socket={}",
            self.dir.path().join("run/libvirt-sock").display()
        )
    }

    /// What another host's libvirtd migrates to: `qemu+tcp://ADDR/system`.
    pub fn tcp_uri(&self) -> String {
        format!("qemu+tcp://{}/system", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its `host_uuid`, unique per daemon.
    pub fn host_uuid(&self) -> &str {
        &self.host_uuid
    }

    /// The daemon's PID (from its pidfile).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// A directory for guests' files (kernels, disks, console logs), removed with the
    /// daemon. Guests get copies: libvirt may take over what a guest uses.
    pub fn guest_dir(&self) -> PathBuf {
        self.dir.path().join("guests")
    }

    /// The daemon's own log directory (`/var/log/libvirt` inside), with each guest's QEMU
    /// log under `qemu/`.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// A connection to it.
    pub fn connect(&self) -> anyhow::Result<LibvirtHypervisor> {
        LibvirtHypervisor::connect(&self.uri())
            .with_context(|| format!("cannot connect to {}", self.uri()))
    }

    /// The PID of a running guest's QEMU, from the pidfile libvirt keeps for it.
    pub fn guest_pid(&self, name: &str) -> Option<u32> {
        read_pid(&self.dir.path().join("run/qemu").join(format!("{name}.pid")))
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("libvirtd.pid")
    }
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        // Guests outlive their libvirtd, so they go first: through libvirt, then by the
        // pidfiles QEMU left, in case the daemon did not answer. A daemon that is already
        // dead (its host was fenced or crashed) is not asked: its socket file is still
        // there, but nobody answers.
        let ns = netns_id(&self.netns);
        let ours = |pid: u32| ns.is_some() && netns_id(&format!("/proc/{pid}/ns/net")) == ns;
        if self.pid.is_some_and(|pid| alive(pid) && ours(pid)) {
            if let Ok(hv) = LibvirtHypervisor::connect(&self.uri()) {
                for d in hv.list().unwrap_or_default() {
                    if let Ok(name) = VmName::new(&d.name) {
                        let _ = hv.destroy(&name);
                    }
                }
            }
        }
        let qemu_run = self.dir.path().join("run/qemu");
        for entry in std::fs::read_dir(qemu_run).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "pid") {
                if let Some(pid) = read_pid(&entry.path()).filter(|&pid| ours(pid)) {
                    stop(pid);
                }
            }
        }
        if let Some(pid) = self
            .pid
            .or_else(|| read_pid(&self.pidfile()))
            .filter(|&pid| ours(pid))
        {
            stop(pid);
        }
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut conf = std::fs::read_to_string(path).unwrap_or_default();
    conf.push('\n');
    conf += text;
    std::fs::write(path, conf).with_context(|| format!("cannot write {}", path.display()))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The identity (device, inode) of a network namespace: `path` is `/proc/PID/ns/net`, or a
/// namespace's name under `/run/netns`.
fn netns_id(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let path = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new("/run/netns").join(path)
    };
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Stops `pid` with SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
pub(crate) fn stop(pid: u32) {
    if !alive(pid) {
        return;
    }
    signal(pid, "-TERM");
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal(pid, "-KILL");
    }
}
