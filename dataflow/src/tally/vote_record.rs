//! The vote record's operator: each complete epoch's leaves appended to their decisions'
//! Merkle logs (the logs themselves are the record module's).

use std::sync::Arc;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::{Scope, Stream};

use super::checkpoint::CapturedState;
use crate::epoch::{EndsAtEpoch, Epoch, RESTORE_EPOCH, publish_epochs};
use crate::record::{RecordLeaf, VoteRecord, apply_record_epoch};
use crate::state::StateEntry;

/// Builds the "VoteRecord" operator behind `probe` and returns the input its leaves enter
/// by. Leaves go to the worker that owns their decision; with `capture`, the operator keeps
/// the leaves it adds to the engine's state.
pub(super) fn build_record<'scope>(
    scope: Scope<'scope, Epoch>,
    log_ends: Stream<'scope, Epoch, Vec<(u32, u64)>>,
    record: Arc<VoteRecord>,
    capture: Option<CapturedState>,
    probe: &ProbeHandle<Epoch>,
) -> InputSession<Epoch, (u128, RecordLeaf), i64> {
    type Update = ((u128, RecordLeaf), Epoch, i64);
    let (input, leaves) = scope.new_collection::<(u128, RecordLeaf), i64>();
    publish_epochs(
        leaves.inner,
        Exchange::new(|update: &Update| (update.0).0.hashed()),
        log_ends,
        "VoteRecord",
        |leaf, _diff| leaf,
        move |epoch, leaves: Vec<(u128, RecordLeaf)>, log_ends: &EndsAtEpoch| {
            if let Some(capture) = capture.as_ref()
                && epoch != RESTORE_EPOCH
            {
                capture
                    .borrow_mut()
                    .extend(leaves.iter().map(|(decision, leaf)| {
                        (
                            epoch,
                            StateEntry::Leaf {
                                decision: *decision,
                                leaf: *leaf,
                            },
                        )
                    }));
            }
            apply_record_epoch(&record, leaves, |partition| log_ends.end(partition));
        },
    )
    .probe_with(probe);
    input
}
