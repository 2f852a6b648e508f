//! Engine checkpoints: the dataflow's state and the log offsets it covers, written so that a
//! restarted engine (of the same or another size) resumes from the offsets instead of
//! replaying the log from the start.
//!
//! The engine's state only ever grows: the first delivery of each vote (which decides the
//! tally and absorbs later redeliveries of its id) and each record leaf (which grows a
//! decision's Merkle log). No entry ever becomes obsolete, so a checkpoint is incremental:
//! worker `w` writes, for checkpoint `seq`, the entries its operators produced since its
//! previous checkpoint (the *delta*), with the end offsets of the partitions it feeds.
//! Checkpoint `seq` is complete once every worker of the run has written its chunk.
//!
//! Every `full_checkpoint_every`-th checkpoint is also *full*: with its delta each worker
//! writes, in the same atomic write, its *base* — every entry it restored or wrote before
//! `seq`. The bases of all workers together hold the whole state before `seq`; with the
//! deltas of `seq` it is the whole state at `seq`. Once a full checkpoint is complete, the
//! rows of every lower `seq` are redundant and are deleted (never before it is complete, so
//! a crash at any point leaves a loadable chain). A restart loads the latest complete full
//! checkpoint's bases and the deltas from it to the latest complete checkpoint (only
//! deltas, from the first, when no full one is complete yet: tables written before full
//! checkpoints existed), feeds the entries back into the dataflow (which routes them to
//! whichever worker now owns their key) and resumes each partition at its offset. The rows
//! read stay bounded by `full_checkpoint_every` checkpoints however long the history; the
//! bytes are the state's, which no compaction can shrink.
//!
//! ```text
//!  worker 0 ─ marker(seq) at epoch E ─ broadcast ─▶ every worker, once epoch E is complete:
//!     delta(seq, worker) = entries of epochs ≤ E not yet written + its partitions' ends at E
//!     base(seq, worker)  = everything it restored or wrote before (full checkpoints only)
//!                        ─▶ StateStore (one atomic write each, in parts ≤ MAX_PART_BYTES)
//!  full seq F complete ─▶ rows with seq < F deleted
//!  load = bases(F) + deltas(F..=C), C the latest complete checkpoint
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::DataflowError;
use crate::arithmetic::Ballot;
use crate::record::{LeafEntry, RecordLeaf};
use canopy_schemas::{BALLOT_ENCODING_LEN, Component, LeafBytes, Method};

/// One piece of engine state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateEntry {
    /// The first delivery of a vote: it decides the voter's current ballot and absorbs a
    /// later redelivery of the same vote id.
    Ballot {
        decision: u128,
        voter: u128,
        ballot: Ballot,
    },
    /// A leaf the record appended (or was offered) for a decision.
    Leaf { decision: u128, leaf: RecordLeaf },
    /// A decision's first close in the log: its votes after `offset` do not count.
    Close { decision: u128, offset: u64 },
}

/// A single-choice ballot as written before the voting methods, still read.
const BALLOT_V1_TAG: u8 = 1;
const BALLOT_V1_LEN: usize = 1 + 16 + 16 + 16 + 8 + 2 + 1 + 4;
const LEAF_TAG: u8 = 2;
const LEAF_LEN: usize = 1 + 16 + 8 + 16 + 16 + 32;
/// A leaf with its entry (the leaf encoding, for the record's entry bundles) of a vote
/// leaf's first 80 bytes, as written before leaves had other lengths; tag 2 is a leaf
/// written before leaves carried their entry. Both still read.
const LEAF_WITH_V1_ENTRY_TAG: u8 = 3;
const LEAF_WITH_V1_ENTRY_LEN: usize = LEAF_LEN + canopy_schemas::LEAF_ENCODING_V1_LEN;
const CLOSE_TAG: u8 = 4;
const CLOSE_LEN: usize = 1 + 16 + 8;
/// A ballot of any method: the method's code and the ballot's canonical 32 bytes.
const BALLOT_TAG: u8 = 5;
const BALLOT_LEN: usize = 1 + 16 + 16 + 16 + 8 + 1 + BALLOT_ENCODING_LEN + 1 + 4;
/// A leaf with its entry, the entry's length (one byte) before it.
const LEAF_WITH_ENTRY_TAG: u8 = 6;
const LEAF_WITH_ENTRY_MIN_LEN: usize = LEAF_LEN + 1;

