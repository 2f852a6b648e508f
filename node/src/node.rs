//! A running node: metadata store, keys, vote log, tally engine, view store and the HTTP
//! listener, started together and shut down in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use canopy_analytics::{LakeSql, LakeViews};
use canopy_chain::NoteSigner;
use canopy_dataflow::{
    EngineConfig, InMemoryViews, RecordReader, RecordTiles, StateStore, TallyEngine, ViewStore,
    VoteRecord,
};
use canopy_ingest::{Gate, KafkaConfig, KafkaLog, SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::Decision;
use canopy_schemas::clock::now_micros;
use canopy_serving::api::router_with_push;
use canopy_serving::auth::{PasswordHashing, TokenKeys};
use canopy_serving::limits::RateLimiter;
use canopy_serving::push;
use canopy_serving::receipts::{PendingConfirmations, SharedConfirmations};
use canopy_serving::salts::SaltCache;
use canopy_serving::state::{AnalyticsService, ApiConfig, AppState, ReplicaNotices};
use canopy_serving::store::{MetadataStore, PostgresStore, SqliteStore};
use canopy_serving::throttle::SecretThrottle;
use canopy_sqlwire::PgServer;

use crate::NodeError;
use crate::data_dir::make_private;
use crate::error::blocking;
use crate::keys::StoreKeyPaths;
use crate::lake::{LakeFeed, LakeSettings, lake_loop};
use crate::lifecycle::{Lifecycle, lifecycle_loop};
use crate::listener::{HttpSettings, Listener, listen, raise_open_file_limit};
use crate::readiness::become_ready_after_replay;
use crate::record::{
    Anchorer, RecordSettings, anchor_loop, open_record, open_tile_store, record_signer,
};
use crate::redis::{RedisAttemptLedger, RedisViews, ReplicaCoordinator};
use crate::sensors::{SensorSettings, start_replica_sensors, start_sensors};
use crate::sql_port::{SqlPortSettings, start_sql_port};
use crate::tiles::{ReaderLimits, RecordStore, TileRecordReader};
use crate::tls::TlsFiles;
use crate::worker::{RedisTarget, SqlStateStore, StoreDirectory};

#[derive(Clone)]
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
    /// The audit trail's HMAC key (32 bytes); `keys/audit-hmac.key` in the data directory if
    /// absent. Every process of a cluster that writes the trail must share one.
    pub audit_key: Option<PathBuf>,
    /// The key secrets are sealed under in the store (32 bytes); `keys/secrets.key` in the
    /// data directory if absent. Shared like the audit key.
    pub secrets_key: Option<PathBuf>,
    pub api: ApiConfig,
    /// The vote record: checkpoint origin, schedule, anchoring.
    pub record: RecordSettings,
    /// The vote log on a Kafka topic instead of the embedded segment log.
    pub kafka: Option<KafkaConfig>,
    /// Results in Redis (written by a cluster's workers) instead of in process memory.
    pub redis: Option<RedisTarget>,
    /// Whether this node runs the tally engine and keeps the vote record. A `canopy serve`
    /// replica does not: it appends to Kafka and reads the results the workers publish.
    pub run_engine: bool,
    /// Engine checkpoints in the metadata store, so a restart resumes rather than replays.
    pub engine_checkpoints: bool,
    pub sensors: SensorSettings,
    /// The analytics lake: kept (written) by a node that runs the engine, only read (SQL,
    /// trends, the PostgreSQL port) by a `serve` replica.
    pub lake: Option<LakeSettings>,
    /// The HTTP listener's timeouts, connection cap and CORS policy.
    pub http: HttpSettings,
    /// The certificate of the HTTP listener and the PostgreSQL port (plain TCP if absent).
    pub tls: Option<TlsFiles>,
    /// The PostgreSQL port's plaintext policy, connection cap and timeouts.
    pub sql_port: SqlPortSettings,
    /// How often the node closes decisions whose window ended and signs final results.
    pub lifecycle_interval: Duration,
    /// The analysis agents and the consensus model's versions (ONNX Runtime: the sensors'
    /// library when not given).
    pub agents: canopy_agents::AgentServiceConfig,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 2,
            database_url: None,
            jwt_key: None,
            audit_key: None,
            secrets_key: None,
            api: ApiConfig::default(),
            record: RecordSettings::default(),
            kafka: None,
            redis: None,
            run_engine: true,
            engine_checkpoints: false,
            sensors: SensorSettings::default(),
            lake: None,
            http: HttpSettings::default(),
            tls: None,
            sql_port: SqlPortSettings::default(),
            agents: canopy_agents::AgentServiceConfig::default(),
            lifecycle_interval: Duration::from_millis(500),
        }
    }
}

