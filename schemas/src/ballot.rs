//! What one voter marks, per voting method, and its canonical 32-byte encoding.
//!
//! The method is not in the bytes: it is the decision's, fixed at creation, and the decoder
//! is told it. Each ballot has exactly one encoding, and [`Ballot::decode`] refuses every
//! other 32 bytes (an empty ballot, repeated or unsorted entries, non-zero bytes after the
//! last entry), so equal ballots are equal bytes and a hash of the bytes names one ballot.
//! Options are indices into the decision's options; a decision has at most 256, so an index
//! is one byte.
//!
//! ```text
//! method         offset  size  field
//! single_choice       0     1  option
//!                     1    31  zero
//! approval            0    32  the approved options as a 256-bit set: option i is approved
//!                              when bit (i mod 8) of byte (i / 8) is set, least significant
//!                              bit first; at least one bit set
//! ranked_choice       0     1  n, the number of ranks, 1..=31
//!                     1     n  options, most preferred first, each at most once
//!                   1+n  31-n  zero
//! quadratic           0     1  n, the number of options given votes, 1..=15
//!                     1    2n  n pairs (option, votes), options strictly ascending, votes ≥ 1
//!                  1+2n 31-2n  zero
//! ```
//!
//! The API's JSON form, one shape per method (options in any order where order means
//! nothing; they read back ascending):
//!
//! ```text
//! single_choice   {"option": 2}
//! approval        {"approve": [0, 3]}
//! ranked_choice   {"ranking": [2, 0, 1]}                most preferred first
//! quadratic       {"allocation": [[0, 3], [2, 1]]}      [option, votes] pairs
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Decision, Method, SchemaError};

pub const BALLOT_ENCODING_LEN: usize = 32;
/// The most options a ranked ballot may rank.
pub const MAX_RANKS: usize = BALLOT_ENCODING_LEN - 1;
/// The most options a quadratic ballot may give votes to.
pub const MAX_ALLOCATIONS: usize = (BALLOT_ENCODING_LEN - 1) / 2;

/// One voter's marks on a decision's ballot. Each variant holds only canonical ballots:
/// build them with [`Ballot::single_choice`], [`Ballot::approval`],
/// [`Ballot::ranked_choice`], [`Ballot::quadratic`] or [`Ballot::decode`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "BallotJson", into = "BallotJson")]
pub enum Ballot {
    SingleChoice(u8),
    Approval(Approvals),
    RankedChoice(Ranking),
    Quadratic(Allocation),
}

/// The options an approval ballot approves: a non-empty set.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Approvals([u8; BALLOT_ENCODING_LEN]);

/// The options a ranked ballot ranks, most preferred first: 1 to 31, each once.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Ranking([u8; BALLOT_ENCODING_LEN]);

/// The votes a quadratic ballot gives: 1 to 15 distinct options, each at least one vote.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Allocation([u8; BALLOT_ENCODING_LEN]);

fn invalid(reason: impl fmt::Display) -> SchemaError {
    SchemaError::InvalidBallot(reason.to_string())
}

fn option_index(option: u16) -> Result<u8, SchemaError> {
    u8::try_from(option).map_err(|_| {
        invalid(format_args!(
            "option {option} is beyond the 256 a decision may have"
        ))
    })
}

impl Approvals {
    pub fn new(options: &[u16]) -> Result<Self, SchemaError> {
        if options.is_empty() {
            return Err(invalid("an approval ballot approves at least one option"));
        }
        let mut set = [0u8; BALLOT_ENCODING_LEN];
        for &option in options {
            let index = option_index(option)?;
            let (byte, bit) = (usize::from(index / 8), 1u8 << (index % 8));
            if set[byte] & bit != 0 {
                return Err(invalid(format_args!("option {option} is approved twice")));
            }
            set[byte] |= bit;
        }
        Ok(Self(set))
    }

    /// The approved options, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u8::MAX)
            .filter(|index| self.0[usize::from(index / 8)] & (1 << (index % 8)) != 0)
            .map(u16::from)
    }

    pub fn contains(&self, option: u16) -> bool {
        u8::try_from(option)
            .is_ok_and(|index| self.0[usize::from(index / 8)] & (1 << (index % 8)) != 0)
    }
}

