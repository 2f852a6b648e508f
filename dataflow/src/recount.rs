//! The from-scratch recount: a plain single-threaded pass over the log with hash maps, each
//! decision counted by its method's reference rules ([`count_decision`]).
//! It is the oracle the tests hold the dataflow to (the tallies, and the record's Merkle
//! trees), and the floor the benchmark measures the dataflow against.

use std::collections::{HashMap, HashSet};

use canopy_chain::{MerkleLog, leaf_hash};
use canopy_ingest::{LogRecord, VoteLogRecord};
use canopy_schemas::{Decision, DecisionId, VoterId};

use crate::arithmetic::{DecisionParams, Tally};
use crate::methods::{CountedBallot, count_decision};

/// Recounts `records` (each partition's records in offset order) for `decisions`.
/// Same rules as the dataflow: per (decision, voter) a vote id counts once (its first
/// delivery), and the vote with the highest offset is the voter's current one.
pub fn recount<'a>(
    records: impl IntoIterator<Item = &'a LogRecord>,
    decisions: &[Decision],
) -> HashMap<DecisionId, Tally> {
    let mut seen: HashSet<(DecisionId, VoterId, u128)> = HashSet::new();
    let mut latest: HashMap<(DecisionId, VoterId), (u64, CountedBallot)> = HashMap::new();
    for record in records {
        let vote = &record.vote;
        if !seen.insert((vote.decision_id, vote.voter_id, vote.vote_id.0)) {
            continue;
        }
        let current = (
            record.position.offset,
            CountedBallot {
                component: vote.component,
                weight: vote.weight.0,
                ballot: vote.ballot,
            },
        );
        latest
            .entry((vote.decision_id, vote.voter_id))
            .and_modify(|held| {
                if current.0 > held.0 {
                    *held = current;
                }
            })
            .or_insert(current);
    }
    let mut ballots: HashMap<DecisionId, Vec<CountedBallot>> = HashMap::new();
    for ((decision, _), (_, ballot)) in latest {
        ballots.entry(decision).or_default().push(ballot);
    }
    decisions
        .iter()
        .map(|decision| {
            let params = DecisionParams::from(decision);
            let ballots = ballots.remove(&decision.id).unwrap_or_default();
            (decision.id, count_decision(&params, ballots).into_tally())
        })
        .collect()
}

/// Rebuilds every decision's Merkle log from `records` (each partition's records in offset
/// order). Same rules as the record: a leaf per first delivery of a (voter, vote id), in log
/// order. A decision without votes has no tree.
pub fn recount_trees<'a>(
    records: impl IntoIterator<Item = &'a LogRecord>,
) -> HashMap<DecisionId, MerkleLog> {
    let mut seen: HashSet<(DecisionId, VoterId, u128)> = HashSet::new();
    let mut trees: HashMap<DecisionId, MerkleLog> = HashMap::new();
    for record in records {
        let vote = &record.vote;
        if seen.insert((vote.decision_id, vote.voter_id, vote.vote_id.0)) {
            trees
                .entry(vote.decision_id)
                .or_default()
                .append_hash(leaf_hash(&record.logged().leaf_data()));
        }
    }
    trees
}

/// The votes of `records` (entries of a vote log, in any order across partitions) that
/// count: each decision's votes before its first close in the log, all of them for a
/// decision not closed. What [`recount`] and [`recount_trees`] take, for a log with closes.
pub fn counted_votes(records: &[VoteLogRecord]) -> Vec<&LogRecord> {
    let mut first_close: HashMap<DecisionId, u64> = HashMap::new();
    for record in records {
        if let VoteLogRecord::Close(close) = record {
            let at = first_close
                .entry(close.close.decision)
                .or_insert(close.position.offset);
            *at = (*at).min(close.position.offset);
        }
    }
    records
        .iter()
        .filter_map(VoteLogRecord::vote)
        .filter(|record| {
            first_close
                .get(&record.vote.decision_id)
                .is_none_or(|close| record.position.offset < *close)
        })
        .collect()
}

/// [`recount_trees`] for a log with closes: each decision's counted votes (see
/// [`counted_votes`]), then its first close as its last leaf.
pub fn recount_log_trees(records: &[VoteLogRecord]) -> HashMap<DecisionId, MerkleLog> {
    let mut trees = recount_trees(counted_votes(records));
    let mut closed: HashMap<DecisionId, &canopy_ingest::CloseRecord> = HashMap::new();
    for record in records {
        if let VoteLogRecord::Close(close) = record {
            let first = closed.entry(close.close.decision).or_insert(close);
            if close.position.offset < first.position.offset {
                *first = close;
            }
        }
    }
    for (decision, close) in closed {
        trees
            .entry(decision)
            .or_default()
            .append_hash(leaf_hash(&close.close.leaf_data()));
    }
    trees
}
