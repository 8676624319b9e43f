//! Fuzzes the router-solicitation check the router-advertisement sender runs on every
//! ICMPv6 packet its raw socket receives: the first byte is the hop limit the kernel
//! reported (0 standing for none), the next 16 the IPv6 source, the rest the ICMPv6 bytes.
#![no_main]

use cosm_netboot::ra::packet::{parse_advertisement, parse_solicitation, ND_HOP_LIMIT};
use std::net::Ipv6Addr;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let hop = (data[0] != 0).then_some(data[0]);
    let mut src = [0u8; 16];
    src.copy_from_slice(&data[1..17]);
    let icmp = &data[17..];
    if let Ok(s) = parse_solicitation(icmp, hop, Ipv6Addr::from(src)) {
        // Only a type-133, code-0 message with an on-link hop limit is accepted.
        assert!(icmp.len() >= 8 && icmp[0] == 133 && icmp[1] == 0);
        assert_eq!(hop, Some(ND_HOP_LIMIT));
        assert_eq!(s.source.is_none(), Ipv6Addr::from(src).is_unspecified());
    }
    let _ = parse_advertisement(icmp);
});
