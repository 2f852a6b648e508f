//! The canonical binary encoding of a vote.
//!
//! These bytes are what the vote log stores, so they never change for a given version: a
//! new layout gets a new version byte, and decoders keep reading every old one. Version 2,
//! what every node writes:
//!
//! ```text
//! offset  size  field
//!      0     1  version = 2
//!      1    16  vote_id      (UUID, big-endian bytes as printed)
//!     17    16  decision_id  (UUID)
//!     33    16  voter_id     (UUID)
//!     49     1  method       (0 single_choice, 1 approval, 2 ranked_choice, 3 quadratic)
//!     50    32  ballot       (its canonical encoding: see the ballot module)
//!     82     1  component    (0 democratic, 1 expert, 2 community, 3 environmental_data)
//!     83     4  weight       (u32 millionths, big-endian)
//!     87     8  cast_at      (i64 microseconds since the Unix epoch, big-endian)
//!     95        end
//! ```
//!
//! Version 1 (64 bytes), from before the voting methods, is read as a single-choice ballot:
//!
//! ```text
//! offset  size  field
//!      0     1  version = 1
//!      1    48  vote_id, decision_id, voter_id as above
//!     49     2  option       (u16, big-endian)
//!     51     1  component
//!     52     4  weight
//!     56     8  cast_at
//!     64        end
//! ```

use crate::{
    BALLOT_ENCODING_LEN, Ballot, Component, DecisionId, Method, SchemaError, Vote, VoteId, VoterId,
    Weight,
};

pub const VOTE_ENCODING_VERSION: u8 = 2;
pub const VOTE_ENCODING_LEN: usize = 95;
/// Version 1's length: a single-choice option where version 2 has the method and ballot.
pub const VOTE_ENCODING_V1_LEN: usize = 64;

impl Vote {
    /// The canonical bytes of this vote (see the module docs for the layout).
    pub fn encode(&self) -> [u8; VOTE_ENCODING_LEN] {
        let mut out = [0u8; VOTE_ENCODING_LEN];
        out[0] = VOTE_ENCODING_VERSION;
        out[1..17].copy_from_slice(&self.vote_id.0.to_be_bytes());
        out[17..33].copy_from_slice(&self.decision_id.0.to_be_bytes());
        out[33..49].copy_from_slice(&self.voter_id.0.to_be_bytes());
        out[49] = self.ballot.method().code();
        out[50..82].copy_from_slice(&self.ballot.encode());
        out[82] = self.component as u8;
        out[83..87].copy_from_slice(&self.weight.0.to_be_bytes());
        out[87..95].copy_from_slice(&self.cast_at.to_be_bytes());
        out
    }

    /// Decodes canonical bytes of either version; refuses unknown versions, wrong lengths,
    /// unknown components and methods, and ballots that are not canonical.
    pub fn decode(bytes: &[u8]) -> Result<Vote, SchemaError> {
        let expected = match bytes.first() {
            Some(1) => VOTE_ENCODING_V1_LEN,
            Some(&VOTE_ENCODING_VERSION) => VOTE_ENCODING_LEN,
            Some(&version) => return Err(SchemaError::EncodingVersion(version)),
            None => VOTE_ENCODING_LEN,
        };
        if bytes.len() != expected {
            return Err(SchemaError::EncodingLength {
                got: bytes.len(),
                expected,
            });
        }
        let u128_at =
            |at: usize| u128::from_be_bytes(bytes[at..at + 16].try_into().expect("16 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
        let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8"));
        let (ballot, rest) = if expected == VOTE_ENCODING_V1_LEN {
            (
                Ballot::single_choice(u16::from_be_bytes([bytes[49], bytes[50]]))?,
                51,
            )
        } else {
            let ballot: &[u8; BALLOT_ENCODING_LEN] = bytes[50..82].try_into().expect("32 bytes");
            (Ballot::decode(Method::from_code(bytes[49])?, ballot)?, 82)
        };
        Ok(Vote {
            vote_id: VoteId(u128_at(1)),
            decision_id: DecisionId(u128_at(17)),
            voter_id: VoterId(u128_at(33)),
            ballot,
            component: Component::from_code(bytes[rest])?,
            weight: Weight(u32_at(rest + 1)),
            cast_at: i64_at(rest + 5),
        })
    }
}
