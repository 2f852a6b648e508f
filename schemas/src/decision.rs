use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::vote::uuid_id;
use crate::{Component, SchemaError, VoterRole, WEIGHT_SCALE};

/// Microseconds since the Unix epoch.
pub type Timestamp = i64;

uuid_id!(
    /// A decision's id; also the key that picks the vote log partition.
    DecisionId
);
uuid_id!(
    /// A voter roll's id: the census an operator imported, whose entries accounts claim.
    RollId
);

/// How votes are counted; fixed when the decision is created. Every method weighs a ballot
/// by its voter's component and weight.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Method {
    /// One option per voter.
    #[default]
    SingleChoice,
    /// Any non-empty set of options; each approved option counts the voter's full weight.
    Approval,
    /// Options in order of preference, counted by instant runoff.
    RankedChoice,
    /// Votes spread over options from the decision's [`credits`](Decision::credits), n
    /// votes on one option costing n² credits.
    Quadratic,
}

/// The most credits a quadratic decision may give each voter.
pub const MAX_CREDITS: u32 = 10_000;

/// The weight of each component in the composite score, in millionths, indexed by
/// [`Component::index`]. They sum to exactly 1 000 000.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ComponentWeights(pub [u32; 4]);

impl ComponentWeights {
    /// The platform's default: democratic 0.4, expert 0.3, community 0.2, environmental 0.1.
    pub const DEFAULT: ComponentWeights = ComponentWeights([400_000, 300_000, 200_000, 100_000]);

    pub fn of(&self, component: Component) -> u32 {
        self.0[component.index()]
    }
}

impl Default for ComponentWeights {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A question put to voters. Weights and method are fixed once it opens.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Decision {
    pub id: DecisionId,
    pub title: String,
    /// What is being decided, in words; searched with the title.
    #[serde(default)]
    pub description: String,
    pub region: String,
    /// Option labels; a vote names an option by its index here.
    pub options: Vec<String>,
    /// First instant a vote is accepted (inclusive).
    pub opens_at: crate::Timestamp,
    /// First instant a vote is no longer accepted (exclusive).
    pub closes_at: crate::Timestamp,
    pub weights: ComponentWeights,
    /// The turnout (distinct voters with a current vote) at which the result is binding.
    pub quorum: u64,
    pub method: Method,
    /// Who may vote; everyone with a voting role when empty.
    #[serde(default)]
    pub electorate: Electorate,
    /// Quadratic: the credits each voter may spend (1..=[`MAX_CREDITS`]); 0 for every other
    /// method.
    #[serde(default)]
    pub credits: u32,
}

/// Who may vote on a decision. Fixed with the decision; enforced at the API for every vote,
/// before it reaches the log.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Electorate {
    /// The voting roles admitted (empty: every voting role).
    #[serde(default)]
    pub roles: Vec<VoterRole>,
    /// A voter must be verified for one of these regions, whatever their component (empty:
    /// any region; stakeholders still only for the decision's own region).
    #[serde(default)]
    pub regions: Vec<String>,
    /// A voter roll: only accounts holding a claim on one of its entries vote, each entry
    /// one ballot whatever account holds it, and the entry's region stands for the voter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll: Option<RollId>,
}

/// The most bytes a decision's description may hold.
pub const MAX_DESCRIPTION_LEN: usize = 10_000;

/// Where a decision is in its life. Only `scheduled`, `open` and `closed` occur so far, read
/// from the window and the clock ([`Decision::status_at`]); `final` and `cancelled` are the
/// lifecycle's, named here so that clients and filters know them already.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionStatus {
    Scheduled,
    Open,
    Closed,
    Final,
    Cancelled,
}

