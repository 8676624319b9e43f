//! Peer probes: the second of the three checks before the appliance declares a hypervisor
//! host dead (missed heartbeats, its peers cannot reach it over the data network, its BMC).
//!
//! Every host running the VM controller answers probes on a UDP port (the *responder*)
//! and, once per heartbeat interval, probes the peers the appliance listed in its last
//! [`cosm_wire::HeartbeatReply::peers`] (the *prober*). Its heartbeats then say when each
//! peer last answered ([`cosm_wire::Heartbeat::peers`]). Both sides share one socket and one
//! thread, owned through a [`PeersHandle`]; the pure part ([`parse`], [`answer`],
//! [`PeerTable`], [`self_fence_due`]) is tested without it.
//!
//! A probe is [`PROBE_MAGIC`], an 8-byte nonce and the prober's MAC; an answer is
//! [`ANSWER_MAGIC`], the same nonce and the responder's MAC: 22 bytes each way, so a
//! responder never sends more than it received (no amplification), and the two magics
//! differ so that two responders cannot be made to answer each other's answers for ever.
//! Anything else is dropped; warnings about dropped datagrams are rate-limited.
//!
//! Security: the data network may be hostile. A forged answer (a guessed nonce from the
//! peer's address) can only make a dead host look alive, which delays its fencing and the
//! restart of its VMs; it can never make a live host look dead, so it cannot cause a VM to
//! run twice. Nonces come from a keyed hash seeded by the OS, so an off-path attacker
//! cannot predict them.
//!
//! Self-fence (`--self-fence-after`, off by default): when the agent has heard neither the
//! appliance nor any peer for that long, it is most likely cut off and about to be fenced,
//! its VMs restarted elsewhere; it then asks the VM controller to hard-stop every
//! COSM-managed domain ([`crate::vms::SelfFencer`]). It never acts while it hears the
//! appliance or any one peer.
//!
//! What it must not do: answer anything but a well-formed probe, block the heartbeat loop,
//! or grow with what the network sends (the peer list is capped at [`MAX_PEERS`]).

use cosm_wire::{MacAddr, Peer, PeerSeen, MAX_PEERS};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The first bytes of a probe.
pub const PROBE_MAGIC: [u8; 8] = *b"COSMprb1";
/// The first bytes of an answer.
pub const ANSWER_MAGIC: [u8; 8] = *b"COSMans1";
/// The length of a probe and of an answer: magic, nonce, MAC.
pub const DATAGRAM_LEN: usize = 8 + 8 + 6;
/// The UDP port the responder listens on unless told otherwise.
pub const DEFAULT_PROBE_PORT: u16 = 7946;
/// At most this many warnings a minute about datagrams or socket errors.
const WARNINGS_PER_MINUTE: u32 = 3;
/// At most this many answers a second. Legitimate load is a probe per peer (at most
/// [`MAX_PEERS`]) per heartbeat interval; the cap bounds what spoofed probes can make
/// this host send to a third party.
const ANSWERS_PER_SECOND: u32 = 256;
/// How often the thread looks at its stop flag and the self-fence at least.
const TICK: Duration = Duration::from_millis(100);

/// A probe's nonce.
pub type Nonce = [u8; 8];

/// A well-formed datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    Probe { nonce: Nonce, mac: MacAddr },
    Answer { nonce: Nonce, mac: MacAddr },
}

/// The bytes of a datagram.
pub fn encode(d: &Datagram) -> [u8; DATAGRAM_LEN] {
    let (magic, nonce, mac) = match d {
        Datagram::Probe { nonce, mac } => (PROBE_MAGIC, nonce, mac),
        Datagram::Answer { nonce, mac } => (ANSWER_MAGIC, nonce, mac),
    };
    let mut out = [0u8; DATAGRAM_LEN];
    out[..8].copy_from_slice(&magic);
    out[8..16].copy_from_slice(nonce);
    out[16..].copy_from_slice(&mac.octets());
    out
}

/// Reads a datagram; `None` for anything that is not exactly a probe or an answer.
pub fn parse(bytes: &[u8]) -> Option<Datagram> {
    if bytes.len() != DATAGRAM_LEN {
        return None;
    }
    let nonce: Nonce = bytes[8..16].try_into().ok()?;
    let octets: [u8; 6] = bytes[16..].try_into().ok()?;
    let mac = MacAddr::new(octets);
    match bytes[..8].try_into().ok()? {
        PROBE_MAGIC => Some(Datagram::Probe { nonce, mac }),
        ANSWER_MAGIC => Some(Datagram::Answer { nonce, mac }),
        _ => None,
    }
}

