//! Network namespaces for end-to-end tests of the protocol servers (DHCP, TFTP, …).
//!
//! A [`NetNs`] is a namespace of its own with `lo` up and IPv6 disabled; [`NetNs::link_pair`]
//! joins two of them with a veth pair. Processes run inside with [`NetNs::command`] (which is
//! `ip netns exec NAME program …`), either to completion with a timeout ([`NetNs::run`]) or in
//! the background ([`NetNs::spawn`]). Dropping a `NetNs` kills, by PID, every process started
//! through it and every other process still inside it (a daemon that forked, like
//! `dhclient`), then deletes the namespace; the veth ends inside go with it.
//!
//! Needs root. Tests call [`require_root_tools`] first, which panics with the Debian package
//! to install rather than skipping. Addresses: use TEST-NET-2/3 (198.51.100.0/24,
//! 203.0.113.0/24) only; nothing here routes out of the namespaces.

use anyhow::{bail, Context};
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// How long [`NetNs::run`] lets a command take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest namespace name; the veth ends inside are named `<name>-<k>` (k < 100), which
/// keeps them within the kernel's 15-character limit for interface names.
const MAX_NAME: usize = 12;
const MAX_LINKS: usize = 100;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by a test; deleted, with its processes, on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    children: Mutex<Vec<Child>>,
    interfaces: Mutex<Vec<String>>,
}

impl NetNs {
    /// Creates `<prefix><pid>n<counter>` (the prefix is cut to keep the name within 12
    /// characters; ASCII letters and digits only), brings `lo` up and disables IPv6.
    pub fn new(prefix: &str) -> anyhow::Result<NetNs> {
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("namespace prefix {prefix:?} must be ASCII letters and digits");
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("{}n{n}", std::process::id());
        if suffix.len() > MAX_NAME {
            bail!("namespace counter exhausted ({suffix} is longer than {MAX_NAME} characters)");
        }
        let keep = prefix.len().min(MAX_NAME - suffix.len());
        let name = format!("{}{suffix}", &prefix[..keep]);
        run_checked(ip(&["netns", "add", &name]), RUN_TIMEOUT)?;
        // From here on Drop deletes the namespace, also if the set-up below fails.
        let ns = NetNs {
            name,
            children: Mutex::default(),
            interfaces: Mutex::default(),
        };
        run_checked(
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]),
            RUN_TIMEOUT,
        )?;
        let mut sysctl = ns.command("sysctl");
        sysctl.args([
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        run_checked(sysctl, RUN_TIMEOUT).context("cannot disable IPv6 in the namespace")?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The veth ends in this namespace, in the order [`NetNs::link_pair`] made them
    /// (`<name>-0`, `<name>-1`, …).
    pub fn interfaces(&self) -> Vec<String> {
        self.interfaces.lock().expect("interfaces lock").clone()
    }

    fn next_interface(&self) -> anyhow::Result<String> {
        let list = self.interfaces.lock().expect("interfaces lock");
        if list.len() >= MAX_LINKS {
            bail!("namespace {} already has {MAX_LINKS} links", self.name);
        }
        Ok(format!("{}-{}", self.name, list.len()))
    }

    /// Joins `a` and `b` with a veth pair, one end in each, created directly inside the
    /// namespaces. Addresses are CIDR (`"198.51.100.1/24"`); both ends end up up.
    pub fn link_pair(a: &NetNs, a_addr: &str, b: &NetNs, b_addr: &str) -> anyhow::Result<()> {
        for addr in [a_addr, b_addr] {
            if !addr.contains('/') {
                bail!("address {addr:?} must be CIDR, e.g. 198.51.100.1/24");
            }
        }
        let a_if = a.next_interface()?;
        let mut b_if = b.next_interface()?;
        if std::ptr::eq(a, b) {
            // Both ends in one namespace: the second takes the next index.
            let k = a.interfaces().len() + 1;
            if k >= MAX_LINKS {
                bail!("namespace {} already has {MAX_LINKS} links", a.name);
            }
            b_if = format!("{}-{k}", b.name);
        }
        run_checked(
            ip(&[
                "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if,
                "netns", &b.name,
            ]),
            RUN_TIMEOUT,
        )?;
        a.interfaces
            .lock()
            .expect("interfaces lock")
            .push(a_if.clone());
        b.interfaces
            .lock()
            .expect("interfaces lock")
            .push(b_if.clone());
        for (ns, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
            run_checked(
                ip(&["-n", &ns.name, "addr", "add", addr, "dev", ifname]),
                RUN_TIMEOUT,
            )?;
            run_checked(
                ip(&["-n", &ns.name, "link", "set", ifname, "up"]),
                RUN_TIMEOUT,
            )?;
        }
        Ok(())
    }

    /// `ip netns exec NAME program`: add arguments, then give it to [`NetNs::run`] or
    /// [`NetNs::spawn`]. `ip netns exec` execs the program, so the PID is the program's.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Starts `cmd` in the background and keeps it: Drop kills it (SIGKILL) and reaps it.
    /// Stdio is whatever `cmd` says (inherited by default).
    pub fn spawn(&self, mut cmd: Command) -> anyhow::Result<u32> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", describe(&cmd)))?;
        let pid = child.id();
        self.children.lock().expect("children lock").push(child);
        Ok(pid)
    }

    /// Whether a process from [`NetNs::spawn`] has exited (`Some(status)`), without waiting.
    pub fn try_wait(&self, pid: u32) -> anyhow::Result<Option<ExitStatus>> {
        let mut children = self.children.lock().expect("children lock");
        let Some(child) = children.iter_mut().find(|c| c.id() == pid) else {
            bail!("process {pid} was not started by namespace {}", self.name);
        };
        Ok(child.try_wait()?)
    }

    /// SIGKILLs and reaps a process from [`NetNs::spawn`] before the namespace goes.
    pub fn kill(&self, pid: u32) -> anyhow::Result<ExitStatus> {
        let mut children = self.children.lock().expect("children lock");
        let Some(i) = children.iter().position(|c| c.id() == pid) else {
            bail!("process {pid} was not started by namespace {}", self.name);
        };
        let mut child = children.remove(i);
        let _ = child.kill();
        Ok(child.wait()?)
    }

    /// Runs `cmd` to completion (stdin closed, output captured) within [`RUN_TIMEOUT`].
    /// A non-zero exit is not an error here: look at `status`.
    pub fn run(&self, cmd: Command) -> anyhow::Result<Output> {
        run_timeout(cmd, RUN_TIMEOUT)
    }

    /// [`NetNs::run`] with a timeout of your choice; on timeout the command is killed and
    /// the error names it.
    pub fn run_timeout(&self, cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
        run_timeout(cmd, timeout)
    }

    /// [`NetNs::run`] that also fails on a non-zero exit (the error shows stderr) and
    /// returns stdout.
    pub fn run_ok(&self, cmd: Command) -> anyhow::Result<String> {
        run_checked(cmd, RUN_TIMEOUT)
    }

    /// PIDs of every process inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let out = run_checked(ip(&["netns", "pids", &self.name]), RUN_TIMEOUT)?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Processes that left our hands (daemons that forked) but live in the namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids().unwrap_or_default();
            if pids.is_empty() || Instant::now() > deadline {
                if !pids.is_empty() {
                    eprintln!("netns {}: processes {pids:?} survived SIGKILL", self.name);
                }
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = run_checked(ip(&["netns", "del", &self.name]), RUN_TIMEOUT) {
            eprintln!("netns {}: cannot delete it: {e:#}", self.name);
        }
    }
}

