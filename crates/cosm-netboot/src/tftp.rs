//! Read-only TFTP for PXE firmware, on `async-tftp` (patched: an ERROR from the client ends
//! its transfer at once; see `third_party/async-tftp/COSM-PATCH.md`).
//!
//! What this module adds around the crate:
//! - a root directory that nothing leaves: absolute paths, `..` and symlinks that resolve
//!   outside the root get an ERROR and a log line;
//! - generated files (in memory) beside the files on disk;
//! - write requests refused;
//! - a limit on concurrent transfers;
//! - a shared in-memory copy of each file that fits `cache_bytes`, so a boot storm of fifty
//!   clients reads the disk once; a larger file is streamed from disk by each transfer (on
//!   the blocking pool), so it never costs its size in memory;
//! - an [`TftpObserver`] told of every request, refusal and finished transfer (completed,
//!   a PXE size probe, aborted, timed out), which the appliance puts on machines' timelines;
//! - a bound on the `timeout` a client may ask for, and on how long a silent client holds
//!   its transfer.
//!
//! The patched crate does the protocol: the request parser ([`parse_request`], which
//! answers malformed requests with an ERROR), netascii, windows and retransmission.
//! async-tftp runs its transfers on its own executor; [`start`] gives it a thread.

use async_tftp::packet;
use async_tftp::server::{Handler, ReadEnd, ReadOutcome, TftpServerBuilder};
use blocking::Unblock;
use bytes::Bytes;
use futures_lite::io::Cursor;
use futures_lite::AsyncRead;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The parser the server runs on every packet that reaches its port (fuzzed by
/// `fuzz/fuzz_targets/tftp_request.rs`).
pub use async_tftp::packet::{parse_request, Mode, Request, RequestError, RwReq};

/// Largest `timeout` option granted when the configured timeout is shorter: a client may
/// slow retransmissions down this far, no further (RFC 2349 lets the server refuse it).
pub const CLIENT_TIMEOUT_FLOOR: Duration = Duration::from_secs(5);

/// Read buffer of a transfer streamed from disk.
const STREAM_BUFFER: usize = 64 << 10;

/// Settings of the TFTP server.
#[derive(Debug, Clone)]
pub struct TftpSettings {
    /// Usually `0.0.0.0:69`.
    pub listen: SocketAddr,
    /// Directory served; requests name files relative to it.
    pub root: PathBuf,
    /// Transfers in progress at most; a request beyond gets ERROR "server busy".
    pub max_transfers: usize,
    /// Largest blksize granted (a client asking more gets this).
    pub block_size_limit: u16,
    /// Largest windowsize granted (RFC 7440).
    pub window_size_limit: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub timeout: Duration,
    /// Retransmissions of one window before the transfer is given up.
    pub max_send_retries: u32,
    /// Bytes of file contents kept in memory for reuse. A file larger than this is
    /// streamed from disk by each transfer.
    pub cache_bytes: u64,
}

impl TftpSettings {
    pub fn new(listen: SocketAddr, root: PathBuf) -> TftpSettings {
        TftpSettings {
            listen,
            root,
            max_transfers: 256,
            block_size_limit: 1468,
            window_size_limit: 64,
            timeout: Duration::from_secs(2),
            max_send_retries: 5,
            cache_bytes: 512 << 20,
        }
    }

    /// Largest `timeout` option granted: the configured timeout, or
    /// [`CLIENT_TIMEOUT_FLOOR`] if that is longer. A client asking more gets the configured
    /// timeout instead (the option is left out of the OACK).
    pub fn client_timeout_limit(&self) -> Duration {
        self.timeout.max(CLIENT_TIMEOUT_FLOOR)
    }

    /// Longest a transfer waits for the client to acknowledge a window, all retries
    /// together: what the operator's `timeout` and `max_send_retries` give, whatever
    /// timeout the client negotiated.
    pub fn max_stall(&self) -> Duration {
        self.timeout
            .saturating_mul(self.max_send_retries.saturating_add(1))
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpEvent {
    /// A read request was accepted; `size` bytes will be sent.
    Started {
        peer: SocketAddr,
        path: String,
        size: u64,
    },
    /// A request was refused with an ERROR packet.
    Refused {
        peer: SocketAddr,
        path: String,
        reason: String,
    },
    /// A transfer ended: `sent` is how many bytes the client acknowledged (netascii
    /// counts converted bytes); `end` says how it ended.
    Finished {
        peer: SocketAddr,
        path: String,
        size: u64,
        sent: u64,
        end: TransferEnd,
    },
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEnd {
    /// The client acknowledged the whole file.
    Complete,
    /// The client asked for options, got the OACK (with tsize) and ended with an ERROR
    /// before acknowledging any data: what PXE ROMs do to learn a file's size.
    SizeProbe,
    /// The client ended the transfer with an ERROR after some data.
    AbortedByClient,
    /// The client stopped acknowledging.
    TimedOut,
    /// The server could not go on (reading the file, the socket).
    Failed,
}

impl TransferEnd {
    fn of(outcome: Option<&ReadOutcome>) -> TransferEnd {
        let Some(o) = outcome else {
            return TransferEnd::Failed;
        };
        match o.end {
            ReadEnd::Complete => TransferEnd::Complete,
            ReadEnd::AbortedByClient { .. } if o.sent_oack && o.acked_blocks == 0 => {
                TransferEnd::SizeProbe
            }
            ReadEnd::AbortedByClient { .. } => TransferEnd::AbortedByClient,
            ReadEnd::TimedOut => TransferEnd::TimedOut,
            ReadEnd::Failed(_) => TransferEnd::Failed,
        }
    }
}

impl std::fmt::Display for TransferEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransferEnd::Complete => "complete",
            TransferEnd::SizeProbe => "size probe",
            TransferEnd::AbortedByClient => "aborted by the client",
            TransferEnd::TimedOut => "the client stopped acknowledging",
            TransferEnd::Failed => "failed on the server",
        })
    }
}

