//! A running node: metadata store, keys, vote log, tally engine, view store and the HTTP
//! listener, started together and shut down in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use canopy_dataflow::{EngineConfig, InMemoryViews, TallyEngine, ViewStore};
use canopy_ingest::{Gate, SegmentLog, SegmentLogConfig, VoteLog};

use crate::ServingError;
use crate::app::{ApiConfig, AppState, now_micros, router};
use crate::auth::TokenKeys;
use crate::limits::RateLimiter;
use crate::store::{MetadataStore, PostgresStore, SqliteStore};

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Holds the vote log (`votes/`), the SQLite store (`canopy.db`) and the signing key
    /// (`keys/jwt-rs256.pem`).
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub workers: usize,
    /// A PostgreSQL URL for the metadata store; SQLite in the data directory if absent.
    pub database_url: Option<String>,
    /// The RS256 private key (PKCS#8 PEM). Every replica of a cluster must share one; a
    /// single node generates its own in the data directory on first start.
    pub jwt_key: Option<PathBuf>,
    pub api: ApiConfig,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 2,
            database_url: None,
            jwt_key: None,
            api: ApiConfig::default(),
        }
    }
}

/// Connects to the metadata store the configuration names: PostgreSQL if it has a URL,
/// else SQLite in the data directory.
pub async fn connect_store(config: &NodeConfig) -> Result<Arc<dyn MetadataStore>, ServingError> {
    Ok(match &config.database_url {
        Some(url) => Arc::new(PostgresStore::connect(url).await?),
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                ServingError::Internal(format!("creating {}: {e}", config.data_dir.display()))
            })?;
            Arc::new(SqliteStore::open(&config.data_dir.join("canopy.db")).await?)
        }
    })
}

/// Connects to the metadata store and brings its schema up to date.
pub async fn open_store(config: &NodeConfig) -> Result<Arc<dyn MetadataStore>, ServingError> {
    let store = connect_store(config).await?;
    store.migrate().await?;
    Ok(store)
}

pub struct Node {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, ServingError> {
        let store = open_store(&config).await?;
        let key_path = config
            .jwt_key
            .clone()
            .unwrap_or_else(|| config.data_dir.join("keys").join("jwt-rs256.pem"));
        let keys = tokio::task::spawn_blocking(move || TokenKeys::load_or_generate(&key_path))
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))??;
        let log_dir = config.data_dir.join("votes");
        let log: Arc<dyn VoteLog> =
            Arc::new(SegmentLog::open(&log_dir, SegmentLogConfig::default())?);
        let gate = Arc::new(Gate::new(Arc::clone(&log)));
        let decisions = store.decisions().await?;
        let now = now_micros();
        for decision in &decisions {
            gate.register(decision.clone(), now)?;
        }
        let views: Arc<dyn ViewStore> = Arc::new(InMemoryViews::new());
        let engine_config = EngineConfig {
            workers: config.workers,
            ..EngineConfig::default()
        };
        let engine = Arc::new(TallyEngine::start(
            engine_config,
            log,
            Arc::clone(&views),
            decisions,
        )?);
        let state = Arc::new(AppState {
            store,
            keys: Arc::new(keys),
            gate,
            engine,
            views,
            user_limits: RateLimiter::new(config.api.per_user),
            address_limits: RateLimiter::new(config.api.per_address),
            config: config.api.clone(),
            ready: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServingError::Internal(format!("listening on {}: {e}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServingError::Internal(e.to_string()))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        // Ready once the views have caught up with the log as it was at start: until then a
        // replica would serve results that miss acknowledged votes.
        let log = state.gate.log();
        let targets: Vec<(u32, u64)> = (0..log.partitions())
            .map(|p| log.end_offset(p).map(|end| (p, end)))
            .collect::<Result<_, _>>()?;
        let total: u64 = targets.iter().map(|(_, end)| end).sum();
        let replayed = move |views: &dyn ViewStore| -> u64 {
            targets
                .iter()
                .map(|(p, end)| views.frontier(*p).min(*end))
                .sum()
        };
        if replayed(state.views.as_ref()) >= total {
            state.ready.store(true, Ordering::Release);
        } else {
            tracing::info!(
                records = total,
                "replaying the vote log; not ready until it is done"
            );
            let catching_up = Arc::clone(&state);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let mut last_report = started;
                loop {
                    let done = replayed(catching_up.views.as_ref());
                    if done >= total {
                        tracing::info!(
                            records = total,
                            seconds = started.elapsed().as_secs_f64(),
                            "caught up with the vote log; ready"
                        );
                        catching_up.ready.store(true, Ordering::Release);
                        return;
                    }
                    if last_report.elapsed() >= std::time::Duration::from_secs(2) {
                        tracing::info!(done, total, "replaying the vote log");
                        last_report = std::time::Instant::now();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            });
        }
        Ok(Node {
            addr,
            state,
            stop,
            server,
        })
    }

    /// Stops accepting connections, lets requests in flight finish (their appends become
    /// durable), then stops the engine and closes the log.
    pub async fn shutdown(self) -> Result<(), ServingError> {
        self.state.ready.store(false, Ordering::Release);
        let _ = self.stop.send(());
        self.server
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))?
            .map_err(|e| ServingError::Internal(e.to_string()))?;
        let state = self.state;
        tokio::task::spawn_blocking(move || drop(state))
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))?;
        Ok(())
    }
}
