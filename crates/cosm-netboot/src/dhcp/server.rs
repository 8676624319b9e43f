//! The tokio shell of the DHCP server: sockets in, [`decide`], durability, sockets out.
//!
//! Requests are decided one at a time under the lease-table lock (so two clients can never
//! be given the same address), then each reply that carries a lease waits in its own task
//! until the [`LeaseSink`] has made the lease durable. Many such tasks in flight let the
//! store group their writes into one commit.
//!
//! The configuration lives under that same lock, beside the table: a packet takes the
//! config once, with the lock it needs anyway, and keeps that `Arc` to the end, so it never
//! sees half of a new config, and [`DhcpHandle::reconfigure`] swaps the config and rebuilds
//! the pool state in one critical section. The sockets stay as bound at start, except the
//! proxyDHCP port, which is opened when the mode becomes proxy and closed when it stops
//! being proxy.

use super::config::{DhcpConfig, Mode, UnknownMacs};
use super::core::{decide, BootClient, Decision, Destination, DropReason, Request, PXE_PORT};
use super::leases::{Hosts, LeaseTable, PoolRebuild};
pub use crate::rate::RateLimiter;
use cosm_wire::{Lease, MacAddr, Timestamp};
use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Encodable};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// Where lease changes go to become durable, and where timeline notes go.
pub trait LeaseSink: Send + Sync + 'static {
    /// Resolves once the lease is durable; an error means it is not, and no ACK is sent.
    fn persist(&self, lease: Lease) -> impl Future<Output = Result<(), String>> + Send;
    /// A step of a machine's boot (DISCOVER, OFFER, ACK, …). Called for every request; the
    /// sink decides which machines and how often it records.
    fn note(&self, mac: MacAddr, step: &str);
    /// A network-booting client (`how`: "PXE uefi", "iPXE bios", …) sent a DISCOVER and
    /// unknown MACs are to be discovered: the sink may record the machine now, so that its
    /// whole boot lands on its timeline. Called for known MACs too, and only when the
    /// client is offered an address. Returns true when the
    /// sink records `step` itself (after the machine), so it is not [`note`](Self::note)d.
    fn boot_client(&self, _mac: MacAddr, _how: &str, _step: &str) -> bool {
        false
    }
}

/// Socket settings of the shell.
#[derive(Debug, Clone)]
pub struct Listen {
    /// Address and port to receive on, e.g. `0.0.0.0:67`.
    pub addr: SocketAddrV4,
    /// Bind to this interface only (SO_BINDTODEVICE), e.g. the provisioning NIC.
    pub interface: Option<String>,
    /// Port clients listen on (68).
    pub client_port: u16,
    /// Port relays listen on (67).
    pub relay_port: u16,
    /// Packets per second allowed per MAC (burst twice that); 0 = unlimited.
    pub per_mac_rate: u32,
    /// Packets per second allowed per relay address; 0 = unlimited.
    pub per_relay_rate: u32,
    /// Before offering an address newly taken from a pool, send it an ICMP echo and wait
    /// this long for an answer; an answer means someone squats on it. 0 = no probe.
    pub probe_timeout_ms: u32,
}

const RECEIVED: [&str; 6] = [
    "discover", "request", "decline", "release", "inform", "other",
];
const SENT: [&str; 3] = ["offer", "ack", "nak"];

/// Packet counters, read by the appliance's `/metrics`.
#[derive(Debug, Default)]
pub struct DhcpStats {
    pub received: [AtomicU64; 6],
    pub sent: [AtomicU64; 3],
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    pub malformed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub persist_failed: AtomicU64,
    pub overloaded: AtomicU64,
    /// Addresses found in use by an ICMP probe and quarantined.
    pub conflicts: AtomicU64,
}

