//! One worker's handles on the tally dataflow: what it feeds, how it seals epochs, and how
//! it learns that an epoch is published.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_chain::leaf_hash;
use canopy_ingest::{CloseRecord, LogRecord};
use canopy_schemas::{Decision, DecisionId};
use differential_dataflow::input::InputSession;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::InputHandle;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::worker::Worker;

use super::KnownCloses;
use super::checkpoint::{CheckpointCapture, DueCheckpoint};
use super::latest::VoteKey;
use super::signals::EpochSignals;
use crate::arithmetic::{Ballot, DecisionParams};
use crate::epoch::Epoch;
use crate::record::{LeafEntry, RecordLeaf};
use crate::state::StateEntry;
use crate::views::ViewStore;

/// The inputs and the probe of one worker's tally dataflow, as it is built.
pub(super) struct TallyHandles {
    pub(super) votes: InputSession<Epoch, (VoteKey, Ballot), i64>,
    /// Present when the dataflow keeps the vote record.
    pub(super) records: Option<InputSession<Epoch, (u128, RecordLeaf), i64>>,
    pub(super) decisions: InputSession<Epoch, (u128, DecisionParams), i64>,
    /// (partition, end) of the partitions this worker feeds, sent when an epoch is sealed.
    pub(super) ends: InputHandle<Epoch, CapacityContainerBuilder<Vec<(u32, u64)>>>,
    /// (decision, offset) of closes restored from a checkpoint, broadcast to every worker.
    pub(super) closes: InputHandle<Epoch, CapacityContainerBuilder<Vec<(u128, u64)>>>,
    /// Present when the engine writes checkpoints of its state.
    pub(super) checkpoints: Option<CheckpointCapture>,
    pub(super) probe: ProbeHandle<Epoch>,
}

/// One worker's handles on the tally dataflow: feed votes and decisions, seal epochs,
/// ask whether an epoch is fully reflected in the view store.
pub struct TallyInputs {
    votes: InputSession<Epoch, (VoteKey, Ballot), i64>,
    records: Option<InputSession<Epoch, (u128, RecordLeaf), i64>>,
    decisions: InputSession<Epoch, (u128, DecisionParams), i64>,
    ends_input: InputHandle<Epoch, CapacityContainerBuilder<Vec<(u32, u64)>>>,
    closes_input: InputHandle<Epoch, CapacityContainerBuilder<Vec<(u128, u64)>>>,
    known_closes: KnownCloses,
    checkpoints: Option<CheckpointCapture>,
    probe: ProbeHandle<Epoch>,
    signals: EpochSignals,
    known_decisions: HashMap<DecisionId, DecisionParams>,
    views: Arc<dyn ViewStore>,
    /// End offsets of the partitions this worker fed, as of the current epoch.
    ends: HashMap<u32, u64>,
    sent_ends: HashMap<u32, u64>,
    published_ends: HashMap<u32, u64>,
}

impl TallyInputs {
    pub(super) fn new(
        handles: TallyHandles,
        signals: EpochSignals,
        views: Arc<dyn ViewStore>,
        known_closes: KnownCloses,
    ) -> Self {
        Self {
            votes: handles.votes,
            records: handles.records,
            decisions: handles.decisions,
            ends_input: handles.ends,
            closes_input: handles.closes,
            known_closes,
            checkpoints: handles.checkpoints,
            probe: handles.probe,
            signals,
            known_decisions: HashMap::new(),
            views,
            ends: HashMap::new(),
            sent_ends: HashMap::new(),
            published_ends: HashMap::new(),
        }
    }