/// The responder's decision: the answer to `bytes` if it is a probe, else nothing.
pub fn answer(bytes: &[u8], own_mac: MacAddr) -> Option<[u8; DATAGRAM_LEN]> {
    match parse(bytes)? {
        Datagram::Probe { nonce, .. } => Some(encode(&Datagram::Answer {
            nonce,
            mac: own_mac,
        })),
        Datagram::Answer { .. } => None,
    }
}

/// Unpredictable nonces: SipHash of a counter under a key the OS seeds ([`RandomState`]).
#[derive(Debug)]
pub struct NonceSource {
    key: RandomState,
    counter: u64,
}

impl NonceSource {
    pub fn new() -> NonceSource {
        NonceSource {
            key: RandomState::new(),
            counter: 0,
        }
    }

    pub fn next_nonce(&mut self) -> Nonce {
        self.counter += 1;
        self.key.hash_one(self.counter).to_be_bytes()
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        NonceSource::new()
    }
}

/// One peer the prober watches.
#[derive(Debug, Clone)]
struct PeerState {
    mac: MacAddr,
    probe: String,
    /// `None` when `probe` is not an `ip:port`: never probed, reported as never answering.
    addr: Option<SocketAddr>,
    /// The nonces of the last two probes: an answer may come after the next probe left.
    nonces: [Option<Nonce>; 2],
    last_answer: Option<Instant>,
}

/// The peers to probe and what they answered. Pure: time comes in as arguments.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Vec<PeerState>,
    last_any_answer: Option<Instant>,
}

impl PeerTable {
    pub fn new() -> PeerTable {
        PeerTable::default()
    }

    /// Takes the appliance's latest list (the first [`MAX_PEERS`]); a peer listed again
    /// with the same probe address keeps what was seen of it. Returns the probe addresses
    /// that are not `ip:port`, for a warning.
    pub fn set_peers(&mut self, peers: &[Peer]) -> Vec<String> {
        let mut bad = Vec::new();
        let mut next = Vec::with_capacity(peers.len().min(MAX_PEERS));
        for p in peers.iter().take(MAX_PEERS) {
            if next.iter().any(|s: &PeerState| s.mac == p.mac) {
                continue;
            }
            if let Some(old) = self
                .peers
                .iter()
                .find(|s| s.mac == p.mac && s.probe == p.probe)
            {
                next.push(old.clone());
                continue;
            }
            let addr = p.probe.parse::<SocketAddr>().ok();
            if addr.is_none() {
                bad.push(p.probe.clone());
            }
            next.push(PeerState {
                mac: p.mac,
                probe: p.probe.clone(),
                addr,
                nonces: [None, None],
                last_answer: None,
            });
        }
        self.peers = next;
        bad
    }

    /// Whether there is a peer to probe.
    pub fn has_peers(&self) -> bool {
        self.peers.iter().any(|p| p.addr.is_some())
    }

    /// One probe round: the datagrams to send, one per peer with an address.
    pub fn round(
        &mut self,
        own_mac: MacAddr,
        nonces: &mut NonceSource,
    ) -> Vec<(SocketAddr, [u8; DATAGRAM_LEN])> {
        let mut out = Vec::with_capacity(self.peers.len());
        for p in &mut self.peers {
            let Some(addr) = p.addr else { continue };
            let nonce = nonces.next_nonce();
            p.nonces = [Some(nonce), p.nonces[0]];
            out.push((
                addr,
                encode(&Datagram::Probe {
                    nonce,
                    mac: own_mac,
                }),
            ));
        }
        out
    }

    /// An answer came from `from`: it counts only from the peer's probe address, with
    /// the peer's MAC and a nonce of one of its last two probes. Returns whether it
    /// counted.
    pub fn on_answer(
        &mut self,
        from: SocketAddr,
        nonce: Nonce,
        mac: MacAddr,
        now: Instant,
    ) -> bool {
        let Some(p) = self
            .peers
            .iter_mut()
            .find(|p| p.mac == mac && p.addr == Some(from) && p.nonces.contains(&Some(nonce)))
        else {
            return false;
        };
        // Each nonce counts once: a replayed answer does not refresh the peer.
        for n in &mut p.nonces {
            if *n == Some(nonce) {
                *n = None;
            }
        }
        p.last_answer = Some(now);
        self.last_any_answer = Some(now);
        true
    }