impl DhcpStats {
    pub fn received(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RECEIVED
            .iter()
            .zip(&self.received)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
    }
    pub fn sent(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        SENT.iter()
            .zip(&self.sent)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
    }
    pub fn dropped(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(r, c)| (r.as_str(), c.load(Ordering::Relaxed)))
    }
    fn count_received(&self, t: Option<MessageType>) {
        let i = match t {
            Some(MessageType::Discover) => 0,
            Some(MessageType::Request) => 1,
            Some(MessageType::Decline) => 2,
            Some(MessageType::Release) => 3,
            Some(MessageType::Inform) => 4,
            _ => 5,
        };
        self.received[i].fetch_add(1, Ordering::Relaxed);
    }
    fn count_sent(&self, m: &Message) {
        let i = match m.opts().msg_type() {
            Some(MessageType::Offer) => 0,
            Some(MessageType::Ack) => 1,
            _ => 2,
        };
        self.sent[i].fetch_add(1, Ordering::Relaxed);
    }
    fn count_drop(&self, why: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == why) {
            self.dropped[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The lease table and the config it is decided with, under one lock.
#[derive(Debug)]
struct State {
    table: LeaseTable,
    cfg: Arc<DhcpConfig>,
}

/// What the appliance keeps of a running DHCP server.
#[derive(Debug, Clone)]
pub struct DhcpHandle {
    pub stats: Arc<DhcpStats>,
    state: Arc<Mutex<State>>,
    listen: Listen,
    reconfig: mpsc::Sender<ReconfigRequest>,
    pub local_addr: SocketAddr,
}

/// A new config on its way to the serving task, and where its answer goes.
#[derive(Debug)]
struct ReconfigRequest {
    cfg: DhcpConfig,
    reply: oneshot::Sender<Result<ReconfigReport, ReconfigError>>,
}

/// What [`DhcpHandle::reconfigure`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconfigReport {
    pub old_mode: Mode,
    pub new_mode: Mode,
    /// One line per changed setting, `subnet 192.0.2.0/24 pools: A → B` (see
    /// [`DhcpConfig::changes_to`]); empty when the new config equals the running one.
    pub changes: Vec<String>,
    /// Leases kept and now outside every pool, offers dropped, free addresses per subnet.
    pub pools: PoolRebuild,
}

/// Why a new config was not applied. The running config is then unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReconfigError {
    /// The sockets are bound once, at start: a different address, port or interface needs
    /// the DHCP server restarted.
    #[error("dhcp.{key} cannot change while the DHCP server runs ({running} → {asked}); restart the DHCP server to apply it")]
    NeedsRestart {
        key: &'static str,
        running: String,
        asked: String,
    },
    /// Proxy mode needs the proxyDHCP port, and it cannot be bound.
    #[error("proxy mode needs UDP port {PXE_PORT} on {addr}, which cannot be bound")]
    ProxyPort {
        addr: Ipv4Addr,
        #[source]
        source: std::io::Error,
    },
    /// The serving future has ended (shut down, or never polled and dropped).
    #[error("the DHCP server is not running")]
    Stopped,
}

impl DhcpHandle {
    /// (subnet, bound leases in its pools, pool size) for each subnet.
    pub fn pool_use(&self) -> Vec<(String, u64, u64)> {
        let now = Timestamp::now();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .cfg
            .subnets
            .iter()
            .map(|s| {
                let size = s.pools.iter().map(|p| p.size()).sum();
                (s.cidr(), state.table.bound_in(s, now) as u64, size)
            })
            .collect()
    }

