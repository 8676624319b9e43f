//! Two racks behind a real DHCP relay (ISC dhcrelay, adding option 82): each client gets an
//! address from its own rack's subnet, answered through the relay.
//!
//!   rack A client ── 198.51.100.1 ┐
//!                                 relay (dhcrelay -a) 192.0.2.2 ── 192.0.2.1 appliance
//!   rack B client ── 203.0.113.1 ┘

use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::Appliance;
use std::process::Stdio;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[dhcp]
server_id = "192.0.2.1"
[[dhcp.subnets]]
cidr = "198.51.100.0/24"
pools = ["198.51.100.100-198.51.100.150"]
routers = ["198.51.100.1"]
domain = "rack-a.test"
[[dhcp.subnets]]
cidr = "203.0.113.0/24"
pools = ["203.0.113.100-203.0.113.150"]
routers = ["203.0.113.1"]
domain = "rack-b.test"
"#;

fn ip_in(ns: &NetNs, args: &[&str]) {
    let mut c = ns.command("ip");
    c.args(args);
    ns.run_ok(c).unwrap();
}

/// Runs dhclient once in `ns` and returns the address and domain it was given.
fn lease(ns: &NetNs, iface: &str, dir: &std::path::Path) -> (String, String) {
    let log = dir.join(format!("{}.log", ns.name()));
    let hook = dir.join(format!("{}.sh", ns.name()));
    std::fs::write(
        &hook,
        format!("#!/bin/sh\n[ \"$reason\" = BOUND ] && echo \"$new_ip_address $new_domain_name\" >> {}\nexit 0\n", log.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let mut c = ns.command("dhclient");
    c.args(["-d", "-4", "-lf"])
        .arg(dir.join(format!("{}.leases", ns.name())))
        .arg("-pf")
        .arg(dir.join(format!("{}.pid", ns.name())))
        .arg("-sf")
        .arg(&hook)
        .arg(iface)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = ns.spawn(c).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(line) = std::fs::read_to_string(&log)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            let _ = ns.kill(pid);
            let (ip, domain) = line.split_once(' ').unwrap();
            return (ip.to_string(), domain.to_string());
        }
        assert!(
            Instant::now() < deadline,
            "no lease for {} through the relay within 40 s",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_racks_behind_a_relay_get_addresses_from_their_own_subnets() {
    require_root_tools(&["ip", "dhclient", "dhcrelay", "curl"]);
    let srv = NetNs::new("rls").unwrap();
    let relay = NetNs::new("rlr").unwrap();
    let rack_a = NetNs::new("rla").unwrap();
    let rack_b = NetNs::new("rlb").unwrap();
    NetNs::link_pair(&srv, "192.0.2.1/24", &relay, "192.0.2.2/24").unwrap();
    let up = relay.interfaces().last().unwrap().clone();
    NetNs::link_pair(&relay, "198.51.100.1/24", &rack_a, "198.51.100.254/24").unwrap();
    let down_a = relay.interfaces().last().unwrap().clone();
    let a_if = rack_a.interfaces().last().unwrap().clone();
    NetNs::link_pair(&relay, "203.0.113.1/24", &rack_b, "203.0.113.254/24").unwrap();
    let down_b = relay.interfaces().last().unwrap().clone();
    let b_if = rack_b.interfaces().last().unwrap().clone();
    // Clients start without addresses; the server reaches the racks' relay addresses
    // through the relay.
    ip_in(&rack_a, &["addr", "flush", "dev", &a_if]);
    ip_in(&rack_b, &["addr", "flush", "dev", &b_if]);
    ip_in(
        &srv,
        &["route", "add", "198.51.100.0/24", "via", "192.0.2.2"],
    );
    ip_in(
        &srv,
        &["route", "add", "203.0.113.0/24", "via", "192.0.2.2"],
    );

    let app = Appliance::start_with(Some(srv.name()), CONFIG).unwrap();
    let mut r = relay.command("dhcrelay");
    r.args([
        "-4",
        "-d",
        "-a",
        "-i",
        &down_a,
        "-i",
        &down_b,
        "-i",
        &up,
        "192.0.2.1",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    relay.spawn(r).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let dir = tempfile::tempdir().unwrap();
    let (a_ip, a_domain) = lease(&rack_a, &a_if, dir.path());
    let (b_ip, b_domain) = lease(&rack_b, &b_if, dir.path());
    assert!(a_ip.starts_with("198.51.100.1"), "rack A got {a_ip}");
    assert_eq!(a_domain, "rack-a.test");
    assert!(b_ip.starts_with("203.0.113.1"), "rack B got {b_ip}");
    assert_eq!(b_domain, "rack-b.test");

    // The lease records name the relay each request came through.
    let leases = app.api("/api/v1/leases").unwrap();
    let relay_of = |ip: &str| {
        leases
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ip"] == ip)
            .map(|l| l["relay"].clone())
    };
    assert_eq!(
        relay_of(&a_ip),
        Some(serde_json::json!("198.51.100.1")),
        "{leases}"
    );
    assert_eq!(
        relay_of(&b_ip),
        Some(serde_json::json!("203.0.113.1")),
        "{leases}"
    );
}
