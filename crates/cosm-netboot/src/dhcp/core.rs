//! The DHCPv4 decision core: one request, the lease table, the known hosts and the config
//! in; the reply, where to send it, and the lease to persist out. No sockets, no clock, no
//! store: the caller passes `now` and persists [`Decision::persist`] before sending.
//!
//! Behaviour follows RFC 2131 (DORA, INIT-REBOOT, RENEWING/REBINDING, DECLINE, RELEASE,
//! INFORM, NAK for a wrong network), RFC 3046 (option 82 echoed), RFC 4578 (option 93) and
//! the PXE/proxyDHCP conventions firmware expects.

use super::config::{DhcpConfig, Mode, Subnet, UnknownMacs};
use super::leases::{Hosts, LeaseTable};
use crate::boot_arch::ClientArch;
use cosm_wire::{Lease, LeaseState, MacAddr, Timestamp};
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The proxyDHCP port PXE clients send their boot-server REQUEST to.
pub const PXE_PORT: u16 = 4011;

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To the relay agent at giaddr, server port.
    Relay(Ipv4Addr),
    /// Limited broadcast, client port.
    Broadcast,
    /// Unicast to a client that has an address, client port.
    Unicast(Ipv4Addr),
    /// Back to the request's source address and port (proxyDHCP on 4011).
    Source,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub msg: Message,
    pub dest: Destination,
}

/// Why a request got no answer. Counted in metrics by [`DropReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    NotBootRequest,
    NoMessageType,
    NotEthernet,
    NoSubnet,
    UnknownMac,
    UnknownMacCap,
    PoolExhausted,
    ForAnotherServer,
    NotPxe,
    NoAddress,
    Unsupported,
    /// DECLINE and RELEASE are answered by silence on purpose.
    NoReplyExpected,
    /// An INIT-REBOOT or renewal from a client this server has no lease record of: RFC
    /// 2131 (4.3.2) says to stay silent.
    NoLeaseRecord,
    /// The service is configured off ([`Mode::Off`]): nothing is answered.
    Off,
}

impl DropReason {
    pub const ALL: [DropReason; 14] = [
        DropReason::NotBootRequest,
        DropReason::NoMessageType,
        DropReason::NotEthernet,
        DropReason::NoSubnet,
        DropReason::UnknownMac,
        DropReason::UnknownMacCap,
        DropReason::PoolExhausted,
        DropReason::ForAnotherServer,
        DropReason::NotPxe,
        DropReason::NoAddress,
        DropReason::Unsupported,
        DropReason::NoReplyExpected,
        DropReason::NoLeaseRecord,
        DropReason::Off,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotBootRequest => "not_boot_request",
            DropReason::NoMessageType => "no_message_type",
            DropReason::NotEthernet => "not_ethernet",
            DropReason::NoSubnet => "no_subnet",
            DropReason::UnknownMac => "unknown_mac",
            DropReason::UnknownMacCap => "unknown_mac_cap",
            DropReason::PoolExhausted => "pool_exhausted",
            DropReason::ForAnotherServer => "for_another_server",
            DropReason::NotPxe => "not_pxe",
            DropReason::NoAddress => "no_address",
            DropReason::Unsupported => "unsupported",
            DropReason::NoReplyExpected => "no_reply_expected",
            DropReason::NoLeaseRecord => "no_lease_record",
            DropReason::Off => "off",
        }
    }
}

/// Everything the core decided about one request.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub mac: Option<MacAddr>,
    pub request_type: Option<MessageType>,
    pub reply: Option<Reply>,
    /// A lease change already applied to the table; it must be durable before `reply` leaves.
    pub persist: Option<Lease>,
    pub dropped: Option<DropReason>,
    /// One line for the machine's timeline, e.g. `OFFER 192.0.2.10 boot undionly.kpxe`.
    pub note: Option<String>,
    /// The offered address was newly taken from a pool: the shell may check that nobody
    /// answers on it (ICMP echo) before the offer leaves.
    pub probe: Option<Ipv4Addr>,
}

