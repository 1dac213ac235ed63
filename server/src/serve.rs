//! The HTTPS accept loop: TCP -> TLS -> HTTP/1.1 or HTTP/2 -> the axum router.
//!
//! Per connection, in order:
//! 1. the connection cap: past [`Limits::max_connections`] the socket is closed at once,
//!    before any TLS work (the cheapest possible answer to a flood);
//! 2. the TLS handshake, bounded by [`Limits::handshake_timeout`];
//! 3. the peer identity, read from the verified client certificate if there is one;
//! 4. HTTP by ALPN (`h2` or HTTP/1.1), with the header-read and idle timeouts, serving the
//!    router with a [`ConnectionInfo`] in every request's extensions (a fast route, if
//!    given, first: see [`crate::fast_route`]).
//!
//! Shutdown: when the shutdown future completes, the listener is closed, handshakes in
//! progress are abandoned, and established connections are asked to finish gracefully
//! (HTTP/1.1 closes after the current response, HTTP/2 sends GOAWAY). `serve` returns when
//! they are all gone or after [`Limits::shutdown_grace`].
//!
//! A misbehaving client never makes this module panic or log above `debug`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::conn_threads::{thread_count, ConnThreads};
use crate::fast_route::{self, Routes};
use crate::identity::PeerIdentity;
use crate::limits::Limits;
use crate::tls::ALPN_H2;

/// What the transport knows about the connection a request came in on. Present in the
/// extensions of every request served by [`serve`]; extract it directly or with
/// `Extension<ConnectionInfo>`. `axum::extract::ConnectInfo<SocketAddr>` works too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The TCP peer address.
    pub peer: SocketAddr,
    /// The device identity, if the client presented a certificate from the device CA.
    pub identity: Option<PeerIdentity>,
}

/// Counters of the transport, for `/metrics`. Read them with [`TransportMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct TransportMetrics {
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    connections_active: AtomicU64,
    handshakes_ok: AtomicU64,
    handshakes_resumed: AtomicU64,
    handshakes_failed: AtomicU64,
    handshake_timeouts: AtomicU64,
}

/// A point-in-time copy of [`TransportMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// TCP connections accepted under the cap (counter).
    pub connections_accepted: u64,
    /// TCP connections closed at once because the cap was reached (counter).
    pub connections_rejected: u64,
    /// Connections open now, in handshake or serving HTTP (gauge).
    pub connections_active: u64,
    /// Completed TLS handshakes, resumed ones included (counter).
    pub handshakes_ok: u64,
    /// Completed TLS handshakes that resumed a session (counter).
    pub handshakes_resumed: u64,
    /// TLS handshakes that failed: bad or foreign certificate, protocol error, client gone
    /// (counter; timeouts are counted apart).
    pub handshakes_failed: u64,
    /// TLS handshakes abandoned at [`Limits::handshake_timeout`] (counter).
    pub handshake_timeouts: u64,
}

impl TransportMetrics {
    /// New, all-zero counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every counter (each read is atomic; the set is not a single snapshot).
    pub fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            connections_accepted: get(&self.connections_accepted),
            connections_rejected: get(&self.connections_rejected),
            connections_active: get(&self.connections_active),
            handshakes_ok: get(&self.handshakes_ok),
            handshakes_resumed: get(&self.handshakes_resumed),
            handshakes_failed: get(&self.handshakes_failed),
            handshake_timeouts: get(&self.handshake_timeouts),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Serves `app` over TLS on `listener` until `shutdown` completes; see the module docs.
/// Returns `Ok` once shut down (accept errors are logged and retried, never returned).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    app: impl Into<Routes>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let metrics = Arc::new(TransportMetrics::new());
    serve_with_metrics(listener, tls, limits, app, metrics, shutdown).await
}

