use futures_lite::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use crate::packet;

/// How a read transfer ended (COSM patch), as handed to
/// [`Handler::read_req_finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// The client acknowledged the last block.
    Complete,
    /// The client sent an ERROR packet (a PXE ROM does after its `tsize` probe).
    AbortedByClient { code: u16, message: String },
    /// The client stopped acknowledging: every retransmission, or the stall limit, ran out.
    TimedOut,
    /// The server could not go on (reading the file, the socket).
    Failed(String),
}

/// What a read transfer achieved (COSM patch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    pub end: ReadEnd,
    /// Whether an OACK was sent (the client asked for options).
    pub sent_oack: bool,
    /// DATA blocks the client acknowledged.
    pub acked_blocks: u64,
    /// Bytes in those blocks (after netascii conversion, when the mode was netascii).
    pub acked_bytes: u64,
}

/// Trait for implementing advance handlers.
///
/// COSM patch: the methods take `&self`, so the server calls them without a lock and one
/// slow open never holds up another client's request; a handler that needs shared state
/// keeps it behind its own (short) locks.
pub trait Handler: Send + Sync {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: AsyncWrite + Unpin + Send + 'static;

    /// Open `Reader` to serve a read request.
    fn read_req_open(
        &self,
        client: &SocketAddr,
        path: &Path,
    ) -> impl Future<Output = Result<(Self::Reader, Option<u64>), packet::Error>>
           + Send;

    /// Open `Writer` to serve a write request.
    fn write_req_open(
        &self,
        client: &SocketAddr,
        path: &Path,
        size: Option<u64>,
    ) -> impl Future<Output = Result<Self::Writer, packet::Error>> + Send;

    /// Called once a read transfer that `read_req_open` opened has ended, with its reader
    /// and how it ended (COSM patch). Not called when the transfer could not start (then
    /// the reader is just dropped).
    fn read_req_finished(
        &self,
        _client: &SocketAddr,
        _reader: Self::Reader,
        _outcome: ReadOutcome,
    ) {
    }

    /// Called when the server answers a packet on its port with an ERROR before any
    /// handler method ran (malformed request, unsupported mode), with the reason sent
    /// (COSM patch).
    fn request_refused(&self, _client: &SocketAddr, _reason: &str) {}
}