/// Connects to the metadata store the configuration names: PostgreSQL if it has a URL,
/// else SQLite in the data directory; with the audit and secrets keys (generated on first
/// start).
pub async fn connect_store(config: &NodeConfig) -> Result<Arc<dyn MetadataStore>, NodeError> {
    make_private(&config.data_dir)?;
    let keys = StoreKeyPaths::new(
        &config.data_dir,
        config.audit_key.as_deref(),
        config.secrets_key.as_deref(),
    )
    .load()
    .await?;
    Ok(match &config.database_url {
        Some(url) => Arc::new(PostgresStore::connect(url).await?.with_keys(keys)),
        None => Arc::new(
            SqliteStore::open(&config.data_dir.join("canopy.db"))
                .await?
                .with_keys(keys),
        ),
    })
}

/// Connects to the metadata store and brings its schema up to date.
pub async fn open_store(config: &NodeConfig) -> Result<Arc<dyn MetadataStore>, NodeError> {
    let store = connect_store(config).await?;
    store.migrate().await?;
    Ok(store)
}

pub struct Node {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    anchoring: tokio::sync::watch::Sender<bool>,
    anchor_task: Option<tokio::task::JoinHandle<()>>,
    /// Closes decisions at the end of their window and signs final results.
    lifecycle_task: tokio::task::JoinHandle<()>,
    /// Live push over socket.io.
    push_task: tokio::task::JoinHandle<()>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    coordinator: Option<Arc<ReplicaCoordinator>>,
    lake_stop: tokio::sync::watch::Sender<bool>,
    lake_task: Option<tokio::task::JoinHandle<()>>,
    sql_port: Option<PgServer>,
    /// Reloads the listeners' certificate on SIGHUP.
    tls_reload: Option<tokio::task::JoinHandle<()>>,
}