impl DecisionStatus {
    pub const ALL: [DecisionStatus; 5] = [
        Self::Scheduled,
        Self::Open,
        Self::Closed,
        Self::Final,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Final => "final",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// The windows of the decisions that have this status at `now`, for a store to filter
    /// on; None when no decision can have it yet. The same rule as [`Decision::status_at`],
    /// which a test holds it to.
    pub fn window_at(self, now: Timestamp) -> Option<StatusWindow> {
        let any = Timestamp::MIN..=Timestamp::MAX;
        // Nothing opens or closes after the last instant: no window is still to come then.
        let after_now = now.checked_add(1);
        match self {
            Self::Scheduled => Some(StatusWindow {
                opens_at: after_now?..=Timestamp::MAX,
                closes_at: any,
            }),
            Self::Open => Some(StatusWindow {
                opens_at: Timestamp::MIN..=now,
                closes_at: after_now?..=Timestamp::MAX,
            }),
            Self::Closed => Some(StatusWindow {
                opens_at: any,
                closes_at: Timestamp::MIN..=now,
            }),
            Self::Final | Self::Cancelled => None,
        }
    }
}

impl fmt::Display for DecisionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bounds (inclusive) on a decision's `opens_at` and `closes_at`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StatusWindow {
    pub opens_at: std::ops::RangeInclusive<Timestamp>,
    pub closes_at: std::ops::RangeInclusive<Timestamp>,
}

/// The most regions an electorate may name.
pub const MAX_ELECTORATE_REGIONS: usize = 256;

impl Decision {
    /// The decision's status at `now`: scheduled before its window, open inside it, closed
    /// after it. The one place the status is derived (the lifecycle will store it instead).
    pub fn status_at(&self, now: Timestamp) -> DecisionStatus {
        if now < self.opens_at {
            DecisionStatus::Scheduled
        } else if now < self.closes_at {
            DecisionStatus::Open
        } else {
            DecisionStatus::Closed
        }
    }

    /// The regions a voter of `role` must be verified for (any one of them); empty when
    /// none is needed. A stakeholder speaks for the people affected in a region, so without
    /// regions of the electorate they vote only on decisions of a region they are verified
    /// for.
    pub fn required_regions(&self, role: VoterRole) -> Vec<&str> {
        if !self.electorate.regions.is_empty() {
            return self.electorate.regions.iter().map(String::as_str).collect();
        }
        match role {
            VoterRole::Stakeholder if !self.region.is_empty() => vec![self.region.as_str()],
            _ => Vec::new(),
        }
    }

    /// Whether a voter of `role`, verified for `voter_regions`, may vote here: refused with
    /// `not_eligible` and the reason otherwise.
    pub fn admits(&self, role: VoterRole, voter_regions: &[String]) -> Result<(), SchemaError> {
        let roles = &self.electorate.roles;
        if !roles.is_empty() && !roles.contains(&role) {
            return Err(SchemaError::NotEligible {
                reason: format!("the {role} role is not in this decision's electorate"),
            });
        }
        let required = self.required_regions(role);
        if required.is_empty()
            || voter_regions
                .iter()
                .any(|region| required.contains(&region.as_str()))
        {
            return Ok(());
        }
        Err(SchemaError::NotEligible {
            reason: format!(
                "this decision's {role} voters must be verified for one of the regions {}",
                required.join(", ")
            ),
        })
    }
}

fn validate_electorate(electorate: &Electorate) -> Result<(), SchemaError> {
    if electorate.regions.len() > MAX_ELECTORATE_REGIONS {
        return Err(SchemaError::Electorate("more than 256 regions"));
    }
    if electorate
        .regions
        .iter()
        .any(|r| r.trim().is_empty() || r.len() > 100)
    {
        return Err(SchemaError::Electorate(
            "a region is empty or longer than 100 bytes",
        ));
    }
    let distinct_regions: HashSet<&String> = electorate.regions.iter().collect();
    let distinct_roles: HashSet<&VoterRole> = electorate.roles.iter().collect();
    if distinct_regions.len() != electorate.regions.len()
        || distinct_roles.len() != electorate.roles.len()
    {
        return Err(SchemaError::Electorate("a role or region is named twice"));
    }
    Ok(())
}

