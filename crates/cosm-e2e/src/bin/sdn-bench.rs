//! `make bench` part 5: tenant networks (issue 14). Three figures, all on the real kernel
//! in network namespaces this run makes and deletes:
//!
//! 1. Reconcile on one host for 100 networks × 20 ports (every port secured by a group of
//!    two rules, two peer hosts per network, the 2,000 port devices made beforehand):
//!    cold (nothing there yet) and no-op (a second pass), each one run of `cosm-sdn-apply`
//!    (the agent's driver; the figure includes starting the process, a few ms).
//! 2. nftables as ports grow (10 … 2,000 secured ports on 10 networks): the rules the
//!    ruleset has and the time `nft -j -f` takes to load it into an empty namespace, and
//!    the cost per port.
//! 3. TCP throughput (iperf3, 5 s) between two guests' namespaces on one tenant network
//!    across two hosts (VXLAN over a veth, the driver's rules in place), against the same
//!    pair on a plain bridge across the same two hosts: the VXLAN overhead.

use anyhow::{bail, Context};
use cosm_e2e::bench::{figure, print_report, Figure};
use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_wire::{
    port_device, Direction, GroupMembers, HostNetwork, HostNetworks, HostPort, MacAddr, Protocol,
    Remote, SecRule,
};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NETWORKS: u32 = 100;
const PORTS_PER_NETWORK: u32 = 20;
const GROWTH: [u32; 5] = [10, 100, 500, 1_000, 2_000];

fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr::new([0x52, 0x54, 0x01, b[1], b[2], b[3]])
}

fn rules() -> Vec<SecRule> {
    vec![
        SecRule {
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            ports: Some((22, 22)),
            remote: Remote::Cidr("0.0.0.0/0".parse().expect("cidr")),
        },
        SecRule {
            direction: Direction::Egress,
            protocol: Protocol::Any,
            ports: None,
            remote: Remote::Cidr("0.0.0.0/0".parse().expect("cidr")),
        },
    ]
}

/// `networks` networks (VNI 1…) of `per` secured ports each, two peers per network.
fn desired(networks: u32, per: u32) -> HostNetworks {
    let mut d = HostNetworks::default();
    for v in 1..=networks {
        d.networks.push(HostNetwork {
            name: format!("n{v}").parse().expect("name"),
            vni: v,
            cidr: "10.0.0.0/16".parse().expect("cidr"),
            mtu: 1450,
            peers: vec![Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)],
        });
        for p in 0..per {
            let m = mac(v * 10_000 + p);
            d.ports.push(HostPort {
                vni: v,
                device: port_device(&m),
                mac: m,
                ip: Ipv4Addr::new(10, 0, (p / 250) as u8, (p % 250 + 2) as u8),
                secured: true,
                rules: rules(),
            });
        }
    }
    d.groups = Vec::<GroupMembers>::new();
    d
}

fn ip(ns: &NetNs, args: &[&str]) -> anyhow::Result<String> {
    let mut c = ns.command("ip");
    c.args(args);
    ns.run_ok(c)
}

/// A namespace with an underlay `eth0` at 192.0.2.`n`/24 (a veth whose other end is in
/// `fabric`, on its bridge `ubr`).
fn host(fabric: &NetNs, n: u8) -> anyhow::Result<NetNs> {
    let h = NetNs::new("sb")?;
    let outside = format!("u{n}{}", std::process::id() % 10_000);
    let out = Command::new("ip")
        .args(["link", "add", &outside, "netns", fabric.name()])
        .args(["type", "veth", "peer", "name", "eth0", "netns", h.name()])
        .output()?;
    if !out.status.success() {
        bail!("veth: {}", String::from_utf8_lossy(&out.stderr));
    }
    ip(fabric, &["link", "set", &outside, "master", "ubr", "up"])?;
    ip(
        &h,
        &["addr", "add", &format!("192.0.2.{n}/24"), "dev", "eth0"],
    )?;
    ip(&h, &["link", "set", "eth0", "up"])?;
    Ok(h)
}

fn fabric() -> anyhow::Result<NetNs> {
    let f = NetNs::new("sbf")?;
    ip(&f, &["link", "add", "ubr", "type", "bridge"])?;
    ip(&f, &["link", "set", "ubr", "up"])?;
    Ok(f)
}

/// One pass of the driver in `ns`; returns its time and how many changes it made.
fn apply(ns: &NetNs, file: &Path, vtep: &str, dev: &str) -> anyhow::Result<(Duration, usize)> {
    let tool = cosm_e2e::bin("cosm-sdn-apply");
    let mut c = ns.command(&tool.to_string_lossy());
    c.args(["--vtep", vtep, "--dev", dev]).arg(file);
    let started = Instant::now();
    let out = ns.run_timeout(c, Duration::from_secs(600))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "cosm-sdn-apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let changes: Vec<String> =
        serde_json::from_slice(&out.stdout).context("cosm-sdn-apply's output")?;
    Ok((took, changes.len()))
}

