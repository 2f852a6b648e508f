//! The voting methods' counts: instant runoff against hand-worked elections whose rounds are
//! derived in the comments, and against a naive round-by-round recount; approval and
//! quadratic against a naive sum of the marks; the methods that must agree with single
//! choice where they coincide with it; and turnout that counts voters, not cells.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use canopy_dataflow::{
    CountedBallot, DecisionParams, DecisionResult, ExhaustedBallots, Outcome, RankedRound, Tally,
    ballot_cells, count_decision,
};
use canopy_schemas::{Ballot, Component, ComponentWeights, Method, SHARE_SCALE, WEIGHT_SCALE};
use proptest::prelude::*;

const A: u16 = 0;
const B: u16 = 1;
const C: u16 = 2;
const D: u16 = 3;
const ONE: u32 = WEIGHT_SCALE;
const DEMOCRATIC_ONLY: [u32; 4] = [ONE, 0, 0, 0];

fn params(method: Method, options: u16, weights: [u32; 4]) -> DecisionParams {
    DecisionParams {
        options,
        weights: ComponentWeights(weights),
        quorum: 0,
        method,
        credits: if method == Method::Quadratic { 100 } else { 0 },
    }
}

/// `voters` ballots ranking `preferences`, in `component` with `weight`.
fn ranked(
    voters: usize,
    component: Component,
    weight: u32,
    preferences: &[u16],
) -> Vec<CountedBallot> {
    let ballot = Ballot::ranked_choice(preferences).unwrap();
    vec![
        CountedBallot {
            component,
            weight,
            ballot
        };
        voters
    ]
}

/// `voters` democratic ballots (weight 1) ranking `preferences`.
fn citizens(voters: usize, preferences: &[u16]) -> Vec<CountedBallot> {
    ranked(voters, Component::Democratic, ONE, preferences)
}

/// A hand-worked round of an election with democratic voters only.
struct Round {
    continuing: &'static [u16],
    /// (option, ballots counting for it) for each continuing option with any.
    counts: &'static [(u16, u64)],
    /// Per option, 0 for the eliminated.
    composite_ppb: &'static [u64],
    exhausted: u64,
    eliminated: Option<u16>,
    tie_broken: bool,
}

fn runoff(options: u16, ballots: Vec<CountedBallot>) -> DecisionResult {
    count_decision(
        &params(Method::RankedChoice, options, DEMOCRATIC_ONLY),
        ballots,
    )
}

fn assert_rounds(result: &DecisionResult, voters: u64, expected: &[Round]) {
    assert_eq!(result.rounds.len(), expected.len(), "{:#?}", result.rounds);
    for (number, (round, want)) in result.rounds.iter().zip(expected).enumerate() {
        let at = format!("round {}", number + 1);
        assert_eq!(round.continuing, want.continuing, "{at}");
        let counts: Vec<(u16, u64)> = round
            .tally
            .cells
            .iter()
            .map(|cell| (cell.option, cell.count))
            .collect();
        assert_eq!(counts, want.counts, "{at}");
        assert!(
            round
                .tally
                .cells
                .iter()
                .all(|cell| cell.weight_sum == cell.count * u64::from(ONE)),
            "{at}"
        );
        assert_eq!(round.tally.composite_ppb, want.composite_ppb, "{at}");
        assert_eq!(
            round.exhausted_by_component[Component::Democratic.index()],
            ExhaustedBallots {
                count: want.exhausted,
                weight_sum: want.exhausted * u64::from(ONE)
            },
            "{at}"
        );
        assert_eq!(round.eliminated, want.eliminated, "{at}");
        assert_eq!(round.tie_broken, want.tie_broken, "{at}");
        // Every voter is in the turnout, exhausted or not.
        assert_eq!(round.tally.turnout, voters, "{at}");
        assert_eq!(round.tally.turnout_by_component, [voters, 0, 0, 0], "{at}");
    }
    assert_eq!(&result.tally, &result.rounds.last().unwrap().tally);
}