/// The most options a decision may have.
pub const MAX_OPTIONS: usize = 256;

/// Checks a decision before it is stored: 2..=256 distinct non-empty options, a non-empty
/// window, weights summing to one, credits for a quadratic decision and for no other.
pub fn validate_decision(decision: &Decision) -> Result<(), SchemaError> {
    if decision.title.trim().is_empty() || decision.title.len() > 500 {
        return Err(SchemaError::Title);
    }
    let options = decision.options.len();
    if !(2..=MAX_OPTIONS).contains(&options) {
        return Err(SchemaError::OptionCount {
            got: options,
            max: MAX_OPTIONS,
        });
    }
    let mut seen = HashSet::with_capacity(options);
    for (index, label) in decision.options.iter().enumerate() {
        if label.trim().is_empty() || label.len() > 200 {
            return Err(SchemaError::OptionLabel { index });
        }
        if !seen.insert(label.as_str()) {
            return Err(SchemaError::DuplicateOption {
                label: label.clone(),
            });
        }
    }
    if decision.closes_at <= decision.opens_at {
        return Err(SchemaError::EmptyWindow {
            opens_at: decision.opens_at,
            closes_at: decision.closes_at,
        });
    }
    validate_electorate(&decision.electorate)?;
    let credits_allowed = match decision.method {
        Method::Quadratic => 1..=MAX_CREDITS,
        Method::SingleChoice | Method::Approval | Method::RankedChoice => 0..=0,
    };
    if !credits_allowed.contains(&decision.credits) {
        return Err(SchemaError::Credits {
            method: decision.method,
            credits: decision.credits,
        });
    }
    let sum: u64 = decision.weights.0.iter().map(|w| u64::from(*w)).sum();
    if sum != u64::from(WEIGHT_SCALE) {
        return Err(SchemaError::WeightsDoNotSumToOne {
            sum_millionths: sum,
        });
    }
    Ok(())
}

impl Method {
    pub const ALL: [Method; 4] = [
        Self::SingleChoice,
        Self::Approval,
        Self::RankedChoice,
        Self::Quadratic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SingleChoice => "single_choice",
            Self::Approval => "approval",
            Self::RankedChoice => "ranked_choice",
            Self::Quadratic => "quadratic",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|method| method.as_str() == text)
    }

    /// The method's code in the vote and leaf encodings: its index in [`Method::ALL`].
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Result<Self, SchemaError> {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .ok_or(SchemaError::UnknownMethod(code))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store filtering on [`DecisionStatus::window_at`] finds exactly the decisions whose
    /// [`Decision::status_at`] is that status, at and around the window's edges.
    #[test]
    fn status_windows_agree_with_the_status() {
        let decision = |opens_at, closes_at| Decision {
            id: DecisionId(1),
            title: "t".into(),
            description: String::new(),
            region: String::new(),
            options: vec!["a".into(), "b".into()],
            opens_at,
            closes_at,
            weights: ComponentWeights::DEFAULT,
            quorum: 0,
            method: Method::SingleChoice,
            electorate: Electorate::default(),
            credits: 0,
        };
        for (opens_at, closes_at) in [(10, 20), (10, 11), (-5, 0), (0, Timestamp::MAX)] {
            let decision = decision(opens_at, closes_at);
            for now in [
                Timestamp::MIN,
                opens_at - 1,
                opens_at,
                closes_at - 1,
                closes_at,
                30,
            ] {
                for status in DecisionStatus::ALL {
                    let in_window = status.window_at(now).is_some_and(|w| {
                        w.opens_at.contains(&decision.opens_at)
                            && w.closes_at.contains(&decision.closes_at)
                    });
                    assert_eq!(
                        in_window,
                        decision.status_at(now) == status,
                        "{status} at {now} for {opens_at}..{closes_at}"
                    );
                }
            }
        }
    }
}
