//! The DHCP shell taking a new configuration while it runs: ISC dhclient in one network
//! namespace, the server (in-process, through the crate's public API) in another.

mod netns;

use cosm_netboot::dhcp::server::{
    self, DhcpHandle, LeaseSink, Listen, ReconfigError, ReconfigReport,
};
use cosm_netboot::dhcp::{Boot, DhcpConfig, Hosts, Mode, Pool, Subnet, UnknownMacs};
use cosm_wire::{Lease, MacAddr};
use netns::{require_root_tools, run_ok, NetNs};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Leases kept in memory: the store's part, without a disk.
#[derive(Debug, Default)]
struct MemorySink {
    leases: Mutex<Vec<Lease>>,
}

impl LeaseSink for MemorySink {
    async fn persist(&self, lease: Lease) -> Result<(), String> {
        self.leases.lock().unwrap().push(lease);
        Ok(())
    }
    fn note(&self, _mac: MacAddr, _step: &str) {}
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn config(server_id: &str, cidr: &str, first: &str, last: &str, lease_secs: u32) -> DhcpConfig {
    DhcpConfig {
        mode: Mode::Authoritative,
        server_id: ip(server_id),
        subnets: vec![Subnet {
            network: ip(cidr),
            prefix_len: 24,
            pools: vec![Pool {
                first: ip(first),
                last: ip(last),
            }],
            routers: vec![ip(server_id)],
            dns: vec![ip(server_id)],
            domain: None,
            mtu: None,
            lease_time_secs: lease_secs,
            relays: vec![],
        }],
        unknown_macs: UnknownMacs::Discover,
        max_unknown_leases: 1000,
        offer_hold_secs: 30,
        decline_quarantine_secs: 300,
        boot: Boot {
            tftp_server: ip(server_id),
            bios_file: "undionly.kpxe".into(),
            uefi_x64_file: "ipxe.efi".into(),
            uefi_arm64_file: None,
            http_base: format!("http://{server_id}:8080"),
        },
    }
}

fn listen(interface: Option<&str>) -> Listen {
    Listen {
        addr: "0.0.0.0:67".parse().unwrap(),
        interface: interface.map(str::to_string),
        client_port: 68,
        relay_port: 67,
        per_mac_rate: 0,
        per_relay_rate: 0,
        probe_timeout_ms: 0,
    }
}

/// The server running on a thread of its own inside a namespace (its sockets are there);
/// stopped and joined on drop.
struct Server {
    handle: DhcpHandle,
    sink: Arc<MemorySink>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _hosts: watch::Sender<Arc<Hosts>>,
}

impl Server {
    fn start(ns: &NetNs, cfg: DhcpConfig, listen: Listen, cpu: Option<usize>) -> Server {
        let sink = Arc::new(MemorySink::default());
        let (hosts, hosts_rx) = watch::channel(Arc::new(Hosts::default()));
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_sink = sink.clone();
        let ns_name = ns.name().to_string();
        let thread = std::thread::spawn(move || {
            netns::enter(&ns_name);
            if let Some(cpu) = cpu {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).unwrap();
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match server::start(cfg, listen, vec![], hosts_rx, thread_sink, stop_rx).await {
                    Ok((handle, serve)) => {
                        tx.send(Ok(handle)).unwrap();
                        serve.await;
                    }
                    Err(e) => tx.send(Err(e.to_string())).unwrap(),
                }
            });
        });
        let handle = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the server thread did not start within 10 s")
            .unwrap_or_else(|e| panic!("the DHCP server did not start: {e}"));
        Server {
            handle,
            sink,
            stop,
            thread: Some(thread),
            _hosts: hosts,
        }
    }
}

