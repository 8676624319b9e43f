//! Unit and property tests of the DHCP core.

use super::config::*;
use super::core::*;
use super::leases::*;
use cosm_wire::{LeaseState, MacAddr, Timestamp};
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, OptionCode};
use proptest::prelude::*;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn mac(n: u8) -> MacAddr {
    MacAddr::new([0x52, 0x54, 0, 0, 0, n])
}

fn subnet(net: &str, first: &str, last: &str) -> Subnet {
    Subnet {
        network: ip(net),
        prefix_len: 24,
        pools: vec![Pool {
            first: ip(first),
            last: ip(last),
        }],
        routers: vec![ip("192.0.2.1")],
        dns: vec![ip("192.0.2.53")],
        domain: Some("rack.test".into()),
        mtu: Some(1500),
        lease_time_secs: 600,
        relays: vec![],
    }
}

fn cfg() -> DhcpConfig {
    DhcpConfig {
        mode: Mode::Authoritative,
        server_id: ip("192.0.2.1"),
        subnets: vec![
            subnet("192.0.2.0", "192.0.2.10", "192.0.2.14"),
            subnet("198.51.100.0", "198.51.100.10", "198.51.100.20"),
        ],
        unknown_macs: UnknownMacs::Discover,
        max_unknown_leases: 1000,
        offer_hold_secs: 30,
        decline_quarantine_secs: 300,
        boot: Boot {
            tftp_server: ip("192.0.2.1"),
            bios_file: "undionly.kpxe".into(),
            uefi_x64_file: "ipxe.efi".into(),
            uefi_arm64_file: None,
            http_base: "http://192.0.2.1:8080".into(),
        },
    }
}

fn msg(t: MessageType, m: MacAddr) -> Message {
    let mut msg = Message::default();
    msg.set_chaddr(&m.octets()).set_xid(0x1234);
    msg.opts_mut().insert(DhcpOption::MessageType(t));
    msg
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(1_000_000_000 + secs * 1000)
}

fn run(
    m: &Message,
    table: &mut LeaseTable,
    hosts: &Hosts,
    c: &DhcpConfig,
    now: Timestamp,
) -> Decision {
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    decide(
        Request {
            msg: m,
            src,
            local_port: 67,
            now,
        },
        table,
        hosts,
        c,
    )
}

fn reply_type(d: &Decision) -> Option<MessageType> {
    d.reply.as_ref().and_then(|r| r.msg.opts().msg_type())
}

/// Full DORA for `m`; returns the acknowledged address.
fn dora(
    m: MacAddr,
    table: &mut LeaseTable,
    hosts: &Hosts,
    c: &DhcpConfig,
    now: Timestamp,
) -> Option<Ipv4Addr> {
    let offer = run(&msg(MessageType::Discover, m), table, hosts, c, now);
    let offered = offer.reply?.msg.yiaddr();
    let mut req = msg(MessageType::Request, m);
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(c.server_id));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offered));
    let ack = run(&req, table, hosts, c, now);
    (reply_type(&ack) == Some(MessageType::Ack)).then(|| ack.persist.unwrap().ip)
}

#[test]
fn dora_gives_a_pool_address_with_the_subnet_options() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let d = run(&msg(MessageType::Discover, mac(1)), &mut t, &h, &c, at(0));
    let r = d.reply.unwrap();
    assert_eq!(r.msg.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(r.msg.yiaddr(), ip("192.0.2.10"));
    assert_eq!(r.dest, Destination::Broadcast);
    assert!(d.persist.is_none(), "offers are not persisted");
    assert_eq!(
        d.probe,
        Some(ip("192.0.2.10")),
        "a fresh pool address is probed"
    );
    let o = r.msg.opts();
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(ip("192.0.2.1")))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("192.0.2.1")]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip("192.0.2.53")]))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(300)));
    assert_eq!(
        o.get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(525))
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.255.0")))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1500))
    );
    assert!(
        o.get(OptionCode::BootfileName).is_none(),
        "no boot file for a non-PXE client"
    );

    // The same client asking again gets its standing offer, which needs no new probe.
    let again = run(&msg(MessageType::Discover, mac(1)), &mut t, &h, &c, at(0));
    assert_eq!(again.probe, None);
    let got = dora(mac(1), &mut t, &h, &c, at(1)).unwrap();
    assert_eq!(got, ip("192.0.2.10"));
    let l = t.lease_of(&mac(1)).unwrap();
    assert_eq!((l.state, l.expires_at), (LeaseState::Bound, at(601)));
}