/// Told of every request; called on the TFTP thread, so it must not block.
pub trait TftpObserver: Send + Sync + 'static {
    fn event(&self, event: TftpEvent);
}

/// Counters, read by the appliance's `/metrics`.
#[derive(Debug, Default)]
pub struct TftpStats {
    pub active: AtomicUsize,
    pub started: AtomicU64,
    pub completed: AtomicU64,
    /// Transfers that were a PXE size probe ([`TransferEnd::SizeProbe`]).
    pub probes: AtomicU64,
    /// Transfers that ended early otherwise (client ERROR after data, timeout, failure).
    pub aborted: AtomicU64,
    pub refused: AtomicU64,
    /// Bytes clients acknowledged.
    pub bytes_sent: AtomicU64,
}

/// Files served from memory, by name relative to the root (e.g. `cosm.ipxe`).
pub type Generated = Arc<RwLock<HashMap<String, Bytes>>>;

/// A running TFTP server.
#[derive(Debug, Clone)]
pub struct TftpHandle {
    pub local_addr: SocketAddr,
    pub stats: Arc<TftpStats>,
    pub generated: Generated,
}

/// Why a requested name is refused before any file is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    Absolute,
    LeavesRoot,
    Empty,
    NotUtf8,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::Absolute => "absolute paths are not served",
            PathError::LeavesRoot => "the path leaves the TFTP root",
            PathError::Empty => "empty file name",
            PathError::NotUtf8 => "the file name is not UTF-8",
        })
    }
}

/// The name a request asks for, as a relative path inside the root: backslashes (sent by
/// some Windows-era ROMs) count as separators, `.` is dropped, `..` and absolute paths are
/// refused.
pub fn clean_name(requested: &Path) -> Result<String, PathError> {
    let text = requested.to_str().ok_or(PathError::NotUtf8)?;
    let text = text.replace('\\', "/");
    if text.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let mut parts = Vec::new();
    for c in Path::new(&text).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or(PathError::NotUtf8)?),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::LeavesRoot),
            Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

/// Files that fit the cache, shared by every transfer of them. An entry's contents are
/// read once, by the first request; concurrent requests for the same file wait for that
/// read instead of reading it again.
#[derive(Debug, Default)]
struct Cache {
    files: HashMap<PathBuf, Cached>,
    bytes: u64,
}

#[derive(Debug)]
struct Cached {
    len: u64,
    mtime: Option<SystemTime>,
    data: Arc<async_lock::OnceCell<Bytes>>,
}

impl Cache {
    /// The entry for this version of the file, new (empty) if there was none; when the
    /// cache would grow past `limit`, it is emptied first (transfers in progress keep
    /// their own reference; only the shared copy goes).
    fn entry(
        &mut self,
        path: &Path,
        len: u64,
        mtime: Option<SystemTime>,
        limit: u64,
    ) -> Arc<async_lock::OnceCell<Bytes>> {
        if let Some(c) = self.files.get(path) {
            if c.len == len && c.mtime == mtime {
                return c.data.clone();
            }
        }
        if let Some(old) = self.files.remove(path) {
            self.bytes -= old.len;
        }
        if self.bytes + len > limit {
            self.files.clear();
            self.bytes = 0;
        }
        let data = Arc::new(async_lock::OnceCell::new());
        self.bytes += len;
        self.files.insert(
            path.to_path_buf(),
            Cached {
                len,
                mtime,
                data: data.clone(),
            },
        );
        data
    }
}

