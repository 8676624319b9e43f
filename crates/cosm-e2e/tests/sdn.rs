//! Tenant networks end to end (issue 14) on the virtual rack: the appliance, three
//! hypervisor hosts (network namespaces on the rack's data network 192.0.2.0/24, each with
//! a real `cosm-agent` that reconciles bridges, VXLAN devices, FDB entries and nftables
//! rules through netlink and `nft`), and guests plugged into them as ports.
//!
//! The matrix test uses network namespaces as guests (`cosm_e2e::sdn::NsGuest`: a veth end
//! named like a VM's tap on the host's bridge), so it can try many cases quickly; the QEMU
//! test boots real guests on tenant networks and live-migrates one.
//!
//! Both networks here use the same subnet, 198.51.100.0/24, as two tenants may: isolation
//! must come from the networks, not from addressing.
//!
//! Needs root, ip/bridge (iproute2), nft (nftables), tcpdump, ping, python3, libvirtd and
//! QEMU; fails, never skips, naming what is missing.

use cosm_e2e::netns::require_root_tools;
use cosm_e2e::rack::Rack;
use cosm_e2e::sdn::{cosm_rules, network_events, on_host, wait_until, NsGuest};
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Convergence after a change: a heartbeat, a fetch and a reconcile pass, on a loaded
/// 2-core machine, with room.
const CONVERGE: Duration = Duration::from_secs(45);

fn network(rack: &Rack, name: &str, cidr: &str) -> Value {
    rack.app
        .api_send(
            "POST",
            "/api/v1/networks",
            &json!({"name": name, "cidr": cidr}),
        )
        .unwrap()
}

fn port(rack: &Rack, net: &str, host: usize, ip: Option<&str>) -> Value {
    let mut body = json!({"network": net, "host": rack.hosts[host].mac});
    if let Some(ip) = ip {
        body["ip"] = json!(ip);
    }
    rack.app.api_send("POST", "/api/v1/ports", &body).unwrap()
}

fn set_groups(rack: &Rack, g: &NsGuest, groups: &[&str]) {
    rack.app
        .api_send(
            "PUT",
            &format!("/api/v1/ports/{}/security-groups", g.mac),
            &json!({ "security_groups": groups }),
        )
        .unwrap();
}

fn put_group(rack: &Rack, name: &str, rules: Value) {
    rack.app
        .api_send(
            "PUT",
            &format!("/api/v1/secgroups/{name}"),
            &json!({"name": name, "rules": rules}),
        )
        .unwrap();
}

/// Waits until every host reports its VXLAN endpoint.
fn wait_vteps(rack: &Rack) {
    // Active as well: a host that missed its beats under load is `lost` for a moment, and
    // VMs cannot be placed on it until its next beat.
    wait_until(
        "every host is active and reports its VXLAN endpoint",
        CONVERGE,
        || {
            let hosts = rack.app.api("/api/v1/hosts")?;
            Ok(hosts.as_array().is_some_and(|a| {
                a.len() == rack.hosts.len()
                    && a.iter().all(|h| {
                        h["capacity"]["vtep"].is_string() && h["machine_state"] == "active"
                    })
            }))
        },
    )
    .unwrap();
}