    /// The config packets are decided with now.
    pub fn config(&self) -> Arc<DhcpConfig> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cfg
            .clone()
    }

    /// Applies a new config without a restart: between two packets, all at once. Leases are
    /// kept (they are the store's); those outside every new pool are no longer renewed (a
    /// REQUEST for one gets a NAK in authoritative mode, so the client rediscovers) and are
    /// listed in the report; offers outside the new pools are dropped and the free-address
    /// state is rebuilt. Every mode can follow every other; [`Mode::Off`] answers nothing.
    ///
    /// `listen` is the socket settings the caller wants: they must equal those the server
    /// started with ([`ReconfigError::NeedsRestart`] names the first that differs).
    /// Resolves once the serving task has applied the config (it must be running).
    pub async fn reconfigure(
        &self,
        new: DhcpConfig,
        listen: &Listen,
    ) -> Result<ReconfigReport, ReconfigError> {
        self.check_listen(listen)?;
        let (reply, answer) = oneshot::channel();
        self.reconfig
            .send(ReconfigRequest { cfg: new, reply })
            .await
            .map_err(|_| ReconfigError::Stopped)?;
        answer.await.map_err(|_| ReconfigError::Stopped)?
    }

    fn check_listen(&self, asked: &Listen) -> Result<(), ReconfigError> {
        let run = &self.listen;
        let opt = |i: &Option<String>| i.clone().unwrap_or_else(|| "(any)".into());
        let differs: [(&'static str, String, String); 7] = [
            ("listen", run.addr.to_string(), asked.addr.to_string()),
            ("interface", opt(&run.interface), opt(&asked.interface)),
            (
                "client_port",
                run.client_port.to_string(),
                asked.client_port.to_string(),
            ),
            (
                "relay_port",
                run.relay_port.to_string(),
                asked.relay_port.to_string(),
            ),
            (
                "per_mac_rate",
                run.per_mac_rate.to_string(),
                asked.per_mac_rate.to_string(),
            ),
            (
                "per_relay_rate",
                run.per_relay_rate.to_string(),
                asked.per_relay_rate.to_string(),
            ),
            (
                "probe_timeout_ms",
                run.probe_timeout_ms.to_string(),
                asked.probe_timeout_ms.to_string(),
            ),
        ];
        match differs.into_iter().find(|(_, r, a)| r != a) {
            Some((key, running, asked)) => Err(ReconfigError::NeedsRestart {
                key,
                running,
                asked,
            }),
            None => Ok(()),
        }
    }
}

fn bind(addr: SocketAddrV4, interface: Option<&str>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(ifname) = interface {
        s.bind_device(Some(ifname.as_bytes()))?;
    }
    super::pktinfo::enable(&s)?;
    s.set_nonblocking(true)?;
    // Large buffers absorb bursts (a rack powering on at once) instead of dropping.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::V4(addr).into())?;
    UdpSocket::from_std(s.into())
}

/// Parses a packet. dhcproto asserts on some malformed option lengths in debug builds;
/// a panic there is a malformed packet, not a reason to stop serving.
pub fn parse(bytes: &[u8]) -> Option<Message> {
    if !options_well_formed(bytes) {
        return None;
    }
    let msg = std::panic::catch_unwind(|| Message::decode(&mut dhcproto::Decoder::new(bytes)).ok())
        .ok()
        .flatten()?;
    // dhcproto's `chaddr()` slices the 16-byte field by `hlen` and panics on a larger
    // value (found by the mutation test in `robustness`): such a packet is malformed.
    (msg.hlen() <= 16).then_some(msg)
}

/// The length an option must have, for options with a fixed size (RFC 2132 and later).
fn fixed_len(code: u8) -> Option<usize> {
    Some(match code {
        80 => 0,
        52 | 53 | 156 | 157 => 1,
        13 | 22 | 26 | 57 => 2,
        94 => 3,
        1 | 2 | 16 | 28 | 32 | 50 | 51 | 54 | 58 | 59 | 91 | 118 | 152..=155 => 4,
        _ => return None,
    })
}

