//! The listener: one task accepts connections, one task per connection negotiates TLS and
//! speaks the protocol.
//!
//! The per-connection loop is this crate's, not pgwire's `process_socket` (whose TLS needs
//! pgwire's x509 dependencies): it answers `SSLRequest` with rustls, refuses GSS
//! encryption, caps what a client may send before it signed in, and closes connections
//! that stay silent too long (before sign-in and between statements).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use canopy_analytics::LakeQuery;
use futures::{SinkExt, StreamExt};
use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{
    ClientInfo, ConnectionManager, DefaultClient, PgWireConnectionState, PgWireServerHandlers,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::ErrorInfo;
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{PgWireMessageServerCodec, process_error, process_message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// ALPN name PostgreSQL 17 clients send (and require for a direct TLS connection).
const POSTGRESQL_ALPN: &[u8] = b"postgresql";
use tokio_util::codec::{Framed, FramedParts};

use crate::auth::{Credentials, ScramStartup};
use crate::query::LakeQueries;
use crate::{SERVER_VERSION, SqlWireError};

/// Connections served at once by default. Each runs one query at a time under the lake's
/// per-query memory limit, so this bounds the server's memory too.
pub const MAX_CONNECTIONS: usize = 64;

/// Bytes a client may send before it signed in: a startup message and a SCRAM exchange
/// take well under 1 KiB; pgwire would otherwise buffer any message up to 1 GiB.
pub const PRE_AUTH_BYTES: usize = 64 * 1024;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

/// How the port listens.
#[derive(Clone, Debug)]
pub struct PortOptions {
    /// TLS (`sslmode=require`); none: plaintext only.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With TLS: refuse clients that did not negotiate it (FATAL 28000).
    pub require_tls: bool,
    /// Connections served at once; beyond it a client is answered FATAL 53300.
    pub max_connections: usize,
    /// From accepting to a signed-in session.
    pub startup_timeout: Duration,
    /// A signed-in session with no message for this long is closed (outside a transaction
    /// block as inside one).
    pub idle_timeout: Duration,
}

impl Default for PortOptions {
    fn default() -> Self {
        Self {
            tls: None,
            require_tls: true,
            max_connections: MAX_CONNECTIONS,
            startup_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// A running server. Dropping it stops it as [`PgServer::shutdown`] does, without waiting.
#[derive(Debug)]
pub struct PgServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    accept_loop: JoinHandle<()>,
}

impl PgServer {
    /// Listens on `listen` (port 0 picks a free port) and serves `lake` to the clients
    /// `credentials` accepts.
    pub async fn start(
        listen: SocketAddr,
        lake: impl LakeQuery + 'static,
        credentials: Arc<dyn Credentials>,
        options: PortOptions,
    ) -> Result<Self, SqlWireError> {
        let listen_error = |source| SqlWireError::Listen {
            addr: listen,
            source,
        };
        let tls = options.tls.clone().map(TlsAcceptor::from);
        let listener = TcpListener::bind(listen).await.map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        let require_tls = options.require_tls && tls.is_some();
        let handlers = Arc::new(Handlers::new(Arc::new(lake), credentials, require_tls));
        let port = Arc::new(Port {
            handlers,
            tls,
            options,
        });
        let (stop, stopped) = oneshot::channel();
        let accept_loop = tokio::spawn(accept_loop(listener, port, stopped));
        tracing::info!(%local_addr, tls = require_tls, "serving the lake over the PostgreSQL protocol");
        Ok(Self {
            local_addr,
            stop,
            accept_loop,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and ends the accept loop; open connections are dropped, and their
    /// running queries cancelled.
    pub async fn shutdown(self) -> Result<(), SqlWireError> {
        drop(self.stop);
        self.accept_loop
            .await
            .map_err(|error| SqlWireError::AcceptLoop(error.to_string()))
    }
}

struct Port {
    handlers: Arc<Handlers>,
    tls: Option<TlsAcceptor>,
    options: PortOptions,
}

async fn accept_loop(listener: TcpListener, port: Arc<Port>, mut stopped: oneshot::Receiver<()>) {
    // Dropping the sets at the end aborts the connections still open.
    let mut connections = JoinSet::new();
    let mut refusals = JoinSet::new();
    let slots = Arc::new(Semaphore::new(port.options.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        while refusals.try_join_next().is_some() {}
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: pause rather than spin.
                tracing::warn!(%error, "accepting a PostgreSQL connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Told, not left in the backlog; a flood of refusals is bounded too.
            if refusals.len() < 64 {
                refusals.spawn(refuse_connection(socket));
            }
            continue;
        };
        let port = Arc::clone(&port);
        connections.spawn(async move {
            let _slot = slot;
            if let Err(error) = serve_connection(socket, peer, &port).await {
                tracing::debug!(%peer, %error, "PostgreSQL connection ended with an error");
            }
        });
    }
}

/// FATAL 53300, as PostgreSQL answers beyond `max_connections`.
async fn refuse_connection(mut socket: TcpStream) {
    let error = ErrorInfo::new(
        "FATAL".to_owned(),
        "53300".to_owned(),
        "too_many_connections: sorry, too many clients already".to_owned(),
    );
    let mut buf = BytesMut::new();
    if PgWireBackendMessage::ErrorResponse(error.into())
        .encode(&mut buf)
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&buf)).await;
    }
}

/// The connection's byte stream, plain or TLS, with a cap on what it may read before the
/// client signed in.
struct Transport {
    stream: Stream,
    pre_auth_left: Option<usize>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pre_auth_left == Some(0) {
            return Poll::Ready(Err(io::Error::other(
                "the client sent too much before signing in",
            )));
        }
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        };
        if let Some(left) = &mut this.pre_auth_left {
            *left = left.saturating_sub(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What TLS negotiation left: the stream, and the bytes of the first message already read
/// from a plaintext client.
async fn negotiate(
    mut socket: TcpStream,
    tls: Option<&TlsAcceptor>,
) -> io::Result<Option<(Stream, Vec<u8>)>> {
    let mut first = [0u8; 1];
    if socket.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    // A TLS ClientHello straight away (PostgreSQL 17's sslnegotiation=direct).
    if first[0] == 0x16 {
        let Some(tls) = tls else {
            return Ok(None);
        };
        let stream = tls.accept(socket).await?;
        if stream.get_ref().1.alpn_protocol() != Some(POSTGRESQL_ALPN) {
            return Err(io::Error::other("direct TLS without the postgresql ALPN"));
        }
        return Ok(Some((Stream::Tls(Box::new(stream)), Vec::new())));
    }
    // At most an SSLRequest and a GSSENCRequest precede the startup message.
    for _ in 0..3 {
        let mut head = [0u8; 8];
        socket.read_exact(&mut head).await?;
        let length = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        match (length, code) {
            (8, SSL_REQUEST) => match tls {
                Some(tls) => {
                    socket.write_all(b"S").await?;
                    // Nothing the client sent after the request was read: bytes smuggled
                    // in before the handshake go into it and fail it.
                    let stream = tls.accept(socket).await?;
                    return Ok(Some((Stream::Tls(Box::new(stream)), Vec::new())));
                }
                None => socket.write_all(b"N").await?,
            },
            (8, GSSENC_REQUEST) => socket.write_all(b"N").await?,
            _ => return Ok(Some((Stream::Plain(socket), head.to_vec()))),
        }
    }
    Ok(None)
}

async fn serve_connection(socket: TcpStream, peer: SocketAddr, port: &Port) -> io::Result<()> {
    socket.set_nodelay(true)?;
    let options = &port.options;
    let startup_deadline = tokio::time::sleep(options.startup_timeout);
    tokio::pin!(startup_deadline);
    let negotiated = tokio::select! {
        () = &mut startup_deadline => return Ok(()),
        negotiated = negotiate(socket, port.tls.as_ref()) => negotiated?,
    };
    let Some((stream, read_already)) = negotiated else {
        return Ok(());
    };
    let secure = matches!(stream, Stream::Tls(_));
    let transport = Transport {
        stream,
        pre_auth_left: Some(PRE_AUTH_BYTES),
    };
    let codec = PgWireMessageServerCodec::new(DefaultClient::new(peer, secure));
    let mut parts = FramedParts::new(transport, codec);
    parts.read_buf = BytesMut::from(&read_already[..]);
    let mut socket = Framed::from_parts(parts);
    socket.set_state(PgWireConnectionState::AwaitingStartup);

    let handlers = &port.handlers;
    let startup = handlers.startup_handler();
    let simple = handlers.simple_query_handler();
    let extended = handlers.extended_query_handler();
    let copy = handlers.copy_handler();
    let cancel = handlers.cancel_handler();
    loop {
        let signing_in = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let message = if signing_in {
            tokio::select! {
                () = &mut startup_deadline => None,
                message = socket.next() => message,
            }
        } else {
            match tokio::time::timeout(options.idle_timeout, socket.next()).await {
                Ok(message) => message,
                Err(_) => {
                    let _ = process_error(
                        &mut socket,
                        pgwire::error::PgWireError::UserError(Box::new(ErrorInfo::new(
                            "FATAL".to_owned(),
                            "57P05".to_owned(),
                            "terminating connection due to idle-session timeout".to_owned(),
                        ))),
                        false,
                    )
                    .await;
                    None
                }
            }
        };
        // A message that does not decode ends the connection, as does the client leaving.
        let Some(Ok(message)) = message else {
            break;
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let is_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(is_extended_query) => is_extended_query,
            _ => message.is_extended_query(),
        };
        let is_cancel_request = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        if let Err(error) = process_message(
            message,
            &mut socket,
            Arc::clone(&startup),
            Arc::clone(&simple),
            Arc::clone(&extended),
            Arc::clone(&copy),
            Arc::clone(&cancel),
        )
        .await
        {
            let is_fatal = error.is_fatal();
            process_error(&mut socket, error, is_extended_query).await?;
            if is_fatal {
                break;
            }
        }
        if is_cancel_request {
            break;
        }
        if signing_in && matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
            socket.get_mut().pre_auth_left = None;
        }
    }
    let _ = socket.close().await;
    Ok(())
}

/// What pgwire asks for per connection; all of it is shared.
struct Handlers {
    queries: Arc<LakeQueries>,
    startup: Arc<ScramStartup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    fn new(lake: Arc<dyn LakeQuery>, credentials: Arc<dyn Credentials>, require_tls: bool) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        parameters.date_style = "ISO, MDY".to_owned();
        parameters.time_zone = "UTC".to_owned();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.client_encoding = Some("UTF8".to_owned());
        let connections = Arc::new(ConnectionManager::new());
        Self {
            queries: Arc::new(LakeQueries::new(lake, Arc::clone(&credentials))),
            startup: Arc::new(ScramStartup {
                credentials,
                parameters,
                pids: RandomPidSecretKeyGenerator::default(),
                connections: Arc::clone(&connections),
                require_tls,
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::clone(&self.cancel)
    }
}