#[test]
fn tenant_networks_connect_isolate_filter_and_repair_themselves_across_hosts() {
    require_root_tools(&["ip", "bridge", "nft", "tcpdump", "ping", "python3"]);
    let mut rack = Rack::start("sdn", "").unwrap();
    rack.start_hosts(3, Duration::from_secs(120)).unwrap();
    rack.wait_hosts_reporting(3, Duration::from_secs(60))
        .unwrap();
    wait_vteps(&rack);

    let a = network(&rack, "tenant-a", "198.51.100.0/24");
    let b = network(&rack, "tenant-b", "198.51.100.0/24");
    let (vni_a, vni_b) = (a["vni"].as_u64().unwrap(), b["vni"].as_u64().unwrap());
    let mtu = a["mtu"].as_u64().unwrap() as u16;
    // a1 and b1 share host 0; a2 is on host 1, b2 on host 2.
    let a1 = NsGuest::plug(&rack.hosts[0], &port(&rack, "tenant-a", 0, None), 24, mtu).unwrap();
    let a2 = NsGuest::plug(&rack.hosts[1], &port(&rack, "tenant-a", 1, None), 24, mtu).unwrap();
    let b1 = NsGuest::plug(
        &rack.hosts[0],
        &port(&rack, "tenant-b", 0, Some("198.51.100.50")),
        24,
        mtu,
    )
    .unwrap();
    let b2 = NsGuest::plug(
        &rack.hosts[2],
        &port(&rack, "tenant-b", 2, Some("198.51.100.51")),
        24,
        mtu,
    )
    .unwrap();
    assert_eq!(
        (a1.ip, a2.ip),
        (
            Ipv4Addr::new(198, 51, 100, 2),
            Ipv4Addr::new(198, 51, 100, 3)
        ),
        "IPAM hands out the lowest free addresses after the gateway"
    );

    // Same network, different hosts: ping and TCP work.
    let took = wait_until("a1 (host 1) pings a2 (host 2)", CONVERGE, || a1.ping(a2.ip)).unwrap();
    println!("tenant-a across hosts: first ping answered {took:?} after the guests were plugged");
    wait_until("b1 (host 1) pings b2 (host 3)", CONVERGE, || b1.ping(b2.ip)).unwrap();
    a2.listen(80).unwrap();
    a2.listen(22).unwrap();
    wait_until("a1 connects to a2:80", CONVERGE, || a1.tcp(a2.ip, 80)).unwrap();
    // Each host carries only its ports' networks.
    let links = on_host(&rack.hosts[1], "ip", &["-o", "link", "show"]).unwrap();
    assert!(
        links.contains(&format!("cbr{vni_a}:")) && !links.contains(&format!("cbr{vni_b}:")),
        "{links}"
    );

    // Different networks: a1 and b1 share a host and a subnet, yet nothing passes; an ARP
    // broadcast from a1 reaches a2 on another host and neither b1 nor b2.
    assert!(!a1.ping(b1.ip).unwrap(), "a1 reached b1 on another network");
    assert!(!a1.ping(b2.ip).unwrap(), "a1 reached b2 on another network");
    let seen: Vec<_> = [&a2, &b1, &b2]
        .iter()
        .map(|g| g.capture_arp(10).unwrap())
        .collect();
    let nobody = Ipv4Addr::new(198, 51, 100, 77);
    for _ in 0..3 {
        a1.ping(nobody).unwrap();
    }
    let mut lines = Vec::new();
    for (c, g) in seen.into_iter().zip([&a2, &b1, &b2]) {
        lines.push(c.lines(g).unwrap());
    }
    let asks = |l: &Vec<String>| {
        l.iter()
            .any(|x| x.contains("who-has 198.51.100.77") && x.contains("198.51.100.2"))
    };
    assert!(
        asks(&lines[0]),
        "a2 did not see a1's ARP broadcast: {:?}",
        lines[0]
    );
    assert!(!asks(&lines[1]), "b1 saw a1's ARP: {:?}", lines[1]);
    assert!(!asks(&lines[2]), "b2 saw a1's ARP: {:?}", lines[2]);

    // A security group allowing TCP 22 only: 22 connects, 80 and ping are dropped; changed
    // to allow 80, traffic follows.
    put_group(
        &rack,
        "ssh-only",
        json!([{"direction": "ingress", "protocol": "tcp", "ports": [22, 22], "remote": {"cidr": "0.0.0.0/0"}}]),
    );
    set_groups(&rack, &a2, &["ssh-only"]);
    let took = wait_until("a2 takes only TCP 22", CONVERGE, || {
        Ok(!a1.tcp(a2.ip, 80)? && a1.tcp(a2.ip, 22)?)
    })
    .unwrap();
    println!("security group applied {took:?} after the API call");
    assert!(
        !a1.ping(a2.ip).unwrap(),
        "ICMP passed a group that allows only TCP 22"
    );
    put_group(
        &rack,
        "ssh-only",
        json!([{"direction": "ingress", "protocol": "tcp", "ports": [80, 80], "remote": {"cidr": "198.51.100.0/24"}}]),
    );
    let took = wait_until(
        "the changed group lets 80 in and keeps 22 out",
        CONVERGE,
        || Ok(a1.tcp(a2.ip, 80)? && !a1.tcp(a2.ip, 22)?),
    )
    .unwrap();
    println!("security group change followed {took:?} after the API call");
    set_groups(&rack, &a2, &[]);
    wait_until("a2 open again", CONVERGE, || a1.ping(a2.ip)).unwrap();

    // Anti-spoofing: a forged source MAC, then a forged source address, are dropped.
    a1.ip(&["link", "set", "eth0", "address", "52:54:00:66:66:66"])
        .unwrap();
    let forged_mac_passed = (0..3).any(|_| a1.ping(a2.ip).unwrap_or(true));
    a1.ip(&["link", "set", "eth0", "address", &a1.mac]).unwrap();
    assert!(
        !forged_mac_passed,
        "a frame with a forged source MAC got through"
    );
    a1.ip(&["addr", "add", "198.51.100.99/24", "dev", "eth0"])
        .unwrap();
    let forged_ip_passed = (0..3).any(|_| {
        a1.ping_from(Ipv4Addr::new(198, 51, 100, 99), a2.ip)
            .unwrap_or(true)
    });
    a1.ip(&["addr", "del", "198.51.100.99/24", "dev", "eth0"])
        .unwrap();
    assert!(
        !forged_ip_passed,
        "a packet with a forged source address got through"
    );
    wait_until(
        "a1 with its own MAC and address passes again",
        CONVERGE,
        || a1.ping(a2.ip),
    )
    .unwrap();

    // Idempotent: with nothing changing, passes change nothing (no new timeline entries
    // over several reconcile intervals).
    // The passes that repaired the spoofing rules may still be writing their entries:
    // counted once the count has stood still for two seconds (bounded).
    let mut before = network_events(&rack, 0).len();
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(2));
        let now = network_events(&rack, 0).len();
        if now == before {
            break;
        }
        before = now;
    }
    std::thread::sleep(Duration::from_secs(8));
    let after = network_events(&rack, 0);
    assert_eq!(
        after.len(),
        before,
        "reconcile changed something with nothing to change: {:?}",
        &after[before..]
    );

    // Drift: the bridge, an FDB entry and an nftables rule deleted by hand come back, and
    // each repair is on the host's timeline.
    let h0 = &rack.hosts[0];
    let peer = rack.hosts[1].addr.to_string();
    let bridge = format!("cbr{vni_a}");
    let vxlan = format!("cvx{vni_a}");
    on_host(h0, "ip", &["link", "del", &bridge]).unwrap();
    let took = wait_until(
        "the deleted bridge is back and carries traffic",
        CONVERGE,
        || a1.ping(a2.ip),
    )
    .unwrap();
    println!("bridge {bridge} repaired in {took:?}");
    on_host(
        h0,
        "bridge",
        &[
            "fdb",
            "del",
            "00:00:00:00:00:00",
            "dev",
            &vxlan,
            "dst",
            &peer,
        ],
    )
    .unwrap();
    let took = wait_until("the deleted FDB entry is back", CONVERGE, || {
        let fdb = on_host(h0, "bridge", &["fdb", "show", "dev", &vxlan])?;
        Ok(fdb
            .lines()
            .any(|l| l.starts_with("00:00:00:00:00:00") && l.contains(&format!("dst {peer} "))))
    })
    .unwrap();
    println!("FDB entry to {peer} repaired in {took:?}");
    let rules = cosm_rules(h0).unwrap();
    assert!(!rules.is_empty(), "host 1 has no COSM nftables rules");
    let (family, chain, handle) = rules.last().unwrap().clone();
    on_host(
        h0,
        "nft",
        &[
            "delete",
            "rule",
            &family,
            "cosm",
            &chain,
            "handle",
            &handle.to_string(),
        ],
    )
    .unwrap();
    let took = wait_until("the deleted nftables rule is back", CONVERGE, || {
        Ok(cosm_rules(h0)?.len() == rules.len())
    })
    .unwrap();
    println!("nftables rule {family} cosm {chain} repaired in {took:?}");
    let events = network_events(&rack, 0);
    let repairs = &events[before..];
    for needle in [bridge.as_str(), vxlan.as_str(), "nft"] {
        assert!(
            repairs.iter().any(|e| e.contains(needle)),
            "no repair of {needle} on host 1's timeline: {repairs:?}"
        );
    }
}