/// Walks the option TLVs of a packet and refuses one whose options overrun the packet or
/// have a length their type does not allow. dhcproto decodes such options by asserting
/// (debug builds) or by reading the wrong bytes (release builds); either way the packet is
/// malformed and is dropped before it reaches the decoder.
pub fn options_well_formed(bytes: &[u8]) -> bool {
    const OPTIONS: usize = 240;
    if bytes.len() < OPTIONS || bytes[236..240] != [99, 130, 83, 99] {
        return false;
    }
    let mut i = OPTIONS;
    while i < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => return true,
            code => {
                let Some(&len) = bytes.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if i + 2 + len > bytes.len() {
                    return false;
                }
                let ok = match code {
                    // Lists of addresses, of (u16) architectures, of at least one item.
                    3..=11 | 41 | 42 | 44 | 45 | 48 | 49 | 65 | 68..=76 => len >= 4 && len % 4 == 0,
                    93 => len >= 2 && len % 2 == 0,
                    55 | 151 => len >= 1,
                    81 => len >= 3,
                    c => fixed_len(c).is_none_or(|want| want == len),
                };
                if !ok {
                    return false;
                }
                i += 2 + len;
            }
        }
    }
    // No end option: accepted when the options fill the packet exactly.
    i == bytes.len()
}

struct Shared<S> {
    listen: Listen,
    state: Arc<Mutex<State>>,
    hosts: watch::Receiver<Arc<Hosts>>,
    sink: Arc<S>,
    stats: Arc<DhcpStats>,
    inflight: Arc<Semaphore>,
    pinger: Option<surge_ping::Client>,
    limits: Mutex<(RateLimiter<MacAddr>, RateLimiter<Ipv4Addr>)>,
}

/// Binds the sockets and returns a handle plus the future that serves until `shutdown`.
pub async fn start<S: LeaseSink>(
    cfg: DhcpConfig,
    listen: Listen,
    leases: Vec<Lease>,
    hosts: watch::Receiver<Arc<Hosts>>,
    sink: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(DhcpHandle, impl Future<Output = ()>)> {
    let main = Arc::new(bind(listen.addr, listen.interface.as_deref())?);
    let pxe = if cfg.mode == Mode::Proxy {
        let a = SocketAddrV4::new(*listen.addr.ip(), PXE_PORT);
        Some(Arc::new(bind(a, listen.interface.as_deref())?))
    } else {
        None
    };
    let local_addr = main.local_addr()?;
    let pinger = if listen.probe_timeout_ms > 0 {
        let mut c = surge_ping::Config::builder();
        if let Some(ifname) = &listen.interface {
            c = c.interface(ifname);
        }
        Some(surge_ping::Client::new(&c.build()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("dhcp.probe_timeout_ms is set but ICMP sockets cannot be opened ({e}); run as root or set it to 0"),
            )
        })?)
    } else {
        None
    };
    let state = Arc::new(Mutex::new(State {
        table: LeaseTable::load(leases),
        cfg: Arc::new(cfg),
    }));
    let stats = Arc::new(DhcpStats::default());
    let (reconfig, mut reconfig_rx) = mpsc::channel(8);
    let shared = Arc::new(Shared {
        listen: listen.clone(),
        state: state.clone(),
        hosts,
        sink,
        stats: stats.clone(),
        inflight: Arc::new(Semaphore::new(8192)),
        pinger,
        limits: Mutex::new((
            RateLimiter::new(listen.per_mac_rate),
            RateLimiter::new(listen.per_relay_rate),
        )),
    });
    let handle = DhcpHandle {
        stats,
        state,
        listen: listen.clone(),
        reconfig,
        local_addr,
    };
    let serve = async move {
        let main_loop = recv_loop(
            shared.clone(),
            main.clone(),
            main.clone(),
            listen.addr.port(),
        );
        tokio::pin!(main_loop);
        let pxe_loop =
            |p: Arc<UdpSocket>| Box::pin(recv_loop(shared.clone(), p, main.clone(), PXE_PORT));
        let mut pxe = pxe.map(&pxe_loop);
        loop {
            tokio::select! {
                _ = &mut main_loop => break,
                _ = async {
                    match pxe.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                } => break,
                // No handle left (the branch is off until the next turn): serve on.
                Some(req) = reconfig_rx.recv() => {
                    // The proxyDHCP port is bound here, in the serving task (its runtime,
                    // its network namespace), before anything else changes.
                    let wants_pxe = req.cfg.mode == Mode::Proxy;
                    if wants_pxe && pxe.is_none() {
                        let addr = SocketAddrV4::new(*listen.addr.ip(), PXE_PORT);
                        match bind(addr, listen.interface.as_deref()) {
                            Ok(p) => pxe = Some(pxe_loop(Arc::new(p))),
                            Err(source) => {
                                tracing::warn!(error = %source, %addr, "DHCP reconfiguration refused: proxy mode needs the proxyDHCP port");
                                let _ = req.reply.send(Err(ReconfigError::ProxyPort { addr: *addr.ip(), source }));
                                continue;
                            }
                        }
                    }
                    let report = apply_config(&shared, req.cfg);
                    if !wants_pxe {
                        // Closes the proxyDHCP port.
                        pxe = None;
                    }
                    let _ = req.reply.send(Ok(report));
                }
                _ = shutdown.changed() => break,
            }
        }
        tracing::info!("DHCP server stopped");
    };
    Ok((handle, serve))
}

