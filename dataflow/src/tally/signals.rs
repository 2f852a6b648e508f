//! What the dataflow tells the worker driving it besides results: the epoch it must seal
//! up to, and whether the log moved since it last looked.

use std::cell::Cell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::epoch::{Epoch, epoch_of};

/// Shared between a worker's operators and its [`TallyInputs`](super::TallyInputs).
#[derive(Clone, Default)]
pub(super) struct EpochSignals {
    /// The epoch every worker's input must pass for what the others fed (or marked for a
    /// checkpoint) to complete.
    wanted: Rc<Cell<Epoch>>,
    /// Set when any worker's log ends moved since the last look.
    log_moved: Rc<Cell<bool>>,
}

impl EpochSignals {
    /// Asks this worker to seal past `epoch`.
    pub(super) fn want_past(&self, epoch: Epoch) {
        self.wanted.set(self.wanted.get().max(epoch + 1));
    }

    pub(super) fn wanted(&self) -> Epoch {
        self.wanted.get()
    }

    /// Whether the log moved since the last call.
    pub(super) fn take_log_moved(&self) -> bool {
        self.log_moved.replace(false)
    }

    /// Builds the "EpochSignals" operator over the broadcast log ends. Ends are only sent
    /// when they change: a message at epoch e means some worker fed e, so every worker must
    /// seal past it (and there is something to checkpoint).
    pub(super) fn watch_log_ends(&self, log_ends: Stream<'_, Epoch, Vec<(u32, u64)>>) {
        let signals = self.clone();
        log_ends.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "EpochSignals",
            move |_capability, _info| {
                move |input, _output| {
                    input.for_each(|time, ends| {
                        if !ends.is_empty() {
                            signals.log_moved.set(true);
                            signals.want_past(epoch_of(&time));
                        }
                        ends.clear();
                    });
                }
            },
        );
    }
}