/// Encodes entries in the chunk format: a tag byte then little-endian fields per entry,
/// fixed but for a leaf's entry, which its length precedes.
pub fn encode_entries<'a>(entries: impl IntoIterator<Item = &'a StateEntry>) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            StateEntry::Ballot {
                decision,
                voter,
                ballot,
            } => {
                out.push(BALLOT_TAG);
                out.extend_from_slice(&decision.to_le_bytes());
                out.extend_from_slice(&voter.to_le_bytes());
                out.extend_from_slice(&ballot.vote_id.to_le_bytes());
                out.extend_from_slice(&ballot.offset.to_le_bytes());
                out.push(ballot.marks.method().code());
                out.extend_from_slice(&ballot.marks.encode());
                out.push(ballot.component.index() as u8);
                out.extend_from_slice(&ballot.weight.to_le_bytes());
            }
            StateEntry::Leaf { decision, leaf } => {
                out.push(match leaf.entry {
                    Some(_) => LEAF_WITH_ENTRY_TAG,
                    None => LEAF_TAG,
                });
                out.extend_from_slice(&decision.to_le_bytes());
                out.extend_from_slice(&leaf.offset.to_le_bytes());
                out.extend_from_slice(&leaf.voter.to_le_bytes());
                out.extend_from_slice(&leaf.vote_id.to_le_bytes());
                out.extend_from_slice(&leaf.leaf);
                if let Some(entry) = &leaf.entry {
                    out.push(entry.0.len() as u8);
                    out.extend_from_slice(&entry.0);
                }
            }
            StateEntry::Close { decision, offset } => {
                out.push(CLOSE_TAG);
                out.extend_from_slice(&decision.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes a chunk written by [`encode_entries`]; a truncated or unknown entry is an error
/// naming its byte offset, never a silently shorter state.
pub fn decode_entries(bytes: &[u8]) -> Result<Vec<StateEntry>, DataflowError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    let corrupt = |at: usize, why: &str| DataflowError::CorruptState(format!("byte {at}: {why}"));
    while at < bytes.len() {
        let tag = bytes[at];
        let len = match tag {
            BALLOT_V1_TAG => BALLOT_V1_LEN,
            BALLOT_TAG => BALLOT_LEN,
            LEAF_TAG => LEAF_LEN,
            LEAF_WITH_V1_ENTRY_TAG => LEAF_WITH_V1_ENTRY_LEN,
            LEAF_WITH_ENTRY_TAG => match bytes.get(at + LEAF_LEN) {
                Some(entry_len) => LEAF_WITH_ENTRY_MIN_LEN + usize::from(*entry_len),
                None => return Err(corrupt(at, "truncated entry")),
            },
            CLOSE_TAG => CLOSE_LEN,
            other => return Err(corrupt(at, &format!("unknown entry tag {other}"))),
        };
        let Some(entry) = bytes.get(at..at + len) else {
            return Err(corrupt(at, "truncated entry"));
        };
        // A struct expression evaluates its fields in the order written: the order
        // `encode_entries` wrote them in.
        let mut fields = Fields(&entry[1..]);
        let component =
            |code: u8| Component::from_code(code).map_err(|_| corrupt(at, "unknown component"));
        entries.push(match tag {
            BALLOT_V1_TAG => StateEntry::Ballot {
                decision: fields.u128(),
                voter: fields.u128(),
                ballot: Ballot {
                    vote_id: fields.u128(),
                    offset: fields.u64(),
                    marks: canopy_schemas::Ballot::single_choice(u16::from_le_bytes(fields.take()))
                        .map_err(|error| corrupt(at, &error.to_string()))?,
                    component: component(fields.take::<1>()[0])?,
                    weight: u32::from_le_bytes(fields.take()),
                },
            },
            BALLOT_TAG => StateEntry::Ballot {
                decision: fields.u128(),
                voter: fields.u128(),
                ballot: Ballot {
                    vote_id: fields.u128(),
                    offset: fields.u64(),
                    marks: {
                        let method = Method::from_code(fields.take::<1>()[0])
                            .map_err(|error| corrupt(at, &error.to_string()))?;
                        canopy_schemas::Ballot::decode(method, &fields.take())
                            .map_err(|error| corrupt(at, &error.to_string()))?
                    },
                    component: component(fields.take::<1>()[0])?,
                    weight: u32::from_le_bytes(fields.take()),
                },
            },
            CLOSE_TAG => StateEntry::Close {
                decision: fields.u128(),
                offset: fields.u64(),
            },
            _ => StateEntry::Leaf {
                decision: fields.u128(),
                leaf: RecordLeaf {
                    offset: fields.u64(),
                    voter: fields.u128(),
                    vote_id: fields.u128(),
                    leaf: fields.take(),
                    entry: match tag {
                        LEAF_WITH_V1_ENTRY_TAG => Some(fields.rest()),
                        LEAF_WITH_ENTRY_TAG => {
                            fields.take::<1>();
                            Some(fields.rest())
                        }
                        _ => None,
                    }
                    .map(|entry| {
                        LeafBytes::new(entry)
                            .map(LeafEntry)
                            .ok_or_else(|| corrupt(at, "a leaf entry longer than any leaf"))
                    })
                    .transpose()?,
                },
            },
        });
        at += len;
    }
    Ok(entries)
}

struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split_at gives N bytes")
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// The most bytes in one stored part of a chunk. PostgreSQL refuses a `bytea` over 1 GB and
/// every row travels whole through the client: a worker's base, which holds its share of
/// the whole state, is cut into parts of at most this size, each decodable on its own (so a
/// restart can also share one worker's base out among several).
pub const MAX_PART_BYTES: usize = 32 << 20;

/// Encodes entries into parts of at most `max_part` bytes each (one entry is never cut;
/// always at least one part, maybe empty, so that a chunk without entries is still a row).
pub fn encode_parts(entries: &[StateEntry], max_part: usize) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new()];
    for entry in entries {
        let encoded = encode_entries(std::slice::from_ref(entry));
        let current = parts.last_mut().expect("parts starts with one");
        if !current.is_empty() && current.len() + encoded.len() > max_part {
            parts.push(encoded);
        } else {
            current.extend_from_slice(&encoded);
        }
    }
    parts
}