struct RootHandler {
    root: PathBuf,
    settings: TftpSettings,
    generated: Generated,
    cache: Mutex<Cache>,
    stats: Arc<TftpStats>,
    observer: Arc<dyn TftpObserver>,
}

/// Where a transfer's bytes come from.
enum Source {
    Memory(Cursor<Bytes>),
    /// A file larger than the cache, read as the transfer goes on the blocking pool.
    Disk(Unblock<File>),
}

impl RootHandler {
    fn refuse(
        &self,
        peer: SocketAddr,
        path: &str,
        reason: String,
        err: packet::Error,
    ) -> packet::Error {
        tracing::warn!(%peer, path, %reason, "TFTP request refused");
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.observer.event(TftpEvent::Refused {
            peer,
            path: path.to_string(),
            reason,
        });
        err
    }

    /// The file's contents and size. Nothing here holds a lock while the disk works:
    /// opening runs on the blocking pool, a cached file is read once behind its own entry,
    /// a larger one is streamed.
    async fn contents(&self, name: &str) -> Result<(Source, u64), (String, packet::Error)> {
        if let Some(b) = self
            .generated
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            let len = b.len() as u64;
            return Ok((Source::Memory(Cursor::new(b.clone())), len));
        }
        let joined = self.root.join(name);
        let root = self.root.clone();
        let (real, file, len, mtime) = blocking::unblock(move || {
            let real = std::fs::canonicalize(&joined)
                .map_err(|_| ("no such file".to_string(), packet::Error::FileNotFound))?;
            if !real.starts_with(&root) {
                return Err((
                    format!("resolves to {} outside the TFTP root", real.display()),
                    packet::Error::PermissionDenied,
                ));
            }
            let file =
                File::open(&real).map_err(|e| (e.to_string(), packet::Error::PermissionDenied))?;
            let meta = file
                .metadata()
                .map_err(|e| (e.to_string(), packet::Error::FileNotFound))?;
            if !meta.is_file() {
                return Err(("not a regular file".into(), packet::Error::FileNotFound));
            }
            Ok((real, file, meta.len(), meta.modified().ok()))
        })
        .await?;
        if len > self.settings.cache_bytes {
            tracing::debug!(path = %real.display(), len, cache_bytes = self.settings.cache_bytes,
                "TFTP file larger than the cache: streamed from disk");
            return Ok((
                Source::Disk(Unblock::with_capacity(STREAM_BUFFER, file)),
                len,
            ));
        }
        let cell = self.cache.lock().unwrap_or_else(|e| e.into_inner()).entry(
            &real,
            len,
            mtime,
            self.settings.cache_bytes,
        );
        let data = cell
            .get_or_try_init(|| async move {
                blocking::unblock(move || {
                    use std::io::Read;
                    let mut data = Vec::with_capacity(len as usize);
                    let mut file = file;
                    file.read_to_end(&mut data)?;
                    Ok::<_, io::Error>(Bytes::from(data))
                })
                .await
            })
            .await
            .map_err(|e| (e.to_string(), packet::Error::PermissionDenied))?
            .clone();
        let len = data.len() as u64;
        Ok((Source::Memory(Cursor::new(data)), len))
    }
}

/// One transfer's view of its file; on drop (after the crate reported how the transfer
/// ended, or when it could not start) it reports the outcome.
struct Transfer {
    source: Source,
    peer: SocketAddr,
    path: String,
    size: u64,
    outcome: Option<ReadOutcome>,
    stats: Arc<TftpStats>,
    observer: Arc<dyn TftpObserver>,
}

