//! The analysis agents and the consensus prediction model.
//!
//! ```text
//!  statement   the proposal: a decision and the impact statement submitted with it
//!  evidence    what the agents read from the lake (sensor windows, weather, land use,
//!              indicators), per region, cached for a short while
//!  analysers   the Agent trait and the four agents: environmental-impact,
//!              economic-analysis, social-justice, technical-verification
//!  ballots     an agent's assessment as a ballot of the decision's method
//!  prediction  the consensus prediction model's features and its ONNX sessions
//!  registry    model versions, the candidate's share of analyses, automatic rollback
//!  service     runs the agents and the model, keeps each agent's status
//! ```

mod analysers;
mod ballots;
mod error;
mod evidence;
mod prediction;
mod registry;
mod service;
mod statement;
mod stats;

pub use analysers::{
    Agent, AgentId, Assessment, EconomicAnalysis, EnvironmentalImpact, Finding, InputContract,
    MetricImpact, OptionScore, SocialJustice, TechnicalVerification, all_agents, annuity_factor,
    guideline,
};
pub use ballots::ballot_for;
pub use error::AgentError;
pub use evidence::{
    EvidenceRow, IndicatorFacts, LandUseFacts, MetricFacts, RegionEvidence, WeatherFacts,
};
pub use prediction::{
    BUILT_IN_MODELS, ConsensusModel, FEATURES, Prediction, PredictionInputs, current_leader,
    features_of, normalised,
};
pub use registry::Rollback;
pub use registry::{ModelRegistry, RolloutPolicy, VersionStatus};
pub use service::{
    AgentService, AgentServiceConfig, AgentStatus, Analysis, Consensus, consensus_of,
};
pub use statement::{
    Dependency, Distribution, ImpactStatement, IncomeGroup, LandUseChange, MetricEffect,
    OptionPlan, Permit, PermitStatus, Proposal,
};
pub use stats::CallFigures;
