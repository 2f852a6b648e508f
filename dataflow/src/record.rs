//! The vote record: one append-only RFC 6962 Merkle log per decision, grown by the dataflow
//! one complete epoch at a time, with signed checkpoints cut on a schedule.
//!
//! ```text
//!  record leaves (decision, offset, voter, vote id, leaf hash)
//!    └─ exchange by decision ─ per complete epoch, in log order: skip repeated
//!       (voter, vote id), append the leaf ─▶ VoteRecord (shared with the API)
//!                                              │ ≥ `checkpoint_every` new leaves at an epoch's
//!                                              │ end, or leaves waiting ≥ `checkpoint_interval`
//!                                              ▼
//!                              signed checkpoint + the log position it covers ─▶ CheckpointSink
//! ```
//!
//! A decision's leaves are exactly the first deliveries of its votes, so the record agrees
//! with the tally: a checkpoint cut after epoch e covers the position the tally of epoch e
//! is published at. Everything is a function of the log (the voter commitment is stored in
//! it), so replaying the log rebuilds the same trees; checkpoints already stored are
//! re-checked against the rebuilt tree rather than cut again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use canopy_chain::{ChainError, Checkpoint, Hash, MerkleLog, NoteSigner};
use canopy_ingest::{Position, partition_for};
use canopy_schemas::DecisionId;
use foldhash::quality::FixedState;
use serde::{Deserialize, Serialize};

/// One vote as the record needs it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct RecordLeaf {
    pub offset: u64,
    pub voter: u128,
    pub vote_id: u128,
    pub leaf: Hash,
}

#[derive(Clone, Debug)]
pub struct RecordConfig {
    /// Cut a checkpoint at the first epoch end after this many new leaves...
    pub checkpoint_every: u64,
    /// ...or once a leaf has waited this long for one, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Checkpoint origins are `<origin_prefix>/decision/<uuid>`.
    pub origin_prefix: String,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(1),
            origin_prefix: "canopy.local".to_string(),
        }
    }
}

/// A checkpoint the record cut, with what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutCheckpoint {
    pub decision: DecisionId,
    pub size: u64,
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// Every vote of the decision below this position is in the tree, none above: the
    /// position the decision's tally was published at in the same epoch.
    pub as_of: Position,
}

/// Where cut checkpoints go (the metadata store, in a served node).
pub trait CheckpointSink: Send + Sync {
    fn store(&self, checkpoint: CutCheckpoint);
}

/// A stored checkpoint the replayed record must reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub decision: DecisionId,
    pub size: u64,
    pub root: Hash,
}

struct DecisionRecord {
    tree: MerkleLog,
    index_of: HashMap<Hash, u64, FixedState>,
    /// Each (voter, vote id)'s first delivery: its log offset. Later ones are skipped.
    first_offset: HashMap<(u128, u128), u64, FixedState>,
    /// The log end (of the decision's partition) the tree reflects.
    covered_end: u64,
    last_cut: u64,
    /// When the oldest leaf not yet in a checkpoint arrived.
    waiting_since: Option<Instant>,
    /// The latest stored checkpoint, until the replayed tree has reached and matched it.
    resume: Option<(u64, Hash)>,
}

impl DecisionRecord {
    fn new() -> Self {
        Self {
            tree: MerkleLog::new(),
            index_of: HashMap::with_hasher(FixedState::with_seed(0)),
            first_offset: HashMap::with_hasher(FixedState::with_seed(0)),
            covered_end: 0,
            last_cut: 0,
            waiting_since: None,
            resume: None,
        }
    }
}

type Shared = Arc<Mutex<DecisionRecord>>;

/// Every decision's Merkle log; grown by the dataflow, read by the API.
pub struct VoteRecord {
    decisions: RwLock<HashMap<DecisionId, Shared>>,
    signer: NoteSigner,
    config: RecordConfig,
    partitions: u32,
    sink: Arc<dyn CheckpointSink>,
    failure: Mutex<Option<String>>,
}

