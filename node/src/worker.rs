//! Canopy as a cluster: `canopy worker` processes run the dataflow as one timely computation
//! over a Kafka topic, keep their checkpoints in PostgreSQL and publish results into Redis;
//! `canopy serve` replicas (a [`crate::Node`] without an engine) take votes and read results.
//!
//! ```text
//!  serve replicas ─append─▶ Kafka topic (partition = f(decision)) ─read p ≡ w (mod W)─▶
//!  worker processes (timely cluster, W workers in all) ─publish─▶ Redis views ◀─read─ serve
//!        │ engine checkpoints (state + offsets), record checkpoints, decisions
//!        ▼
//!   PostgreSQL (shared by every process)
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use canopy_dataflow::{
    ClusterConfig, DecisionDirectory, EngineConfig, EngineSnapshot, StateChunk, StateStore,
    TallyEngine, ViewStore,
};
use canopy_ingest::{KafkaConfig, KafkaLog, Position, VoteLog};
use canopy_schemas::{Decision, DecisionClose, DecisionId};

use crate::NodeError;
use crate::data_dir::make_private;
use crate::lake::{LakeFeed, LakeSettings, lake_loop};
use crate::probes::{WorkerProbes, measure_lag, serve_probes};
use crate::record::{
    Anchorer, RecordSettings, anchor_loop, open_record, open_tile_store, record_signer,
};
use crate::redis::RedisViews;
use crate::sensors::{SensorSettings, WorkerSensors, start_worker_sensors};
use canopy_analytics::{FinalWindows, LakeShare, LakeViews};
use canopy_serving::store::{DecisionCloseRow, MetadataStore};

/// Runs `future` to completion from a thread that is not one of the runtime's (a timely
/// worker), or from one that is (start-up), without blocking the runtime itself.
fn block_on<T: Send>(
    runtime: &tokio::runtime::Handle,
    future: impl Future<Output = T> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .map_err(|_| "the store call panicked".to_string())
    })
}

/// Engine checkpoints in the metadata store (table `engine_checkpoints`).
pub struct SqlStateStore {
    store: Arc<dyn MetadataStore>,
    runtime: tokio::runtime::Handle,
}

impl SqlStateStore {
    pub fn new(store: Arc<dyn MetadataStore>, runtime: tokio::runtime::Handle) -> Self {
        Self { store, runtime }
    }
}

impl StateStore for SqlStateStore {
    fn load(&self) -> Result<Option<EngineSnapshot>, String> {
        block_on(&self.runtime, self.store.load_engine_snapshot())?.map_err(|e| e.to_string())
    }

    fn write(&self, chunk: StateChunk) -> Result<(), String> {
        let now = canopy_schemas::clock::unix_now() as i64;
        block_on(&self.runtime, async {
            self.store.write_engine_chunk(&chunk, now).await?;
            // After the chunk's own transaction: if it completed a full checkpoint, the
            // older parts go. The last worker to write sees every chunk committed.
            if chunk.base.is_some() {
                self.store.compact_engine_checkpoints().await?;
            }
            Ok::<_, canopy_serving::ServingError>(())
        })?
        .map_err(|e| e.to_string())
    }
}

/// Decisions from the metadata store, for a worker that meets a vote of a decision an API
/// replica registered after the worker started.
pub struct StoreDirectory {
    store: Arc<dyn MetadataStore>,
    runtime: tokio::runtime::Handle,
}

impl StoreDirectory {
    pub fn new(store: Arc<dyn MetadataStore>, runtime: tokio::runtime::Handle) -> Self {
        Self { store, runtime }
    }
}

impl DecisionDirectory for StoreDirectory {
    fn lookup(&self, decision: DecisionId) -> Option<Decision> {
        match block_on(&self.runtime, self.store.decisions()) {
            Ok(Ok(decisions)) => decisions.into_iter().find(|d| d.id == decision),
            Ok(Err(error)) => {
                tracing::warn!(%decision, %error, "looking up a decision failed");
                None
            }
            Err(error) => {
                tracing::warn!(%decision, %error, "looking up a decision failed");
                None
            }
        }
    }

    /// Records the close where the engine met it; the closer records it too, so a failure
    /// here (logged) loses nothing but a second witness.
    fn note_close(&self, close: &DecisionClose, position: Position) {
        let row = DecisionCloseRow {
            decision_id: close.decision,
            position,
            kind: close.kind,
            closed_at: close.at,
            closed_by: (close.by != 0).then(|| uuid::Uuid::from_u128(close.by)),
        };
        let recorded = block_on(&self.runtime, self.store.record_close(&row));
        if !matches!(recorded, Ok(Ok(_))) {
            tracing::warn!(decision = %close.decision, ?position, "recording a close the engine read failed");
        }
    }
}