#[test]
fn renew_init_reboot_and_wrong_network() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let a = dora(mac(1), &mut t, &h, &c, at(0)).unwrap();

    // RENEWING: unicast with ciaddr, answered by unicast.
    let mut renew = msg(MessageType::Request, mac(1));
    renew.set_ciaddr(a);
    let d = run(&renew, &mut t, &h, &c, at(300));
    assert_eq!(reply_type(&d), Some(MessageType::Ack));
    assert_eq!(d.reply.unwrap().dest, Destination::Unicast(a));
    assert_eq!(d.persist.unwrap().expires_at, at(900));

    // INIT-REBOOT with its own address: ACK. With an address from another network: NAK.
    let mut reboot = msg(MessageType::Request, mac(1));
    reboot.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    assert_eq!(
        reply_type(&run(&reboot, &mut t, &h, &c, at(400))),
        Some(MessageType::Ack)
    );
    let mut wrong = msg(MessageType::Request, mac(1));
    wrong
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("203.0.113.9")));
    let d = run(&wrong, &mut t, &h, &c, at(400));
    assert_eq!(reply_type(&d), Some(MessageType::Nak));
    assert_eq!(d.reply.unwrap().dest, Destination::Broadcast);

    // Another MAC asking for that address is refused.
    let mut thief = msg(MessageType::Request, mac(2));
    thief.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    assert_eq!(
        reply_type(&run(&thief, &mut t, &h, &c, at(400))),
        Some(MessageType::Nak)
    );
}

/// Hardening (issue 11, item 1): one MAC sent 60 INIT-REBOOT requests for free addresses
/// and held 60 leases. A client holds one lease per network: INIT-REBOOT confirms only it.
#[test]
fn init_reboot_for_an_address_the_client_does_not_hold_is_refused() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let a = dora(mac(1), &mut t, &h, &c, at(0)).unwrap();
    for n in 10..=14u8 {
        let other = ip(&format!("192.0.2.{n}"));
        if other == a {
            continue;
        }
        let mut grab = msg(MessageType::Request, mac(1));
        grab.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(other));
        let d = run(&grab, &mut t, &h, &c, at(10));
        assert_eq!(reply_type(&d), Some(MessageType::Nak), "{other}");
        assert!(d.persist.is_none());
    }
    assert_eq!(t.lease_of(&mac(1)).map(|l| l.ip), Some(a));
    // A MAC the server has no record of gets silence, not a lease.
    let mut stranger = msg(MessageType::Request, mac(9));
    stranger
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.0.2.13")));
    let d = run(&stranger, &mut t, &h, &c, at(10));
    assert!(d.reply.is_none());
    assert_eq!(d.dropped, Some(DropReason::NoLeaseRecord));
    assert!(t.lease_of(&mac(9)).is_none());
}

/// Hardening (issue 11, item 4): T2 is 7/8 of the lease, also for short leases.
#[test]
fn rebinding_time_is_seven_eighths_of_the_lease() {
    let mut c = cfg();
    for s in &mut c.subnets {
        s.lease_time_secs = 20;
    }
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let offer = run(&msg(MessageType::Discover, mac(3)), &mut t, &h, &c, at(0));
    let o = offer.reply.unwrap().msg;
    assert_eq!(
        o.opts().get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(17))
    );
    assert_eq!(
        o.opts().get(OptionCode::Renewal),
        Some(&DhcpOption::Renewal(10))
    );
}

#[test]
fn reservations_win_over_the_pool_and_over_other_clients() {
    let c = cfg();
    let mut t = LeaseTable::default();
    let h = Hosts::new([(
        mac(7),
        Host {
            reserved_ip: Some(ip("192.0.2.200")),
            hostname: Some("hv7".into()),
            dhcp_only: false,
        },
    )]);
    // Another client asking for the reserved address does not get it.
    let mut greedy = msg(MessageType::Discover, mac(1));
    greedy
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.0.2.200")));
    assert_ne!(
        run(&greedy, &mut t, &h, &c, at(0))
            .reply
            .unwrap()
            .msg
            .yiaddr(),
        ip("192.0.2.200")
    );
    // The reserved machine gets it, outside the pool, with its hostname.
    let d = run(&msg(MessageType::Discover, mac(7)), &mut t, &h, &c, at(0));
    let r = d.reply.unwrap();
    assert_eq!(r.msg.yiaddr(), ip("192.0.2.200"));
    assert_eq!(
        r.msg.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("hv7".into()))
    );
    assert_eq!(dora(mac(7), &mut t, &h, &c, at(1)), Some(ip("192.0.2.200")));
    // A machine whose reservation changed is NAKed on renewal so it comes back for the new one.
    let h2 = Hosts::new([(
        mac(7),
        Host {
            reserved_ip: Some(ip("192.0.2.201")),
            hostname: None,
            dhcp_only: false,
        },
    )]);
    let mut renew = msg(MessageType::Request, mac(7));
    renew.set_ciaddr(ip("192.0.2.200"));
    assert_eq!(
        reply_type(&run(&renew, &mut t, &h2, &c, at(10))),
        Some(MessageType::Nak)
    );
}