/// `ping <seq> <ip> ok|fail` lines of the test guest's `cosm.ping=` loop: (seq, ok).
fn pings(lines: &[String]) -> Vec<(u64, bool)> {
    lines
        .iter()
        .filter_map(|l| {
            let at = l.find("ping ")?;
            let w: Vec<&str> = l[at..].split_whitespace().collect();
            match w.as_slice() {
                ["ping", seq, _, verdict] => Some((seq.parse().ok()?, *verdict == "ok")),
                _ => None,
            }
        })
        .collect()
}

fn console(rack: &Rack, host: usize, name: &str) -> Vec<String> {
    use cosm_hypervisor::Hypervisor;
    let hv = rack.hosts[host].libvirtd.connect().unwrap();
    hv.console_tail(&name.parse().unwrap(), 5_000)
        .unwrap_or_default()
}

fn guest_on(name: &str, net: &str, ip: &str, peer: &str, host: &str) -> Value {
    let mut b = cosm_e2e::guest::guest_vm_request(name, 128);
    b["nics"] = json!([{"network": net, "ip": ip}]);
    b["host"] = json!(host);
    b["boot"]["cmdline"] = json!(format!(
        "console=ttyS0 quiet cosm.marker={name} cosm.ping={peer}"
    ));
    b
}