impl Ranking {
    pub fn new(preferences: &[u16]) -> Result<Self, SchemaError> {
        if !(1..=MAX_RANKS).contains(&preferences.len()) {
            return Err(invalid(format_args!(
                "a ranking ranks 1 to {MAX_RANKS} options, not {}",
                preferences.len()
            )));
        }
        let mut bytes = [0u8; BALLOT_ENCODING_LEN];
        bytes[0] = preferences.len() as u8;
        for (rank, &option) in preferences.iter().enumerate() {
            let index = option_index(option)?;
            if bytes[1..=rank].contains(&index) {
                return Err(invalid(format_args!("option {option} is ranked twice")));
            }
            bytes[1 + rank] = index;
        }
        Ok(Self(bytes))
    }

    /// The ranked options, most preferred first.
    pub fn preferences(&self) -> impl ExactSizeIterator<Item = u16> + '_ {
        self.0[1..=usize::from(self.0[0])]
            .iter()
            .map(|index| u16::from(*index))
    }
}

impl Allocation {
    /// From (option, votes) pairs in any order.
    pub fn new(votes: &[(u16, u16)]) -> Result<Self, SchemaError> {
        if !(1..=MAX_ALLOCATIONS).contains(&votes.len()) {
            return Err(invalid(format_args!(
                "a quadratic ballot gives votes to 1 to {MAX_ALLOCATIONS} options, not {}",
                votes.len()
            )));
        }
        let mut pairs = Vec::with_capacity(votes.len());
        for &(option, count) in votes {
            let count = u8::try_from(count)
                .ok()
                .filter(|count| *count >= 1)
                .ok_or_else(|| {
                    invalid(format_args!(
                        "option {option} is given {count} votes, not 1 to 255"
                    ))
                })?;
            pairs.push((option_index(option)?, count));
        }
        pairs.sort_unstable();
        if let Some(pair) = pairs.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(invalid(format_args!(
                "option {} is given votes twice",
                pair[0].0
            )));
        }
        let mut bytes = [0u8; BALLOT_ENCODING_LEN];
        bytes[0] = pairs.len() as u8;
        for (k, (option, count)) in pairs.into_iter().enumerate() {
            bytes[1 + 2 * k] = option;
            bytes[2 + 2 * k] = count;
        }
        Ok(Self(bytes))
    }

    /// (option, votes), options ascending.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u16, u16)> + '_ {
        self.0[1..1 + 2 * usize::from(self.0[0])]
            .chunks_exact(2)
            .map(|pair| (u16::from(pair[0]), u16::from(pair[1])))
    }

    /// What the ballot costs: Σ votes².
    pub fn credits_spent(&self) -> u32 {
        self.iter()
            .map(|(_, votes)| u32::from(votes) * u32::from(votes))
            .sum()
    }
}

impl Ballot {
    pub fn single_choice(option: u16) -> Result<Ballot, SchemaError> {
        Ok(Ballot::SingleChoice(option_index(option)?))
    }

    pub fn approval(options: &[u16]) -> Result<Ballot, SchemaError> {
        Approvals::new(options).map(Ballot::Approval)
    }

    pub fn ranked_choice(preferences: &[u16]) -> Result<Ballot, SchemaError> {
        Ranking::new(preferences).map(Ballot::RankedChoice)
    }

    pub fn quadratic(votes: &[(u16, u16)]) -> Result<Ballot, SchemaError> {
        Allocation::new(votes).map(Ballot::Quadratic)
    }

    /// The method this ballot is for.
    pub fn method(&self) -> Method {
        match self {
            Ballot::SingleChoice(_) => Method::SingleChoice,
            Ballot::Approval(_) => Method::Approval,
            Ballot::RankedChoice(_) => Method::RankedChoice,
            Ballot::Quadratic(_) => Method::Quadratic,
        }
    }

    /// The highest option index the ballot names (every ballot names one at least).
    pub fn highest_option(&self) -> u16 {
        let highest = match self {
            Ballot::SingleChoice(option) => Some(u16::from(*option)),
            Ballot::Approval(approvals) => approvals.iter().last(),
            Ballot::RankedChoice(ranking) => ranking.preferences().max(),
            Ballot::Quadratic(allocation) => allocation.iter().map(|(option, _)| option).last(),
        };
        highest.expect("a ballot names at least one option")
    }

