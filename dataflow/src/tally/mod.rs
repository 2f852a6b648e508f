//! The tally dataflow: each voter's current vote summed per decision into a
//! [`Tally`](crate::arithmetic::Tally) and published to a view store, beside it the vote
//! record's operator and the capture of engine checkpoints.
//!
//! ```text
//!  votes ((decision, voter), ballot)
//!    └─ fold (per complete epoch, in log order): per (decision, voter), drop repeated
//!       vote ids, keep the latest by offset; emit −old +new
//!        └─ explode: (decision, cell(option, component)) with diff (1, weight)
//!  decisions (decision, params) ─ explode: (decision, params) with diff (1, 0)
//!    └─ concat ─ reduce: per decision, sums → shares, composite, turnout, quorum ─▶ Tally
//!        └─ sink: buffer each epoch until complete, publish to the ViewStore
//!  log ends (partition, end) ─ broadcast ─▶ the sink and the record: what an epoch includes
//! ```

mod checkpoint;
mod count;
mod inputs;
mod latest;
mod signals;
mod vote_record;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::input::Input;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};
use timely::dataflow::operators::vec::{Broadcast, Input as TimelyInput};
use timely::worker::Worker;

pub use self::checkpoint::DueCheckpoint;
pub use self::inputs::TallyInputs;

use self::checkpoint::{CapturedState, capture_checkpoints};
use self::count::{ViewsSink, build_tally};
use self::inputs::TallyHandles;
use self::latest::VoteKey;
use self::signals::EpochSignals;
use self::vote_record::build_record;
use crate::arithmetic::{Ballot, DecisionParams};
use crate::epoch::Epoch;
use crate::record::VoteRecord;
use crate::views::ViewStore;

/// Builds the tally dataflow on this worker. Every worker of the computation (on every
/// process) must call it, with the same `partitions`, `record.is_some()` and `checkpoints`.
///
/// With a [`VoteRecord`], every vote's leaf also goes, by decision, to the record operator,
/// which appends each complete epoch to the decision's Merkle log (see the record module).
/// With `checkpoints`, the fold and the record keep what they add to the engine's state
/// until [`TallyInputs::due_checkpoints`] hands it out (see the state module).
pub fn build_tally_dataflow(
    worker: &mut Worker,
    views: Arc<dyn ViewStore>,
    partitions: u32,
    record: Option<Arc<VoteRecord>>,
    checkpoints: bool,
) -> TallyInputs {
    let signals = EpochSignals::default();
    let captured: CapturedState = Rc::default();
    let known_closes: KnownCloses = Rc::default();
    let capture = checkpoints.then(|| Rc::clone(&captured));
    let sink = ViewsSink {
        views: Arc::clone(&views),
        partitions,
    };
    let handles = worker.dataflow::<Epoch, _, _>(|scope| {
        let (votes_input, votes) = scope.new_collection::<(VoteKey, Ballot), i64>();
        let (decisions_input, decisions) = scope.new_collection::<(u128, DecisionParams), i64>();
        let (ends_input, ends) = TimelyInput::new_input::<(u32, u64)>(&scope);
        let ends = ends.broadcast();
        let probe = ProbeHandle::new();
        let (closes_input, closes) = TimelyInput::new_input::<(u128, u64)>(&scope);
        learn_closes(closes, Rc::clone(&known_closes), &probe);
        build_tally(
            votes,
            decisions,
            ends.clone(),
            sink,
            capture.clone(),
            &probe,
        );
        let records_input =
            record.map(|record| build_record(scope, ends.clone(), record, capture, &probe));
        signals.watch_log_ends(ends);
        let checkpoints =
            checkpoints.then(|| capture_checkpoints(scope, captured, &signals, &probe));
        TallyHandles {
            votes: votes_input,
            records: records_input,
            decisions: decisions_input,
            ends: ends_input,
            closes: closes_input,
            checkpoints,
            probe,
        }
    });
    TallyInputs::new(handles, signals, views, known_closes)
}

/// Each decision's close offset as this worker knows it: the first close in the log wins.
pub(crate) type KnownCloses = Rc<RefCell<HashMap<u128, u64>>>;

/// Closes restored from a checkpoint enter on any worker and must reach the one that reads
/// the decision's partition, on whatever process: broadcast, every worker keeps them all
/// (they are few: one per decision).
fn learn_closes(
    closes: timely::dataflow::Stream<'_, Epoch, Vec<(u128, u64)>>,
    known: KnownCloses,
    probe: &ProbeHandle<Epoch>,
) {
    closes
        .broadcast()
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "Closes",
            move |_capability, _info| {
                move |input, _output| {
                    input.for_each(|_time, closes| {
                        let mut known = known.borrow_mut();
                        for (decision, offset) in closes.drain(..) {
                            let at = known.entry(decision).or_insert(offset);
                            *at = (*at).min(offset);
                        }
                    });
                }
            },
        )
        .probe_with(probe);
}