/// Packs blocks of encoded entries (each decodable on its own) into parts of at most
/// `max_part` bytes, re-cutting a block larger than that at its entries' boundaries (a chunk
/// written before parts existed may be). Always at least one part.
pub fn pack_parts<'a>(
    blocks: impl IntoIterator<Item = &'a [u8]>,
    max_part: usize,
) -> Result<Vec<Vec<u8>>, DataflowError> {
    let mut parts = vec![Vec::new()];
    for block in blocks {
        if block.len() > max_part {
            parts.extend(encode_parts(&decode_entries(block)?, max_part));
            continue;
        }
        let current = parts.last_mut().expect("parts starts with one");
        if !current.is_empty() && current.len() + block.len() > max_part {
            parts.push(block.to_vec());
        } else {
            current.extend_from_slice(block);
        }
    }
    Ok(parts)
}

/// What one worker writes for one checkpoint, atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChunk {
    pub seq: u64,
    /// The worker's index in its run, and the run's worker count: the checkpoint is complete
    /// when `workers` chunks of `seq` exist.
    pub worker: u32,
    pub workers: u32,
    /// End offsets of the partitions this worker feeds, as of the checkpoint's epoch.
    pub ends: Vec<(u32, u64)>,
    /// The entries its operators produced since its previous checkpoint, in parts in the
    /// format of [`encode_entries`] (at least one, maybe empty).
    pub delta: Vec<Vec<u8>>,
    /// At a full checkpoint: every entry this worker restored or wrote before `seq`, in
    /// parts (at least one, maybe empty).
    pub base: Option<Vec<Vec<u8>>>,
}

/// Whether a stored part belongs to a chunk's delta or to its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartKind {
    Delta,
    Base,
}

impl PartKind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delta => "delta",
            Self::Base => "base",
        }
    }

    pub fn parse(stored: &str) -> Result<Self, DataflowError> {
        match stored {
            "delta" => Ok(Self::Delta),
            "base" => Ok(Self::Base),
            other => Err(DataflowError::CorruptState(format!(
                "unknown checkpoint part kind {other:?}"
            ))),
        }
    }
}

