//! The TFTP server on loopback with a temp root, and a client that speaks raw UDP, so a
//! test can send what a PXE ROM (or an attacker) sends and see every packet that comes
//! back.

#![allow(dead_code)]

use cosm_netboot::tftp::{self, TftpEvent, TftpHandle, TftpObserver, TftpSettings};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Default)]
pub(crate) struct Events(pub(crate) Mutex<Vec<TftpEvent>>);

impl TftpObserver for Events {
    fn event(&self, event: TftpEvent) {
        self.0.lock().unwrap().push(event);
    }
}

/// A running server; stops on drop.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) handle: TftpHandle,
    pub(crate) root: tempfile::TempDir,
    pub(crate) events: Arc<Events>,
    stop: watch::Sender<bool>,
}

impl Server {
    pub(crate) fn start(configure: impl FnOnce(&mut TftpSettings)) -> Server {
        let root = tempfile::tempdir().unwrap();
        let mut settings = TftpSettings::new("127.0.0.1:0".parse().unwrap(), root.path().into());
        configure(&mut settings);
        let events = Arc::new(Events::default());
        let (stop, stop_rx) = watch::channel(false);
        let handle = tftp::start(settings, events.clone(), stop_rx).unwrap();
        Server {
            handle,
            root,
            events,
            stop,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    pub(crate) fn write(&self, name: &str, data: &[u8]) {
        std::fs::write(self.root.path().join(name), data).unwrap();
    }

    /// Waits (at most `limit`) until no transfer is in progress.
    pub(crate) fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.handle.stats.active.load(Ordering::Acquire) != 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub(crate) fn request(opcode: u16, name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = opcode.to_be_bytes().to_vec();
    for field in [name, mode] {
        p.extend_from_slice(field.as_bytes());
        p.push(0);
    }
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

pub(crate) fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    request(1, name, "octet", opts)
}

pub(crate) fn ack(block: u16) -> Vec<u8> {
    let mut p = 4u16.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

pub(crate) fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = 5u16.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// A packet the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Data(u16, Vec<u8>),
    OAck(Vec<(String, String)>),
    Error(u16, String),
    Other(Vec<u8>),
}

impl Reply {
    pub(crate) fn parse(p: &[u8]) -> Reply {
        let op = u16::from_be_bytes([p[0], p[1]]);
        match op {
            3 => Reply::Data(u16::from_be_bytes([p[2], p[3]]), p[4..].to_vec()),
            5 => Reply::Error(
                u16::from_be_bytes([p[2], p[3]]),
                String::from_utf8_lossy(&p[4..])
                    .trim_end_matches('\0')
                    .into(),
            ),
            6 => {
                let fields: Vec<String> = p[2..]
                    .split(|b| *b == 0)
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                Reply::OAck(
                    fields
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect(),
                )
            }
            _ => Reply::Other(p.to_vec()),
        }
    }

    pub(crate) fn option(&self, name: &str) -> Option<&str> {
        match self {
            Reply::OAck(o) => o.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// A client socket on loopback.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) sock: UdpSocket,
}

impl Client {
    pub(crate) fn new() -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { sock }
    }

    pub(crate) fn send(&self, to: SocketAddr, p: &[u8]) {
        self.sock.send_to(p, to).unwrap();
    }

    /// The next packet, or None after `wait`.
    pub(crate) fn recv(&self, wait: Duration) -> Option<(Reply, SocketAddr)> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 70000];
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => Some((Reply::parse(&buf[..n]), from)),
            Err(_) => None,
        }
    }

    /// Runs a whole read transfer after sending `rrq` to `server`: acknowledges the OACK,
    /// then every window (the last in-order block when the window is full or after a
    /// pause), and hands each new block to `on_block` (it may block to pause the
    /// transfer). Gives up after `limit`.
    pub(crate) fn fetch(
        &self,
        server: SocketAddr,
        rrq: &[u8],
        window: u16,
        limit: Duration,
        mut on_block: impl FnMut(u16, &[u8]),
    ) -> Result<Vec<(String, String)>, String> {
        let deadline = Instant::now() + limit;
        self.send(server, rrq);
        let mut tid = None;
        let mut options = Vec::new();
        let mut block_size = 512usize;
        let mut last: u16 = 0;
        let mut since_ack: u16 = 0;
        loop {
            if Instant::now() > deadline {
                return Err(format!("no end after {limit:?} (last block {last})"));
            }
            // The request is sent again only after 5 s without an answer: sent again sooner,
            // a slow first answer on a busy machine would start a second transfer beside the
            // first (the server cannot tell a retransmitted RRQ from a new one).
            let wait = if tid.is_some() { 500 } else { 5000 };
            let Some((reply, from)) = self.recv(Duration::from_millis(wait)) else {
                match tid {
                    Some(t) => self.send(t, &ack(last)),
                    None => self.send(server, rrq),
                }
                since_ack = 0;
                continue;
            };
            if tid.is_some_and(|t| t != from) {
                continue;
            }
            tid = Some(from);
            match reply {
                Reply::OAck(o) => {
                    if let Some(b) = o.iter().find(|(k, _)| k == "blksize") {
                        block_size = b.1.parse().unwrap();
                    }
                    options = o;
                    self.send(from, &ack(0));
                }
                Reply::Data(n, data) => {
                    if n == last.wrapping_add(1) {
                        last = n;
                        since_ack += 1;
                        on_block(n, &data);
                        let end = data.len() < block_size;
                        if end || since_ack >= window {
                            self.send(from, &ack(n));
                            since_ack = 0;
                        }
                        if end {
                            return Ok(options);
                        }
                    } else if n != last {
                        // Out of order: say what we have (RFC 7440).
                        self.send(from, &ack(last));
                        since_ack = 0;
                    }
                }
                Reply::Error(code, msg) => return Err(format!("ERROR {code}: {msg}")),
                Reply::Other(p) => return Err(format!("unexpected packet {p:?}")),
            }
        }
    }
}