/// [`serve`], counting into `metrics`, which the caller keeps to report them.
pub async fn serve_with_metrics(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    app: impl Into<Routes>,
    metrics: Arc<TransportMetrics>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let ctx = Arc::new(ConnContext::new(tls, &limits, app.into(), metrics));
    // Semaphore::new panics above MAX_PERMITS; no real cap gets near it.
    let permits = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    let threads = ConnThreads::start(thread_count(limits.connection_threads))?;
    // Tells connections still in the TLS handshake to give up.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            bump(&ctx.metrics.connections_rejected);
            tracing::debug!(%peer, "connection cap reached, closing");
            drop(tcp);
            continue;
        };
        bump(&ctx.metrics.connections_accepted);
        let active = ActiveGuard::new(ctx.metrics.clone(), permit);
        // Handed over unregistered, so that the serving thread's reactor owns it.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "accept: could not hand the socket over");
                continue;
            }
        };
        let (ctx, watcher, stop) = (ctx.clone(), graceful.watcher(), stop_rx.clone());
        threads.spawn(async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => handle_connection(tcp, peer, ctx, watcher, stop).await,
                Err(e) => tracing::debug!(%peer, error = %e, "could not register the socket"),
            }
            drop(active);
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    tracing::debug!(
        open = graceful.count(),
        "shutting down: waiting for connections"
    );
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?limits.shutdown_grace, "shutdown grace elapsed with connections still open");
    }
    // Connections still open past the grace are dropped with their threads.
    let _ = tokio::task::spawn_blocking(move || threads.shutdown()).await;
    Ok(())
}

/// Accept failures are the server's problem (out of file descriptors, ...), not a
/// client's: log, and pause briefly so that a persistent one does not spin the loop.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
        tracing::debug!(error = %e, "accept: connection gone before accept");
        return;
    }
    tracing::warn!(error = %e, "accept failed, pausing");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Everything a connection task needs, shared by all of them.
struct ConnContext {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    http: auto::Builder<TokioExecutor>,
    routes: Routes,
    /// The small-body limit, for what a fast route reads.
    body_cap: usize,
    metrics: Arc<TransportMetrics>,
}

impl ConnContext {
    fn new(
        tls: Arc<rustls::ServerConfig>,
        limits: &Limits,
        routes: Routes,
        metrics: Arc<TransportMetrics>,
    ) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams);
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let hard_cap = to_usize(limits.max_upload_bytes);
        // The default for buffering extractors, which upload routes raise for themselves;
        // then the hard cap, outermost, which streaming handlers cannot forget.
        let router = routes
            .router
            .layer(DefaultBodyLimit::max(to_usize(limits.max_body_bytes)))
            .layer(axum::middleware::from_fn(move |req, next| {
                body_cap(hard_cap, req, next)
            }));
        Self {
            acceptor: TlsAcceptor::from(tls),
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
            http,
            routes: Routes {
                router,
                fast: routes.fast,
            },
            body_cap: to_usize(limits.max_body_bytes),
            metrics,
        }
    }
}

/// The hard cap on every request body, and the API's JSON form of every 413.
///
/// A declared length above `cap` is refused before the handler runs; any other body is
/// wrapped so that reading past `cap` fails (what `tower_http`'s `RequestBodyLimit` does,
/// here in the same layer as the rewrite, to keep the per-request stack short). The 413
/// of a buffering extractor (`DefaultBodyLimit`) is plain text: it is rewritten as JSON.
async fn body_cap(
    cap: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return too_large().into_response();
    }
    let req = req.map(|body| axum::body::Body::new(http_body_util::Limited::new(body, cap)));
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return resp;
    }
    too_large().into_response()
}

fn too_large() -> (StatusCode, axum::Json<ota_common::api::ApiError>) {
    let body = ota_common::api::ApiError {
        error: "too_large".into(),
        message: "the request body is larger than this server accepts".into(),
    };
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body))
}