/// Where one stored part sits, without its bytes: what deciding what to load and what to
/// delete needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartKey {
    pub seq: u64,
    pub worker: u32,
    pub workers: u32,
    pub kind: PartKind,
    pub part: u32,
}

/// One stored row of a chunk: where it sits, its bytes, and the partition ends it records.
pub type ChunkPart<'a> = (PartKey, &'a [u8], &'a [(u32, u64)]);

impl StateChunk {
    /// The chunk's rows. The ends go with the first delta part only.
    pub fn parts(&self) -> Vec<ChunkPart<'_>> {
        let key = |kind, part: usize| PartKey {
            seq: self.seq,
            worker: self.worker,
            workers: self.workers,
            kind,
            part: part as u32,
        };
        let mut rows = Vec::new();
        for (part, bytes) in self.delta.iter().enumerate() {
            let ends: &[(u32, u64)] = if part == 0 { &self.ends } else { &[] };
            rows.push((key(PartKind::Delta, part), bytes.as_slice(), ends));
        }
        for (part, bytes) in self.base.iter().flatten().enumerate() {
            rows.push((key(PartKind::Base, part), bytes.as_slice(), &[][..]));
        }
        if self.delta.is_empty() {
            // A chunk is counted by its first delta part: it must exist.
            rows.push((key(PartKind::Delta, 0), &[][..], &self.ends));
        }
        if self.base.as_ref().is_some_and(Vec::is_empty) {
            rows.push((key(PartKind::Base, 0), &[][..], &[][..]));
        }
        rows
    }
}

/// What a store holds, read from its parts' keys: the latest complete checkpoint and the
/// latest complete full one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// The highest `seq` of which every worker of its run wrote its chunk.
    pub complete: Option<u64>,
    /// The highest complete `seq` of which every worker also wrote its base.
    pub full: Option<u64>,
}

impl RestorePlan {
    pub fn of<'a>(keys: impl IntoIterator<Item = &'a PartKey>) -> Self {
        // Per seq: its run's worker count, the workers with a delta, those with a base.
        type Written = (u32, BTreeSet<u32>, BTreeSet<u32>);
        let mut written: BTreeMap<u64, Written> = BTreeMap::new();
        for key in keys.into_iter().filter(|key| key.part == 0) {
            let slot = written.entry(key.seq).or_default();
            slot.0 = slot.0.max(key.workers);
            match key.kind {
                PartKind::Delta => slot.1.insert(key.worker),
                PartKind::Base => slot.2.insert(key.worker),
            };
        }
        let mut plan = Self::default();
        for (seq, (workers, deltas, bases)) in written {
            if deltas.len() as u64 == u64::from(workers) {
                plan.complete = Some(seq);
                if bases.len() as u64 == u64::from(workers) {
                    plan.full = Some(seq);
                }
            }
        }
        plan
    }

    /// Whether a restart reads this part: the full checkpoint's bases and every delta from
    /// it (from the first without one) to the latest complete checkpoint.
    pub fn loads(&self, key: &PartKey) -> bool {
        let Some(complete) = self.complete else {
            return false;
        };
        let from = self.full.unwrap_or(0);
        match key.kind {
            PartKind::Base => Some(key.seq) == self.full,
            PartKind::Delta => key.seq >= from && key.seq <= complete,
        }
    }

    /// Whether a part is below the latest complete full checkpoint, which holds all it did:
    /// deleted by whoever sees it (a writer or a restart).
    pub fn is_superseded(&self, seq: u64) -> bool {
        self.full.is_some_and(|full| seq < full)
    }

    /// Whether a part belongs to a checkpoint after the latest complete one: at a restart,
    /// left by a run that stopped while writing it, and deleted so a new run can reuse the
    /// number. (While a run writes, it is simply not complete yet.)
    pub fn is_unfinished(&self, seq: u64) -> bool {
        self.complete.is_none_or(|complete| seq > complete)
    }
}

