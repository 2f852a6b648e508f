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
//!
//! Sensor readings go to a second log of the same kind, partitioned by region. One trait,
//! [`EntryLog<E>`], describes a log of entries of one kind `E` ([`LogEntry`]: its
//! encoding, partition key and the record a reader gets back), and each log is written
//! once, generic over the entry: [`SegmentEntryLog<E>`] on local segment files,
//! [`KafkaEntryLog<E>`] on a Kafka topic. [`VoteLog`] and [`SensorLog`] are the names the
//! rest of Canopy reads: subtraits with no methods of their own, implemented for every
//! `EntryLog<VoteLogEntry>` / `EntryLog<SensorReading>`, so `Arc<dyn VoteLog>` and
//! `Gate<dyn VoteLog>` keep working and call the `EntryLog` methods without importing it
//! (a concrete log, such as a [`SegmentLog`], needs `EntryLog` in scope for them).
//! (Subtraits rather than `type VoteLog = dyn EntryLog<LoggedVote>`: the alias would turn
//! every `dyn VoteLog` into a bare `VoteLog` and every `L: VoteLog` bound into a longer one.)

#![deny(unsafe_code)]

mod error;
mod gate;
mod kafka;
mod segment;
mod segment_files;

use canopy_schemas::{
    DecisionClose, DecisionId, LeafVersion, LoggedVote, MAX_WEIGHT, SealedVoter, SensorReading,
    Vote, VoteLogEntry, VoterCommitment,
};

pub use error::IngestError;
pub use gate::Gate;
pub use kafka::{
    DeadLetter, DeadLetterReason, KafkaConfig, KafkaEntryLog, KafkaLog, KafkaSensorLog, LogKey,
    MAC_HEADER, OFFSET_HEADER, PARTITION_HEADER, REASON_HEADER,
};
pub use segment::{
    Recovery, Retention, SegmentEntryLog, SegmentLog, SegmentLogConfig, SensorSegmentLog,
};
pub use segment_files::segment_files;

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
    pub sealed_voter: SealedVoter,
    /// The leaf encoding of the vote's era (see [`LoggedVote`]).
    pub leaf_version: LeafVersion,
}

impl From<(Position, LoggedVote)> for LogRecord {
    fn from((position, logged): (Position, LoggedVote)) -> Self {
        Self {
            position,
            vote: logged.vote,
            commitment: logged.commitment,
            sealed_voter: logged.sealed_voter,
            leaf_version: logged.leaf_version,
        }
    }
}

impl LogRecord {
    pub fn logged(&self) -> LoggedVote {
        LoggedVote {
            vote: self.vote,
            commitment: self.commitment,
            sealed_voter: self.sealed_voter,
            leaf_version: self.leaf_version,
        }
    }
}

/// A decision's close read back from the log, with the position it was stored at: the
/// decision's votes after this position do not count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CloseRecord {
    pub position: Position,
    pub close: DecisionClose,
}

/// An entry of the vote log read back: a vote or a decision's close.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VoteLogRecord {
    Vote(LogRecord),
    Close(CloseRecord),
}

impl VoteLogRecord {
    /// The vote, if this is one.
    pub fn vote(&self) -> Option<&LogRecord> {
        match self {
            Self::Vote(record) => Some(record),
            Self::Close(_) => None,
        }
    }
}

impl From<(Position, VoteLogEntry)> for VoteLogRecord {
    fn from((position, entry): (Position, VoteLogEntry)) -> Self {
        match entry {
            VoteLogEntry::Vote(logged) => Self::Vote(LogRecord::from((position, logged))),
            VoteLogEntry::Close(close) => Self::Close(CloseRecord { position, close }),
        }
    }
}

impl Positioned for VoteLogRecord {
    fn position(&self) -> Position {
        match self {
            Self::Vote(record) => record.position,
            Self::Close(record) => record.position,
        }
    }
}

/// What [`EntryLog::append_async`] returns.
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

/// A record read back from a log: an entry and the position it was stored at.
pub trait Positioned {
    fn position(&self) -> Position;
}

impl Positioned for LogRecord {
    fn position(&self) -> Position {
        self.position
    }
}

impl Positioned for SensorRecord {
    fn position(&self) -> Position {
        self.position
    }
}

