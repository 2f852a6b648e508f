//! What the vote record holds of a vote: the vote with its voter stood in for by a salted
//! commitment, and the bytes the Merkle log hashes.
//!
//! The commitment is `SHA-256("canopy/voter/v1" ‖ salt ‖ voter_id ‖ decision_id)` with a
//! 32-byte random salt kept per voter in the metadata store. The decision id is in it so one
//! voter's leaves in different decisions cannot be linked to each other. Erasing the salt
//! (GDPR) unlinks the voter from every leaf while every leaf, and so every proof, stays as
//! it was.
//!
//! The leaf encoding (what `leaf = SHA-256(0x00 ‖ bytes)` is taken over), version 2, what
//! every vote logged in the current format gets:
//!
//! ```text
//! offset  size  field
//!      0     1  version = 2
//!      1    16  vote_id
//!     17    16  decision_id
//!     33    32  voter commitment
//!     65     1  method       (as in the vote encoding)
//!     66    32  ballot       (its canonical encoding)
//!     98     1  component
//!     99     4  weight       (u32 millionths, big-endian)
//!    103        end
//! ```
//!
//! It carries what a recount needs (the ballot, the component, the weight) and no time: a
//! published leaf stamped to the microsecond would let whoever saw a voter vote (or holds
//! an access log) pick out their ballot. Version 1 (80 bytes), the leaf of votes logged
//! before the voting methods, is kept for those votes, so a record rebuilt from an old log
//! has the leaves, and the roots, it was anchored with:
//!
//! ```text
//! offset  size  field
//!      0     1  version = 1
//!      1    64  vote_id, decision_id, voter commitment as above
//!     65     2  option       (u16, big-endian)
//!     67     1  component
//!     68     4  weight
//!     72     8  cast_at      (i64 µs, big-endian)
//!     80        end
//! ```
//!
//! The log stores a [`LoggedVote`], so the record can be rebuilt from the log alone, before
//! and after an erasure. Version 3 (183 bytes), what every node writes:
//!
//! ```text
//! offset  size  field
//!      0    95  the vote encoding (version 2), its voter_id field holding the ballot
//!               pseudonym (the commitment's first 16 bytes), never the voter's id
//!     95    32  voter commitment
//!    127    56  the sealed voter: nonce (24) ‖ XChaCha20-Poly1305 of the voter's id (16)
//!               ‖ tag (16), under the voter's own key in the metadata store; all zeros
//!               when no key sealed it (tools, migrated entries)
//!    183        end
//! ```
//!
//! Version 2 (152 bytes) is the same around a version-1 vote encoding (64 bytes); its votes
//! keep leaf version 1, and a version-2 entry rewritten is written as version 2 again.
//! Version 1 (96 bytes: the version-1 vote with the voter's id in the clear, then the
//! commitment) is still read, its voter id replaced by the pseudonym on the way in, so
//! every reader keys ballots the same way whatever version wrote them; the segment log
//! rewrites version-1 entries when it opens (crypto-shredding: once the voter's key and
//! salt are erased, no byte of the log links the ballot to them).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encoding::VOTE_ENCODING_V1_LEN;
use crate::{
    BALLOT_ENCODING_LEN, Ballot, Component, DecisionId, Method, SchemaError, VOTE_ENCODING_LEN,
    Vote, VoteId, VoterId, Weight,
};

pub const LEAF_ENCODING_VERSION: u8 = 2;
pub const LEAF_ENCODING_LEN: usize = 103;
/// The leaf of votes logged before the voting methods.
pub const LEAF_ENCODING_V1_LEN: usize = 80;
/// The longest leaf encoding of any version.
pub const MAX_LEAF_ENCODING_LEN: usize = LEAF_ENCODING_LEN;
pub const LOGGED_VOTE_LEN: usize = VOTE_ENCODING_LEN + 32 + SEALED_VOTER_LEN;
/// The logged-vote encoding of before the voting methods: a version-1 vote.
pub const LOGGED_VOTE_V2_LEN: usize = VOTE_ENCODING_V1_LEN + 32 + SEALED_VOTER_LEN;
/// The logged-vote encoding of before the sealed voter: the voter's id in the clear.
pub const LOGGED_VOTE_V1_LEN: usize = VOTE_ENCODING_V1_LEN + 32;
pub const SEALED_VOTER_LEN: usize = 56;

