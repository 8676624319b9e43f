//! Tenant-network test parts (issue 14): guests that are network namespaces plugged into a
//! rack host as a port, and the probes the tests send between them (ping, TCP, ARP seen by
//! tcpdump). A namespace guest stands in for a VM where what runs inside does not matter
//! and a QEMU guest would cost ten seconds of TCG boot: its eth0 is one end of a veth pair
//! whose other end, in the host's namespace, is the port's device (`cp` + MAC), exactly
//! where a VM's tap would be.

use crate::netns::{require_root_tools, NetNs};
use crate::rack::Host;
use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP server answering every connection with one line: `python3`, which every test
/// machine has, so no netcat flavour matters.
const TCP_SERVER: &str = "import socket,sys\n\
s=socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('0.0.0.0',int(sys.argv[1])))\n\
s.listen(16)\n\
while True:\n    c,_=s.accept()\n    c.sendall(b'cosm\\n')\n    c.close()\n";

/// Connects and reads the server's line within 2 s: exit 0 only then.
const TCP_CLIENT: &str = "import socket,sys\n\
s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2)\n\
sys.exit(0 if s.recv(16)==b'cosm\\n' else 1)\n";

/// A namespace plugged into a host as one port.
#[derive(Debug)]
pub struct NsGuest {
    pub ns: NetNs,
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The port's device in the host's namespace.
    pub device: String,
}

