//! Canopy's domain types: decisions, votes, components and roles, their validation, and the
//! canonical binary encoding of a vote.
//!
//! ```text
//!   Decision ──(options, window, component weights, quorum, method)
//!      ▲
//!      │ validate_vote(decision, vote)   refused here ⇒ never reaches the log
//!      │
//!   Vote ──encode()──▶ 64 canonical bytes ─┐
//!   salted voter commitment ─────────────┴─▶ LoggedVote ──▶ vote log ──▶ tally / Merkle record
//!                                                  └─ leaf_data(): the vote, voter replaced by the commitment
//! ```
//!
//! Everything that is summed is an integer: weights are fixed-point millionths
//! ([`Weight`]), shares are parts per billion. Integer sums are associative, so the
//! incremental tally equals a from-scratch recount bit for bit, in any order.

#![deny(unsafe_code)]

mod ballot;
pub mod clock;
mod close;
mod decision;
mod encoding;
mod error;
mod record;
mod sensor;
#[cfg(feature = "synthetic")]
pub mod synthetic;
mod vote;

pub use ballot::{
    Allocation, Approvals, BALLOT_ENCODING_LEN, Ballot, MAX_ALLOCATIONS, MAX_RANKS, Ranking,
    validate_ballot,
};
pub use close::{
    CLOSE_ENCODING_LEN, CLOSE_ENCODING_TAG, CLOSE_LEAF_LEN, CloseKind, DecisionClose, VoteLogEntry,
};
pub use decision::{
    ComponentWeights, Decision, DecisionId, DecisionStatus, Electorate, MAX_CREDITS,
    MAX_DESCRIPTION_LEN, MAX_ELECTORATE_REGIONS, MAX_OPTIONS, Method, RollId, StatusWindow,
    Timestamp, validate_decision,
};
pub use encoding::{VOTE_ENCODING_LEN, VOTE_ENCODING_V1_LEN, VOTE_ENCODING_VERSION};
pub use error::SchemaError;
pub use record::{
    LEAF_ENCODING_LEN, LEAF_ENCODING_V1_LEN, LEAF_ENCODING_VERSION, LOGGED_VOTE_LEN,
    LOGGED_VOTE_V1_LEN, LOGGED_VOTE_V2_LEN, LeafBytes, LeafVersion, LoggedVote,
    MAX_LEAF_ENCODING_LEN, SEALED_VOTER_LEN, SealedVoter, VoterCommitment, VoterSalt,
};
pub use sensor::{
    EventTimeMs, MAX_FUTURE_SKEW_MS, MAX_NAME_LEN, Metric, Quality, READING_ENCODING_VERSION,
    RawReading, Sensor, SensorReading, SensorRegistry, VALUE_SCALE, name_key, parse_event_time,
    validate_sensor,
};
pub use vote::{Component, MAX_WEIGHT, Vote, VoteId, VoterId, VoterRole, Weight, validate_vote};

/// One million: the fixed-point scale of weights (`Weight(1_000_000)` is a weight of 1).
pub const WEIGHT_SCALE: u32 = 1_000_000;

/// One billion: the fixed-point scale of shares and composite scores.
pub const SHARE_SCALE: u64 = 1_000_000_000;
