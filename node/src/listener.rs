//! The HTTP listener: an accept loop of its own (axum's `serve` takes no limits) that serves
//! the API router over HTTP/1.1, in the clear or over TLS, under limits a slow or greedy
//! client cannot step around.
//!
//! ```text
//!  accept ─▶ a connection slot free? ──no──▶ 503 written once, closed (never waited on)
//!                 │ yes (held until the connection ends)
//!                 ▼
//!  [TLS handshake, within the header-read timeout] ─▶ hyper http1 ─▶ security headers,
//!  CORS ─▶ the router          a watchdog per connection closes it when:
//!    waiting for a request head longer than `header_read_timeout`   (slowloris)
//!    idle between requests longer than `idle_timeout`              (keep-alive)
//!    unable to write to the client for `idle_timeout`              (a reader that stalls)
//! ```
//!
//! hyper's own header-read timer also runs while a kept-alive connection waits for its
//! next request, which would tie the idle timeout to the header timeout; the watchdog
//! keeps the two apart. Stopping the listener closes idle and half-sent connections at
//! once and lets requests in flight finish.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::Service;

use crate::NodeError;
use crate::tls::ReloadableTls;

/// What the HTTP listener allows a client.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// From a connection's accept (or the end of its previous request) to the last byte of
    /// a request head, TLS handshake included.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may sit between requests, and how long a response
    /// may wait for a client that does not read it.
    pub idle_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Browser origins (`https://app.example.org`) allowed to call the API; none: no CORS
    /// headers, so browsers keep other sites' pages out.
    pub cors_origins: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            cors_origins: Vec::new(),
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit: every connection is
/// one, and the lake's compaction needs its own beside them.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current >= limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(%error, "could not raise the open-file limit");
    }
}

/// The HTTP listener, serving until `stop` fires.
pub(crate) struct Listener {
    pub addr: SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<io::Result<()>>,
}

/// Binds `address` and serves `app` there with the limits and headers of `settings`, over
/// TLS when `tls` is given.
pub(crate) async fn listen(
    address: SocketAddr,
    settings: &HttpSettings,
    tls: Option<&ReloadableTls>,
    app: Router,
) -> Result<Listener, NodeError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| NodeError::Internal(format!("listening on {address}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let acceptor = match tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
            tls.server_config(&[b"http/1.1"])?,
        )),
        None => None,
    };
    let app = with_security_headers(app, settings, tls.is_some())?;
    let served = Served {
        app,
        settings: settings.clone(),
        acceptor,
        slots: Arc::new(Semaphore::new(settings.max_connections.max(1))),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(accept_loop(listener, served, stopped));
    Ok(Listener { addr, stop, server })
}

/// Headers every answer carries, and the CORS policy.
fn with_security_headers(
    app: Router,
    settings: &HttpSettings,
    tls: bool,
) -> Result<Router, NodeError> {
    let app = if settings.cors_origins.is_empty() {
        app
    } else {
        use axum::http::Method;
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let origins = settings
            .cors_origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin.trim_end_matches('/')).map_err(|_| {
                    NodeError::Internal(format!("api.cors_origins: {origin:?} is not an origin"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(Duration::from_secs(600)),
        )
    };
    Ok(app.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| security_headers(tls, request, next),
    )))
}