impl Server {
    /// [`DhcpHandle::reconfigure`] from the test's thread, bounded.
    fn reconfigure(
        &self,
        cfg: DhcpConfig,
        listen: &Listen,
    ) -> Result<ReconfigReport, ReconfigError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                self.handle.reconfigure(cfg, listen),
            )
            .await
            .expect("reconfigure did not finish within 10 s")
        })
    }

    fn sent(&self, what: &str) -> u64 {
        self.handle
            .stats
            .sent()
            .find(|(n, _)| *n == what)
            .unwrap()
            .1
    }

    fn received(&self, what: &str) -> u64 {
        self.handle
            .stats
            .received()
            .find(|(n, _)| *n == what)
            .unwrap()
            .1
    }

    fn dropped(&self, why: &str) -> u64 {
        self.handle
            .stats
            .dropped()
            .find(|(n, _)| *n == why)
            .unwrap()
            .1
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- dhclient

/// A dhclient script that records what dhclient tells it, one line per call, and sets the
/// address on the interface (inside the client's namespace) so renewals can be unicast. It
/// never touches resolv.conf or routes. (As in cosm-e2e's tests/dhcp.rs.)
fn write_hook(dir: &Path) -> PathBuf {
    let hook = dir.join("hook.sh");
    let log = dir.join("hook.log");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
echo "reason=$reason ip=$new_ip_address" >> {}
case "$reason" in
  BOUND|REBOOT|RENEW|REBIND)
    ip -4 addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
  EXPIRE|FAIL|RELEASE|STOP)
    ip -4 addr flush dev "$interface" ;;
esac
exit 0
"#,
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    hook
}

/// Hook lines from `after_line` on, as field maps.
fn hook_lines(log: &Path, after_line: usize) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .skip(after_line)
        .map(|line| {
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
                .collect()
        })
        .collect()
}

/// Waits (bounded) for a hook line with this reason after `after_line`; returns its fields
/// and the number of lines read.
fn wait_for(
    log: &Path,
    reason: &str,
    after_line: usize,
    timeout: Duration,
) -> (HashMap<String, String>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = hook_lines(log, after_line);
        if let Some(i) = lines.iter().position(|f| f["reason"] == reason) {
            return (lines[i].clone(), after_line + i + 1);
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} from dhclient within {timeout:?}; hook log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// ISC dhclient on the client end of a segment, run in the foreground (`-d`) so that the
/// namespace owns it and stops it by PID.
struct Client<'a> {
    ns: &'a NetNs,
    iface: String,
    dir: tempfile::TempDir,
    hook: PathBuf,
}

