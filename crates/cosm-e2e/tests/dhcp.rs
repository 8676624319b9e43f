//! DHCP with real clients in network namespaces: ISC dhclient against the appliance.

use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::{ok_stdout, Appliance};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A dhclient script that records what dhclient tells it, one line per call, and sets the
/// address on the interface (inside the client's namespace) so renewals can be unicast. It
/// never touches resolv.conf or routes.
fn write_hook(dir: &Path) -> std::path::PathBuf {
    let hook = dir.join("hook.sh");
    let log = dir.join("hook.log");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
echo "reason=$reason ip=$new_ip_address routers=$new_routers dns=$new_domain_name_servers domain=$new_domain_name lease=$new_dhcp_lease_time" >> {}
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
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(&hook)
        .status()
        .unwrap();
    hook
}

/// Waits (bounded) for a hook line with this reason; returns its fields.
fn wait_for(
    log: &Path,
    reason: &str,
    after_line: usize,
    timeout: Duration,
) -> (HashMap<String, String>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for (i, line) in text.lines().enumerate().skip(after_line) {
            let fields: HashMap<String, String> = line
                .split_whitespace()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            if fields.get("reason").map(String::as_str) == Some(reason) {
                return (fields, i + 1);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} from dhclient within {timeout:?}; hook log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dhcp_config(iface: &str) -> String {
    dhcp_config_with(iface, "")
}

/// The test's DHCP config with more `[dhcp]` keys (e.g. `probe_timeout_ms = 500`).
fn dhcp_config_with(iface: &str, more: &str) -> String {
    format!(
        r#"
[dhcp]
server_id = "192.0.2.1"
interface = "{iface}"
{more}
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.150"]
routers = ["192.0.2.1"]
dns = ["192.0.2.53"]
domain = "rack.test"
lease_time_secs = 10
"#
    )
}

/// A server namespace (192.0.2.1/24) and a client namespace joined by a veth; the client
/// end starts with no address, as a freshly booted machine does. Returns both namespaces
/// and the server and client interface names.
fn segment(srv_prefix: &str, cli_prefix: &str) -> (NetNs, NetNs, String, String) {
    let srv = NetNs::new(srv_prefix).unwrap();
    let cli = NetNs::new(cli_prefix).unwrap();
    NetNs::link_pair(&srv, "192.0.2.1/24", &cli, "192.0.2.254/24").unwrap();
    let s_if = srv.interfaces().last().unwrap().clone();
    let c_if = cli.interfaces().last().unwrap().clone();
    let mut flush = cli.command("ip");
    flush.args(["addr", "flush", "dev", &c_if]);
    cli.run_ok(flush).unwrap();
    (srv, cli, s_if, c_if)
}

struct Client<'a> {
    ns: &'a NetNs,
    iface: String,
    hook: std::path::PathBuf,
    dir: &'a Path,
}

impl<'a> Client<'a> {
    /// A client on `iface` of `ns`, with its hook script in `dir`; returns it and the
    /// hook's log.
    fn new(ns: &'a NetNs, iface: String, dir: &'a Path) -> (Client<'a>, std::path::PathBuf) {
        let hook = write_hook(dir);
        let client = Client {
            ns,
            iface,
            hook,
            dir,
        };
        (client, dir.join("hook.log"))
    }

    /// Starts `dhclient -d` (foreground, so the namespace owns and reaps it).
    fn start(&self, lease_file: &str) -> u32 {
        let mut cmd = self.ns.command("dhclient");
        cmd.args(["-d", "-4", "-lf"])
            .arg(self.dir.join(lease_file))
            .arg("-pf")
            .arg(self.dir.join("dhclient.pid"))
            .arg("-sf")
            .arg(&self.hook)
            .arg(&self.iface)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.ns.spawn(cmd).unwrap()
    }

    fn release(&self, lease_file: &str) {
        let mut cmd = self.ns.command("dhclient");
        cmd.args(["-r", "-4", "-lf"])
            .arg(self.dir.join(lease_file))
            .arg("-pf")
            .arg(self.dir.join("dhclient.pid"))
            .arg("-sf")
            .arg(&self.hook)
            .arg(&self.iface);
        let out = self.ns.run_timeout(cmd, Duration::from_secs(20)).unwrap();
        assert!(
            out.status.success(),
            "dhclient -r failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dhclient_gets_renews_releases_and_keeps_its_address_across_sigkill() {
    require_root_tools(&["ip", "dhclient", "curl"]);
    let (srv, cli, s_if, c_if) = segment("dhs", "dhc");
    let mut cat = cli.command("cat");
    cat.arg(format!("/sys/class/net/{c_if}/address"));
    let mac = cli.run_ok(cat).unwrap().trim().to_string();

    let mut app = Appliance::start_with(Some(srv.name()), &dhcp_config(&s_if)).unwrap();
    // A known machine, so its DHCP steps land on its timeline.
    ok_stdout(&app.cosmctl(&["machines", "add", &mac, "--hostname", "node1"]));

    let dir = tempfile::tempdir().unwrap();
    let (client, log) = Client::new(&cli, c_if.clone(), dir.path());

    // DORA: an address from the pool with the configured options.
    let pid = client.start("a.leases");
    let (bound, seen) = wait_for(&log, "BOUND", 0, Duration::from_secs(40));
    let ip = bound["ip"].clone();
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ip.starts_with("192.0.2.") && (100..=150).contains(&last),
        "{ip} is outside the pool"
    );
    assert_eq!(bound["routers"], "192.0.2.1");
    assert_eq!(bound["dns"], "192.0.2.53");
    assert_eq!(bound["domain"], "rack.test");
    assert_eq!(bound["lease"], "10");

    // RENEW at T1 (5 s): unicast to the server, same address.
    let (renew, _) = wait_for(&log, "RENEW", seen, Duration::from_secs(30));
    assert_eq!(renew["ip"], ip);

    // RELEASE: the lease record says so.
    client.release("a.leases");
    let _ = cli.kill(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leases = app.api(&format!("/api/v1/leases?mac={mac}")).unwrap();
        if leases[0]["state"] == "released" {
            assert_eq!(leases[0]["ip"], ip.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "lease not released: {leases}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A fresh client with the same MAC (no lease file) gets the same address back.
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    let pid = client.start("b.leases");
    let (again, _) = wait_for(&log, "BOUND", before, Duration::from_secs(40));
    assert_eq!(
        again["ip"], ip,
        "the released address should come back to its MAC"
    );
    let _ = cli.kill(pid);

    // SIGKILL the appliance while the lease is bound; after a restart a fresh client with
    // the same MAC still gets the same address, from the lease the appliance persisted.
    app.kill9();
    app.restart().unwrap();
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    let pid = client.start("c.leases");
    let (after, _) = wait_for(&log, "BOUND", before, Duration::from_secs(40));
    assert_eq!(after["ip"], ip, "address changed across SIGKILL + restart");
    let _ = cli.kill(pid);

    // /metrics counts the packets and the pool use.
    let text = app.metrics().unwrap();
    let value = |prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from /metrics:\n{text}"))
    };
    assert!(value("cosm_dhcp_received_packets_total{type=\"discover\"}") >= 1);
    assert!(value("cosm_dhcp_sent_packets_total{type=\"ack\"}") >= 1);
    assert_eq!(value("cosm_dhcp_pool_size{subnet=\"192.0.2.0/24\"}"), 51);
    assert_eq!(value("cosm_dhcp_pool_used{subnet=\"192.0.2.0/24\"}"), 1);

    // The machine's timeline shows its DHCP steps.
    let events = app.api(&format!("/api/v1/machines/{mac}/events")).unwrap();
    let messages: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "dhcp")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    for step in ["DISCOVER", "OFFER", "REQUEST", "ACK"] {
        assert!(
            messages.iter().any(|m| m.starts_with(step)),
            "no {step} on the timeline: {messages:?}"
        );
    }
}

#[test]
fn an_address_that_answers_ping_is_quarantined_not_offered() {
    require_root_tools(&["ip", "dhclient", "curl"]);
    let (srv, cli, s_if, c_if) = segment("cps", "cpc");
    // A squatter: the first pool address is configured by hand on the segment (on the
    // client side's loopback, which answers ARP and ping for it on the veth).
    let mut squat = cli.command("ip");
    squat.args(["addr", "add", "192.0.2.100/32", "dev", "lo"]);
    cli.run_ok(squat).unwrap();
    let mut route = cli.command("ip");
    route.args(["route", "add", "192.0.2.1/32", "dev", &c_if]);
    cli.run_ok(route).unwrap();

    let config = dhcp_config_with(&s_if, "probe_timeout_ms = 2000");
    let app = Appliance::start_with(Some(srv.name()), &config).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (client, log) = Client::new(&cli, c_if, dir.path());
    let pid = client.start("a.leases");
    let (bound, _) = wait_for(&log, "BOUND", 0, Duration::from_secs(40));
    let _ = cli.kill(pid);
    assert_ne!(
        bound["ip"],
        "192.0.2.100",
        "the squatted address was offered; log:\n{}",
        app.log_text()
    );
    assert_eq!(bound["ip"], "192.0.2.101");
    let leases = app.api("/api/v1/leases?state=declined").unwrap();
    assert_eq!(leases[0]["ip"], "192.0.2.100", "{leases}");
}

/// POSTs JSON to an API path with the admin token, through curl in the appliance's
/// namespace; returns the parsed answer.
fn post(app: &Appliance, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let out = app
        .command(Path::new("curl"))
        .args(["-sS", "--fail-with-body", "-m", "10", "-H"])
        .arg(format!("Authorization: Bearer {}", app.token()))
        .args(["-H", "Content-Type: application/json", "--data"])
        .arg(body.to_string())
        .arg(format!("{}{path}", app.url()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "POST {path} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `unknown_macs = "ignore"` serves only known machines. A machine that becomes known by
/// enrolling (not only by `machines add`) is served at once: the store's change feed says
/// which tables each commit wrote, so DHCP reloads its hosts after the enrolment.
#[test]
fn a_machine_created_by_enrolment_is_served_at_once_when_unknown_macs_are_ignored() {
    require_root_tools(&["ip", "dhclient", "curl"]);
    let (srv, cli, s_if, c_if) = segment("des", "dec");
    let mut cat = cli.command("cat");
    cat.arg(format!("/sys/class/net/{c_if}/address"));
    let mac = cli.run_ok(cat).unwrap().trim().to_string();
    let config = dhcp_config_with(&s_if, "unknown_macs = \"ignore\"");
    let app = Appliance::start_with(Some(srv.name()), &config).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (client, log) = Client::new(&cli, c_if, dir.path());
    // Unknown: ignored (dhclient sends DISCOVERs and gets nothing).
    let pid = client.start("unknown.leases");
    std::thread::sleep(Duration::from_secs(6));
    let _ = cli.kill(pid);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("reason=BOUND"),
        "an unknown MAC was served despite unknown_macs = \"ignore\":\n{text}"
    );
    let text = app.metrics().unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("cosm_dhcp_received_packets_total{type=\"discover\"}")),
        "the appliance saw no DISCOVER from the unknown client:\n{text}"
    );

    // The agent enrols (what the ramdisk does): the machine is created by the enrolment.
    let inventory = serde_json::json!({
        "cpu": {"model": "test", "sockets": 1, "cores": 2, "threads": 2},
        "memory_bytes": 1u64 << 30,
    });
    let enrolled = post(
        &app,
        "/api/v1/agent/enroll",
        &serde_json::json!({"mac": mac, "inventory": inventory}),
    );
    assert_eq!(enrolled["machine"]["mac"], mac.as_str(), "{enrolled}");

    // Served now, with no other machine change in between.
    let pid = client.start("known.leases");
    let (bound, _) = wait_for(&log, "BOUND", 0, Duration::from_secs(40));
    let _ = cli.kill(pid);
    assert!(bound["ip"].starts_with("192.0.2."), "{bound:?}");
    let leases = app.api(&format!("/api/v1/leases?mac={mac}")).unwrap();
    assert_eq!(leases[0]["ip"], bound["ip"].as_str(), "{leases}");
}

/// Sends `n` PXE DISCOVERs from random MACs (02:fe:…) out of `iface` of `ns`, as a host
/// on the provisioning network can: the vendor class and architecture of BIOS PXE ROMs.
fn forge_pxe_discovers(ns: &NetNs, iface: &str, n: usize) {
    let script = r#"
import random, socket, struct, sys, time
iface, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())  # SO_BINDTODEVICE
s.bind(("0.0.0.0", 68))
for i in range(n):
    if i and i % 20 == 0:
        time.sleep(1.5)  # past the server's once-a-second recount of unknown holders
    mac = bytes([0x02, 0xFE]) + random.randbytes(4)
    head = struct.pack("!BBBBIHH16s16s64s128s", 1, 1, 6, 0, random.getrandbits(32), 0, 0x8000,
                       bytes(16), mac + bytes(10), bytes(64), bytes(128))
    vendor = b"PXEClient:Arch:00000:UNDI:002001"
    opts = b"\x63\x82\x53\x63\x35\x01\x01" + bytes([60, len(vendor)]) + vendor + b"\x5d\x02\x00\x00\xff"
    s.sendto(head + opts, ("255.255.255.255", 67))
    time.sleep(0.02)
"#;
    let mut cmd = ns.command("python3");
    cmd.args(["-c", script, iface, &n.to_string()]);
    ns.run_ok(cmd).unwrap();
}

/// The machines whose MAC starts with 02:fe (the forged ones).
fn forged_machines(app: &Appliance) -> Vec<serde_json::Value> {
    let all = app.api("/api/v1/machines").unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["mac"].as_str().unwrap().starts_with("02:fe:"))
        .cloned()
        .collect()
}

/// Hardening (issue 11, item 2): PXE DISCOVERs from 800 random MACs created 800
/// `discovered` machines and took the whole pool, because a machine DHCP had recorded
/// counted as known. Now such machines count against `max_unknown_leases`, only a client
/// that is offered an address is recorded, the records expire, and a registered machine
/// still gets its address.
#[test]
fn forged_pxe_discovers_are_capped_expire_and_leave_registered_machines_served() {
    require_root_tools(&["ip", "dhclient", "curl", "python3"]);
    let (srv, cli, s_if, c_if) = segment("dfs", "dfc");
    let mut cat = cli.command("cat");
    cat.arg(format!("/sys/class/net/{c_if}/address"));
    let mac = cli.run_ok(cat).unwrap().trim().to_string();
    let config = dhcp_config_with(&s_if, "max_unknown_leases = 5\ndiscovered_expiry_secs = 10");
    let app = Appliance::start_with(Some(srv.name()), &config).unwrap();
    post(&app, "/api/v1/machines", &serde_json::json!({"mac": mac}));

    // The forger needs an address to send from; the real client starts without one.
    let mut add = cli.command("ip");
    add.args(["addr", "add", "192.0.2.77/24", "dev", &c_if]);
    cli.run_ok(add).unwrap();
    forge_pxe_discovers(&cli, &c_if, 60);
    let mut flush = cli.command("ip");
    flush.args(["addr", "flush", "dev", &c_if]);
    cli.run_ok(flush).unwrap();
    // Records are written in the background: wait until the count settles.
    let mut recorded = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        recorded = forged_machines(&app);
        if !recorded.is_empty() {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let recorded_now = forged_machines(&app);
    assert!(
        !recorded.is_empty(),
        "no forged PXE client was recorded at all"
    );
    assert!(
        recorded_now.len() <= 5,
        "60 forged DISCOVERs with max_unknown_leases = 5 recorded {} machines",
        recorded_now.len()
    );
    assert!(
        recorded_now
            .iter()
            .all(|m| m["discovered_by_dhcp"] == true && m["state"] == "discovered"),
        "{recorded_now:?}"
    );

    // The registered machine is served.
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = Client::new(&cli, c_if, dir.path());
    let pid = client.start("registered.leases");
    let (bound, _) = wait_for(&log, "BOUND", 0, Duration::from_secs(40));
    let _ = cli.kill(pid);
    assert!(bound["ip"].starts_with("192.0.2.1"), "{bound:?}");

    // Ten seconds after they were recorded the forged machines are gone; the registered
    // one stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !forged_machines(&app).is_empty() {
        assert!(
            Instant::now() < deadline,
            "machines DHCP alone recorded did not expire: {:?}",
            forged_machines(&app)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = app.api(&format!("/api/v1/machines/{mac}")).unwrap();
    assert_eq!(m["mac"], mac.as_str(), "{m}");
}

/// Hardening (issue 11, item 3): without `dhcp.interface`, a broadcast reply left through
/// the interface of the default route (or failed with "Network unreachable"), not the
/// segment the client is on. The server now learns each request's arrival interface
/// (IP_PKTINFO) and broadcasts its reply out of that one.
#[test]
fn without_an_interface_broadcast_replies_leave_by_the_interface_the_request_came_in_on() {
    require_root_tools(&["ip", "dhclient", "curl"]);
    let (srv, cli, _s_if, c_if) = segment("dis", "dic");
    // A second segment on the server, holding its default route: where a broadcast went.
    let decoy = NetNs::new("did").unwrap();
    NetNs::link_pair(&srv, "198.51.100.1/24", &decoy, "198.51.100.2/24").unwrap();
    let mut route = srv.command("ip");
    route.args(["route", "add", "default", "via", "198.51.100.2"]);
    srv.run_ok(route).unwrap();
    let config = r#"
[dhcp]
server_id = "192.0.2.1"
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.150"]
routers = ["192.0.2.1"]
lease_time_secs = 30
"#;
    let app = Appliance::start_with(Some(srv.name()), config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (client, log) = Client::new(&cli, c_if, dir.path());
    let pid = client.start("any.leases");
    let (bound, _) = wait_for(&log, "BOUND", 0, Duration::from_secs(40));
    let _ = cli.kill(pid);
    assert!(bound["ip"].starts_with("192.0.2.1"), "{bound:?}");
    let text = app.metrics().unwrap();
    assert!(
        text.lines().any(
            |l| l.starts_with("cosm_dhcp_sent_packets_total{type=\"ack\"} ") && !l.ends_with(" 0")
        ),
        "{text}"
    );
}