/// Where a cluster's results go.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    /// `redis://host:port/db`
    pub url: String,
    /// Every key starts with this, so clusters (and test runs) can share a server.
    pub prefix: String,
}

#[derive(Clone)]
pub struct WorkerConfig {
    /// Holds the record key (`keys/record-ed25519.seed`, the same file on every process) and
    /// the anchor journal.
    pub data_dir: PathBuf,
    /// The shared metadata store (PostgreSQL).
    pub database_url: String,
    pub kafka: KafkaConfig,
    pub redis: RedisTarget,
    /// Timely worker threads in this process.
    pub threads: usize,
    /// This process's place in the cluster; alone if absent.
    pub cluster: Option<ClusterConfig>,
    pub checkpoint_interval: Duration,
    /// Every this many engine checkpoints, a full one that lets older ones be deleted.
    pub full_checkpoint_every: u64,
    /// The vote record: checkpoint origin, schedule, anchoring.
    pub record: RecordSettings,
    /// How often decisions are re-read from the store (parameter changes before opening).
    pub decision_refresh: Duration,
    /// Sensor data: the features dataflow runs in the same timely computation over the
    /// sensor topic (unless `enabled` is false), its views and alerts go to Redis.
    pub sensors: SensorSettings,
    /// The analytics lake, shared by every process (a folder on shared storage or a bucket):
    /// this process writes its share of it (`LakeShare`).
    pub lake: Option<LakeSettings>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (port 0: any free port); none
    /// without it.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl WorkerConfig {
    pub fn new(
        data_dir: impl Into<PathBuf>,
        database_url: impl Into<String>,
        kafka: KafkaConfig,
        redis: RedisTarget,
    ) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: database_url.into(),
            kafka,
            redis,
            threads: 2,
            cluster: None,
            checkpoint_interval: Duration::from_secs(2),
            full_checkpoint_every: EngineConfig::default().full_checkpoint_every,
            record: RecordSettings::default(),
            decision_refresh: Duration::from_secs(1),
            sensors: SensorSettings::default(),
            lake: None,
            metrics_listen: None,
        }
    }
}

/// One process of the dataflow cluster.
pub struct WorkerNode {
    engine: Option<Arc<TallyEngine>>,
    /// Holds the anomaly scorer of this process's regions while the worker runs.
    _sensors: Option<WorkerSensors>,
    views: Arc<dyn ViewStore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    metrics_address: Option<std::net::SocketAddr>,
}