/// Every second: announce this replica, share the rate limits among the live ones, and drop
/// cached salts when another replica erased a voter (or when Redis cannot say).
async fn replica_heartbeat(coordinator: Arc<ReplicaCoordinator>, state: Arc<AppState>) {
    let mut erasures = None;
    loop {
        let beat = Arc::clone(&coordinator);
        match tokio::task::spawn_blocking(move || beat.heartbeat()).await {
            Ok(Ok((live, erased))) => {
                state.user_limits.share_among(live);
                state.address_limits.share_among(live);
                if erasures.is_some_and(|seen| seen != erased) {
                    state.salts.forget_all();
                    state.recent_casts.forget_all();
                    state.confirmations.forget_local();
                }
                erasures = Some(erased);
            }
            _ => {
                tracing::warn!("the replica heartbeat cannot reach Redis");
                state.salts.forget_all();
                erasures = None;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The RS256 key pair: the configured file, or one generated under the data directory.
async fn load_token_keys(config: &NodeConfig) -> Result<TokenKeys, NodeError> {
    let key_path = config
        .jwt_key
        .clone()
        .unwrap_or_else(|| config.data_dir.join("keys").join("jwt-rs256.pem"));
    blocking(move || TokenKeys::load_or_generate(&key_path).map_err(NodeError::from)).await
}

/// The vote log: a Kafka topic, or the segment log under `<data>/votes`.
async fn open_vote_log(config: &NodeConfig) -> Result<Arc<dyn VoteLog>, NodeError> {
    Ok(match config.kafka.clone() {
        Some(kafka) => Arc::new(blocking(move || KafkaLog::connect(kafka)).await?),
        None => Arc::new(SegmentLog::open(
            config.data_dir.join("votes"),
            SegmentLogConfig::default(),
        )?),
    })
}

/// Results: in Redis (a cluster's workers write them), or in this process.
async fn open_views(config: &NodeConfig) -> Result<Arc<dyn ViewStore>, NodeError> {
    Ok(match config.redis.clone() {
        Some(redis) => {
            Arc::new(blocking(move || RedisViews::connect(&redis.url, &redis.prefix)).await?)
        }
        None => Arc::new(InMemoryViews::new()),
    })
}

/// The other API replicas of a cluster, through Redis.
async fn connect_coordinator(
    config: &NodeConfig,
) -> Result<Option<Arc<ReplicaCoordinator>>, NodeError> {
    let Some(redis) = config.redis.clone() else {
        return Ok(None);
    };
    let coordinator =
        blocking(move || ReplicaCoordinator::connect(&redis.url, &redis.prefix)).await?;
    Ok(Some(Arc::new(coordinator)))
}

/// Argon2 within the configured memory (its dummy hash is computed off the async threads).
async fn password_hashing(config: &NodeConfig) -> Result<PasswordHashing, NodeError> {
    let limits = config.api.password_hashing;
    blocking(move || PasswordHashing::new(limits).map_err(NodeError::from)).await
}

/// The sign-in throttle: counting in Redis in a cluster (every replica together), in this
/// process otherwise.
async fn signin_throttle(config: &NodeConfig) -> Result<SecretThrottle, NodeError> {
    let policy = config.api.signin_throttle;
    let Some(redis) = config.redis.clone() else {
        return Ok(SecretThrottle::in_process(policy));
    };
    let ledger = blocking(move || RedisAttemptLedger::connect(&redis.url, &redis.prefix)).await?;
    Ok(SecretThrottle::new(policy, Arc::new(ledger)))
}

/// What a node that runs the engine has started: the engine, the record it grows, and the
/// anchoring loop over the record's checkpoints.
struct Tally {
    engine: Arc<TallyEngine>,
    record: Arc<VoteRecord>,
    anchoring: tokio::task::JoinHandle<()>,
}

/// Where the record's checkpoints are signed and written.
struct RecordOutputs<'a> {
    signer: &'a Arc<NoteSigner>,
    tiles: &'a RecordStore,
}

async fn start_tally(
    config: &NodeConfig,
    store: &Arc<dyn MetadataStore>,
    RecordOutputs { signer, tiles }: RecordOutputs<'_>,
    log: &Arc<dyn VoteLog>,
    views: Arc<dyn ViewStore>,
    decisions: Vec<Decision>,
    anchor_stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Tally, NodeError> {
    let record = open_record(store, tiles, signer, &config.record, log.partitions()).await?;
    let runtime = tokio::runtime::Handle::current();
    let engine_config = EngineConfig {
        workers: config.workers,
        state: config.engine_checkpoints.then(|| {
            Arc::new(SqlStateStore::new(Arc::clone(store), runtime.clone())) as Arc<dyn StateStore>
        }),
        // Decisions are registered with the engine directly; the directory is told of the
        // closes the engine reads.
        directory: Some(Arc::new(StoreDirectory::new(
            Arc::clone(store),
            runtime.clone(),
        ))),
        ..EngineConfig::default()
    };
    let (engine_log, engine_record) = (Arc::clone(log), Arc::clone(&record));
    let engine = blocking(move || {
        TallyEngine::start(
            engine_config,
            engine_log,
            views,
            Some(engine_record),
            decisions,
        )
    })
    .await?;
    let anchorer = Anchorer::new(store, signer, &config.record, &config.data_dir);
    Ok(Tally {
        engine: Arc::new(engine),
        record,
        anchoring: tokio::spawn(anchor_loop(anchorer, anchor_stop)),
    })
}

impl Node {
    /// Opens the store, keys, logs and views, starts the engines, loops and the listener;
    /// the node turns ready once its views have replayed the logs.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        canopy_serving::metrics::install();
        raise_open_file_limit();
        make_private(&config.data_dir)?;
        let tls = match config.tls.clone() {
            Some(files) => Some(blocking(move || files.load()).await?),
            None => None,
        };
        let store = open_store(&config).await?;
        let keys = load_token_keys(&config).await?;
        let log = open_vote_log(&config).await?;
        let gate = Arc::new(Gate::new(Arc::clone(&log)));
        let decisions = store.decisions().await?;
        let now = now_micros();
        for decision in &decisions {
            gate.register(decision.clone(), now)?;
        }
        let views = open_views(&config).await?;
        let keep_lake = config.run_engine && config.lake.is_some();
        // The engine publishes through the lake's recorder of tally changes.
        let tally_changes = keep_lake.then(|| Arc::new(LakeViews::new(Arc::clone(&views))));
        let signer = record_signer(&config.data_dir, &config.record.origin).await?;
        // The record store: written by the engine's checkpoint writer (here or in the
        // workers), read for raw tiles, and for proofs where the trees are not in memory.
        let tile_store = open_tile_store(&config.record, &config.data_dir)?;
        let tile_reader = Arc::new(TileRecordReader::new(
            tile_store.clone(),
            signer.verifier(),
            ReaderLimits::default(),
        ));
        let coordinator = connect_coordinator(&config).await?;
        let (anchoring, anchor_stop) = tokio::sync::watch::channel(false);
        let tally = if config.run_engine {
            let engine_views = match &tally_changes {
                Some(recorder) => Arc::clone(recorder) as Arc<dyn ViewStore>,
                None => Arc::clone(&views),
            };
            let tally = start_tally(
                &config,
                &store,
                RecordOutputs {
                    signer: &signer,
                    tiles: &tile_store,
                },
                &log,
                engine_views,
                decisions,
                anchor_stop,
            )
            .await?;
            Some(tally)
        } else {
            None
        };
        let (engine, record, anchor_task) = match tally {
            Some(tally) => (
                Some(tally.engine),
                Some(tally.record as Arc<dyn RecordReader>),
                Some(tally.anchoring),
            ),
            None => (
                None,
                Some(Arc::clone(&tile_reader) as Arc<dyn RecordReader>),
                None,
            ),
        };
        let sensors = if config.run_engine && config.sensors.enabled {
            Some(Arc::new(
                start_sensors(
                    &config.sensors,
                    &config.data_dir,
                    config.kafka.clone(),
                    &store,
                    keep_lake,
                )
                .await?,
            ))
        } else if let (Some(kafka), Some(redis), true) =
            (&config.kafka, &config.redis, config.sensors.enabled)
        {
            // A cluster's replica: readings to the sensor topic, features from Redis.
            let redis = (redis.url.as_str(), redis.prefix.as_str());
            Some(start_replica_sensors(&config.sensors, kafka, redis, &store).await?)
        } else {
            None
        };
        // A replica without an engine answers SQL over the lake the workers write; new
        // files show in its next query (each query lists them).
        let lake_sql = config
            .lake
            .as_ref()
            .map(|lake| LakeSql::new(lake.location.clone(), lake.sql));
        let analytics = match (&config.lake, &lake_sql) {
            (Some(lake), Some(sql)) => Some(Arc::new(
                AnalyticsService::new(Arc::new(sql.clone()), lake.concurrent_queries)
                    .with_imports(canopy_analytics::LakeConfig::new(lake.location.clone())),
            )),
            _ => None,
        };
        let agents = {
            let mut settings = config.agents.clone();
            if settings.onnx_library.is_none() {
                settings.onnx_library = config
                    .sensors
                    .onnxruntime
                    .clone()
                    .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
            }
            let lake = lake_sql
                .as_ref()
                .map(|sql| Arc::new(sql.clone()) as Arc<dyn canopy_analytics::LakeQuery>);
            Arc::new(canopy_agents::AgentService::new(settings, lake))
        };
        let lake_feed = match (&config.lake, keep_lake) {
            (Some(lake), true) => Some(LakeFeed::new(
                lake.clone(),
                Arc::clone(&store),
                Arc::clone(gate.log()),
                sensors.as_ref().map(|s| Arc::clone(&s.log)),
                tally_changes,
                sensors.as_ref().and_then(|s| s.final_windows.clone()),
            )?),
            _ => None,
        };
        // Every voter's salt and sealing key before the first vote is served: otherwise each
        // voter's first vote after a restart reads the store, behind the checkpoint writer.
        let loading = std::time::Instant::now();
        let (salts, loaded) = SaltCache::load(store.as_ref()).await?;
        tracing::info!(
            salts = loaded.salts,
            keys = loaded.keys,
            ms = loading.elapsed().as_millis() as u64,
            "voters' salts and sealing keys loaded"
        );
        let (lake_stop, lake_stopped) = tokio::sync::watch::channel(false);
        let lake_task = lake_feed.map(|feed| tokio::spawn(lake_loop(feed, lake_stopped)));
        let state = Arc::new(AppState {
            store,
            keys: Arc::new(keys),
            gate,
            engine,
            views,
            user_limits: RateLimiter::new(config.api.per_user),
            address_limits: RateLimiter::new(config.api.per_address),
            refusal_audits: RateLimiter::refusal_audits(),
            recent_casts: Default::default(),
            visibility: Default::default(),
            confirmations: match &coordinator {
                Some(coordinator) => PendingConfirmations::shared(
                    Arc::clone(coordinator) as Arc<dyn SharedConfirmations>
                ),
                None => PendingConfirmations::default(),
            },
            registration_limits: (
                RateLimiter::new(config.api.registrations_per_address),
                RateLimiter::new(config.api.registrations_per_block),
            ),
            claim_attempts: RateLimiter::new(config.api.claims_per_account),
            throttle: signin_throttle(&config).await?,
            passwords: password_hashing(&config).await?,
            parked_waits: Default::default(),
            config: config.api.clone(),
            ready: Default::default(),
            record,
            record_tiles: Some(tile_reader as Arc<dyn RecordTiles>),
            record_key: signer.verifier().encode(),
            record_origin: config.record.origin.clone(),
            salts,
            data_dir: config.data_dir.clone(),
            replicas: coordinator
                .clone()
                .map(|coordinator| coordinator as Arc<dyn ReplicaNotices>),
            sensors,
            analytics,
            agents: Some(agents),
        });
        // Every stored close (early, scheduled or a cancellation) before the first vote: a
        // node alone refuses votes for closed decisions from its gate only.
        for close in state.store.closes().await? {
            state.gate.note_closed(close.decision_id);
        }
        let heartbeat = coordinator
            .clone()
            .map(|coordinator| tokio::spawn(replica_heartbeat(coordinator, Arc::clone(&state))));
        let lifecycle_task = tokio::spawn(lifecycle_loop(
            Lifecycle {
                store: Arc::clone(&state.store),
                gate: Arc::clone(&state.gate),
                views: Arc::clone(&state.views),
                signer: Arc::clone(&signer),
                tiles: tile_store.clone(),
                origin_prefix: config.record.origin.clone(),
                interval: config.lifecycle_interval,
            },
            anchoring.subscribe(),
        ));
        // The port signs in against the API's store and throttle, so both count together.
        let sql_port = match (config.lake.as_ref().and_then(|l| l.pg_listen), lake_sql) {
            (Some(listen), Some(sql)) => {
                let port_tls = match &tls {
                    Some(tls) => Some(tls.server_config(&[b"postgresql"])?),
                    None => None,
                };
                let (state, settings) = (Arc::clone(&state), &config.sql_port);
                let data_dir = &config.data_dir;
                Some(start_sql_port(listen, sql, state, settings, port_tls, data_dir).await?)
            }
            _ => None,
        };
        let (push_layer, push_io) = push::socket_io(Arc::clone(&state));
        let app = router_with_push(Arc::clone(&state), push_layer);
        let push_task = tokio::spawn(push::push_loop(
            push_io,
            Arc::clone(&state),
            anchoring.subscribe(),
        ));
        tokio::spawn(canopy_serving::traces::end_visible_spans(
            Arc::clone(&state.visibility),
            Arc::clone(&state.views),
            anchoring.subscribe(),
        ));
        let Listener { addr, stop, server } =
            listen(config.listen, &config.http, tls.as_ref(), app).await?;
        let tls_reload = match &tls {
            Some(tls) => Some(tls.reload_on_sighup()?),
            None => None,
        };
        become_ready_after_replay(&state)?;
        Ok(Node {
            addr,
            state,
            stop,
            server,
            anchoring,
            anchor_task,
            lifecycle_task,
            push_task,
            heartbeat,
            coordinator,
            lake_stop,
            lake_task,
            sql_port,
            tls_reload,
        })
    }

    /// Where the lake's SQL is served over the PostgreSQL protocol, if it is.
    pub fn sql_addr(&self) -> Option<SocketAddr> {
        self.sql_port.as_ref().map(PgServer::local_addr)
    }

    /// Stops accepting connections, lets requests in flight finish (their appends become
    /// durable), then stops the engine and closes the log.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.state.ready.store(false, Ordering::Release);
        if let Some(sql_port) = self.sql_port {
            sql_port.shutdown().await?;
        }
        if let Some(heartbeat) = self.heartbeat {
            heartbeat.abort();
        }
        if let Some(tls_reload) = self.tls_reload {
            tls_reload.abort();
        }
        if let Some(coordinator) = self.coordinator.clone() {
            let _ = tokio::task::spawn_blocking(move || coordinator.leave()).await;
        }
        let _ = self.anchoring.send(true);
        if let Some(task) = self.anchor_task {
            let _ = task.await;
        }
        let _ = self.lifecycle_task.await;
        let _ = self.push_task.await;
        if let Some(sensors) = &self.state.sensors {
            sensors.closing.send_replace(true);
        }
        let _ = self.stop.send(());
        let server = self.server;
        // The last flush: what the engine published up to now reaches the lake.
        let _ = self.lake_stop.send(true);
        if let Some(task) = self.lake_task {
            let _ = task.await;
        }
        server
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let state = self.state;
        tokio::task::spawn_blocking(move || drop(state))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        Ok(())
    }
}