/// What an [`EntryLog`] stores: a record with a canonical encoding and a partition key.
pub trait LogEntry: Clone + PartialEq + Send + Sync + 'static {
    /// Names the log in its `log.meta`, so a vote log is never opened as a sensor log.
    const KIND: &'static str;
    /// How [`EntryLog::read`] hands an entry back: with the position it was stored at.
    type Record: From<(Position, Self)> + Positioned + Send;
    /// What decides an entry's partition (a decision id, a region name).
    type PartitionKey<'a>;
    fn partition_key(&self) -> Self::PartitionKey<'_>;
    /// The partition of `key` in a log of `partitions`; fixed, so every process agrees.
    fn partition_for_key(key: Self::PartitionKey<'_>, partitions: u32) -> u32;
    /// The Kafka message key (the partition key a producer outside Canopy would use).
    fn key(&self) -> Vec<u8>;
    fn encode_into(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Result<Self, String>;
    /// The checks an entry passes on its own, with no decision or sensor registry at hand:
    /// what a reader of a topic anyone may produce to can still refuse.
    fn validate_alone(&self) -> Result<(), String> {
        Ok(())
    }
    /// The version of the segment log format whose entries this build writes (`log.meta`).
    const LOG_FORMAT: u32 = 3;
    /// An entry of an older log format rewritten as this build writes it; `None` when it
    /// is current. Opening a log of an older format rewrites every entry through it.
    fn upgrade(_payload: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// The partition this entry goes to in a log of `partitions`.
    fn partition(&self, partitions: u32) -> u32 {
        Self::partition_for_key(self.partition_key(), partitions)
    }
}

impl LogEntry for VoteLogEntry {
    const KIND: &'static str = "vote";
    type Record = VoteLogRecord;
    type PartitionKey<'a> = DecisionId;

    fn partition_key(&self) -> DecisionId {
        self.decision()
    }

    fn partition_for_key(decision: DecisionId, partitions: u32) -> u32 {
        partition_for(decision, partitions)
    }

    fn key(&self) -> Vec<u8> {
        self.decision().0.to_be_bytes().to_vec()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        VoteLogEntry::encode_into(self, out);
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        VoteLogEntry::decode(bytes).map_err(|e| e.to_string())
    }

    /// The bounds of `validate_vote`'s weight rule, which hold whatever the decision (the
    /// democratic component's exact weight of one is the gate's to enforce: the tally does
    /// not depend on it); a close stamped after 1970.
    fn validate_alone(&self) -> Result<(), String> {
        let vote = match self {
            Self::Vote(logged) => &logged.vote,
            Self::Close(close) if close.at < 0 => {
                return Err(format!("closed at {} µs, before 1970", close.at));
            }
            Self::Close(_) => return Ok(()),
        };
        let weight = vote.weight;
        if weight.0 == 0 || weight.0 > MAX_WEIGHT {
            return Err(format!(
                "weight {} millionths, outside (0, {MAX_WEIGHT}]",
                weight.0
            ));
        }
        if vote.cast_at < 0 {
            return Err(format!("cast at {} µs, before 1970", vote.cast_at));
        }
        Ok(())
    }

    /// Format 4: the logged vote's version 2, the voter's id never in the clear (a close
    /// entry is new in it, and no older log holds one).
    const LOG_FORMAT: u32 = 4;

    fn upgrade(payload: &[u8]) -> Option<Vec<u8>> {
        LoggedVote::is_version_1(payload)
            .then(|| LoggedVote::decode(payload).ok())
            .flatten()
            .map(|logged| logged.encode().to_vec())
    }
}

impl LogEntry for SensorReading {
    const KIND: &'static str = "sensor";
    type Record = SensorRecord;
    type PartitionKey<'a> = &'a str;

    fn partition_key(&self) -> &str {
        &self.region
    }

    fn partition_for_key(region: &str, partitions: u32) -> u32 {
        partition_for_region(region, partitions)
    }

    fn key(&self) -> Vec<u8> {
        self.region.as_bytes().to_vec()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        SensorReading::encode_into(self, out);
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        SensorReading::decode(bytes).map_err(|e| e.to_string())
    }

    /// Named, and observed after 1970 (plausible values are the registry's to check, at
    /// the API: the windows take any value).
    fn validate_alone(&self) -> Result<(), String> {
        if self.sensor_id.is_empty() || self.region.is_empty() {
            return Err("a reading without a sensor or region".into());
        }
        if self.observed_at < 0 {
            return Err(format!("observed at {} ms, before 1970", self.observed_at));
        }
        Ok(())
    }
}

/// What [`EntryLog::read_entries`] answers: entries with their positions, in offset order.
pub type EntriesRead<E> = Result<Vec<(Position, E)>, IngestError>;

/// What [`EntryLog::read_batch`] answers: records in offset order, and the offset to read
/// from next, past records a log refused to hand over (a Kafka log's dead letters).
#[derive(Debug)]
pub struct ReadBatch<R> {
    pub records: Vec<R>,
    pub next: u64,
}

/// A durable, partitioned, append-only log of entries of one kind: votes partitioned by
/// decision, sensor readings by region.
pub trait EntryLog<E: LogEntry>: Send + Sync {
    /// How many partitions the log has; fixed when it is created.
    fn partitions(&self) -> u32;

    /// Appends `entries`, each to its partition, and returns their positions once all of
    /// them are durable. Entries of one partition keep their order. A batch that spans
    /// partitions is not atomic across them: on error, some may be stored, none acknowledged.
    fn append(&self, entries: &[E]) -> Result<Vec<Position>, IngestError>;

    /// [`append`](Self::append) for async callers: resolves once the entries are durable,
    /// without holding a thread while it waits.
    fn append_async<'a>(&'a self, entries: &'a [E]) -> AppendFuture<'a>;

    /// Up to `max` durable entries of `partition` from offset `from` on, in offset order,
    /// each with its position. Returns an empty batch at the end of the log.
    fn read_entries(&self, partition: u32, from: u64, max: usize) -> EntriesRead<E>;

    /// [`read_entries`](Self::read_entries) as the entry kind's records.
    fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<E::Record>, IngestError> {
        Ok(self
            .read_entries(partition, from, max)?
            .into_iter()
            .map(E::Record::from)
            .collect())
    }

    /// [`read`](Self::read), and the offset to read from next. A reader that follows the
    /// log reads with this: a batch of refused records only is empty but still moves on.
    fn read_batch(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<ReadBatch<E::Record>, IngestError> {
        let records = self.read(partition, from, max)?;
        let next = records.last().map_or(from, |r| r.position().offset + 1);
        Ok(ReadBatch { records, next })
    }

    /// The offset the next record of `partition` will get: every offset below it is durable.
    fn end_offset(&self, partition: u32) -> Result<u64, IngestError>;

    /// How many records reads of this log refused and wrote to a dead-letter topic (a log
    /// that refuses nothing: 0).
    fn dead_letters(&self) -> u64 {
        0
    }

    /// The partition of `key` (a decision id, a region name) in this log.
    fn partition_of(&self, key: E::PartitionKey<'_>) -> u32 {
        E::partition_for_key(key, self.partitions())
    }
}

/// A durable, partitioned, append-only log of votes and decisions' closes, partitioned by
/// decision: every [`EntryLog<VoteLogEntry>`] is one. Its methods are the vote-only views
/// of the entry log's.
pub trait VoteLog: EntryLog<VoteLogEntry> {
    /// Appends votes (see [`EntryLog::append`]).
    fn append_votes(&self, votes: &[LoggedVote]) -> Result<Vec<Position>, IngestError> {
        let entries: Vec<VoteLogEntry> = votes.iter().copied().map(VoteLogEntry::from).collect();
        self.append(&entries)
    }

    /// Appends votes (see [`EntryLog::append_async`]).
    fn append_votes_async<'a>(&'a self, votes: &'a [LoggedVote]) -> AppendFuture<'a> {
        let entries: Vec<VoteLogEntry> = votes.iter().copied().map(VoteLogEntry::from).collect();
        Box::pin(async move { self.append_async(&entries).await })
    }

    /// The votes among up to `max` entries of `partition` from `from` on (closes skipped).
    fn read_votes(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, IngestError> {
        Ok(self
            .read(partition, from, max)?
            .into_iter()
            .filter_map(|record| record.vote().copied())
            .collect())
    }
}

impl<L: EntryLog<VoteLogEntry> + ?Sized> VoteLog for L {}

/// A durable, partitioned, append-only log of sensor readings, partitioned by region: every
/// [`EntryLog<SensorReading>`] is one.
pub trait SensorLog: EntryLog<SensorReading> {}

impl<L: EntryLog<SensorReading> + ?Sized> SensorLog for L {}
