//! A worker's side of engine checkpoints (their format and store are the state module's):
//! markers broadcast at an epoch, the state entries the operators produce, and this
//! worker's part of each checkpoint handed out once its epoch is complete everywhere.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::vec::{Broadcast, Input as TimelyInput};
use timely::dataflow::{InputHandle, Scope};

use super::signals::EpochSignals;
use crate::epoch::{Epoch, epoch_of};
use crate::state::StateEntry;

/// State entries a worker's operators produced, with their epochs, not yet written.
pub(super) type CapturedState = Rc<RefCell<Vec<(Epoch, StateEntry)>>>;

/// Markers a worker has received: (seq, epoch).
type ReceivedMarkers = Rc<RefCell<Vec<(u64, Epoch)>>>;

/// One worker's part of a checkpoint, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueCheckpoint {
    pub seq: u64,
    pub ends: Vec<(u32, u64)>,
    pub entries: Vec<StateEntry>,
}

/// A worker's side of engine checkpoints.
pub(super) struct CheckpointCapture {
    /// Checkpoint markers enter through worker 0 and reach every worker.
    markers: InputHandle<Epoch, CapacityContainerBuilder<Vec<u64>>>,
    received: ReceivedMarkers,
    entries: CapturedState,
    /// This worker's partition ends at each epoch it sealed since the last checkpoint.
    ends_by_epoch: BTreeMap<Epoch, Vec<(u32, u64)>>,
}

/// Builds the "CheckpointMarkers" operator behind `probe` and returns the capture that
/// marks checkpoints and hands out this worker's parts of them, from `entries`.
pub(super) fn capture_checkpoints(
    scope: Scope<'_, Epoch>,
    entries: CapturedState,
    signals: &EpochSignals,
    probe: &ProbeHandle<Epoch>,
) -> CheckpointCapture {
    let (markers_input, markers) = TimelyInput::new_input::<u64>(&scope);
    let received: ReceivedMarkers = Rc::default();
    let (into, signals) = (Rc::clone(&received), signals.clone());
    markers
        .broadcast()
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "CheckpointMarkers",
            move |_capability, _info| {
                move |input, _output| {
                    input.for_each(|time, seqs| {
                        let mut received = into.borrow_mut();
                        let epoch = epoch_of(&time);
                        signals.want_past(epoch);
                        received.extend(seqs.drain(..).map(|seq| (seq, epoch)));
                    });
                }
            },
        )
        .probe_with(probe);
    CheckpointCapture {
        markers: markers_input,
        received,
        entries,
        ends_by_epoch: BTreeMap::new(),
    }
}

impl CheckpointCapture {
    /// Starts checkpoint `seq` at the current epoch.
    pub(super) fn mark(&mut self, seq: u64) {
        self.markers.send(seq);
    }

    /// Keeps an entry no operator produces (a close, read by the worker itself) for the
    /// checkpoint of `epoch`.
    pub(super) fn capture(&self, epoch: Epoch, entry: StateEntry) {
        self.entries.borrow_mut().push((epoch, entry));
    }

    /// Remembers this worker's partition ends as of `epoch`, the epoch being sealed.
    pub(super) fn note_ends(&mut self, epoch: Epoch, ends: Vec<(u32, u64)>) {
        self.ends_by_epoch.insert(epoch, ends);
    }

    /// Moves the marker input on with the other inputs.
    pub(super) fn advance_to(&mut self, next: Epoch) {
        self.markers.advance_to(next);
        self.markers.flush();
    }

    /// This worker's parts of the checkpoints whose epochs `probe` shows complete: the
    /// state entries of epochs up to the checkpoint's (taken out of the buffer) and the ends
    /// of the partitions this worker feeds as of that epoch.
    pub(super) fn take_due(&mut self, probe: &ProbeHandle<Epoch>) -> Vec<DueCheckpoint> {
        let mut due = Vec::new();
        let received = Rc::clone(&self.received);
        let mut received = received.borrow_mut();
        received.sort_unstable_by_key(|(_, epoch)| *epoch);
        while let Some(&(seq, epoch)) = received.first() {
            if probe.less_equal(&epoch) {
                break;
            }
            received.remove(0);
            due.push(DueCheckpoint {
                seq,
                entries: self.take_entries_until(epoch),
                ends: self.take_ends_at(epoch),
            });
        }
        due
    }

    fn take_entries_until(&mut self, epoch: Epoch) -> Vec<StateEntry> {
        // The fold and the record each add in epoch order, but interleaved.
        let mut entries = self.entries.borrow_mut();
        let (taken, kept): (Vec<_>, Vec<_>) = entries.drain(..).partition(|(at, _)| *at <= epoch);
        *entries = kept;
        taken.into_iter().map(|(_, entry)| entry).collect()
    }

    /// The ends as of `epoch`, forgetting older ones (the latest stays: it is still the
    /// ends as of every epoch until the next seal that moves them).
    fn take_ends_at(&mut self, epoch: Epoch) -> Vec<(u32, u64)> {
        let ends = self
            .ends_by_epoch
            .range(..=epoch)
            .next_back()
            .map(|(_, ends)| ends.clone())
            .unwrap_or_default();
        self.ends_by_epoch = self.ends_by_epoch.split_off(&(epoch + 1));
        if !ends.is_empty() {
            self.ends_by_epoch.insert(epoch, ends.clone());
        }
        ends
    }
}