#[test]
fn relayed_requests_use_the_relay_subnet_and_echo_option_82() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let mut m = msg(MessageType::Discover, mac(3));
    m.set_giaddr(ip("198.51.100.1"));
    let mut info = dhcproto::v4::relay::RelayAgentInformation::default();
    info.insert(dhcproto::v4::relay::RelayInfo::AgentCircuitId(
        b"rack2-port7".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::RelayAgentInformation(info.clone()));
    let r = run(&m, &mut t, &h, &c, at(0)).reply.unwrap();
    assert_eq!(r.dest, Destination::Relay(ip("198.51.100.1")));
    assert_eq!(r.msg.yiaddr(), ip("198.51.100.10"));
    assert_eq!(r.msg.giaddr(), ip("198.51.100.1"));
    assert_eq!(
        r.msg.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info))
    );
    // A relay on a network we do not serve gets nothing.
    m.set_giaddr(ip("203.0.113.1"));
    assert_eq!(
        run(&m, &mut t, &h, &c, at(0)).dropped,
        Some(DropReason::NoSubnet)
    );
}

#[test]
fn selecting_another_server_frees_our_offer() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let first = run(&msg(MessageType::Discover, mac(1)), &mut t, &h, &c, at(0))
        .reply
        .unwrap()
        .msg
        .yiaddr();
    let mut req = msg(MessageType::Request, mac(1));
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(ip("192.0.2.254")));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.0.2.99")));
    assert_eq!(
        run(&req, &mut t, &h, &c, at(1)).dropped,
        Some(DropReason::ForAnotherServer)
    );
    let second = run(&msg(MessageType::Discover, mac(2)), &mut t, &h, &c, at(2))
        .reply
        .unwrap()
        .msg
        .yiaddr();
    assert!(t.is_free_for(first, &mac(2), at(2), &h));
    assert_ne!(second, ip("0.0.0.0"));
}

#[test]
fn decline_quarantines_and_release_frees() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let a = dora(mac(1), &mut t, &h, &c, at(0)).unwrap();
    let mut dec = msg(MessageType::Decline, mac(1));
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    dec.opts_mut()
        .insert(DhcpOption::ServerIdentifier(c.server_id));
    let d = run(&dec, &mut t, &h, &c, at(1));
    assert!(d.reply.is_none());
    assert_eq!(d.persist.unwrap().state, LeaseState::Declined);
    // Nobody gets the declined address during the quarantine, the decliner included.
    let b = dora(mac(1), &mut t, &h, &c, at(2)).unwrap();
    assert_ne!(a, b);
    assert!(!t.is_free_for(a, &mac(2), at(200), &h));
    assert!(t.is_free_for(a, &mac(2), at(302), &h), "quarantine ends");

    let mut rel = msg(MessageType::Release, mac(1));
    rel.set_ciaddr(b);
    let d = run(&rel, &mut t, &h, &c, at(10));
    assert_eq!(d.persist.unwrap().state, LeaseState::Released);
    assert!(t.is_free_for(b, &mac(2), at(10), &h));
    // The same MAC gets the same address back (affinity).
    assert_eq!(dora(mac(1), &mut t, &h, &c, at(11)), Some(b));
}

#[test]
fn inform_answers_options_without_a_lease() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let mut m = msg(MessageType::Inform, mac(1));
    m.set_ciaddr(ip("192.0.2.77"));
    let d = run(&m, &mut t, &h, &c, at(0));
    let r = d.reply.unwrap();
    assert_eq!(r.dest, Destination::Unicast(ip("192.0.2.77")));
    assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(r.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(r.msg.opts().get(OptionCode::Router).is_some());
    assert!(d.persist.is_none() && t.is_empty());
}

fn pxe(m: MacAddr, arch: u16, vendor: &str) -> Message {
    let mut x = msg(MessageType::Discover, m);
    x.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
            arch,
        )));
    x.opts_mut()
        .insert(DhcpOption::ClassIdentifier(vendor.as_bytes().to_vec()));
    x
}

fn boot_of(d: &Decision) -> (Option<String>, Ipv4Addr, Option<Vec<u8>>) {
    let r = &d.reply.as_ref().unwrap().msg;
    let file = match r.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => Some(String::from_utf8(f.clone()).unwrap()),
        _ => None,
    };
    let vendor = match r.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(v.clone()),
        _ => None,
    };
    (file, r.siaddr(), vendor)
}

#[test]
fn boot_file_by_firmware() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let (f, siaddr, v) = boot_of(&run(
        &pxe(mac(1), 0, "PXEClient:Arch:00000:UNDI:002001"),
        &mut t,
        &h,
        &c,
        at(0),
    ));
    // No PXEClient echo from an address-giving server: EDK2 would take the offer as a
    // BINL offer and ask again on port 4011 (seen with OVMF in tests/tests/boot_rack.rs).
    assert_eq!(
        (f.as_deref(), siaddr, v.as_deref()),
        (Some("undionly.kpxe"), ip("192.0.2.1"), None)
    );
    let (f, _, _) = boot_of(&run(
        &pxe(mac(2), 7, "PXEClient:Arch:00007:UNDI:003016"),
        &mut t,
        &h,
        &c,
        at(0),
    ));
    assert_eq!(f.as_deref(), Some("ipxe.efi"));
    let (f, _, v) = boot_of(&run(
        &pxe(mac(3), 16, "HTTPClient:Arch:00016:UNDI:003001"),
        &mut t,
        &h,
        &c,
        at(0),
    ));
    assert_eq!(
        (f.as_deref(), v.as_deref()),
        (
            Some("http://192.0.2.1:8080/boot/ipxe.efi"),
            Some(&b"HTTPClient"[..])
        )
    );
    // iPXE itself gets its per-machine script, which ends the chainload loop.
    let mut ipxe = pxe(mac(4), 0, "PXEClient:Arch:00000:UNDI:002001");
    ipxe.opts_mut()
        .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let (f, _, _) = boot_of(&run(&ipxe, &mut t, &h, &c, at(0)));
    assert_eq!(
        f.as_deref(),
        Some("http://192.0.2.1:8080/boot/ipxe?mac=52:54:00:00:00:04&arch=bios")
    );
    // ARM64 without a configured file: an address, no boot file.
    let (f, _, _) = boot_of(&run(
        &pxe(mac(5), 11, "PXEClient:Arch:00011"),
        &mut t,
        &h,
        &c,
        at(0),
    ));
    assert_eq!(f, None);
}