/// Keeps the connection's cap permit and the active gauge for the task's lifetime.
struct ActiveGuard {
    metrics: Arc<TransportMetrics>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ActiveGuard {
    fn new(metrics: Arc<TransportMetrics>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        metrics.connections_active.fetch_add(1, Ordering::Relaxed);
        Self {
            metrics,
            _permit: permit,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.metrics
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection, from TLS handshake to the last HTTP response.
async fn handle_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ConnContext>,
    watcher: Watcher,
    mut stop: watch::Receiver<bool>,
) {
    // Small requests and responses: do not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(ctx.handshake_timeout, ctx.acceptor.accept(tcp));
    let tls = tokio::select! {
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                bump(&ctx.metrics.handshakes_failed);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                bump(&ctx.metrics.handshake_timeouts);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = stop.wait_for(|stopping| *stopping) => {
            tracing::debug!(%peer, "shutdown during TLS handshake");
            return;
        }
    };

    let (_, session) = tls.get_ref();
    bump(&ctx.metrics.handshakes_ok);
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        bump(&ctx.metrics.handshakes_resumed);
    }
    let identity = session.peer_certificates().and_then(|chain| {
        match PeerIdentity::from_chain(chain) {
            Ok(id) => Some(id),
            Err(e) => {
                // The chain verified against the device CA, yet carries no usable id:
                // serve the connection as anonymous; device routes will refuse it.
                tracing::debug!(%peer, error = %e, "client certificate without a usable identity");
                None
            }
        }
    });
    let h2 = session.alpn_protocol() == Some(ALPN_H2);
    tracing::debug!(
        %peer,
        h2,
        device = identity.as_ref().map(|i| i.device_id.as_str()),
        "TLS established"
    );

    let info = Arc::new(ConnectionInfo { peer, identity });
    let (routes, body_cap) = (ctx.routes.clone(), ctx.body_cap);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        fast_route::respond(routes.clone(), Arc::clone(&info), body_cap, req)
    });
    let io = TokioIo::new(IdleTimeout::new(tls, ctx.idle_timeout));
    // ALPN decided the protocol; don't let the auto builder sniff it (that read has no
    // timeout). No ALPN means HTTP/1.1.
    let http = if h2 {
        ctx.http.clone().http2_only()
    } else {
        ctx.http.clone().http1_only()
    };
    // Not `serve_connection_with_upgrades`: it sniffs the version even when ALPN fixed it.
    let conn = http.serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// An I/O wrapper that fails with `TimedOut` when the server has been waiting on the peer
/// for `timeout` without a single byte moving in either direction.
///
/// The clock starts when a read or write returns `Pending` and stops at any progress, so a
/// long but moving transfer is never cut, and time the server spends not doing I/O (a slow
/// handler) is not held against the peer.
struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// When the server started waiting on the peer, if it is waiting.
    waiting_since: Option<Instant>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            waiting_since: None,
        }
    }

    fn progress(&mut self) {
        self.waiting_since = None;
    }

    /// Called when the inner I/O is pending: starts the clock if needed, and fails once
    /// it runs out. Polling the sleep registers the waker, so the timeout fires on its own.
    ///
    /// The timer is not re-armed at every wait (that is a timer-wheel update per request on
    /// a keep-alive connection): it may fire early, and is then moved to the real deadline.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let deadline = since + self.timeout;
        loop {
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= deadline => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle timeout",
                    )))
                }
                Poll::Ready(()) => self.sleep.as_mut().reset(deadline),
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.progress();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.progress();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.progress();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => {
                this.progress();
                Poll::Ready(result)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.pending(cx),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ConnectionInfo {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ConnectionInfo>()
            .cloned()
            // Only a router not served by `serve` (a unit test calling it directly) lacks it.
            .ok_or((StatusCode::INTERNAL_SERVER_ERROR, "connection info missing"))
    }
}

/// Extracting `PeerIdentity` requires a device certificate: without one the request is
/// refused with 401. Use `Option<PeerIdentity>` where a certificate is optional.
impl<S: Send + Sync> FromRequestParts<S> for PeerIdentity {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        <Self as OptionalFromRequestParts<S>>::from_request_parts(parts, state)
            .await?
            .ok_or((
                StatusCode::UNAUTHORIZED,
                "device client certificate required",
            ))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for PeerIdentity {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let info =
            <ConnectionInfo as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        Ok(info.identity)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (docs/HELPERS.md)
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn snapshot_reads_counters() {
        let m = TransportMetrics::new();
        bump(&m.handshakes_ok);
        bump(&m.handshakes_ok);
        bump(&m.connections_rejected);
        let s = m.snapshot();
        assert_eq!(s.handshakes_ok, 2);
        assert_eq!(s.connections_rejected, 1);
        assert_eq!(s.handshakes_failed, 0);
    }

    #[tokio::test]
    async fn idle_timeout_fires_when_nothing_moves() {
        let (a, _b) = tokio::io::duplex(64);
        let mut io = IdleTimeout::new(a, Duration::from_millis(50));
        let mut buf = [0u8; 8];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_is_reset_by_progress() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleTimeout::new(a, Duration::from_secs(10));
        let writer = tokio::spawn(async move {
            // 5 bytes, 6 s apart: 30 s in total, never 10 s of silence.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                b.write_all(b"x").await.unwrap();
            }
            b
        });
        let mut got = Vec::new();
        while got.len() < 5 {
            let mut buf = [0u8; 8];
            let n = io.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let _b = writer.await.unwrap();
        let err = io.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn idle_timeout_passes_eof_through() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let mut io = IdleTimeout::new(a, Duration::from_secs(60));
        assert_eq!(io.read(&mut [0u8; 4]).await.unwrap(), 0);
    }
}