#[test]
fn a_majority_in_the_first_round_wins_at_once() {
    // 10 voters: A 6, B 3, C 1 first preferences. A has 6/10 = 60 % > 50 %: one round.
    let ballots = [
        citizens(6, &[A, B]),
        citizens(3, &[B, A]),
        citizens(1, &[C]),
    ]
    .concat();
    let result = runoff(3, ballots);
    assert_rounds(
        &result,
        10,
        &[Round {
            continuing: &[A, B, C],
            counts: &[(A, 6), (B, 3), (C, 1)],
            composite_ppb: &[600_000_000, 300_000_000, 100_000_000],
            exhausted: 0,
            eliminated: None,
            tie_broken: false,
        }],
    );
    assert_eq!(result.outcome, Outcome::Winner { option: A });
}

#[test]
fn transfers_over_three_rounds_elect_the_broadly_preferred() {
    // 20 voters: 7 A>D, 6 B>C, 4 C>B, 3 D>C>B.
    // Round 1: A 7 (35 %), B 6 (30 %), C 4 (20 %), D 3 (15 %): no majority, D is last.
    // Round 2: D's 3 go to C: A 7 (35 %), B 6 (30 %), C 7 (35 %): B is last.
    // Round 3: B's 6 go to C: A 7 (35 %), C 13 (65 %): C wins, though A led round 1.
    let ballots = [
        citizens(7, &[A, D]),
        citizens(6, &[B, C]),
        citizens(4, &[C, B]),
        citizens(3, &[D, C, B]),
    ]
    .concat();
    let result = runoff(4, ballots);
    assert_rounds(
        &result,
        20,
        &[
            Round {
                continuing: &[A, B, C, D],
                counts: &[(A, 7), (B, 6), (C, 4), (D, 3)],
                composite_ppb: &[350_000_000, 300_000_000, 200_000_000, 150_000_000],
                exhausted: 0,
                eliminated: Some(D),
                tie_broken: false,
            },
            Round {
                continuing: &[A, B, C],
                counts: &[(A, 7), (B, 6), (C, 7)],
                composite_ppb: &[350_000_000, 300_000_000, 350_000_000, 0],
                exhausted: 0,
                eliminated: Some(B),
                tie_broken: false,
            },
            Round {
                continuing: &[A, C],
                counts: &[(A, 7), (C, 13)],
                composite_ppb: &[350_000_000, 0, 650_000_000, 0],
                exhausted: 0,
                eliminated: None,
                tie_broken: false,
            },
        ],
    );
    assert_eq!(result.outcome, Outcome::Winner { option: C });
}

#[test]
fn exhausted_ballots_leave_the_shares_but_not_the_turnout() {
    // 10 voters: 4 A, 4 B, 1 C (ranking nothing else), 1 C>B.
    // Round 1: A 4 (40 %), B 4 (40 %), C 2 (20 %): C is last.
    // Round 2: the C-only ballot is exhausted, C>B goes to B: 9 continuing ballots,
    // A 4/9 = 444 444 444 ppb, B 5/9 = 555 555 555 ppb (floored). B wins with a majority of
    // the continuing ballots, though only half of the 10 voters.
    let ballots = [
        citizens(4, &[A]),
        citizens(4, &[B]),
        citizens(1, &[C]),
        citizens(1, &[C, B]),
    ]
    .concat();
    let result = runoff(3, ballots);
    assert_rounds(
        &result,
        10,
        &[
            Round {
                continuing: &[A, B, C],
                counts: &[(A, 4), (B, 4), (C, 2)],
                composite_ppb: &[400_000_000, 400_000_000, 200_000_000],
                exhausted: 0,
                eliminated: Some(C),
                tie_broken: false,
            },
            Round {
                continuing: &[A, B],
                counts: &[(A, 4), (B, 5)],
                composite_ppb: &[444_444_444, 555_555_555, 0],
                exhausted: 1,
                eliminated: None,
                tie_broken: false,
            },
        ],
    );
    assert_eq!(result.outcome, Outcome::Winner { option: B });
}