async fn security_headers(tls: bool, request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    // API answers name accounts, tokens and votes: no cache along the way may keep them.
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// What every connection of one listener shares.
#[derive(Clone)]
struct Served {
    app: Router,
    settings: HttpSettings,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// One permit per open connection.
    slots: Arc<Semaphore>,
}

async fn accept_loop(
    listener: TcpListener,
    served: Served,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> io::Result<()> {
    let (stopping, stop_watch) = watch::channel(false);
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stopped => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors or a connection reset before accept: pause, as
                // a tight loop would only spin.
                tracing::warn!(%error, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&served.slots).try_acquire_owned() else {
            refuse_over_capacity(&stream, served.acceptor.is_some());
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            slot,
            served.clone(),
            stop_watch.clone(),
        ));
    }
    drop(listener);
    stopping.send_replace(true);
    // Every connection holds a slot until it ends: all of them back means all ended.
    let all = u32::try_from(served.settings.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = served.slots.acquire_many(all).await;
    Ok(())
}

/// Over the cap: a 503 in one non-blocking write (in the clear), then the socket closes.
fn refuse_over_capacity(stream: &TcpStream, tls: bool) {
    if tls {
        return;
    }
    let body = r#"{"error":{"code":"too_many_connections","message":"the node holds as many connections as it allows; retry shortly"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    served: Served,
    stopping: watch::Receiver<bool>,
) {
    let clock = Arc::new(ConnectionClock::new());
    match &served.acceptor {
        None => serve(Watched::new(stream, &clock), peer, clock, served, stopping).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(served.settings.header_read_timeout, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => {
                    serve(Watched::new(tls, &clock), peer, clock, served, stopping).await
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve<I>(
    io: Watched<I>,
    peer: SocketAddr,
    clock: Arc<ConnectionClock>,
    served: Served,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = served.app.clone();
    let requests = Arc::clone(&clock);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        let mut app = app.clone();
        let clock = Arc::clone(&requests);
        clock.enter(Phase::Busy);
        request.extensions_mut().insert(ConnectInfo(peer));
        async move {
            let response = app.call(request.map(Body::new)).await?;
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(UntilSent {
                    body,
                    clock: Some(clock),
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog keeps time; hyper's header timer would also cut idle connections.
    builder.header_read_timeout(None).keep_alive(true);
    // With upgrades: a socket.io client moves its session to a websocket.
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let watchdog = watchdog(Arc::clone(&clock), served.settings.clone());
    tokio::pin!(watchdog);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection ended");
                }
                return;
            }
            expired = &mut watchdog, if !closing => match expired {
                Expired::Idle => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                Expired::Head | Expired::Stalled => {
                    tracing::debug!(?expired, %peer, "closing a slow connection");
                    return;
                }
            },
            _ = stopping.wait_for(|stop| *stop), if !closing => {
                if clock.phase() == Phase::WaitingForHead {
                    return;
                }
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Why the watchdog closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    Head,
    Idle,
    Stalled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    WaitingForHead = 0,
    Busy = 1,
    Idle = 2,
}

/// Where a connection is, and since when (milliseconds from its accept).
struct ConnectionClock {
    accepted: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    /// One more than the millisecond a write to the client last found no room; 0 while
    /// writes go through.
    write_blocked_ms: AtomicU64,
}

impl ConnectionClock {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            phase: AtomicU8::new(Phase::WaitingForHead as u8),
            since_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::WaitingForHead,
            1 => Phase::Busy,
            _ => Phase::Idle,
        }
    }

    fn enter(&self, phase: Phase) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Bytes came in: an idle connection starts a request head.
    fn read_some(&self) {
        if self.phase() == Phase::Idle {
            self.enter(Phase::WaitingForHead);
        }
    }

    fn write_blocked(&self, blocked: bool) {
        if !blocked {
            self.write_blocked_ms.store(0, Ordering::Release);
        } else if self.write_blocked_ms.load(Ordering::Acquire) == 0 {
            self.write_blocked_ms
                .store(self.now_ms() + 1, Ordering::Release);
        }
    }
}

/// Resolves when the connection has waited longer than its phase allows.
async fn watchdog(clock: Arc<ConnectionClock>, settings: HttpSettings) -> Expired {
    let header = settings.header_read_timeout.as_millis() as u64;
    let idle = settings.idle_timeout.as_millis() as u64;
    loop {
        let now = clock.now_ms();
        let since = clock.since_ms.load(Ordering::Acquire);
        let blocked = clock.write_blocked_ms.load(Ordering::Acquire);
        if blocked > 0 && now + 1 >= blocked + idle {
            return Expired::Stalled;
        }
        let due = match clock.phase() {
            Phase::WaitingForHead if now >= since + header => return Expired::Head,
            Phase::Idle if now >= since + idle => return Expired::Idle,
            Phase::WaitingForHead => since + header,
            Phase::Idle => since + idle,
            // A request in flight has its own limits; look again later.
            Phase::Busy => now + header.max(1),
        };
        let due = match blocked {
            0 => due,
            blocked => due.min(blocked - 1 + idle),
        };
        tokio::time::sleep_until(clock.accepted + Duration::from_millis(due.max(now + 1))).await;
    }
}

/// A connection's socket, telling its clock when bytes come in and when writes stall.
struct Watched<I> {
    io: I,
    clock: Arc<ConnectionClock>,
}

impl<I> Watched<I> {
    fn new(io: I, clock: &Arc<ConnectionClock>) -> Self {
        Self {
            io,
            clock: Arc::clone(clock),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read_some();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.clock.write_blocked(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.clock.write_blocked(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.clock.write_blocked(polled.is_pending());
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that turns its connection idle once it is sent (or dropped).
struct UntilSent {
    body: Body,
    clock: Option<Arc<ConnectionClock>>,
}

impl HttpBody for UntilSent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UntilSent {
    fn drop(&mut self) {
        if let Some(clock) = self.clock.take() {
            clock.enter(Phase::Idle);
        }
    }
}