/// Swaps in a new config and rebuilds the pool state for it, in one critical section of the
/// lock every packet decision takes; logs what changed.
fn apply_config<S>(shared: &Shared<S>, new: DhcpConfig) -> ReconfigReport {
    let hosts = shared.hosts.borrow().clone();
    let now = Timestamp::now();
    let new_mode = new.mode;
    let (old_mode, changes, pools) = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let changes = state.cfg.changes_to(&new);
        let old_mode = state.cfg.mode;
        let pools = state.table.rebuild_pools(&new, &hosts, now);
        state.cfg = Arc::new(new);
        (old_mode, changes, pools)
    };
    tracing::info!(
        mode = %format!("{old_mode} → {new_mode}"),
        changes = changes.len(),
        leases_kept = pools.leases_kept,
        leases_outside_pools = pools.leases_outside.len(),
        offers_dropped = pools.offers_dropped,
        "DHCP reconfigured"
    );
    for change in &changes {
        tracing::info!("DHCP config {change}");
    }
    for p in &pools.pools {
        tracing::info!(subnet = %p.subnet, size = p.size, free = p.free, "DHCP pool rebuilt");
    }
    // Bounded: a subnet moved away can leave a whole rack outside the pools.
    for l in pools.leases_outside.iter().take(32) {
        tracing::info!(ip = %l.ip, mac = %l.mac, "lease outside the new pools: not renewed, the client will rediscover");
    }
    if pools.leases_outside.len() > 32 {
        tracing::info!(
            more = pools.leases_outside.len() - 32,
            "more leases outside the new pools"
        );
    }
    ReconfigReport {
        old_mode,
        new_mode,
        changes,
        pools,
    }
}

async fn recv_loop<S: LeaseSink>(
    shared: Arc<Shared<S>>,
    sock: Arc<UdpSocket>,
    out: Arc<UdpSocket>,
    port: u16,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let received = sock
            .async_io(tokio::io::Interest::READABLE, || {
                super::pktinfo::recv(&*sock, &mut buf)
            })
            .await;
        let (n, src, ifindex) = match received {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DHCP receive failed");
                continue;
            }
        };
        let origin = Origin { src, ifindex };
        let Some(msg) = parse(&buf[..n]) else {
            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%src, bytes = n, "malformed DHCP packet dropped");
            continue;
        };
        // A bug in the decision path must cost one packet, not the DHCP service.
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle_packet(&shared, &sock, &out, msg, origin, port, 0)
        }));
        if handled.is_err() {
            shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%src, "DHCP request handling panicked; packet dropped, service continues");
        }
    }
}

/// How often one request may find its offered address taken by someone who answers pings.
const MAX_PROBE_ATTEMPTS: u8 = 3;

/// Where a request came from: the sender, and the interface it came in on.
#[derive(Debug, Clone, Copy)]
struct Origin {
    src: SocketAddrV4,
    ifindex: Option<u32>,
}

