//! The voting methods' counting rules, apart from any dataflow: a decision's latest ballots
//! in, its [`Tally`], its instant-runoff rounds and its [`Outcome`] out.
//!
//! Single choice, approval and quadratic add up: a ballot changes only its own cells
//! ([`ballot_cells`]), so the tally is kept incrementally, and a voter's turnout is one
//! whatever the number of cells. Ranked choice does not: eliminating an option moves other
//! voters' ballots, so its result is recomputed per decision from the latest ballots
//! ([`count_decision`]). [`counted_incrementally`] says which is which.
//!
//! # Instant runoff, weighted by component
//!
//! Every option starts continuing. Each round, every ballot counts (count 1, its weight) for
//! its highest-ranked continuing option, and the round's [`Tally`] is built from those cells
//! exactly as a single-choice tally is: an option's share within a component is its weight
//! over the component's weight *among continuing ballots*, and its composite is Σ component
//! weight × share. A ballot ranking no continuing option is exhausted: it still counts in
//! the turnout (and the quorum), not in any share. Options a ballot ranks beyond the
//! decision's options are skipped as if eliminated. Then, in order:
//!
//! 1. an option whose composite is above one half wins (at most one can be);
//! 2. a single continuing option wins;
//! 3. when every continuing option has the same composite, the election ends in a tie
//!    between them (no vote can tell them apart);
//! 4. otherwise the option with the lowest composite is eliminated and the next round is
//!    counted. **A tie for last** is broken by eliminating, among the tied options, the one
//!    with the lower composite in the previous round, then, still tied (or in the first
//!    round), the one with the higher index; the round records `tie_broken`.
//!
//! The result's tally is the last round's; without ballots there are no rounds and the
//! outcome is [`Outcome::NoVotes`].

use std::cmp::Reverse;
use std::collections::HashMap;

use canopy_schemas::{Ballot, Component, Method, SHARE_SCALE};
use serde::{Deserialize, Serialize};

use crate::arithmetic::{DecisionParams, Tally};
pub use crate::arithmetic::{ExhaustedBallots, RankedRound};

/// Whether a method's tally is maintained incrementally (a ballot changes only its own
/// cells) rather than recomputed per decision from the latest ballots.
pub fn counted_incrementally(method: Method) -> bool {
    match method {
        Method::SingleChoice | Method::Approval | Method::Quadratic => true,
        Method::RankedChoice => false,
    }
}

/// The cells a ballot adds to, as (option, multiplier): the voter adds 1 to the cell's count
/// and weight × multiplier to its weight sum. Single choice: its option, × 1; approval: each
/// approved option, × 1; quadratic: each option given votes, × votes. A ranked ballot has no
/// cells of its own (its option depends on the round): none.
pub fn ballot_cells(ballot: &Ballot) -> impl Iterator<Item = (u16, u64)> + '_ {
    let single = match ballot {
        Ballot::SingleChoice(option) => Some((u16::from(*option), 1)),
        _ => None,
    };
    let approved = match ballot {
        Ballot::Approval(approvals) => Some(approvals.iter().map(|option| (option, 1))),
        _ => None,
    };
    let allocated = match ballot {
        Ballot::Quadratic(allocation) => Some(
            allocation
                .iter()
                .map(|(option, votes)| (option, u64::from(votes))),
        ),
        _ => None,
    };
    single
        .into_iter()
        .chain(approved.into_iter().flatten())
        .chain(allocated.into_iter().flatten())
}

/// One voter's latest ballot, as the count needs it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct CountedBallot {
    pub component: Component,
    /// The voter's weight, in millionths.
    pub weight: u32,
    pub ballot: Ballot,
}

/// Who won: the option with the highest composite score, every option sharing it when
/// several do, or nobody when no vote counted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    Winner { option: u16 },
    Tie { options: Vec<u16> },
    NoVotes,
}

