//! Dataflow time: epochs, an operator's input held back until its epoch is complete, and
//! which log prefix a complete epoch includes.
//!
//! Every operator that acts on whole epochs (the tally's fold, its publishing sink, the vote
//! record, the sensor windows and their sink) holds its input in an [`EpochBuffer`]: the
//! results of an epoch must not be applied before every worker's part of it has arrived.

use std::collections::{BTreeMap, HashMap};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, InputCapability};

/// Dataflow time: an epoch number. Every record fed between two seals shares an epoch.
pub type Epoch = u64;

/// Epoch 0 holds only what a restart restores; state entries from it are already stored.
pub(crate) const RESTORE_EPOCH: Epoch = 0;

/// The epoch a message was sent at.
pub(crate) fn epoch_of(capability: &InputCapability<Epoch>) -> Epoch {
    *capability
        .least()
        .expect("a message carries at least one time")
}

/// One complete epoch's records, with the capability to emit at the epoch: holding it until
/// the records are applied keeps a probe downstream from calling the epoch done too early.
pub(crate) struct CompleteEpoch<D> {
    pub(crate) epoch: Epoch,
    pub(crate) capability: Capability<Epoch>,
    pub(crate) records: Vec<D>,
}

/// An operator's input held back per epoch until no input can add to the epoch.
pub(crate) struct EpochBuffer<D> {
    pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<D>)>,
}

impl<D> Default for EpochBuffer<D> {
    fn default() -> Self {
        Self {
            pending: BTreeMap::new(),
        }
    }
}

impl<D> EpochBuffer<D> {
    /// Holds a batch of a timely stream (its records moved out of `batch`) under the
    /// batch's epoch.
    pub(crate) fn hold_batch(&mut self, capability: &InputCapability<Epoch>, batch: &mut Vec<D>) {
        self.held_at(capability, epoch_of(capability)).append(batch);
    }

    /// Holds a batch of differential updates, each under its own time: one batch may span
    /// several epochs. `record` turns an update and its diff into what is held.
    pub(crate) fn hold_updates<U>(
        &mut self,
        capability: &InputCapability<Epoch>,
        updates: &mut Vec<(U, Epoch, i64)>,
        record: impl Fn(U, i64) -> D,
    ) {
        for (update, time, diff) in updates.drain(..) {
            self.held_at(capability, time).push(record(update, diff));
        }
    }

    fn held_at(&mut self, capability: &InputCapability<Epoch>, epoch: Epoch) -> &mut Vec<D> {
        &mut self
            .pending
            .entry(epoch)
            .or_insert_with(|| (capability.delayed(&epoch, 0), Vec::new()))
            .1
    }

    /// Removes the oldest held epoch if no input can add to it any more (`open` says
    /// whether one still can).
    pub(crate) fn pop_complete(
        &mut self,
        open: impl Fn(&Epoch) -> bool,
    ) -> Option<CompleteEpoch<D>> {
        let entry = self.pending.first_entry()?;
        if open(entry.key()) {
            return None;
        }
        let (epoch, (capability, records)) = entry.remove_entry();
        Some(CompleteEpoch {
            epoch,
            capability,
            records,
        })
    }
}

/// Every partition's log end as of each epoch, as one operator sees it: every worker
/// broadcasts the ends of the partitions it feeds when it seals an epoch, so an operator
/// releasing epoch e on any process knows which log prefix e includes.
#[derive(Default)]
pub(crate) struct EndsAtEpoch {
    pending: BTreeMap<Epoch, Vec<(u32, u64)>>,
    ends: HashMap<u32, u64>,
}

impl EndsAtEpoch {
    fn absorb(&mut self, epoch: Epoch, ends: &mut Vec<(u32, u64)>) {
        self.pending.entry(epoch).or_default().append(ends);
    }

    /// Applies every buffered epoch for which `complete` holds, in order.
    fn settle(&mut self, complete: impl Fn(&Epoch) -> bool) {
        while let Some(entry) = self.pending.first_entry() {
            if !complete(entry.key()) {
                return;
            }
            for (partition, end) in entry.remove() {
                let slot = self.ends.entry(partition).or_insert(0);
                *slot = (*slot).max(end);
            }
        }
    }

    /// `partition`'s log end as of the epoch being released.
    pub(crate) fn end(&self, partition: u32) -> u64 {
        self.ends.get(&partition).copied().unwrap_or(0)
    }
}

/// Builds the operator that publishes `updates` one complete epoch at a time, in epoch
/// order, each with the log ends as of that epoch. An epoch is complete once neither
/// `updates` nor `log_ends` can add to it; `record` makes what is held of an update and its
/// diff. The epoch's capability is held until `sink` returns, so a probe on the output
/// means "published", not just delivered.
pub(crate) fn publish_epochs<'scope, U, D, P>(
    updates: Stream<'scope, Epoch, Vec<(U, Epoch, i64)>>,
    pact: P,
    log_ends: Stream<'scope, Epoch, Vec<(u32, u64)>>,
    name: &str,
    record: impl Fn(U, i64) -> D + 'static,
    mut sink: impl FnMut(Epoch, Vec<D>, &EndsAtEpoch) + 'static,
) -> Stream<'scope, Epoch, Vec<()>>
where
    U: Clone + 'static,
    D: 'static,
    P: ParallelizationContract<Epoch, Vec<(U, Epoch, i64)>>,
{
    updates.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        log_ends,
        pact,
        Pipeline,
        name,
        move |_capability, _info| {
            let mut pending: EpochBuffer<D> = EpochBuffer::default();
            let mut ends_at_epoch = EndsAtEpoch::default();
            move |(input, frontier), (ends_in, ends_frontier), _output| {
                input.for_each(|capability, batch| {
                    pending.hold_updates(&capability, batch, &record)
                });
                ends_in.for_each(|time, ends| ends_at_epoch.absorb(epoch_of(&time), ends));
                let complete =
                    |epoch: &Epoch| !frontier.less_equal(epoch) && !ends_frontier.less_equal(epoch);
                while let Some(complete_epoch) = pending.pop_complete(|epoch| !complete(epoch)) {
                    let epoch = complete_epoch.epoch;
                    ends_at_epoch.settle(|settled| settled <= &epoch);
                    sink(epoch, complete_epoch.records, &ends_at_epoch);
                }
                ends_at_epoch.settle(complete);
            }
        },
    )
}