#[test]
fn a_tie_for_last_eliminates_the_option_weaker_in_the_previous_round() {
    // 16 voters: 6 A, 3 B>C, 5 C>B, 2 D>B.
    // Round 1: A 6 (37.5 %), B 3 (18.75 %), C 5 (31.25 %), D 2 (12.5 %): D is last.
    // Round 2: D's 2 go to B: A 6, B 5, C 5 (31.25 % each): B and C tie for last. In round
    //   1 B had 18.75 % and C 31.25 %, so B goes (the index rule alone would take C).
    // Round 3: B>C goes to C, D>B is exhausted: 14 continuing ballots, A 6/14 =
    //   428 571 428 ppb, C 8/14 = 571 428 571 ppb: C wins. Eliminating C instead would have
    //   elected B (10 of 16).
    let ballots = [
        citizens(6, &[A]),
        citizens(3, &[B, C]),
        citizens(5, &[C, B]),
        citizens(2, &[D, B]),
    ]
    .concat();
    let result = runoff(4, ballots);
    assert_rounds(
        &result,
        16,
        &[
            Round {
                continuing: &[A, B, C, D],
                counts: &[(A, 6), (B, 3), (C, 5), (D, 2)],
                composite_ppb: &[375_000_000, 187_500_000, 312_500_000, 125_000_000],
                exhausted: 0,
                eliminated: Some(D),
                tie_broken: false,
            },
            Round {
                continuing: &[A, B, C],
                counts: &[(A, 6), (B, 5), (C, 5)],
                composite_ppb: &[375_000_000, 312_500_000, 312_500_000, 0],
                exhausted: 0,
                eliminated: Some(B),
                tie_broken: true,
            },
            Round {
                continuing: &[A, C],
                counts: &[(A, 6), (C, 8)],
                composite_ppb: &[428_571_428, 0, 571_428_571, 0],
                exhausted: 2,
                eliminated: None,
                tie_broken: false,
            },
        ],
    );
    assert_eq!(result.outcome, Outcome::Winner { option: C });
}

#[test]
fn a_first_round_tie_goes_by_index_and_an_even_final_is_a_tie() {
    // 8 voters: 4 A, 2 B>C, 2 C>B.
    // Round 1: A 4 (exactly 50 %: not a majority), B 2, C 2 (25 % each): B and C tie for
    //   last with no previous round, so the higher index, C, goes.
    // Round 2: C's 2 go to B: A 4, B 4, 50 % each: every continuing option is equal, so
    //   the election ends in a tie between A and B.
    let ballots = [
        citizens(4, &[A]),
        citizens(2, &[B, C]),
        citizens(2, &[C, B]),
    ]
    .concat();
    let result = runoff(3, ballots);
    assert_rounds(
        &result,
        8,
        &[
            Round {
                continuing: &[A, B, C],
                counts: &[(A, 4), (B, 2), (C, 2)],
                composite_ppb: &[500_000_000, 250_000_000, 250_000_000],
                exhausted: 0,
                eliminated: Some(C),
                tie_broken: true,
            },
            Round {
                continuing: &[A, B],
                counts: &[(A, 4), (B, 4)],
                composite_ppb: &[500_000_000, 500_000_000, 0],
                exhausted: 0,
                eliminated: None,
                tie_broken: false,
            },
        ],
    );
    assert_eq!(
        result.outcome,
        Outcome::Tie {
            options: vec![A, B]
        }
    );
}

#[test]
fn no_ballots_no_rounds() {
    let result = runoff(3, Vec::new());
    assert!(result.rounds.is_empty());
    assert_eq!(result.outcome, Outcome::NoVotes);
    assert_eq!(result.tally.turnout, 0);
    assert_eq!(result.tally.composite_ppb, vec![0, 0, 0]);
}

