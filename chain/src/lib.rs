//! Canopy's vote record, the pure part: RFC 6962 / RFC 9162 Merkle logs with inclusion and
//! consistency proofs, and checkpoints as C2SP signed notes. No I/O, cheap to build.
//!
//! ```text
//!   vote leaf ──append──▶ MerkleLog ──root_at(n)──▶ Checkpoint { origin, n, root }
//!                            │                          │ sign (Ed25519, signed note)
//!          inclusion_proof(i, n)                        ▼
//!          consistency_proof(m, n)             auditors: verify_inclusion,
//!                                                        verify_consistency, Checkpoint::verify
//! ```

#![deny(unsafe_code)]

pub mod anchor;
pub mod bundle;
pub mod merkle;
pub mod note;
pub mod target;

pub use anchor::{AnchorBatch, AnchorEntry, AnchorPath, verify_anchored};
pub use bundle::ProofBundle;
pub use merkle::{
    Hash, MerkleLog, empty_root, leaf_hash, node_hash, root_from_inclusion, verify_consistency,
    verify_inclusion,
};
pub use note::{Checkpoint, NoteSigner, NoteVerifier};
pub use target::{AnchorJournal, AnchorReceipt, AnchorTarget, batch_origin};

/// Why a proof, checkpoint or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("leaf {index} is not in a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a tree of {size} leaves was asked of a log of {log}")]
    SizeBeyondLog { size: u64, log: u64 },
    #[error("the earlier size {old} is larger than the later size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("the proof does not verify: {0}")]
    BadProof(&'static str),
    #[error("the checkpoint is malformed: {0}")]
    BadCheckpoint(String),
    #[error("no valid signature by the expected key")]
    BadSignature,
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("the proof bundle is malformed: {0}")]
    BadBundle(String),
    #[error("anchoring: {0}")]
    Anchoring(String),
}

impl ChainError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::IndexOutOfRange { .. } => "index_out_of_range",
            Self::SizeBeyondLog { .. } => "size_beyond_log",
            Self::SizesOutOfOrder { .. } => "sizes_out_of_order",
            Self::BadProof(_) => "bad_proof",
            Self::BadCheckpoint(_) => "bad_checkpoint",
            Self::BadSignature => "bad_signature",
            Self::BadKey(_) => "bad_key",
            Self::BadBundle(_) => "bad_bundle",
            Self::Anchoring(_) => "anchoring",
        }
    }
}
