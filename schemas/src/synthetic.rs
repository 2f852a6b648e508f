//! Synthetic votes, for the load generator and the benchmarks: one mix of components and
//! weights, so a load test and a benchmark exercise the same shape of traffic.

use rand::Rng;

use crate::{
    Ballot, Component, Decision, MAX_ALLOCATIONS, MAX_RANKS, Method, Vote, VoteId, VoterId, Weight,
};

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

/// A random valid ballot for `decision`, by its method: one option; each option approved
/// with even odds (one at least); up to five options ranked; votes of 1 to 3 on random
/// options for as long as the credits last.
pub fn random_ballot(rng: &mut impl Rng, decision: &Decision) -> Ballot {
    let options = decision.options.len().min(256) as u16;
    let valid = "built within the decision's options and limits";
    match decision.method {
        Method::SingleChoice => Ballot::single_choice(rng.random_range(0..options)).expect(valid),
        Method::Approval => {
            let mut approved: Vec<u16> = (0..options).filter(|_| rng.random_bool(0.5)).collect();
            if approved.is_empty() {
                approved.push(rng.random_range(0..options));
            }
            Ballot::approval(&approved).expect(valid)
        }
        Method::RankedChoice => {
            let mut all: Vec<u16> = (0..options).collect();
            let ranks = rng.random_range(1..=all.len().min(5).min(MAX_RANKS));
            for rank in 0..ranks {
                let pick = rng.random_range(rank..all.len());
                all.swap(rank, pick);
            }
            Ballot::ranked_choice(&all[..ranks]).expect(valid)
        }
        Method::Quadratic => {
            let mut votes: Vec<(u16, u16)> = Vec::new();
            let mut spent = 0u32;
            while votes.len() < MAX_ALLOCATIONS && votes.len() < usize::from(options) {
                let option = rng.random_range(0..options);
                let count: u16 = rng.random_range(1..=3);
                let cost = u32::from(count) * u32::from(count);
                if votes.iter().any(|(given, _)| *given == option) {
                    continue;
                }
                if spent + cost > decision.credits {
                    break;
                }
                spent += cost;
                votes.push((option, count));
            }
            if votes.is_empty() {
                votes.push((rng.random_range(0..options), 1));
            }
            Ballot::quadratic(&votes).expect(valid)
        }
    }
}

/// A fresh vote by `voter_id` with a random ballot for `decision`.
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
        ballot: random_ballot(rng, decision),
        component,
        weight,
        cast_at,
    }
}