#[test]
fn proxy_mode_gives_boot_information_only() {
    let mut c = cfg();
    c.mode = Mode::Proxy;
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let d = run(
        &pxe(mac(1), 0, "PXEClient:Arch:00000:UNDI:002001"),
        &mut t,
        &h,
        &c,
        at(0),
    );
    let r = d.reply.as_ref().unwrap();
    assert_eq!(
        r.msg.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "a proxy never hands out addresses"
    );
    assert!(r.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(boot_of(&d).0.as_deref(), Some("undionly.kpxe"));
    assert!(t.is_empty());
    // Not a PXE client: silence.
    assert_eq!(
        run(&msg(MessageType::Discover, mac(2)), &mut t, &h, &c, at(0)).dropped,
        Some(DropReason::NotPxe)
    );
    // The boot-server REQUEST on 4011 is answered back to its source.
    let mut req = pxe(mac(1), 7, "PXEClient:Arch:00007");
    req.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    req.set_ciaddr(ip("192.0.2.50"));
    let src = SocketAddrV4::new(ip("192.0.2.50"), 4011);
    let d = decide(
        Request {
            msg: &req,
            src,
            local_port: PXE_PORT,
            now: at(1),
        },
        &mut t,
        &h,
        &c,
    );
    let r = d.reply.unwrap();
    assert_eq!(
        (r.dest, r.msg.opts().msg_type()),
        (Destination::Source, Some(MessageType::Ack))
    );
}

#[test]
fn unknown_macs_policy_and_cap() {
    let mut c = cfg();
    c.unknown_macs = UnknownMacs::Ignore;
    let known = Hosts::new([(mac(9), Host::default())]);
    let mut t = LeaseTable::default();
    assert_eq!(
        run(
            &msg(MessageType::Discover, mac(1)),
            &mut t,
            &known,
            &c,
            at(0)
        )
        .dropped,
        Some(DropReason::UnknownMac)
    );
    assert!(dora(mac(9), &mut t, &known, &c, at(0)).is_some());

    c.unknown_macs = UnknownMacs::Discover;
    c.max_unknown_leases = 2;
    let mut t = LeaseTable::default();
    assert!(dora(mac(1), &mut t, &known, &c, at(0)).is_some());
    assert!(dora(mac(2), &mut t, &known, &c, at(0)).is_some());
    assert_eq!(
        run(
            &msg(MessageType::Discover, mac(3)),
            &mut t,
            &known,
            &c,
            at(0)
        )
        .dropped,
        Some(DropReason::UnknownMacCap)
    );
    // Known machines are not held back by the cap, and a holder keeps its lease.
    assert!(dora(mac(9), &mut t, &known, &c, at(0)).is_some());
    assert!(dora(mac(1), &mut t, &known, &c, at(1)).is_some());
}

#[test]
fn pool_exhaustion_and_expiry() {
    let c = cfg(); // 5 addresses in 192.0.2.10-14
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    for n in 1..=5 {
        assert!(dora(mac(n), &mut t, &h, &c, at(0)).is_some());
    }
    assert_eq!(
        run(&msg(MessageType::Discover, mac(6)), &mut t, &h, &c, at(1)).dropped,
        Some(DropReason::PoolExhausted)
    );
    // After the leases expire (600 s), a new client gets one.
    assert!(dora(mac(6), &mut t, &h, &c, at(601)).is_some());
}

// --- Properties over random request sequences. ---

#[derive(Debug, Clone)]
enum Step {
    Dora(u8),
    Discover(u8),
    RequestAddr(u8, u8),
    Renew(u8),
    Release(u8),
    Decline(u8),
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    let m = 1u8..12;
    prop_oneof![
        4 => m.clone().prop_map(Step::Dora),
        2 => m.clone().prop_map(Step::Discover),
        2 => (m.clone(), 0u8..30).prop_map(|(a, b)| Step::RequestAddr(a, b)),
        2 => m.clone().prop_map(Step::Renew),
        1 => m.clone().prop_map(Step::Release),
        1 => m.prop_map(Step::Decline),
        1 => (1u16..700).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn leases_never_collide_and_stay_in_pools_or_reservations(steps in prop::collection::vec(step(), 1..80)) {
        let c = cfg();
        // mac(10) and mac(11) have reservations, one inside the pool and one outside it.
        let hosts = Hosts::new([
            (mac(10), Host { reserved_ip: Some(ip("192.0.2.12")), hostname: None, dhcp_only: false }),
            (mac(11), Host { reserved_ip: Some(ip("192.0.2.250")), hostname: None, dhcp_only: false }),
        ]);
        let mut t = LeaseTable::default();
        let mut now = 0u64;
        for s in steps {
            let d = match s {
                Step::Dora(m) => { dora(mac(m), &mut t, &hosts, &c, at(now)); None }
                Step::Discover(m) => Some(run(&msg(MessageType::Discover, mac(m)), &mut t, &hosts, &c, at(now))),
                Step::RequestAddr(m, last) => {
                    let mut r = msg(MessageType::Request, mac(m));
                    r.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 0, 2, last)));
                    Some(run(&r, &mut t, &hosts, &c, at(now)))
                }
                Step::Renew(m) => {
                    let mut r = msg(MessageType::Request, mac(m));
                    if let Some(l) = t.lease_of(&mac(m)) { r.set_ciaddr(l.ip); }
                    Some(run(&r, &mut t, &hosts, &c, at(now)))
                }
                Step::Release(m) => {
                    let mut r = msg(MessageType::Release, mac(m));
                    if let Some(l) = t.lease_of(&mac(m)) { r.set_ciaddr(l.ip); }
                    Some(run(&r, &mut t, &hosts, &c, at(now)))
                }
                Step::Decline(m) => {
                    let mut r = msg(MessageType::Decline, mac(m));
                    if let Some(l) = t.lease_of(&mac(m)) { r.opts_mut().insert(DhcpOption::RequestedIpAddress(l.ip)); }
                    Some(run(&r, &mut t, &hosts, &c, at(now)))
                }
                Step::Wait(s) => { now += u64::from(s); None }
            };
            // Every OFFER/ACK address is in a pool or is the client's reservation.
            if let Some(Decision { reply: Some(r), mac: Some(m), .. }) = &d {
                let y = r.msg.yiaddr();
                if !y.is_unspecified() {
                    let reserved = hosts.get(m).and_then(|h| h.reserved_ip);
                    prop_assert!(c.subnets.iter().any(|s| s.in_pool(y)) || reserved == Some(y), "{y} given to {m}");
                    // Reserved addresses only ever go to their owner.
                    if let Some(owner) = hosts.reserved_for(y) { prop_assert_eq!(owner, *m); }
                    // A machine with a reservation is only ever offered or acknowledged that address.
                    if let Some(r) = reserved { prop_assert_eq!(y, r); }
                }
            }
            // No two MACs hold the same active address; active leases are in a pool or reserved.
            let mut holders: HashMap<Ipv4Addr, MacAddr> = HashMap::new();
            for l in t.iter().filter(|l| l.state == LeaseState::Bound && l.holds_address(at(now))) {
                if let Some(other) = holders.insert(l.ip, l.mac) {
                    prop_assert!(false, "{} held by {} and {}", l.ip, other, l.mac);
                }
                let reserved = hosts.get(&l.mac).and_then(|h| h.reserved_ip);
                prop_assert!(c.subnets[0].in_pool(l.ip) || reserved == Some(l.ip));
            }
        }
        // Expiry frees everything: long after, every pool address is free for a newcomer.
        let later = at(now + 100_000);
        for n in 10..=14u8 {
            let a = Ipv4Addr::new(192, 0, 2, n);
            if hosts.reserved_for(a).is_none() {
                prop_assert!(t.is_free_for(a, &mac(200), later, &hosts), "{a} still held after expiry");
            }
        }
    }
}

