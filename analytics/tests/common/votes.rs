//! Seeded random votes for the lake tests, spread over days from [`START`].

use std::ops::Range;

use canopy_schemas::{Component, DecisionId, LoggedVote, Vote, VoteId, VoterId, Weight};
use rand::Rng;
use rand::rngs::StdRng;

pub const DAY_MICROS: i64 = 86_400_000_000;
pub const START: i64 = 1_780_272_000_000_000; // 2026-06-01T00:00:00Z

/// Where a random vote's fields are drawn from (the option always from 0..3).
pub struct VoteSpace {
    pub voters: Range<u128>,
    pub decisions: Range<u128>,
    pub components: &'static [Component],
    pub weights: Range<u32>,
    /// How many days after [`START`] the votes are cast over.
    pub days: i64,
}

/// A vote drawn from `space`, logged under its voter's own salt (the voter id's low byte,
/// so that commitments differ between voters).
pub fn random_vote(rng: &mut StdRng, space: &VoteSpace) -> LoggedVote {
    let voter = VoterId(rng.random_range(space.voters.clone()));
    // Fields are drawn in the order written, so a seed always gives the same votes.
    let vote = Vote {
        vote_id: VoteId(rng.random()),
        decision_id: DecisionId(rng.random_range(space.decisions.clone())),
        voter_id: voter,
        ballot: canopy_schemas::Ballot::single_choice(rng.random_range(0..3)).unwrap(),
        component: space.components[rng.random_range(0..space.components.len())],
        weight: Weight(rng.random_range(space.weights.clone())),
        cast_at: START + rng.random_range(0..space.days * DAY_MICROS),
    };
    canopy_testkit::logged(vote, voter.0 as u8)
}