#[test]
fn qemu_guests_on_tenant_networks_talk_stay_apart_and_keep_their_address_through_a_live_migration()
{
    require_root_tools(&["ip", "bridge", "nft", "ping"]);
    let mut rack = Rack::start("sdnvm", "").unwrap();
    rack.start_hosts(3, Duration::from_secs(120)).unwrap();
    rack.wait_hosts_reporting(3, Duration::from_secs(60))
        .unwrap();
    cosm_e2e::guest::upload_guest(&rack).unwrap();
    network(&rack, "tenant-a", "198.51.100.0/24");
    network(&rack, "tenant-b", "198.51.100.0/24");
    wait_vteps(&rack);
    let mac = |i: usize| rack.hosts[i].mac.clone();
    // vm1 (host 1) and vm2 (host 2) on tenant-a ping each other; vm3 (host 3) on tenant-b
    // pings vm1's address, which on its own network nobody has.
    for body in [
        guest_on("vm1", "tenant-a", "198.51.100.10", "198.51.100.11", &mac(0)),
        guest_on("vm2", "tenant-a", "198.51.100.11", "198.51.100.10", &mac(1)),
        guest_on("vm3", "tenant-b", "198.51.100.12", "198.51.100.10", &mac(2)),
    ] {
        rack.app.api_send("POST", "/api/v1/vms", &body).unwrap();
    }
    let boot = Duration::from_secs(180);
    let took = wait_until("vm1 and vm2 answer each other's pings", boot, || {
        let ok = |h, n| pings(&console(&rack, h, n)).iter().any(|p| p.1);
        Ok(ok(0, "vm1") && ok(1, "vm2"))
    })
    .unwrap();
    println!("QEMU guests on tenant-a across hosts: pings answered {took:?} after create");
    wait_until("vm3 tried five times", boot, || {
        Ok(pings(&console(&rack, 2, "vm3")).len() >= 5)
    })
    .unwrap();
    let vm3 = pings(&console(&rack, 2, "vm3"));
    assert!(
        vm3.iter().all(|p| !p.1),
        "vm3 on tenant-b reached an address of tenant-a: {vm3:?}"
    );

    // Live-migrate vm2 to host 3: it keeps its address and vm1 reaches it again.
    let before = pings(&console(&rack, 0, "vm1")).last().map_or(0, |p| p.0);
    rack.app
        .api_send("POST", "/api/v1/vms/vm2/migrate", &json!({"host": mac(2)}))
        .unwrap();
    let moved = cosm_e2e::guest::wait_vm(
        &rack.app,
        "vm2",
        "migration to host 3",
        Duration::from_secs(120),
        |v| v["state"] == "running" && v["host"] == mac(2).as_str(),
    )
    .unwrap();
    assert_eq!(moved["nics"][0]["ip"], "198.51.100.11", "{moved}");
    // Steady again: the last three pings, all sent after the migration finished, answered.
    let done = pings(&console(&rack, 0, "vm1")).last().map_or(0, |p| p.0);
    wait_until(
        "vm1 reaches vm2 on its new host, three times in a row",
        Duration::from_secs(60),
        || {
            let p = pings(&console(&rack, 0, "vm1"));
            let tail: Vec<_> = p.iter().rev().take(3).collect();
            Ok(tail.len() == 3 && tail.iter().all(|x| x.0 > done && x.1))
        },
    )
    .unwrap();
    // The gap: pings after the migration was asked for that failed, one a second.
    let after: Vec<(u64, bool)> = pings(&console(&rack, 0, "vm1"))
        .into_iter()
        .filter(|p| p.0 > before)
        .collect();
    let lost = after.iter().filter(|p| !p.1).count();
    println!(
        "live migration of vm2: vm1 lost {lost} of {} pings (one a second) from the request to now",
        after.len()
    );
    assert!(
        after.iter().any(|p| p.0 > done && p.1),
        "no ping answered after the migration: {after:?}"
    );
}
