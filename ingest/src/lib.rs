//! Canopy's vote log: the source of truth for every vote.
//!
//! ```text
//!  appenders ──▶ Gate (validate against the decision) ──▶ VoteLog::append
//!                                                           │ partition = f(decision_id)
//!                      ┌────────────────────────────────────┼──────────────────────┐
//!                      ▼                                    ▼                      ▼
//!                 partition 0                          partition 1     …      partition N-1
//!        queue ─▶ writer thread: write frames, one fdatasync per group, wake the appenders
//!                 segments: 00000000000000000000.seg, 00000000000000065536.seg, …
//! ```
//!
//! A vote's place in the log is its [`Position`] (partition, offset). An append returns only
//! once its bytes are durable; many concurrent appends share one fsync (group commit).
//! On open, a torn tail (the unsynced end of the last segment after a crash) is wiped; a bad
//! frame anywhere else is corruption, reported as [`IngestError::Corrupt`] and never served.

#![deny(unsafe_code)]

mod error;
mod gate;
mod kafka;
mod segment;

use canopy_schemas::{DecisionId, LoggedVote, SensorReading, Vote, VoterCommitment};

pub use error::IngestError;
pub use gate::Gate;
pub use kafka::{KafkaConfig, KafkaEntryLog, KafkaLog, KafkaSensorLog};
pub use segment::{
    EntryLog, LogEntry, Recovery, Retention, SegmentLog, SegmentLogConfig, SensorSegmentLog,
};

/// Where a record sits in the log: the partition, and its offset within it (0, 1, 2, ...).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// A vote read back from the log, with the position it was stored at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogRecord {
    pub position: Position,
    pub vote: Vote,
    /// The voter as the Merkle record shows them.
    pub commitment: VoterCommitment,
}

impl From<(Position, LoggedVote)> for LogRecord {
    fn from((position, logged): (Position, LoggedVote)) -> Self {
        Self {
            position,
            vote: logged.vote,
            commitment: logged.commitment,
        }
    }
}

impl LogRecord {
    pub fn logged(&self) -> LoggedVote {
        LoggedVote {
            vote: self.vote,
            commitment: self.commitment,
        }
    }
}

/// What [`VoteLog::append_async`] returns.
pub type AppendFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Position>, IngestError>> + Send + 'a>,
>;

/// The partition a decision's votes go to. All votes of one decision share a partition, so
/// the log orders them totally; the function is fixed so every process and the Kafka
/// producer agree on it.
pub fn partition_for(decision: DecisionId, partitions: u32) -> u32 {
    let folded = (decision.0 as u64) ^ ((decision.0 >> 64) as u64);
    (folded % u64::from(partitions.max(1))) as u32
}

/// A durable, partitioned, append-only log of votes.
pub trait VoteLog: Send + Sync {
    /// How many partitions the log has; fixed when it is created.
    fn partitions(&self) -> u32;

    /// Appends `votes`, each to its decision's partition, and returns their positions once
    /// all of them are durable. Votes of one partition keep their order. A batch that spans
    /// partitions is not atomic across them: on error, some may be stored, none acknowledged.
    fn append(&self, votes: &[LoggedVote]) -> Result<Vec<Position>, IngestError>;

    /// [`append`](Self::append) for async callers: resolves once the votes are durable,
    /// without holding a thread while it waits.
    fn append_async<'a>(&'a self, votes: &'a [LoggedVote]) -> AppendFuture<'a>;

    /// Up to `max` durable records of `partition` from offset `from` on, in offset order.
    /// Returns an empty batch at the end of the log.
    fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<LogRecord>, IngestError>;

    /// The offset the next record of `partition` will get: every offset below it is durable.
    fn end_offset(&self, partition: u32) -> Result<u64, IngestError>;

    /// The partition of `decision` in this log.
    fn partition_of(&self, decision: DecisionId) -> u32 {
        partition_for(decision, self.partitions())
    }
}

/// The partition a region's readings go to: all readings of a region share one, so the log
/// orders them and each region's event-time watermark is a function of the log alone. Fixed
/// (FNV-1a over the name) so every process and a Kafka producer keyed by region agree.
pub fn partition_for_region(region: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in region.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// A sensor reading read back from the log, with the position it was stored at.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SensorRecord {
    pub position: Position,
    pub reading: SensorReading,
}

impl From<(Position, SensorReading)> for SensorRecord {
    fn from((position, reading): (Position, SensorReading)) -> Self {
        Self { position, reading }
    }
}

/// A durable, partitioned, append-only log of sensor readings, partitioned by region.
pub trait SensorLog: Send + Sync {
    /// How many partitions the log has; fixed when it is created.
    fn partitions(&self) -> u32;

    /// Appends `readings`, each to its region's partition, and resolves to their positions
    /// once all of them are durable.
    fn append_async<'a>(&'a self, readings: &'a [SensorReading]) -> AppendFuture<'a>;

    /// Up to `max` durable readings of `partition` from offset `from` on, in offset order.
    fn read(&self, partition: u32, from: u64, max: usize)
    -> Result<Vec<SensorRecord>, IngestError>;

    /// The offset the next reading of `partition` will get.
    fn end_offset(&self, partition: u32) -> Result<u64, IngestError>;

    /// The partition of `region` in this log.
    fn partition_of(&self, region: &str) -> u32 {
        partition_for_region(region, self.partitions())
    }
}