    /// What the heartbeat says of every current peer.
    pub fn seen(&self, now: Instant) -> Vec<PeerSeen> {
        self.peers
            .iter()
            .map(|p| PeerSeen {
                mac: p.mac,
                last_answer_ms: p
                    .last_answer
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            })
            .collect()
    }

    /// When any peer last answered.
    pub fn last_any_answer(&self) -> Option<Instant> {
        self.last_any_answer
    }
}

/// Whether the agent should stop its own VMs: self-fencing is on (`after` > 0), it has
/// peers to hear from, and it has heard neither the appliance nor any peer for `after`.
/// Without peers it never acts: the appliance cannot confirm a host dead through its
/// peers then, and a host alone has nowhere its VMs could be restarted.
pub fn self_fence_due(
    after: Duration,
    since_appliance: Duration,
    since_any_peer: Duration,
    has_peers: bool,
) -> bool {
    !after.is_zero() && has_peers && since_appliance >= after && since_any_peer >= after
}

/// Called once when the agent fences itself, with the reason.
pub type OnSelfFence = Box<dyn Fn(String) + Send + Sync>;

/// How the peer thread runs.
#[derive(Debug, Clone)]
pub struct PeersConfig {
    /// This agent's MAC: sent in probes and answers.
    pub mac: MacAddr,
    /// Answer probes (`--probe-listen` not `off`).
    pub respond: bool,
    /// Time between probe rounds: the heartbeat interval.
    pub interval: Duration,
    /// `--self-fence-after`; zero is off.
    pub self_fence_after: Duration,
}

/// Rate-limited warnings: at most [`WARNINGS_PER_MINUTE`], then a count of the rest.
#[derive(Debug, Default)]
struct Warnings {
    window: Option<Instant>,
    shown: u32,
    suppressed: u64,
}

impl Warnings {
    fn warn(&mut self, now: Instant, message: impl FnOnce() -> String) {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(60))
        {
            if self.suppressed > 0 {
                eprintln!(
                    "warning: peer probes: {} more warnings were not shown",
                    self.suppressed
                );
            }
            self.window = Some(now);
            self.shown = 0;
            self.suppressed = 0;
        }
        if self.shown < WARNINGS_PER_MINUTE {
            self.shown += 1;
            eprintln!("warning: peer probes: {}", message());
        } else {
            self.suppressed += 1;
        }
    }
}

#[derive(Debug)]
struct State {
    table: PeerTable,
    interval: Duration,
    /// When the appliance last answered (or the thread started).
    heard_appliance: Instant,
    started: Instant,
    /// The agent fenced itself and has not yet heard the appliance's desired state since.
    fenced: bool,
}

struct Inner {
    state: Mutex<State>,
    stop: AtomicBool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every change under the lock is a plain assignment: a panic leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Owns the probe thread (responder and prober on one socket). Dropping it stops the
/// thread within [`TICK`].
pub struct PeersHandle {
    inner: Arc<Inner>,
    local: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for PeersHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeersHandle")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl PeersHandle {
    /// Starts the thread on `socket` (bound by the caller: the responder's address, or
    /// an ephemeral port when it does not answer). `on_fence` is called once each time
    /// the agent fences itself.
    pub fn start(
        socket: UdpSocket,
        config: PeersConfig,
        on_fence: OnSelfFence,
    ) -> std::io::Result<PeersHandle> {
        let local = socket.local_addr()?;
        let now = Instant::now();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                table: PeerTable::new(),
                interval: config.interval,
                heard_appliance: now,
                started: now,
                fenced: false,
            }),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("peer-probes".into())
                .spawn(move || probe_loop(&socket, &config, &inner, &on_fence))?
        };
        Ok(PeersHandle {
            inner,
            local,
            thread: Some(thread),
        })
    }

    /// The socket's address (the responder's port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peers of the latest heartbeat reply and the heartbeat interval.
    pub fn set_peers(&self, peers: &[Peer], interval: Duration) {
        let mut s = lock(&self.inner.state);
        let bad = s.table.set_peers(peers);
        s.interval = interval;
        drop(s);
        for probe in bad {
            // Once per reply at most, and replies are rare: no rate limit needed.
            eprintln!("warning: peer probes: {probe:?} is not ip:port; that peer is not probed");
        }
    }

    /// What the next heartbeat says about the peers.
    pub fn seen(&self) -> Vec<PeerSeen> {
        lock(&self.inner.state).table.seen(Instant::now())
    }

    /// The appliance answered (any answer: it is reachable).
    pub fn heard_appliance(&self) {
        lock(&self.inner.state).heard_appliance = Instant::now();
    }

    /// Whether the agent fenced itself and has not been told [`PeersHandle::resumed`].
    pub fn fenced(&self) -> bool {
        lock(&self.inner.state).fenced
    }

    /// The appliance's desired state was fetched after a self-fence: it may fence again.
    pub fn resumed(&self) {
        lock(&self.inner.state).fenced = false;
    }
}

