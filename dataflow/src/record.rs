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
//!                              signed checkpoint + the log position it covers
//!                              + the tiles and entry bundles of the growth ─▶ CheckpointSink
//! ```
//!
//! Each leaf carries its entry (the 80-byte leaf encoding its hash is taken over), so a cut
//! also hands the sink the C2SP tlog tiles and entry bundles the tree grew by since the
//! previous cut (`canopy_chain::tiles`); the record keeps only the entries of its last
//! partial bundle and of the leaves not cut yet.
//!
//! A decision's leaves are exactly the first deliveries of its votes, so the record agrees
//! with the tally: a checkpoint cut after epoch e covers the position the tally of epoch e
//! is published at. Everything is a function of the log (the voter commitment is stored in
//! it), so replaying the log rebuilds the same trees; checkpoints already stored are
//! re-checked against the rebuilt tree rather than cut again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use canopy_chain::tiles::{bundle_start, growth_bundles, growth_tiles};
use canopy_chain::{ChainError, Checkpoint, Hash, MerkleLog, NoteSigner, TileRef, TileWrite};
use canopy_ingest::{Position, partition_for};
use canopy_schemas::{DecisionId, LeafBytes, MAX_LEAF_ENCODING_LEN};
use foldhash::quality::FixedState;
use serde::{Deserialize, Serialize};

/// One vote as the record needs it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct RecordLeaf {
    pub offset: u64,
    pub voter: u128,
    pub vote_id: u128,
    pub leaf: Hash,
    /// The leaf encoding `leaf` is the hash of, for the record's entry bundles. None only
    /// for a leaf restored from an engine checkpoint written before leaves carried it.
    pub entry: Option<LeafEntry>,
}

/// A leaf's encoding (`canopy_schemas::LoggedVote::leaf_data`, or a close's): an entry of
/// the record's entry bundles.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafEntry(pub LeafBytes);

impl std::fmt::Debug for LeafEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeafEntry({})", hex_prefix(&self.0))
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

