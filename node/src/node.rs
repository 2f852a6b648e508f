//! A running node: metadata store, keys, vote log, tally engine, view store and the HTTP
//! listener, started together and shut down in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use canopy_chain::AnchorTarget;
use canopy_dataflow::{
    AlertRules, AnomalyModel, EngineConfig, InMemoryViews, RecordConfig, Retention, Scorer,
    ScorerConfig, SensorEngine, SensorEngineConfig, SensorViews, StateStore, TallyEngine,
    ViewStore,
};
use canopy_ingest::{
    Gate, KafkaConfig, KafkaLog, KafkaSensorLog, SegmentLog, SegmentLogConfig, SensorLog,
    SensorSegmentLog, VoteLog,
};
use canopy_schemas::SensorRegistry;
use canopy_serving::salts::SaltCache;
use canopy_serving::state::ReplicaNotices;

use canopy_analytics::{FinalWindows, LakeSql, LakeViews};

use crate::NodeError;
use crate::lake::{LakeFeed, LakeSettings, lake_loop};
use crate::record::{AnchorConfig, Anchorer, anchor_loop, open_record, record_signer};
use crate::redis::{RedisViews, ReplicaCoordinator};
use crate::worker::{RedisTarget, SqlStateStore};
use canopy_schemas::clock::now_micros;
use canopy_serving::api::router;
use canopy_serving::auth::TokenKeys;
use canopy_serving::limits::RateLimiter;
use canopy_serving::state::AnalyticsService;
use canopy_serving::state::SensorService;
use canopy_serving::state::{ApiConfig, AppState};
use canopy_serving::store::{MetadataStore, PostgresStore, SqliteStore};

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
    pub api: ApiConfig,
    /// Checkpoint origins start with this (`<prefix>/decision/<uuid>`); also the name of
    /// the record key.
    pub record_origin: String,
    pub record: RecordConfig,
    pub anchor: AnchorConfig,
    /// Where batch roots go; the local anchor journal (`anchors/journal.jsonl`) if absent.
    pub anchor_target: Option<Arc<dyn AnchorTarget>>,
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
    /// The analytics lake, in a node that runs the engine.
    pub lake: Option<LakeSettings>,
}

/// Sensor data: its log, features dataflow, model and alerts.
#[derive(Clone, Debug)]
pub struct SensorSettings {
    /// Whether a node that runs the engine also takes sensor readings.
    pub enabled: bool,
    pub engine: SensorEngineConfig,
    pub retention: Retention,
    pub alert_rules: AlertRules,
    /// ONNX Runtime's shared library (`libonnxruntime.so`); `ORT_DYLIB_PATH` if absent.
    /// Without one the z-scores still flag anomalies but the model scores nothing.
    pub onnxruntime: Option<PathBuf>,
    pub scorer: ScorerConfig,
}

impl Default for SensorSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            engine: SensorEngineConfig::default(),
            retention: Retention::default(),
            alert_rules: AlertRules::defaults(),
            onnxruntime: None,
            scorer: ScorerConfig::default(),
        }
    }
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
            record_origin: "canopy.local".to_string(),
            record: RecordConfig::default(),
            anchor: AnchorConfig::default(),
            anchor_target: None,
            kafka: None,
            redis: None,
            run_engine: true,
            engine_checkpoints: false,
            sensors: SensorSettings::default(),
            lake: None,
        }
    }
}

/// Connects to the metadata store the configuration names: PostgreSQL if it has a URL,
/// else SQLite in the data directory.
pub async fn connect_store(config: &NodeConfig) -> Result<Arc<dyn MetadataStore>, NodeError> {
    Ok(match &config.database_url {
        Some(url) => Arc::new(PostgresStore::connect(url).await?),
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                NodeError::Internal(format!("creating {}: {e}", config.data_dir.display()))
            })?;
            Arc::new(SqliteStore::open(&config.data_dir.join("canopy.db")).await?)
        }
    })
}

/// Connects to the metadata store and brings its schema up to date.
pub async fn open_store(config: &NodeConfig) -> Result<Arc<dyn MetadataStore>, NodeError> {
    let store = connect_store(config).await?;
    store.migrate().await?;
    Ok(store)
}

