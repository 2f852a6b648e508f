//! Sensor data in a node: the sensor log, the features dataflow, the anomaly model's scorer
//! and the alert fan-out (subscribers and the audit trail).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use canopy_analytics::FinalWindows;
use canopy_dataflow::{
    AlertRules, AnomalyModel, Retention, Scorer, ScorerConfig, SensorEngine, SensorEngineConfig,
    SensorViews,
};
use canopy_ingest::{KafkaConfig, KafkaSensorLog, SegmentLogConfig, SensorLog, SensorSegmentLog};
use canopy_schemas::SensorRegistry;
use canopy_schemas::clock::now_micros;
use canopy_serving::state::SensorService;
use canopy_serving::store::MetadataStore;

use crate::NodeError;

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
        // Beside the vote topic: `<topic>-sensors`, keyed by region.
        Some(mut kafka) => {
            kafka.topic = format!("{}-sensors", kafka.topic);
            tokio::task::spawn_blocking(move || KafkaSensorLog::connect(kafka))
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?
                .map(Arc::new)?
        }
        None => Arc::new(SensorSegmentLog::open(
            data_dir.join("sensors"),
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