// The entry travels as one byte string.
impl Serialize for LeafEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for LeafEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = LeafEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {MAX_LEAF_ENCODING_LEN} bytes of leaf encoding")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<LeafEntry, E> {
                LeafBytes::new(bytes)
                    .map(LeafEntry)
                    .ok_or_else(|| E::invalid_length(bytes.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LeafEntry, A::Error> {
                let mut out = Vec::with_capacity(MAX_LEAF_ENCODING_LEN);
                while let Some(byte) = seq.next_element::<u8>()? {
                    if out.len() == MAX_LEAF_ENCODING_LEN {
                        return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                    }
                    out.push(byte);
                }
                self.visit_bytes(&out)
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
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
    /// The tiles and entry bundles the tree grew by since the previous cut (C2SP
    /// tlog-tiles): written before the checkpoint is stored, so no reader meets a
    /// checkpoint whose tiles are missing. Without entry bundles for leaves restored
    /// without their entries (see [`RecordLeaf::entry`]).
    pub tiles: Vec<TileWrite>,
    /// Stored before a restart and cut again by the replay, only so that the record
    /// store's `checkpoint` object catches up with it (the store holds the row already).
    pub already_stored: bool,
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
    /// Whether the record store holds the tiles of this size. False for a store that is
    /// new to a record older than it: the replay then writes every tile up to this size.
    pub tiles_stored: bool,
}

struct DecisionRecord {
    tree: MerkleLog,
    /// The entries of leaves `entries_from ..`: from the start of the last cut's partial
    /// bundle on, what the next cut's bundles are made of.
    entries: Vec<Option<LeafEntry>>,
    entries_from: u64,
    index_of: HashMap<Hash, u64, FixedState>,
    /// Each (voter, vote id)'s first delivery: its log offset. Later ones are skipped.
    first_offset: HashMap<(u128, u128), u64, FixedState>,
    /// Each voter's latest leaf (the one the tally counts): its index and log offset.
    latest_of_voter: HashMap<u128, (u64, u64), FixedState>,
    /// The log end (of the decision's partition) the tree reflects.
    covered_end: u64,
    last_cut: u64,
    /// The size whose tiles the record store holds (or the sink has been handed): the
    /// last cut's, or less for a store that is new to an older record.
    tiles_written: u64,
    /// When the oldest leaf not yet in a checkpoint arrived.
    waiting_since: Option<Instant>,
    /// The latest stored checkpoint, until the replayed tree has reached and matched it.
    resume: Option<(u64, Hash)>,
}

impl DecisionRecord {
    fn new() -> Self {
        Self {
            tree: MerkleLog::new(),
            entries: Vec::new(),
            entries_from: 0,
            index_of: HashMap::with_hasher(FixedState::with_seed(0)),
            first_offset: HashMap::with_hasher(FixedState::with_seed(0)),
            latest_of_voter: HashMap::with_hasher(FixedState::with_seed(0)),
            covered_end: 0,
            last_cut: 0,
            tiles_written: 0,
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

    /// The latest leaf of the voter with this ballot pseudonym in `decision`'s log: the
    /// vote the tally counts for them. What a reader does not know of it (the log offset,
    /// or the entry once its bundle is written) is None.
    fn latest_of(&self, decision: DecisionId, voter: u128) -> Option<VoterLeaf>;
}

/// A voter's latest leaf in a decision's log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VoterLeaf {
    pub index: u64,
    /// Where the vote is in the log (the engine's record knows; the tiles do not).
    pub offset: Option<u64>,
    /// The leaf encoding (the tiles' entry bundles hold it; the engine's record only until
    /// its bundle is written, after which the log has it at `offset`).
    pub entry: Option<LeafEntry>,
}

/// The record store's tiles and checkpoint as stored, for serving them under the C2SP
/// tlog-tiles paths to any tlog client. Blocking: call it off the async threads.
pub trait RecordTiles: Send + Sync {
    /// A hash tile or entry bundle of `decision`'s log; None where the store has none.
    fn tile(&self, decision: DecisionId, tile: TileRef) -> Result<Option<Vec<u8>>, ChainError>;
    /// The latest signed checkpoint (note) in the store.
    fn checkpoint(&self, decision: DecisionId) -> Result<Option<String>, ChainError>;
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
        if stored.tiles_stored {
            record.tiles_written = record.tiles_written.max(stored.size);
        }
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
            record.entries.push(leaf.entry);
            record.index_of.entry(leaf.leaf).or_insert(index);
            // Leaves arrive in log order: the last one appended is the voter's latest.
            record
                .latest_of_voter
                .insert(leaf.voter, (index, leaf.offset));
        }
        record.covered_end = record.covered_end.max(end);
        if let Some((size, root)) = record.resume
            && record.tree.size() >= size
        {
            match record.tree.root_at(size) {
                Ok(rebuilt) if rebuilt == root => {
                    record.resume = None;
                    self.store_again(decision, &mut record, size, root);
                }
                _ => {
                    *lock(&self.failure) = Some(format!(
                        "the vote log no longer gives decision {decision} the stored \
                         checkpoint at size {size}"
                    ));
                    record.resume = None;
                }
            }
        }
        let keep_from = bundle_start(record.tiles_written.min(record.tree.size()));
        forget_entries_before(&mut record, keep_from);
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
        let tiles = self.grown_tiles(decision, record, size);
        record.last_cut = size;
        record.tiles_written = size;
        forget_entries_before(record, bundle_start(size));
        self.sink.store(CutCheckpoint {
            decision,
            size,
            root,
            note,
            as_of: Position {
                partition: partition_for(decision, self.partitions),
                offset: record.covered_end,
            },
            tiles,
            already_stored: false,
        });
    }

    /// The tiles and bundles of the growth from the last cut to `size`. A growth whose
    /// entries are not all known (leaves restored from an old engine checkpoint) gets its
    /// hash tiles, which every proof needs, and no bundles.
    fn grown_tiles(
        &self,
        decision: DecisionId,
        record: &DecisionRecord,
        size: u64,
    ) -> Vec<TileWrite> {
        let old = record.tiles_written;
        let mut tiles =
            growth_tiles(&record.tree, old, size).expect("sizes the tree has, in order");
        let from = bundle_start(old);
        let known: Option<Vec<&[u8]>> = record
            .entries
            .get(from.saturating_sub(record.entries_from) as usize..)
            .filter(|_| record.entries_from <= from)
            .and_then(|entries| {
                entries
                    .iter()
                    .map(|entry| entry.as_ref().map(|e| &e.0[..]))
                    .collect()
            });
        match known.map(|entries| growth_bundles(old, size, from, &entries)) {
            Some(Ok(bundles)) => tiles.extend(bundles),
            Some(Err(error)) => {
                tracing::warn!(%decision, %error, "the record's entry bundles could not be made")
            }
            None => tracing::warn!(
                %decision, from, size,
                "leaves restored without their entries: this growth's entry bundles are not written"
            ),
        }
        tiles
    }

    /// Hands the sink a checkpoint stored before a restart, which the replayed tree has
    /// just reproduced, so the record store's `checkpoint` object catches up with it (the
    /// signature is deterministic: the same note as stored), with the tiles up to it that a
    /// store new to this record lacks.
    fn store_again(
        &self,
        decision: DecisionId,
        record: &mut DecisionRecord,
        size: u64,
        root: Hash,
    ) {
        let tiles = match record.tiles_written < size {
            true => self.grown_tiles(decision, record, size),
            false => Vec::new(),
        };
        record.tiles_written = size;
        let note = Checkpoint {
            origin: self.origin(decision),
            size,
            root,
        }
        .sign(&self.signer);
        self.sink.store(CutCheckpoint {
            decision,
            size,
            root,
            note,
            as_of: Position {
                partition: partition_for(decision, self.partitions),
                offset: record.covered_end,
            },
            tiles,
            already_stored: true,
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
    fn latest_of(&self, decision: DecisionId, voter: u128) -> Option<VoterLeaf> {
        self.with(decision, |r| {
            let (index, offset) = *r.latest_of_voter.get(&voter)?;
            let entry = index
                .checked_sub(r.entries_from)
                .and_then(|held| r.entries.get(held as usize).copied().flatten());
            Some(VoterLeaf {
                index,
                offset: Some(offset),
                entry,
            })
        })
        .flatten()
    }

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

/// Drops the entries of leaves below `first` (a bundle start): their bundles are written.
fn forget_entries_before(record: &mut DecisionRecord, first: u64) {
    if first > record.entries_from {
        let drop = ((first - record.entries_from) as usize).min(record.entries.len());
        record.entries.drain(..drop);
        record.entries_from += drop as u64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_chain::tiles::{decode_bundle, leaf_tiles};
    use canopy_chain::{TileKind, TiledLog, leaf_hash};
    use proptest::prelude::*;

    /// A record store in memory: tiles written once (a second write must be the same
    /// bytes), the cuts in order.
    #[derive(Default)]
    struct MemoryStore {
        tiles: Mutex<HashMap<TileRef, Vec<u8>>>,
        cuts: Mutex<Vec<CutCheckpoint>>,
    }

    impl CheckpointSink for MemoryStore {
        fn store(&self, mut cut: CutCheckpoint) {
            let mut tiles = lock(&self.tiles);
            for write in std::mem::take(&mut cut.tiles) {
                if let Some(before) = tiles.get(&write.tile) {
                    assert_eq!(before, &write.bytes, "{} rewritten", write.tile);
                }
                tiles.insert(write.tile, write.bytes);
            }
            lock(&self.cuts).push(cut);
        }
    }

    fn leaf(n: u64) -> RecordLeaf {
        let mut entry = [0u8; canopy_schemas::LEAF_ENCODING_LEN];
        entry[..8].copy_from_slice(&n.to_be_bytes());
        RecordLeaf {
            offset: n,
            voter: u128::from(n),
            vote_id: u128::from(n),
            leaf: leaf_hash(&entry),
            entry: Some(LeafEntry(LeafBytes::new(&entry).unwrap())),
        }
    }

    fn record(sink: Arc<MemoryStore>, every: u64) -> VoteRecord {
        let signer = NoteSigner::from_seed("canopy.test", &[3; 32]).unwrap();
        let config = RecordConfig {
            checkpoint_every: every,
            checkpoint_interval: Duration::from_secs(3600),
            origin_prefix: "canopy.test".into(),
        };
        VoteRecord::new(signer, config, 1, sink)
    }

    fn feed(record: &VoteRecord, decision: u128, leaves: std::ops::Range<u64>, epochs: &[u64]) {
        let mut at = leaves.start;
        for step in epochs.iter().cycle() {
            if at >= leaves.end {
                return;
            }
            let end = (at + step).min(leaves.end);
            let epoch: Vec<(u128, RecordLeaf)> = (at..end).map(|n| (decision, leaf(n))).collect();
            apply_record_epoch(record, epoch, |_| end);
            at = end;
        }
    }

    /// Every cut's tiles, with those before it, answer for the cut: its root, and each leaf's
    /// entry in its bundle.
    fn check_store(store: &MemoryStore, leaves: u64) -> Result<(), TestCaseError> {
        let tiles = lock(&store.tiles);
        let hashes: HashMap<TileRef, Vec<u8>> = tiles
            .iter()
            .filter(|(t, _)| matches!(t.kind, TileKind::Hashes(_)))
            .map(|(t, b)| (*t, b.clone()))
            .collect();
        for cut in lock(&store.cuts).iter() {
            let tiled = TiledLog::new(&hashes, cut.size);
            prop_assert_eq!(tiled.root_at(cut.size).unwrap(), cut.root);
            let mut index = 0;
            for tile in leaf_tiles(0, cut.size) {
                let bundle = &tiles[&TileRef::entries(tile.index, tile.width)];
                for entry in decode_bundle(bundle).unwrap() {
                    prop_assert_eq!(leaf_hash(entry), leaf(index).leaf);
                    index += 1;
                }
            }
            prop_assert!(cut.size <= leaves);
        }
        Ok(())
    }

    /// A voter's leaf as `latest_of` must find it: the last first delivery of the voter in
    /// log order, recounted from the leaves fed.
    fn voter_leaf(n: u64, voters: u64) -> RecordLeaf {
        RecordLeaf {
            voter: u128::from(n % voters),
            ..leaf(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// `latest_of` answers each voter's latest counted leaf: its index in the tree, its
        /// log offset, and its entry while the record holds it; redeliveries change nothing.
        #[test]
        fn latest_of_is_each_voters_last_counted_leaf(
            epochs in proptest::collection::vec(1u64..50, 1..6),
            voters in 1u64..12,
            count in 1u64..600,
            redelivered in proptest::collection::vec(0u64..600, 0..20),
        ) {
            let store = Arc::new(MemoryStore::default());
            let record = record(Arc::clone(&store), 100);
            let mut fed: Vec<RecordLeaf> = (0..count).map(|n| voter_leaf(n, voters)).collect();
            // A redelivery comes later in the log with the same (voter, vote id).
            for (extra, n) in redelivered.iter().filter(|n| **n < count).enumerate() {
                fed.push(RecordLeaf { offset: count + extra as u64, ..voter_leaf(*n, voters) });
            }
            let mut at = 0;
            for step in epochs.iter().cycle() {
                if at >= fed.len() {
                    break;
                }
                let end = (at + *step as usize).min(fed.len());
                let epoch: Vec<(u128, RecordLeaf)> = fed[at..end].iter().map(|l| (7, *l)).collect();
                let log_end = fed[end - 1].offset + 1;
                apply_record_epoch(&record, epoch, |_| log_end);
                at = end;
            }
            for voter in 0..voters + 1 {
                // The recount: first deliveries in log order, the voter's last of them.
                let mut seen = std::collections::HashSet::new();
                let expected = fed
                    .iter()
                    .filter(|l| seen.insert((l.voter, l.vote_id)))
                    .enumerate()
                    .filter(|(_, l)| l.voter == u128::from(voter))
                    .last()
                    .map(|(index, l)| (index as u64, l.offset, l.entry));
                let found = record.latest_of(DecisionId(7), u128::from(voter));
                prop_assert_eq!(found.map(|f| (f.index, f.offset.unwrap())), expected.map(|e| (e.0, e.1)));
                if let (Some(found), Some(expected)) = (found, expected)
                    && let Some(entry) = found.entry
                {
                    prop_assert_eq!(Some(entry), expected.2);
                }
            }
            prop_assert!(record.latest_of(DecisionId(8), 0).is_none());
        }

        /// The tiles a record hands over with its cuts are its trees', across a restart that
        /// resumes from the last stored checkpoint and replays every leaf again.
        #[test]
        fn cuts_carry_the_tiles_of_their_growth(
            epochs in proptest::collection::vec(1u64..200, 1..6),
            every in 1u64..400,
            first in 1u64..900,
            more in 0u64..700,
            tiles_stored in any::<bool>(),
        ) {
            let store = Arc::new(MemoryStore::default());
            let before = record(Arc::clone(&store), every);
            feed(&before, 7, 0..first, &epochs);
            before.cut_due(Instant::now() + Duration::from_secs(7200));
            let last = lock(&store.cuts).last().map(|c| (c.size, c.root));
            check_store(&store, first)?;

            // Restarted: resumes from the last cut and replays everything; a record store new
            // to the record (emptied here) gets every tile again.
            if !tiles_stored {
                lock(&store.tiles).clear();
                lock(&store.cuts).clear();
            }
            let after = record(Arc::clone(&store), every);
            if let Some((size, root)) = last {
                after.resume_from(StoredCheckpoint { decision: DecisionId(7), size, root, tiles_stored });
            }
            feed(&after, 7, 0..first + more, &epochs);
            after.cut_due(Instant::now() + Duration::from_secs(7200));
            prop_assert!(after.failure().is_none());
            check_store(&store, first + more)?;
            let (latest, again) = {
                let cuts = lock(&store.cuts);
                (cuts.last().unwrap().size, cuts.iter().filter(|c| c.already_stored).count())
            };
            prop_assert_eq!(latest, first + more);
            // The stored checkpoint came back once, for the store's `checkpoint` object, with
            // every tile up to it when the store was new.
            prop_assert_eq!(again, usize::from(last.is_some()));
        }
    }
}
