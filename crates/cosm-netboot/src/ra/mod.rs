//! ICMPv6 Router Advertisements on the provisioning segment (RFC 4861), so that network-boot
//! firmware stops waiting for IPv6 autoconfiguration.
//!
//! iPXE configures IPv6 beside DHCPv4 on every boot: it sends Router Solicitations and
//! waits until an advertisement comes or its retry timer gives up; only then does its
//! `dhcp`/autoboot step finish. On a segment with no IPv6 router that wait was about half of
//! a BIOS PXE boot to the agent ramdisk here. An advertisement that says "not a default
//! router, no prefixes, no DHCPv6" ([`packet::router_advertisement`]) ends the wait and
//! gives machines nothing they would use.
//!
//! [`packet`] builds and checks the bytes, [`schedule`] decides when to send, both pure;
//! this module is the tokio shell: one raw ICMPv6 socket on one interface (bound to it,
//! hop limit 255, member of ff02::2 to hear solicitations), sending from the interface's
//! link-local address (IPV6_PKTINFO) to ff02::1, or to a soliciting host's link-local
//! address. It never answers anything but a Router Solicitation and never forwards.
//!
//! The segment to serve comes through a `watch`: `None` pauses it (the appliance's DHCP
//! mode is no longer authoritative), a new value moves it. Trouble with the interface
//! (missing, IPv6 disabled on it, no link-local address yet) is logged once and retried
//! every few seconds; it never stops the caller.

pub mod packet;
pub mod schedule;

use cosm_wire::MacAddr;
use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn6,
};
use packet::{parse_solicitation, router_advertisement};
use schedule::{Answer, Destination, Scheduler, Timing};
use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// ff02::1, all nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, all routers on the link: where solicitations go.
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// Which segment to advertise on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// This interface.
    Interface(String),
    /// The interface that holds this IPv4 address (the DHCP server's own address, when
    /// DHCP is not bound to an interface).
    HoldingAddress(Ipv4Addr),
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Segment::Interface(name) => f.write_str(name),
            Segment::HoldingAddress(a) => write!(f, "the interface holding {a}"),
        }
    }
}

/// Counters, read by the appliance's `/metrics`.
#[derive(Debug, Default)]
pub struct RaStats {
    /// Unsolicited (periodic) advertisements sent.
    pub periodic: AtomicU64,
    /// Advertisements sent in answer to solicitations.
    pub solicited: AtomicU64,
    /// Solicitations an advertisement answered (several may share one).
    pub answered: AtomicU64,
    /// Valid solicitations not answered because of a rate limit.
    pub rate_limited: AtomicU64,
    /// Router Solicitations refused as invalid (hop limit, options, code, length).
    pub invalid: AtomicU64,
    /// Advertisements the kernel would not send.
    pub send_failed: AtomicU64,
}

/// Told of each unicast answer to a host's solicitation, by the link-layer address the
/// solicitation carried (a network-booting machine's MAC); called on the sender's task,
/// so it must not block.
pub trait RaObserver: Send + Sync + 'static {
    fn answered(&self, mac: MacAddr);
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl RaObserver for NoObserver {
    fn answered(&self, _mac: MacAddr) {}
}

/// The interface advertised on, once the socket is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertising {
    pub interface: String,
    pub index: u32,
    pub mac: MacAddr,
    /// The source of the advertisements; `None` while the interface has none (IPv6 off
    /// on it, or its link-local address not made yet): nothing is sent then.
    pub link_local: Option<Ipv6Addr>,
}

/// What the caller keeps of a running sender.
#[derive(Debug, Clone)]
pub struct RaHandle {
    pub stats: Arc<RaStats>,
    status: watch::Receiver<Option<Advertising>>,
}

impl RaHandle {
    /// The interface advertised on now, if any.
    pub fn advertising(&self) -> Option<Advertising> {
        self.status.borrow().clone()
    }

    /// Changes whenever [`RaHandle::advertising`] does.
    pub fn watch(&self) -> watch::Receiver<Option<Advertising>> {
        self.status.clone()
    }
}