impl Outcome {
    /// The outcome of a tally: by composite score, ties as ties. A ranked tally's options
    /// are those continuing in its last round (the runoff ended on its winner, or on a tie
    /// between every continuing option).
    pub fn of(tally: &Tally) -> Outcome {
        if tally.turnout == 0 {
            return Outcome::NoVotes;
        }
        let candidates: Vec<u16> = match tally.rounds.last() {
            Some(last) => last.continuing.clone(),
            None => (0..tally.composite_ppb.len() as u16).collect(),
        };
        let composite = |option: &u16| tally.composite_ppb[usize::from(*option)];
        let top = candidates.iter().map(composite).max().unwrap_or(0);
        let leaders: Vec<u16> = candidates
            .into_iter()
            .filter(|option| composite(option) == top)
            .collect();
        match leaders.as_slice() {
            [option] => Outcome::Winner { option: *option },
            _ => Outcome::Tie { options: leaders },
        }
    }
}

/// A decision's result by its method.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DecisionResult {
    /// The tally (for ranked choice, the last round's).
    pub tally: Tally,
    /// Ranked choice: every round, in order; empty for other methods.
    pub rounds: Vec<RankedRound>,
    pub outcome: Outcome,
}

impl DecisionResult {
    /// The tally as views and statements hold it: with the rounds, from which
    /// [`Outcome::of`] reads the outcome again.
    pub fn into_tally(self) -> Tally {
        Tally {
            rounds: self.rounds,
            ..self.tally
        }
    }
}

/// Counts a decision's latest ballots, one per voter, by `params.method`. Ballots of another
/// method are not counted ([`canopy_schemas::validate_ballot`] keeps them out of the log).
pub fn count_decision(
    params: &DecisionParams,
    ballots: impl IntoIterator<Item = CountedBallot>,
) -> DecisionResult {
    let ballots = ballots
        .into_iter()
        .filter(|counted| counted.ballot.method() == params.method);
    if params.method == Method::RankedChoice {
        return Runoff::new(params, ballots.collect()).run();
    }
    let mut sums: HashMap<(u16, Component), (u64, u64)> = HashMap::new();
    let mut turnout_by_component = [0u64; 4];
    for counted in ballots {
        turnout_by_component[counted.component.index()] += 1;
        for (option, multiplier) in ballot_cells(&counted.ballot) {
            let cell = sums.entry((option, counted.component)).or_default();
            cell.0 += 1;
            cell.1 += u64::from(counted.weight) * multiplier;
        }
    }
    let tally = Tally::from_sums_and_turnout(params, sums, turnout_by_component);
    DecisionResult {
        outcome: Outcome::of(&tally),
        tally,
        rounds: Vec::new(),
    }
}

/// An instant runoff in progress. Each option keeps the ballots counting for it, so an
/// elimination moves only the eliminated option's ballots: a whole election costs each
/// ballot at most one pass over its ranking.
struct Runoff<'a> {
    params: &'a DecisionParams,
    ballots: Vec<CountedBallot>,
    continuing: Vec<bool>,
    /// Per ballot: the rank of the option it counts for (or past its last rank).
    rank: Vec<usize>,
    /// Per option: the ballots counting for it.
    piles: Vec<Vec<usize>>,
    /// Per option and component: (count, weight sum) of the ballots counting for it.
    sums: Vec<[(u64, u64); 4]>,
    exhausted: [ExhaustedBallots; 4],
    turnout_by_component: [u64; 4],
}

impl<'a> Runoff<'a> {
    fn new(params: &'a DecisionParams, ballots: Vec<CountedBallot>) -> Self {
        let options = usize::from(params.options);
        let mut turnout_by_component = [0u64; 4];
        for counted in &ballots {
            turnout_by_component[counted.component.index()] += 1;
        }
        let mut runoff = Runoff {
            params,
            rank: vec![0; ballots.len()],
            ballots,
            continuing: vec![true; options],
            piles: vec![Vec::new(); options],
            sums: vec![[(0, 0); 4]; options],
            exhausted: [ExhaustedBallots::default(); 4],
            turnout_by_component,
        };
        for ballot in 0..runoff.ballots.len() {
            runoff.place(ballot);
        }
        runoff
    }