#[test]
fn component_weights_change_the_winner() {
    // 12 voters: 6 citizens A>B, 4 citizens B>A, an expert of weight 3 B>A, an expert of
    // weight 1 A>B.
    // Unweighted (each voter once, one component): A 7/12 = 583 333 333 ppb: A wins.
    // Democratic and expert at 0.5 each: democratic shares A 6/10, B 4/10; expert shares
    // A 1/4, B 3/4 (by weight). A = 0.5 × 0.6 + 0.5 × 0.25 = 0.425, B = 0.5 × 0.4 +
    // 0.5 × 0.75 = 0.575 > 0.5: B wins in round 1.
    let experts = || {
        [
            ranked(1, Component::Expert, 3 * ONE, &[B, A]),
            ranked(1, Component::Expert, ONE, &[A, B]),
        ]
        .concat()
    };
    let weighted = [citizens(6, &[A, B]), citizens(4, &[B, A]), experts()].concat();
    let result = count_decision(
        &params(Method::RankedChoice, 2, [ONE / 2, ONE / 2, 0, 0]),
        weighted,
    );
    assert_eq!(result.rounds.len(), 1);
    assert_eq!(result.tally.composite_ppb, vec![425_000_000, 575_000_000]);
    assert_eq!(result.tally.turnout_by_component, [10, 2, 0, 0]);
    assert_eq!(result.outcome, Outcome::Winner { option: B });

    let unweighted = [citizens(7, &[A, B]), citizens(5, &[B, A])].concat();
    let result = runoff(2, unweighted);
    assert_eq!(result.rounds.len(), 1);
    assert_eq!(result.tally.composite_ppb, vec![583_333_333, 416_666_666]);
    assert_eq!(result.outcome, Outcome::Winner { option: A });
}

#[test]
fn exhausted_ballots_hand_their_components_weight_to_its_other_options() {
    // Democratic 0.4, expert 0.6. 5 citizens vote A only; 3 experts B only, 2 experts C only
    // (all weight 1).
    // Round 1: A = 0.4 × 5/5 = 0.4, B = 0.6 × 3/5 = 0.36, C = 0.6 × 2/5 = 0.24: C is last.
    // Round 2: the 2 C ballots are exhausted; the expert component's continuing ballots are
    //   all B's: B = 0.6 × 3/3 = 0.6 > 0.5 wins, where single choice elects A (0.4 > 0.36).
    // Shares are among continuing ballots per component, so a component keeps its full
    // weight while any of its ballots continue.
    let weights = [400_000, 600_000, 0, 0];
    let ballots = [
        ranked(5, Component::Democratic, ONE, &[A]),
        ranked(3, Component::Expert, ONE, &[B]),
        ranked(2, Component::Expert, ONE, &[C]),
    ]
    .concat();
    let result = count_decision(&params(Method::RankedChoice, 3, weights), ballots.clone());
    let composites: Vec<&[u64]> = result
        .rounds
        .iter()
        .map(|round| round.tally.composite_ppb.as_slice())
        .collect();
    assert_eq!(
        composites,
        [
            &[400_000_000, 360_000_000, 240_000_000][..],
            &[400_000_000, 600_000_000, 0][..]
        ]
    );
    assert_eq!(result.rounds[0].eliminated, Some(C));
    assert_eq!(
        result.rounds[1].exhausted_by_component[Component::Expert.index()],
        ExhaustedBallots {
            count: 2,
            weight_sum: 2 * u64::from(ONE)
        }
    );
    assert_eq!(result.outcome, Outcome::Winner { option: B });

    let single: Vec<CountedBallot> = ballots
        .iter()
        .map(|counted| {
            let Ballot::RankedChoice(ranking) = counted.ballot else {
                unreachable!()
            };
            let first = ranking.preferences().next().unwrap();
            CountedBallot {
                ballot: Ballot::single_choice(first).unwrap(),
                ..*counted
            }
        })
        .collect();
    let single = count_decision(&params(Method::SingleChoice, 3, weights), single);
    assert_eq!(single.outcome, Outcome::Winner { option: A });
}

#[test]
fn ballots_of_another_method_are_not_counted() {
    let ballots = [
        citizens(2, &[A]),
        vec![CountedBallot {
            component: Component::Democratic,
            weight: ONE,
            ballot: Ballot::single_choice(B).unwrap(),
        }],
    ]
    .concat();
    let result = runoff(2, ballots);
    assert_eq!(result.tally.turnout, 2);
    assert_eq!(result.outcome, Outcome::Winner { option: A });
}

