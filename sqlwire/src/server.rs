//! The listener: one task accepts connections, one task per connection speaks the protocol.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use canopy_analytics::LakeQuery;
use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ConnectionManager, PgWireServerHandlers, RandomPidSecretKeyGenerator};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::auth::{Credentials, PasswordStartup};
use crate::query::LakeQueries;
use crate::{SERVER_VERSION, SqlWireError};

/// Connections served at once; more wait in the listen backlog until one ends. Each
/// connection runs one query at a time under the lake's per-query memory limit, so this
/// bounds the server's memory too.
pub const MAX_CONNECTIONS: usize = 64;

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
    ) -> Result<Self, SqlWireError> {
        let listen_error = |source| SqlWireError::Listen {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        let handlers = Arc::new(Handlers::new(Arc::new(lake), credentials));
        let (stop, stopped) = oneshot::channel();
        let accept_loop = tokio::spawn(accept_loop(listener, handlers, stopped));
        tracing::info!(%local_addr, "serving the lake over the PostgreSQL protocol");
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

async fn accept_loop(
    listener: TcpListener,
    handlers: Arc<Handlers>,
    mut stopped: oneshot::Receiver<()>,
) {
    // Dropping the set at the end aborts the connections still open.
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = &mut stopped => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: pause rather than spin.
                tracing::warn!(%error, "accepting a PostgreSQL connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handlers = Arc::clone(&handlers);
        connections.spawn(async move {
            let _slot = slot;
            if let Err(error) = pgwire::tokio::process_socket(socket, None, handlers).await {
                tracing::debug!(%peer, %error, "PostgreSQL connection ended with an error");
            }
        });
    }
}

/// What pgwire asks for per connection; all of it is shared.
struct Handlers {
    queries: Arc<LakeQueries>,
    startup: Arc<PasswordStartup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    fn new(lake: Arc<dyn LakeQuery>, credentials: Arc<dyn Credentials>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        parameters.date_style = "ISO, MDY".to_owned();
        parameters.time_zone = "UTC".to_owned();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.client_encoding = Some("UTF8".to_owned());
        let connections = Arc::new(ConnectionManager::new());
        Self {
            queries: Arc::new(LakeQueries::new(lake)),
            startup: Arc::new(PasswordStartup {
                credentials,
                parameters,
                pids: RandomPidSecretKeyGenerator::default(),
                connections: Arc::clone(&connections),
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
