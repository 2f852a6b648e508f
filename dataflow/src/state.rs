//! Engine checkpoints: the dataflow's state and the log offsets it covers, written so that a
//! restarted engine (of the same or another size) resumes from the offsets instead of
//! replaying the log from the start.
//!
//! The engine's state only ever grows: the first delivery of each vote (which decides the
//! tally) and each record leaf (which grows a decision's Merkle log). A checkpoint is
//! therefore incremental: worker `w` writes, for checkpoint `seq`, the entries its operators
//! produced since its previous checkpoint, with the end offsets of the partitions it feeds.
//! Checkpoint `seq` is complete once every worker of the run has written its chunk; a
//! restart loads every chunk up to the latest complete checkpoint, feeds the entries back
//! into the dataflow (which routes them to whichever worker now owns their key) and resumes
//! each partition at its offset.
//!
//! ```text
//!  worker 0 ─ marker(seq) at epoch E ─ broadcast ─▶ every worker, once epoch E is complete:
//!     chunk(seq, worker) = entries of epochs ≤ E not yet written + its partitions' ends at E
//!                        ─▶ StateStore (one atomic row each)
//! ```

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::DataflowError;
use crate::arithmetic::Ballot;
use crate::record::RecordLeaf;
use canopy_schemas::Component;

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
}

const BALLOT_TAG: u8 = 1;
const LEAF_TAG: u8 = 2;
const BALLOT_LEN: usize = 1 + 16 + 16 + 16 + 8 + 2 + 1 + 4;
const LEAF_LEN: usize = 1 + 16 + 8 + 16 + 16 + 32;

/// Encodes entries in the chunk format (version 1): a tag byte then fixed little-endian
/// fields per entry.
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
                out.extend_from_slice(&ballot.option.to_le_bytes());
                out.push(ballot.component.index() as u8);
                out.extend_from_slice(&ballot.weight.to_le_bytes());
            }
            StateEntry::Leaf { decision, leaf } => {
                out.push(LEAF_TAG);
                out.extend_from_slice(&decision.to_le_bytes());
                out.extend_from_slice(&leaf.offset.to_le_bytes());
                out.extend_from_slice(&leaf.voter.to_le_bytes());
                out.extend_from_slice(&leaf.vote_id.to_le_bytes());
                out.extend_from_slice(&leaf.leaf);
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
            BALLOT_TAG => BALLOT_LEN,
            LEAF_TAG => LEAF_LEN,
            other => return Err(corrupt(at, &format!("unknown entry tag {other}"))),
        };
        let Some(entry) = bytes.get(at..at + len) else {
            return Err(corrupt(at, "truncated entry"));
        };
        // A struct expression evaluates its fields in the order written: the order
        // `encode_entries` wrote them in.
        let mut fields = Fields(&entry[1..]);
        entries.push(match tag {
            BALLOT_TAG => StateEntry::Ballot {
                decision: fields.u128(),
                voter: fields.u128(),
                ballot: Ballot {
                    vote_id: fields.u128(),
                    offset: fields.u64(),
                    option: u16::from_le_bytes(fields.take()),
                    component: Component::from_code(fields.take::<1>()[0])
                        .map_err(|_| corrupt(at, "unknown component"))?,
                    weight: u32::from_le_bytes(fields.take()),
                },
            },
            _ => StateEntry::Leaf {
                decision: fields.u128(),
                leaf: RecordLeaf {
                    offset: fields.u64(),
                    voter: fields.u128(),
                    vote_id: fields.u128(),
                    leaf: fields.take(),
                },
            },
        });
        at += len;
    }
    Ok(entries)
}

struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split_at gives N bytes")
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
}