fn write(dir: &Path, name: &str, d: &HostNetworks) -> anyhow::Result<std::path::PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(d)?)?;
    Ok(p)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn reconcile_at_scale(out: &mut Vec<Figure>, dir: &Path) -> anyhow::Result<()> {
    eprintln!("== reconcile: {NETWORKS} networks × {PORTS_PER_NETWORK} ports on one host");
    let f = fabric()?;
    let h = host(&f, 1)?;
    let guests = NetNs::new("sbg")?;
    let d = desired(NETWORKS, PORTS_PER_NETWORK);
    // The port devices, as VMs' taps would be: veths whose other ends wait in `guests`.
    let mut batch = String::new();
    for (i, p) in d.ports.iter().enumerate() {
        batch.push_str(&format!(
            "link add {} type veth peer name g{i} netns {}\n",
            p.device,
            guests.name()
        ));
    }
    let file = dir.join("veths.batch");
    std::fs::write(&file, batch)?;
    let made = Instant::now();
    let mut c = Command::new("ip");
    c.args(["-n", h.name(), "-batch"]).arg(&file);
    let o = h.run_timeout(c, Duration::from_secs(600))?;
    if !o.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&o.stderr));
    }
    eprintln!(
        "  made {} port devices in {}",
        d.ports.len(),
        ms(made.elapsed())
    );
    let desired_file = write(dir, "scale.json", &d)?;
    let (cold, n_cold) = apply(&h, &desired_file, "192.0.2.1", "eth0")?;
    let (noop, n_noop) = apply(&h, &desired_file, "192.0.2.1", "eth0")?;
    if n_noop != 0 {
        bail!("the second pass changed {n_noop} things: reconcile is not idempotent");
    }
    let rules = count_rules(&h)?;
    figure(
        out,
        format!(
            "reconcile {NETWORKS} networks × {PORTS_PER_NETWORK} ports, cold ({n_cold} changes)"
        ),
        ms(cold),
    );
    figure(
        out,
        "reconcile, the same again (no-op pass, 0 changes)",
        ms(noop),
    );
    figure(
        out,
        format!("nftables rules for {} secured ports", d.ports.len()),
        rules.to_string(),
    );
    Ok(())
}

fn count_rules(ns: &NetNs) -> anyhow::Result<usize> {
    let mut c = ns.command("nft");
    c.args(["-j", "list", "ruleset"]);
    let v: serde_json::Value = serde_json::from_str(&ns.run_ok(c)?)?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["rule"].is_object())
        .count())
}