/// Opens the sensor log (`<data>/sensors`), loads the registry, starts the features
/// dataflow, the model's scorer (when ONNX Runtime is there) and the alert fan-out.
async fn start_sensors(
    config: &NodeConfig,
    store: &Arc<dyn MetadataStore>,
    keep_lake: bool,
) -> Result<SensorService, NodeError> {
    let settings = &config.sensors;
    let log: Arc<dyn SensorLog> = match config.kafka.clone() {
        // Beside the vote topic: `<topic>-sensors`, keyed by region.
        Some(mut kafka) => {
            kafka.topic = format!("{}-sensors", kafka.topic);
            tokio::task::spawn_blocking(move || KafkaSensorLog::connect(kafka))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?
                .map(Arc::new)?
        }
        None => Arc::new(SensorSegmentLog::open(
            config.data_dir.join("sensors"),
            SegmentLogConfig::default(),
        )?),
    };
    let mut registry = SensorRegistry::new();
    for sensor in store.sensors().await? {
        registry.insert(sensor)?;
    }
    let views = Arc::new(SensorViews::new(
        log.partitions(),
        settings.engine.windows.clone(),
        settings.retention,
        settings.alert_rules.clone(),
    ));
    // Before the engine starts: the lake must see every window, replay included.
    let final_windows = keep_lake.then(|| FinalWindows::attach(&views));
    let (alerts, _) = tokio::sync::broadcast::channel(1024);
    {
        let (alerts, store) = (alerts.clone(), Arc::clone(store));
        let runtime = tokio::runtime::Handle::current();
        views.on_alert(move |alert| {
            tracing::warn!(region = %alert.region, metric = %alert.metric, kind = %alert.kind, value = alert.value, "sensor alert");
            let detail = serde_json::to_string(&alert).unwrap_or_default();
            let _ = alerts.send(alert);
            let store = Arc::clone(&store);
            runtime.spawn(async move {
                if let Err(error) = store
                    .append_audit("system", "sensor_alert", &detail, now_micros())
                    .await
                {
                    tracing::error!(%error, "could not write a sensor alert to the audit trail");
                }
            });
        });
    }
    // The scorer first: it must see every window the engine publishes, replay included.
    let library = settings
        .onnxruntime
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
    let (scorer, scorer_unavailable) = match library {
        None => {
            let reason =
                "no ONNX Runtime library (set ORT_DYLIB_PATH; scripts/onnxruntime fetches it)";
            tracing::warn!("{reason}: sensor windows are flagged by z-score only");
            (None, Some(reason.to_string()))
        }
        Some(library) => {
            match tokio::task::spawn_blocking(move || AnomalyModel::load_embedded(&library))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?
            {
                Ok(model) => (
                    Some(Scorer::start(
                        model,
                        Arc::clone(&views),
                        settings.scorer.clone(),
                    )),
                    None,
                ),
                Err(error) => {
                    tracing::warn!(%error, "the anomaly model is unavailable: sensor windows are flagged by z-score only");
                    (None, Some(error.to_string()))
                }
            }
        }
    };
    let engine_config = settings.engine.clone();
    let (engine_log, engine_views) = (Arc::clone(&log), Arc::clone(&views));
    let engine = tokio::task::spawn_blocking(move || {
        SensorEngine::start(engine_config, engine_log, engine_views)
    })
    .await
    .map_err(|e| NodeError::Internal(e.to_string()))??;
    Ok(SensorService {
        log,
        registry: std::sync::RwLock::new(registry),
        views,
        engine: Some(engine),
        scorer,
        scorer_unavailable,
        alerts,
        closing: tokio::sync::watch::Sender::new(false),
        final_windows,
    })
}