impl Drop for PeersHandle {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn probe_loop(socket: &UdpSocket, config: &PeersConfig, inner: &Inner, on_fence: &OnSelfFence) {
    let mut nonces = NonceSource::new();
    let mut warnings = Warnings::default();
    let mut answers = (Instant::now(), 0u32);
    let mut next_round = Instant::now();
    // One byte more than a datagram, so a longer one shows as longer.
    let mut buf = [0u8; DATAGRAM_LEN + 1];
    while !inner.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_round {
            let (sends, interval) = {
                let mut s = lock(&inner.state);
                (s.table.round(config.mac, &mut nonces), s.interval)
            };
            for (addr, bytes) in sends {
                if let Err(e) = socket.send_to(&bytes, addr) {
                    warnings.warn(now, || format!("cannot probe {addr}: {e}"));
                }
            }
            next_round = now + interval.max(TICK);
        }
        check_self_fence(config, inner, on_fence, now);
        let wait = next_round
            .saturating_duration_since(now)
            .clamp(Duration::from_millis(1), TICK);
        if let Err(e) = socket.set_read_timeout(Some(wait)) {
            warnings.warn(now, || format!("cannot set the socket's timeout: {e}"));
            std::thread::sleep(wait);
            continue;
        }
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                // E.g. ECONNREFUSED from an ICMP error for an earlier probe: not fatal.
                if e.kind() != std::io::ErrorKind::ConnectionRefused {
                    warnings.warn(now, || format!("receive: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        let now = Instant::now();
        match parse(&buf[..n]) {
            None => warnings.warn(now, || {
                format!("dropped a malformed datagram ({n} bytes) from {from}")
            }),
            Some(Datagram::Probe { .. }) if config.respond => {
                if now.duration_since(answers.0) >= Duration::from_secs(1) {
                    answers = (now, 0);
                }
                if answers.1 >= ANSWERS_PER_SECOND {
                    warnings.warn(now, || format!("too many probes; not answering {from}"));
                    continue;
                }
                answers.1 += 1;
                if let Some(bytes) = answer(&buf[..n], config.mac) {
                    if let Err(e) = socket.send_to(&bytes, from) {
                        warnings.warn(now, || format!("cannot answer {from}: {e}"));
                    }
                }
            }
            Some(Datagram::Probe { .. }) => {}
            Some(Datagram::Answer { nonce, mac }) => {
                lock(&inner.state).table.on_answer(from, nonce, mac, now);
            }
        }
    }
}

fn check_self_fence(config: &PeersConfig, inner: &Inner, on_fence: &OnSelfFence, now: Instant) {
    if config.self_fence_after.is_zero() {
        return;
    }
    let mut s = lock(&inner.state);
    if s.fenced {
        return;
    }
    let since_appliance = now.saturating_duration_since(s.heard_appliance);
    let since_peer = now.saturating_duration_since(s.table.last_any_answer().unwrap_or(s.started));
    if !self_fence_due(
        config.self_fence_after,
        since_appliance,
        since_peer,
        s.table.has_peers(),
    ) {
        return;
    }
    s.fenced = true;
    drop(s);
    let reason = format!(
        "no answer from the appliance for {} s and from none of its peers for {} s \
         (--self-fence-after {} s): this host is cut off and its VMs may be restarted \
         elsewhere",
        since_appliance.as_secs(),
        since_peer.as_secs(),
        config.self_fence_after.as_secs()
    );
    eprintln!("SELF-FENCE: {reason}; hard-stopping every COSM-managed domain on this host");
    on_fence(reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0, n])
    }