    /// Feeds one logged vote into the current epoch; false, feeding nothing, for a vote
    /// after its decision's close.
    pub fn push(&mut self, record: &LogRecord) -> bool {
        let vote = &record.vote;
        let end = self.ends.entry(record.position.partition).or_insert(0);
        *end = (*end).max(record.position.offset + 1);
        if self.closed_before(vote.decision_id, record.position.offset) {
            return false;
        }
        let ballot = Ballot {
            vote_id: vote.vote_id.0,
            offset: record.position.offset,
            marks: vote.ballot,
            component: vote.component,
            weight: vote.weight.0,
        };
        self.votes
            .update(((vote.decision_id.0, vote.voter_id.0), ballot), 1);
        if let Some(records) = &mut self.records {
            let entry = record.logged().leaf_data();
            let leaf = RecordLeaf {
                offset: record.position.offset,
                voter: vote.voter_id.0,
                vote_id: vote.vote_id.0,
                leaf: leaf_hash(&entry),
                entry: Some(LeafEntry(entry)),
            };
            records.update((vote.decision_id.0, leaf), 1);
        }
        true
    }

    /// Whether `decision` was closed before `offset` of its partition.
    fn closed_before(&self, decision: DecisionId, offset: u64) -> bool {
        self.known_closes
            .borrow()
            .get(&decision.0)
            .is_some_and(|close| *close < offset)
    }

    /// Takes a close read from the log: true when it is the decision's first, from which on
    /// its votes no longer count (kept in engine checkpoints), and which the record appends
    /// as the decision's last leaf. A later close changes nothing.
    pub fn push_close(&mut self, record: &CloseRecord) -> bool {
        let (decision, offset) = (record.close.decision.0, record.position.offset);
        let end = self.ends.entry(record.position.partition).or_insert(0);
        *end = (*end).max(offset + 1);
        let first = self
            .known_closes
            .borrow()
            .get(&decision)
            .is_none_or(|known| offset < *known);
        if first {
            self.known_closes.borrow_mut().insert(decision, offset);
            // Every worker learns it (the record's, which may be another, included).
            self.closes_input.send((decision, offset));
            if let Some(records) = &mut self.records {
                let entry = record.close.leaf_data();
                let leaf = RecordLeaf {
                    offset,
                    voter: 0,
                    vote_id: 0,
                    leaf: leaf_hash(&entry),
                    entry: Some(LeafEntry(entry)),
                };
                records.update((decision, leaf), 1);
            }
            if let Some(checkpoints) = &self.checkpoints {
                checkpoints.capture(self.current_epoch(), StateEntry::Close { decision, offset });
            }
        }
        first
    }

    /// Each decision's close offset this worker knows of.
    pub fn closes(&self) -> Vec<(DecisionId, u64)> {
        self.known_closes
            .borrow()
            .iter()
            .map(|(decision, offset)| (DecisionId(*decision), *offset))
            .collect()
    }

    /// Whether this worker has been given `decision`'s parameters.
    pub fn knows(&self, decision: DecisionId) -> bool {
        self.known_decisions.contains_key(&decision)
    }

    /// Adds a decision, or replaces its parameters (the earlier ones are retracted).
    pub fn upsert_decision(&mut self, decision: &Decision) {
        let params = DecisionParams::from(decision);
        if let Some(old) = self.known_decisions.insert(decision.id, params) {
            if old == params {
                return;
            }
            self.decisions.update((decision.id.0, old), -1);
        }
        self.decisions.update((decision.id.0, params), 1);
    }

    /// Records that this worker has fed `partition` up to (not including) `end`, even if
    /// nothing new came in, so the view store's frontier can move.
    pub fn note_end(&mut self, partition: u32, end: u64) {
        let slot = self.ends.entry(partition).or_insert(0);
        *slot = (*slot).max(end);
    }

    /// Feeds restored engine state (see the state module). Call before the first seal, so
    /// it lands in the restore epoch, on any worker: the dataflow routes each entry to the
    /// worker that owns its key.
    pub fn restore(&mut self, entries: &[StateEntry]) {
        for entry in entries {
            match *entry {
                StateEntry::Ballot {
                    decision,
                    voter,
                    ballot,
                } => self.votes.update(((decision, voter), ballot), 1),
                StateEntry::Leaf { decision, leaf } => {
                    if let Some(records) = &mut self.records {
                        records.update((decision, leaf), 1);
                    }
                }
                // Not captured again: it stays in the restored chunk this worker's base
                // keeps.
                StateEntry::Close { decision, offset } => {
                    self.closes_input.send((decision, offset));
                }
            }
        }
    }

