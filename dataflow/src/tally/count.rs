//! The count: each voter's current vote summed per decision into a [`Tally`], published to
//! the view store one complete epoch at a time. Single choice, approval and quadratic are
//! kept incrementally (a changed ballot retracts and adds its own cells); ranked choice is
//! recounted per decision, by instant runoff over its distinct latest ballots, whenever
//! one of them changes.

use std::collections::HashMap;
use std::sync::Arc;

use canopy_ingest::{Position, partition_for};
use canopy_schemas::{Component, DecisionId, Method};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::probe::{Handle as ProbeHandle, Probe};

use super::checkpoint::CapturedState;
use super::latest::{VoteKey, latest_vote_per_voter};
use crate::arithmetic::{Ballot, DecisionParams, Tally};
use crate::epoch::{EndsAtEpoch, Epoch, publish_epochs};
use crate::methods::{CountedBallot, ballot_cells, count_decision};
use crate::views::{ViewStore, ViewUpdate};

/// What the per-decision reduce sees, each with a diff of (count, weight_sum): the
/// decision's parameters; an (option, component) cell of the methods that add up (single
/// choice, approval, quadratic), for ballots of `method`; the voters of such a method by
/// component, where a voter may be in several cells (approval, quadratic); and for ranked
/// choice the distinct (ranking, component, weight) ballots, which the reduce recounts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
enum DecisionEntry {
    Params(DecisionParams),
    Cell(Method, u16, Component),
    Voters(Method, Component),
    Ranked(
        #[serde(with = "crate::arithmetic::compact_ballot")] canopy_schemas::Ballot,
        Component,
        u32,
    ),
}

/// The reduce's entries one latest ballot adds.
fn ballot_entries(ballot: &Ballot) -> impl Iterator<Item = (DecisionEntry, (i64, i64))> + '_ {
    let method = ballot.marks.method();
    let weight = i64::from(ballot.weight);
    let cells = ballot_cells(&ballot.marks).map(move |(option, multiplier)| {
        (
            DecisionEntry::Cell(method, option, ballot.component),
            (1, weight * multiplier as i64),
        )
    });
    let voters = match method {
        // One cell per voter: the cells' counts are the voters.
        Method::SingleChoice | Method::RankedChoice => None,
        Method::Approval | Method::Quadratic => {
            Some((DecisionEntry::Voters(method, ballot.component), (1, weight)))
        }
    };
    let ranked = (method == Method::RankedChoice).then_some((
        DecisionEntry::Ranked(ballot.marks, ballot.component, ballot.weight),
        (1, weight),
    ));
    cells.chain(voters).chain(ranked)
}

/// A decision's tally from its reduce entries (params first): added up from the cells of
/// its method, or for ranked choice recounted by instant runoff from its distinct ballots.
fn decision_tally(params: &DecisionParams, entries: &[(&DecisionEntry, (i64, i64))]) -> Tally {
    if params.method == Method::RankedChoice {
        let ballots = entries.iter().flat_map(|(entry, (count, _))| {
            let ballot = match entry {
                DecisionEntry::Ranked(marks, component, weight) => Some(CountedBallot {
                    component: *component,
                    weight: *weight,
                    ballot: *marks,
                }),
                _ => None,
            };
            ballot.into_iter().flat_map(move |ballot| {
                std::iter::repeat_n(ballot, usize::try_from(*count).unwrap_or(0))
            })
        });
        return count_decision(params, ballots).into_tally();
    }
    let sums = entries
        .iter()
        .filter_map(|(entry, (count, weight))| match entry {
            DecisionEntry::Cell(method, option, component) if *method == params.method => {
                Some(((*option, *component), (*count as u64, *weight as u64)))
            }
            _ => None,
        });
    if params.method == Method::SingleChoice {
        return Tally::from_sums(params, sums);
    }
    let mut turnout_by_component = [0u64; 4];
    for (entry, (count, _)) in entries {
        if let DecisionEntry::Voters(method, component) = entry
            && *method == params.method
        {
            turnout_by_component[component.index()] += *count as u64;
        }
    }
    Tally::from_sums_and_turnout(params, sums, turnout_by_component)
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
        ballot_entries(&ballot)
            .map(|(entry, diff)| ((decision, entry), diff))
            .collect::<Vec<_>>()
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
            output.push((decision_tally(params, entries), 1));
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