// ---- Properties ----

/// A voter as generated: component, weight, and marks.
type Voter<M> = (Component, u32, M);

fn any_component() -> impl Strategy<Value = Component> {
    (0u8..4).prop_map(|code| Component::from_code(code).unwrap())
}

/// A voter's component and a weight it may have (a citizen's is exactly 1).
fn any_voter_weight() -> impl Strategy<Value = (Component, u32)> {
    (any_component(), 1..=5 * ONE).prop_map(|(component, weight)| {
        let weight = if component == Component::Democratic {
            ONE
        } else {
            weight
        };
        (component, weight)
    })
}

/// Component weights summing to one, some of them zero.
fn any_weights() -> impl Strategy<Value = [u32; 4]> {
    (0..=ONE, 0..=ONE, 0..=ONE).prop_map(|(a, b, c)| {
        let mut cuts = [a, b, c];
        cuts.sort_unstable();
        [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], ONE - cuts[2]]
    })
}

fn counted(voters: &[Voter<Ballot>]) -> Vec<CountedBallot> {
    voters
        .iter()
        .map(|(component, weight, ballot)| CountedBallot {
            component: *component,
            weight: *weight,
            ballot: *ballot,
        })
        .collect()
}

/// A cell as (option, component, count, weight sum, share in ppb).
type CellRow = (u16, Component, u64, u64, u64);

/// A voter's cells as (option, multiplier).
type Cells = Vec<(u16, u64)>;

/// The tally of `cells` by the documented arithmetic, written out again: share =
/// weight / the component's weight, composite = Σ component weight × share, both floored.
fn naive_tally(
    params: &DecisionParams,
    cells: &BTreeMap<(u16, Component), (u64, u64)>,
) -> (Vec<CellRow>, Vec<u64>) {
    let mut component_total = [0u64; 4];
    for ((_, component), (_, weight)) in cells {
        component_total[component.index()] += weight;
    }
    let mut composite = vec![0u64; usize::from(params.options)];
    let mut rows = Vec::new();
    for (&(option, component), &(count, weight)) in cells {
        let share = (u128::from(weight) * 1_000_000_000
            / u128::from(component_total[component.index()])) as u64;
        composite[usize::from(option)] +=
            (u128::from(params.weights.of(component)) * u128::from(share) / 1_000_000) as u64;
        rows.push((option, component, count, weight, share));
    }
    (rows, composite)
}

/// Checks `result` against the naive cells and turnout of `voters`, each voter adding 1 and
/// weight × multiplier to each (option, multiplier) of their marks.
fn check_against_naive_sums(
    params: &DecisionParams,
    voters: &[Voter<Cells>],
    result: &DecisionResult,
) -> Result<(), TestCaseError> {
    let mut cells: BTreeMap<(u16, Component), (u64, u64)> = BTreeMap::new();
    let mut turnout = [0u64; 4];
    for (component, weight, marks) in voters {
        turnout[component.index()] += 1;
        for (option, multiplier) in marks {
            let cell = cells.entry((*option, *component)).or_default();
            cell.0 += 1;
            cell.1 += u64::from(*weight) * multiplier;
        }
    }
    let (rows, composite) = naive_tally(params, &cells);
    let got: Vec<CellRow> = result
        .tally
        .cells
        .iter()
        .map(|c| (c.option, c.component, c.count, c.weight_sum, c.share_ppb))
        .collect();
    prop_assert_eq!(got, rows);
    prop_assert_eq!(&result.tally.composite_ppb, &composite);
    prop_assert_eq!(result.tally.turnout_by_component, turnout);
    prop_assert_eq!(result.tally.turnout, voters.len() as u64);
    prop_assert_eq!(
        result.tally.quorum_met,
        voters.len() as u64 >= params.quorum
    );
    prop_assert!(result.rounds.is_empty());
    let top = composite.iter().max().copied().unwrap_or(0);
    let leaders: Vec<u16> = (0..params.options)
        .filter(|o| composite[usize::from(*o)] == top)
        .collect();
    let outcome = match leaders.as_slice() {
        _ if voters.is_empty() => Outcome::NoVotes,
        [only] => Outcome::Winner { option: *only },
        _ => Outcome::Tie { options: leaders },
    };
    prop_assert_eq!(&result.outcome, &outcome);
    Ok(())
}