pub struct Node {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    anchoring: tokio::sync::watch::Sender<bool>,
    anchor_task: Option<tokio::task::JoinHandle<()>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    coordinator: Option<Arc<ReplicaCoordinator>>,
    lake_stop: tokio::sync::watch::Sender<bool>,
    lake_task: Option<tokio::task::JoinHandle<()>>,
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
                }
                erasures = Some(erased);
            }
            _ => {
                tracing::warn!("the replica heartbeat cannot reach Redis");
                state.salts.forget_all();
                erasures = None;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let store = open_store(&config).await?;
        let key_path = config
            .jwt_key
            .clone()
            .unwrap_or_else(|| config.data_dir.join("keys").join("jwt-rs256.pem"));
        let keys = tokio::task::spawn_blocking(move || {
            TokenKeys::load_or_generate(&key_path).map_err(NodeError::from)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
        let log: Arc<dyn VoteLog> = match config.kafka.clone() {
            Some(kafka) => tokio::task::spawn_blocking(move || KafkaLog::connect(kafka))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?
                .map(Arc::new)?,
            None => {
                let log_dir = config.data_dir.join("votes");
                Arc::new(SegmentLog::open(&log_dir, SegmentLogConfig::default())?)
            }
        };
        let gate = Arc::new(Gate::new(Arc::clone(&log)));
        let decisions = store.decisions().await?;
        let now = now_micros();
        for decision in &decisions {
            gate.register(decision.clone(), now)?;
        }
        let views: Arc<dyn ViewStore> = match config.redis.clone() {
            Some(redis) => {
                tokio::task::spawn_blocking(move || RedisViews::connect(&redis.url, &redis.prefix))
                    .await
                    .map_err(|e| NodeError::Internal(e.to_string()))?
                    .map(Arc::new)?
            }
            None => Arc::new(InMemoryViews::new()),
        };
        let keep_lake = config.run_engine && config.lake.is_some();
        // The engine publishes through the lake's recorder of tally changes.
        let tally_changes = keep_lake.then(|| Arc::new(LakeViews::new(Arc::clone(&views))));
        let signer = record_signer(&config.data_dir, &config.record_origin).await?;
        let coordinator = match config.redis.clone() {
            Some(redis) => Some(Arc::new(
                tokio::task::spawn_blocking(move || {
                    ReplicaCoordinator::connect(&redis.url, &redis.prefix)
                })
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))??,
            )),
            None => None,
        };
        let mut engine = None;
        let mut record = None;
        let mut anchor_task = None;
        let (anchoring, anchor_stop) = tokio::sync::watch::channel(false);
        if config.run_engine {
            let vote_record = open_record(
                &store,
                &signer,
                &config.record_origin,
                &config.record,
                log.partitions(),
            )
            .await?;
            let runtime = tokio::runtime::Handle::current();
            let engine_config = EngineConfig {
                workers: config.workers,
                state: config.engine_checkpoints.then(|| {
                    Arc::new(SqlStateStore::new(Arc::clone(&store), runtime.clone()))
                        as Arc<dyn StateStore>
                }),
                ..EngineConfig::default()
            };
            let engine_log = Arc::clone(&log);
            let engine_views = match &tally_changes {
                Some(recorder) => Arc::clone(recorder) as Arc<dyn ViewStore>,
                None => Arc::clone(&views),
            };
            let engine_record = Arc::clone(&vote_record);
            engine = Some(Arc::new(
                tokio::task::spawn_blocking(move || {
                    TallyEngine::start(
                        engine_config,
                        engine_log,
                        engine_views,
                        Some(engine_record),
                        decisions,
                    )
                })
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))??,
            ));
            record = Some(vote_record);
            let anchorer = Anchorer::new(
                &store,
                &signer,
                &config.record_origin,
                &config.anchor,
                config.anchor_target.as_ref(),
                &config.data_dir,
            );
            anchor_task = Some(tokio::spawn(anchor_loop(anchorer, anchor_stop)));
        }
        let sensors = if config.run_engine && config.sensors.enabled {
            Some(Arc::new(start_sensors(&config, &store, keep_lake).await?))
        } else {
            None
        };
        let analytics = match (&config.lake, keep_lake) {
            (Some(lake), true) => Some(Arc::new(AnalyticsService::new(
                LakeSql::new(lake.location.clone(), lake.sql),
                lake.concurrent_queries,
            ))),
            _ => None,
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
            config: config.api.clone(),
            ready: Default::default(),
            record,
            record_key: signer.verifier().encode(),
            record_origin: config.record_origin.clone(),
            salts: SaltCache::default(),
            data_dir: config.data_dir.clone(),
            replicas: coordinator
                .clone()
                .map(|coordinator| coordinator as Arc<dyn ReplicaNotices>),
            sensors,
            analytics,
        });
        let heartbeat = coordinator
            .clone()
            .map(|coordinator| tokio::spawn(replica_heartbeat(coordinator, Arc::clone(&state))));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| NodeError::Internal(format!("listening on {}: {e}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        // Ready once the views have caught up with the logs as they were at start: until then
        // a replica would serve results that miss acknowledged votes or readings.
        let log = state.gate.log();
        let vote_targets: Vec<(u32, u64)> = (0..log.partitions())
            .map(|p| log.end_offset(p).map(|end| (p, end)))
            .collect::<Result<_, _>>()?;
        let sensor_targets: Vec<(u32, u64)> = match &state.sensors {
            Some(sensors) => (0..sensors.log.partitions())
                .map(|p| sensors.log.end_offset(p).map(|end| (p, end)))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let total: u64 = vote_targets
            .iter()
            .chain(&sensor_targets)
            .map(|(_, end)| end)
            .sum();
        let replayed = move |state: &AppState| -> u64 {
            let votes: u64 = vote_targets
                .iter()
                .map(|(p, end)| state.views.frontier(*p).min(*end))
                .sum();
            let readings: u64 = state.sensors.as_ref().map_or(0, |sensors| {
                sensor_targets
                    .iter()
                    .map(|(p, end)| sensors.views.frontier(*p).min(*end))
                    .sum()
            });
            votes + readings
        };
        if replayed(&state) >= total {
            state.ready.store(true, Ordering::Release);
        } else {
            tracing::info!(
                records = total,
                "replaying the vote and sensor logs; not ready until it is done"
            );
            let catching_up = Arc::clone(&state);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let mut last_report = started;
                loop {
                    let done = replayed(&catching_up);
                    if done >= total {
                        tracing::info!(
                            records = total,
                            seconds = started.elapsed().as_secs_f64(),
                            "caught up with the logs; ready"
                        );
                        catching_up.ready.store(true, Ordering::Release);
                        return;
                    }
                    if last_report.elapsed() >= std::time::Duration::from_secs(2) {
                        tracing::info!(done, total, "replaying the logs");
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
            anchoring,
            anchor_task,
            heartbeat,
            coordinator,
            lake_stop,
            lake_task,
        })
    }

    /// Stops accepting connections, lets requests in flight finish (their appends become
    /// durable), then stops the engine and closes the log.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.state.ready.store(false, Ordering::Release);
        if let Some(heartbeat) = self.heartbeat {
            heartbeat.abort();
        }
        if let Some(coordinator) = self.coordinator.clone() {
            let _ = tokio::task::spawn_blocking(move || coordinator.leave()).await;
        }
        let _ = self.anchoring.send(true);
        if let Some(task) = self.anchor_task {
            let _ = task.await;
        }
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
