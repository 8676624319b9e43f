//! perfdhcp (Kea's load generator, acting as a relay) drives full DORA for 10,000 distinct
//! MACs through the appliance; afterwards the lease table holds one lease per MAC and no
//! address twice. This is a correctness test under load; `make bench` measures speed.

use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::Appliance;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

const MACS: usize = 10_000;

/// perfdhcp sets giaddr to its own address (198.51.100.2), so the served subnet is tied to
/// that relay. The leased addresses are numbers inside DHCP payloads only; they come from
/// 198.18.0.0/15, the range set aside for network benchmarks (RFC 2544), because the
/// documentation /24s cannot hold 10,000 leases.
const CONFIG: &str = r#"
[dhcp]
server_id = "198.51.100.1"
max_unknown_leases = 100000
per_mac_rate = 0
[[dhcp.subnets]]
cidr = "198.18.0.0/16"
relays = ["198.51.100.2"]
pools = ["198.18.0.1-198.18.63.254"]
routers = ["198.18.0.1"]
lease_time_secs = 3600
"#;

#[test]
fn perfdhcp_dora_for_10000_macs_leaves_no_duplicate_address() {
    require_root_tools(&["ip", "perfdhcp", "curl", "taskset"]);
    let srv = NetNs::new("pfs").unwrap();
    let cli = NetNs::new("pfc").unwrap();
    NetNs::link_pair(&srv, "198.51.100.1/24", &cli, "198.51.100.2/24").unwrap();
    let app = Appliance::start_with(Some(srv.name()), CONFIG).unwrap();

    // perfdhcp -R draws each exchange's MAC at random from 10,000, so rounds continue
    // until every one of them has completed DORA (bounded: 12 rounds).
    let mut distinct = 0;
    let mut acks = 0u64;
    for round in 0..12 {
        let mut cmd = cli.command("taskset");
        cmd.args([
            "-c",
            "1",
            "perfdhcp",
            "-4",
            "-l",
            "198.51.100.2",
            "-R",
            &MACS.to_string(),
        ])
        .args(["-r", "3000", "-n", "15000", "-p", "15", "198.51.100.1"]);
        let out = cli.run_timeout(cmd, Duration::from_secs(40)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The second "received packets" line is the REQUEST/ACK exchange.
        acks += text
            .lines()
            .filter(|l| l.starts_with("received packets:"))
            .nth(1)
            .and_then(|l| l.split(':').nth(1))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "cannot read perfdhcp's output:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let leases = app.api("/api/v1/leases?state=bound").unwrap();
        distinct = leases.as_array().unwrap().len();
        eprintln!(
            "round {round}: {distinct} MACs hold leases, {acks} ACKs received by perfdhcp so far"
        );
        if distinct >= MACS {
            break;
        }
    }
    assert_eq!(
        distinct, MACS,
        "not every MAC completed DORA within 12 rounds"
    );

    let leases = app.api("/api/v1/leases").unwrap();
    let mut by_ip: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut macs = HashSet::new();
    for l in leases.as_array().unwrap() {
        let ip: Ipv4Addr = l["ip"].as_str().unwrap().parse().unwrap();
        let mac = l["mac"].as_str().unwrap().to_string();
        let o = ip.octets();
        assert!(
            o[0] == 198 && o[1] == 18 && o[2] < 64,
            "{ip} is outside the pool"
        );
        assert!(macs.insert(mac.clone()), "{mac} holds two lease records");
        if let Some(other) = by_ip.insert(ip, mac.clone()) {
            panic!("{ip} is leased to both {other} and {mac}");
        }
    }
    assert_eq!(by_ip.len(), MACS);
}