fn handle_packet<S: LeaseSink>(
    shared: &Arc<Shared<S>>,
    sock: &Arc<UdpSocket>,
    out: &Arc<UdpSocket>,
    msg: Message,
    origin: Origin,
    port: u16,
    attempt: u8,
) {
    let src = origin.src;
    let now = Timestamp::now();
    if attempt == 0 {
        shared.stats.count_received(msg.opts().msg_type());
    }
    if attempt == 0 {
        let mut limits = shared.limits.lock().unwrap_or_else(|e| e.into_inner());
        let c = msg.chaddr();
        let mac_ok = c.len() < 6
            || limits.0.allow(
                MacAddr::new([c[0], c[1], c[2], c[3], c[4], c[5]]),
                now.as_millis(),
            );
        let relay_ok =
            msg.giaddr().is_unspecified() || limits.1.allow(msg.giaddr(), now.as_millis());
        if !(mac_ok && relay_ok) {
            shared.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let hosts = shared.hosts.borrow().clone();
    // The config is taken under the lock the decision needs anyway, and this packet keeps
    // that one config to its end (a reconfiguration swaps it under the same lock).
    let (decision, cfg) = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let cfg = state.cfg.clone();
        let decision = decide(
            Request {
                msg: &msg,
                src,
                local_port: port,
                now,
            },
            &mut state.table,
            &hosts,
            &cfg,
        );
        (decision, cfg)
    };
    let Decision {
        mac,
        request_type,
        reply,
        persist,
        dropped,
        note,
        probe,
    } = decision;
    if let (Some(mac), Some(t)) = (mac, request_type) {
        let step = match t {
            MessageType::Discover => {
                let how = BootClient::of(&msg).describe();
                let via = relay_text(msg.giaddr(), src);
                match how {
                    Some(h) => {
                        let step = format!("DISCOVER via {via} ({h})");
                        // Only a client that is offered an address is recorded: a
                        // DISCOVER the cap on unknown MACs dropped must not create a
                        // machine either.
                        let recorded = cfg.unknown_macs == UnknownMacs::Discover
                            && reply.is_some()
                            && shared.sink.boot_client(mac, &h, &step);
                        (!recorded).then_some(step)
                    }
                    None => Some(format!("DISCOVER via {via}")),
                }
            }
            MessageType::Request => Some("REQUEST".to_string()),
            _ => None,
        };
        if let Some(s) = step {
            shared.sink.note(mac, &s);
        }
    }
    if let Some(why) = dropped {
        shared.stats.count_drop(why);
        if why != DropReason::NoReplyExpected {
            tracing::debug!(mac = ?mac.map(|m| m.to_string()), reason = why.as_str(), "DHCP request not answered");
        }
    }
    let Some(reply) = reply else {
        if let Some(lease) = persist {
            // DECLINE/RELEASE: persisted in the background, nothing to send.
            let sink = shared.sink.clone();
            let stats = shared.stats.clone();
            if let (Some(mac), Some(n)) = (mac, note) {
                sink.note(mac, &n);
            }
            tokio::spawn(async move {
                if let Err(e) = sink.persist(lease).await {
                    stats.persist_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot persist a lease change");
                }
            });
        }
        return;
    };
    let dest = match reply.dest {
        Destination::Relay(g) => SocketAddr::V4(SocketAddrV4::new(g, shared.listen.relay_port)),
        Destination::Broadcast => SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::BROADCAST,
            shared.listen.client_port,
        )),
        Destination::Unicast(ip) => {
            SocketAddr::V4(SocketAddrV4::new(ip, shared.listen.client_port))
        }
        Destination::Source => SocketAddr::V4(src),
    };
    // A broadcast leaves through the interface the request came in on, unless the server
    // is bound to one interface anyway (see `pktinfo`).
    let via = match (reply.dest, &shared.listen.interface) {
        (Destination::Broadcast, None) => origin.ifindex,
        _ => None,
    };
    if let (Some(ip), Some(pinger)) = (probe, &shared.pinger) {
        if persist.is_none() && attempt < MAX_PROBE_ATTEMPTS {
            let (shared, sock, out, pinger) =
                (shared.clone(), sock.clone(), out.clone(), pinger.clone());
            tokio::spawn(async move {
                if !answers_ping(&pinger, ip, shared.listen.probe_timeout_ms).await {
                    send_now(
                        &shared,
                        &sock,
                        &out,
                        port,
                        &reply.msg,
                        (dest, via),
                        mac,
                        note.as_deref(),
                    );
                    return;
                }
                shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%ip, "address answers ICMP echo but has no lease: quarantined, offering another");
                let lease = Lease {
                    ip,
                    mac: MacAddr::new([0; 6]),
                    state: cosm_wire::LeaseState::Declined,
                    starts_at: now,
                    expires_at: Timestamp::from_millis(
                        now.as_millis() + u64::from(cfg.decline_quarantine_secs) * 1000,
                    ),
                    client_hostname: Some("in use: answered an ICMP probe".into()),
                    relay: None,
                };
                shared
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .table
                    .put(lease.clone());
                if let Err(e) = shared.sink.persist(lease).await {
                    tracing::error!(error = %e, "cannot persist a conflict quarantine");
                }
                // Decide again: the squatted address is now held, so another one is chosen.
                handle_packet(&shared, &sock, &out, msg, origin, port, attempt + 1);
            });
            return;
        }
    }
    let bytes = match reply.msg.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a DHCP reply");
            return;
        }
    };
    let sock = if port == PXE_PORT {
        sock.clone()
    } else {
        out.clone()
    };
    let stats = shared.stats.clone();
    let sink = shared.sink.clone();
    match persist {
        None => {
            stats.count_sent(&reply.msg);
            if let (Some(mac), Some(n)) = (mac, &note) {
                sink.note(mac, n);
            }
            if let Err(e) = send_via(&sock, &bytes, dest, via) {
                tracing::warn!(error = %e, %dest, "DHCP send failed");
            }
        }
        Some(lease) => {
            let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
                // More leases waiting for the disk than we allow: the client will retry.
                stats.overloaded.fetch_add(1, Ordering::Relaxed);
                return;
            };
            tokio::spawn(async move {
                let _permit = permit;
                match sink.persist(lease).await {
                    Ok(()) => {
                        stats.count_sent(&reply.msg);
                        if let (Some(mac), Some(n)) = (mac, &note) {
                            sink.note(mac, n);
                        }
                        if let Err(e) = send_via_async(&sock, &bytes, dest, via).await {
                            tracing::warn!(error = %e, %dest, "DHCP send failed");
                        }
                    }
                    Err(e) => {
                        stats.persist_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "lease not durable; DHCPACK withheld");
                    }
                }
            });
        }
    }
}