impl<'a> Client<'a> {
    fn new(ns: &'a NetNs, iface: &str) -> Client<'a> {
        let dir = tempfile::tempdir().unwrap();
        let hook = write_hook(dir.path());
        Client {
            ns,
            iface: iface.into(),
            dir,
            hook,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("hook.log")
    }

    fn args(&self, cmd: &mut std::process::Command, lease_file: &str) {
        cmd.args(["-4", "-lf"])
            .arg(self.dir.path().join(lease_file))
            .arg("-pf")
            .arg(self.dir.path().join("dhclient.pid"))
            .arg("-sf")
            .arg(&self.hook)
            .arg(&self.iface);
    }

    /// Starts `dhclient -d`; returns its PID.
    fn start(&self, lease_file: &str) -> u32 {
        let mut cmd = self.ns.command("dhclient");
        cmd.arg("-d");
        self.args(&mut cmd, lease_file);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.ns.spawn(cmd)
    }

    /// `dhclient -r`: releases the lease (bounded), then stops the running one by PID.
    fn release(&self, lease_file: &str, pid: u32) {
        let mut cmd = self.ns.command("dhclient");
        cmd.arg("-r");
        self.args(&mut cmd, lease_file);
        let out = netns::run_timeout(cmd, Duration::from_secs(20)).unwrap();
        assert!(
            out.status.success(),
            "dhclient -r failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.ns.kill(pid);
    }
}

/// A server namespace (192.0.2.1/24) and a client namespace joined by a veth; the client
/// end has no address, as a freshly booted machine. Returns both and the interface names.
fn segment() -> (NetNs, NetNs, String, String) {
    let srv = NetNs::new("drs");
    let cli = NetNs::new("drc");
    NetNs::link_pair(&srv, "192.0.2.1/24", &cli, "");
    let s_if = srv.interfaces()[0].clone();
    let c_if = cli.interfaces()[0].clone();
    (srv, cli, s_if, c_if)
}

fn last_octet(addr: &str) -> u8 {
    addr.rsplit('.').next().unwrap().parse().unwrap()
}

const POOL_A: (&str, &str) = ("192.0.2.100", "192.0.2.109");
const POOL_B: (&str, &str) = ("192.0.2.200", "192.0.2.209");

fn pool_config(pool: (&str, &str)) -> DhcpConfig {
    config("192.0.2.1", "192.0.2.0", pool.0, pool.1, 10)
}

#[test]
fn dhclient_moves_from_pool_a_to_pool_b_without_a_restart() {
    require_root_tools(&["ip", "dhclient"]);
    let (srv, cli, s_if, c_if) = segment();
    let listen = listen(Some(&s_if));
    let server = Server::start(&srv, pool_config(POOL_A), listen.clone(), None);
    let client = Client::new(&cli, &c_if);
    let log = client.log();

    // An address from pool A.
    let pid = client.start("a.leases");
    let (bound, seen) = wait_for(&log, "BOUND", 0, Duration::from_secs(40));
    let first = bound["ip"].clone();
    assert!(
        (100..=109).contains(&last_octet(&first)),
        "{first} is outside pool A"
    );
    let mut cat = cli.command("cat");
    cat.arg(format!("/sys/class/net/{c_if}/address"));
    let mac: MacAddr = run_ok(cat).trim().parse().unwrap();

    // Pool B, same server, same socket. The lease is kept but reported outside the pools.
    let report = server.reconfigure(pool_config(POOL_B), &listen).unwrap();
    assert_eq!(
        (report.old_mode, report.new_mode),
        (Mode::Authoritative, Mode::Authoritative)
    );
    assert_eq!(
        report.changes,
        vec![
            "subnet 192.0.2.0/24 pools: 192.0.2.100-192.0.2.109 → 192.0.2.200-192.0.2.209"
                .to_string()
        ]
    );
    let outside: Vec<_> = report
        .pools
        .leases_outside
        .iter()
        .map(|l| (l.mac, l.ip.to_string()))
        .collect();
    assert_eq!(outside, vec![(mac, first.clone())]);
    assert_eq!(report.pools.pools[0].free, 10);

    // At T1 (5 s) the client renews; the NAK sends it back to DISCOVER, into pool B.
    let naks = server.sent("nak");
    let (bound, seen) = wait_for(&log, "BOUND", seen, Duration::from_secs(40));
    let second = bound["ip"].clone();
    assert!(
        (200..=209).contains(&last_octet(&second)),
        "{second} is outside pool B"
    );
    assert!(
        server.sent("nak") > naks,
        "the renewal of {first} was not NAKed"
    );
    // Its lease renews in pool B.
    let (renew, _) = wait_for(&log, "RENEW", seen, Duration::from_secs(30));
    assert_eq!(renew["ip"], second);

    // A new client (the same port with another MAC) gets a pool B address too.
    client.release("a.leases", pid);
    let mut set_mac = cli.command("ip");
    set_mac.args(["link", "set", "dev", &c_if, "address", "52:54:00:c0:53:02"]);
    run_ok(set_mac);
    let lines = hook_lines(&log, 0).len();
    let _pid = client.start("b.leases");
    let (bound, _) = wait_for(&log, "BOUND", lines, Duration::from_secs(40));
    let third = bound["ip"].clone();
    assert!(
        (200..=209).contains(&last_octet(&third)),
        "{third} is outside pool B"
    );
    let leases = server.sink.leases.lock().unwrap();
    assert!(
        leases
            .iter()
            .any(|l| l.ip.to_string() == third && l.mac.to_string() == "52:54:00:c0:53:02"),
        "the new client's lease was not persisted"
    );
}

#[test]
fn mode_off_answers_nothing_and_on_again_answers() {
    require_root_tools(&["ip", "dhclient"]);
    let (srv, cli, s_if, c_if) = segment();
    let listen = listen(Some(&s_if));
    let server = Server::start(&srv, pool_config(POOL_A), listen.clone(), None);

    let mut off = pool_config(POOL_A);
    off.mode = Mode::Off;
    let report = server.reconfigure(off.clone(), &listen).unwrap();
    assert_eq!(
        (report.old_mode, report.new_mode),
        (Mode::Authoritative, Mode::Off)
    );
    assert_eq!(
        report.changes,
        vec!["mode: authoritative → off".to_string()]
    );

    // A client asks and asks: the server receives every DISCOVER and answers none.
    let client = Client::new(&cli, &c_if);
    let log = client.log();
    let _pid = client.start("a.leases");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.received("discover") < 2 {
        assert!(
            Instant::now() < deadline,
            "no DISCOVER reached the server in 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        server.sent("offer") + server.sent("ack") + server.sent("nak"),
        0
    );
    assert!(server.dropped("off") >= 2);
    assert!(
        hook_lines(&log, 0).iter().all(|f| f["reason"] != "BOUND"),
        "dhclient was bound while DHCP was off"
    );

    // On again: the same running dhclient is answered at its next DISCOVER.
    let report = server.reconfigure(pool_config(POOL_A), &listen).unwrap();
    assert_eq!(report.new_mode, Mode::Authoritative);
    let (bound, _) = wait_for(&log, "BOUND", 0, Duration::from_secs(60));
    assert!((100..=109).contains(&last_octet(&bound["ip"])));
}

#[test]
fn socket_settings_need_a_restart_and_proxy_mode_opens_its_port() {
    require_root_tools(&["ip", "ss"]);
    let (srv, _cli, s_if, _) = segment();
    let listen = listen(Some(&s_if));
    let server = Server::start(&srv, pool_config(POOL_A), listen.clone(), None);

    // Another interface or port: refused, naming the key; the running config is unchanged.
    let mut elsewhere = listen.clone();
    elsewhere.interface = Some("eth9".into());
    let err = server
        .reconfigure(pool_config(POOL_B), &elsewhere)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReconfigError::NeedsRestart {
                key: "interface",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("restart"), "{err}");
    let mut port = listen.clone();
    port.addr = "0.0.0.0:1067".parse().unwrap();
    assert!(matches!(
        server.reconfigure(pool_config(POOL_B), &port),
        Err(ReconfigError::NeedsRestart { key: "listen", .. })
    ));
    assert_eq!(*server.handle.config(), pool_config(POOL_A));

    // Proxy mode opens UDP 4011 (in the server's namespace); leaving it closes the port.
    let pxe_bound = || {
        let mut ss = srv.command("ss");
        ss.args(["-Hlun", "sport = :4011"]);
        !run_ok(ss).trim().is_empty()
    };
    assert!(!pxe_bound());
    let mut proxy = pool_config(POOL_A);
    proxy.mode = Mode::Proxy;
    server.reconfigure(proxy.clone(), &listen).unwrap();
    assert!(pxe_bound(), "proxy mode did not open UDP 4011");
    // Proxy to proxy keeps the port; proxy to off closes it.
    server.reconfigure(proxy, &listen).unwrap();
    assert!(pxe_bound());
    let mut off = pool_config(POOL_A);
    off.mode = Mode::Off;
    let report = server.reconfigure(off, &listen).unwrap();
    assert_eq!((report.old_mode, report.new_mode), (Mode::Proxy, Mode::Off));
    assert!(!pxe_bound(), "UDP 4011 stayed open after proxy mode");
}
