//! Read-only TFTP for PXE firmware, on `async-tftp` (patched: an ERROR from the client ends
//! its transfer at once; see `third_party/async-tftp/COSM-PATCH.md`).
//!
//! What this module adds around the crate:
//! - a root directory that nothing leaves: absolute paths, `..` and symlinks that resolve
//!   outside the root get an ERROR and a log line;
//! - generated files (in memory) beside the files on disk;
//! - write requests refused;
//! - a limit on concurrent transfers;
//! - a shared in-memory copy of each file, so a boot storm of fifty clients reads the disk
//!   once;
//! - an [`TftpObserver`] told of every request, refusal and finished transfer, which the
//!   appliance puts on machines' timelines.
//!
//! async-tftp runs its transfers on its own executor; [`start`] gives it a thread.

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use bytes::Bytes;
use futures_lite::io::Cursor;
use futures_lite::AsyncRead;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

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
    /// Bytes of file contents kept in memory for reuse.
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
    /// A transfer ended: `sent` is how much of the file was handed to the network (the
    /// last window may still have been lost); `complete` means the whole file was.
    Finished {
        peer: SocketAddr,
        path: String,
        size: u64,
        sent: u64,
        complete: bool,
    },
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
    pub aborted: AtomicU64,
    pub refused: AtomicU64,
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

#[derive(Debug, Default)]
struct Cache {
    files: HashMap<PathBuf, (u64, Option<SystemTime>, Bytes)>,
    bytes: u64,
}

struct RootHandler {
    root: PathBuf,
    settings: TftpSettings,
    generated: Generated,
    cache: Arc<Mutex<Cache>>,
    stats: Arc<TftpStats>,
    observer: Arc<dyn TftpObserver>,
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

    async fn contents(&self, name: &str) -> Result<Bytes, (String, packet::Error)> {
        if let Some(b) = self
            .generated
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(b.clone());
        }
        let joined = self.root.join(name);
        let real = std::fs::canonicalize(&joined)
            .map_err(|_| ("no such file".to_string(), packet::Error::FileNotFound))?;
        if !real.starts_with(&self.root) {
            return Err((
                format!("resolves to {} outside the TFTP root", real.display()),
                packet::Error::PermissionDenied,
            ));
        }
        let meta =
            std::fs::metadata(&real).map_err(|e| (e.to_string(), packet::Error::FileNotFound))?;
        if !meta.is_file() {
            return Err(("not a regular file".into(), packet::Error::FileNotFound));
        }
        let (len, mtime) = (meta.len(), meta.modified().ok());
        if let Some((l, m, b)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .files
            .get(&real)
        {
            if *l == len && *m == mtime {
                return Ok(b.clone());
            }
        }
        let path = real.clone();
        let data = blocking::unblock(move || std::fs::read(path))
            .await
            .map_err(|e| (e.to_string(), packet::Error::PermissionDenied))?;
        let data = Bytes::from(data);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.bytes + len > self.settings.cache_bytes {
            // Transfers in progress keep their own reference; only the shared copy goes.
            cache.files.clear();
            cache.bytes = 0;
        }
        if len <= self.settings.cache_bytes {
            cache.bytes += len;
            if let Some((old, _, _)) = cache.files.insert(real, (len, mtime, data.clone())) {
                cache.bytes -= old;
            }
        }
        Ok(data)
    }
}

/// One transfer's view of its file: counts what the crate read, and on drop (the crate
/// drops the reader when the transfer ends, however it ends) reports the outcome.
struct Transfer {
    data: Cursor<Bytes>,
    peer: SocketAddr,
    path: String,
    size: u64,
    stats: Arc<TftpStats>,
    observer: Arc<dyn TftpObserver>,
}

impl AsyncRead for Transfer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.data).poll_read(cx, buf)
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let sent = self.data.position();
        let complete = sent >= self.size;
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.stats.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        if complete {
            self.stats.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(peer = %self.peer, path = %self.path, sent, size = self.size, complete, "TFTP transfer ended");
        self.observer.event(TftpEvent::Finished {
            peer: self.peer,
            path: std::mem::take(&mut self.path),
            size: self.size,
            sent,
            complete,
        });
    }
}

impl Handler for RootHandler {
    type Reader = Transfer;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
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
        let active = self.stats.active.load(Ordering::Relaxed);
        if active >= self.settings.max_transfers {
            let reason = format!("server busy: {active} transfers in progress");
            return Err(self.refuse(*client, &name, reason.clone(), packet::Error::Msg(reason)));
        }
        let data = match self.contents(&name).await {
            Ok(d) => d,
            Err((reason, err)) => return Err(self.refuse(*client, &name, reason, err)),
        };
        let size = data.len() as u64;
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %client, path = %name, size, "TFTP read request");
        self.observer.event(TftpEvent::Started {
            peer: *client,
            path: name.clone(),
            size,
        });
        Ok((
            Transfer {
                data: Cursor::new(data),
                peer: *client,
                path: name,
                size,
                stats: self.stats.clone(),
                observer: self.observer.clone(),
            },
            Some(size),
        ))
    }

    async fn write_req_open(
        &mut self,
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
        cache: Arc::default(),
        stats: stats.clone(),
        observer,
    };
    let builder = TftpServerBuilder::with_handler(handler)
        .std_socket(socket)
        .map_err(io::Error::other)?
        .block_size_limit(settings.block_size_limit)
        .window_size_limit(settings.window_size_limit)
        .timeout(settings.timeout)
        .max_send_retries(settings.max_send_retries);
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
}
