//! Runs the agents and the consensus model for the API, and keeps what their status shows.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use canopy_analytics::LakeQuery;
use canopy_dataflow::Tally;
use canopy_schemas::Decision;
use serde::Serialize;

use crate::AgentError;
use crate::analysers::{Agent, AgentId, Assessment, InputContract, all_agents};
use crate::evidence::RegionEvidence;
use crate::prediction::{BUILT_IN_MODELS, ConsensusModel, Prediction, PredictionInputs};
use crate::registry::{ModelRegistry, Rollback, RolloutPolicy, VersionStatus};
use crate::statement::Proposal;
use crate::stats::{CallFigures, CallStats};

#[derive(Clone, Debug)]
pub struct AgentServiceConfig {
    /// How long a region's evidence is reused before the lake is read again.
    pub evidence_ttl: Duration,
    /// Analyses running at once beyond which more are refused (`busy`).
    pub max_running: usize,
    /// ONNX Runtime's shared library; without it there are no predictions.
    pub onnx_library: Option<PathBuf>,
    pub policy: RolloutPolicy,
    /// The version answering (default: the newest built-in one's predecessor, consensus-1).
    pub current: Option<String>,
    /// The version taking the policy's share beside it (default: consensus-2).
    pub candidate: Option<String>,
    /// More versions from files: (version, path).
    pub extra_models: Vec<(String, PathBuf)>,
}

impl Default for AgentServiceConfig {
    fn default() -> Self {
        Self {
            evidence_ttl: Duration::from_secs(30),
            max_running: 256,
            onnx_library: None,
            policy: RolloutPolicy::default(),
            current: Some("consensus-1".into()),
            candidate: Some("consensus-2".into()),
            extra_models: Vec::new(),
        }
    }
}

/// What the agents agree on: the mean score of each option over the four, and the option
/// the mean favours.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Consensus {
    pub mean_scores: Vec<f64>,
    pub recommended: u16,
    /// Agents whose own recommendation is that option.
    pub agreeing: u32,
}

/// One run of the agents (and the model) over a proposal.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Analysis {
    #[schema(value_type = uuid::Uuid)]
    pub decision_id: canopy_schemas::DecisionId,
    pub region: String,
    pub assessments: Vec<Assessment>,
    pub consensus: Consensus,
    pub prediction: Option<Prediction>,
    /// Why there is no prediction (no ONNX Runtime, a model that failed).
    pub prediction_unavailable: Option<String>,
    /// Every analyser and model version used: `agent@version`, `consensus-N`.
    pub versions: Vec<String>,
    /// When the region's evidence was read, microseconds since the Unix epoch.
    pub evidence_read_at: i64,
    #[serde(skip)]
    pub rollback: Option<Rollback>,
}

/// An agent's status.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AgentStatus {
    pub agent: AgentId,
    pub version: &'static str,
    /// ready, or degraded with why (no lake: assessments without evidence).
    pub state: String,
    /// Analyses running now (all agents run in each).
    pub queue: usize,
    pub contract: InputContract,
    #[serde(flatten)]
    pub figures: CallFigures,
    /// The consensus model's versions.
    pub models: Vec<VersionStatus>,
}

type EvidenceSlot = Arc<tokio::sync::Mutex<Option<(Instant, Arc<RegionEvidence>)>>>;

pub struct AgentService {
    agents: Vec<Box<dyn Agent>>,
    lake: Option<Arc<dyn LakeQuery>>,
    config: AgentServiceConfig,
    evidence: Mutex<HashMap<String, EvidenceSlot>>,
    registry: Option<ModelRegistry>,
    model_unavailable: Option<String>,
    stats: Mutex<BTreeMap<AgentId, CallStats>>,
    running: AtomicUsize,
    /// Each decision's latest consensus scores: what live predictions weigh the agents by.
    latest_scores: Mutex<HashMap<canopy_schemas::DecisionId, Vec<f64>>>,
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService").finish_non_exhaustive()
    }
}

