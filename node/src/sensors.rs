//! Sensor data in a node: the sensor log, the features dataflow, the anomaly model's scorer
//! and the alert fan-out (subscribers and the audit trail).
//!
//! Three shapes: `canopy up` runs everything here ([`start_sensors`]); in a cluster the
//! workers run the features dataflow inside the tally engine and copy their views and
//! alerts to Redis ([`start_worker_sensors`]), and each API replica appends readings to the
//! sensor topic and reads features and alerts from Redis ([`start_replica_sensors`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use canopy_analytics::FinalWindows;
use canopy_dataflow::{
    Alert, AlertRules, AnomalyModel, Retention, Scorer, ScorerConfig, SensorEngine,
    SensorEngineConfig, SensorFeed, SensorViewRead, SensorViews,
};
use canopy_ingest::{KafkaConfig, KafkaSensorLog, SegmentLogConfig, SensorLog, SensorSegmentLog};
use canopy_schemas::SensorRegistry;
use canopy_schemas::clock::now_micros;
use canopy_serving::state::SensorService;
use canopy_serving::store::MetadataStore;

use crate::NodeError;
use crate::error::blocking;
use crate::redis_sensors::{RedisSensorMirror, RedisSensorViews, relay_alerts};

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
    /// The sensor topic on Kafka; `<votes topic>-sensors` if absent.
    pub topic: Option<String>,
}

impl SensorSettings {
    /// The sensor topic's connection: the votes topic's broker and layout, its own name.
    pub fn kafka(&self, votes: &KafkaConfig) -> KafkaConfig {
        let mut kafka = votes.clone();
        kafka.topic = self
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}-sensors", votes.topic));
        kafka
    }
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
            topic: None,
        }
    }
}

/// Opens the sensor log (`<data>/sensors`), loads the registry, starts the features
/// dataflow, the model's scorer (when ONNX Runtime is there) and the alert fan-out.
pub(crate) async fn start_sensors(
    settings: &SensorSettings,
    data_dir: &Path,
    kafka: Option<KafkaConfig>,
    store: &Arc<dyn MetadataStore>,
    keep_lake: bool,
) -> Result<SensorService, NodeError> {
    let log: Arc<dyn SensorLog> = match kafka {
        // Beside the vote topic (`<topic>-sensors` unless named), keyed by region.
        Some(kafka) => connect_sensor_topic(settings.kafka(&kafka)).await?,
        None => Arc::new(SensorSegmentLog::open(
            data_dir.join("sensors"),
            SegmentLogConfig::default(),
        )?),
    };
    let registry = load_registry(store).await?;
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
            audit_alert(&store, &runtime, &alert);
            let _ = alerts.send(alert);
        });
    }
    // The scorer first: it must see every window the engine publishes, replay included.
    let (scorer, scorer_unavailable) = start_scorer(settings, &views).await?;
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
        views: Arc::clone(&views) as Arc<dyn SensorViewRead>,
        local_views: Some(views),
        engine: Some(engine),
        scorer,
        scorer_unavailable,
        alerts,
        closing: tokio::sync::watch::Sender::new(false),
        final_windows,
    })
}

async fn connect_sensor_topic(kafka: KafkaConfig) -> Result<Arc<dyn SensorLog>, NodeError> {
    Ok(Arc::new(
        blocking(move || KafkaSensorLog::connect(kafka)).await?,
    ))
}

async fn load_registry(store: &Arc<dyn MetadataStore>) -> Result<SensorRegistry, NodeError> {
    let mut registry = SensorRegistry::new();
    for sensor in store.sensors().await? {
        registry.insert(sensor)?;
    }
    Ok(registry)
}

/// The anomaly model's scorer over `views`, when ONNX Runtime is there; else why not.
async fn start_scorer(
    settings: &SensorSettings,
    views: &Arc<SensorViews>,
) -> Result<(Option<Scorer>, Option<String>), NodeError> {
    let library = settings
        .onnxruntime
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
    Ok(match library {
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
                        Arc::clone(views),
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
    })
}

/// Logs an alert and writes it to the audit trail (without waiting for the write).
fn audit_alert(store: &Arc<dyn MetadataStore>, runtime: &tokio::runtime::Handle, alert: &Alert) {
    tracing::warn!(region = %alert.region, metric = %alert.metric, kind = %alert.kind, value = alert.value, "sensor alert");
    let detail = serde_json::to_string(alert).unwrap_or_default();
    let store = Arc::clone(store);
    runtime.spawn(async move {
        if let Err(error) = store
            .append_audit("system", "sensor_alert", &detail, now_micros())
            .await
        {
            tracing::error!(%error, "could not write a sensor alert to the audit trail");
        }
    });
}

/// What a worker process runs for sensor data: the feed its tally engine runs the features
/// dataflow from, and the scorer over this process's views.
pub struct WorkerSensors {
    pub feed: SensorFeed,
    /// Kept for as long as the worker runs: it scores the windows of this process's regions.
    pub scorer: Option<Scorer>,
}

impl std::fmt::Debug for WorkerSensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSensors").finish_non_exhaustive()
    }
}

