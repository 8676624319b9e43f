//! The HTTP listener's accept loop, with the bounds `axum::serve` does not have: at most
//! `max_connections` connections at once (one more is accepted and closed at once, so the
//! process never runs out of file descriptors: TFTP needs them too), and an idle timeout:
//! a connection with no bytes either way for `idle_timeout` is closed, and so is one whose
//! request headers take longer than that (a silent client used to hold its connection,
//! and its descriptor, forever; hyper's header timeout starts only at the first byte).
//!
//! HTTP and HTTPS share the port: the first byte of each connection decides. 0x16 opens a
//! TLS handshake record, which no HTTP request starts with; anything else is plain HTTP,
//! as iPXE, the agents and the installers speak it. The bounds hold for both: the first
//! byte must come within the idle timeout, and a TLS handshake must finish within it (a
//! client that sends part of a ClientHello and stops holds its slot no longer than a
//! silent one). Every request carries its [`Transport`], so the web console sets its
//! Secure cookies only over TLS.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::middleware::AddExtension;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// How a request reached the appliance: in clear text or over TLS, on the same port.
///
/// [`serve`] puts one in every request's extensions; a handler takes it as an extractor
/// (`async fn login(transport: Transport, …)`). A request without one, as in tests that
/// drive the router with `oneshot`, counts as [`Transport::Plain`], so whatever must only
/// travel encrypted (a session cookie, a password form) is never sent in clear by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP: iPXE, agents, kickstarts, `cosmctl` against an `http://` URL.
    Plain,
    /// HTTPS: a TLS handshake with the API port's certificate came first.
    Tls,
}

impl Transport {
    pub fn is_tls(self) -> bool {
        self == Transport::Tls
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Transport {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Transport>()
            .copied()
            .unwrap_or(Transport::Plain))
    }
}

/// The first byte of a TLS handshake record (RFC 8446, 5.1: ContentType handshake).
const TLS_HANDSHAKE: u8 = 0x16;

/// A stream that fails with `TimedOut` once nothing was read or written for `idle`.
struct Idle<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    fn new(inner: S, idle: Duration) -> Idle<S> {
        Idle {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progress(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the inner stream is not ready: ends the connection past the deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no traffic on the connection for api.idle_timeout_secs",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.progress();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How long in-flight requests may take to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (for at most 10 s). With `tls`, connections that open with a TLS handshake are
/// served over TLS with it; without, every connection is plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: crate::config::HttpLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut make = app.into_make_service_with_connect_info::<SocketAddr>();
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    // Connections still waiting for their first byte or handshake hold a graceful watcher
    // (which shutdown waits for); this tells them to give up at once instead.
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    // Refusals are logged at most every 10 s, with their count, so a flood of connections
    // does not also flood the log.
    let (mut refused, mut last_warned) = (0u64, None::<std::time::Instant>);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refused += 1;
            if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(%peer, refused, max = limits.max_connections, "HTTP connections refused: api.max_connections are open");
                last_warned = Some(std::time::Instant::now());
                refused = 0;
            }
            continue;
        };
        let service = match make.call(peer).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let connection = Connection {
            stream,
            peer,
            idle: limits.idle_timeout,
            tls: tls.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            stopping: stopping_rx.clone(),
        };
        // The first byte and the handshake are awaited in the connection's own task, so a
        // slow client never holds up the accept loop.
        tokio::spawn(async move {
            connection.run(service).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "some HTTP requests were still running {DRAIN:?} after shutdown; they are cut off"
        );
    }
    Ok(())
}

/// One accepted connection, before it is known to be HTTP or HTTPS.
struct Connection {
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    idle: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// `work`, unless the server starts shutting down first (then `None`).
async fn unless_stopping<F: Future>(
    stopping: &mut tokio::sync::watch::Receiver<bool>,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        out = work => Some(out),
        _ = stopping.wait_for(|s| *s) => None,
    }
}

impl Connection {
    async fn run(self, service: AddExtension<Router, ConnectInfo<SocketAddr>>) {
        let Connection {
            stream,
            peer,
            idle,
            tls,
            builder,
            watcher,
            mut stopping,
        } = self;
        let mut first = [0u8; 1];
        let peeked = unless_stopping(
            &mut stopping,
            tokio::time::timeout(idle, stream.peek(&mut first)),
        );
        let Some(peeked) = peeked.await else { return };
        let transport = match peeked {
            Ok(Ok(1..)) if first[0] == TLS_HANDSHAKE && tls.is_some() => Transport::Tls,
            Ok(Ok(1..)) => Transport::Plain,
            Ok(Ok(0)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP connection failed before its first byte");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "HTTP connection closed: nothing sent within api.idle_timeout_secs");
                return;
            }
        };
        let service = TowerToHyperService::new(Extension(transport).layer(service));
        let stream = Idle::new(stream, idle);
        let result = match (transport, tls) {
            (Transport::Tls, Some(acceptor)) => {
                // The whole handshake within the idle timeout, like request headers: the
                // idle check alone would let a client that trickles a byte now and then
                // hold its connection for ever.
                let handshake = tokio::time::timeout(idle, acceptor.accept(stream));
                let Some(handshake) = unless_stopping(&mut stopping, handshake).await else {
                    return;
                };
                let stream = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake did not finish within api.idle_timeout_secs");
                        return;
                    }
                };
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                watcher.watch(conn).await
            }
            _ => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                watcher.watch(conn).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, ?transport, error = %e, "HTTP connection ended with an error");
        }
    }
}
