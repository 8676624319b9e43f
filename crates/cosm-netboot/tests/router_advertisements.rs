//! The router-advertisement sender (`cosm_netboot::ra`) on a real link: the sender in one
//! network namespace, a host in another, joined by a veth pair, IPv6 on both. The host side
//! is real receivers: `rdisc6` (Debian's ndisc6) soliciting and decoding advertisements,
//! the host's kernel (neighbour cache, routing table), and raw ICMPv6 sockets opened here
//! to see what is on the wire (hop limit, destination) and to send solicitations the
//! sender must refuse or rate-limit.

mod netns;

use cosm_netboot::ra::packet::{self, router_advertisement, ROUTER_ADVERTISEMENT};
use cosm_netboot::ra::schedule::{Timing, PER_SOURCE_BURST};
use cosm_netboot::ra::{self, Advertising, RaHandle, RaObserver, Segment};
use cosm_wire::MacAddr;
use netns::{require_root_tools, run_ok, run_timeout, NetNs};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn6};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::IoSliceMut;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Unsolicited advertisements far apart (RFC 4861 allows up to 1800 s), so that any
/// advertisement seen within a second of a solicitation is its answer.
const SLOW: Timing = Timing {
    min_interval_ms: 60_000,
    max_interval_ms: 80_000,
};

/// The MACs the sender said it answered, in order.
#[derive(Debug, Default)]
struct Answered(std::sync::Mutex<Vec<MacAddr>>);

impl RaObserver for Answered {
    fn answered(&self, mac: MacAddr) {
        self.0.lock().unwrap().push(mac);
    }
}

/// The sender on a thread of its own inside a namespace (its socket is there); stopped and
/// joined on drop.
struct Sender {
    handle: RaHandle,
    answered: std::sync::Arc<Answered>,
    stop: watch::Sender<bool>,
    _segment: watch::Sender<Option<Segment>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sender {
    fn start(ns: &NetNs, interface: &str, timing: Timing) -> Sender {
        let (segment, segment_rx) = watch::channel(Some(Segment::Interface(interface.into())));
        let (stop, stop_rx) = watch::channel(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_name = ns.name().to_string();
        let answered = std::sync::Arc::new(Answered::default());
        let observer = answered.clone();
        let thread = std::thread::spawn(move || {
            netns::enter(&ns_name);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (handle, serve) = ra::start(segment_rx, timing, observer, stop_rx);
                tx.send(handle).unwrap();
                serve.await;
            });
        });
        let handle = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the sender thread did not start within 10 s");
        Sender {
            handle,
            answered,
            stop,
            _segment: segment,
            thread: Some(thread),
        }
    }

