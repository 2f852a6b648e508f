//! The close of a decision as the vote log holds it: an entry in the decision's partition,
//! so that "before the close" is an offset comparison every worker and every replay makes
//! alike, whatever the clocks of the processes that appended the votes said.
//!
//! The record shows a decision's first close as its log's last leaf: the close encoding
//! padded with zeros to a version-1 vote leaf's 80 bytes ([`DecisionClose::leaf_data`]), told from a
//! vote leaf by its first byte. So a checkpoint that holds the close leaf holds exactly the
//! votes that counted, and anyone reading the leaves sees that nothing after it did.
//!
//! A vote-log entry is a [`VoteLogEntry`]: a vote ([`LoggedVote`], 96, 152 or 183 bytes) or a
//! close, told apart by length. The close encoding, version 1:
//!
//! ```text
//! offset  size  field
//!      0     1  tag = 0xC1 (no vote encoding starts with it)
//!      1    16  decision_id
//!     17     1  kind (0 schedule: its closes_at passed, 1 early: closed by its owner,
//!               2 cancel: cancelled by its owner)
//!     18     8  at  (i64 µs since the Unix epoch: when the closer appended it)
//!     26    16  by  (the closing account's id; zero for the schedule)
//!     42        end
//! ```

use serde::{Deserialize, Serialize};

use crate::{
    DecisionId, LOGGED_VOTE_LEN, LOGGED_VOTE_V1_LEN, LOGGED_VOTE_V2_LEN, LeafBytes, LoggedVote,
    SchemaError, Timestamp,
};

/// A close leaf's length: the close encoding and zeros, as long as a version-1 vote leaf.
pub const CLOSE_LEAF_LEN: usize = crate::LEAF_ENCODING_V1_LEN;

pub const CLOSE_ENCODING_TAG: u8 = 0xC1;
pub const CLOSE_ENCODING_LEN: usize = 42;

/// Why a decision's votes stop counting. The discriminants are encoding codes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum CloseKind {
    /// The decision's `closes_at` passed.
    Schedule = 0,
    /// Its owner closed it before `closes_at`.
    Early = 1,
    /// Its owner cancelled it: no result is declared.
    Cancel = 2,
}

impl CloseKind {
    pub const ALL: [CloseKind; 3] = [Self::Schedule, Self::Early, Self::Cancel];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Early => "early",
            Self::Cancel => "cancel",
        }
    }

    pub fn from_code(code: u8) -> Result<Self, SchemaError> {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .ok_or(SchemaError::EncodingVersion(code))
    }
}

/// A decision's close: no vote of the decision after this entry counts, on any worker.
/// Only the first close of a decision in its partition has effect; later ones change
/// nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct DecisionClose {
    pub decision: DecisionId,
    pub kind: CloseKind,
    pub at: Timestamp,
    /// The account that closed it; zero for the schedule.
    pub by: u128,
}

impl DecisionClose {
    pub fn encode(&self) -> [u8; CLOSE_ENCODING_LEN] {
        let mut out = [0u8; CLOSE_ENCODING_LEN];
        out[0] = CLOSE_ENCODING_TAG;
        out[1..17].copy_from_slice(&self.decision.0.to_be_bytes());
        out[17] = self.kind as u8;
        out[18..26].copy_from_slice(&self.at.to_be_bytes());
        out[26..42].copy_from_slice(&self.by.to_be_bytes());
        out
    }

    /// The close as the record's leaf: its encoding, then zeros to a vote leaf's length.
    pub fn leaf_data(&self) -> LeafBytes {
        let mut out = [0u8; CLOSE_LEAF_LEN];
        out[..CLOSE_ENCODING_LEN].copy_from_slice(&self.encode());
        LeafBytes::new(&out).expect("a close leaf fits")
    }

    /// Reads a close leaf; refuses anything else, padding that is not zeros included.
    pub fn from_leaf_data(bytes: &[u8]) -> Result<Self, SchemaError> {
        if bytes.len() != CLOSE_LEAF_LEN {
            return Err(SchemaError::EncodingLength {
                got: bytes.len(),
                expected: CLOSE_LEAF_LEN,
            });
        }
        if bytes[CLOSE_ENCODING_LEN..].iter().any(|byte| *byte != 0) {
            return Err(SchemaError::EncodingVersion(bytes[0]));
        }
        Self::decode(&bytes[..CLOSE_ENCODING_LEN])
    }