#[test]
fn broadcast_flag_and_xid_are_kept() {
    let c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let mut m = msg(MessageType::Discover, mac(1));
    m.set_flags(Flags::default().set_broadcast())
        .set_xid(0xdeadbeef);
    let r = run(&m, &mut t, &h, &c, at(0)).reply.unwrap();
    assert!(r.msg.flags().broadcast());
    assert_eq!(r.msg.xid(), 0xdeadbeef);
}

/// Hardening (issue 11, item 2): a machine that DHCP alone recorded (a PXE DISCOVER from
/// a new MAC) counts as unknown. Before, every random MAC that looked like PXE firmware
/// became "known" and the cap on unknown MACs held nothing back.
#[test]
fn machines_dhcp_alone_recorded_count_against_the_unknown_cap() {
    let mut c = cfg();
    c.unknown_macs = UnknownMacs::Discover;
    c.max_unknown_leases = 2;
    let seen = |n: u8| {
        (
            mac(n),
            Host {
                dhcp_only: true,
                ..Host::default()
            },
        )
    };
    let hosts = Hosts::new([
        seen(1),
        seen(2),
        seen(3),
        seen(4),
        (mac(9), Host::default()),
    ]);
    assert_eq!(hosts.dhcp_only(), 4);
    let mut t = LeaseTable::default();
    assert!(dora(mac(1), &mut t, &hosts, &c, at(0)).is_some());
    assert!(dora(mac(2), &mut t, &hosts, &c, at(0)).is_some());
    for n in [3, 5] {
        let d = run(
            &msg(MessageType::Discover, mac(n)),
            &mut t,
            &hosts,
            &c,
            at(0),
        );
        assert_eq!(d.dropped, Some(DropReason::UnknownMacCap), "mac {n}");
    }
    // A registered machine always gets an address.
    assert!(dora(mac(9), &mut t, &hosts, &c, at(0)).is_some());
}