    /// Waits until the sender advertises from a link-local address and its first
    /// (unsolicited) advertisement went out.
    fn wait_advertising(&self) -> Advertising {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = self.handle.advertising() {
                if a.link_local.is_some() && self.handle.stats.periodic.load(Ordering::Relaxed) > 0
                {
                    return a;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sender did not start advertising within 10 s: {:?}",
                self.handle.advertising()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two namespaces with IPv6 joined by a veth pair: (appliance side, its interface, host
/// side, its interface). The host's kernel sends no solicitations of its own, so every
/// solicitation on the link is one a test sent.
fn link() -> (NetNs, String, NetNs, String) {
    require_root_tools(&["ip", "sysctl", "rdisc6"]);
    let a = NetNs::new_ipv6("raa");
    let b = NetNs::new_ipv6("rab");
    let mut quiet = b.command("sysctl");
    quiet.args(["-qw", "net.ipv6.conf.default.router_solicitations=0"]);
    run_ok(quiet);
    NetNs::link_pair(&a, "", &b, "");
    let (a_if, b_if) = (a.interfaces()[0].clone(), b.interfaces()[0].clone());
    // The kernel makes the link-local addresses (and the multicast routes) once the link
    // is up: before that, sending on the link is "Network is unreachable".
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ns, interface) in [(&a, &a_if), (&b, &b_if)] {
        while try_link_local(ns, interface).is_none() {
            assert!(
                Instant::now() < deadline,
                "{interface} has no link-local address after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (a, a_if, b, b_if)
}

/// The interface's MAC, as `ip` shows it.
fn mac_of(ns: &NetNs, interface: &str) -> MacAddr {
    let mut cmd = ns.command("ip");
    cmd.args(["-o", "link", "show", interface]);
    let out = run_ok(cmd);
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"));
    mac.parse().unwrap()
}

/// The interface's link-local address, as `ip` shows it.
fn link_local_of(ns: &NetNs, interface: &str) -> Ipv6Addr {
    try_link_local(ns, interface).unwrap_or_else(|| panic!("{interface} has no link-local address"))
}

fn try_link_local(ns: &NetNs, interface: &str) -> Option<Ipv6Addr> {
    let mut cmd = ns.command("ip");
    cmd.args([
        "-o", "-6", "addr", "show", "dev", interface, "scope", "link",
    ]);
    let out = run_ok(cmd);
    let addr = out
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)?;
    addr.split('/').next()?.parse().ok()
}

/// `rdisc6` in the host namespace: one attempt, waiting at most `wait_ms`; with
/// `solicit = false` it only listens. Returns (succeeded, output, time taken).
fn rdisc6(ns: &NetNs, interface: &str, solicit: bool, wait_ms: u32) -> (bool, String, Duration) {
    let mut cmd = ns.command("rdisc6");
    cmd.args(["-1", "-n", "-r", "1", "-w", &wait_ms.to_string()]);
    if !solicit {
        cmd.arg("-d");
    }
    cmd.arg(interface);
    let t = Instant::now();
    let out = run_timeout(cmd, Duration::from_secs(30)).unwrap();
    let took = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, took)
}

/// The value after `label :` in rdisc6's output.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("rdisc6 printed no {label:?}:\n{out}"))
}

/// Checks one advertisement as rdisc6 decoded it: from the sender's link-local address,
/// router lifetime 0, M and O off, no prefix, the sender's MAC.
fn assert_decoded(out: &str, from: Ipv6Addr, mac: MacAddr) {
    assert!(
        field(out, "Router lifetime").starts_with("0 "),
        "router lifetime is not 0:\n{out}"
    );
    assert_eq!(field(out, "Stateful address conf."), "No", "M flag:\n{out}");
    assert_eq!(field(out, "Stateful other conf."), "No", "O flag:\n{out}");
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("Prefix")),
        "an advertised prefix:\n{out}"
    );
    assert_eq!(
        field(out, "Source link-layer address")
            .parse::<MacAddr>()
            .unwrap(),
        mac,
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.trim() == format!("from {from}")),
        "not from {from}:\n{out}"
    );
}

/// A raw ICMPv6 socket on `interface` inside namespace `ns` (opened on a thread that joined
/// it): multicast out of the interface, hop limit `hops`, and told the hop limit and
/// destination of what it receives.
fn icmp_socket(ns: &NetNs, interface: &str, hops: u32) -> (Socket, u32) {
    let (name, interface) = (ns.name().to_string(), interface.to_string());
    std::thread::spawn(move || {
        netns::enter(&name);
        let index = nix::net::if_::if_nametoindex(interface.as_str()).unwrap();
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
        s.bind_device(Some(interface.as_bytes())).unwrap();
        s.set_multicast_if_v6(index).unwrap();
        s.set_multicast_hops_v6(hops).unwrap();
        s.set_unicast_hops_v6(hops).unwrap();
        setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).unwrap();
        setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true).unwrap();
        setsockopt(&s, sockopt::ReceiveTimestampns, &true).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        (s, index)
    })
    .join()
    .unwrap()
}

/// An advertisement as it arrived: ICMPv6 bytes, source, destination, hop limit, and
/// when the kernel received it (since the epoch; the socket may be read later).
#[derive(Debug)]
struct Seen {
    bytes: Vec<u8>,
    from: Ipv6Addr,
    to: Option<Ipv6Addr>,
    hop_limit: Option<i32>,
    at: Duration,
}

/// Router advertisements received on `s` until `until`.
fn advertisements(s: &Socket, until: Instant) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        let mut control = nix::cmsg_space!(
            nix::libc::c_int,
            nix::libc::in6_pktinfo,
            nix::libc::timespec
        );
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<SockaddrIn6>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::empty(),
        ) else {
            continue; // the read timeout
        };
        let (n, from) = (msg.bytes, msg.address.map(|a| a.ip()));
        let (mut to, mut hop_limit, mut at) = (None, None, None);
        for c in msg.cmsgs().unwrap() {
            match c {
                ControlMessageOwned::ScmTimestampns(t) => {
                    at = Some(Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    to = Some(Ipv6Addr::from(i.ipi6_addr.s6_addr))
                }
                ControlMessageOwned::Ipv6HopLimit(h) => hop_limit = Some(h),
                _ => {}
            }
        }
        if n > 0 && buf[0] == ROUTER_ADVERTISEMENT {
            out.push(Seen {
                bytes: buf[..n].to_vec(),
                from: from.unwrap(),
                to,
                hop_limit,
                at: at.expect("no receive timestamp"),
            });
        }
    }
    out
}