    fn peer(n: u8, addr: SocketAddr) -> Peer {
        Peer {
            mac: mac(n),
            probe: addr.to_string(),
        }
    }

    const FAST: Duration = Duration::from_millis(50);
    const SETTLE: Duration = Duration::from_secs(10);

    /// A probe thread on 127.0.0.1, and what its self-fence reported.
    fn start(n: u8, respond: bool, fence_after: Duration) -> (PeersHandle, mpsc::Receiver<String>) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let h = PeersHandle::start(
            socket,
            PeersConfig {
                mac: mac(n),
                respond,
                interval: FAST,
                self_fence_after: fence_after,
            },
            Box::new(move |reason| {
                let _ = tx.lock().unwrap().send(reason);
            }),
        )
        .unwrap();
        (h, rx)
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + SETTLE;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn seen_of(h: &PeersHandle, n: u8) -> Option<u64> {
        h.seen()
            .into_iter()
            .find(|s| s.mac == mac(n))
            .expect("a listed peer is always reported")
            .last_answer_ms
    }

    #[test]
    fn only_exact_probes_and_answers_parse() {
        let probe = encode(&Datagram::Probe {
            nonce: *b"12345678",
            mac: mac(1),
        });
        assert_eq!(probe.len(), DATAGRAM_LEN);
        assert_eq!(
            parse(&probe),
            Some(Datagram::Probe {
                nonce: *b"12345678",
                mac: mac(1)
            })
        );
        let a = answer(&probe, mac(2)).expect("a probe is answered");
        assert_eq!(
            parse(&a),
            Some(Datagram::Answer {
                nonce: *b"12345678",
                mac: mac(2)
            })
        );
        assert_eq!(answer(&a, mac(2)), None, "an answer is never answered");
        assert_eq!(parse(&probe[..DATAGRAM_LEN - 1]), None);
        let mut long = probe.to_vec();
        long.push(0);
        assert_eq!(parse(&long), None);
        assert_eq!(parse(&[]), None);
        let mut bad = probe;
        bad[0] ^= 1;
        assert_eq!(parse(&bad), None);
        assert_eq!(answer(&bad, mac(2)), None);
    }

    #[test]
    fn nonces_do_not_repeat() {
        let mut n = NonceSource::new();
        let all: std::collections::HashSet<Nonce> = (0..1000).map(|_| n.next_nonce()).collect();
        assert_eq!(all.len(), 1000);
        assert_ne!(
            NonceSource::new().next_nonce(),
            NonceSource::new().next_nonce()
        );
    }

