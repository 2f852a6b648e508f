//! Synthetic votes, for the load generator and the benchmarks: one mix of components and
//! weights, so a load test and a benchmark exercise the same shape of traffic.

use rand::Rng;

use crate::{Component, Decision, Vote, VoteId, VoterId, Weight};

/// A component and a weight in the proportions of a typical electorate: 70 % democratic
/// (weight 1), 15 % expert (0.5 to 5), 10 % community (0.1 to 3), 5 % environmental data
/// (0.1 to 2).
pub fn random_component_weight(rng: &mut impl Rng) -> (Component, Weight) {
    match rng.random_range(0..100) {
        0..70 => (Component::Democratic, Weight::ONE),
        70..85 => (
            Component::Expert,
            Weight(rng.random_range(500_000..5_000_000)),
        ),
        85..95 => (
            Component::Community,
            Weight(rng.random_range(100_000..3_000_000)),
        ),
        _ => (
            Component::EnvironmentalData,
            Weight(rng.random_range(100_000..2_000_000)),
        ),
    }
}

/// A fresh vote by `voter_id` for a random option of `decision`.
pub fn random_vote(
    rng: &mut impl Rng,
    decision: &Decision,
    voter_id: VoterId,
    cast_at: i64,
) -> Vote {
    let (component, weight) = random_component_weight(rng);
    Vote {
        vote_id: VoteId(rng.random()),
        decision_id: decision.id,
        voter_id,
        option: rng.random_range(0..decision.options.len() as u16),
        component,
        weight,
        cast_at,
    }
}