/// What the record's readers ask of it: where a leaf is, the roots and the proofs. The API
/// holds the record through this face only; the engine grows it behind it.
pub trait RecordReader: Send + Sync {
    /// Where the leaf with this hash is in `decision`'s log.
    fn index_of(&self, decision: DecisionId, leaf: &Hash) -> Option<u64>;
    fn root_at(&self, decision: DecisionId, size: u64) -> Result<Hash, ChainError>;
    fn inclusion_proof(
        &self,
        decision: DecisionId,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>, ChainError>;
    fn consistency_proof(
        &self,
        decision: DecisionId,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, ChainError>;

    /// Where in the log the vote `vote_id` of `voter` was first delivered, once the record
    /// took it: the vote its leaf stands for (later deliveries count nowhere).
    fn first_delivery(&self, decision: DecisionId, voter: u128, vote_id: u128) -> Option<u64>;
}

impl std::fmt::Debug for VoteRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteRecord").finish_non_exhaustive()
    }
}

impl VoteRecord {
    /// `partitions` is the vote log's partition count (a decision's partition is a function
    /// of its id and this).
    pub fn new(
        signer: NoteSigner,
        config: RecordConfig,
        partitions: u32,
        sink: Arc<dyn CheckpointSink>,
    ) -> Self {
        Self {
            decisions: RwLock::new(HashMap::new()),
            signer,
            config,
            partitions,
            sink,
            failure: Mutex::new(None),
        }
    }

    /// The origin line of `decision`'s checkpoints.
    pub fn origin(&self, decision: DecisionId) -> String {
        format!("{}/decision/{}", self.config.origin_prefix, decision)
    }

    /// Before the engine starts: the latest checkpoint stored for a decision. The replay
    /// must rebuild a tree with the same root at that size, and cuts nothing at or below it.
    pub fn resume_from(&self, stored: StoredCheckpoint) {
        let record = self.entry(stored.decision);
        let mut record = lock(&record);
        record.last_cut = record.last_cut.max(stored.size);
        record.resume = Some((stored.size, stored.root));
    }

    /// Set when a replayed tree disagrees with a stored checkpoint: the log and the record
    /// diverged, and nothing the record says can be trusted.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// The number of leaves in `decision`'s log now (0 for a decision without votes).
    pub fn size(&self, decision: DecisionId) -> u64 {
        self.with(decision, |r| r.tree.size()).unwrap_or(0)
    }

