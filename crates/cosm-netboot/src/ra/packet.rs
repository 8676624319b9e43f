//! The two ICMPv6 messages of router discovery (RFC 4861 §4.1, §4.2): the Router
//! Advertisement this appliance sends, built from nothing but the interface's MAC, and the
//! Router Solicitation it answers, checked as §6.1.1 asks. Pure: bytes in, bytes out.
//!
//! The kernel fills in the ICMPv6 checksum of what a raw ICMPv6 socket sends and drops
//! received packets whose checksum is wrong (RFC 3542 §3.1), so neither side here touches
//! it; the IPv6 hop limit is not in the bytes a raw socket hands over, so the caller
//! passes what the kernel reported (`IPV6_HOPLIMIT`).

use cosm_wire::MacAddr;
use std::net::Ipv6Addr;

/// ICMPv6 type of a Router Solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a Router Advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;
/// Option type of the source link-layer address (RFC 4861 §4.6.1).
pub const OPT_SOURCE_LINK_LAYER: u8 = 1;
/// Option type of prefix information (RFC 4861 §4.6.2); this appliance never sends one.
pub const OPT_PREFIX_INFORMATION: u8 = 3;
/// Neighbour-discovery packets must arrive with this IPv6 hop limit: then they cannot
/// have crossed a router (RFC 4861 §6.1.1, §6.1.2).
pub const ND_HOP_LIMIT: u8 = 255;

/// Length of the advertisement [`router_advertisement`] builds: the 16-byte header and one
/// 8-byte source link-layer address option.
pub const RA_LEN: usize = 24;

/// The Router Advertisement this appliance sends on the provisioning segment.
///
/// It exists to end the wait of network-boot firmware (iPXE) for IPv6 autoconfiguration,
/// and to give machines nothing they would then use:
/// - router lifetime 0: the appliance is not a default router (RFC 4861 §6.2.1 allows 0,
///   "not a default router");
/// - M and O flags off: no DHCPv6 (iPXE would otherwise start DHCPv6 and wait for it);
/// - current hop limit, reachable time and retransmission timer 0: "unspecified", hosts
///   keep their own;
/// - no prefix information: no SLAAC addresses and no on-link prefix, so a machine's
///   IPv6 stays at its link-local address;
/// - the source link-layer address option (§4.2 says it SHOULD be there), so receivers
///   learn the appliance's MAC without a neighbour solicitation.
pub fn router_advertisement(mac: MacAddr) -> [u8; RA_LEN] {
    let mut p = [0u8; RA_LEN];
    p[0] = ROUTER_ADVERTISEMENT;
    // p[1] code 0; p[2..4] checksum (the kernel's); p[4] cur hop limit 0; p[5] flags 0
    // (M, O, and the rest); p[6..8] router lifetime 0; p[8..12] reachable time 0;
    // p[12..16] retrans timer 0.
    p[16] = OPT_SOURCE_LINK_LAYER;
    p[17] = 1; // in units of 8 bytes: type, length, 6-byte MAC
    p[18..24].copy_from_slice(&mac.octets());
    p
}

/// A Router Solicitation that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicitation {
    /// Its IPv6 source; `None` for the unspecified address (a host with no address yet).
    pub source: Option<Ipv6Addr>,
    /// The MAC in its source link-layer address option, when it has one of 6 bytes.
    pub source_mac: Option<MacAddr>,
}

/// Why a received ICMPv6 packet is not a solicitation to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSolicitation {
    /// Another ICMPv6 type: the raw socket sees all of them; not an error.
    OtherType(u8),
    /// Shorter than the 8-byte solicitation header.
    Short,
    /// ICMP code other than 0.
    BadCode,
    /// The hop limit was not 255 (or the kernel did not say): it may come from off-link.
    HopLimit,
    /// An option of length 0, or one running past the end of the packet.
    BadOption,
    /// A source link-layer address option from the unspecified address (§6.1.1).
    LinkLayerFromUnspecified,
}

