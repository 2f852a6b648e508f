use thiserror::Error;

/// What can go wrong in an analysis.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The impact statement does not hold together (a plan for an option the decision
    /// lacks, shares that do not sum to 1, a negative cost).
    #[error("the impact statement is not valid: {0}")]
    InvalidStatement(String),
    #[error("reading the lake: {0}")]
    Lake(String),
    /// The consensus model could not be loaded or run.
    #[error("the consensus model: {0}")]
    Model(String),
    #[error("no model version {0} is registered")]
    UnknownVersion(String),
    /// Too many analyses are waiting already.
    #[error("too many analyses are waiting; retry shortly")]
    Busy,
}

impl AgentError {
    /// The stable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidStatement(_) => "invalid_impact_statement",
            Self::Lake(_) => "lake_unavailable",
            Self::Model(_) => "model_unavailable",
            Self::UnknownVersion(_) => "unknown_model_version",
            Self::Busy => "busy",
        }
    }
}