/// Holds a place among the running analyses.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AgentService {
    /// The agents over `lake` (none: assessments without evidence), and the consensus model
    /// when ONNX Runtime loads.
    pub fn new(config: AgentServiceConfig, lake: Option<Arc<dyn LakeQuery>>) -> Self {
        let (registry, model_unavailable) = match Self::registry_of(&config) {
            Ok(registry) => (Some(registry), None),
            // Without ONNX Runtime at all, the sensors' warning has said so already.
            Err(error) if config.onnx_library.is_none() => {
                tracing::debug!(%error, "the consensus model is unavailable");
                (None, Some(error.to_string()))
            }
            Err(error) => {
                tracing::warn!(%error, "the consensus model is unavailable; analyses go on without predictions");
                (None, Some(error.to_string()))
            }
        };
        Self {
            agents: all_agents(),
            lake,
            config,
            evidence: Mutex::default(),
            registry,
            model_unavailable,
            stats: Mutex::default(),
            running: AtomicUsize::new(0),
            latest_scores: Mutex::default(),
        }
    }

    fn registry_of(config: &AgentServiceConfig) -> Result<ModelRegistry, AgentError> {
        let library = config.onnx_library.as_deref().ok_or_else(|| {
            AgentError::Model("no ONNX Runtime library (set ORT_DYLIB_PATH)".into())
        })?;
        let registry = ModelRegistry::new(config.policy);
        for (version, bytes) in BUILT_IN_MODELS {
            registry.register(ConsensusModel::from_bytes(library, version, bytes)?);
        }
        for (version, path) in &config.extra_models {
            registry.register(ConsensusModel::from_file(library, version, path)?);
        }
        if let Some(current) = &config.current {
            registry.set_current(current)?;
        }
        registry.set_candidate(config.candidate.as_deref())?;
        Ok(registry)
    }

    pub fn registry(&self) -> Option<&ModelRegistry> {
        self.registry.as_ref()
    }

    pub fn agent_ids(&self) -> Vec<AgentId> {
        self.agents.iter().map(|a| a.id()).collect()
    }

    /// `region`'s evidence, read at most once per TTL, and once for all who wait on one read.
    pub async fn evidence(&self, region: &str, now: i64) -> Arc<RegionEvidence> {
        let Some(lake) = &self.lake else {
            return Arc::new(RegionEvidence::unavailable(
                region,
                "this node keeps no lake",
                now,
            ));
        };
        let slot = Arc::clone(
            self.evidence
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(region.to_string())
                .or_default(),
        );
        let arrived = Instant::now();
        let mut slot = slot.lock().await;
        // A read that began after this caller arrived is as fresh as one of its own: callers
        // queued behind a read share it, so a burst costs one read even without a TTL.
        if let Some((began, evidence)) = slot.as_ref()
            && (began.elapsed() < self.config.evidence_ttl || *began >= arrived)
        {
            return Arc::clone(evidence);
        }
        let began = Instant::now();
        let evidence = Arc::new(RegionEvidence::read(lake.as_ref(), region, now).await);
        *slot = Some((began, Arc::clone(&evidence)));
        evidence
    }

    /// Forgets every region's evidence (after an import, say).
    pub fn forget_evidence(&self) {
        self.evidence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Runs the four agents over `proposal` (with the vote so far) and the model.
    pub async fn analyze(
        &self,
        proposal: &Proposal,
        tally: Option<&Tally>,
        now: i64,
    ) -> Result<Analysis, AgentError> {
        if self.running.fetch_add(1, Ordering::Relaxed) >= self.config.max_running {
            self.running.fetch_sub(1, Ordering::Relaxed);
            return Err(AgentError::Busy);
        }
        let _running = Running(&self.running);
        let evidence = self.evidence(&proposal.decision.region, now).await;
        let mut assessments = Vec::with_capacity(self.agents.len());
        for agent in &self.agents {
            let started = Instant::now();
            let assessment = agent.assess(proposal, &evidence, tally);
            let latency = started.elapsed().as_secs_f64() * 1e3;
            self.stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(agent.id())
                .or_default()
                .record(latency, None, now);
            assessments.push(assessment);
        }
        let consensus = consensus_of(&assessments, usize::from(proposal.options()));
        self.latest_scores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(proposal.decision.id, consensus.mean_scores.clone());
        let (prediction, prediction_unavailable, rollback) =
            self.predict(&proposal.decision, tally, &consensus.mean_scores, now);
        let mut versions: Vec<String> = assessments
            .iter()
            .map(|a| format!("{}@{}", a.agent.as_str(), a.version))
            .collect();
        versions.extend(prediction.as_ref().map(|p| p.model_version.clone()));
        Ok(Analysis {
            decision_id: proposal.decision.id,
            region: proposal.decision.region.clone(),
            assessments,
            consensus,
            prediction,
            prediction_unavailable,
            versions,
            evidence_read_at: evidence.read_at,
            rollback,
        })
    }

    /// The model's prediction for `decision` now, or why there is none.
    pub fn predict(
        &self,
        decision: &Decision,
        tally: Option<&Tally>,
        agent_scores: &[f64],
        now: i64,
    ) -> (Option<Prediction>, Option<String>, Option<Rollback>) {
        let Some(registry) = &self.registry else {
            return (None, self.model_unavailable.clone(), None);
        };
        let inputs = PredictionInputs {
            decision,
            tally,
            now,
            agent_scores,
        };
        match registry.predict(&inputs) {
            Ok((prediction, rollback)) => (Some(prediction), None, rollback),
            Err(error) => (None, Some(error.to_string()), None),
        }
    }

    /// The prediction for `decision` now, weighing the agents' latest consensus on it (none
    /// before its first analysis): what the live push sends with results.
    pub fn live_prediction(
        &self,
        decision: &Decision,
        tally: Option<&Tally>,
        now: i64,
    ) -> Option<Prediction> {
        let scores = self
            .latest_scores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&decision.id)
            .cloned()
            .unwrap_or_default();
        self.predict(decision, tally, &scores, now).0
    }

    /// `agent`'s status, or `None` for an id no agent has.
    pub fn status(&self, agent: AgentId) -> Option<AgentStatus> {
        let analyser = self.agents.iter().find(|a| a.id() == agent)?;
        let figures = self
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&agent)
            .map(CallStats::figures)
            .unwrap_or_default();
        let contract = analyser.contract();
        let state = if self.lake.is_none() && !contract.lake_tables.is_empty() {
            "degraded: this node keeps no lake, so assessments have no evidence".to_string()
        } else {
            "ready".to_string()
        };
        Some(AgentStatus {
            agent,
            version: analyser.version(),
            state,
            queue: self.running.load(Ordering::Relaxed),
            contract,
            figures,
            models: self
                .registry
                .as_ref()
                .map(ModelRegistry::status)
                .unwrap_or_default(),
        })
    }
}

/// The mean score per option over `assessments`, its best option (the lowest index on a
/// tie) and how many agents recommended that option themselves.
pub fn consensus_of(assessments: &[Assessment], options: usize) -> Consensus {
    let mut mean_scores = vec![0.0; options];
    for assessment in assessments {
        for score in &assessment.scores {
            if let Some(slot) = mean_scores.get_mut(usize::from(score.option)) {
                *slot += score.score / assessments.len() as f64;
            }
        }
    }
    let mut recommended = 0;
    for (index, score) in mean_scores.iter().enumerate() {
        if *score > mean_scores[recommended] {
            recommended = index;
        }
    }
    let recommended = recommended as u16;
    Consensus {
        agreeing: assessments
            .iter()
            .filter(|a| a.recommended == recommended)
            .count() as u32,
        mean_scores,
        recommended,
    }
}