/// A router solicitation with a source link-layer address option.
fn solicitation(mac: MacAddr) -> Vec<u8> {
    let mut p = vec![packet::ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    p.extend(mac.octets());
    p
}

fn send_to_routers(s: &Socket, index: u32, bytes: &[u8]) {
    let to = SocketAddrV6::new("ff02::2".parse().unwrap(), 0, 0, index);
    s.send_to(bytes, &to.into()).unwrap();
}

/// The host's `ip -6 route` and `ip -6 neigh` for its interface.
fn host_routes(ns: &NetNs, interface: &str) -> (String, String) {
    let mut route = ns.command("ip");
    route.args(["-6", "route", "show", "default"]);
    let mut neigh = ns.command("ip");
    neigh.args(["-6", "neigh", "show", "dev", interface]);
    (run_ok(route), run_ok(neigh))
}

#[test]
fn rdisc6_is_answered_at_once_with_lifetime_0_no_prefix_and_the_mac_and_no_route_follows() {
    let (a, a_if, b, b_if) = link();
    let mac = mac_of(&a, &a_if);
    let ll = link_local_of(&a, &a_if);
    let sender = Sender::start(&a, &a_if, SLOW);
    let adv = sender.wait_advertising();
    assert_eq!(
        (adv.interface.as_str(), adv.mac, adv.link_local),
        (a_if.as_str(), mac, Some(ll))
    );

    // rdisc6 solicits once and waits three seconds (an answer may be delayed by up to half
    // a second, RFC 4861 6.2.6, more on a busy machine): with unsolicited advertisements a
    // minute apart, what it gets is the answer to its solicitation. Twice, as a booting
    // machine retransmits.
    for round in 1..=2u64 {
        let (ok, out, took) = rdisc6(&b, &b_if, true, 3000);
        assert!(
            ok,
            "rdisc6 round {round} got no answer within 3 s ({took:?}):\n{out}"
        );
        assert_decoded(&out, ll, mac);
        let stats = &sender.handle.stats;
        assert_eq!(stats.solicited.load(Ordering::Relaxed), round, "{out}");
        assert_eq!(stats.answered.load(Ordering::Relaxed), round);
        assert_eq!(
            stats.periodic.load(Ordering::Relaxed),
            1,
            "only the first one"
        );
    }

    // The host's kernel took the advertisements (the sender is in its neighbour cache, as
    // a router, with the advertised MAC) and installed no default route from them.
    let (routes, neigh) = host_routes(&b, &b_if);
    assert!(routes.trim().is_empty(), "a default route: {routes}");
    let entry = neigh
        .lines()
        .find(|l| l.starts_with(&format!("{ll} ")))
        .unwrap_or_else(|| panic!("{ll} is not in the host's neighbour cache:\n{neigh}"));
    assert!(
        entry.contains(&format!("lladdr {mac}")) && entry.contains("router"),
        "{entry}"
    );

    // The check above can fail: the same advertisement with a router lifetime makes the
    // same kernel install a default route via the sender.
    let (s, index) = icmp_socket(&a, &a_if, 255);
    let mut with_lifetime = router_advertisement(mac);
    with_lifetime[6..8].copy_from_slice(&1800u16.to_be_bytes());
    let to = SocketAddrV6::new("ff02::1".parse().unwrap(), 0, 0, index);
    s.send_to(&with_lifetime, &to.into()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (routes, _) = host_routes(&b, &b_if);
        if routes.contains(&format!("default via {ll} dev {b_if}")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an advertisement with a lifetime installed no default route: {routes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unsolicited_advertisements_go_to_all_nodes_every_three_to_four_seconds_with_hop_limit_255() {
    let (a, a_if, b, b_if) = link();
    let mac = mac_of(&a, &a_if);
    let ll = link_local_of(&a, &a_if);
    let (listener, _) = icmp_socket(&b, &b_if, 255);
    let sender = Sender::start(&a, &a_if, Timing::PROVISIONING);
    let started = Instant::now();
    sender.wait_advertising();
    // rdisc6 without soliciting hears one (a periodic one) within 5 s, and decodes it.
    let (ok, out, took) = rdisc6(&b, &b_if, false, 5000);
    assert!(
        ok,
        "no unsolicited advertisement within 5 s ({took:?}):\n{out}"
    );
    assert_decoded(&out, ll, mac);
    let seen = advertisements(&listener, started + Duration::from_secs(12));
    let observed = started.elapsed();
    assert!(
        seen.len() >= 2,
        "{} advertisements in {observed:?}",
        seen.len()
    );
    for s in &seen {
        assert_eq!(s.from, ll, "{s:?}");
        assert_eq!(s.to, Some("ff02::1".parse().unwrap()), "{s:?}");
        assert_eq!(s.hop_limit, Some(255), "{s:?}");
        // The kernel filled in the checksum; the rest is ours.
        assert_eq!(&s.bytes[..2], &router_advertisement(mac)[..2], "{s:?}");
        assert_eq!(&s.bytes[4..], &router_advertisement(mac)[4..], "{s:?}");
    }
    // Never closer than MinRtrAdvInterval (3 s; a little slack for the receiving side's
    // scheduling), and no more of them than that allows.
    for w in seen.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(2_800), "{gap:?} apart");
    }
    let most = observed.as_millis() as usize / 3_000 + 1;
    let sent = sender.handle.stats.periodic.load(Ordering::Relaxed) as usize;
    assert!(sent <= most, "{sent} sent in {observed:?}");
    assert_eq!(sender.handle.stats.solicited.load(Ordering::Relaxed), 0);
}

#[test]
fn invalid_solicitations_get_nothing_and_a_flood_gets_a_bounded_answer() {
    let (a, a_if, b, b_if) = link();
    let b_mac = mac_of(&b, &b_if);
    let b_ll = link_local_of(&b, &b_if);
    let sender = Sender::start(&a, &a_if, SLOW);
    sender.wait_advertising();
    let stats = sender.handle.stats.clone();
    let (good, index) = icmp_socket(&b, &b_if, 255);
    let (far, _) = icmp_socket(&b, &b_if, 64);

    // Invalid: a hop limit other than 255 (it may have crossed a router), an option of
    // length 0, an option running past the end, a non-zero code, a truncated header.
    let rs = solicitation(b_mac);
    let mut zero_len = rs.clone();
    zero_len[9] = 0;
    let mut overrun = rs.clone();
    overrun[9] = 3;
    let mut code = rs.clone();
    code[1] = 7;
    for _ in 0..10 {
        send_to_routers(&far, index, &rs);
        for bad in [&zero_len, &overrun, &code, &rs[..6].to_vec()] {
            send_to_routers(&good, index, bad);
        }
    }
    let seen = advertisements(&good, Instant::now() + Duration::from_millis(1_500));
    assert!(
        seen.is_empty(),
        "invalid solicitations were answered: {seen:?}"
    );
    assert_eq!(stats.invalid.load(Ordering::Relaxed), 50);
    assert_eq!(stats.answered.load(Ordering::Relaxed), 0);

    // A flood of valid ones from one host: one every millisecond for 3 s, while this
    // thread listens. The host's bucket holds 3 answers and refills one per second;
    // solicitations that arrive while an answer waits for its delay share it.
    let flood = Instant::now();
    let flooder = {
        let s = good.try_clone().unwrap();
        let rs = rs.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while flood.elapsed() < Duration::from_secs(3) {
                send_to_routers(&s, index, &rs);
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (n, flood.elapsed())
        })
    };
    // Listening until 6 s: the last answers go out up to half a second after the flood
    // ends, later on a busy machine, and each one sent must be seen here.
    let seen = advertisements(&good, flood + Duration::from_secs(6));
    let (sent, flooded) = flooder.join().unwrap();
    // The bucket refills once a second for as long as the flood went on.
    let window = flooded.as_secs() as usize + 1;
    let unicast: Vec<_> = seen.iter().filter(|s| s.to == Some(b_ll)).collect();
    assert!(
        unicast.len() >= 2 && unicast.len() <= PER_SOURCE_BURST as usize + window,
        "{} answers to {sent} solicitations from one host in {window} s: {seen:?}",
        unicast.len()
    );
    assert!(stats.rate_limited.load(Ordering::Relaxed) > 0);
    // The solicitations carried the host's MAC: the observer heard of each answer by it.
    let told = sender.answered.0.lock().unwrap().clone();
    assert_eq!(told, vec![b_mac; unicast.len()]);
    // The sender still serves: once the bucket refilled, rdisc6 is answered.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, out, took) = rdisc6(&b, &b_if, true, 3000);
    assert!(ok, "no answer after the flood ({took:?}):\n{out}");
}
