//! A small world of network namespaces for the driver's tests: a fabric bridge (the
//! underlay, 192.0.2.0/24), hosts with `eth0` on it, and guests joined to a host by a veth
//! pair whose host end is named `port_device(mac)`. The driver runs in a host through
//! `ip netns exec <host> cosm-sdn-apply`. Dropping the world kills the processes it started
//! (by PID) and deletes its namespaces, also when a test panics.
//!
//! Needs root, `ip`, `bridge`, `nft`, `ping`, `nc` and `timeout`: [`World::new`] panics with
//! the missing tool rather than skipping.

#![allow(dead_code, unreachable_pub)]

use cosm_wire::{HostNetworks, MacAddr};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long one command may take.
const TIMEOUT_SECS: &str = "30";

#[derive(Debug)]
pub struct World {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub vtep: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct Guest {
    pub ns: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
}

/// Runs `args` (program first) under `timeout`, returning (success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg(TIMEOUT_SECS)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `args` and panics, with its output, if it fails.
pub fn must(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?} failed:\n{out}{err}");
    out
}

fn require_tools() {
    assert!(
        is_root(),
        "the cosm-sdn tests need root (network namespaces, nftables)"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("bridge", "iproute2"),
        ("nft", "nftables"),
        ("ping", "iputils-ping"),
        ("nc", "netcat-openbsd"),
        ("timeout", "coreutils"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is missing: install the Debian package {package}"
        );
    }
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective…"
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl World {
    /// A world with a fabric namespace holding the underlay bridge.
    pub fn new() -> World {
        require_tools();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("sdn{}x{n}", std::process::id());
        let mut w = World {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let fabric = w.namespace("f");
        must(&["ip", "-n", &fabric, "link", "add", "ubr", "type", "bridge"]);
        must(&["ip", "-n", &fabric, "link", "set", "ubr", "up"]);
        w
    }

    fn namespace(&mut self, role: &str) -> String {
        let name = format!("{}{role}", self.prefix);
        must(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "netns",
            "exec",
            &name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        name
    }

    /// Host `k` (1, 2, …): `eth0` = 192.0.2.k/24 on the fabric.
    pub fn host(&mut self, k: u8) -> Host {
        let ns = self.namespace(&format!("h{k}"));
        let fabric = format!("{}f", self.prefix);
        let up = format!("u{k}");
        must(&[
            "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &up,
            "netns", &fabric,
        ]);
        must(&[
            "ip", "-n", &fabric, "link", "set", &up, "master", "ubr", "up",
        ]);
        let vtep = Ipv4Addr::new(192, 0, 2, k);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{vtep}/24"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        Host { ns, vtep }
    }

    /// Guest `k` on `host`: its `eth0` has `mac` and `ip`/24 and MTU 1450; the host end is
    /// `port_device(mac)`, left down and outside any bridge for the driver to wire.
    pub fn guest(&mut self, k: u8, host: &Host, ip: Ipv4Addr) -> Guest {
        let ns = self.namespace(&format!("g{k}"));
        let mac: MacAddr = format!("52:54:00:00:00:{k:02x}").parse().expect("mac");
        let dev = cosm_wire::port_device(&mac);
        must(&[
            "ip", "link", "add", &dev, "netns", &host.ns, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        must(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            "address",
            &mac.to_string(),
            "mtu",
            "1450",
            "up",
        ]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        Guest { ns, mac, ip }
    }

    /// One reconcile pass on `host`; the changes it reports.
    pub fn apply(&self, host: &Host, desired: &HostNetworks) -> Vec<String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("desired-{n}.json"));
        std::fs::write(&path, serde_json::to_string(desired).expect("json")).expect("write");
        let out = must(&[
            "ip",
            "netns",
            "exec",
            &host.ns,
            env!("CARGO_BIN_EXE_cosm-sdn-apply"),
            "--vtep",
            &host.vtep.to_string(),
            "--dev",
            "eth0",
            path.to_str().expect("utf-8 path"),
        ]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?} is not a list: {e}"))
    }

    /// Starts `args` in `ns` in the background; Drop kills it.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children.push(child);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Whether one ping from `from` to `to` is answered, trying up to `tries` times (each waits
/// one second).
pub fn pings(from: &Guest, to: Ipv4Addr, tries: u32) -> bool {
    pings_from(from, None, to, tries)
}

/// Like [`pings`], with source address `source`.
pub fn pings_from(from: &Guest, source: Option<Ipv4Addr>, to: Ipv4Addr, tries: u32) -> bool {
    let to = to.to_string();
    let source = source.map(|s| s.to_string());
    for _ in 0..tries {
        let mut args = vec![
            "ip", "netns", "exec", &from.ns, "ping", "-n", "-c", "1", "-W", "1",
        ];
        if let Some(s) = &source {
            args.extend(["-I", s]);
        }
        args.push(&to);
        if run(&args).0 {
            return true;
        }
    }
    false
}

/// Whether a TCP connection from `from` to `to`:`port` is accepted within two seconds.
pub fn connects(from: &Guest, to: Ipv4Addr, port: u16) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        &from.ns,
        "nc",
        "-z",
        "-w",
        "2",
        &to.to_string(),
        &port.to_string(),
    ])
    .0
}

/// Waits (bounded) until `f` holds.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {limit:?}");
}