/// The latest complete checkpoint, as loaded for a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    pub seq: u64,
    /// The full checkpoint the chunks start from, if one is complete.
    pub full: Option<u64>,
    /// Where each partition resumes (a partition absent here resumes at 0).
    pub ends: Vec<(u32, u64)>,
    /// The bases of `full` and the deltas from it to `seq`, each part decodable alone.
    pub chunks: Vec<Vec<u8>>,
}

impl EngineSnapshot {
    /// Builds the snapshot a plan loads from the stored parts it selected, in key order;
    /// each partition resumes at the highest end recorded for it.
    pub fn from_parts<'a>(
        plan: &RestorePlan,
        parts: impl IntoIterator<Item = (PartKey, Vec<u8>, &'a [(u32, u64)])>,
    ) -> Option<Self> {
        let seq = plan.complete?;
        let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
        let mut chunks = Vec::new();
        for (key, bytes, part_ends) in parts {
            debug_assert!(plan.loads(&key), "{key:?} is not part of the plan");
            for &(partition, end) in part_ends {
                let slot = ends.entry(partition).or_insert(0);
                *slot = (*slot).max(end);
            }
            chunks.push(bytes);
        }
        Some(Self {
            seq,
            full: plan.full,
            ends: ends.into_iter().collect(),
            chunks,
        })
    }
}

/// Where engine checkpoints are kept (the metadata store, in a served node or a cluster).
pub trait StateStore: Send + Sync {
    /// The latest complete checkpoint, if any. Parts of later, incomplete checkpoints (a
    /// run that stopped mid-checkpoint) are discarded, so a new run can reuse their numbers;
    /// so are those a complete full checkpoint supersedes.
    fn load(&self) -> Result<Option<EngineSnapshot>, String>;

    /// Stores one worker's chunk atomically (all its parts or none); then, if that completed
    /// a full checkpoint, deletes the parts it supersedes.
    fn write(&self, chunk: StateChunk) -> Result<(), String>;
}

/// One stored part, in memory.
#[derive(Clone, Debug)]
struct StoredPart {
    key: PartKey,
    bytes: Vec<u8>,
    ends: Vec<(u32, u64)>,
}

/// A [`StateStore`] in memory: for an engine embedded in a test or a tool, where a restart
/// means a new engine in the same process.
#[derive(Debug, Default)]
pub struct InMemoryStateStore {
    parts: Mutex<Vec<StoredPart>>,
}

impl InMemoryStateStore {
    /// The latest complete checkpoint's number, without touching anything (unlike `load`,
    /// safe while an engine writes).
    pub fn latest_complete(&self) -> Option<u64> {
        self.plan().complete
    }

    /// The latest complete full checkpoint's number.
    pub fn latest_full(&self) -> Option<u64> {
        self.plan().full
    }

    /// How many parts are stored: what compaction keeps bounded.
    pub fn stored_parts(&self) -> usize {
        self.lock().len()
    }

