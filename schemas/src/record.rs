//! What the vote record holds of a vote: the vote with its voter stood in for by a salted
//! commitment, and the bytes the Merkle log hashes.
//!
//! The commitment is `SHA-256("canopy/voter/v1" ‖ salt ‖ voter_id ‖ decision_id)` with a
//! 32-byte random salt kept per voter in the metadata store. The decision id is in it so one
//! voter's leaves in different decisions cannot be linked to each other. Erasing the salt
//! (GDPR) unlinks the voter from every leaf while every leaf, and so every proof, stays as
//! it was.
//!
//! The leaf encoding, version 1 (what `leaf = SHA-256(0x00 ‖ bytes)` is taken over):
//!
//! ```text
//! offset  size  field
//!      0     1  version = 1
//!      1    16  vote_id
//!     17    16  decision_id
//!     33    32  voter commitment
//!     65     2  option       (u16, big-endian)
//!     67     1  component
//!     68     4  weight       (u32 millionths, big-endian)
//!     72     8  cast_at      (i64 µs, big-endian)
//!     80        end
//! ```
//!
//! The log stores a [`LoggedVote`], so the record can be rebuilt from the log alone, before
//! and after an erasure. Version 2 (152 bytes), what every node writes:
//!
//! ```text
//! offset  size  field
//!      0    64  the vote encoding, its voter_id field holding the ballot pseudonym (the
//!               commitment's first 16 bytes), never the voter's id
//!     64    32  voter commitment
//!     96    56  the sealed voter: nonce (24) ‖ XChaCha20-Poly1305 of the voter's id (16)
//!               ‖ tag (16), under the voter's own key in the metadata store; all zeros
//!               when no key sealed it (tools, migrated entries)
//!    152        end
//! ```
//!
//! Version 1 (96 bytes: the vote with the voter's id in the clear, then the commitment) is
//! still read, its voter id replaced by the pseudonym on the way in, so every reader keys
//! ballots the same way whatever version wrote them; the segment log rewrites version-1
//! entries when it opens (crypto-shredding: once the voter's key and salt are erased, no
//! byte of the log links the ballot to them).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{DecisionId, SchemaError, VOTE_ENCODING_LEN, Vote, VoterId};

pub const LEAF_ENCODING_VERSION: u8 = 1;
pub const LEAF_ENCODING_LEN: usize = 80;
pub const LOGGED_VOTE_LEN: usize = VOTE_ENCODING_LEN + 32 + SEALED_VOTER_LEN;
/// The logged-vote encoding of before the sealed voter: the voter's id in the clear.
pub const LOGGED_VOTE_V1_LEN: usize = VOTE_ENCODING_LEN + 32;
pub const SEALED_VOTER_LEN: usize = 56;

const COMMITMENT_TAG: &[u8] = b"canopy/voter/v1";

/// A voter's per-voter secret. Whoever holds it (and the voter id) can find the voter's
/// leaves; nobody else can.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VoterSalt(pub [u8; 32]);

impl fmt::Debug for VoterSalt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VoterSalt(..)")
    }
}

/// The voter as the record shows them: a hiding, binding commitment.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct VoterCommitment(pub [u8; 32]);

impl VoterCommitment {
    pub fn new(salt: &VoterSalt, voter: VoterId, decision: DecisionId) -> Self {
        let digest = Sha256::new()
            .chain_update(COMMITMENT_TAG)
            .chain_update(salt.0)
            .chain_update(voter.0.to_be_bytes())
            .chain_update(decision.0.to_be_bytes())
            .finalize();
        Self(digest.into())
    }
}

impl fmt::Debug for VoterCommitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VoterCommitment({})", hex::encode(self.0))
    }
}

impl VoterCommitment {
    /// The ballot's pseudonym: what the log and the engines know the voter as. Fixed per
    /// (voter, decision) while the salt lives, like the commitment it is cut from, so the
    /// engines count one current vote per voter without ever holding the voter's id.
    pub fn pseudonym(&self) -> VoterId {
        VoterId(u128::from_be_bytes(
            self.0[..16].try_into().expect("16 bytes"),
        ))
    }
}

/// The voter's id sealed under their own key (see the module docs); opaque here, the
/// metadata store's side seals and opens it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SealedVoter(pub [u8; SEALED_VOTER_LEN]);

impl SealedVoter {
    /// No voter sealed: written by tools and by the migration of version-1 entries.
    pub const NONE: SealedVoter = SealedVoter([0; SEALED_VOTER_LEN]);
}

impl fmt::Debug for SealedVoter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if *self == Self::NONE {
            "SealedVoter(none)"
        } else {
            "SealedVoter(..)"
        })
    }
}

/// A vote as the log stores it: the vote (its voter the pseudonym), its voter's commitment,
/// and the voter sealed under their key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LoggedVote {
    pub vote: Vote,
    pub commitment: VoterCommitment,
    pub sealed_voter: SealedVoter,
}