    /// Cuts a checkpoint for every decision whose oldest uncovered leaf has waited
    /// `checkpoint_interval` by `now`. The engine calls it a few times a second.
    pub fn cut_due(&self, now: Instant) {
        let records: Vec<(DecisionId, Shared)> = self
            .decisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, record)| (*id, Arc::clone(record)))
            .collect();
        for (decision, record) in records {
            let mut record = lock(&record);
            let due = record.waiting_since.is_some_and(|since| {
                now.saturating_duration_since(since) >= self.config.checkpoint_interval
            });
            if due {
                self.cut(decision, &mut record);
            }
        }
    }

    /// Appends one complete epoch of a decision's leaves, in log order, and cuts a
    /// checkpoint if enough have gathered.
    fn append_epoch<'a>(
        &self,
        decision: DecisionId,
        leaves: impl Iterator<Item = &'a RecordLeaf>,
        end: u64,
        now: Instant,
    ) {
        let record = self.entry(decision);
        let mut record = lock(&record);
        let before = record.tree.size();
        for leaf in leaves {
            match record.first_offset.entry((leaf.voter, leaf.vote_id)) {
                std::collections::hash_map::Entry::Occupied(_) => continue,
                std::collections::hash_map::Entry::Vacant(first) => first.insert(leaf.offset),
            };
            let index = record.tree.append_hash(leaf.leaf);
            record.index_of.entry(leaf.leaf).or_insert(index);
        }
        record.covered_end = record.covered_end.max(end);
        if let Some((size, root)) = record.resume
            && record.tree.size() >= size
        {
            match record.tree.root_at(size) {
                Ok(rebuilt) if rebuilt == root => record.resume = None,
                _ => {
                    *lock(&self.failure) = Some(format!(
                        "the vote log no longer gives decision {decision} the stored \
                         checkpoint at size {size}"
                    ));
                    record.resume = None;
                }
            }
        }
        if record.tree.size() == before || record.tree.size() <= record.last_cut {
            return;
        }
        if record.tree.size() - record.last_cut >= self.config.checkpoint_every {
            self.cut(decision, &mut record);
        } else if record.waiting_since.is_none() {
            record.waiting_since = Some(now);
        }
    }

    fn cut(&self, decision: DecisionId, record: &mut DecisionRecord) {
        let size = record.tree.size();
        record.waiting_since = None;
        if size <= record.last_cut || record.resume.is_some() {
            return;
        }
        let root = record.tree.root();
        let note = Checkpoint {
            origin: self.origin(decision),
            size,
            root,
        }
        .sign(&self.signer);
        record.last_cut = size;
        self.sink.store(CutCheckpoint {
            decision,
            size,
            root,
            note,
            as_of: Position {
                partition: partition_for(decision, self.partitions),
                offset: record.covered_end,
            },
        });
    }

    fn entry(&self, decision: DecisionId) -> Shared {
        if let Some(record) = self
            .decisions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&decision)
        {
            return Arc::clone(record);
        }
        Arc::clone(
            self.decisions
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(decision)
                .or_insert_with(|| Arc::new(Mutex::new(DecisionRecord::new()))),
        )
    }

    fn with<T>(&self, decision: DecisionId, f: impl FnOnce(&DecisionRecord) -> T) -> Option<T> {
        let record = Arc::clone(
            self.decisions
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&decision)?,
        );
        let record = lock(&record);
        Some(f(&record))
    }
}

impl RecordReader for VoteRecord {
    fn first_delivery(&self, decision: DecisionId, voter: u128, vote_id: u128) -> Option<u64> {
        self.with(decision, |r| r.first_offset.get(&(voter, vote_id)).copied())
            .flatten()
    }

    fn index_of(&self, decision: DecisionId, leaf: &Hash) -> Option<u64> {
        self.with(decision, |r| r.index_of.get(leaf).copied())
            .flatten()
    }

    fn root_at(&self, decision: DecisionId, size: u64) -> Result<Hash, ChainError> {
        self.with(decision, |r| r.tree.root_at(size))
            .unwrap_or_else(|| MerkleLog::new().root_at(size))
    }

    fn inclusion_proof(
        &self,
        decision: DecisionId,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>, ChainError> {
        self.with(decision, |r| r.tree.inclusion_proof(index, size))
            .unwrap_or(Err(ChainError::IndexOutOfRange { index, size: 0 }))
    }

    fn consistency_proof(
        &self,
        decision: DecisionId,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, ChainError> {
        self.with(decision, |r| r.tree.consistency_proof(old, new))
            .unwrap_or_else(|| MerkleLog::new().consistency_proof(old, new))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies one complete epoch of record leaves (already routed to this worker by decision)
/// to the shared record; `end_of` gives a partition's log end as of the epoch. Called by the
/// dataflow's record operator.
pub(crate) fn apply_record_epoch(
    record: &VoteRecord,
    mut leaves: Vec<(u128, RecordLeaf)>,
    end_of: impl Fn(u32) -> u64,
) {
    leaves.sort_unstable_by_key(|(decision, leaf)| (*decision, leaf.offset));
    let now = Instant::now();
    for group in leaves.chunk_by(|a, b| a.0 == b.0) {
        let decision = DecisionId(group[0].0);
        let end = end_of(partition_for(decision, record.partitions));
        record.append_epoch(decision, group.iter().map(|(_, leaf)| leaf), end, now);
    }
}
