use std::time::Duration;

use canopy_ingest::{IngestError, Position};

/// What can go wrong running the dataflow or reading its views.
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    #[error("results did not reach position {position:?} within {waited:?}")]
    Timeout {
        position: Position,
        waited: Duration,
    },
    #[error("the dataflow stopped: {0}")]
    Stopped(String),
    #[error("could not start the dataflow workers: {0}")]
    Start(String),
    #[error("a dataflow worker panicked: {0}")]
    WorkerPanicked(String),
    #[error("the view store is unavailable: {0}")]
    ViewsUnavailable(String),
    #[error("an engine checkpoint is unreadable: {0}")]
    CorruptState(String),
    #[error("the engine checkpoint store failed: {0}")]
    State(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the anomaly model could not be loaded or run: {0}")]
    Model(String),
    #[error("the result statement or its leaves do not check: {0}")]
    BadResult(String),
    #[error("reading the vote log failed: {0}")]
    Log(#[from] IngestError),
}

impl DataflowError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "results_timeout",
            Self::Stopped(_) => "dataflow_stopped",
            Self::Start(_) => "dataflow_start",
            Self::WorkerPanicked(_) => "dataflow_panicked",
            Self::ViewsUnavailable(_) => "views_unavailable",
            Self::CorruptState(_) => "corrupt_state",
            Self::State(_) => "state_store",
            Self::Config(_) => "invalid_config",
            Self::Model(_) => "model_unavailable",
            Self::BadResult(_) => "bad_result",
            Self::Log(error) => error.code(),
        }
    }
}