impl NotSolicitation {
    /// Whether the packet was a malformed or invalid solicitation, as opposed to some other
    /// ICMPv6 message.
    pub fn is_invalid_solicitation(self) -> bool {
        !matches!(self, NotSolicitation::OtherType(_))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NotSolicitation::OtherType(_) => "other_type",
            NotSolicitation::Short => "short",
            NotSolicitation::BadCode => "bad_code",
            NotSolicitation::HopLimit => "hop_limit",
            NotSolicitation::BadOption => "bad_option",
            NotSolicitation::LinkLayerFromUnspecified => "link_layer_from_unspecified",
        }
    }
}

/// Checks a received ICMPv6 message (the bytes after the IPv6 header) as a Router
/// Solicitation, with RFC 4861 §6.1.1's validity checks that the kernel did not already
/// make (the checksum is the kernel's). Never panics, whatever the bytes.
pub fn parse_solicitation(
    icmp: &[u8],
    hop_limit: Option<u8>,
    source: Ipv6Addr,
) -> Result<Solicitation, NotSolicitation> {
    let Some(&kind) = icmp.first() else {
        return Err(NotSolicitation::Short);
    };
    if kind != ROUTER_SOLICITATION {
        return Err(NotSolicitation::OtherType(kind));
    }
    if icmp.len() < 8 {
        return Err(NotSolicitation::Short);
    }
    if icmp[1] != 0 {
        return Err(NotSolicitation::BadCode);
    }
    if hop_limit != Some(ND_HOP_LIMIT) {
        return Err(NotSolicitation::HopLimit);
    }
    let source = (!source.is_unspecified()).then_some(source);
    let mut source_mac = None;
    for (kind, body) in options(&icmp[8..])? {
        if kind == OPT_SOURCE_LINK_LAYER {
            if source.is_none() {
                return Err(NotSolicitation::LinkLayerFromUnspecified);
            }
            // Ethernet: one 8-byte unit, the MAC right after type and length.
            if let Ok(mac) = <[u8; 6]>::try_from(body) {
                source_mac = Some(MacAddr::new(mac));
            }
        }
    }
    Ok(Solicitation { source, source_mac })
}

/// The options of a neighbour-discovery message as (type, bytes after type and length);
/// an option with length 0 or running past the end makes the whole message invalid
/// (RFC 4861 §4.6, §6.1.1).
fn options(mut rest: &[u8]) -> Result<Vec<(u8, &[u8])>, NotSolicitation> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (&kind, &units) = match rest {
            [k, u, ..] => (k, u),
            _ => return Err(NotSolicitation::BadOption),
        };
        let len = usize::from(units) * 8;
        if len == 0 || len > rest.len() {
            return Err(NotSolicitation::BadOption);
        }
        out.push((kind, &rest[2..len]));
        rest = &rest[len..];
    }
    Ok(out)
}

/// What a Router Advertisement says, read back; for tests and for checking what a
/// receiver would make of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub cur_hop_limit: u8,
    pub managed: bool,
    pub other: bool,
    pub router_lifetime_secs: u16,
    pub reachable_ms: u32,
    pub retrans_ms: u32,
    pub source_mac: Option<MacAddr>,
    /// Types of the options it carries, in order.
    pub option_types: Vec<u8>,
}