/// What one worker writes for one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChunk {
    pub seq: u64,
    /// The worker's index in its run, and the run's worker count: the checkpoint is complete
    /// when `workers` chunks of `seq` exist.
    pub worker: u32,
    pub workers: u32,
    /// End offsets of the partitions this worker feeds, as of the checkpoint's epoch.
    pub ends: Vec<(u32, u64)>,
    /// Entries in the format of [`encode_entries`].
    pub data: Vec<u8>,
}

/// The latest complete checkpoint, as loaded for a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    pub seq: u64,
    /// Where each partition resumes (a partition absent here resumes at 0).
    pub ends: Vec<(u32, u64)>,
    /// Every chunk of every checkpoint up to `seq`.
    pub chunks: Vec<Vec<u8>>,
}

/// Where engine checkpoints are kept (the metadata store, in a served node or a cluster).
pub trait StateStore: Send + Sync {
    /// The latest complete checkpoint, if any. Chunks of later, incomplete checkpoints (a
    /// run that stopped mid-checkpoint) are discarded, so a new run can reuse their numbers.
    fn load(&self) -> Result<Option<EngineSnapshot>, String>;

    /// Stores one worker's chunk atomically.
    fn write(&self, chunk: StateChunk) -> Result<(), String>;
}

/// A [`StateStore`] in memory: for an engine embedded in a test or a tool, where a restart
/// means a new engine in the same process.
#[derive(Debug, Default)]
pub struct InMemoryStateStore {
    chunks: Mutex<Vec<StateChunk>>,
}

impl InMemoryStateStore {
    /// The latest complete checkpoint's number, without touching anything (unlike `load`,
    /// safe while an engine writes).
    pub fn latest_complete(&self) -> Option<u64> {
        latest_complete(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<StateChunk>> {
        self.chunks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The highest `seq` with as many chunks as its run had workers.
fn latest_complete(chunks: &[StateChunk]) -> Option<u64> {
    let mut written: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for chunk in chunks {
        let slot = written.entry(chunk.seq).or_insert((0, chunk.workers));
        slot.0 += 1;
    }
    written
        .into_iter()
        .filter(|(_, (count, workers))| count == workers)
        .map(|(seq, _)| seq)
        .next_back()
}

impl StateStore for InMemoryStateStore {
    fn load(&self) -> Result<Option<EngineSnapshot>, String> {
        let mut chunks = self.lock();
        let complete = latest_complete(&chunks);
        chunks.retain(|chunk| Some(chunk.seq) <= complete);
        let Some(seq) = complete else {
            return Ok(None);
        };
        chunks.sort_by_key(|chunk| (chunk.seq, chunk.worker));
        let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
        for (partition, end) in chunks.iter().flat_map(|chunk| &chunk.ends) {
            let slot = ends.entry(*partition).or_insert(0);
            *slot = (*slot).max(*end);
        }
        Ok(Some(EngineSnapshot {
            seq,
            ends: ends.into_iter().collect(),
            chunks: chunks.iter().map(|chunk| chunk.data.clone()).collect(),
        }))
    }

    fn write(&self, chunk: StateChunk) -> Result<(), String> {
        let mut chunks = self.lock();
        if chunks
            .iter()
            .any(|c| c.seq == chunk.seq && c.worker == chunk.worker)
        {
            return Err(format!(
                "checkpoint {} of worker {} is already stored",
                chunk.seq, chunk.worker
            ));
        }
        chunks.push(chunk);
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
                any::<u16>(),
                0usize..4,
                any::<u32>()
            )
                .prop_map(|(decision, voter, vote_id, offset, option, c, weight)| {
                    StateEntry::Ballot {
                        decision,
                        voter,
                        ballot: Ballot {
                            vote_id,
                            offset,
                            option,
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
                any::<[u8; 32]>()
            )
                .prop_map(|(decision, offset, voter, vote_id, leaf)| {
                    StateEntry::Leaf {
                        decision,
                        leaf: RecordLeaf {
                            offset,
                            voter,
                            vote_id,
                            leaf,
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
                data: encode_entries(&[]),
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
}