impl Decision {
    fn drop(mac: Option<MacAddr>, t: Option<MessageType>, why: DropReason) -> Decision {
        Decision {
            mac,
            request_type: t,
            dropped: Some(why),
            ..Decision::default()
        }
    }
}

/// One received packet and its context.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub msg: &'a Message,
    pub src: SocketAddrV4,
    /// The local port it arrived on (67, or 4011 for proxyDHCP boot-server requests).
    pub local_port: u16,
    pub now: Timestamp,
}

/// What kind of boot client is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClient {
    pub arch: ClientArch,
    /// Vendor class `PXEClient…`.
    pub pxe: bool,
    /// Vendor class `HTTPClient…` (UEFI HTTP Boot).
    pub http: bool,
    /// iPXE itself (user class `iPXE` or option 175).
    pub ipxe: bool,
}

impl BootClient {
    pub fn of(msg: &Message) -> BootClient {
        let vendor = match msg.opts().get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => String::from_utf8_lossy(v).into_owned(),
            _ => String::new(),
        };
        let arch93 = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
            _ => None,
        };
        let arch = match arch93 {
            Some(n) => ClientArch::from_option93(Some(n)),
            None => ClientArch::from_vendor_class(&vendor).unwrap_or(ClientArch::BiosX86),
        };
        let user_class_ipxe = match msg.opts().get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(v)) => v.windows(4).any(|w| w == b"iPXE"),
            _ => false,
        };
        let ipxe = user_class_ipxe || msg.opts().get(OptionCode::from(175u8)).is_some();
        BootClient {
            arch,
            pxe: vendor.starts_with("PXEClient"),
            http: vendor.starts_with("HTTPClient"),
            ipxe,
        }
    }

    /// How it boots, for timelines: "iPXE uefi", "PXE bios", "HTTP Boot uefi"; `None` for a
    /// client that is not booting from the network (an OS renewing its lease).
    pub fn describe(&self) -> Option<String> {
        let how = if self.ipxe {
            "iPXE"
        } else if self.http {
            "HTTP Boot"
        } else if self.pxe {
            "PXE"
        } else {
            return None;
        };
        let fw = if self.arch.is_uefi() { "uefi" } else { "bios" };
        Some(format!("{how} {fw}"))
    }

    pub fn wants_boot(&self) -> bool {
        self.pxe || self.http || self.ipxe
    }
}

/// The boot file (or URL) for a client, if one is configured for its architecture.
pub fn boot_file(cfg: &DhcpConfig, client: &BootClient, mac: &MacAddr) -> Option<String> {
    let b = &cfg.boot;
    if client.ipxe {
        let arch = if client.arch.is_uefi() {
            "uefi"
        } else {
            "bios"
        };
        return Some(format!("{}/boot/ipxe?mac={mac}&arch={arch}", b.http_base));
    }
    let file = match client.arch {
        ClientArch::BiosX86 => Some(b.bios_file.clone()),
        ClientArch::UefiX64 | ClientArch::UefiX64Http => Some(b.uefi_x64_file.clone()),
        ClientArch::UefiArm64 | ClientArch::UefiArm64Http => b.uefi_arm64_file.clone(),
        ClientArch::Other(_) => None,
    }?;
    if client.http {
        Some(format!("{}/boot/{file}", b.http_base))
    } else {
        Some(file)
    }
}

fn msg_type(msg: &Message) -> Option<MessageType> {
    msg.opts().msg_type()
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn client_hostname(msg: &Message) -> Option<String> {
    match msg.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) if !h.is_empty() && h.len() <= 255 => Some(h.clone()),
        _ => None,
    }
}

