//! The count: each voter's current vote summed per decision into a [`Tally`], published to
//! the view store one complete epoch at a time.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_ingest::{Position, partition_for};
use canopy_schemas::{Component, DecisionId};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};

use super::checkpoint::CapturedState;
use super::latest::{VoteKey, latest_vote_per_voter};
use crate::arithmetic::{Ballot, DecisionParams, Tally};
use crate::epoch::{EndsAtEpoch, Epoch, publish_epochs};
use crate::views::{ViewStore, ViewUpdate};

/// What the per-decision reduce sees: the decision's parameters, or one (option, component)
/// cell whose diff carries (count, weight_sum).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
enum DecisionEntry {
    Params(DecisionParams),
    Cell(u16, Component),
}

/// Where the count's results go: the view store, and the partition count that says which
/// partition's log position a decision's view is as of.
pub(super) struct ViewsSink {
    pub(super) views: Arc<dyn ViewStore>,
    pub(super) partitions: u32,
}

/// Builds the count from the vote and decision collections, publishing into `sink` behind
/// `probe`. With `capture`, the fold keeps the ballots it adds to the engine's state.
pub(super) fn build_tally<'scope>(
    votes: VecCollection<'scope, Epoch, (VoteKey, Ballot), i64>,
    decisions: VecCollection<'scope, Epoch, (u128, DecisionParams), i64>,
    log_ends: Stream<'scope, Epoch, Vec<(u32, u64)>>,
    sink: ViewsSink,
    capture: Option<CapturedState>,
    probe: &ProbeHandle<Epoch>,
) {
    let latest = latest_vote_per_voter(votes, capture);
    let tallies = tally_per_decision(latest, decisions);
    publish_views(tallies, log_ends, sink).probe_with(probe);
}

/// Per decision, the tally of its voters' current votes; none for a decision whose
/// parameters were never given.
fn tally_per_decision<'scope>(
    latest: VecCollection<'scope, Epoch, (VoteKey, Ballot), i64>,
    decisions: VecCollection<'scope, Epoch, (u128, DecisionParams), i64>,
) -> VecCollection<'scope, Epoch, (u128, Tally), i64> {
    let cells = latest.explode(|((decision, _voter), ballot): (VoteKey, Ballot)| {
        Some((
            (
                decision,
                DecisionEntry::Cell(ballot.option, ballot.component),
            ),
            (1i64, i64::from(ballot.weight)),
        ))
    });
    let params = decisions.explode(|(decision, params)| {
        Some(((decision, DecisionEntry::Params(params)), (1i64, 0i64)))
    });
    cells.concat(params).reduce_named(
        "TallyPerDecision",
        |_decision, entries: &[(&DecisionEntry, (i64, i64))], output: &mut Vec<(Tally, i64)>| {
            // Params sort first; a decision that was never registered has no result yet.
            let Some((DecisionEntry::Params(params), _)) = entries.first() else {
                return;
            };
            let sums = entries
                .iter()
                .filter_map(|(entry, (count, weight))| match entry {
                    DecisionEntry::Cell(option, component) => {
                        Some(((*option, *component), (*count as u64, *weight as u64)))
                    }
                    DecisionEntry::Params(_) => None,
                });
            output.push((Tally::from_sums(params, sums), 1));
        },
    )
}

/// The "PublishViews" sink: each complete epoch's changed tallies into the view store.
fn publish_views<'scope>(
    tallies: VecCollection<'scope, Epoch, (u128, Tally), i64>,
    log_ends: Stream<'scope, Epoch, Vec<(u32, u64)>>,
    sink: ViewsSink,
) -> Stream<'scope, Epoch, Vec<()>> {
    publish_epochs(
        tallies.inner,
        Pipeline,
        log_ends,
        "PublishViews",
        |update, diff| (update, diff),
        move |_epoch, updates, log_ends: &EndsAtEpoch| {
            sink.views
                .publish(views_for_epoch(updates, log_ends, sink.partitions));
        },
    )
}

/// Turns one complete epoch of tally changes into view updates: the new tally of each
/// changed decision, or its removal, tagged with the log position the epoch includes.
fn views_for_epoch(
    updates: Vec<((u128, Tally), i64)>,
    log_ends: &EndsAtEpoch,
    partitions: u32,
) -> Vec<ViewUpdate> {
    let mut changed: HashMap<u128, Option<Tally>> = HashMap::new();
    for ((decision, tally), diff) in updates {
        let slot = changed.entry(decision).or_insert(None);
        if diff > 0 {
            *slot = Some(tally);
        }
    }
    changed
        .into_iter()
        .map(|(decision, tally)| {
            let decision = DecisionId(decision);
            let partition = partition_for(decision, partitions);
            let as_of = Position {
                partition,
                offset: log_ends.end(partition),
            };
            ViewUpdate {
                decision,
                tally,
                as_of,
            }
        })
        .collect()
}
