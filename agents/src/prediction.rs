//! The consensus prediction model: for an open decision, the probability that each option
//! is the winner at close, from the votes so far. Gradient-boosted trees trained by
//! `models/consensus/train.py`, exported to ONNX and run by ONNX Runtime (as the anomaly
//! model is). The features are the training script's, computed here from the tally.

use std::path::Path;
use std::sync::Mutex;

use canopy_dataflow::Tally;
use canopy_schemas::{Component, Decision, SHARE_SCALE, WEIGHT_SCALE};
use ort::session::Session;
use ort::value::Tensor;
use serde::Serialize;

use crate::AgentError;

/// The model's input width: f0..f13 (`models/consensus/README.md`).
pub const FEATURES: usize = 14;

/// The versions this build carries: (version, ONNX bytes).
pub const BUILT_IN_MODELS: [(&str, &[u8]); 2] = [
    (
        "consensus-1",
        include_bytes!("../../models/consensus/consensus-1.onnx"),
    ),
    (
        "consensus-2",
        include_bytes!("../../models/consensus/consensus-2.onnx"),
    ),
];

/// What the prediction is made from.
#[derive(Clone, Copy, Debug)]
pub struct PredictionInputs<'a> {
    pub decision: &'a Decision,
    pub tally: Option<&'a Tally>,
    /// Microseconds since the Unix epoch.
    pub now: i64,
    /// The agents' mean score per option (empty: none assessed it).
    pub agent_scores: &'a [f64],
}

impl PredictionInputs<'_> {
    /// The fraction of the voting window gone, within [0, 1].
    pub fn elapsed(&self) -> f64 {
        let span = (self.decision.closes_at - self.decision.opens_at).max(1) as f64;
        ((self.now - self.decision.opens_at) as f64 / span).clamp(0.0, 1.0)
    }
}

/// One feature row per option, in option order.
pub fn features_of(inputs: &PredictionInputs<'_>) -> Vec<[f32; FEATURES]> {
    let options = inputs.decision.options.len();
    let composite: Vec<f64> = (0..options)
        .map(|o| {
            inputs
                .tally
                .and_then(|t| t.composite_ppb.get(o))
                .map_or(0.0, |ppb| *ppb as f64 / SHARE_SCALE as f64)
        })
        .collect();
    let voters = inputs.tally.map_or(0, |t| t.turnout) as f64;
    let weights = inputs
        .decision
        .weights
        .0
        .map(|w| f64::from(w) / f64::from(WEIGHT_SCALE));
    (0..options)
        .map(|option| {
            let share = |component: Component| {
                inputs
                    .tally
                    .and_then(|t| {
                        t.cells
                            .iter()
                            .find(|c| usize::from(c.option) == option && c.component == component)
                    })
                    .map_or(0.0, |c| c.share_ppb as f64 / SHARE_SCALE as f64)
            };
            let others = composite
                .iter()
                .enumerate()
                .filter(|(o, _)| *o != option)
                .map(|(_, c)| *c)
                .fold(f64::NEG_INFINITY, f64::max);
            let margin = if others.is_finite() {
                composite[option] - others
            } else {
                0.0
            };
            [
                inputs.elapsed(),
                composite[option],
                margin,
                share(Component::Democratic),
                share(Component::Expert),
                share(Component::Community),
                share(Component::EnvironmentalData),
                voters.ln_1p(),
                options as f64,
                inputs.agent_scores.get(option).copied().unwrap_or(0.0),
                weights[0],
                weights[1],
                weights[2],
                weights[3],
            ]
            .map(|f| f as f32)
        })
        .collect()
}

/// The predicted outcome of a decision.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Prediction {
    pub model_version: String,
    /// P(option wins at close), per option in option order; they sum to 1.
    pub probabilities: Vec<f64>,
    /// The fraction of the window gone when it was made.
    pub elapsed: f64,
    /// The option the current tally leads with (the naive forecast).
    pub current_leader: Option<u16>,
}