/// A REQUEST of `m` in the SELECTING state for `ip` (after an offer from us).
fn select(m: MacAddr, c: &DhcpConfig, addr: Ipv4Addr) -> Message {
    let mut req = msg(MessageType::Request, m);
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(c.server_id));
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    req
}

/// A RENEWING REQUEST of `m` (unicast, ciaddr set).
fn renew(m: MacAddr, addr: Ipv4Addr) -> Message {
    let mut req = msg(MessageType::Request, m);
    req.set_ciaddr(addr);
    req
}

/// Pool A (192.0.2.10-14) moved to pool B (192.0.2.20-24); the second subnet unchanged.
fn pool_b(c: &DhcpConfig) -> DhcpConfig {
    let mut b = c.clone();
    b.subnets[0].pools = vec![Pool {
        first: ip("192.0.2.20"),
        last: ip("192.0.2.24"),
    }];
    b
}

#[test]
fn pool_rebuild_keeps_leases_reports_those_outside_and_drops_their_offers() {
    let a = cfg();
    let mut t = LeaseTable::default();
    // mac(7) has a reservation outside every pool; it stays renewable.
    let h = Hosts::new([(
        mac(7),
        Host {
            reserved_ip: Some(ip("192.0.2.5")),
            hostname: None,
            dhcp_only: false,
        },
    )]);
    assert_eq!(dora(mac(1), &mut t, &h, &a, at(0)), Some(ip("192.0.2.10")));
    assert_eq!(dora(mac(7), &mut t, &h, &a, at(0)), Some(ip("192.0.2.5")));
    // A standing offer in pool A, and one in the unchanged relayed subnet.
    let offer_a = run(&msg(MessageType::Discover, mac(2)), &mut t, &h, &a, at(1));
    assert_eq!(offer_a.reply.unwrap().msg.yiaddr(), ip("192.0.2.11"));
    let mut relayed = msg(MessageType::Discover, mac(3));
    relayed.set_giaddr(ip("198.51.100.1"));
    let offer_kept = run(&relayed, &mut t, &h, &a, at(1));
    assert_eq!(offer_kept.reply.unwrap().msg.yiaddr(), ip("198.51.100.10"));
    // A lease that ran out and an expired offer are not counted as kept or outside.
    assert_eq!(dora(mac(4), &mut t, &h, &a, at(0)), Some(ip("192.0.2.12")));
    let mut short = t.lease_of(&mac(4)).unwrap().clone();
    short.expires_at = at(2);
    t.put(short);

    let b = pool_b(&a);
    let r = t.rebuild_pools(&b, &h, at(3));
    assert_eq!(r.leases_kept, 1, "the reservation: {r:?}");
    let outside: Vec<_> = r.leases_outside.iter().map(|l| (l.mac, l.ip)).collect();
    assert_eq!(outside, vec![(mac(1), ip("192.0.2.10"))]);
    assert_eq!((r.offers_kept, r.offers_dropped), (1, 1));
    assert_eq!(
        r.pools,
        vec![
            PoolCount {
                subnet: "192.0.2.0/24".into(),
                size: 5,
                free: 5
            },
            PoolCount {
                subnet: "198.51.100.0/24".into(),
                size: 11,
                free: 10
            },
        ],
        "pool B is all free; the relayed pool has one offer standing"
    );
    // Leases are kept in the table (the store keeps them too).
    assert_eq!(t.lease_of(&mac(1)).map(|l| l.ip), Some(ip("192.0.2.10")));

    // The lease outside every pool is not renewed, by renewal or INIT-REBOOT: NAK.
    let d = run(&renew(mac(1), ip("192.0.2.10")), &mut t, &h, &b, at(4));
    assert_eq!(reply_type(&d), Some(MessageType::Nak), "{:?}", d.note);
    assert!(d.persist.is_none());
    let mut reboot = msg(MessageType::Request, mac(1));
    reboot
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.0.2.10")));
    assert_eq!(
        reply_type(&run(&reboot, &mut t, &h, &b, at(4))),
        Some(MessageType::Nak)
    );
    // Rediscovering, the client gets an address from pool B.
    assert_eq!(dora(mac(1), &mut t, &h, &b, at(5)), Some(ip("192.0.2.20")));
    // The dropped offer's REQUEST is refused; the client rediscovers into pool B.
    let d = run(&select(mac(2), &b, ip("192.0.2.11")), &mut t, &h, &b, at(5));
    assert_eq!(reply_type(&d), Some(MessageType::Nak));
    assert_eq!(dora(mac(2), &mut t, &h, &b, at(6)), Some(ip("192.0.2.21")));
    // The kept offer is taken as before.
    let mut take = select(mac(3), &b, ip("198.51.100.10"));
    take.set_giaddr(ip("198.51.100.1"));
    assert_eq!(
        reply_type(&run(&take, &mut t, &h, &b, at(6))),
        Some(MessageType::Ack)
    );
    // The reservation outside the pools renews.
    assert_eq!(
        reply_type(&run(&renew(mac(7), ip("192.0.2.5")), &mut t, &h, &b, at(7))),
        Some(MessageType::Ack)
    );
    // Nobody else is given pool A's old addresses (they are outside the pools now).
    for n in 8..11 {
        let got = dora(mac(n), &mut t, &h, &b, at(8)).unwrap();
        assert!(b.subnets[0].in_pool(got), "{got} outside pool B");
    }
}

