//! Scores sensor windows with the anomaly model (ONNX, run by ONNX Runtime through `ort`),
//! off the dataflow's hot path: a thread takes the windows the dataflow changed, builds
//! their feature vectors from the views, scores them in batches and stores the verdicts.
//!
//! ONNX Runtime is loaded at run time from the shared library a path names
//! (`ORT_DYLIB_PATH`); nothing is downloaded. `scripts/onnxruntime` takes it from PyPI's
//! `onnxruntime` wheel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

use crate::DataflowError;
use crate::sensor_views::{ModelScore, SensorViews};

/// The model's input width: f0..f4.
pub const FEATURES: usize = 5;

/// The anomaly model trained by `models/anomaly/train.py`.
pub const EMBEDDED_MODEL: &[u8] = include_bytes!("../../models/anomaly/anomaly.onnx");

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The ONNX Runtime environment, loaded once per process from `library` (every model of the
/// process shares it: ONNX Runtime has one per process).
pub fn onnx_environment(library: &Path) -> Result<&'static Environment, DataflowError> {
    ENVIRONMENT
        .get_or_init(|| {
            ort::init_from(library)
                .map_err(|e| format!("loading ONNX Runtime from {}: {e}", library.display()))?
                .with_name("canopy")
                .build()
                .map_err(|e| format!("starting ONNX Runtime: {e}"))
        })
        .as_ref()
        .map_err(|reason| DataflowError::Model(reason.clone()))
}

/// The anomaly model in an ONNX Runtime session.
pub struct AnomalyModel {
    session: Session,
    path: PathBuf,
}

impl std::fmt::Debug for AnomalyModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnomalyModel")
            .field("path", &self.path)
            .finish()
    }
}

impl AnomalyModel {
    /// Loads ONNX Runtime from `library` (once per process) and the model from `model`.
    pub fn load(library: &Path, model: &Path) -> Result<Self, DataflowError> {
        let environment = onnx_environment(library)?;
        let failed = |e: &dyn std::fmt::Display| {
            DataflowError::Model(format!("loading the model {}: {e}", model.display()))
        };
        let session = Session::builder(environment)
            .map_err(|e| failed(&e))?
            .with_intra_threads(1)
            .map_err(|e| failed(&e))?
            .commit_from_file(model)
            .map_err(|e| failed(&e))?;
        let input = session.inputs().first().map(|i| i.name().to_string());
        if input.as_deref() != Some("features") {
            return Err(failed(&format!(
                "its input is {input:?}, not \"features\" [N, {FEATURES}]"
            )));
        }
        Ok(Self {
            session,
            path: model.to_path_buf(),
        })
    }

    /// Loads the model this build carries (`models/anomaly/anomaly.onnx`).
    pub fn load_embedded(library: &Path) -> Result<Self, DataflowError> {
        let environment = onnx_environment(library)?;
        let failed = |e: &dyn std::fmt::Display| {
            DataflowError::Model(format!("loading the built-in model: {e}"))
        };
        let session = Session::builder(environment)
            .map_err(|e| failed(&e))?
            .with_intra_threads(1)
            .map_err(|e| failed(&e))?
            .commit_from_memory(EMBEDDED_MODEL)
            .map_err(|e| failed(&e))?;
        Ok(Self {
            session,
            path: PathBuf::from("<built in>"),
        })
    }

    /// The probability of a fault for each feature vector.
    pub fn score(&mut self, features: &[[f32; FEATURES]]) -> Result<Vec<f32>, DataflowError> {
        if features.is_empty() {
            return Ok(Vec::new());
        }
        let failed = |e: &dyn std::fmt::Display| DataflowError::Model(format!("scoring: {e}"));
        let flat: Vec<f32> = features.iter().flatten().copied().collect();
        let input =
            Tensor::from_array(([features.len(), FEATURES], flat)).map_err(|e| failed(&e))?;
        let outputs = self
            .session
            .run(ort::inputs!["features" => input])
            .map_err(|e| failed(&e))?;
        let probabilities = outputs
            .get("probabilities")
            .ok_or_else(|| failed(&"the model has no \"probabilities\" output"))?;
        let (shape, values) = probabilities
            .try_extract_tensor::<f32>()
            .map_err(|e| failed(&e))?;
        if shape.len() != 2 || shape[1] != 2 || values.len() != features.len() * 2 {
            return Err(failed(&format!("unexpected output shape {shape:?}")));
        }
        Ok(values.chunks_exact(2).map(|pair| pair[1]).collect())
    }
}

#[derive(Clone, Debug)]
pub struct ScorerConfig {
    /// How often the scorer looks for changed windows.
    pub interval: Duration,
    /// The most feature vectors per model call.
    pub batch: usize,
    /// P(fault) at or above which a window is flagged.
    pub threshold: f32,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(250),
            batch: 4096,
            threshold: 0.5,
        }
    }
}

/// The scoring thread.
pub struct Scorer {
    stop: Arc<AtomicBool>,
    scored: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("scored", &self.scored.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Scorer {
    pub fn start(mut model: AnomalyModel, views: Arc<SensorViews>, config: ScorerConfig) -> Self {
        views.collect_unscored();
        let stop = Arc::new(AtomicBool::new(false));
        let scored = Arc::new(AtomicU64::new(0));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let (thread_stop, thread_scored, thread_failure) =
            (Arc::clone(&stop), Arc::clone(&scored), Arc::clone(&failure));
        let thread = std::thread::Builder::new()
            .name("canopy-scorer".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Acquire) {
                    match score_pending(&mut model, &views, &config) {
                        Ok(count) => {
                            thread_scored.fetch_add(count as u64, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tracing::error!(%error, "the anomaly scorer stopped");
                            *thread_failure
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
                            return;
                        }
                    }
                    std::thread::park_timeout(config.interval);
                }
            })
            .expect("spawning the scorer thread");
        Self {
            stop,
            scored,
            failure,
            thread: Some(thread),
        }
    }

    /// Windows scored so far.
    pub fn scored(&self) -> u64 {
        self.scored.load(Ordering::Relaxed)
    }

    /// Why the scorer stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Scorer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Scores every window the dataflow changed since the last call; returns how many.
pub fn score_pending(
    model: &mut AnomalyModel,
    views: &SensorViews,
    config: &ScorerConfig,
) -> Result<usize, DataflowError> {
    let keys = views.take_unscored();
    let mut scored = 0;
    for chunk in keys.chunks(config.batch.max(1)) {
        let with_features: Vec<_> = chunk
            .iter()
            .filter_map(|key| views.model_features(key).map(|f| (*key, f)))
            .collect();
        if with_features.is_empty() {
            continue;
        }
        let vectors: Vec<[f32; FEATURES]> = with_features.iter().map(|(_, f)| *f).collect();
        let probabilities = model.score(&vectors)?;
        scored += vectors.len();
        views.set_model_scores(
            with_features
                .into_iter()
                .zip(probabilities)
                .map(|((key, features), p_fault)| {
                    (
                        key,
                        ModelScore {
                            p_fault,
                            flagged: p_fault >= config.threshold,
                            features,
                        },
                    )
                })
                .collect(),
        );
    }
    Ok(scored)
}
