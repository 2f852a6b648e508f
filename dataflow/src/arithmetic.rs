//! The tally's values and arithmetic, apart from any dataflow: ballots in, a decision's
//! shares, composite, turnout and quorum out. The dataflow's reduce and the from-scratch
//! recount both call [`Tally::from_sums`], so they cannot disagree on the arithmetic.

use canopy_schemas::{Component, ComponentWeights, Decision, Method, SHARE_SCALE, WEIGHT_SCALE};
use serde::{Deserialize, Serialize};

/// What the tally needs of one logged vote.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Ballot {
    pub vote_id: u128,
    pub offset: u64,
    /// What the voter marked, by the decision's method.
    #[serde(with = "compact_ballot")]
    pub marks: canopy_schemas::Ballot,
    pub component: Component,
    pub weight: u32,
}

/// A ballot between engine processes: the method's code and the 32 canonical bytes (its
/// `Serialize` is the API's JSON shape, which would allocate for every vote exchanged).
pub(crate) mod compact_ballot {
    use canopy_schemas::{BALLOT_ENCODING_LEN, Ballot, Method};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(ballot: &Ballot, serializer: S) -> Result<S::Ok, S::Error> {
        (ballot.method().code(), ballot.encode()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ballot, D::Error> {
        let (method, bytes) = <(u8, [u8; BALLOT_ENCODING_LEN])>::deserialize(deserializer)?;
        Method::from_code(method)
            .and_then(|method| Ballot::decode(method, &bytes))
            .map_err(serde::de::Error::custom)
    }
}

/// The part of a decision the tally needs; fixed once the decision opens.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct DecisionParams {
    pub options: u16,
    pub weights: ComponentWeights,
    pub quorum: u64,
    pub method: Method,
    /// Quadratic: each voter's credits; 0 otherwise.
    pub credits: u32,
}

impl From<&Decision> for DecisionParams {
    fn from(decision: &Decision) -> Self {
        Self {
            options: decision.options.len() as u16,
            weights: decision.weights,
            quorum: decision.quorum,
            method: decision.method,
            credits: decision.credits,
        }
    }
}

/// Count and weighted sum of one (option, component), with the option's share of the
/// component's weighted sum.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct CellTally {
    pub option: u16,
    pub component: Component,
    pub count: u64,
    /// Sum of the weights, in millionths.
    pub weight_sum: u64,
    /// weight_sum / (the component's weight_sum over all options), in parts per billion.
    pub share_ppb: u64,
}

/// A decision's complete result.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Tally {
    /// Non-empty cells, ordered by (option, component).
    pub cells: Vec<CellTally>,
    /// Per option: Σ over components of component weight × share, in parts per billion.
    /// A component nobody has voted in yet contributes nothing.
    pub composite_ppb: Vec<u64>,
    /// Voters with a current vote.
    pub turnout: u64,
    pub turnout_by_component: [u64; 4],
    pub quorum: u64,
    pub quorum_met: bool,
    /// Ranked choice: the instant runoff's rounds, in order, the tally above being the
    /// last's; empty for every other method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RankedRound>,
}

/// Ballots no longer counting for any option, in one component.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct ExhaustedBallots {
    pub count: u64,
    /// Sum of their weights, in millionths.
    pub weight_sum: u64,
}

/// One round of an instant runoff (the rules are the methods module's).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct RankedRound {
    /// The options still in the count this round, ascending.
    pub continuing: Vec<u16>,
    /// Each continuing ballot counted for its highest-ranked continuing option; the turnout
    /// is every voter, exhausted or not.
    pub tally: Tally,
    /// Indexed by [`Component::index`]: ballots ranking no continuing option.
    pub exhausted_by_component: [ExhaustedBallots; 4],
    /// The option eliminated after this round; None in the last round.
    pub eliminated: Option<u16>,
    /// Several options tied for last and the tie rule chose which to eliminate.
    pub tie_broken: bool,
}

impl Tally {
    /// Builds the result from per-(option, component) (count, weight_sum) sums, where each
    /// voter is in exactly one cell (single choice), so the turnout is the cells' counts.
    /// Cells with a zero count are dropped; cells are visited in any order.
    pub fn from_sums(
        params: &DecisionParams,
        sums: impl IntoIterator<Item = ((u16, Component), (u64, u64))>,
    ) -> Tally {
        let cells = Self::cells(sums);
        let mut turnout_by_component = [0u64; 4];
        for cell in &cells {
            turnout_by_component[cell.component.index()] += cell.count;
        }
        Self::from_cells(params, cells, turnout_by_component)
    }

    /// [`from_sums`](Self::from_sums) for a method whose voter may be in several cells, or
    /// in none (approval, quadratic, a ranked round's exhausted ballots): the voters per
    /// component are given.
    pub fn from_sums_and_turnout(
        params: &DecisionParams,
        sums: impl IntoIterator<Item = ((u16, Component), (u64, u64))>,
        turnout_by_component: [u64; 4],
    ) -> Tally {
        Self::from_cells(params, Self::cells(sums), turnout_by_component)
    }

    fn cells(sums: impl IntoIterator<Item = ((u16, Component), (u64, u64))>) -> Vec<CellTally> {
        let mut cells: Vec<CellTally> = sums
            .into_iter()
            .filter(|(_, (count, _))| *count > 0)
            .map(|((option, component), (count, weight_sum))| CellTally {
                option,
                component,
                count,
                weight_sum,
                share_ppb: 0,
            })
            .collect();
        cells.sort_unstable();
        cells
    }

    fn from_cells(
        params: &DecisionParams,
        mut cells: Vec<CellTally>,
        turnout_by_component: [u64; 4],
    ) -> Tally {
        let mut component_weight = [0u64; 4];
        for cell in &cells {
            component_weight[cell.component.index()] += cell.weight_sum;
        }
        let mut composite_ppb = vec![0u64; usize::from(params.options)];
        for cell in &mut cells {
            let total = component_weight[cell.component.index()];
            cell.share_ppb =
                (u128::from(cell.weight_sum) * u128::from(SHARE_SCALE) / u128::from(total)) as u64;
            let component_weight = u128::from(params.weights.of(cell.component));
            if let Some(score) = composite_ppb.get_mut(usize::from(cell.option)) {
                *score += (component_weight * u128::from(cell.share_ppb) / u128::from(WEIGHT_SCALE))
                    as u64;
            }
        }
        let turnout = turnout_by_component.iter().sum();
        Tally {
            cells,
            composite_ppb,
            turnout,
            turnout_by_component,
            quorum: params.quorum,
            quorum_met: turnout >= params.quorum,
            rounds: Vec::new(),
        }
    }

    /// The composite score of `option` as a fraction in [0, 1].
    pub fn composite(&self, option: u16) -> f64 {
        self.composite_ppb
            .get(usize::from(option))
            .map_or(0.0, |ppb| *ppb as f64 / SHARE_SCALE as f64)
    }
}