#[test]
fn pool_rebuild_restarts_the_free_address_search_in_the_new_pools() {
    let a = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    for n in 1..=3 {
        dora(mac(n), &mut t, &h, &a, at(0)).unwrap();
    }
    // Pool A grows at the front: the search must not resume at pool A's cursor (offset 3).
    let mut b = a.clone();
    b.subnets[0].pools = vec![Pool {
        first: ip("192.0.2.2"),
        last: ip("192.0.2.14"),
    }];
    let r = t.rebuild_pools(&b, &h, at(1));
    assert_eq!((r.leases_kept, r.leases_outside.len()), (3, 0));
    assert_eq!(r.pools[0].free, 13 - 3);
    assert_eq!(dora(mac(9), &mut t, &h, &b, at(2)), Some(ip("192.0.2.2")));
    // Back again: the same leases, nothing reported outside, nothing lost.
    let r = t.rebuild_pools(&a, &h, at(3));
    assert_eq!(r.leases_kept, 3, "192.0.2.2 is outside pool A now");
    assert_eq!(r.leases_outside.len(), 1);
    assert_eq!(t.len(), 4);
}

#[test]
fn a_renewal_on_a_subnet_no_longer_served_is_refused() {
    let a = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let mut relayed = msg(MessageType::Discover, mac(3));
    relayed.set_giaddr(ip("198.51.100.1"));
    run(&relayed, &mut t, &h, &a, at(0));
    let mut take = select(mac(3), &a, ip("198.51.100.10"));
    take.set_giaddr(ip("198.51.100.1"));
    assert_eq!(
        reply_type(&run(&take, &mut t, &h, &a, at(0))),
        Some(MessageType::Ack)
    );
    let mut b = a.clone();
    b.subnets.truncate(1);
    let r = t.rebuild_pools(&b, &h, at(1));
    assert_eq!(r.leases_outside.len(), 1);
    assert_eq!(r.pools.len(), 1);
    // Unicast renewal from the old address: NAK rather than silence.
    let d = run(&renew(mac(3), ip("198.51.100.10")), &mut t, &h, &b, at(2));
    assert_eq!(reply_type(&d), Some(MessageType::Nak), "{:?}", d.dropped);
    // A stranger renewing there is still met with silence (RFC 2131 4.3.2).
    let d = run(&renew(mac(4), ip("198.51.100.11")), &mut t, &h, &b, at(2));
    assert_eq!(d.dropped, Some(DropReason::NoSubnet));
}

#[test]
fn mode_off_answers_nothing_and_changes_nothing() {
    let mut c = cfg();
    let (mut t, h) = (LeaseTable::default(), Hosts::default());
    let got = dora(mac(1), &mut t, &h, &c, at(0)).unwrap();
    c.mode = Mode::Off;
    let before = format!("{:?}", t.iter().collect::<Vec<_>>());
    for m in [
        msg(MessageType::Discover, mac(2)),
        select(mac(2), &c, ip("192.0.2.11")),
        renew(mac(1), got),
        msg(MessageType::Inform, mac(1)),
        pxe(mac(5), 7, "PXEClient:Arch:00007"),
    ] {
        let d = run(&m, &mut t, &h, &c, at(1));
        assert!(d.reply.is_none() && d.persist.is_none(), "{d:?}");
        assert_eq!(d.dropped, Some(DropReason::Off));
    }
    assert_eq!(before, format!("{:?}", t.iter().collect::<Vec<_>>()));
    // Back on, the lease is still there and renews.
    c.mode = Mode::Authoritative;
    assert_eq!(
        reply_type(&run(&renew(mac(1), got), &mut t, &h, &c, at(2))),
        Some(MessageType::Ack)
    );
}