/// Returns the handle and the future that advertises on `segment` (while it is `Some`)
/// until `shutdown` changes. `timing` must pass [`Timing::check`].
pub fn start(
    segment: watch::Receiver<Option<Segment>>,
    timing: Timing,
    observer: Arc<dyn RaObserver>,
    shutdown: watch::Receiver<bool>,
) -> (RaHandle, impl Future<Output = ()>) {
    debug_assert_eq!(timing.check(), Ok(()), "RFC 4861 intervals");
    let stats = Arc::new(RaStats::default());
    let (status_tx, status) = watch::channel(None);
    let handle = RaHandle {
        stats: stats.clone(),
        status,
    };
    (
        handle,
        serve(segment, timing, observer, shutdown, stats, status_tx),
    )
}

/// Why one socket's service ended.
enum Ended {
    Shutdown,
    SegmentChanged,
    /// The interface went away or the socket failed: open again.
    Failed(String),
}

async fn serve(
    mut segment: watch::Receiver<Option<Segment>>,
    timing: Timing,
    observer: Arc<dyn RaObserver>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<RaStats>,
    status: watch::Sender<Option<Advertising>>,
) {
    let clock = Instant::now();
    let retry = Duration::from_millis(timing.min_interval_ms);
    let mut problems = Problems::default();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let want = segment.borrow_and_update().clone();
        let Some(seg) = want else {
            status.send_replace(None);
            tokio::select! {
                _ = segment_change(&mut segment) => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        let ended = match Link::open(&seg) {
            Err(e) => Ended::Failed(e),
            Ok(link) => {
                tracing::info!(
                    interface = %link.status.interface,
                    mac = %link.status.mac,
                    "router advertisements on {} {} (router lifetime 0, no prefix, M/O off; solicitations answered within {} ms)",
                    link.status.interface,
                    timing.describe(),
                    schedule::MAX_RA_DELAY_TIME_MS,
                );
                run(
                    link,
                    timing,
                    &*observer,
                    &clock,
                    &mut segment,
                    &mut shutdown,
                    &stats,
                    &status,
                    &mut problems,
                )
                .await
            }
        };
        status.send_replace(None);
        match ended {
            Ended::Shutdown => return,
            Ended::SegmentChanged => {
                tracing::info!(segment = %seg, "router advertisements stopped on it");
            }
            Ended::Failed(e) => {
                problems.report(Some(e), &seg.to_string(), retry);
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = segment_change(&mut segment) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Resolves when the segment changes; never, once its sender is gone (the last segment
/// stays in force until shutdown).
async fn segment_change(rx: &mut watch::Receiver<Option<Segment>>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The last problem logged, so that one that persists is logged once, not at every retry.
#[derive(Debug, Default)]
struct Problems {
    last: Option<String>,
}

impl Problems {
    fn report(&mut self, now: Option<String>, segment: &str, retry: Duration) {
        if now == self.last {
            return;
        }
        match &now {
            Some(text) => tracing::warn!(
                %segment,
                "router advertisements not sent: {text}; trying again every {} s",
                retry.as_secs()
            ),
            None if self.last.is_some() => {
                tracing::info!(%segment, "router advertisements: sent again")
            }
            None => {}
        }
        self.last = now;
    }
}

/// The open socket on one interface.
struct Link {
    /// The raw ICMPv6 socket, held as a tokio `UdpSocket`: tokio has no raw-socket type,
    /// and registering a descriptor with its reactor any other way takes `unsafe`. Only
    /// readiness (`readable`, `try_io`) is used; every read and write is `recvmsg` and
    /// `sendmsg` below, which do not care what kind of datagram socket it is.
    sock: UdpSocket,
    status: Advertising,
    segment: Segment,
}

/// (name, index, MAC, link-local address) of the interface a segment names, now.
fn find_interface(seg: &Segment) -> Result<(String, u32, MacAddr, Option<Ipv6Addr>), String> {
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list interfaces: {e}"))?
        .collect();
    let name = match seg {
        Segment::Interface(n) => n.clone(),
        Segment::HoldingAddress(v4) => addrs
            .iter()
            .find(|a| {
                a.address
                    .as_ref()
                    .and_then(|s| s.as_sockaddr_in())
                    .is_some_and(|s| s.ip() == *v4)
            })
            .map(|a| a.interface_name.clone())
            .ok_or_else(|| format!("no interface holds {v4}"))?,
    };
    let mine = || addrs.iter().filter(|a| a.interface_name == name);
    let mac = mine()
        .find_map(|a| a.address.as_ref()?.as_link_addr()?.addr())
        .ok_or_else(|| format!("interface {name} does not exist or has no MAC address"))?;
    let link_local = mine()
        .filter_map(|a| Some(a.address.as_ref()?.as_sockaddr_in6()?.ip()))
        .find(|ip| ip.segments()[0] & 0xffc0 == 0xfe80);
    let index = nix::net::if_::if_nametoindex(name.as_str())
        .map_err(|e| format!("interface {name}: {e}"))?;
    Ok((name, index, MacAddr::new(mac), link_local))
}

impl Link {
    fn open(seg: &Segment) -> Result<Link, String> {
        use socket2::{Domain, Protocol, Socket, Type};
        let (name, index, mac, link_local) = find_interface(seg)?;
        let ctx = |what: &str| {
            let name = name.clone();
            let what = what.to_string();
            move |e: io::Error| format!("{what} on {name}: {e}")
        };
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(|e| format!("cannot open a raw ICMPv6 socket (it needs CAP_NET_RAW): {e}"))?;
        s.bind_device(Some(name.as_bytes()))
            .map_err(ctx("cannot bind to the interface"))?;
        s.set_multicast_if_v6(index)
            .map_err(ctx("cannot choose the multicast interface"))?;
        s.set_multicast_hops_v6(u32::from(packet::ND_HOP_LIMIT))
            .map_err(ctx("cannot set the hop limit"))?;
        s.set_unicast_hops_v6(u32::from(packet::ND_HOP_LIMIT))
            .map_err(ctx("cannot set the hop limit"))?;
        s.set_multicast_loop_v6(false)
            .map_err(ctx("cannot turn multicast loopback off"))?;
        // Solicitations go to ff02::2, which only routers' interfaces have joined.
        s.join_multicast_v6(&ALL_ROUTERS, index).map_err(|e| {
            format!("cannot join ff02::2 on {name} (is IPv6 disabled on it? net.ipv6.conf.{name}.disable_ipv6): {e}")
        })?;
        setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true)
            .map_err(|e| ctx("cannot ask for hop limits")(e.into()))?;
        s.set_nonblocking(true)
            .map_err(ctx("cannot make the socket non-blocking"))?;
        let sock = UdpSocket::from_std(std::net::UdpSocket::from(s))
            .map_err(ctx("cannot register the socket"))?;
        Ok(Link {
            sock,
            status: Advertising {
                interface: name,
                index,
                mac,
                link_local,
            },
            segment: seg.clone(),
        })
    }

    /// Reads the interface's MAC and link-local address again (they can change).
    fn refresh(&mut self) -> Result<(), String> {
        let (name, index, mac, link_local) = find_interface(&self.segment)?;
        if name != self.status.interface || index != self.status.index {
            return Err(format!(
                "the segment moved from {} to {name}",
                self.status.interface
            ));
        }
        self.status.mac = mac;
        self.status.link_local = link_local;
        Ok(())
    }

    /// One datagram: ICMPv6 bytes, source, hop limit. Non-blocking.
    fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Ipv6Addr, Option<u8>)> {
        let mut control = nix::cmsg_space!(libc::c_int, libc::in6_pktinfo);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrIn6>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let src = msg
            .address
            .map(|a| a.ip())
            .ok_or_else(|| io::Error::other("a packet without a source address"))?;
        let mut hop_limit = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::Ipv6HopLimit(h) = c {
                    hop_limit = u8::try_from(h).ok();
                }
            }
        }
        Ok((msg.bytes, src, hop_limit))
    }

    /// Sends the advertisement from the link-local address, out of this interface.
    fn send(&self, to: Destination) -> io::Result<()> {
        let Some(src) = self.status.link_local else {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "the interface has no IPv6 link-local address",
            ));
        };
        let dest = match to {
            Destination::AllNodes => ALL_NODES,
            Destination::Unicast(a) => a,
        };
        let bytes = router_advertisement(self.status.mac);
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: src.octets(),
            },
            ipi6_ifindex: self.status.index,
        };
        let to = SockaddrIn6::from(SocketAddrV6::new(dest, 0, 0, self.status.index));
        sendmsg(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::Ipv6PacketInfo(&info)],
            MsgFlags::MSG_DONTWAIT,
            Some(&to),
        )
        .map(|_| ())
        .map_err(io::Error::from)
    }
}

