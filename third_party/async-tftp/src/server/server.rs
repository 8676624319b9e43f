use async_executor::Executor;
use async_io::{Async, Timer};
use async_lock::OnceCell;
use futures_lite::future;
use log::trace;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::netascii::NetasciiReader;
use super::read_req::*;
use super::write_req::*;
use super::{Handler, ReadEnd, ReadOutcome};
use crate::error::*;
use crate::packet::{self, parse_request, Mode, Packet, Request, RwReq};

/// TFTP server.
pub struct TftpServer<H>
where
    H: Handler,
{
    pub(crate) socket: Async<UdpSocket>,
    pub(crate) handler: Arc<H>,
    pub(crate) reqs_in_progress: Arc<Transfers>,
    pub(crate) ex: Executor<'static>,
    pub(crate) config: ServerConfig,
    pub(crate) local_ip: IpAddr,
}

/// Requests in progress, by the client's address (its transfer ID).
///
/// COSM patch: each entry says when its request has ended, so a new request from the same
/// address that arrives while the old one is still winding down (a PXE ROM sends its real
/// RRQ right after the ERROR that ends its tsize probe, and the server may read the RRQ
/// before the transfer reads the ERROR) waits for that end instead of being dropped.
#[derive(Default)]
pub(crate) struct Transfers {
    by_peer: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
}

#[derive(Default)]
pub(crate) struct Slot {
    ended: OnceCell<()>,
    /// A later request from the same address is already waiting for this one to end.
    has_waiter: AtomicBool,
}

impl Transfers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Slot>>> {
        self.by_peer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the address for `slot`, unless another request holds it: then returns that
    /// one's slot.
    fn claim(&self, peer: SocketAddr, slot: &Arc<Slot>) -> Result<(), Arc<Slot>> {
        let mut map = self.lock();
        match map.get(&peer) {
            Some(held) => Err(held.clone()),
            None => {
                map.insert(peer, slot.clone());
                Ok(())
            }
        }
    }

    async fn release(&self, peer: SocketAddr, slot: &Arc<Slot>) {
        let _ = slot.ended.set(()).await;
        let mut map = self.lock();
        if map.get(&peer).is_some_and(|held| Arc::ptr_eq(held, slot)) {
            map.remove(&peer);
        }
    }
}

#[derive(Clone)]
pub(crate) struct ServerConfig {
    pub(crate) timeout: Duration,
    pub(crate) block_size_limit: Option<u16>,
    pub(crate) window_size_limit: Option<u16>,
    pub(crate) max_send_retries: u32,
    pub(crate) ignore_client_timeout: bool,
    pub(crate) ignore_client_block_size: bool,
    pub(crate) ignore_client_window_size: bool,
    pub(crate) client_timeout_limit: Option<Duration>,
    pub(crate) max_stall: Option<Duration>,
}

pub(crate) const DEFAULT_BLOCK_SIZE: usize = 512;

impl<H: 'static> TftpServer<H>
where
    H: Handler,
{
    /// Returns the listenning socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.get_ref().local_addr()?)
    }

    /// Consume and start the server.
    pub async fn serve(self) -> Result<()> {
        self.ex
            .run(async {
                let mut buf = [0u8; 4096];

                loop {
                    let (len, peer) = self.socket.recv_from(&mut buf).await?;
                    self.handle_req_packet(peer, &buf[..len]).await;
                }
            })
            .await
    }

    /// COSM patch: a packet that is not a request the server can serve is answered with
    /// ERROR 4 saying why (RFC 1350: an ERROR is never answered), and the handler is told.
    async fn refuse(&self, peer: SocketAddr, reason: String) {
        trace!("request refused (peer: {}, reason: {})", &peer, &reason);
        self.handler.request_refused(&peer, &reason);
        let message = format!("illegal TFTP operation: {reason}");
        let mut out = Vec::with_capacity(5 + message.len());
        out.extend_from_slice(&5u16.to_be_bytes());
        out.extend_from_slice(&packet::Error::IllegalOperation.code().to_be_bytes());
        out.extend_from_slice(message.as_bytes());
        out.push(0);
        if let Err(e) = self.socket.send_to(&out, peer).await {
            trace!("Failed to send error to peer {}: {}", &peer, &e);
        }
    }

    async fn handle_req_packet(&self, peer: SocketAddr, data: &[u8]) {
        let req = match parse_request(data) {
            Ok(req) => req,
            Err(e) => {
                if e.is_answered() {
                    self.refuse(peer, e.to_string()).await;
                }
                return;
            }
        };
        let rw = match &req {
            Request::Read(rw) | Request::Write(rw) => rw,
        };
        if rw.mode == Mode::Mail {
            self.refuse(peer, "mode mail is not supported".into()).await;
            return;
        }

        let slot = Arc::new(Slot::default());
        let held = match self.reqs_in_progress.claim(peer, &slot) {
            Ok(()) => None,
            Err(held) => {
                if held.has_waiter.swap(true, Ordering::Relaxed) {
                    // One waiting request per address is enough; this is a
                    // retransmission or a flood.
                    return;
                }
                Some(held)
            }
        };

        let handler = Arc::clone(&self.handler);
        let config = self.config.clone();
        let local_ip = self.local_ip;
        let transfers = Arc::clone(&self.reqs_in_progress);
        self.ex
            .spawn(async move {
                if let Some(held) = held {
                    // Wait (bounded by one retransmission timeout) for the request that
                    // holds this address to end. One still going after that is being
                    // served, and this request was a retransmission of it.
                    let ended = future::or(
                        async {
                            held.ended.wait().await;
                            true
                        },
                        async {
                            Timer::after(config.timeout).await;
                            false
                        },
                    )
                    .await;
                    held.has_waiter.store(false, Ordering::Relaxed);
                    if !ended {
                        trace!("request dropped: the transfer for {peer} is still in progress");
                        return;
                    }
                    if transfers.claim(peer, &slot).is_err() {
                        return;
                    }
                }
                match req {
                    Request::Read(rw) => {
                        let fut = read_request(handler, peer, rw, config, local_ip);
                        run_req(fut, peer, local_ip).await
                    }
                    Request::Write(rw) => {
                        let fut = write_request(handler, peer, rw, config, local_ip);
                        run_req(fut, peer, local_ip).await
                    }
                }
                transfers.release(peer, &slot).await;
            })
            .detach();
    }
}