/// Decides what to do with one request. Mutates `table` (offers, leases) and returns the
/// lease that must be persisted before the reply is sent.
pub fn decide(
    req: Request<'_>,
    table: &mut LeaseTable,
    hosts: &Hosts,
    cfg: &DhcpConfig,
) -> Decision {
    let msg = req.msg;
    if msg.opcode() != Opcode::BootRequest {
        return Decision::drop(None, None, DropReason::NotBootRequest);
    }
    let Some(t) = msg_type(msg) else {
        return Decision::drop(None, None, DropReason::NoMessageType);
    };
    if msg.htype() != HType::Eth || msg.chaddr().len() < 6 {
        return Decision::drop(None, Some(t), DropReason::NotEthernet);
    }
    let c = msg.chaddr();
    let mac = MacAddr::new([c[0], c[1], c[2], c[3], c[4], c[5]]);
    match cfg.mode {
        Mode::Off => Decision::drop(Some(mac), Some(t), DropReason::Off),
        Mode::Proxy => proxy(req, mac, t, cfg),
        Mode::Authoritative => match t {
            MessageType::Discover => discover(req, mac, table, hosts, cfg),
            MessageType::Request => request(req, mac, table, hosts, cfg),
            MessageType::Decline => decline(req, mac, table, cfg),
            MessageType::Release => release(req, mac, table),
            MessageType::Inform => inform(req, mac, hosts, cfg),
            _ => Decision::drop(Some(mac), Some(t), DropReason::Unsupported),
        },
    }
}

/// The subnet of a request: through its relay (giaddr or option 118), or our own.
fn subnet_of<'c>(msg: &Message, cfg: &'c DhcpConfig) -> Option<(usize, &'c Subnet)> {
    if let Some(DhcpOption::SubnetSelection(sel)) = msg.opts().get(OptionCode::SubnetSelection) {
        return cfg
            .subnets
            .iter()
            .enumerate()
            .find(|(_, s)| s.contains(*sel));
    }
    cfg.subnet_for(msg.giaddr())
}

fn discover(
    req: Request<'_>,
    mac: MacAddr,
    table: &mut LeaseTable,
    hosts: &Hosts,
    cfg: &DhcpConfig,
) -> Decision {
    let msg = req.msg;
    let t = Some(MessageType::Discover);
    let Some((idx, subnet)) = subnet_of(msg, cfg) else {
        return Decision::drop(Some(mac), t, DropReason::NoSubnet);
    };
    let host = hosts.get(&mac);
    if host.is_none() && cfg.unknown_macs == UnknownMacs::Ignore {
        return Decision::drop(Some(mac), t, DropReason::UnknownMac);
    }
    let now = req.now;
    let usable = |ip: Ipv4Addr, table: &LeaseTable, in_pool_only: bool| {
        subnet.contains(ip)
            && (!in_pool_only || subnet.in_pool(ip))
            && table.is_free_for(ip, &mac, now, hosts)
    };
    let reserved = host
        .and_then(|h| h.reserved_ip)
        .filter(|ip| subnet.contains(*ip));
    let mut ip = None;
    let mut fresh = false;
    if let Some(r) = reserved {
        // A reservation wins over everything, inside or outside the pools.
        if usable(r, table, false) {
            ip = Some(r);
        }
    } else {
        let candidates = [
            table.offered_to(&mac, now),
            table
                .lease_of(&mac)
                .filter(|l| l.state != LeaseState::Declined)
                .map(|l| l.ip),
            requested_ip(msg),
        ];
        ip = candidates
            .into_iter()
            .flatten()
            .find(|c| usable(*c, table, true));
        if ip.is_none() {
            // A machine DHCP alone recorded counts as unknown: otherwise every random MAC
            // that looks like PXE firmware became "known" and the cap held nothing back.
            let unknown = !hosts.is_registered(&mac);
            if unknown && table.unknown_held_cached(now, hosts) >= cfg.max_unknown_leases {
                return Decision::drop(Some(mac), t, DropReason::UnknownMacCap);
            }
            ip = table.find_free(idx, subnet, &mac, now, hosts);
            fresh = ip.is_some();
            if unknown && ip.is_some() {
                table.note_unknown_allocation();
            }
        }
    }
    let Some(ip) = ip else {
        return Decision::drop(Some(mac), t, DropReason::PoolExhausted);
    };
    table.offer(
        mac,
        ip,
        Timestamp::from_millis(now.as_millis() + u64::from(cfg.offer_hold_secs) * 1000),
    );
    let mut reply = base_reply(msg, MessageType::Offer, cfg);
    reply.set_yiaddr(ip);
    add_lease_options(
        &mut reply,
        subnet,
        host.and_then(|h| h.hostname.as_deref()),
        true,
    );
    let boot = add_boot(&mut reply, msg, cfg, &mac);
    Decision {
        mac: Some(mac),
        request_type: t,
        reply: Some(Reply {
            dest: destination(msg, MessageType::Offer),
            msg: reply,
        }),
        persist: None,
        dropped: None,
        note: Some(format!(
            "OFFER {ip}{}",
            boot.map(|b| format!(" boot {b}")).unwrap_or_default()
        )),
        probe: fresh.then_some(ip),
    }
}