    /// Counts `ballot` for its highest-ranked continuing option from its current rank on,
    /// or as exhausted.
    fn place(&mut self, ballot: usize) {
        let counted = self.ballots[ballot];
        let Ballot::RankedChoice(ranking) = counted.ballot else {
            unreachable!("only ranked ballots enter a runoff")
        };
        let continuing = &self.continuing;
        let next = ranking
            .preferences()
            .enumerate()
            .skip(self.rank[ballot])
            .find(|(_, option)| continuing.get(usize::from(*option)) == Some(&true));
        let component = counted.component.index();
        let weight = u64::from(counted.weight);
        match next {
            Some((rank, option)) => {
                self.rank[ballot] = rank;
                self.piles[usize::from(option)].push(ballot);
                let cell = &mut self.sums[usize::from(option)][component];
                cell.0 += 1;
                cell.1 += weight;
            }
            None => {
                self.rank[ballot] = ranking.preferences().len();
                self.exhausted[component].count += 1;
                self.exhausted[component].weight_sum += weight;
            }
        }
    }

    fn eliminate(&mut self, option: u16) {
        let option = usize::from(option);
        self.continuing[option] = false;
        self.sums[option] = [(0, 0); 4];
        for ballot in std::mem::take(&mut self.piles[option]) {
            self.place(ballot);
        }
    }

    fn tally(&self) -> Tally {
        let cells = self.sums.iter().enumerate().flat_map(|(option, sums)| {
            Component::ALL
                .into_iter()
                .map(move |component| ((option as u16, component), sums[component.index()]))
        });
        Tally::from_sums_and_turnout(self.params, cells, self.turnout_by_component)
    }

    fn run(mut self) -> DecisionResult {
        if self.ballots.is_empty() {
            return DecisionResult {
                tally: self.tally(),
                rounds: Vec::new(),
                outcome: Outcome::NoVotes,
            };
        }
        let mut rounds: Vec<RankedRound> = Vec::new();
        loop {
            let tally = self.tally();
            let continuing: Vec<u16> = (0..self.params.options)
                .filter(|option| self.continuing[usize::from(*option)])
                .collect();
            let composite = |option: u16| tally.composite_ppb[usize::from(option)];
            let majority = continuing
                .iter()
                .copied()
                .find(|option| u128::from(composite(*option)) * 2 > u128::from(SHARE_SCALE));
            let lowest = continuing.iter().map(|o| composite(*o)).min();
            let highest = continuing.iter().map(|o| composite(*o)).max();
            let outcome = match (majority, continuing.as_slice()) {
                (Some(option), _) => Some(Outcome::Winner { option }),
                (None, [only]) => Some(Outcome::Winner { option: *only }),
                _ if lowest == highest => Some(Outcome::Tie {
                    options: continuing.clone(),
                }),
                _ => None,
            };
            let round = |eliminated, tie_broken, tally| RankedRound {
                continuing: continuing.clone(),
                tally,
                exhausted_by_component: self.exhausted,
                eliminated,
                tie_broken,
            };
            if let Some(outcome) = outcome {
                rounds.push(round(None, false, tally.clone()));
                return DecisionResult {
                    tally,
                    rounds,
                    outcome,
                };
            }
            let last: Vec<u16> = continuing
                .iter()
                .copied()
                .filter(|option| Some(composite(*option)) == lowest)
                .collect();
            let previous = rounds.last().map(|round| &round.tally.composite_ppb);
            let eliminated = last
                .iter()
                .copied()
                .min_by_key(|option| {
                    let before = previous.map_or(0, |ppb| ppb[usize::from(*option)]);
                    (before, Reverse(*option))
                })
                .expect("a round has continuing options");
            let round = round(Some(eliminated), last.len() > 1, tally);
            rounds.push(round);
            self.eliminate(eliminated);
        }
    }
}
