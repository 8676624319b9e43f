//! The whole packet path on arbitrary bytes, for the fuzz target (`make fuzz`) and for a
//! property test that runs in `make test`: parse, decide against a populated lease table,
//! and encode the reply. None of it may panic.

use super::config::{Boot, DhcpConfig, Mode, Pool, Subnet, UnknownMacs};
use super::core::{decide, Request};
use super::leases::{Host, Hosts, LeaseTable};
use super::server::parse;
use cosm_wire::{MacAddr, Timestamp};
use dhcproto::Encodable;
use std::net::{Ipv4Addr, SocketAddrV4};

fn config(mode: Mode) -> DhcpConfig {
    DhcpConfig {
        mode,
        server_id: Ipv4Addr::new(192, 0, 2, 1),
        subnets: vec![Subnet {
            network: Ipv4Addr::new(192, 0, 2, 0),
            prefix_len: 24,
            pools: vec![Pool {
                first: Ipv4Addr::new(192, 0, 2, 10),
                last: Ipv4Addr::new(192, 0, 2, 20),
            }],
            routers: vec![Ipv4Addr::new(192, 0, 2, 1)],
            dns: vec![Ipv4Addr::new(192, 0, 2, 1)],
            domain: Some("rack.test".into()),
            mtu: Some(1500),
            lease_time_secs: 600,
            relays: vec![Ipv4Addr::new(198, 51, 100, 1)],
        }],
        unknown_macs: UnknownMacs::Discover,
        max_unknown_leases: 8,
        offer_hold_secs: 30,
        decline_quarantine_secs: 60,
        boot: Boot {
            tftp_server: Ipv4Addr::new(192, 0, 2, 1),
            bios_file: "undionly.kpxe".into(),
            uefi_x64_file: "ipxe.efi".into(),
            uefi_arm64_file: Some("ipxe-arm64.efi".into()),
            http_base: "http://192.0.2.1:8080".into(),
        },
    }
}

/// Runs one packet through every mode; returns how many replies were produced.
pub fn packet_path(bytes: &[u8]) -> usize {
    let Some(msg) = parse(bytes) else { return 0 };
    let hosts = Hosts::new([(
        MacAddr::new([0x52, 0x54, 0, 0, 0, 1]),
        Host {
            reserved_ip: Some(Ipv4Addr::new(192, 0, 2, 5)),
            hostname: Some("n1".into()),
            dhcp_only: false,
        },
    )]);
    let mut replies = 0;
    for (mode, port) in [
        (Mode::Authoritative, 67),
        (Mode::Proxy, 67),
        (Mode::Proxy, super::core::PXE_PORT),
        (Mode::Off, 67),
    ] {
        let cfg = config(mode);
        let mut table = LeaseTable::default();
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 68);
        for step in 0..3u64 {
            let now = Timestamp::from_millis(1_000_000 + step * 1000);
            let d = decide(
                Request {
                    msg: &msg,
                    src,
                    local_port: port,
                    now,
                },
                &mut table,
                &hosts,
                &cfg,
            );
            if let Some(r) = d.reply {
                // The reply must encode, and what it encodes must parse again.
                let out = r.msg.to_vec().expect("a reply we built encodes");
                assert!(parse(&out).is_some(), "our own reply does not parse");
                replies += 1;
            }
        }
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use proptest::prelude::*;

    fn valid(t: MessageType) -> Vec<u8> {
        let mut m = Message::default();
        m.set_chaddr(&[0x52, 0x54, 0, 0, 0, 1]);
        m.opts_mut().insert(DhcpOption::MessageType(t));
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000".to_vec(),
        ));
        m.to_vec().unwrap()
    }

    #[test]
    fn a_valid_discover_gets_answers() {
        assert!(packet_path(&valid(MessageType::Discover)) >= 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
            packet_path(&bytes);
        }

        /// Valid packets with bytes flipped, cut or appended: the interesting malformed cases
        /// (bad option lengths, overlong options, truncation) are near valid ones.
        #[test]
        fn mutated_packets_never_panic(
            t in prop::sample::select(vec![MessageType::Discover, MessageType::Request, MessageType::Decline, MessageType::Release, MessageType::Inform]),
            flips in prop::collection::vec((0usize..400, any::<u8>()), 0..12),
            cut in 0usize..400,
            tail in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut b = valid(t);
            for (i, v) in flips { if i < b.len() { b[i] = v; } }
            b.truncate(cut.max(1));
            b.extend(tail);
            packet_path(&b);
        }
    }
}