/// Sends a reply that needs no durable write (OFFER, NAK, INFORM's ACK, proxy answers).
#[allow(clippy::too_many_arguments)]
fn send_now<S: LeaseSink>(
    shared: &Shared<S>,
    sock: &Arc<UdpSocket>,
    out: &Arc<UdpSocket>,
    port: u16,
    msg: &Message,
    (dest, via): (SocketAddr, Option<u32>),
    mac: Option<MacAddr>,
    note: Option<&str>,
) {
    let bytes = match msg.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a DHCP reply");
            return;
        }
    };
    shared.stats.count_sent(msg);
    if let (Some(mac), Some(n)) = (mac, note) {
        shared.sink.note(mac, n);
    }
    let sock = if port == PXE_PORT { sock } else { out };
    if let Err(e) = send_via(sock, &bytes, dest, via) {
        tracing::warn!(error = %e, %dest, "DHCP send failed");
    }
}

/// Sends now (or fails with `WouldBlock`), out of interface `via` when given.
fn send_via(
    sock: &UdpSocket,
    bytes: &[u8],
    dest: SocketAddr,
    via: Option<u32>,
) -> std::io::Result<usize> {
    match (dest, via) {
        (SocketAddr::V4(d), Some(_)) => sock.try_io(tokio::io::Interest::WRITABLE, || {
            super::pktinfo::send(sock, bytes, d, via)
        }),
        _ => sock.try_send_to(bytes, dest),
    }
}