impl NsGuest {
    /// Plugs a new namespace into `host` as `port` (a `Port` as the API returns it): the
    /// veth end in the host is named the port's device and left up for the host's agent to
    /// put on the network's bridge; the guest's `eth0` has the port's MAC and address
    /// (`/prefix`) and the network's `mtu`.
    pub fn plug(
        host: &Host,
        port: &serde_json::Value,
        prefix: u8,
        mtu: u16,
    ) -> anyhow::Result<NsGuest> {
        require_root_tools(&["ip", "ping", "python3", "tcpdump"]);
        let mac = port["mac"]
            .as_str()
            .context("port without mac")?
            .to_string();
        let ip: Ipv4Addr = port["ip"]
            .as_str()
            .context("port without ip")?
            .parse()
            .context("port ip")?;
        let device = port["device"]
            .as_str()
            .context("port without device")?
            .to_string();
        let ns = NetNs::new("g")?;
        let out = Command::new("ip")
            .args(["link", "add", &device, "netns", host.ns.name()])
            .args(["type", "veth", "peer", "name", "eth0", "netns", ns.name()])
            .output()?;
        if !out.status.success() {
            bail!(
                "cannot make the veth pair for port {mac}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mtu = mtu.to_string();
        let cidr = format!("{ip}/{prefix}");
        for (in_ns, args) in [
            (&ns, vec!["link", "set", "eth0", "address", &mac]),
            (&ns, vec!["link", "set", "eth0", "mtu", &mtu]),
            (&ns, vec!["addr", "add", &cidr, "dev", "eth0"]),
            (&ns, vec!["link", "set", "eth0", "up"]),
            (&host.ns, vec!["link", "set", &device, "mtu", &mtu]),
            (&host.ns, vec!["link", "set", &device, "up"]),
        ] {
            let mut c = in_ns.command("ip");
            c.args(&args);
            in_ns.run_ok(c)?;
        }
        Ok(NsGuest {
            ns,
            mac,
            ip,
            device,
        })
    }

    /// Whether one ping to `to` is answered within 1 s.
    pub fn ping(&self, to: Ipv4Addr) -> anyhow::Result<bool> {
        let mut c = self.ns.command("ping");
        c.args(["-n", "-c", "1", "-W", "1", &to.to_string()]);
        Ok(self.ns.run(c)?.status.success())
    }

    /// Like [`NsGuest::ping`] from a given source address (which the guest must hold).
    pub fn ping_from(&self, from: Ipv4Addr, to: Ipv4Addr) -> anyhow::Result<bool> {
        let mut c = self.ns.command("ping");
        c.args(["-n", "-c", "1", "-W", "1", "-I", &from.to_string()])
            .arg(to.to_string());
        Ok(self.ns.run(c)?.status.success())
    }

    /// Starts a TCP server on `port` (killed with the namespace).
    pub fn listen(&self, port: u16) -> anyhow::Result<()> {
        let mut c = self.ns.command("python3");
        c.args(["-c", TCP_SERVER, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.ns.spawn(c)?;
        Ok(())
    }

    /// Whether a TCP connection to `to:port` gets the server's line within 2 s.
    pub fn tcp(&self, to: Ipv4Addr, port: u16) -> anyhow::Result<bool> {
        let mut c = self.ns.command("python3");
        c.args(["-c", TCP_CLIENT, &to.to_string(), &port.to_string()]);
        Ok(self.ns.run(c)?.status.success())
    }

    /// Runs the guest's command `ip args…`, failing on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.ns.command("ip");
        c.args(args);
        self.ns.run_ok(c)
    }

    /// Starts capturing ARP on eth0 for `secs` seconds; [`Capture::lines`] gives what it
    /// saw.
    pub fn capture_arp(&self, secs: u32) -> anyhow::Result<Capture> {
        let file = tempfile::NamedTempFile::new()?;
        let mut c = self.ns.command("timeout");
        c.args([
            &secs.to_string(),
            "tcpdump",
            "-i",
            "eth0",
            "-n",
            "-l",
            "arp",
        ])
        .stdout(file.reopen()?);
        let err = tempfile::NamedTempFile::new()?;
        c.stderr(err.reopen()?);
        let pid = self.ns.spawn(c)?;
        // tcpdump says "listening on" once its socket is open: only from then on is a packet
        // sure to be seen (on a busy machine it can take a second or more to get there).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = std::fs::read_to_string(err.path())?;
            if said.contains("listening on") {
                break;
            }
            if Instant::now() > deadline || self.ns.try_wait(pid)?.is_some() {
                let _ = self.ns.kill(pid);
                anyhow::bail!(
                    "tcpdump in {} did not start listening: {said}",
                    self.ns.name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Capture {
            file,
            pid,
            until: Instant::now() + Duration::from_secs(u64::from(secs) + 2),
        })
    }
}

/// A running `tcpdump`.
#[derive(Debug)]
pub struct Capture {
    file: tempfile::NamedTempFile,
    pid: u32,
    until: Instant,
}

impl Capture {
    /// Waits for the capture to end and returns the packets it printed, one per line.
    pub fn lines(self, guest: &NsGuest) -> anyhow::Result<Vec<String>> {
        while guest.ns.try_wait(self.pid)?.is_none() {
            if Instant::now() > self.until {
                guest.ns.kill(self.pid)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(std::fs::read_to_string(self.file.path())?
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// Polls `check` every 200 ms until it holds; returns how long that took, or fails after
/// `timeout` naming `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The rules of COSM's nftables tables on a host: `(family, chain, handle)` each.
pub fn cosm_rules(host: &Host) -> anyhow::Result<Vec<(String, String, u64)>> {
    let mut c = host.ns.command("nft");
    c.args(["-j", "list", "ruleset"]);
    let out = host.ns.run_ok(c)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
    let mut rules = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let r = &item["rule"];
        if r.is_object() && r["table"] == "cosm" {
            rules.push((
                r["family"].as_str().unwrap_or_default().to_string(),
                r["chain"].as_str().unwrap_or_default().to_string(),
                r["handle"].as_u64().unwrap_or_default(),
            ));
        }
    }
    Ok(rules)
}

/// Runs `program args…` in the host's namespace, failing on a non-zero exit.
pub fn on_host(host: &Host, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut c = host.ns.command(program);
    c.args(args);
    host.ns.run_ok(c)
}

/// The messages of the host's `network` timeline entries, oldest first.
pub fn network_events(rack: &crate::rack::Rack, host: usize) -> Vec<String> {
    rack.timeline(&rack.hosts[host].mac)
        .into_iter()
        .filter(|(kind, _)| kind == "network")
        .map(|(_, m)| m)
        .collect()
}