fn nft_growth(out: &mut Vec<Figure>, dir: &Path) -> anyhow::Result<()> {
    eprintln!("== nftables as ports grow");
    let mut points = Vec::new();
    for n in GROWTH {
        let d = desired(10, n / 10);
        let file = dir.join(format!("nft-{n}.json"));
        std::fs::write(&file, serde_json::to_vec(&cosm_sdn::ruleset::ruleset(&d))?)?;
        let ns = NetNs::new("sbn")?;
        let mut c = ns.command("nft");
        c.args(["-j", "-f"]).arg(&file);
        let started = Instant::now();
        let o = ns.run_timeout(c, Duration::from_secs(600))?;
        let took = started.elapsed();
        if !o.status.success() {
            bail!(
                "nft -j -f failed for {n} ports: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let rules = count_rules(&ns)?;
        figure(
            out,
            format!("nft: {n} secured ports → rules, load time"),
            format!("{rules} rules, {}", ms(took)),
        );
        points.push((n, rules, took));
    }
    let (n0, r0, t0) = points[0];
    let (n1, r1, t1) = *points.last().expect("points");
    let per_port_rules = (r1 - r0) as f64 / f64::from(n1 - n0);
    let per_port_us = (t1.as_secs_f64() - t0.as_secs_f64()) * 1e6 / f64::from(n1 - n0);
    figure(
        out,
        "nft cost per port (slope 10 → 2,000 ports)",
        format!("{per_port_rules:.1} rules, {per_port_us:.0} µs to load"),
    );
    Ok(())
}

/// A guest namespace whose eth0 is a veth; the other end, `device`, is left in `host`.
fn guest(host: &NetNs, device: &str, mac: &MacAddr, addr: &str) -> anyhow::Result<NetNs> {
    let g = NetNs::new("sbq")?;
    let out = Command::new("ip")
        .args(["link", "add", device, "netns", host.name()])
        .args(["type", "veth", "peer", "name", "eth0", "netns", g.name()])
        .output()?;
    if !out.status.success() {
        bail!("veth: {}", String::from_utf8_lossy(&out.stderr));
    }
    ip(&g, &["link", "set", "eth0", "address", &mac.to_string()])?;
    ip(&g, &["link", "set", "eth0", "mtu", "1450"])?;
    ip(&g, &["addr", "add", addr, "dev", "eth0"])?;
    ip(&g, &["link", "set", "eth0", "up"])?;
    ip(host, &["link", "set", device, "mtu", "1450"])?;
    ip(host, &["link", "set", device, "up"])?;
    Ok(g)
}

/// iperf3 from `client` to `server_ip` (a server in `server`), 5 s: Gbit/s.
fn iperf(server: &NetNs, client: &NetNs, server_ip: &str) -> anyhow::Result<f64> {
    let mut s = server.command("iperf3");
    s.args(["-s", "-1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let pid = server.spawn(s)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut c = client.command("iperf3");
    c.args(["-c", server_ip, "-t", "5", "-J"]);
    let out = client.run_timeout(c, Duration::from_secs(60))?;
    let _ = server.kill(pid);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!(
                "iperf3 gave no figure: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
    Ok(bps / 1e9)
}

fn throughput(out: &mut Vec<Figure>, dir: &Path) -> anyhow::Result<()> {
    eprintln!("== throughput: VXLAN tenant network vs a plain bridge, across two hosts");
    // The tenant network: one port on each of two hosts, reconciled by the driver.
    let f = fabric()?;
    let (h1, h2) = (host(&f, 1)?, host(&f, 2)?);
    let (m1, m2) = (mac(1), mac(2));
    let net = HostNetwork {
        name: "bench".parse()?,
        vni: 42,
        cidr: "198.51.100.0/24".parse()?,
        mtu: 1450,
        peers: vec![],
    };
    let port = |m: MacAddr, last: u8| HostPort {
        vni: 42,
        device: port_device(&m),
        mac: m,
        ip: Ipv4Addr::new(198, 51, 100, last),
        secured: false,
        rules: vec![],
    };
    let g1 = guest(&h1, &port_device(&m1), &m1, "198.51.100.2/24")?;
    let g2 = guest(&h2, &port_device(&m2), &m2, "198.51.100.3/24")?;
    for (h, me, peer, p) in [
        (&h1, "192.0.2.1", "192.0.2.2", port(m1, 2)),
        (&h2, "192.0.2.2", "192.0.2.1", port(m2, 3)),
    ] {
        let mut n = net.clone();
        n.peers = vec![peer.parse()?];
        let d = HostNetworks {
            networks: vec![n],
            ports: vec![p],
            groups: vec![],
        };
        let file = write(dir, &format!("tp-{me}.json"), &d)?;
        apply(h, &file, me, "eth0")?;
    }
    let vxlan = iperf(&g2, &g1, "198.51.100.3")?;
    // The same pair on a plain bridge per host, joined by a second veth between the hosts.
    let (h3, h4) = (NetNs::new("sbp")?, NetNs::new("sbp")?);
    let out3 = Command::new("ip")
        .args(["link", "add", "xlink", "netns", h3.name()])
        .args(["type", "veth", "peer", "name", "xlink", "netns", h4.name()])
        .output()?;
    if !out3.status.success() {
        bail!("veth: {}", String::from_utf8_lossy(&out3.stderr));
    }
    let (m3, m4) = (mac(3), mac(4));
    let g3 = guest(&h3, "pport", &m3, "203.0.113.2/24")?;
    let g4 = guest(&h4, "pport", &m4, "203.0.113.3/24")?;
    for h in [&h3, &h4] {
        ip(h, &["link", "add", "plainbr", "type", "bridge"])?;
        for d in ["xlink", "pport", "plainbr"] {
            if d != "plainbr" {
                ip(h, &["link", "set", d, "master", "plainbr"])?;
            }
            ip(h, &["link", "set", d, "up"])?;
        }
    }
    let plain = iperf(&g4, &g3, "203.0.113.3")?;
    figure(
        out,
        "TCP, tenant network (VXLAN + rules) across hosts",
        format!("{vxlan:.2} Gbit/s"),
    );
    figure(
        out,
        "TCP, plain bridges across the same hosts",
        format!("{plain:.2} Gbit/s"),
    );
    figure(
        out,
        "VXLAN / plain",
        format!(
            "{:.2}× (overhead {:.0}%)",
            vxlan / plain,
            (1.0 - vxlan / plain) * 100.0
        ),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    require_root_tools(&["ip", "nft", "iperf3"]);
    let dir = tempfile::tempdir()?;
    let mut figures = Vec::new();
    reconcile_at_scale(&mut figures, dir.path())?;
    nft_growth(&mut figures, dir.path())?;
    throughput(&mut figures, dir.path())?;
    print_report(
        "sdn-bench: tenant networks on one host and between two",
        &figures,
        "namespaces",
        &[],
    );
    Ok(())
}