fn request(
    req: Request<'_>,
    mac: MacAddr,
    table: &mut LeaseTable,
    hosts: &Hosts,
    cfg: &DhcpConfig,
) -> Decision {
    let msg = req.msg;
    let t = Some(MessageType::Request);
    let now = req.now;
    let host = hosts.get(&mac);
    if host.is_none() && cfg.unknown_macs == UnknownMacs::Ignore {
        return Decision::drop(Some(mac), t, DropReason::UnknownMac);
    }
    let selecting = server_id(msg);
    if let Some(sid) = selecting {
        if sid != cfg.server_id {
            // The client took another server's offer: ours is free again.
            table.drop_offer(&mac);
            return Decision::drop(Some(mac), t, DropReason::ForAnotherServer);
        }
    }
    let ciaddr = msg.ciaddr();
    let Some(ip) = requested_ip(msg).or((!ciaddr.is_unspecified()).then_some(ciaddr)) else {
        return Decision::drop(Some(mac), t, DropReason::NoAddress);
    };
    // Renewals are unicast without a relay: their subnet is the one holding ciaddr.
    let subnet = if !ciaddr.is_unspecified() && msg.giaddr().is_unspecified() && selecting.is_none()
    {
        cfg.subnets
            .iter()
            .enumerate()
            .find(|(_, s)| s.contains(ciaddr))
    } else {
        subnet_of(msg, cfg)
    };
    let Some((_, subnet)) = subnet else {
        // A client renewing a lease we gave, on a network we no longer serve (the subnet
        // was reconfigured away): a NAK sends it back to DISCOVER at once rather than
        // letting it keep the address until the lease runs out.
        if table
            .lease_of(&mac)
            .is_some_and(|l| l.ip == ip && l.holds_address(now))
        {
            return nak(
                msg,
                mac,
                cfg,
                &format!("{ip} is on a network no longer served"),
            );
        }
        return Decision::drop(Some(mac), t, DropReason::NoSubnet);
    };
    let reserved = host
        .and_then(|h| h.reserved_ip)
        .filter(|r| subnet.contains(*r));
    let nak = |why: &str| nak(msg, mac, cfg, why);
    if !subnet.contains(ip) {
        return nak(&format!("{ip} is not on this network"));
    }
    if reserved.is_some_and(|r| r != ip) {
        return nak(&format!(
            "{mac} has reserved address {}",
            reserved.unwrap_or(ip)
        ));
    }
    if !table.is_free_for(ip, &mac, now, hosts) {
        return nak(&format!("{ip} is in use"));
    }
    let ours = table.offered_to(&mac, now) == Some(ip)
        || table
            .lease_of(&mac)
            .is_some_and(|l| l.ip == ip && l.state != LeaseState::Declined);
    if selecting.is_some() && !ours && reserved != Some(ip) {
        return nak(&format!("{ip} was not offered to {mac}"));
    }
    // INIT-REBOOT and renewals only confirm the client's own lease (RFC 2131 4.3.2): a
    // client holds one lease per network, so asking for any other address gets a NAK, and
    // a client this server has no record of gets silence. (Before, a free pool address
    // was ACKed, and one MAC could bind the whole pool this way.)
    if selecting.is_none() && !ours && reserved != Some(ip) {
        return match table.lease_of(&mac) {
            Some(l) => nak(&format!("{mac} holds {}, not {ip}", l.ip)),
            None => Decision::drop(Some(mac), t, DropReason::NoLeaseRecord),
        };
    }
    // Also a lease of the client's own: after the pools were reconfigured, an address
    // outside all of them is not renewed, so the client rediscovers into the new pools.
    if reserved != Some(ip) && !subnet.in_pool(ip) {
        return nak(&format!("{ip} is outside the pools"));
    }
    let lease = Lease {
        ip,
        mac,
        state: LeaseState::Bound,
        starts_at: now,
        expires_at: Timestamp::from_millis(
            now.as_millis() + u64::from(subnet.lease_time_secs) * 1000,
        ),
        client_hostname: client_hostname(msg),
        relay: (!msg.giaddr().is_unspecified()).then_some(msg.giaddr()),
    };
    table.put(lease.clone());
    let mut reply = base_reply(msg, MessageType::Ack, cfg);
    reply.set_yiaddr(ip);
    add_lease_options(
        &mut reply,
        subnet,
        host.and_then(|h| h.hostname.as_deref()),
        true,
    );
    add_boot(&mut reply, msg, cfg, &mac);
    let kind = if selecting.is_some() {
        ""
    } else if ciaddr.is_unspecified() {
        " (init-reboot)"
    } else {
        " (renew)"
    };
    Decision {
        mac: Some(mac),
        request_type: t,
        reply: Some(Reply {
            dest: destination(msg, MessageType::Ack),
            msg: reply,
        }),
        persist: Some(lease),
        dropped: None,
        note: Some(format!("ACK {ip} for {}s{kind}", subnet.lease_time_secs)),
        probe: None,
    }
}