/// [`send_via`], waiting for room in the socket's buffer.
async fn send_via_async(
    sock: &UdpSocket,
    bytes: &[u8],
    dest: SocketAddr,
    via: Option<u32>,
) -> std::io::Result<usize> {
    match (dest, via) {
        (SocketAddr::V4(d), Some(_)) => {
            sock.async_io(tokio::io::Interest::WRITABLE, || {
                super::pktinfo::send(sock, bytes, d, via)
            })
            .await
        }
        _ => sock.send_to(bytes, dest).await,
    }
}

/// Does anyone answer an ICMP echo on `ip` within the timeout?
async fn answers_ping(client: &surge_ping::Client, ip: Ipv4Addr, timeout_ms: u32) -> bool {
    let ident = surge_ping::PingIdentifier(u16::from_be_bytes([ip.octets()[2], ip.octets()[3]]));
    let mut pinger = client.pinger(std::net::IpAddr::V4(ip), ident).await;
    pinger.timeout(std::time::Duration::from_millis(u64::from(timeout_ms)));
    pinger
        .ping(surge_ping::PingSequence(0), b"cosm-dhcp-probe")
        .await
        .is_ok()
}

fn relay_text(giaddr: Ipv4Addr, src: SocketAddrV4) -> String {
    if giaddr.is_unspecified() {
        format!("broadcast from {}", src.ip())
    } else {
        format!("relay {giaddr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_refills() {
        let mut r = RateLimiter::new(5);
        let k = 1u32;
        let allowed = (0..20).filter(|_| r.allow(k, 1000)).count();
        assert_eq!(allowed, 10, "burst is twice the rate");
        assert!(!r.allow(k, 1000));
        assert!(r.allow(k, 1200), "one token back after 200 ms at 5/s");
        assert!(RateLimiter::new(0).allow(k, 0), "0 means unlimited");
    }

    #[test]
    fn option_lengths_are_checked() {
        let mut m = Message::default();
        m.set_chaddr(&[0x52, 0x54, 0, 0, 0, 1]);
        m.opts_mut()
            .insert(dhcproto::v4::DhcpOption::MessageType(MessageType::Discover));
        let good = m.to_vec().unwrap();
        assert!(options_well_formed(&good));
        let end = good.len() - 1;
        assert_eq!(good[end], 255);
        // A requested-address option of 3 bytes, an option running past the end, and a
        // bad magic cookie are all malformed.
        let mut bad = good[..end].to_vec();
        bad.extend([50, 3, 1, 2, 3, 255]);
        assert!(!options_well_formed(&bad) && parse(&bad).is_none());
        let mut overrun = good[..end].to_vec();
        overrun.extend([12, 200, b'x']);
        assert!(!options_well_formed(&overrun));
        let mut cookie = good.clone();
        cookie[236] = 0;
        assert!(!options_well_formed(&cookie));
        // Pads and a well-formed extra option are fine.
        let mut padded = good[..end].to_vec();
        padded.extend([0, 0, 12, 2, b'h', b'1', 255]);
        assert!(options_well_formed(&padded) && parse(&padded).is_some());
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[1, 2, 3]).is_none());
        // A real DISCOVER cut short anywhere in its fixed header is refused.
        let mut m = Message::default();
        m.set_chaddr(&[0x52, 0x54, 0, 0, 0, 1]);
        m.opts_mut()
            .insert(dhcproto::v4::DhcpOption::MessageType(MessageType::Discover));
        let bytes = m.to_vec().unwrap();
        assert!(parse(&bytes).is_some());
        for cut in [1, 20, 100, 200, 235] {
            assert!(parse(&bytes[..cut]).is_none(), "{cut} bytes parsed");
        }
    }
}