    #[test]
    fn the_table_counts_only_the_right_nonce_mac_and_address_once() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let mut t = PeerTable::new();
        assert!(t.set_peers(&[peer(2, addr)]).is_empty());
        let mut nonces = NonceSource::new();
        let t0 = Instant::now();
        assert_eq!(t.seen(t0)[0].last_answer_ms, None);
        let sent = t.round(mac(1), &mut nonces);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, addr);
        let Some(Datagram::Probe { nonce, mac: from }) = parse(&sent[0].1) else {
            panic!("not a probe")
        };
        assert_eq!(from, mac(1));
        assert!(!t.on_answer(addr, *b"wrongnon", mac(2), t0), "wrong nonce");
        assert!(!t.on_answer(addr, nonce, mac(3), t0), "wrong MAC");
        assert!(!t.on_answer(other, nonce, mac(2), t0), "wrong address");
        assert_eq!(t.last_any_answer(), None);
        assert!(t.on_answer(addr, nonce, mac(2), t0));
        assert!(
            !t.on_answer(addr, nonce, mac(2), t0),
            "a replay does not count"
        );
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(t.seen(later)[0].last_answer_ms, Some(1500));
        // The answer to the previous probe still counts after the next one left.
        let first = t.round(mac(1), &mut nonces);
        t.round(mac(1), &mut nonces);
        let Some(Datagram::Probe { nonce: old, .. }) = parse(&first[0].1) else {
            panic!()
        };
        assert!(t.on_answer(addr, old, mac(2), later));
    }

    #[test]
    fn the_table_keeps_known_peers_caps_the_list_and_skips_bad_addresses() {
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut t = PeerTable::new();
        t.set_peers(&[peer(2, addr)]);
        let mut nonces = NonceSource::new();
        let sent = t.round(mac(1), &mut nonces);
        let Some(Datagram::Probe { nonce, .. }) = parse(&sent[0].1) else {
            panic!()
        };
        let now = Instant::now();
        assert!(t.on_answer(addr, nonce, mac(2), now));
        // Listed again with a new neighbour: what was seen of peer 2 stays.
        let bad = t.set_peers(&[
            peer(2, addr),
            Peer {
                mac: mac(3),
                probe: "host-c:7946".into(),
            },
        ]);
        assert_eq!(bad, ["host-c:7946"]);
        let seen = t.seen(now);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].last_answer_ms, Some(0));
        assert_eq!(seen[1].last_answer_ms, None);
        assert_eq!(
            t.round(mac(1), &mut nonces).len(),
            1,
            "no probe to a bad address"
        );
        // A new address for peer 2 starts over.
        t.set_peers(&[peer(2, "127.0.0.1:7002".parse().unwrap())]);
        assert_eq!(t.seen(now)[0].last_answer_ms, None);
        let many: Vec<Peer> = (0..20).map(|i| peer(10 + i, addr)).collect();
        t.set_peers(&many);
        assert_eq!(t.seen(now).len(), MAX_PEERS);
    }

    #[test]
    fn self_fence_needs_silence_from_both_and_a_peer() {
        let s = Duration::from_secs;
        assert!(self_fence_due(s(30), s(30), s(31), true));
        assert!(!self_fence_due(s(0), s(300), s(300), true), "off");
        assert!(
            !self_fence_due(s(30), s(29), s(300), true),
            "hears the appliance"
        );
        assert!(!self_fence_due(s(30), s(300), s(29), true), "hears a peer");
        assert!(!self_fence_due(s(30), s(300), s(300), false), "no peers");
    }

    #[test]
    fn two_agents_probe_each_other_over_loopback() {
        let (a, _) = start(1, true, Duration::ZERO);
        let (b, _) = start(2, true, Duration::ZERO);
        a.set_peers(&[peer(2, b.local_addr())], FAST);
        b.set_peers(&[peer(1, a.local_addr())], FAST);
        wait_for("both to hear each other", || {
            seen_of(&a, 2).is_some() && seen_of(&b, 1).is_some()
        });
        // They keep answering: a second later, a fresh answer comes (an answer that stopped
        // coming would be a second old by now).
        std::thread::sleep(Duration::from_secs(1));
        wait_for("a fresh answer", || seen_of(&a, 2).unwrap() < 500);
    }

    #[test]
    fn a_silent_peer_is_none_and_a_peer_that_stops_answering_ages() {
        let (a, _) = start(1, true, Duration::ZERO);
        let (b, _) = start(2, true, Duration::ZERO);
        // Bound but never answering (a host whose agent hangs).
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_peers(
            &[
                peer(2, b.local_addr()),
                peer(3, silent.local_addr().unwrap()),
            ],
            FAST,
        );
        wait_for("peer 2 to answer", || seen_of(&a, 2).is_some());
        drop(b);
        std::thread::sleep(Duration::from_secs(1));
        let first = seen_of(&a, 2).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let second = seen_of(&a, 2).unwrap();
        assert!(second >= first + 900, "{first} then {second}");
        assert_eq!(seen_of(&a, 3), None);
        // It was probed all along, with probes from a's port.
        let mut buf = [0u8; 64];
        silent.set_read_timeout(Some(SETTLE)).unwrap();
        let (n, from) = silent.recv_from(&mut buf).unwrap();
        assert_eq!(from, a.local_addr());
        assert!(matches!(parse(&buf[..n]), Some(Datagram::Probe { mac: m, .. }) if m == mac(1)));
    }

    #[test]
    fn forged_answers_are_ignored_over_real_sockets() {
        let (a, _) = start(1, true, Duration::ZERO);
        let fake = UdpSocket::bind("127.0.0.1:0").unwrap();
        let elsewhere = UdpSocket::bind("127.0.0.1:0").unwrap();
        fake.set_read_timeout(Some(SETTLE)).unwrap();
        // Slow rounds: the nonce stays one of the last two probes' throughout, so only the
        // MAC or the address can be why a forged answer does not count.
        a.set_peers(
            &[peer(2, fake.local_addr().unwrap())],
            Duration::from_secs(5),
        );
        let mut buf = [0u8; 64];
        let (n, from) = fake.recv_from(&mut buf).unwrap();
        let Some(Datagram::Probe { nonce, .. }) = parse(&buf[..n]) else {
            panic!("not a probe")
        };
        let reply = |nonce, m| encode(&Datagram::Answer { nonce, mac: m });
        fake.send_to(&reply(*b"guessed!", mac(2)), from).unwrap();
        fake.send_to(&reply(nonce, mac(9)), from).unwrap();
        elsewhere.send_to(&reply(nonce, mac(2)), from).unwrap();
        fake.send_to(b"garbage", from).unwrap();
        fake.send_to(&[0u8; 1500], from).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(seen_of(&a, 2), None, "no forged answer counted");
        fake.send_to(&reply(nonce, mac(2)), from).unwrap();
        wait_for("the right answer to count", || seen_of(&a, 2).is_some());
    }

    #[test]
    fn the_responder_answers_probes_only_and_not_when_off() {
        let (a, _) = start(1, true, Duration::ZERO);
        let (quiet, _) = start(4, false, Duration::ZERO);
        let me = UdpSocket::bind("127.0.0.1:0").unwrap();
        me.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        for junk in [
            &b"hello"[..],
            &encode(&Datagram::Answer {
                nonce: *b"abcdefgh",
                mac: mac(7),
            }),
            &[0u8; 2000],
        ] {
            me.send_to(junk, a.local_addr()).unwrap();
            assert!(me.recv_from(&mut buf).is_err(), "no answer to {junk:?}");
        }
        let probe = encode(&Datagram::Probe {
            nonce: *b"abcdefgh",
            mac: mac(7),
        });
        me.send_to(&probe, quiet.local_addr()).unwrap();
        assert!(
            me.recv_from(&mut buf).is_err(),
            "--probe-listen off answers none"
        );
        me.send_to(&probe, a.local_addr()).unwrap();
        me.set_read_timeout(Some(SETTLE)).unwrap();
        let (n, from) = me.recv_from(&mut buf).unwrap();
        assert_eq!(from, a.local_addr());
        assert_eq!(
            parse(&buf[..n]),
            Some(Datagram::Answer {
                nonce: *b"abcdefgh",
                mac: mac(1)
            })
        );
    }

    #[test]
    fn the_self_fence_fires_once_when_all_is_silent_and_never_while_a_peer_answers() {
        // Long against the 50 ms probe rounds, so that a busy machine delaying a round does
        // not pass for a silent peer.
        let after = Duration::from_millis(1500);
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Cut off: the appliance is never heard, the only peer never answers.
        let (cut, fenced) = start(1, true, after);
        cut.set_peers(&[peer(3, silent.local_addr().unwrap())], FAST);
        // Its appliance is away too, but one of its two peers answers.
        let (b, _) = start(2, true, Duration::ZERO);
        let (heard, not_fenced) = start(5, true, after);
        heard.set_peers(
            &[
                peer(3, silent.local_addr().unwrap()),
                peer(2, b.local_addr()),
            ],
            FAST,
        );
        // No peers at all.
        let (alone, alone_fenced) = start(6, true, after);
        let reason = fenced
            .recv_timeout(SETTLE)
            .expect("the cut-off host fences itself");
        assert!(reason.contains("no answer from the appliance"), "{reason}");
        assert!(cut.fenced());
        std::thread::sleep(Duration::from_secs(2));
        assert!(fenced.try_recv().is_err(), "once, not again");
        assert!(not_fenced.try_recv().is_err(), "a peer answers");
        assert!(alone_fenced.try_recv().is_err(), "no peers");
        assert!(!heard.fenced() && !alone.fenced());
        // The appliance answers and the desired state was fetched: it may fence again later.
        cut.heard_appliance();
        cut.resumed();
        assert!(!cut.fenced());
        fenced
            .recv_timeout(SETTLE)
            .expect("cut off again, it fences again");
    }

    #[test]
    fn hearing_the_appliance_keeps_the_self_fence_away() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (h, fenced) = start(1, true, Duration::from_millis(1500));
        h.set_peers(&[peer(3, silent.local_addr().unwrap())], FAST);
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            h.heard_appliance();
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(fenced.try_recv().is_err());
        assert!(!h.fenced());
    }
}