    /// Closes the current epoch and returns it; what is fed next goes into the next one.
    pub fn seal(&mut self) -> Epoch {
        let next = *self.votes.time() + 1;
        self.seal_until(next)
    }

    /// Closes the current epoch and skips ahead so the next one is `next` (at least the
    /// epoch after the current one): how an idle worker catches up with busy ones.
    pub fn seal_until(&mut self, next: Epoch) -> Epoch {
        let epoch = *self.votes.time();
        let changed: Vec<(u32, u64)> = self
            .ends
            .iter()
            .filter(|(partition, end)| self.sent_ends.get(partition) != Some(end))
            .map(|(partition, end)| (*partition, *end))
            .collect();
        for (partition, end) in &changed {
            self.ends_input.send((*partition, *end));
            self.sent_ends.insert(*partition, *end);
        }
        if let Some(checkpoints) = &mut self.checkpoints
            && !changed.is_empty()
        {
            let mut ends: Vec<(u32, u64)> = self.ends.iter().map(|(p, e)| (*p, *e)).collect();
            ends.sort_unstable();
            checkpoints.note_ends(epoch, ends);
        }
        let next = next.max(epoch + 1);
        self.votes.advance_to(next);
        self.decisions.advance_to(next);
        self.ends_input.advance_to(next);
        self.closes_input.advance_to(next);
        self.votes.flush();
        self.decisions.flush();
        self.ends_input.flush();
        self.closes_input.flush();
        if let Some(records) = &mut self.records {
            records.advance_to(next);
            records.flush();
        }
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.advance_to(next);
        }
        epoch
    }

    /// The epoch this worker must seal up to so that every epoch another worker fed (or
    /// marked for a checkpoint), on any process, can complete.
    pub fn wanted_epoch(&self) -> Epoch {
        self.signals.wanted()
    }

    /// Whether any partition's end moved, anywhere in the computation, since the last call:
    /// whether a checkpoint now would hold anything new.
    pub fn take_log_moved(&mut self) -> bool {
        self.checkpoints.is_some() && self.signals.take_log_moved()
    }

    /// Starts checkpoint `seq` at the current epoch; every worker writes its part once the
    /// epoch is complete. One worker of the computation marks checkpoints.
    pub fn mark_checkpoint(&mut self, seq: u64) {
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.mark(seq);
        }
    }

    /// This worker's parts of the checkpoints whose epochs are complete everywhere: the
    /// state entries of epochs up to the checkpoint's (taken out of the buffer) and the ends
    /// of the partitions this worker feeds as of that epoch.
    pub fn due_checkpoints(&mut self) -> Vec<DueCheckpoint> {
        match &mut self.checkpoints {
            Some(checkpoints) => checkpoints.take_due(&self.probe),
            None => Vec::new(),
        }
    }

    /// The epoch that records pushed now go into.
    pub fn current_epoch(&self) -> Epoch {
        *self.votes.time()
    }

    /// True once every worker's results for `epoch` are in the view store.
    pub fn is_published(&self, epoch: Epoch) -> bool {
        !self.probe.less_equal(&epoch)
    }

    /// Tells the view store that the partitions this worker feeds are complete up to their
    /// ends as of the last published epoch. Call after [`is_published`](Self::is_published).
    pub fn publish_frontier(&mut self) {
        for (partition, end) in &self.ends {
            if self.published_ends.get(partition) != Some(end) {
                self.views.advance(*partition, *end);
                self.published_ends.insert(*partition, *end);
            }
        }
    }

    /// Steps `worker` until `epoch` is published, then advances the view store's frontier.
    pub fn run_until_published(&mut self, worker: &mut Worker, epoch: Epoch) {
        // Parks when there is nothing to do: in a cluster the epoch may wait on another
        // process, whose messages wake the worker; spinning would burn a core meanwhile.
        while self.probe.less_equal(&epoch) {
            worker.step_or_park(Some(std::time::Duration::from_millis(1)));
        }
        self.publish_frontier();
    }
}