impl LoggedVote {
    /// `vote` as the log holds it: the voter stood in for by the commitment under `salt`,
    /// and by its pseudonym in the vote; no sealed voter.
    pub fn new(vote: Vote, salt: &VoterSalt) -> Self {
        let commitment = VoterCommitment::new(salt, vote.voter_id, vote.decision_id);
        Self {
            vote: Vote {
                voter_id: commitment.pseudonym(),
                ..vote
            },
            commitment,
            sealed_voter: SealedVoter::NONE,
        }
    }

    pub fn with_sealed_voter(self, sealed_voter: SealedVoter) -> Self {
        Self {
            sealed_voter,
            ..self
        }
    }

    pub fn encode(&self) -> [u8; LOGGED_VOTE_LEN] {
        let mut out = [0u8; LOGGED_VOTE_LEN];
        out[..VOTE_ENCODING_LEN].copy_from_slice(&self.vote.encode());
        out[VOTE_ENCODING_LEN..LOGGED_VOTE_V1_LEN].copy_from_slice(&self.commitment.0);
        out[LOGGED_VOTE_V1_LEN..].copy_from_slice(&self.sealed_voter.0);
        out
    }

    /// Reads version 2, and version 1 with its voter id replaced by the pseudonym.
    pub fn decode(bytes: &[u8]) -> Result<Self, SchemaError> {
        if bytes.len() != LOGGED_VOTE_LEN && bytes.len() != LOGGED_VOTE_V1_LEN {
            return Err(SchemaError::EncodingLength {
                got: bytes.len(),
                expected: LOGGED_VOTE_LEN,
            });
        }
        let vote = Vote::decode(&bytes[..VOTE_ENCODING_LEN])?;
        let commitment = VoterCommitment(
            bytes[VOTE_ENCODING_LEN..LOGGED_VOTE_V1_LEN]
                .try_into()
                .expect("32 bytes"),
        );
        let sealed_voter = match bytes.len() {
            LOGGED_VOTE_LEN => {
                SealedVoter(bytes[LOGGED_VOTE_V1_LEN..].try_into().expect("56 bytes"))
            }
            _ => SealedVoter::NONE,
        };
        Ok(Self {
            vote: Vote {
                voter_id: commitment.pseudonym(),
                ..vote
            },
            commitment,
            sealed_voter,
        })
    }

    /// Whether `bytes` are a version-1 entry, with the voter's id in the clear.
    pub fn is_version_1(bytes: &[u8]) -> bool {
        bytes.len() == LOGGED_VOTE_V1_LEN
    }

    /// What a leaf encoding holds: the vote (its voter the ballot pseudonym) and the
    /// commitment, with no sealed voter (the leaf carries none). The inverse of
    /// [`Self::leaf_data`].
    pub fn from_leaf_data(bytes: &[u8]) -> Result<Self, SchemaError> {
        let bytes: &[u8; LEAF_ENCODING_LEN] =
            bytes.try_into().map_err(|_| SchemaError::EncodingLength {
                got: bytes.len(),
                expected: LEAF_ENCODING_LEN,
            })?;
        if bytes[0] != LEAF_ENCODING_VERSION {
            return Err(SchemaError::EncodingVersion(bytes[0]));
        }
        let commitment = VoterCommitment(bytes[33..65].try_into().expect("32 bytes"));
        let u128_at =
            |at: usize| u128::from_be_bytes(bytes[at..at + 16].try_into().expect("16 bytes"));
        let vote = Vote {
            vote_id: crate::VoteId(u128_at(1)),
            decision_id: DecisionId(u128_at(17)),
            voter_id: commitment.pseudonym(),
            option: u16::from_be_bytes([bytes[65], bytes[66]]),
            component: crate::Component::from_code(bytes[67])?,
            weight: crate::Weight(u32::from_be_bytes(
                bytes[68..72].try_into().expect("4 bytes"),
            )),
            cast_at: i64::from_be_bytes(bytes[72..80].try_into().expect("8 bytes")),
        };
        Ok(Self {
            vote,
            commitment,
            sealed_voter: SealedVoter::NONE,
        })
    }

    /// The bytes the Merkle leaf is taken over (see the module docs).
    pub fn leaf_data(&self) -> [u8; LEAF_ENCODING_LEN] {
        let vote = &self.vote;
        let mut out = [0u8; LEAF_ENCODING_LEN];
        out[0] = LEAF_ENCODING_VERSION;
        out[1..17].copy_from_slice(&vote.vote_id.0.to_be_bytes());
        out[17..33].copy_from_slice(&vote.decision_id.0.to_be_bytes());
        out[33..65].copy_from_slice(&self.commitment.0);
        out[65..67].copy_from_slice(&vote.option.to_be_bytes());
        out[67] = vote.component as u8;
        out[68..72].copy_from_slice(&vote.weight.0.to_be_bytes());
        out[72..80].copy_from_slice(&vote.cast_at.to_be_bytes());
        out
    }
}