fn nak(msg: &Message, mac: MacAddr, cfg: &DhcpConfig, why: &str) -> Decision {
    let mut reply = base_reply(msg, MessageType::Nak, cfg);
    reply
        .opts_mut()
        .insert(DhcpOption::Message(why.to_string()));
    Decision {
        mac: Some(mac),
        request_type: Some(MessageType::Request),
        reply: Some(Reply {
            dest: destination(msg, MessageType::Nak),
            msg: reply,
        }),
        persist: None,
        dropped: None,
        note: Some(format!("NAK: {why}")),
        probe: None,
    }
}

fn decline(req: Request<'_>, mac: MacAddr, table: &mut LeaseTable, cfg: &DhcpConfig) -> Decision {
    let t = Some(MessageType::Decline);
    if server_id(req.msg).is_some_and(|s| s != cfg.server_id) {
        return Decision::drop(Some(mac), t, DropReason::ForAnotherServer);
    }
    let Some(ip) = requested_ip(req.msg) else {
        return Decision::drop(Some(mac), t, DropReason::NoAddress);
    };
    let ours = table.offered_to(&mac, req.now) == Some(ip)
        || table.lease_of(&mac).is_some_and(|l| l.ip == ip);
    if !ours {
        return Decision::drop(Some(mac), t, DropReason::NoAddress);
    }
    let lease = Lease {
        ip,
        mac,
        state: LeaseState::Declined,
        starts_at: req.now,
        expires_at: Timestamp::from_millis(
            req.now.as_millis() + u64::from(cfg.decline_quarantine_secs) * 1000,
        ),
        client_hostname: None,
        relay: None,
    };
    table.put(lease.clone());
    Decision {
        mac: Some(mac),
        request_type: t,
        reply: None,
        persist: Some(lease),
        dropped: Some(DropReason::NoReplyExpected),
        note: Some(format!(
            "DECLINE {ip}: quarantined for {}s",
            cfg.decline_quarantine_secs
        )),
        probe: None,
    }
}

