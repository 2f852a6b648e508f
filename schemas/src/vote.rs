use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Ballot, Decision, SchemaError, Timestamp, WEIGHT_SCALE, validate_ballot};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Held as a `u128` so the dataflow hashes and compares it cheaply; shown and
        /// serialized as a UUID.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u128);

        impl $name {
            pub fn new_random() -> Self {
                Self(uuid::Builder::from_random_bytes(rand::random()).into_uuid().as_u128())
            }
            pub fn as_uuid(&self) -> uuid::Uuid {
                uuid::Uuid::from_u128(self.0)
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(id: uuid::Uuid) -> Self {
                Self(id.as_u128())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.as_uuid(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.as_uuid())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.as_uuid().serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                uuid::Uuid::deserialize(d).map(Self::from)
            }
        }
    };
}
pub(crate) use uuid_id;

uuid_id!(
    /// A vote's id, chosen by the client: the idempotency key (a vote id counts once).
    VoteId
);
uuid_id!(
    /// The authenticated identity that cast a vote.
    VoterId
);

/// The part of a decision's composite score a vote counts towards.
///
/// The discriminants are the codes of the canonical encoding: never renumber them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Component {
    Democratic = 0,
    Expert = 1,
    Community = 2,
    EnvironmentalData = 3,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Self::Democratic,
        Self::Expert,
        Self::Community,
        Self::EnvironmentalData,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_code(code: u8) -> Result<Self, SchemaError> {
        Self::ALL
            .get(code as usize)
            .copied()
            .ok_or(SchemaError::UnknownComponent(code))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Democratic => "democratic",
            Self::Expert => "expert",
            Self::Community => "community",
            Self::EnvironmentalData => "environmental_data",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A voter's verified role. The role, never the request, decides a vote's component.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoterRole {
    Citizen,
    /// A verified expert; votes with their verified expertise weight.
    Expert,
    /// An affected stakeholder; votes with their impact weight.
    Stakeholder,
    /// An analysis agent voting on behalf of environmental data.
    AnalysisAgent,
}

impl VoterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Citizen => "citizen",
            Self::Expert => "expert",
            Self::Stakeholder => "stakeholder",
            Self::AnalysisAgent => "analysis_agent",
        }
    }

    pub fn component(self) -> Component {
        match self {
            Self::Citizen => Component::Democratic,
            Self::Expert => Component::Expert,
            Self::Stakeholder => Component::Community,
            Self::AnalysisAgent => Component::EnvironmentalData,
        }
    }
}

impl std::fmt::Display for VoterRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest weight a vote may carry: 100 (in millionths).
pub const MAX_WEIGHT: u32 = 100 * WEIGHT_SCALE;

/// A vote's weight in millionths: `Weight(1_000_000)` is 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Weight(pub u32);

impl Weight {
    pub const ONE: Weight = Weight(WEIGHT_SCALE);

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(WEIGHT_SCALE)
    }
}

/// One vote as it is logged: one voter's ballot on one decision, by their component and
/// weight.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Vote {
    pub vote_id: VoteId,
    pub decision_id: crate::DecisionId,
    pub voter_id: VoterId,
    pub ballot: Ballot,
    pub component: Component,
    pub weight: Weight,
    /// Microseconds since the Unix epoch, stamped by the API when it accepted the vote.
    pub cast_at: Timestamp,
}

/// Checks `vote` against `decision`: right decision, a ballot of its method naming only its
/// options (and within its credits), inside the window, a component the decision counts, a
/// weight in range (exactly 1 for the democratic component, where every citizen counts the
/// same).
pub fn validate_vote(decision: &Decision, vote: &Vote) -> Result<(), SchemaError> {
    if vote.decision_id != decision.id {
        return Err(SchemaError::WrongDecision {
            expected: decision.id,
            got: vote.decision_id,
        });
    }
    validate_ballot(decision, &vote.ballot)?;
    if vote.cast_at < decision.opens_at || vote.cast_at >= decision.closes_at {
        return Err(SchemaError::OutsideWindow {
            cast_at: vote.cast_at,
            opens_at: decision.opens_at,
            closes_at: decision.closes_at,
        });
    }
    if decision.weights.of(vote.component) == 0 {
        return Err(SchemaError::IneligibleComponent {
            component: vote.component,
        });
    }
    let weight_ok = match vote.component {
        Component::Democratic => vote.weight == Weight::ONE,
        _ => vote.weight.0 > 0 && vote.weight.0 <= MAX_WEIGHT,
    };
    if !weight_ok {
        return Err(SchemaError::WeightOutOfRange {
            component: vote.component,
            millionths: vote.weight.0,
        });
    }
    Ok(())
}
