//! Network namespaces for the DHCP shell tests: the same fixture as `cosm-e2e`'s `netns`
//! (which this crate cannot depend on: it pulls in the agent and libvirt), cut to what the
//! tests here use.
//!
//! A [`NetNs`] is a namespace of its own with `lo` up and IPv6 disabled (or on, with
//! [`NetNs::new_ipv6`]); [`NetNs::link_pair`]
//! joins two with a veth pair. [`NetNs::spawn`] starts a process inside (`ip netns exec`,
//! which execs, so the PID is the program's). Dropping a `NetNs` kills, by PID, every
//! process started through it and every other process still inside it, then deletes the
//! namespace. [`enter`] moves the calling thread into the namespace, so that a
//! server run in-process binds its sockets there.
//!
//! Needs root: [`require_root_tools`] panics with the Debian package to install rather
//! than skipping. Addresses: TEST-NET-1/2 and IPv6 link-local only; nothing routes out of
//! the namespaces.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// How long a helper command may take.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by a test; deleted, with its processes, on drop.
#[derive(Debug)]
pub(crate) struct NetNs {
    name: String,
    children: Mutex<Vec<Child>>,
    interfaces: Mutex<Vec<String>>,
}

impl NetNs {
    /// Creates `<prefix><pid>n<counter>` (at most 12 characters, so that the veth ends
    /// `<name>-<k>` fit the kernel's 15), brings `lo` up and disables IPv6.
    pub(crate) fn new(prefix: &str) -> NetNs {
        Self::create(prefix, false)
    }

    /// Like [`NetNs::new`], but with IPv6 on and duplicate address detection off, so the
    /// link-local addresses of the veth ends made later are usable at once (the router
    /// advertisement tests).
    pub(crate) fn new_ipv6(prefix: &str) -> NetNs {
        Self::create(prefix, true)
    }

    fn create(prefix: &str, ipv6: bool) -> NetNs {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("{}n{n}", std::process::id());
        let keep = prefix.len().min(12usize.saturating_sub(suffix.len()));
        let name = format!("{}{suffix}", &prefix[..keep]);
        run_ok(ip(&["netns", "add", &name]));
        // From here on Drop deletes the namespace, also if the set-up below fails.
        let ns = NetNs {
            name,
            children: Mutex::default(),
            interfaces: Mutex::default(),
        };
        run_ok(ip(&["-n", &ns.name, "link", "set", "lo", "up"]));
        let mut sysctl = ns.command("sysctl");
        if ipv6 {
            sysctl.args([
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=0",
                "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]);
        } else {
            sysctl.args([
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
        }
        run_ok(sysctl);
        ns
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The veth ends in this namespace, in the order [`NetNs::link_pair`] made them.
    pub(crate) fn interfaces(&self) -> Vec<String> {
        self.interfaces.lock().unwrap().clone()
    }

    /// Joins `a` and `b` with a veth pair created directly inside them; addresses are CIDR
    /// (`""` for none); both ends end up up.
    pub(crate) fn link_pair(a: &NetNs, a_addr: &str, b: &NetNs, b_addr: &str) {
        let a_if = format!("{}-{}", a.name, a.interfaces().len());
        let b_if = format!("{}-{}", b.name, b.interfaces().len());
        run_ok(ip(&[
            "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
            &b.name,
        ]));
        a.interfaces.lock().unwrap().push(a_if.clone());
        b.interfaces.lock().unwrap().push(b_if.clone());
        for (ns, ifname, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
            if !addr.is_empty() {
                run_ok(ip(&["-n", &ns.name, "addr", "add", addr, "dev", ifname]));
            }
            run_ok(ip(&["-n", &ns.name, "link", "set", ifname, "up"]));
        }
    }

    /// `ip netns exec NAME program`: add arguments, then [`NetNs::spawn`] or [`run_ok`] it.
    pub(crate) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Starts `cmd` in the background; Drop kills (SIGKILL) and reaps it.
    pub(crate) fn spawn(&self, mut cmd: Command) -> u32 {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)));
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// SIGKILLs and reaps a process from [`NetNs::spawn`], by its PID.
    pub(crate) fn kill(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        let i = children
            .iter()
            .position(|c| c.id() == pid)
            .unwrap_or_else(|| panic!("process {pid} was not started in {}", self.name));
        let mut child = children.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }

    fn pids(&self) -> Vec<u32> {
        run_timeout(ip(&["netns", "pids", &self.name]), RUN_TIMEOUT)
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
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
        // Processes that left our hands (a dhclient -r helper) but live in the namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
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
        match run_timeout(ip(&["netns", "del", &self.name]), RUN_TIMEOUT) {
            Ok(o) if o.status.success() => {}
            other => eprintln!("netns {}: cannot delete it: {other:?}", self.name),
        }
    }
}

/// Panics unless the tests run as root and every tool is on PATH, naming the Debian
/// package that brings a missing tool. These tests never skip silently.
pub(crate) fn require_root_tools(tools: &[&str]) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(
        euid,
        Some("0"),
        "this test creates network namespaces and needs root; run the test suite as root"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        if std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            continue;
        }
        let package = match *tool {
            "ip" => "iproute2",
            "dhclient" => "isc-dhcp-client",
            "perfdhcp" => "kea-admin",
            "taskset" => "util-linux",
            "sysctl" => "procps",
            "rdisc6" => "ndisc6",
            _ => "that ships it",
        };
        panic!("`{tool}` is missing: install the Debian package {package} (`make deps` does)");
    }
}

/// Moves the calling thread into namespace `name` (setns): sockets it opens from now on are
/// in there. Call it on a thread of its own.
pub(crate) fn enter(name: &str) {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("cannot join {path}: {e}"));
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
pub(crate) fn run_timeout(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let what = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let out_rx = drain(child.stdout.take());
    let err_rx = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what} did not finish within {timeout:?} and was killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Something the command left behind may hold the pipes open: wait a little, not forever.
    let grace = Duration::from_secs(5);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
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

/// Runs `cmd` within [`RUN_TIMEOUT`]; panics on a non-zero exit (showing stderr); returns
/// stdout.
pub(crate) fn run_ok(cmd: Command) -> String {
    let what = describe(&cmd);
    let out = run_timeout(cmd, RUN_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