fn release(req: Request<'_>, mac: MacAddr, table: &mut LeaseTable) -> Decision {
    let t = Some(MessageType::Release);
    let ip = req.msg.ciaddr();
    match table.lease_at(ip) {
        Some(l) if l.mac == mac && l.state == LeaseState::Bound => {
            let mut lease = l.clone();
            lease.state = LeaseState::Released;
            lease.expires_at = req.now;
            table.put(lease.clone());
            Decision {
                mac: Some(mac),
                request_type: t,
                reply: None,
                persist: Some(lease),
                dropped: Some(DropReason::NoReplyExpected),
                note: Some(format!("RELEASE {ip}")),
                probe: None,
            }
        }
        _ => Decision::drop(Some(mac), t, DropReason::NoAddress),
    }
}

fn inform(req: Request<'_>, mac: MacAddr, hosts: &Hosts, cfg: &DhcpConfig) -> Decision {
    let msg = req.msg;
    let t = Some(MessageType::Inform);
    let ciaddr = msg.ciaddr();
    let subnet = if msg.giaddr().is_unspecified() {
        cfg.subnets.iter().find(|s| s.contains(ciaddr))
    } else {
        subnet_of(msg, cfg).map(|(_, s)| s)
    };
    let Some(subnet) = subnet else {
        return Decision::drop(Some(mac), t, DropReason::NoSubnet);
    };
    let mut reply = base_reply(msg, MessageType::Ack, cfg);
    add_lease_options(
        &mut reply,
        subnet,
        hosts.get(&mac).and_then(|h| h.hostname.as_deref()),
        false,
    );
    add_boot(&mut reply, msg, cfg, &mac);
    let dest = if msg.giaddr().is_unspecified() && !ciaddr.is_unspecified() {
        Destination::Unicast(ciaddr)
    } else {
        destination(msg, MessageType::Ack)
    };
    Decision {
        mac: Some(mac),
        request_type: t,
        reply: Some(Reply { msg: reply, dest }),
        persist: None,
        dropped: None,
        note: Some(format!("INFORM from {ciaddr}")),
        probe: None,
    }
}