fn approval_voters(options: u16) -> impl Strategy<Value = Vec<Voter<BTreeSet<u16>>>> {
    proptest::collection::vec(
        (
            any_voter_weight(),
            proptest::collection::btree_set(0..options, 1..=usize::from(options)),
        )
            .prop_map(|((component, weight), approved)| (component, weight, approved)),
        0..40,
    )
}

fn quadratic_voters(options: u16) -> impl Strategy<Value = Vec<Voter<BTreeMap<u16, u16>>>> {
    proptest::collection::vec(
        (
            any_voter_weight(),
            proptest::collection::btree_map(0..options, 1u16..=10, 1..=usize::from(options)),
        )
            .prop_map(|((component, weight), votes)| (component, weight, votes)),
        0..40,
    )
}

/// Single-choice voters: component, weight, option.
fn single_voters(options: u16) -> impl Strategy<Value = Vec<Voter<u16>>> {
    proptest::collection::vec(
        (any_voter_weight(), 0..options)
            .prop_map(|((component, weight), option)| (component, weight, option)),
        0..40,
    )
}

fn single_choice(params: &DecisionParams, voters: &[Voter<u16>]) -> DecisionResult {
    let ballots: Vec<Voter<Ballot>> = voters
        .iter()
        .map(|(c, w, option)| (*c, *w, Ballot::single_choice(*option).unwrap()))
        .collect();
    count_decision(params, counted(&ballots))
}

/// Instant runoff by its documented rules, the slow way: each round recounts every ballot
/// for its first continuing option.
fn naive_runoff(
    params: &DecisionParams,
    voters: &[Voter<Vec<u16>>],
) -> (Vec<RankedRound>, Outcome) {
    let mut continuing: BTreeSet<u16> = (0..params.options).collect();
    let mut rounds: Vec<RankedRound> = Vec::new();
    if voters.is_empty() {
        return (rounds, Outcome::NoVotes);
    }
    let mut turnout = [0u64; 4];
    for (component, _, _) in voters {
        turnout[component.index()] += 1;
    }
    loop {
        let mut cells: HashMap<(u16, Component), (u64, u64)> = HashMap::new();
        let mut exhausted = [ExhaustedBallots::default(); 4];
        for (component, weight, ranking) in voters {
            match ranking.iter().find(|option| continuing.contains(option)) {
                Some(option) => {
                    let cell = cells.entry((*option, *component)).or_default();
                    cell.0 += 1;
                    cell.1 += u64::from(*weight);
                }
                None => {
                    exhausted[component.index()].count += 1;
                    exhausted[component.index()].weight_sum += u64::from(*weight);
                }
            }
        }
        let tally = Tally::from_sums_and_turnout(params, cells, turnout);
        let score = |option: u16| tally.composite_ppb[usize::from(option)];
        let scores: Vec<u64> = continuing.iter().map(|o| score(*o)).collect();
        let (low, high) = (*scores.iter().min().unwrap(), *scores.iter().max().unwrap());
        let majority = continuing
            .iter()
            .find(|o| 2 * u128::from(score(**o)) > u128::from(SHARE_SCALE));
        let mut round = RankedRound {
            continuing: continuing.iter().copied().collect(),
            tally: tally.clone(),
            exhausted_by_component: exhausted,
            eliminated: None,
            tie_broken: false,
        };
        let outcome = if let Some(winner) = majority {
            Some(Outcome::Winner { option: *winner })
        } else if continuing.len() == 1 {
            Some(Outcome::Winner {
                option: *continuing.first().unwrap(),
            })
        } else if low == high {
            Some(Outcome::Tie {
                options: continuing.iter().copied().collect(),
            })
        } else {
            None
        };
        if let Some(outcome) = outcome {
            rounds.push(round);
            return (rounds, outcome);
        }
        let mut last: Vec<u16> = continuing
            .iter()
            .copied()
            .filter(|o| score(*o) == low)
            .collect();
        let before = |option: u16| {
            rounds
                .last()
                .map_or(0, |round| round.tally.composite_ppb[usize::from(option)])
        };
        // Lowest previous composite first, then the highest index.
        last.sort_by(|x, y| before(*x).cmp(&before(*y)).then(y.cmp(x)));
        round.eliminated = Some(last[0]);
        round.tie_broken = last.len() > 1;
        continuing.remove(&last[0]);
        rounds.push(round);
    }
}