/// Panics unless the tests run as root and every tool is on PATH, naming the Debian package
/// that brings a missing tool. Network-namespace tests never skip silently.
pub fn require_root_tools(tools: &[&str]) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert!(
        uid == "0",
        "this test creates network namespaces and needs root (effective uid is {uid:?}); \
         run the test suite as root"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        if std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            continue;
        }
        let elsewhere = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.is_file());
        if let Some(p) = elsewhere {
            panic!(
                "`{tool}` is installed at {} but its folder is not on PATH; add it to PATH",
                p.display()
            );
        }
        match debian_package(tool) {
            Some(package) => panic!(
                "`{tool}` is missing: install the Debian package {package} \
                 (`apt-get install {package}`; `make deps` installs it)"
            ),
            None => panic!(
                "`{tool}` is missing: install the Debian package that ships it, and add that \
                 package to APT_PACKAGES in the Makefile so that `make deps` installs it"
            ),
        }
    }
}

/// The Debian package that ships `tool`.
fn debian_package(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "ip" | "ss" | "bridge" => "iproute2",
        "ping" => "iputils-ping",
        "nft" => "nftables",
        "dhclient" => "isc-dhcp-client",
        "dhcrelay" => "isc-dhcp-relay",
        "perfdhcp" => "kea-admin",
        "kea-dhcp4" => "kea-dhcp4-server",
        "dnsmasq" => "dnsmasq-base",
        "taskset" => "util-linux",
        "sysctl" => "procps",
        "tcpdump" => "tcpdump",
        "curl" => "curl",
        "qemu-system-x86_64" => "qemu-system-x86",
        "python3" => "python3",
        "sleep" | "cat" | "false" | "timeout" => "coreutils",
        "sh" => "dash",
        "mmdebstrap" => "mmdebstrap",
        "apt-ftparchive" => "apt-utils",
        "zstd" => "zstd",
        "sfdisk" => "fdisk",
        "debugfs" | "mkfs.ext4" => "e2fsprogs",
        "mkfs.fat" => "dosfstools",
        "mcopy" => "mtools",
        _ => return None,
    })
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    format!("`{s}`")
}

/// Runs `cmd` with stdin closed and output captured; kills it after `timeout`.
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    let what = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let out_rx = drain(child.stdout.take());
    let err_rx = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_rx
                .recv_timeout(Duration::from_millis(200))
                .unwrap_or_default();
            bail!(
                "{what} did not finish within {timeout:?} and was killed; stderr so far:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A process the command left behind may hold the pipes open: wait a little, not forever.
    let grace = Duration::from_secs(5);
    let stdout = out_rx
        .recv_timeout(grace)
        .with_context(|| format!("{what} exited but something it started keeps stdout open"))?;
    let stderr = err_rx
        .recv_timeout(grace)
        .with_context(|| format!("{what} exited but something it started keeps stderr open"))?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// [`run_timeout`] that fails on a non-zero exit (showing stderr) and returns stdout.
pub fn run_checked(cmd: Command, timeout: Duration) -> anyhow::Result<String> {
    let what = describe(&cmd);
    let out = run_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