impl AsyncRead for Transfer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.source {
            Source::Memory(c) => Pin::new(c).poll_read(cx, buf),
            Source::Disk(f) => Pin::new(f).poll_read(cx, buf),
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let end = TransferEnd::of(self.outcome.as_ref());
        let sent = self.outcome.as_ref().map_or(0, |o| o.acked_bytes);
        self.stats.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        let counter = match end {
            TransferEnd::Complete => &self.stats.completed,
            TransferEnd::SizeProbe => &self.stats.probes,
            _ => &self.stats.aborted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Last, and released: whoever reads `active` at zero (acquiring) also sees how every
        // transfer ended.
        self.stats.active.fetch_sub(1, Ordering::Release);
        let (peer, path, size) = (self.peer, &self.path, self.size);
        match (end, &self.outcome) {
            (TransferEnd::Complete | TransferEnd::SizeProbe, _) => {
                tracing::debug!(%peer, path, size, sent, %end, "TFTP transfer ended")
            }
            (
                _,
                Some(ReadOutcome {
                    end: ReadEnd::AbortedByClient { code, message },
                    ..
                }),
            ) => {
                tracing::info!(%peer, path, size, sent, code, message, "TFTP transfer aborted by the client")
            }
            (
                _,
                Some(ReadOutcome {
                    end: ReadEnd::Failed(why),
                    ..
                }),
            ) => {
                tracing::warn!(%peer, path, size, sent, error = %why, "TFTP transfer failed")
            }
            _ => tracing::warn!(%peer, path, size, sent, %end, "TFTP transfer ended early"),
        }
        self.observer.event(TftpEvent::Finished {
            peer: self.peer,
            path: std::mem::take(&mut self.path),
            size: self.size,
            sent,
            end,
        });
    }
}

impl Handler for RootHandler {
    type Reader = Transfer;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Transfer, Option<u64>), packet::Error> {
        let shown = path.to_string_lossy().to_string();
        let name = clean_name(path).map_err(|e| {
            self.refuse(
                *client,
                &shown,
                e.to_string(),
                packet::Error::PermissionDenied,
            )
        })?;
        // Take a slot first (there is no lock around opening), give it back on refusal.
        let active = self.stats.active.fetch_add(1, Ordering::Relaxed);
        if active >= self.settings.max_transfers {
            self.stats.active.fetch_sub(1, Ordering::Relaxed);
            let reason = format!("server busy: {active} transfers in progress");
            return Err(self.refuse(*client, &name, reason.clone(), packet::Error::Msg(reason)));
        }
        let (source, size) = match self.contents(&name).await {
            Ok(c) => c,
            Err((reason, err)) => {
                self.stats.active.fetch_sub(1, Ordering::Relaxed);
                return Err(self.refuse(*client, &name, reason, err));
            }
        };
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %client, path = %name, size, "TFTP read request");
        self.observer.event(TftpEvent::Started {
            peer: *client,
            path: name.clone(),
            size,
        });
        Ok((
            Transfer {
                source,
                peer: *client,
                path: name,
                size,
                outcome: None,
                stats: self.stats.clone(),
                observer: self.observer.clone(),
            },
            Some(size),
        ))
    }

    async fn write_req_open(
        &self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<futures_lite::io::Sink, packet::Error> {
        Err(self.refuse(
            *client,
            &path.to_string_lossy(),
            "write requests are refused: this TFTP server is read-only".into(),
            packet::Error::IllegalOperation,
        ))
    }

    fn read_req_finished(&self, _client: &SocketAddr, mut reader: Transfer, outcome: ReadOutcome) {
        reader.outcome = Some(outcome);
    }

    fn request_refused(&self, client: &SocketAddr, reason: &str) {
        tracing::warn!(peer = %client, reason, "TFTP packet refused: not a request this server serves");
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.observer.event(TftpEvent::Refused {
            peer: *client,
            path: String::new(),
            reason: reason.to_string(),
        });
    }
}

