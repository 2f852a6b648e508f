use std::path::PathBuf;

use canopy_schemas::{DecisionId, SchemaError};

/// Everything that can go wrong putting votes into the log or reading them back.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the vote log is corrupt in partition {partition}, segment {segment}, at byte {byte} (offset {offset}): {reason}; refusing to serve it"
    )]
    Corrupt {
        partition: u32,
        segment: PathBuf,
        byte: u64,
        offset: u64,
        reason: String,
    },
    #[error(
        "offset {offset} of partition {partition} was removed by retention; the earliest kept is {earliest}"
    )]
    Trimmed {
        partition: u32,
        offset: u64,
        earliest: u64,
    },
    #[error("partition {partition} does not exist (the log has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("the log at {path} is not usable: {reason}")]
    BadLog { path: PathBuf, reason: String },
    #[error("the log stopped accepting appends after a write failure: {reason}")]
    Failed { reason: String },
    #[error("the log is shut down")]
    Closed,
    #[error("vote {index} names decision {decision}, which is not known")]
    UnknownDecision { index: usize, decision: DecisionId },
    #[error("vote {index} is refused: {source}")]
    InvalidVote { index: usize, source: SchemaError },
    #[error("decision {decision} is refused: {source}")]
    InvalidDecision {
        decision: DecisionId,
        source: SchemaError,
    },
    #[error("decision {decision} has opened; its options, weights and method can no longer change")]
    DecisionFrozen { decision: DecisionId },
    #[error("vote {index} is refused: decision {decision} is closed")]
    DecisionClosed { index: usize, decision: DecisionId },
    #[error("the Kafka log failed: {reason}")]
    Kafka { reason: String },
    #[error("the Kafka topic {topic} is not usable: {reason}")]
    KafkaTopic { topic: String, reason: String },
}

impl IngestError {
    /// Refuses a partition a log of `partitions` partitions does not have.
    pub(crate) fn unless_partition_exists(partition: u32, partitions: u32) -> Result<(), Self> {
        if partition >= partitions {
            return Err(Self::NoSuchPartition {
                partition,
                partitions,
            });
        }
        Ok(())
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IngestError {
        let path = path.into();
        move |source| IngestError::Io { path, source }
    }

    /// Whether trying again later may succeed (a broker that is away), as opposed to a log
    /// that is wrong (corruption, a bad record).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Kafka { .. })
    }

    /// A stable, machine-readable code (for a refused vote: the schema error's code).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "log_io",
            Self::Corrupt { .. } => "log_corrupt",
            Self::Trimmed { .. } => "log_trimmed",
            Self::NoSuchPartition { .. } => "no_such_partition",
            Self::BadLog { .. } => "bad_log",
            Self::Failed { .. } => "log_failed",
            Self::Closed => "log_closed",
            Self::UnknownDecision { .. } => "unknown_decision",
            Self::InvalidVote { source, .. } | Self::InvalidDecision { source, .. } => {
                source.code()
            }
            Self::DecisionFrozen { .. } => "decision_frozen",
            Self::DecisionClosed { .. } => "decision_closed",
            Self::Kafka { .. } => "kafka",
            Self::KafkaTopic { .. } => "kafka_topic",
        }
    }
}
