//! Model versions and their rollout: one current version answers, a candidate may take a
//! share of the predictions beside it (10 % by default), each of its answers compared with
//! the current one's, and it is rolled back by itself once its error rate or its p95
//! latency passes the policy's limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use canopy_schemas::clock::now_micros;
use serde::Serialize;

use crate::AgentError;
use crate::prediction::{ConsensusModel, Prediction, PredictionInputs};
use crate::stats::{CallFigures, CallStats};

/// When a candidate is rolled back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RolloutPolicy {
    /// The share of predictions the candidate makes, 0 to 1.
    pub candidate_share: f64,
    /// The candidate's error rate above which it is rolled back…
    pub max_error_rate: f64,
    /// …or its p95 latency, in milliseconds…
    pub max_p95_ms: f64,
    /// …once it has made at least this many calls.
    pub min_calls: u64,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            candidate_share: 0.1,
            max_error_rate: 0.05,
            max_p95_ms: 100.0,
            min_calls: 20,
        }
    }
}

/// A version's part and figures.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VersionStatus {
    pub version: String,
    /// current, candidate, rolled_back or registered.
    pub role: &'static str,
    pub share: f64,
    #[serde(flatten)]
    pub figures: CallFigures,
    /// Mean absolute difference of its probabilities from the current version's, over the
    /// predictions it made as candidate.
    pub mean_divergence: Option<f64>,
    pub rolled_back_because: Option<String>,
}

#[derive(Debug)]
struct Version {
    model: Arc<ConsensusModel>,
    stats: CallStats,
    divergence: (f64, u64),
    rolled_back_because: Option<String>,
}

#[derive(Debug, Default)]
struct Roles {
    current: Option<String>,
    candidate: Option<String>,
}

/// The registered versions.
#[derive(Debug)]
pub struct ModelRegistry {
    versions: Mutex<BTreeMap<String, Version>>,
    roles: Mutex<Roles>,
    policy: RolloutPolicy,
    predictions: AtomicU64,
}