/// One version of the model in an ONNX Runtime session.
pub struct ConsensusModel {
    version: String,
    // `Session::run` takes `&mut`; a run is tens of microseconds, so one lock serves.
    session: Mutex<Session>,
}

impl std::fmt::Debug for ConsensusModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsensusModel")
            .field("version", &self.version)
            .finish()
    }
}

impl ConsensusModel {
    /// Loads `bytes` as `version`, ONNX Runtime from `library` (once per process).
    pub fn from_bytes(library: &Path, version: &str, bytes: &[u8]) -> Result<Self, AgentError> {
        let environment = canopy_dataflow::onnx_environment(library)
            .map_err(|e| AgentError::Model(e.to_string()))?;
        let failed =
            |e: &dyn std::fmt::Display| AgentError::Model(format!("loading {version}: {e}"));
        let session = Session::builder(environment)
            .map_err(|e| failed(&e))?
            .with_intra_threads(1)
            .map_err(|e| failed(&e))?
            .commit_from_memory(bytes)
            .map_err(|e| failed(&e))?;
        if session.inputs().first().map(|i| i.name()) != Some("features") {
            return Err(failed(&"its input is not \"features\""));
        }
        Ok(Self {
            version: version.to_string(),
            session: Mutex::new(session),
        })
    }

    /// Loads the file `path` as `version`.
    pub fn from_file(library: &Path, version: &str, path: &Path) -> Result<Self, AgentError> {
        let bytes = std::fs::read(path)
            .map_err(|e| AgentError::Model(format!("reading {}: {e}", path.display())))?;
        Self::from_bytes(library, version, &bytes)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// P(wins) of each row, as the model gives it (not normalised).
    pub fn raw(&self, rows: &[[f32; FEATURES]]) -> Result<Vec<f64>, AgentError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let failed =
            |e: &dyn std::fmt::Display| AgentError::Model(format!("running {}: {e}", self.version));
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let input = Tensor::from_array(([rows.len(), FEATURES], flat)).map_err(|e| failed(&e))?;
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session
            .run(ort::inputs!["features" => input])
            .map_err(|e| failed(&e))?;
        let probabilities = outputs
            .get("probabilities")
            .ok_or_else(|| failed(&"no \"probabilities\" output"))?;
        let (shape, values) = probabilities
            .try_extract_tensor::<f32>()
            .map_err(|e| failed(&e))?;
        if shape.len() != 2 || shape[1] != 2 || values.len() != rows.len() * 2 {
            return Err(failed(&format!("unexpected output shape {shape:?}")));
        }
        Ok(values
            .chunks_exact(2)
            .map(|pair| f64::from(pair[1]))
            .collect())
    }

    /// The prediction for `inputs`: the rows' P(wins), normalised to sum to 1.
    pub fn predict(&self, inputs: &PredictionInputs<'_>) -> Result<Prediction, AgentError> {
        let raw = self.raw(&features_of(inputs))?;
        Ok(Prediction {
            model_version: self.version.clone(),
            probabilities: normalised(&raw),
            elapsed: inputs.elapsed(),
            current_leader: current_leader(inputs.tally),
        })
    }
}

/// `raw` scaled to sum to 1 (uniform when it sums to nothing).
pub fn normalised(raw: &[f64]) -> Vec<f64> {
    let total: f64 = raw.iter().sum();
    if total > 0.0 && total.is_finite() {
        raw.iter().map(|p| p / total).collect()
    } else {
        vec![1.0 / raw.len().max(1) as f64; raw.len()]
    }
}

/// The option with the highest composite now (the lowest index on a tie); none before the
/// first vote.
pub fn current_leader(tally: Option<&Tally>) -> Option<u16> {
    let tally = tally.filter(|t| t.turnout > 0)?;
    let mut best = 0;
    for (index, score) in tally.composite_ppb.iter().enumerate() {
        if *score > tally.composite_ppb[best] {
            best = index;
        }
    }
    Some(best as u16)
}