/// proxyDHCP: boot information for PXE clients only, never an address.
fn proxy(req: Request<'_>, mac: MacAddr, t: MessageType, cfg: &DhcpConfig) -> Decision {
    let msg = req.msg;
    let client = BootClient::of(msg);
    if !client.wants_boot() {
        return Decision::drop(Some(mac), Some(t), DropReason::NotPxe);
    }
    let (reply_type, dest) = match t {
        MessageType::Discover if req.local_port != PXE_PORT => {
            (MessageType::Offer, destination(msg, MessageType::Offer))
        }
        MessageType::Request if req.local_port == PXE_PORT => {
            (MessageType::Ack, Destination::Source)
        }
        MessageType::Request if server_id(msg) == Some(cfg.server_id) => {
            (MessageType::Ack, destination(msg, MessageType::Ack))
        }
        MessageType::Request => {
            return Decision::drop(Some(mac), Some(t), DropReason::ForAnotherServer)
        }
        _ => return Decision::drop(Some(mac), Some(t), DropReason::Unsupported),
    };
    let mut reply = base_reply(msg, reply_type, cfg);
    let Some(file) = add_boot(&mut reply, msg, cfg, &mac) else {
        return Decision::drop(Some(mac), Some(t), DropReason::NotPxe);
    };
    if client.pxe {
        // PXE_DISCOVERY_CONTROL (sub-option 6) = 8: use the boot file in this answer
        // directly, without boot-server discovery.
        reply
            .opts_mut()
            .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    let kind = if reply_type == MessageType::Offer {
        "proxy OFFER"
    } else {
        "proxy ACK"
    };
    Decision {
        mac: Some(mac),
        request_type: Some(t),
        reply: Some(Reply { msg: reply, dest }),
        persist: None,
        dropped: None,
        note: Some(format!("{kind} boot {file}")),
        probe: None,
    }
}

/// RFC 2131 §4.1: relay first; NAKs broadcast; clients with an address unicast; else broadcast.
/// (Unicast to a yiaddr the client has not configured would need an ARP entry written by
/// hand; broadcasting is what such clients accept too.)
fn destination(msg: &Message, reply: MessageType) -> Destination {
    let giaddr = msg.giaddr();
    if !giaddr.is_unspecified() {
        return Destination::Relay(giaddr);
    }
    if reply == MessageType::Nak {
        return Destination::Broadcast;
    }
    let ciaddr = msg.ciaddr();
    if !ciaddr.is_unspecified() {
        return Destination::Unicast(ciaddr);
    }
    Destination::Broadcast
}

fn base_reply(req: &Message, t: MessageType, cfg: &DhcpConfig) -> Message {
    let mut r = Message::default();
    r.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    if t != MessageType::Nak {
        r.set_ciaddr(req.ciaddr());
    }
    r.opts_mut().insert(DhcpOption::MessageType(t));
    r.opts_mut()
        .insert(DhcpOption::ServerIdentifier(cfg.server_id));
    if let Some(opt82 @ DhcpOption::RelayAgentInformation(_)) =
        req.opts().get(OptionCode::RelayAgentInformation)
    {
        r.opts_mut().insert(opt82.clone());
    }
    r
}

fn add_lease_options(r: &mut Message, s: &Subnet, hostname: Option<&str>, with_lease_time: bool) {
    let o = r.opts_mut();
    if with_lease_time {
        let lt = s.lease_time_secs;
        o.insert(DhcpOption::AddressLeaseTime(lt));
        o.insert(DhcpOption::Renewal(lt / 2));
        // T2 = 7/8 of the lease (RFC 2131 4.4.5), multiplied first: `lt / 8 * 7` gave 14 s
        // for a 20 s lease.
        o.insert(DhcpOption::Rebinding((u64::from(lt) * 7 / 8) as u32));
    }
    o.insert(DhcpOption::SubnetMask(s.mask()));
    o.insert(DhcpOption::BroadcastAddr(s.broadcast()));
    if !s.routers.is_empty() {
        o.insert(DhcpOption::Router(s.routers.clone()));
    }
    if !s.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
    }
    if let Some(d) = &s.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(mtu) = s.mtu {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(h) = hostname {
        o.insert(DhcpOption::Hostname(h.to_string()));
    }
}

/// Adds next-server, boot file and the vendor class echo a boot client expects; returns
/// the file given, or `None` for clients that are not booting (or have no file configured).
fn add_boot(r: &mut Message, req: &Message, cfg: &DhcpConfig, mac: &MacAddr) -> Option<String> {
    let client = BootClient::of(req);
    if !client.wants_boot() {
        return None;
    }
    let file = boot_file(cfg, &client, mac)?;
    if client.http {
        r.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else {
        r.set_siaddr(cfg.boot.tftp_server);
        r.opts_mut().insert(DhcpOption::TFTPServerName(
            cfg.boot.tftp_server.to_string().into_bytes(),
        ));
        // A proxy's offer is recognised by this echo. An address-giving server leaves it
        // out: UEFI PXE (EDK2) takes an offer that carries it and a boot file as a "BINL"
        // offer and asks the server again on port 4011 before it loads the file; without
        // it the offer is a plain DHCP offer with a boot file, which every PXE ROM loads.
        if client.pxe && cfg.mode == Mode::Proxy {
            r.opts_mut()
                .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        }
    }
    // The header field holds 128 bytes; longer names (URLs) travel in option 67 only.
    if file.len() < 128 {
        r.set_fname_str(&file);
    }
    r.opts_mut()
        .insert(DhcpOption::BootfileName(file.clone().into_bytes()));
    Some(file)
}