/// A leaf encoding of any version (or a close's), held inline: the record keeps one per vote
/// and a heap allocation each would cost more than the bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafBytes {
    len: u8,
    bytes: [u8; MAX_LEAF_ENCODING_LEN],
}

impl Default for LeafBytes {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; MAX_LEAF_ENCODING_LEN],
        }
    }
}

impl LeafBytes {
    /// `bytes` if they fit (no leaf encoding is longer than [`MAX_LEAF_ENCODING_LEN`]).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let mut out = Self::default();
        out.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        out.len = bytes.len() as u8;
        Some(out)
    }

    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    fn extend_from_slice(&mut self, more: &[u8]) {
        let at = usize::from(self.len);
        self.bytes[at..at + more.len()].copy_from_slice(more);
        self.len += more.len() as u8;
    }
}

impl std::ops::Deref for LeafBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for LeafBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for LeafBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeafBytes({})", hex::encode(&self[..]))
    }
}

/// Which leaf encoding a logged vote's leaf takes: the one of its log entry's era, so that
/// a record rebuilt from the log has exactly the leaves it had when it was written.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum LeafVersion {
    /// Votes logged before the voting methods (log versions 1 and 2): single choice, with
    /// the cast time.
    V1,
    /// Every vote logged now.
    #[default]
    V2,
}

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
/// the voter sealed under their key, and which leaf encoding its era gives it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LoggedVote {
    pub vote: Vote,
    pub commitment: VoterCommitment,
    pub sealed_voter: SealedVoter,
    pub leaf_version: LeafVersion,
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
            leaf_version: LeafVersion::V2,
        }
    }

    pub fn with_sealed_voter(self, sealed_voter: SealedVoter) -> Self {
        Self {
            sealed_voter,
            ..self
        }
    }

    /// The log entry: version 3, or version 2 for a vote of that era (so rewriting an old
    /// entry never changes its leaf).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LOGGED_VOTE_LEN);
        match self.version_1_option() {
            Some(option) => out.extend_from_slice(&self.vote_v1_encoding(option)),
            None => out.extend_from_slice(&self.vote.encode()),
        }
        out.extend_from_slice(&self.commitment.0);
        out.extend_from_slice(&self.sealed_voter.0);
        out
    }

    /// Reads versions 3 and 2, and version 1 with its voter id replaced by the pseudonym.
    pub fn decode(bytes: &[u8]) -> Result<Self, SchemaError> {
        let (vote_len, sealed, leaf_version) = match bytes.len() {
            LOGGED_VOTE_LEN => (VOTE_ENCODING_LEN, true, LeafVersion::V2),
            LOGGED_VOTE_V2_LEN => (VOTE_ENCODING_V1_LEN, true, LeafVersion::V1),
            LOGGED_VOTE_V1_LEN => (VOTE_ENCODING_V1_LEN, false, LeafVersion::V1),
            got => {
                return Err(SchemaError::EncodingLength {
                    got,
                    expected: LOGGED_VOTE_LEN,
                });
            }
        };
        let vote = Vote::decode(&bytes[..vote_len])?;
        let expected_version = match leaf_version {
            LeafVersion::V1 => 1,
            LeafVersion::V2 => crate::VOTE_ENCODING_VERSION,
        };
        if bytes[0] != expected_version {
            return Err(SchemaError::EncodingVersion(bytes[0]));
        }
        let commitment =
            VoterCommitment(bytes[vote_len..vote_len + 32].try_into().expect("32 bytes"));
        let sealed_voter = if sealed {
            SealedVoter(bytes[vote_len + 32..].try_into().expect("56 bytes"))
        } else {
            SealedVoter::NONE
        };
        Ok(Self {
            vote: Vote {
                voter_id: commitment.pseudonym(),
                ..vote
            },
            commitment,
            sealed_voter,
            leaf_version,
        })
    }

    /// Whether `bytes` are a version-1 entry, with the voter's id in the clear.
    pub fn is_version_1(bytes: &[u8]) -> bool {
        bytes.len() == LOGGED_VOTE_V1_LEN
    }

    /// The option of a vote of the version-1 era, which takes that era's encodings. Those
    /// votes are single choice (they were decoded from an option); any other ballot takes
    /// the current encodings whatever `leaf_version` says.
    fn version_1_option(&self) -> Option<u16> {
        match (self.leaf_version, self.vote.ballot) {
            (LeafVersion::V1, Ballot::SingleChoice(option)) => Some(u16::from(option)),
            _ => None,
        }
    }

    fn vote_v1_encoding(&self, option: u16) -> [u8; VOTE_ENCODING_V1_LEN] {
        let vote = &self.vote;
        let mut out = [0u8; VOTE_ENCODING_V1_LEN];
        out[0] = 1;
        out[1..17].copy_from_slice(&vote.vote_id.0.to_be_bytes());
        out[17..33].copy_from_slice(&vote.decision_id.0.to_be_bytes());
        out[33..49].copy_from_slice(&vote.voter_id.0.to_be_bytes());
        out[49..51].copy_from_slice(&option.to_be_bytes());
        out[51] = vote.component as u8;
        out[52..56].copy_from_slice(&vote.weight.0.to_be_bytes());
        out[56..64].copy_from_slice(&vote.cast_at.to_be_bytes());
        out
    }

    /// What a leaf encoding holds: the vote (its voter the ballot pseudonym) and the
    /// commitment, with no sealed voter (the leaf carries none); a version-2 leaf carries no
    /// cast time, so the vote's `cast_at` is 0. The inverse of [`Self::leaf_data`].
    pub fn from_leaf_data(bytes: &[u8]) -> Result<Self, SchemaError> {
        let (version, expected) = match bytes.first() {
            Some(1) => (LeafVersion::V1, LEAF_ENCODING_V1_LEN),
            Some(&LEAF_ENCODING_VERSION) => (LeafVersion::V2, LEAF_ENCODING_LEN),
            Some(&other) => return Err(SchemaError::EncodingVersion(other)),
            None => (LeafVersion::V2, LEAF_ENCODING_LEN),
        };
        if bytes.len() != expected {
            return Err(SchemaError::EncodingLength {
                got: bytes.len(),
                expected,
            });
        }
        let commitment = VoterCommitment(bytes[33..65].try_into().expect("32 bytes"));
        let u128_at =
            |at: usize| u128::from_be_bytes(bytes[at..at + 16].try_into().expect("16 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
        let (ballot, component, weight, cast_at) = match version {
            LeafVersion::V1 => (
                Ballot::single_choice(u16::from_be_bytes([bytes[65], bytes[66]]))?,
                bytes[67],
                u32_at(68),
                i64::from_be_bytes(bytes[72..80].try_into().expect("8 bytes")),
            ),
            LeafVersion::V2 => {
                let ballot: &[u8; BALLOT_ENCODING_LEN] =
                    bytes[66..98].try_into().expect("32 bytes");
                (
                    Ballot::decode(Method::from_code(bytes[65])?, ballot)?,
                    bytes[98],
                    u32_at(99),
                    0,
                )
            }
        };
        let vote = Vote {
            vote_id: VoteId(u128_at(1)),
            decision_id: DecisionId(u128_at(17)),
            voter_id: commitment.pseudonym(),
            ballot,
            component: Component::from_code(component)?,
            weight: Weight(weight),
            cast_at,
        };
        Ok(Self {
            vote,
            commitment,
            sealed_voter: SealedVoter::NONE,
            leaf_version: version,
        })
    }

    /// The bytes the Merkle leaf is taken over, in the vote's leaf version (see the module
    /// docs): 103 bytes, or 80 for a vote of the version-1 era.
    pub fn leaf_data(&self) -> LeafBytes {
        let vote = &self.vote;
        let mut out = LeafBytes::default();
        match self.version_1_option() {
            Some(option) => {
                out.push(1);
                out.extend_from_slice(&vote.vote_id.0.to_be_bytes());
                out.extend_from_slice(&vote.decision_id.0.to_be_bytes());
                out.extend_from_slice(&self.commitment.0);
                out.extend_from_slice(&option.to_be_bytes());
                out.push(vote.component as u8);
                out.extend_from_slice(&vote.weight.0.to_be_bytes());
                out.extend_from_slice(&vote.cast_at.to_be_bytes());
            }
            None => {
                out.push(LEAF_ENCODING_VERSION);
                out.extend_from_slice(&vote.vote_id.0.to_be_bytes());
                out.extend_from_slice(&vote.decision_id.0.to_be_bytes());
                out.extend_from_slice(&self.commitment.0);
                out.push(vote.ballot.method().code());
                out.extend_from_slice(&vote.ballot.encode());
                out.push(vote.component as u8);
                out.extend_from_slice(&vote.weight.0.to_be_bytes());
            }
        }
        out
    }
}