fn millis(clock: &Instant) -> u64 {
    clock.elapsed().as_millis() as u64
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut link: Link,
    timing: Timing,
    observer: &dyn RaObserver,
    clock: &Instant,
    segment: &mut watch::Receiver<Option<Segment>>,
    shutdown: &mut watch::Receiver<bool>,
    stats: &RaStats,
    status: &watch::Sender<Option<Advertising>>,
    problems: &mut Problems,
) -> Ended {
    let retry = Duration::from_millis(timing.min_interval_ms);
    let name = link.status.interface.clone();
    let mut report = |p: Option<String>| problems.report(p, &name, retry);
    let mut sched = Scheduler::new(timing, millis(clock));
    status.send_replace(Some(link.status.clone()));
    let mut buf = vec![0u8; 2048];
    loop {
        let wait = sched.next_due_ms().saturating_sub(millis(clock));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {
                let now = millis(clock);
                for due in sched.take_due(now, rand::random()) {
                    if due.to == Destination::AllNodes {
                        // Every few seconds: pick up a new link-local address or MAC.
                        if let Err(e) = link.refresh() {
                            return Ended::Failed(e);
                        }
                        status.send_if_modified(|s| {
                            let changed = s.as_ref() != Some(&link.status);
                            *s = Some(link.status.clone());
                            changed
                        });
                    }
                    match link.send(due.to) {
                        Ok(()) => {
                            report(None);
                            let kind = if due.solicitations > 0 { &stats.solicited } else { &stats.periodic };
                            kind.fetch_add(1, Ordering::Relaxed);
                            stats.answered.fetch_add(u64::from(due.solicitations), Ordering::Relaxed);
                            if let Some(mac) = due.mac {
                                observer.answered(mac);
                            }
                        }
                        Err(e) => {
                            stats.send_failed.fetch_add(1, Ordering::Relaxed);
                            let to = match due.to {
                                Destination::AllNodes => "ff02::1".to_string(),
                                Destination::Unicast(a) => a.to_string(),
                            };
                            if due.to == Destination::AllNodes {
                                report(Some(format!("cannot send to {to} on {}: {e}", link.status.interface)));
                            } else {
                                tracing::debug!(error = %e, %to, "router advertisement not sent");
                            }
                        }
                    }
                }
            }
            ready = link.sock.readable() => {
                if let Err(e) = ready {
                    return Ended::Failed(format!("the socket failed: {e}"));
                }
                // What is queued, up to a batch: under a flood the other branches (the
                // timer that sends the answers) still get their turn.
                for _ in 0..256 {
                    match link.sock.try_io(tokio::io::Interest::READABLE, || link.recv(&mut buf)) {
                        Ok((n, src, hop_limit)) => {
                            handle_packet(&buf[..n], src, hop_limit, &mut sched, millis(clock), stats);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "ICMPv6 receive failed");
                            break;
                        }
                    }
                }
            }
            _ = segment_change(segment) => {
                if segment.borrow().as_ref() != Some(&link.segment) {
                    return Ended::SegmentChanged;
                }
            }
            _ = shutdown.changed() => return Ended::Shutdown,
        }
    }
}

/// One received ICMPv6 packet: a valid solicitation is scheduled for an answer; anything
/// else is counted (if it was a bad solicitation) and dropped.
fn handle_packet(
    bytes: &[u8],
    src: Ipv6Addr,
    hop_limit: Option<u8>,
    sched: &mut Scheduler,
    now_ms: u64,
    stats: &RaStats,
) {
    match parse_solicitation(bytes, hop_limit, src) {
        Ok(s) => match sched.solicited(&s, now_ms, rand::random()) {
            Answer::RateLimited => {
                stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            Answer::Unicast { .. } | Answer::Multicast { .. } | Answer::Shared => {}
        },
        Err(why) if why.is_invalid_solicitation() => {
            stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%src, reason = why.as_str(), "invalid router solicitation dropped");
        }
        Err(_) => {}
    }
}
