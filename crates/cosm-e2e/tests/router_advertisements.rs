//! The appliance's IPv6 router advertisements (`dhcp.router_advertisements`) as the daemon
//! runs them: the appliance in one network namespace serving DHCP on a veth, a host in
//! another, IPv6 on both ends. `rdisc6` (Debian's ndisc6) solicits from the host and decodes
//! the answer; `/metrics`, the log and the host's routing table say the rest. Then the site
//! settings switch DHCP to proxy mode, and the advertisements stop; and an appliance
//! configured with them off sends none. (The sender itself is tested in
//! `crates/cosm-netboot/tests/router_advertisements.rs`; a firmware boot with and without
//! them in `tests/boot_rack.rs` and the `pxe-bench` binary.)

use cosm_e2e::netns::{require_root_tools, NetNs};
use cosm_e2e::Appliance;
use std::time::{Duration, Instant};

fn config(iface: &str, more: &str) -> String {
    format!(
        r#"
[dhcp]
server_id = "192.0.2.1"
interface = "{iface}"
{more}
[[dhcp.subnets]]
cidr = "192.0.2.0/24"
pools = ["192.0.2.100-192.0.2.150"]
"#
    )
}

/// Appliance and host namespaces joined by a veth with IPv6 on both ends (the fixture
/// turns it off namespace-wide); the host's kernel sends no solicitations of its own.
/// Returns both namespaces, both interfaces, and the appliance end's MAC and link-local
/// address.
fn segment() -> (NetNs, NetNs, String, String, String, String) {
    let srv = NetNs::new("ras").unwrap();
    let host = NetNs::new("rah").unwrap();
    NetNs::link_pair(&srv, "192.0.2.1/24", &host, "192.0.2.254/24").unwrap();
    let s_if = srv.interfaces().last().unwrap().clone();
    let h_if = host.interfaces().last().unwrap().clone();
    for (ns, iface) in [(&srv, &s_if), (&host, &h_if)] {
        let mut sysctl = ns.command("sysctl");
        sysctl.args([
            "-qw",
            &format!("net.ipv6.conf.{iface}.accept_dad=0"),
            &format!("net.ipv6.conf.{iface}.router_solicitations=0"),
            &format!("net.ipv6.conf.{iface}.disable_ipv6=0"),
        ]);
        ns.run_ok(sysctl).unwrap();
    }
    let mut mac = srv.command("cat");
    mac.arg(format!("/sys/class/net/{s_if}/address"));
    let mac = srv.run_ok(mac).unwrap().trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lls = Vec::new();
    for (ns, iface) in [(&srv, &s_if), (&host, &h_if)] {
        loop {
            let mut show = ns.command("ip");
            show.args(["-o", "-6", "addr", "show", "dev", iface, "scope", "link"]);
            let out = ns.run_ok(show).unwrap();
            if let Some(a) = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1) {
                lls.push(a.split('/').next().unwrap().to_string());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{iface} has no link-local address after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (srv, host, s_if, h_if, mac, lls.swap_remove(0))
}

/// `rdisc6` from the host: up to `tries` solicitations, three seconds apart (an answer may
/// wait up to half a second by RFC 4861, more on a busy machine). Returns whether
/// an advertisement came, and what rdisc6 printed.
fn rdisc6(host: &NetNs, iface: &str, tries: u32) -> (bool, String) {
    let mut cmd = host.command("rdisc6");
    cmd.args(["-1", "-n", "-r", &tries.to_string(), "-w", "3000", iface]);
    let out = host.run_timeout(cmd, Duration::from_secs(30)).unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of a metric line (`name{labels} value`), 0 when absent.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_appliance_answers_router_solicitations_on_its_dhcp_interface_until_proxy_mode() {
    require_root_tools(&["ip", "sysctl", "rdisc6", "curl"]);
    let (srv, host, s_if, h_if, mac, ll) = segment();
    let app = Appliance::start_with(Some(srv.name()), &config(&s_if, "")).unwrap();

    // The answer to rdisc6's solicitation: from the appliance's link-local address, with its
    // MAC, router lifetime 0, no prefix.
    let (ok, out) = rdisc6(&host, &h_if, 3);
    assert!(
        ok,
        "no advertisement:\n{out}\nappliance log:\n{}",
        app.log_text()
    );
    let field = |label: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_lowercase())
            .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
    };
    assert!(field("Router lifetime").starts_with("0 "), "{out}");
    assert_eq!(field("Source link-layer address"), mac, "{out}");
    assert!(out.contains(&format!("from {ll}")), "{out}");
    assert!(!out.contains("Prefix"), "{out}");

    // The log line, and the counters.
    let log = app.log_text();
    assert!(
        log.contains(&format!("router advertisements on {s_if} every 3–4 s")),
        "{log}"
    );
    let m = app.metrics().unwrap();
    assert!(
        metric(&m, "cosm_ra_sent_packets_total{kind=\"periodic\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "cosm_ra_sent_packets_total{kind=\"solicited\"}") >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "cosm_ra_solicitations_total{outcome=\"answered\"}") >= 1,
        "{m}"
    );
    assert_eq!(metric(&m, "cosm_ra_advertising"), 1, "{m}");

    // The host's kernel took no default route from it.
    let mut routes = host.command("ip");
    routes.args(["-6", "route", "show", "default"]);
    let routes = host.run_ok(routes).unwrap();
    assert!(routes.trim().is_empty(), "{routes}");

    // The site settings put DHCP in proxy mode: another server owns the segment now, so
    // the advertisements stop (no answer to three solicitations, none unsolicited either).
    let mut settings = app.api("/api/v1/settings").unwrap()["settings"].clone();
    settings["network"]["mode"] = "proxy".into();
    app.api_send("PUT", "/api/v1/settings", &settings).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&app.metrics().unwrap(), "cosm_ra_advertising") != 0 {
        assert!(Instant::now() < deadline, "still advertising in proxy mode");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out) = rdisc6(&host, &h_if, 3);
    assert!(!ok, "answered in proxy mode:\n{out}");
    assert!(
        app.log_text().contains("router advertisements paused"),
        "{}",
        app.log_text()
    );

    // Back to authoritative: they resume.
    settings["network"]["mode"] = "authoritative".into();
    app.api_send("PUT", "/api/v1/settings", &settings).unwrap();
    let (ok, out) = rdisc6(&host, &h_if, 5);
    assert!(ok, "not answered after returning to authoritative:\n{out}");
}

#[test]
fn with_router_advertisements_off_the_appliance_sends_none() {
    require_root_tools(&["ip", "sysctl", "rdisc6", "curl"]);
    let (srv, host, s_if, h_if, _, _) = segment();
    let app = Appliance::start_with(
        Some(srv.name()),
        &config(&s_if, "router_advertisements = false"),
    )
    .unwrap();
    let (ok, out) = rdisc6(&host, &h_if, 3);
    assert!(!ok, "answered with router_advertisements = false:\n{out}");
    let m = app.metrics().unwrap();
    assert!(!m.contains("cosm_ra_"), "{m}");
    assert!(
        app.log_text().contains("router advertisements off"),
        "{}",
        app.log_text()
    );
}