fn ranked_voters(options: u16) -> impl Strategy<Value = Vec<Voter<Vec<u16>>>> {
    let all: Vec<u16> = (0..options).collect();
    proptest::collection::vec(
        (
            any_voter_weight(),
            proptest::sample::subsequence(all.clone(), 1..=all.len()).prop_shuffle(),
        )
            .prop_map(|((component, weight), ranking)| (component, weight, ranking)),
        0..30,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn approval_sums_each_approved_option(
        (options, voters) in (2u16..7).prop_flat_map(|o| (Just(o), approval_voters(o))),
        weights in any_weights(),
        quorum in 0u64..30,
    ) {
        let params = DecisionParams { quorum, ..params(Method::Approval, options, weights) };
        let ballots: Vec<Voter<Ballot>> = voters
            .iter()
            .map(|(c, w, approved)| {
                let approved: Vec<u16> = approved.iter().copied().collect();
                (*c, *w, Ballot::approval(&approved).unwrap())
            })
            .collect();
        let marks: Vec<Voter<Cells>> = voters
            .iter()
            .map(|(c, w, approved)| (*c, *w, approved.iter().map(|o| (*o, 1)).collect()))
            .collect();
        for ((_, _, ballot), (_, _, cells)) in ballots.iter().zip(&marks) {
            prop_assert_eq!(&ballot_cells(ballot).collect::<Vec<_>>(), cells);
        }
        let result = count_decision(&params, counted(&ballots));
        check_against_naive_sums(&params, &marks, &result)?;
    }

    #[test]
    fn quadratic_sums_each_options_votes(
        (options, voters) in (2u16..7).prop_flat_map(|o| (Just(o), quadratic_voters(o))),
        weights in any_weights(),
        quorum in 0u64..30,
    ) {
        let params = DecisionParams { quorum, ..params(Method::Quadratic, options, weights) };
        let ballots: Vec<Voter<Ballot>> = voters
            .iter()
            .map(|(c, w, votes)| {
                let votes: Vec<(u16, u16)> = votes.iter().map(|(o, v)| (*o, *v)).collect();
                (*c, *w, Ballot::quadratic(&votes).unwrap())
            })
            .collect();
        let marks: Vec<Voter<Cells>> = voters
            .iter()
            .map(|(c, w, votes)| {
                (*c, *w, votes.iter().map(|(o, v)| (*o, u64::from(*v))).collect())
            })
            .collect();
        for ((_, _, ballot), (_, _, cells)) in ballots.iter().zip(&marks) {
            prop_assert_eq!(&ballot_cells(ballot).collect::<Vec<_>>(), cells);
        }
        let result = count_decision(&params, counted(&ballots));
        check_against_naive_sums(&params, &marks, &result)?;
    }

    /// Single choice through count_decision is today's tally, and approving exactly one
    /// option, or one vote on one option, counts as choosing it.
    #[test]
    fn one_approval_or_one_vote_is_a_single_choice(
        (options, voters) in (2u16..7).prop_flat_map(|o| (Just(o), single_voters(o))),
        weights in any_weights(),
    ) {
        let single = single_choice(&params(Method::SingleChoice, options, weights), &voters);
        let mut sums: HashMap<(u16, Component), (u64, u64)> = HashMap::new();
        for (component, weight, option) in &voters {
            let cell = sums.entry((*option, *component)).or_default();
            cell.0 += 1;
            cell.1 += u64::from(*weight);
        }
        let today = Tally::from_sums(&params(Method::SingleChoice, options, weights), sums);
        prop_assert_eq!(&single.tally, &today);

        let approvals: Vec<Voter<Ballot>> = voters
            .iter()
            .map(|(c, w, o)| (*c, *w, Ballot::approval(&[*o]).unwrap()))
            .collect();
        let approval = count_decision(&params(Method::Approval, options, weights), counted(&approvals));
        prop_assert_eq!(&approval, &single);

        let one_vote: Vec<Voter<Ballot>> = voters
            .iter()
            .map(|(c, w, o)| (*c, *w, Ballot::quadratic(&[(*o, 1)]).unwrap()))
            .collect();
        let quadratic = count_decision(&params(Method::Quadratic, options, weights), counted(&one_vote));
        prop_assert_eq!(&quadratic, &single);
    }

    /// Ranking a single option elects single choice's winner. This holds within one
    /// component; across components exhausted ballots can shift a component's weight to
    /// its other options (`exhausted_ballots_hand_their_components_weight_to_its_other_options`).
    /// Whole weights and few voters keep every share exact, so no rounding makes two
    /// different sums equal.
    #[test]
    fn ranking_one_option_elects_the_single_choice_winner(
        (options, choices) in (2u16..7).prop_flat_map(|o| {
            (Just(o), proptest::collection::vec((0..o, 1u32..=5), 0..40))
        }),
        component in any_component(),
    ) {
        let mut weights = [0; 4];
        weights[component.index()] = ONE;
        let voters: Vec<Voter<u16>> = choices
            .iter()
            .map(|(option, weight)| (component, weight * ONE, *option))
            .collect();
        let single = single_choice(&params(Method::SingleChoice, options, weights), &voters);
        let rankings: Vec<Voter<Ballot>> = voters
            .iter()
            .map(|(c, w, o)| (*c, *w, Ballot::ranked_choice(&[*o]).unwrap()))
            .collect();
        let runoff = count_decision(&params(Method::RankedChoice, options, weights), counted(&rankings));
        prop_assert_eq!(&runoff.outcome, &single.outcome);
        prop_assert_eq!(runoff.tally.turnout_by_component, single.tally.turnout_by_component);
    }

    /// The runoff equals the naive round-by-round recount, and in every round each voter is
    /// either counted for one continuing option or exhausted, and always in the turnout.
    #[test]
    fn the_runoff_equals_a_naive_recount(
        (options, voters) in (2u16..7).prop_flat_map(|o| (Just(o), ranked_voters(o))),
        weights in any_weights(),
    ) {
        let params = params(Method::RankedChoice, options, weights);
        let ballots: Vec<Voter<Ballot>> = voters
            .iter()
            .map(|(c, w, ranking)| (*c, *w, Ballot::ranked_choice(ranking).unwrap()))
            .collect();
        let result = count_decision(&params, counted(&ballots));
        let (rounds, outcome) = naive_runoff(&params, &voters);
        prop_assert_eq!(&result.rounds, &rounds);
        prop_assert_eq!(&result.outcome, &outcome);
        let mut turnout = [0u64; 4];
        for (component, _, _) in &voters {
            turnout[component.index()] += 1;
        }
        for round in &result.rounds {
            prop_assert_eq!(round.tally.turnout_by_component, turnout);
            for component in Component::ALL {
                let counted: u64 = round
                    .tally
                    .cells
                    .iter()
                    .filter(|cell| cell.component == component)
                    .map(|cell| cell.count)
                    .sum();
                let exhausted = round.exhausted_by_component[component.index()].count;
                prop_assert_eq!(counted + exhausted, turnout[component.index()]);
            }
        }
        let rounds_needed = result.rounds.len();
        prop_assert!(voters.is_empty() || (1..=usize::from(options)).contains(&rounds_needed));
        match &result.rounds.last() {
            Some(last) => prop_assert_eq!(&result.tally, &last.tally),
            None => prop_assert_eq!(result.tally.turnout, 0),
        }
    }
}