    /// Whether a leaf encoding is a close's (a vote leaf starts with its version, 1 or 2).
    pub fn is_close_leaf(bytes: &[u8]) -> bool {
        bytes.first() == Some(&CLOSE_ENCODING_TAG)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SchemaError> {
        let bytes: &[u8; CLOSE_ENCODING_LEN] =
            bytes.try_into().map_err(|_| SchemaError::EncodingLength {
                got: bytes.len(),
                expected: CLOSE_ENCODING_LEN,
            })?;
        if bytes[0] != CLOSE_ENCODING_TAG {
            return Err(SchemaError::EncodingVersion(bytes[0]));
        }
        Ok(Self {
            decision: DecisionId(u128::from_be_bytes(
                bytes[1..17].try_into().expect("16 bytes"),
            )),
            kind: CloseKind::from_code(bytes[17])?,
            at: i64::from_be_bytes(bytes[18..26].try_into().expect("8 bytes")),
            by: u128::from_be_bytes(bytes[26..42].try_into().expect("16 bytes")),
        })
    }
}

/// One entry of the vote log: a vote, or a decision's close.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum VoteLogEntry {
    Vote(LoggedVote),
    Close(DecisionClose),
}

impl VoteLogEntry {
    /// The decision the entry belongs to: what picks its partition.
    pub fn decision(&self) -> DecisionId {
        match self {
            Self::Vote(logged) => logged.vote.decision_id,
            Self::Close(close) => close.decision,
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Vote(logged) => out.extend_from_slice(&logged.encode()),
            Self::Close(close) => out.extend_from_slice(&close.encode()),
        }
    }

    /// A vote (either logged-vote version) or a close, told apart by length.
    pub fn decode(bytes: &[u8]) -> Result<Self, SchemaError> {
        match bytes.len() {
            CLOSE_ENCODING_LEN => DecisionClose::decode(bytes).map(Self::Close),
            LOGGED_VOTE_LEN | LOGGED_VOTE_V2_LEN | LOGGED_VOTE_V1_LEN => {
                LoggedVote::decode(bytes).map(Self::Vote)
            }
            got => Err(SchemaError::EncodingLength {
                got,
                expected: LOGGED_VOTE_LEN,
            }),
        }
    }
}

impl From<LoggedVote> for VoteLogEntry {
    fn from(logged: LoggedVote) -> Self {
        Self::Vote(logged)
    }
}

impl From<DecisionClose> for VoteLogEntry {
    fn from(close: DecisionClose) -> Self {
        Self::Close(close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_reads_back_and_is_never_taken_for_a_vote() {
        for kind in CloseKind::ALL {
            let close = DecisionClose {
                decision: DecisionId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
                kind,
                at: 1_765_000_000_000_000,
                by: 42,
            };
            let mut bytes = Vec::new();
            VoteLogEntry::Close(close).encode_into(&mut bytes);
            assert_eq!(
                VoteLogEntry::decode(&bytes).unwrap(),
                VoteLogEntry::Close(close)
            );
            assert!(LoggedVote::decode(&bytes).is_err());
        }
        let mut bad_kind = DecisionClose {
            decision: DecisionId(1),
            kind: CloseKind::Early,
            at: 0,
            by: 0,
        }
        .encode();
        bad_kind[17] = 9;
        assert!(VoteLogEntry::decode(&bad_kind).is_err());
        assert!(VoteLogEntry::decode(&[CLOSE_ENCODING_TAG; 41]).is_err());
    }

    #[test]
    fn a_close_leaf_is_told_from_a_vote_leaf_and_reads_back() {
        let close = DecisionClose {
            decision: DecisionId(7),
            kind: CloseKind::Schedule,
            at: 5,
            by: 0,
        };
        let leaf = close.leaf_data();
        assert!(DecisionClose::is_close_leaf(&leaf));
        assert_eq!(DecisionClose::from_leaf_data(&leaf).unwrap(), close);
        assert!(LoggedVote::from_leaf_data(&leaf).is_err());
        let mut padded_wrong = leaf.to_vec();
        padded_wrong[CLOSE_LEAF_LEN - 1] = 1;
        assert!(DecisionClose::from_leaf_data(&padded_wrong).is_err());
    }
}