/// A candidate taken out of the rollout, for the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rollback {
    pub version: String,
    pub reason: String,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ModelRegistry {
    pub fn new(policy: RolloutPolicy) -> Self {
        Self {
            versions: Mutex::default(),
            roles: Mutex::default(),
            policy,
            predictions: AtomicU64::new(0),
        }
    }

    pub fn policy(&self) -> RolloutPolicy {
        self.policy
    }

    /// Adds a version (replacing one of the same name); the first becomes current.
    pub fn register(&self, model: ConsensusModel) {
        let version = model.version().to_string();
        lock(&self.versions).insert(
            version.clone(),
            Version {
                model: Arc::new(model),
                stats: CallStats::default(),
                divergence: (0.0, 0),
                rolled_back_because: None,
            },
        );
        let mut roles = lock(&self.roles);
        if roles.current.is_none() {
            roles.current = Some(version);
        }
    }

    fn known(&self, version: &str) -> Result<(), AgentError> {
        if lock(&self.versions).contains_key(version) {
            Ok(())
        } else {
            Err(AgentError::UnknownVersion(version.to_string()))
        }
    }

    pub fn set_current(&self, version: &str) -> Result<(), AgentError> {
        self.known(version)?;
        let mut roles = lock(&self.roles);
        if roles.candidate.as_deref() == Some(version) {
            roles.candidate = None;
        }
        roles.current = Some(version.to_string());
        Ok(())
    }

    /// Makes `version` the candidate (its earlier rollback forgotten), or none.
    pub fn set_candidate(&self, version: Option<&str>) -> Result<(), AgentError> {
        if let Some(version) = version {
            self.known(version)?;
            if let Some(v) = lock(&self.versions).get_mut(version) {
                v.rolled_back_because = None;
                v.stats = CallStats::default();
                v.divergence = (0.0, 0);
            }
        }
        lock(&self.roles).candidate = version.map(str::to_string);
        Ok(())
    }

    pub fn current(&self) -> Option<String> {
        lock(&self.roles).current.clone()
    }

    pub fn candidate(&self) -> Option<String> {
        lock(&self.roles).candidate.clone()
    }

    /// Whether the `n`th prediction (from 0) goes to the candidate: exactly
    /// ⌊n·share⌋ of the first n do, spread evenly.
    fn candidate_takes(&self, n: u64) -> bool {
        let share = self.policy.candidate_share.clamp(0.0, 1.0);
        ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
    }

    fn model(&self, version: &str) -> Option<Arc<ConsensusModel>> {
        lock(&self.versions)
            .get(version)
            .map(|v| Arc::clone(&v.model))
    }

    fn timed(
        &self,
        model: &ConsensusModel,
        inputs: &PredictionInputs<'_>,
    ) -> Result<Prediction, AgentError> {
        let started = Instant::now();
        let result = model.predict(inputs);
        let latency = started.elapsed().as_secs_f64() * 1e3;
        let error = result.as_ref().err().map(ToString::to_string);
        if let Some(v) = lock(&self.versions).get_mut(model.version()) {
            v.stats.record(latency, error, now_micros());
        }
        metrics::histogram!("canopy_model_latency_seconds", "version" => model.version().to_string())
            .record(latency / 1e3);
        result
    }

    /// A prediction by the current version, or by the candidate for its share (compared
    /// with the current's, and replaced by it when the candidate fails). Returns the
    /// prediction and, when this call rolled the candidate back, why.
    pub fn predict(
        &self,
        inputs: &PredictionInputs<'_>,
    ) -> Result<(Prediction, Option<Rollback>), AgentError> {
        let (current, candidate) = {
            let roles = lock(&self.roles);
            (roles.current.clone(), roles.candidate.clone())
        };
        let current = current
            .and_then(|v| self.model(&v))
            .ok_or_else(|| AgentError::Model("no model version is registered".into()))?;
        let n = self.predictions.fetch_add(1, Ordering::Relaxed);
        let Some(candidate) = candidate
            .filter(|_| self.candidate_takes(n))
            .and_then(|v| self.model(&v))
        else {
            return Ok((self.timed(&current, inputs)?, None));
        };
        let tried = self.timed(&candidate, inputs);
        let baseline = self.timed(&current, inputs)?;
        if let Ok(prediction) = &tried {
            let difference = prediction
                .probabilities
                .iter()
                .zip(&baseline.probabilities)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / baseline.probabilities.len().max(1) as f64;
            if let Some(v) = lock(&self.versions).get_mut(candidate.version()) {
                v.divergence.0 += difference;
                v.divergence.1 += 1;
            }
        }
        let rollback = self.check_rollback(candidate.version());
        Ok((tried.unwrap_or(baseline), rollback))
    }

    /// Rolls `version` back if it is still the candidate and its figures pass the policy.
    fn check_rollback(&self, version: &str) -> Option<Rollback> {
        let reason = {
            let versions = lock(&self.versions);
            let stats = &versions.get(version)?.stats;
            if stats.calls < self.policy.min_calls {
                return None;
            }
            let p95 = stats.quantile(0.95).unwrap_or(0.0);
            if stats.error_rate() > self.policy.max_error_rate {
                format!(
                    "error rate {:.3} over {} calls is above {:.3}",
                    stats.error_rate(),
                    stats.calls,
                    self.policy.max_error_rate
                )
            } else if p95 > self.policy.max_p95_ms {
                format!(
                    "p95 latency {p95:.2} ms is above {:.2} ms",
                    self.policy.max_p95_ms
                )
            } else {
                return None;
            }
        };
        let mut roles = lock(&self.roles);
        if roles.candidate.as_deref() != Some(version) {
            return None;
        }
        roles.candidate = None;
        drop(roles);
        if let Some(v) = lock(&self.versions).get_mut(version) {
            v.rolled_back_because = Some(reason.clone());
        }
        tracing::warn!(version, %reason, "model candidate rolled back");
        metrics::counter!("canopy_model_rollbacks_total").increment(1);
        Some(Rollback {
            version: version.to_string(),
            reason,
        })
    }

    /// Every version's part and figures.
    pub fn status(&self) -> Vec<VersionStatus> {
        let roles = lock(&self.roles);
        let versions = lock(&self.versions);
        let share = self.policy.candidate_share.clamp(0.0, 1.0);
        versions
            .iter()
            .map(|(name, v)| {
                let (role, share) = if roles.current.as_deref() == Some(name) {
                    (
                        "current",
                        if roles.candidate.is_some() {
                            1.0 - share
                        } else {
                            1.0
                        },
                    )
                } else if roles.candidate.as_deref() == Some(name) {
                    ("candidate", share)
                } else if v.rolled_back_because.is_some() {
                    ("rolled_back", 0.0)
                } else {
                    ("registered", 0.0)
                };
                VersionStatus {
                    version: name.clone(),
                    role,
                    share,
                    figures: v.stats.figures(),
                    mean_divergence: (v.divergence.1 > 0)
                        .then(|| v.divergence.0 / v.divergence.1 as f64),
                    rolled_back_because: v.rolled_back_because.clone(),
                }
            })
            .collect()
    }
}