async fn read_request<H: Handler>(
    handler: Arc<H>,
    peer: SocketAddr,
    req: RwReq,
    config: ServerConfig,
    local_ip: IpAddr,
) -> Result<()> {
    trace!("RRQ recieved (peer: {}, req: {:?})", &peer, &req);
    let (mut reader, size) = handler
        .read_req_open(&peer, req.filename.as_ref())
        .await
        .map_err(Error::Packet)?;

    let outcome = if req.mode == Mode::Netascii {
        // COSM patch: netascii is converted (RFC 764: CR LF for LF, CR NUL for CR), so
        // the size on the wire is not the file's: tsize is left out of the OACK.
        let mut converted = NetasciiReader::new(&mut reader);
        serve_read(&mut converted, None, peer, &req, config, local_ip).await
    } else {
        serve_read(&mut reader, size, peer, &req, config, local_ip).await
    };
    match outcome {
        Ok(outcome) => {
            handler.read_req_finished(&peer, reader, outcome);
            Ok(())
        }
        Err(e) => {
            let outcome = ReadOutcome {
                end: ReadEnd::Failed(e.to_string()),
                sent_oack: false,
                acked_blocks: 0,
                acked_bytes: 0,
            };
            handler.read_req_finished(&peer, reader, outcome);
            Err(e)
        }
    }
}

async fn serve_read<R>(
    reader: &mut R,
    size: Option<u64>,
    peer: SocketAddr,
    req: &RwReq,
    config: ServerConfig,
    local_ip: IpAddr,
) -> Result<ReadOutcome>
where
    R: futures_lite::AsyncRead + Send + Unpin,
{
    let mut read_req =
        ReadRequest::init(reader, size, peer, req, config, local_ip).await?;
    Ok(read_req.handle().await)
}

async fn write_request<H: Handler>(
    handler: Arc<H>,
    peer: SocketAddr,
    req: RwReq,
    config: ServerConfig,
    local_ip: IpAddr,
) -> Result<()> {
    trace!("WRQ recieved (peer: {}, req: {:?})", &peer, &req);
    let mut writer = handler
        .write_req_open(&peer, req.filename.as_ref(), req.opts.transfer_size)
        .await
        .map_err(Error::Packet)?;

    let mut write_req =
        WriteRequest::init(&mut writer, peer, &req, config, local_ip).await?;

    write_req.handle().await;

    Ok(())
}

async fn send_error(
    error: Error,
    peer: SocketAddr,
    local_ip: IpAddr,
) -> Result<()> {
    let addr: SocketAddr = SocketAddr::new(local_ip, 0);
    let socket = Async::<UdpSocket>::bind(addr).map_err(Error::Bind)?;

    let data = Packet::Error(error.into()).to_bytes();
    socket.send_to(&data[..], peer).await?;

    Ok(())
}

async fn run_req(
    req_fut: impl Future<Output = Result<()>>,
    peer: SocketAddr,
    local_ip: IpAddr,
) {
    if let Err(e) = req_fut.await {
        trace!("Request failed (peer: {}, error: {}", &peer, &e);

        if let Err(e) = send_error(e, peer, local_ip).await {
            trace!("Failed to send error to peer {}: {}", &peer, &e);
        }
    }
}