    /// The canonical bytes of this ballot (see the module docs for the layout).
    pub fn encode(&self) -> [u8; BALLOT_ENCODING_LEN] {
        match self {
            Ballot::SingleChoice(option) => {
                let mut bytes = [0u8; BALLOT_ENCODING_LEN];
                bytes[0] = *option;
                bytes
            }
            Ballot::Approval(Approvals(bytes))
            | Ballot::RankedChoice(Ranking(bytes))
            | Ballot::Quadratic(Allocation(bytes)) => *bytes,
        }
    }

    /// Decodes the canonical bytes of a ballot for a decision of `method`. Entries are read
    /// as the layout says and the ballot rebuilt from them; bytes that are not exactly that
    /// ballot's encoding are refused, so no two byte strings decode to one ballot.
    pub fn decode(
        method: Method,
        bytes: &[u8; BALLOT_ENCODING_LEN],
    ) -> Result<Ballot, SchemaError> {
        let entries = || {
            let count = usize::from(bytes[0]);
            let entry_len = if method == Method::Quadratic { 2 } else { 1 };
            if count * entry_len > BALLOT_ENCODING_LEN - 1 {
                return Err(SchemaError::BallotEncoding(
                    "the entry count overruns 32 bytes",
                ));
            }
            Ok(&bytes[1..1 + count * entry_len])
        };
        let ballot = match method {
            Method::SingleChoice => Ballot::SingleChoice(bytes[0]),
            Method::Approval => {
                if *bytes == [0; BALLOT_ENCODING_LEN] {
                    return Err(invalid("an approval ballot approves at least one option"));
                }
                // Every non-empty bit set is canonical.
                Ballot::Approval(Approvals(*bytes))
            }
            Method::RankedChoice => {
                let preferences: Vec<u16> = entries()?.iter().map(|o| u16::from(*o)).collect();
                Ballot::ranked_choice(&preferences)?
            }
            Method::Quadratic => {
                let pairs: Vec<(u16, u16)> = entries()?
                    .chunks_exact(2)
                    .map(|pair| (u16::from(pair[0]), u16::from(pair[1])))
                    .collect();
                Ballot::quadratic(&pairs)?
            }
        };
        if ballot.encode() != *bytes {
            return Err(SchemaError::BallotEncoding(
                "entries out of order or non-zero bytes after the last entry",
            ));
        }
        Ok(ballot)
    }
}

/// Checks a ballot against its decision before it is logged: the decision's method, options
/// it has, and for quadratic no more credits than the decision gives.
pub fn validate_ballot(decision: &Decision, ballot: &Ballot) -> Result<(), SchemaError> {
    if ballot.method() != decision.method {
        return Err(SchemaError::WrongMethod {
            decision: decision.method,
            ballot: ballot.method(),
        });
    }
    let highest = ballot.highest_option();
    if usize::from(highest) >= decision.options.len() {
        return Err(SchemaError::UnknownOption {
            option: highest,
            options: decision.options.len(),
        });
    }
    if let Ballot::Quadratic(allocation) = ballot {
        let spent = allocation.credits_spent();
        if spent > decision.credits {
            return Err(SchemaError::OverBudget {
                spent,
                credits: decision.credits,
            });
        }
    }
    Ok(())
}

/// The JSON shapes of [`Ballot`] (see the module docs).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BallotJson {
    Option(u16),
    Approve(Vec<u16>),
    Ranking(Vec<u16>),
    Allocation(Vec<(u16, u16)>),
}

impl TryFrom<BallotJson> for Ballot {
    type Error = SchemaError;

    fn try_from(json: BallotJson) -> Result<Self, Self::Error> {
        match json {
            BallotJson::Option(option) => Ballot::single_choice(option),
            BallotJson::Approve(options) => Ballot::approval(&options),
            BallotJson::Ranking(preferences) => Ballot::ranked_choice(&preferences),
            BallotJson::Allocation(votes) => Ballot::quadratic(&votes),
        }
    }
}

impl From<Ballot> for BallotJson {
    fn from(ballot: Ballot) -> Self {
        match ballot {
            Ballot::SingleChoice(option) => BallotJson::Option(u16::from(option)),
            Ballot::Approval(approvals) => BallotJson::Approve(approvals.iter().collect()),
            Ballot::RankedChoice(ranking) => BallotJson::Ranking(ranking.preferences().collect()),
            Ballot::Quadratic(allocation) => BallotJson::Allocation(allocation.iter().collect()),
        }
    }
}