#[test]
fn config_changes_are_described_old_to_new() {
    let a = cfg();
    let mut b = pool_b(&a);
    b.mode = Mode::Proxy;
    b.subnets[0].routers = vec![ip("192.0.2.254")];
    b.subnets.remove(1);
    let lines = a.changes_to(&b);
    assert_eq!(
        lines,
        vec![
            "mode: authoritative → proxy".to_string(),
            "subnet 198.51.100.0/24 removed (pools 198.51.100.10-198.51.100.20)".into(),
            "subnet 192.0.2.0/24 pools: 192.0.2.10-192.0.2.14 → 192.0.2.20-192.0.2.24".into(),
            "subnet 192.0.2.0/24 routers: 192.0.2.1 → 192.0.2.254".into(),
        ]
    );
    assert!(a.changes_to(&a).is_empty());
}

/// One step of the sequences below, against config `c`.
fn play(s: &Step, t: &mut LeaseTable, hosts: &Hosts, c: &DhcpConfig, now: u64) -> Option<Decision> {
    let last_ip = |t: &LeaseTable, m: u8| t.lease_of(&mac(m)).map(|l| l.ip);
    match *s {
        Step::Dora(m) => {
            dora(mac(m), t, hosts, c, at(now));
            None
        }
        Step::Discover(m) => Some(run(
            &msg(MessageType::Discover, mac(m)),
            t,
            hosts,
            c,
            at(now),
        )),
        Step::RequestAddr(m, last) => Some(run(
            &select(mac(m), c, Ipv4Addr::new(192, 0, 2, last)),
            t,
            hosts,
            c,
            at(now),
        )),
        Step::Renew(m) => {
            let r = renew(mac(m), last_ip(t, m).unwrap_or(Ipv4Addr::UNSPECIFIED));
            Some(run(&r, t, hosts, c, at(now)))
        }
        Step::Release(m) => {
            let mut r = msg(MessageType::Release, mac(m));
            r.set_ciaddr(last_ip(t, m).unwrap_or(Ipv4Addr::UNSPECIFIED));
            Some(run(&r, t, hosts, c, at(now)))
        }
        Step::Decline(m) => {
            let mut r = msg(MessageType::Decline, mac(m));
            if let Some(a) = last_ip(t, m) {
                r.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
            }
            Some(run(&r, t, hosts, c, at(now)))
        }
        Step::Wait(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Requests interleaved with reconfigurations among overlapping pools and modes: every
    /// address given or renewed is in the pools of the config it was decided with, and no
    /// two MACs ever hold one address.
    #[test]
    fn reconfigured_pools_never_give_or_renew_outside_them(
        steps in prop::collection::vec(prop_oneof![
            6 => step().prop_map(|s| (s, None)),
            1 => (0usize..5).prop_map(|k| (Step::Wait(0), Some(k))),
        ], 1..100)
    ) {
        let base = cfg();
        let configs: Vec<DhcpConfig> = [("192.0.2.10", "192.0.2.14", Mode::Authoritative),
            ("192.0.2.12", "192.0.2.18", Mode::Authoritative),
            ("192.0.2.20", "192.0.2.22", Mode::Authoritative),
            ("192.0.2.10", "192.0.2.14", Mode::Off),
            ("192.0.2.16", "192.0.2.29", Mode::Proxy)]
            .iter()
            .map(|(f, l, mode)| {
                let mut c = base.clone();
                c.mode = *mode;
                c.subnets[0].pools = vec![Pool { first: ip(f), last: ip(l) }];
                c
            })
            .collect();
        let hosts = Hosts::new([
            (mac(11), Host { reserved_ip: Some(ip("192.0.2.250")), hostname: None, dhcp_only: false }),
        ]);
        let mut t = LeaseTable::default();
        let mut c = &configs[0];
        let mut now = 0u64;
        for (s, reconfigure) in steps {
            if let Some(k) = reconfigure {
                c = &configs[k];
                let r = t.rebuild_pools(c, &hosts, at(now));
                for l in &r.leases_outside {
                    prop_assert!(!c.in_any_pool(l.ip) && hosts.get(&l.mac).and_then(|h| h.reserved_ip) != Some(l.ip));
                }
                continue;
            }
            if let Step::Wait(w) = s { now += u64::from(w); }
            let d = play(&s, &mut t, &hosts, c, now);
            if let Some(Decision { reply: Some(r), mac: Some(m), persist, .. }) = &d {
                prop_assert!(c.mode != Mode::Off, "an answer in mode off");
                let y = r.msg.yiaddr();
                if !y.is_unspecified() {
                    let reserved = hosts.get(m).and_then(|h| h.reserved_ip);
                    prop_assert!(c.in_any_pool(y) || reserved == Some(y), "{y} given to {m} outside {:?}", c.subnets[0].pools);
                }
                if let Some(l) = persist {
                    prop_assert!(c.in_any_pool(l.ip) || hosts.get(m).and_then(|h| h.reserved_ip) == Some(l.ip));
                }
            }
            let mut holders: HashMap<Ipv4Addr, MacAddr> = HashMap::new();
            for l in t.iter().filter(|l| l.state == LeaseState::Bound && l.holds_address(at(now))) {
                if let Some(other) = holders.insert(l.ip, l.mac) {
                    prop_assert!(false, "{} held by {} and {}", l.ip, other, l.mac);
                }
            }
        }
    }
}