impl WorkerNode {
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address
    }

    /// Connects to the store, the topic and Redis, resumes from the latest engine checkpoint
    /// and starts the dataflow. Process 0 (or a worker alone) also runs the anchoring loop.
    pub async fn start(config: WorkerConfig) -> Result<Self, NodeError> {
        canopy_serving::metrics::install();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        // Up before the peers connect: an orchestrator sees the process alive, not ready.
        let probes = Arc::new(WorkerProbes::default());
        let metrics_address = match config.metrics_listen {
            Some(listen) => {
                let (bound, task) =
                    serve_probes(listen, Arc::clone(&probes), stopped.clone()).await?;
                tracing::info!(address = %bound, "metrics, health and readiness served");
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        make_private(&config.data_dir)?;
        let store: Arc<dyn MetadataStore> =
            Arc::new(canopy_serving::store::PostgresStore::connect(&config.database_url).await?);
        store.migrate().await?;
        let kafka = config.kafka.clone();
        let log: Arc<dyn VoteLog> = tokio::task::spawn_blocking(move || KafkaLog::connect(kafka))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))?
            .map(Arc::new)?;
        let redis = config.redis.clone();
        let first_process = config.cluster.as_ref().is_none_or(|c| c.process == 0);
        let views: Arc<dyn ViewStore> = tokio::task::spawn_blocking(move || {
            let views = RedisViews::connect(&redis.url, &redis.prefix)?;
            // A failure recorded by the previous run is what this start recovers from.
            if first_process {
                views.clear_failure()?;
            }
            Ok::<_, canopy_dataflow::DataflowError>(views)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
        .map(Arc::new)?;
        let signer = record_signer(&config.data_dir, &config.record.origin).await?;
        let tiles = open_tile_store(&config.record, &config.data_dir)?;
        let record = open_record(&store, &tiles, &signer, &config.record, log.partitions()).await?;
        let runtime = tokio::runtime::Handle::current();
        let decisions = store.decisions().await?;
        let sensors = match config.sensors.enabled {
            true => Some(
                start_worker_sensors(
                    &config.sensors,
                    &config.kafka,
                    (&config.redis.url, &config.redis.prefix),
                    &store,
                    first_process,
                )
                .await?,
            ),
            false => None,
        };
        let engine_config = EngineConfig {
            workers: config.threads,
            cluster: config.cluster.clone(),
            state: Some(Arc::new(SqlStateStore::new(
                Arc::clone(&store),
                runtime.clone(),
            ))),
            checkpoint_interval: config.checkpoint_interval,
            full_checkpoint_every: config.full_checkpoint_every,
            directory: Some(Arc::new(StoreDirectory::new(
                Arc::clone(&store),
                runtime.clone(),
            ))),
            sensors: sensors.as_ref().map(|sensors| sensors.feed.clone()),
            ..EngineConfig::default()
        };
        // The lake's recorder of tally changes sits in front of the views, so this process
        // writes the changes its workers publish; the feed copies its partitions of the logs.
        let lake_changes = config
            .lake
            .as_ref()
            .map(|_| Arc::new(LakeViews::new(Arc::clone(&views))));
        let lake_feed = match &config.lake {
            Some(settings) => Some(LakeFeed::new(
                LakeSettings {
                    share: lake_share(&config),
                    ..settings.clone()
                },
                Arc::clone(&store),
                Arc::clone(&log),
                // The sensor log and the final windows of this process's workers (its views
                // hold only the regions they own); attached before the engine starts, so the
                // lake sees every window, replay included.
                sensors
                    .as_ref()
                    .map(|sensors| Arc::clone(&sensors.feed.log)),
                lake_changes.clone(),
                sensors
                    .as_ref()
                    .map(|sensors| FinalWindows::attach(&sensors.feed.views)),
            )?),
            None => None,
        };
        let engine_views = match &lake_changes {
            Some(recorder) => Arc::clone(recorder) as Arc<dyn ViewStore>,
            None => Arc::clone(&views),
        };
        // Starting a cluster process waits for its peers to connect: off the runtime.
        let lag_log = Arc::clone(&log);
        let engine = tokio::task::spawn_blocking(move || {
            TallyEngine::start(engine_config, log, engine_views, Some(record), decisions)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
        let engine = Arc::new(engine);
        probes.started(Arc::clone(&views), Arc::clone(&engine));
        let share = lake_share(&config);
        tasks.push(tokio::spawn(measure_lag(
            lag_log,
            Arc::clone(&views),
            config.kafka.topic.clone(),
            move |partition| share.owns(partition),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(refresh_decisions(
            Arc::clone(&store),
            Arc::clone(&engine),
            config.decision_refresh,
            stopped.clone(),
        )));
        if let Some(feed) = lake_feed {
            tasks.push(tokio::spawn(lake_loop(feed, stopped.clone())));
        }
        if first_process {
            let anchorer = Anchorer::new(&store, &signer, &config.record, &config.data_dir);
            tasks.push(tokio::spawn(anchor_loop(anchorer, stopped)));
        }
        Ok(Self {
            engine: Some(engine),
            _sensors: sensors,
            views,
            tasks,
            stop,
            metrics_address,
        })
    }

    /// Why the dataflow stopped, if it did (a worker failed, a peer process died, a write
    /// to Redis or the store failed for good).
    pub fn failure(&self) -> Option<String> {
        if let Some(reason) = self.views.failure() {
            return Some(reason);
        }
        self.engine
            .as_ref()
            .filter(|engine| engine.has_stopped())
            .map(|_| "a dataflow worker stopped (a peer process may have died)".to_string())
    }

    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // The tasks are done, so this is the last reference.
        if let Some(engine) = self.engine.take().and_then(Arc::into_inner) {
            tokio::task::spawn_blocking(move || engine.shutdown())
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))??;
        }
        Ok(())
    }
}

/// This process's share of the lake: the partitions its workers read.
fn lake_share(config: &WorkerConfig) -> LakeShare {
    match &config.cluster {
        Some(cluster) => {
            LakeShare::process(cluster.process, cluster.addresses.len(), config.threads)
        }
        None => LakeShare::Alone,
    }
}

/// Re-reads decisions now and then, so a parameter change made through an API replica
/// (allowed until the decision opens) reaches the workers.
async fn refresh_decisions(
    store: Arc<dyn MetadataStore>,
    engine: Arc<TallyEngine>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut known: std::collections::HashMap<DecisionId, Decision> = Default::default();
    loop {
        match store.decisions().await {
            Ok(decisions) => {
                for decision in decisions {
                    if known.get(&decision.id) != Some(&decision) {
                        known.insert(decision.id, decision.clone());
                        engine.register(decision);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "re-reading decisions failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