/// Reads a Router Advertisement (RFC 4861 §4.2); `None` if it is not a well-formed one.
pub fn parse_advertisement(icmp: &[u8]) -> Option<Advertisement> {
    if icmp.len() < 16 || icmp[0] != ROUTER_ADVERTISEMENT || icmp[1] != 0 {
        return None;
    }
    let be32 = |i: usize| u32::from_be_bytes([icmp[i], icmp[i + 1], icmp[i + 2], icmp[i + 3]]);
    let opts = options(&icmp[16..]).ok()?;
    let source_mac = opts
        .iter()
        .find(|(k, _)| *k == OPT_SOURCE_LINK_LAYER)
        .and_then(|(_, b)| <[u8; 6]>::try_from(*b).ok())
        .map(MacAddr::new);
    Some(Advertisement {
        cur_hop_limit: icmp[4],
        managed: icmp[5] & 0x80 != 0,
        other: icmp[5] & 0x40 != 0,
        router_lifetime_secs: u16::from_be_bytes([icmp[6], icmp[7]]),
        reachable_ms: be32(8),
        retrans_ms: be32(12),
        source_mac,
        option_types: opts.iter().map(|(k, _)| *k).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0xc0, 0x53, 0x01]);

    fn link_local() -> Ipv6Addr {
        "fe80::5054:ff:fec0:5301".parse().unwrap()
    }

    /// A solicitation as hosts send it: header, then a source link-layer address option.
    fn solicitation(mac: [u8; 6]) -> Vec<u8> {
        let mut p = vec![ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
        p.extend([OPT_SOURCE_LINK_LAYER, 1]);
        p.extend(mac);
        p
    }

    #[test]
    fn the_advertisement_is_exactly_what_the_module_says() {
        let p = router_advertisement(MAC);
        assert_eq!(
            p,
            [
                134, 0, 0, 0, // type, code, checksum (kernel's)
                0, 0, 0, 0, // cur hop limit, flags, router lifetime
                0, 0, 0, 0, // reachable time
                0, 0, 0, 0, // retrans timer
                1, 1, 0x52, 0x54, 0x00, 0xc0, 0x53, 0x01, // source link-layer address
            ]
        );
        let ra = parse_advertisement(&p).unwrap();
        assert_eq!(
            ra,
            Advertisement {
                cur_hop_limit: 0,
                managed: false,
                other: false,
                router_lifetime_secs: 0,
                reachable_ms: 0,
                retrans_ms: 0,
                source_mac: Some(MAC),
                option_types: vec![OPT_SOURCE_LINK_LAYER],
            }
        );
    }

    /// What iPXE (src/net/ndp.c, read at Debian's 2019-01-25 snapshot and upstream) needs
    /// of an advertisement to finish its IPv6 autoconfiguration without starting DHCPv6:
    /// every option at least one 8-byte unit long and inside the packet (else the whole
    /// advertisement is refused), a source link-layer option long enough for an Ethernet
    /// address, and neither the M nor the O flag. A prefix option would add addresses;
    /// a router lifetime a default route.
    #[test]
    fn ipxe_finishes_autoconfiguration_on_it_and_gets_no_address_or_route() {
        let p = router_advertisement(MAC);
        let mut rest = &p[16..];
        while !rest.is_empty() {
            let units = usize::from(rest[1]);
            assert!(units > 0 && units * 8 <= rest.len(), "option overruns");
            if rest[0] == OPT_SOURCE_LINK_LAYER {
                assert!(units * 8 >= 2 + 6, "too short for a MAC");
            }
            assert_ne!(
                rest[0], OPT_PREFIX_INFORMATION,
                "no prefix: no SLAAC address"
            );
            rest = &rest[units * 8..];
        }
        assert_eq!(p[5] & 0xc0, 0, "M and O off: iPXE starts no DHCPv6");
        assert_eq!(&p[6..8], &[0, 0], "router lifetime 0: no default route");
    }

    #[test]
    fn a_host_solicitation_is_accepted_with_its_mac() {
        let rs = solicitation(MAC.octets());
        assert_eq!(
            parse_solicitation(&rs, Some(255), link_local()),
            Ok(Solicitation {
                source: Some(link_local()),
                source_mac: Some(MAC),
            })
        );
        // No options at all is fine too (RFC 4861 §4.1: the option is a MAY).
        assert_eq!(
            parse_solicitation(&rs[..8], Some(255), Ipv6Addr::UNSPECIFIED),
            Ok(Solicitation {
                source: None,
                source_mac: None,
            })
        );
        // Unknown options are skipped (§4.1: "receivers MUST silently ignore" them).
        let mut extra = rs.clone();
        extra.extend([200, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(parse_solicitation(&extra, Some(255), link_local()).is_ok());
    }

    #[test]
    fn invalid_solicitations_are_refused_with_their_reason() {
        let rs = solicitation(MAC.octets());
        let ll = link_local();
        let check = |bytes: &[u8], hop: Option<u8>, src: Ipv6Addr| {
            parse_solicitation(bytes, hop, src).unwrap_err()
        };
        assert_eq!(check(&rs, Some(64), ll), NotSolicitation::HopLimit);
        assert_eq!(check(&rs, None, ll), NotSolicitation::HopLimit);
        assert_eq!(check(&rs[..7], Some(255), ll), NotSolicitation::Short);
        assert_eq!(check(&[], Some(255), ll), NotSolicitation::Short);
        let mut code = rs.clone();
        code[1] = 1;
        assert_eq!(check(&code, Some(255), ll), NotSolicitation::BadCode);
        let mut zero = rs.clone();
        zero[9] = 0;
        assert_eq!(check(&zero, Some(255), ll), NotSolicitation::BadOption);
        let mut long = rs.clone();
        long[9] = 2;
        assert_eq!(check(&long, Some(255), ll), NotSolicitation::BadOption);
        assert_eq!(check(&rs[..9], Some(255), ll), NotSolicitation::BadOption);
        assert_eq!(
            check(&rs, Some(255), Ipv6Addr::UNSPECIFIED),
            NotSolicitation::LinkLayerFromUnspecified
        );
        let ra = router_advertisement(MAC);
        assert_eq!(check(&ra, Some(255), ll), NotSolicitation::OtherType(134));
        assert!(!NotSolicitation::OtherType(134).is_invalid_solicitation());
        assert!(NotSolicitation::BadOption.is_invalid_solicitation());
    }

    proptest! {
        /// Arbitrary bytes, hop limits and sources: never a panic, and what is accepted
        /// is a solicitation with a 255 hop limit whose options all fit.
        #[test]
        fn any_bytes_parse_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..96),
            hop in proptest::option::of(any::<u8>()),
            src in any::<[u8; 16]>(),
            force_type in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if force_type && !bytes.is_empty() {
                bytes[0] = ROUTER_SOLICITATION;
            }
            let src = Ipv6Addr::from(src);
            if let Ok(s) = parse_solicitation(&bytes, hop, src) {
                prop_assert_eq!(bytes[0], ROUTER_SOLICITATION);
                prop_assert_eq!(hop, Some(255));
                prop_assert!(bytes.len() >= 8);
                prop_assert_eq!(s.source.is_none(), src.is_unspecified());
            }
            let _ = parse_advertisement(&bytes);
        }

        /// Well-formed solicitations with random options are accepted; cutting one short
        /// inside an option makes it invalid, never a panic.
        #[test]
        fn well_formed_options_are_accepted_and_truncations_refused(
            opts in proptest::collection::vec((2u8..=255, 1u8..4), 0..5),
            mac in any::<[u8; 6]>(),
            cut in 1usize..64,
        ) {
            let mut rs = solicitation(mac);
            // Where each option ends: cutting there leaves a well-formed packet.
            let mut ends = vec![8, rs.len()];
            for (kind, units) in &opts {
                rs.push(*kind);
                rs.push(*units);
                rs.extend(std::iter::repeat_n(0xa5, usize::from(*units) * 8 - 2));
                ends.push(rs.len());
            }
            let parsed = parse_solicitation(&rs, Some(255), link_local());
            prop_assert_eq!(parsed.map(|s| s.source_mac), Ok(Some(MacAddr::new(mac))));
            let cut = cut.min(rs.len() - 8);
            let short = &rs[..rs.len() - cut];
            if !ends.contains(&short.len()) {
                prop_assert_eq!(
                    parse_solicitation(short, Some(255), link_local()),
                    Err(NotSolicitation::BadOption)
                );
            }
        }
    }
}
