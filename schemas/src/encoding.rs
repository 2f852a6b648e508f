//! The canonical binary encoding of a vote, version 1.
//!
//! These bytes are what the vote log stores and what the Merkle record will hash, so they
//! never change for a given version: a new layout gets a new version byte, and decoders keep
//! reading every old one.
//!
//! ```text
//! offset  size  field
//!      0     1  version = 1
//!      1    16  vote_id      (UUID, big-endian bytes as printed)
//!     17    16  decision_id  (UUID)
//!     33    16  voter_id     (UUID)
//!     49     2  option       (u16, big-endian)
//!     51     1  component    (0 democratic, 1 expert, 2 community, 3 environmental_data)
//!     52     4  weight       (u32 millionths, big-endian)
//!     56     8  cast_at      (i64 microseconds since the Unix epoch, big-endian)
//!     64        end
//! ```

use crate::{Component, DecisionId, SchemaError, Vote, VoteId, VoterId, Weight};

pub const VOTE_ENCODING_VERSION: u8 = 1;
pub const VOTE_ENCODING_LEN: usize = 64;

impl Vote {
    /// The canonical bytes of this vote (see the module docs for the layout).
    pub fn encode(&self) -> [u8; VOTE_ENCODING_LEN] {
        let mut out = [0u8; VOTE_ENCODING_LEN];
        out[0] = VOTE_ENCODING_VERSION;
        out[1..17].copy_from_slice(&self.vote_id.0.to_be_bytes());
        out[17..33].copy_from_slice(&self.decision_id.0.to_be_bytes());
        out[33..49].copy_from_slice(&self.voter_id.0.to_be_bytes());
        out[49..51].copy_from_slice(&self.option.to_be_bytes());
        out[51] = self.component as u8;
        out[52..56].copy_from_slice(&self.weight.0.to_be_bytes());
        out[56..64].copy_from_slice(&self.cast_at.to_be_bytes());
        out
    }

    /// Decodes canonical bytes; refuses unknown versions, wrong lengths, unknown components.
    pub fn decode(bytes: &[u8]) -> Result<Vote, SchemaError> {
        let Some(&version) = bytes.first() else {
            return Err(SchemaError::EncodingLength {
                got: 0,
                expected: VOTE_ENCODING_LEN,
            });
        };
        if version != VOTE_ENCODING_VERSION {
            return Err(SchemaError::EncodingVersion(version));
        }
        let bytes: &[u8; VOTE_ENCODING_LEN] =
            bytes.try_into().map_err(|_| SchemaError::EncodingLength {
                got: bytes.len(),
                expected: VOTE_ENCODING_LEN,
            })?;
        let u128_at =
            |at: usize| u128::from_be_bytes(bytes[at..at + 16].try_into().expect("16 bytes"));
        Ok(Vote {
            vote_id: VoteId(u128_at(1)),
            decision_id: DecisionId(u128_at(17)),
            voter_id: VoterId(u128_at(33)),
            option: u16::from_be_bytes([bytes[49], bytes[50]]),
            component: Component::from_code(bytes[51])?,
            weight: Weight(u32::from_be_bytes(
                bytes[52..56].try_into().expect("4 bytes"),
            )),
            cast_at: i64::from_be_bytes(bytes[56..64].try_into().expect("8 bytes")),
        })
    }
}