/// Connects a worker process to the sensor topic and Redis: its views (the windows of the
/// regions its workers own) are copied to Redis, its alerts published to every replica and
/// written to the audit trail, its model scores the windows it owns. The features dataflow
/// itself runs in the tally engine, from the returned feed.
///
/// A start replays the sensor topic from offset 0; alerts of the part the previous run had
/// already published (below its frontiers in Redis) are not sent again.
pub(crate) async fn start_worker_sensors(
    settings: &SensorSettings,
    kafka: &KafkaConfig,
    (redis_url, redis_prefix): (&str, &str),
    store: &Arc<dyn MetadataStore>,
    first_process: bool,
) -> Result<WorkerSensors, NodeError> {
    let log = connect_sensor_topic(settings.kafka(kafka)).await?;
    let (url, prefix, retention) = (
        redis_url.to_string(),
        redis_prefix.to_string(),
        settings.retention,
    );
    let mirror = blocking(move || {
        let mirror = RedisSensorMirror::connect(&url, &prefix, retention)?;
        // A failure recorded by the previous run is what this start recovers from.
        if first_process {
            mirror.clear_failure()?;
        }
        Ok::<_, canopy_dataflow::DataflowError>(mirror)
    })
    .await?;
    let mirror = Arc::new(mirror);
    let replayed = Arc::clone(&mirror);
    let replayed_until = blocking(move || replayed.frontiers()).await?;
    let views = Arc::new(SensorViews::new(
        log.partitions(),
        settings.engine.windows.clone(),
        settings.retention,
        settings.alert_rules.clone(),
    ));
    views.mirror_to(Arc::clone(&mirror) as Arc<dyn canopy_dataflow::SensorMirror>);
    {
        let (store, runtime) = (Arc::clone(store), tokio::runtime::Handle::current());
        let (mirror, replayed_until) = (Arc::clone(&mirror), replayed_until.clone());
        views.on_alert(move |alert| {
            // The replay ends an epoch exactly at the previous run's frontier, so an alert
            // as of an offset below it was sent by that run.
            let seen = replayed_until
                .get(&alert.as_of.partition)
                .copied()
                .unwrap_or(0);
            if alert.as_of.offset < seen {
                return;
            }
            audit_alert(&store, &runtime, &alert);
            mirror.publish_alert(&alert);
        });
    }
    let (scorer, scorer_unavailable) = start_scorer(settings, &views).await?;
    let status = Arc::clone(&mirror);
    blocking(move || status.model_unavailable(scorer_unavailable.as_deref())).await?;
    Ok(WorkerSensors {
        feed: SensorFeed {
            log,
            views,
            windows: settings.engine.windows.clone(),
            max_epoch_records: settings.engine.max_epoch_records,
            replayed_until,
        },
        scorer,
    })
}

/// How often a replica re-reads the sensor registry (a sensor registered through another
/// replica is refused here as unknown for at most this long).
const REGISTRY_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// An API replica's sensor service: readings are validated here and appended to the sensor
/// topic; features come from Redis, where the workers copy them; alerts from the workers'
/// pub/sub channel, relayed to this replica's SSE subscribers.
pub(crate) async fn start_replica_sensors(
    settings: &SensorSettings,
    kafka: &KafkaConfig,
    (redis_url, redis_prefix): (&str, &str),
    store: &Arc<dyn MetadataStore>,
) -> Result<Arc<SensorService>, NodeError> {
    let log = connect_sensor_topic(settings.kafka(kafka)).await?;
    let registry = load_registry(store).await?;
    let (url, prefix, windows, partitions) = (
        redis_url.to_string(),
        redis_prefix.to_string(),
        settings.engine.windows.clone(),
        log.partitions(),
    );
    let views =
        blocking(move || RedisSensorViews::connect(&url, &prefix, windows, partitions)).await?;
    let (alerts, _) = tokio::sync::broadcast::channel(1024);
    let closing = tokio::sync::watch::Sender::new(false);
    let (url, prefix, relayed, stopped) = (
        redis_url.to_string(),
        redis_prefix.to_string(),
        alerts.clone(),
        closing.subscribe(),
    );
    // The relay thread ends once `closing` is set (shutdown).
    blocking(move || relay_alerts(&url, &prefix, relayed, stopped)).await?;
    let service = Arc::new(SensorService {
        log,
        registry: std::sync::RwLock::new(registry),
        views: Arc::new(views),
        local_views: None,
        engine: None,
        scorer: None,
        scorer_unavailable: None,
        alerts,
        closing,
        final_windows: None,
    });
    tokio::spawn(refresh_registry(
        Arc::clone(store),
        Arc::downgrade(&service),
    ));
    Ok(service)
}

/// Re-reads the registry now and then, so a sensor registered through another replica is
/// taken here too; ends with the service (or its node's shutdown).
async fn refresh_registry(store: Arc<dyn MetadataStore>, service: std::sync::Weak<SensorService>) {
    let mut closing = match service.upgrade() {
        Some(service) => service.closing.subscribe(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REGISTRY_REFRESH) => {}
            _ = closing.wait_for(|closed| *closed) => return,
        }
        let Some(service) = service.upgrade() else {
            return;
        };
        match load_registry(&store).await {
            Ok(registry) => {
                *service
                    .registry
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
            }
            Err(error) => tracing::warn!(%error, "re-reading the sensor registry failed"),
        }
    }
}