/// Binds the socket and starts serving on a thread of its own; serving stops when
/// `shutdown` becomes true.
pub fn start(
    settings: TftpSettings,
    observer: Arc<dyn TftpObserver>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<TftpHandle> {
    let root = std::fs::canonicalize(&settings.root).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("TFTP root {}: {e}", settings.root.display()),
        )
    })?;
    let socket = UdpSocket::bind(settings.listen)?;
    let local_addr = socket.local_addr()?;
    let stats = Arc::new(TftpStats::default());
    let generated = Generated::default();
    let handler = RootHandler {
        root,
        settings: settings.clone(),
        generated: generated.clone(),
        cache: Mutex::default(),
        stats: stats.clone(),
        observer,
    };
    let builder = TftpServerBuilder::with_handler(handler)
        .std_socket(socket)
        .map_err(io::Error::other)?
        .block_size_limit(settings.block_size_limit)
        .window_size_limit(settings.window_size_limit)
        .timeout(settings.timeout)
        .max_send_retries(settings.max_send_retries)
        .client_timeout_limit(settings.client_timeout_limit())
        .max_stall(settings.max_stall());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tftp".into())
        .spawn(move || {
            async_io::block_on(async move {
                let server = match builder.build().await {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::other(e.to_string())));
                        return;
                    }
                };
                let mut shutdown = shutdown;
                let stop = async move {
                    while !*shutdown.borrow() {
                        if shutdown.changed().await.is_err() {
                            break;
                        }
                    }
                    Ok(())
                };
                if let Err(e) = futures_lite::future::or(server.serve(), stop).await {
                    tracing::error!(error = %e, "TFTP server stopped");
                }
            })
        })?;
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("the TFTP thread ended before it started serving"))??;
    Ok(TftpHandle {
        local_addr,
        stats,
        generated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_root() {
        let ok = |s: &str| clean_name(Path::new(s));
        assert_eq!(ok("undionly.kpxe").unwrap(), "undionly.kpxe");
        assert_eq!(ok("./efi/ipxe.efi").unwrap(), "efi/ipxe.efi");
        assert_eq!(ok("efi\\ipxe.efi").unwrap(), "efi/ipxe.efi");
        assert_eq!(ok("a//b").unwrap(), "a/b");
        assert_eq!(ok("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(ok("\\etc\\passwd"), Err(PathError::Absolute));
        assert_eq!(ok("../etc/passwd"), Err(PathError::LeavesRoot));
        assert_eq!(ok("efi/../../x"), Err(PathError::LeavesRoot));
        assert_eq!(ok("efi/.."), Err(PathError::LeavesRoot));
        assert_eq!(ok("."), Err(PathError::Empty));
        assert_eq!(ok(""), Err(PathError::Empty));
    }

    #[test]
    fn requests_parse_and_malformed_ones_say_why() {
        let req =
            parse_request(b"\x00\x01pxelinux.0\x00OCTET\x00tsize\x000\x00blksize\x001432\x00")
                .unwrap();
        let Request::Read(rw) = req else {
            panic!("{req:?}")
        };
        assert_eq!(rw.filename, "pxelinux.0");
        assert_eq!(rw.mode, Mode::Octet);
        assert_eq!(rw.opts.transfer_size, Some(0));
        assert_eq!(rw.opts.block_size, Some(1432));
        // Trailing NUL padding after the options is tolerated.
        assert!(parse_request(b"\x00\x01f\x00octet\x00\x00\x00").is_ok());
        let err = |p: &[u8]| parse_request(p).unwrap_err();
        assert_eq!(err(b"\x00"), RequestError::TooShort);
        assert_eq!(
            err(b"\x00\x09f\x00octet\x00"),
            RequestError::UnknownOpcode(9)
        );
        assert_eq!(err(b"\x00\x04\x00\x01"), RequestError::NotARequest(4));
        assert_eq!(err(b"\x00\x01f\x00"), RequestError::NoMode);
        assert_eq!(
            err(b"\x00\x01f\x00o\x00octet\x00"),
            RequestError::UnknownMode("o".into())
        );
        assert_eq!(
            err(b"\x00\x01f\x00octet\x00blksize\x00"),
            RequestError::OptionWithoutValue("blksize".into())
        );
        assert!(!err(b"\x00\x05\x00\x00x\x00").is_answered());
        assert!(err(b"\x00\x04\x00\x01").is_answered());
    }

    #[test]
    fn client_timeouts_and_stalls_are_bounded_by_the_settings() {
        let mut s = TftpSettings::new("127.0.0.1:0".parse().unwrap(), "/".into());
        assert_eq!(s.client_timeout_limit(), CLIENT_TIMEOUT_FLOOR);
        assert_eq!(s.max_stall(), Duration::from_secs(12));
        s.timeout = Duration::from_secs(60);
        assert_eq!(s.client_timeout_limit(), Duration::from_secs(60));
    }

    proptest::proptest! {
        /// No byte string panics the parser the server runs on every packet.
        #[test]
        fn no_bytes_panic_the_request_parser(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_request(&data);
        }

        /// Nor do requests that are nearly right: a real opcode, NUL-separated fields of
        /// any bytes, in any number.
        #[test]
        fn no_near_requests_panic_the_request_parser(
            opcode in 0u16..8,
            fields in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0..8),
            trailing_nul in proptest::bool::ANY,
        ) {
            let mut p = opcode.to_be_bytes().to_vec();
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    p.push(0);
                }
                p.extend_from_slice(f);
            }
            if trailing_nul {
                p.push(0);
            }
            if let Ok(Request::Read(r) | Request::Write(r)) = parse_request(&p) {
                proptest::prop_assert!(!r.filename.contains('\0'));
            }
        }
    }
}