    fn plan(&self) -> RestorePlan {
        RestorePlan::of(self.lock().iter().map(|stored| &stored.key))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<StoredPart>> {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StateStore for InMemoryStateStore {
    fn load(&self) -> Result<Option<EngineSnapshot>, String> {
        let mut parts = self.lock();
        let plan = RestorePlan::of(parts.iter().map(|stored| &stored.key));
        parts.retain(|stored| {
            !plan.is_unfinished(stored.key.seq) && !plan.is_superseded(stored.key.seq)
        });
        let mut loaded: Vec<&StoredPart> = parts
            .iter()
            .filter(|stored| plan.loads(&stored.key))
            .collect();
        loaded.sort_by_key(|stored| stored.key);
        Ok(EngineSnapshot::from_parts(
            &plan,
            loaded
                .into_iter()
                .map(|stored| (stored.key, stored.bytes.clone(), stored.ends.as_slice())),
        ))
    }

    fn write(&self, chunk: StateChunk) -> Result<(), String> {
        let mut parts = self.lock();
        if parts
            .iter()
            .any(|stored| stored.key.seq == chunk.seq && stored.key.worker == chunk.worker)
        {
            return Err(format!(
                "checkpoint {} of worker {} is already stored",
                chunk.seq, chunk.worker
            ));
        }
        parts.extend(
            chunk
                .parts()
                .into_iter()
                .map(|(key, bytes, ends)| StoredPart {
                    key,
                    bytes: bytes.to_vec(),
                    ends: ends.to_vec(),
                }),
        );
        let plan = RestorePlan::of(parts.iter().map(|stored| &stored.key));
        parts.retain(|stored| !plan.is_superseded(stored.key.seq));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = StateEntry> {
        prop_oneof![
            (
                any::<u128>(),
                any::<u128>(),
                any::<u128>(),
                any::<u64>(),
                prop_oneof![
                    (0u16..256).prop_map(|o| canopy_schemas::Ballot::single_choice(o).unwrap()),
                    proptest::collection::btree_set(0u16..256, 1..20).prop_map(|options| {
                        canopy_schemas::Ballot::approval(&options.into_iter().collect::<Vec<_>>())
                            .unwrap()
                    }),
                    proptest::collection::vec(0u16..256, 1..20).prop_map(|ranking| {
                        let mut seen = std::collections::HashSet::new();
                        let ranking: Vec<u16> =
                            ranking.into_iter().filter(|o| seen.insert(*o)).collect();
                        canopy_schemas::Ballot::ranked_choice(&ranking).unwrap()
                    }),
                    proptest::collection::btree_map(0u16..256, 1u16..=255, 1..=15).prop_map(
                        |votes| canopy_schemas::Ballot::quadratic(
                            &votes.into_iter().collect::<Vec<_>>()
                        )
                        .unwrap()
                    ),
                ],
                0usize..4,
                any::<u32>()
            )
                .prop_map(|(decision, voter, vote_id, offset, marks, c, weight)| {
                    StateEntry::Ballot {
                        decision,
                        voter,
                        ballot: Ballot {
                            vote_id,
                            offset,
                            marks,
                            component: Component::ALL[c],
                            weight,
                        },
                    }
                }),
            (
                any::<u128>(),
                any::<u64>(),
                any::<u128>(),
                any::<u128>(),
                any::<[u8; 32]>(),
                proptest::option::of((
                    any::<[u8; 32]>(),
                    0..=canopy_schemas::MAX_LEAF_ENCODING_LEN
                )),
            )
                .prop_map(|(decision, offset, voter, vote_id, leaf, entry)| {
                    StateEntry::Leaf {
                        decision,
                        leaf: RecordLeaf {
                            offset,
                            voter,
                            vote_id,
                            leaf,
                            // Any bytes of any leaf length: the state keeps the entry as
                            // it is given.
                            entry: entry.map(|(seed, len)| {
                                let bytes: Vec<u8> =
                                    (0..len).map(|n| seed[n % 32] ^ n as u8).collect();
                                crate::record::LeafEntry(LeafBytes::new(&bytes).unwrap())
                            }),
                        },
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn entries_round_trip(entries in proptest::collection::vec(entry(), 0..40)) {
            let bytes = encode_entries(&entries);
            prop_assert_eq!(decode_entries(&bytes).unwrap(), entries);
        }

        #[test]
        fn only_complete_checkpoints_load(workers in 1u32..4, complete in 0u64..4, partial in 0u32..3) {
            let store = InMemoryStateStore::default();
            let chunk = |seq: u64, worker: u32| StateChunk {
                seq, worker, workers,
                ends: vec![(worker, seq * 10)],
                delta: vec![encode_entries(&[])],
                base: None,
            };
            for seq in 1..=complete {
                for worker in 0..workers {
                    store.write(chunk(seq, worker)).unwrap();
                }
            }
            // A run stopped while writing the next one.
            let partial = partial.min(workers - 1);
            for worker in 0..partial {
                store.write(chunk(complete + 1, worker)).unwrap();
            }
            let loaded = store.load().unwrap();
            if complete == 0 {
                prop_assert!(loaded.is_none());
            } else {
                let loaded = loaded.unwrap();
                prop_assert_eq!(loaded.seq, complete);
                prop_assert_eq!(loaded.full, None);
                prop_assert_eq!(loaded.chunks.len() as u64, complete * u64::from(workers));
                prop_assert!(loaded.ends.iter().all(|(_, end)| *end == complete * 10));
            }
            // The partial checkpoint is gone, so a new run can write its number again.
            for worker in 0..workers {
                store.write(chunk(complete + 1, worker)).unwrap();
            }
            prop_assert_eq!(store.load().unwrap().unwrap().seq, complete + 1);
        }

        #[test]
        fn parts_hold_every_entry_once_within_the_size(
            entries in proptest::collection::vec(entry(), 0..60),
            max_part in 1usize..400,
            cuts in proptest::collection::vec(0usize..60, 0..4),
        ) {
            let parts = encode_parts(&entries, max_part);
            prop_assert!(!parts.is_empty());
            let mut decoded = Vec::new();
            for part in &parts {
                // Only a part of one entry larger than the limit may exceed it.
                let part_entries = decode_entries(part).unwrap();
                prop_assert!(part.len() <= max_part || part_entries.len() == 1);
                decoded.extend(part_entries);
            }
            prop_assert_eq!(&decoded, &entries);
            // Blocks cut anywhere at entry boundaries pack back into the same entries.
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(entries.len())).collect();
            bounds.extend([0, entries.len()]);
            bounds.sort_unstable();
            let blocks: Vec<Vec<u8>> = bounds
                .windows(2)
                .map(|w| encode_entries(&entries[w[0]..w[1]]))
                .collect();
            let packed = pack_parts(blocks.iter().map(Vec::as_slice), max_part).unwrap();
            let mut repacked = Vec::new();
            for part in &packed {
                let part_entries = decode_entries(part).unwrap();
                prop_assert!(part.len() <= max_part || part_entries.len() == 1);
                repacked.extend(part_entries);
            }
            prop_assert_eq!(repacked, entries);
        }

        #[test]
        fn a_cut_chunk_is_refused(entries in proptest::collection::vec(entry(), 1..10), cut in 1usize..60) {
            let bytes = encode_entries(&entries);
            let cut = cut.min(bytes.len() - 1);
            let short = &bytes[..bytes.len() - cut];
            // A cut at an entry boundary is a shorter valid chunk; anywhere else is refused.
            match decode_entries(short) {
                Ok(decoded) => prop_assert_eq!(&decoded[..], &entries[..decoded.len()]),
                Err(error) => prop_assert_eq!(error.code(), "corrupt_state"),
            }
        }
    }

    fn key(seq: u64, worker: u32, workers: u32, kind: PartKind, part: u32) -> PartKey {
        PartKey {
            seq,
            worker,
            workers,
            kind,
            part,
        }
    }

    #[test]
    fn a_full_checkpoint_counts_only_when_every_worker_wrote_its_base() {
        use PartKind::{Base, Delta};
        let mut keys = vec![
            key(1, 0, 2, Delta, 0),
            key(1, 1, 2, Delta, 0),
            // Checkpoint 2 is complete, but one worker (another configuration) wrote no base.
            key(2, 0, 2, Delta, 0),
            key(2, 0, 2, Base, 0),
            key(2, 1, 2, Delta, 0),
        ];
        let plan = RestorePlan::of(&keys);
        assert_eq!((plan.complete, plan.full), (Some(2), None));
        assert!(plan.loads(&key(1, 0, 2, Delta, 0)));
        assert!(!plan.loads(&key(2, 0, 2, Base, 0)));
        // Checkpoint 3 is full, its second part included; 4 is unfinished.
        keys.extend([
            key(3, 0, 1, Delta, 0),
            key(3, 0, 1, Base, 0),
            key(3, 0, 1, Base, 1),
            key(4, 1, 2, Delta, 0),
        ]);
        let plan = RestorePlan::of(&keys);
        assert_eq!((plan.complete, plan.full), (Some(3), Some(3)));
        let loaded: Vec<_> = keys.iter().filter(|k| plan.loads(k)).collect();
        assert_eq!(
            loaded,
            [
                &key(3, 0, 1, Delta, 0),
                &key(3, 0, 1, Base, 0),
                &key(3, 0, 1, Base, 1)
            ]
        );
        assert!(plan.is_superseded(2) && !plan.is_superseded(3));
        assert!(plan.is_unfinished(4) && !plan.is_unfinished(3));
    }

    #[test]
    fn an_unknown_part_kind_is_corrupt_state() {
        assert_eq!(PartKind::parse("base").unwrap(), PartKind::Base);
        assert_eq!(
            PartKind::parse("snapshot").unwrap_err().code(),
            "corrupt_state"
        );
    }
}
