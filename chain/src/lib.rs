//! Canopy's vote record below the dataflow, end to end: RFC 6962 / RFC 9162 Merkle logs with
//! inclusion and consistency proofs, checkpoints as C2SP signed notes, the proof bundles
//! auditors check, the batches that anchor many decision logs under one root, and the
//! targets that record those roots: the local journal and, behind the cargo feature `evm`,
//! the `GovernanceVotingVerifier` contract on an EVM chain (alloy).
//!
//! ```text
//!   merkle   vote leaf ──append──▶ MerkleLog ──root_at(n)──▶ root ─┐ inclusion / consistency
//!                                                                  │ proofs, verify_*
//!   note     Checkpoint { origin, n, root } ──sign (Ed25519)──▶ signed note, Checkpoint::verify
//!   bundle   ProofBundle (c2sp.org/tlog-proof): index + inclusion proof + signed checkpoint,
//!            checked offline against the leaf and the log's verifier key
//!   anchor   AnchorBatch: one entry per decision (its log size and root), and the audit
//!            trail's head under AUDIT_TRAIL_ID ─▶ batch root, AnchorPath, verify_anchored,
//!            verify_audit_anchor
//!   tiles    the log as C2SP tlog tiles: what a growth writes (growth_tiles, growth_bundles),
//!            roots and proofs read back from tiles (TiledLog over a TileSource)
//!   target   trait AnchorTarget ─┬─ AnchorJournal: a signed line per batch, fsync'd
//!                                └─ evm::EvmTarget (feature `evm`): recordBatch + confirmations
//!   evm      EvmAnchor (alloy client: deploy, record_batch, batch, decision_history,
//!            verify_vote), contract bindings from contracts/artifacts/
//! ```
//!
//! Without `evm` the crate does no network I/O and builds no alloy. Every failure is a
//! [`ChainError`] with a stable [`code`](ChainError::code) (the EVM client's are `evm_*`).

#![deny(unsafe_code)]

pub mod anchor;
pub mod bundle;
#[cfg(feature = "evm")]
pub mod evm;
pub mod merkle;
pub mod note;
pub mod target;
pub mod tiles;

pub use anchor::{
    AUDIT_TRAIL_ID, AnchorBatch, AnchorEntry, AnchorPath, verify_anchored, verify_audit_anchor,
};
pub use bundle::ProofBundle;
pub use merkle::{
    Hash, MerkleLog, empty_root, leaf_hash, node_hash, root_from_inclusion, verify_consistency,
    verify_inclusion,
};
pub use note::{Checkpoint, NoteSigner, NoteVerifier, open_note};
pub use target::{AnchorJournal, AnchorReceipt, AnchorTarget, JournalAuditAnchor, batch_origin};
pub use tiles::{TileKind, TileRef, TileSource, TileWrite, TiledLog};

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
    /// A tile the answer needs is not in the store (yet).
    #[error("the tile {0} is missing")]
    TileMissing(String),
    /// A tile's bytes are not what its address says (length, or short for the size read).
    #[error("bad tile: {0}")]
    BadTile(String),
    /// Not a tile path of the C2SP tlog-tiles layout, spelled the one canonical way.
    #[error("bad tile path: {0}")]
    BadTilePath(String),
    #[error("bad entry bundle: {0}")]
    BadEntryBundle(String),
    /// The record store (folder or bucket) could not be read or written. Transient.
    #[error("the record store failed: {0}")]
    TileStore(String),
    /// A tile already stored holds other bytes than the ones being written: tiles never
    /// change, so the store or the log is corrupt.
    #[error("the tile {0} is stored with other bytes")]
    TileConflict(String),

    // The EVM anchoring client's failures (`evm::EvmAnchor`, `evm::deploy`, `evm::EvmTarget`);
    // plain data, so they exist with or without the `evm` feature and a `match` reads the
    // same in every build.
    /// The EVM configuration is unusable (bad URL, unsupported scheme, ...).
    #[error("bad EVM configuration: {0}")]
    EvmBadConfig(String),
    /// The EVM private key could not be parsed. The message never contains the key.
    #[error("bad EVM private key: {0}")]
    EvmBadKey(String),
    /// The EVM node could not be reached (connection refused, timeout, I/O). Transient.
    #[error("EVM node unreachable: {0}")]
    EvmUnreachable(String),
    /// There is no contract code at the configured address.
    #[error("no contract code at 0x{address} (wrong address or wrong chain?)")]
    EvmNoContract {
        /// Hex of the address, without 0x.
        address: String,
    },
    /// The call or transaction reverted (also during gas estimation). Not transient.
    #[error("EVM execution reverted: {reason}{}", tx_hash.as_ref().map(|h| format!(" (tx 0x{})", hex::encode(h.as_ref()))).unwrap_or_default())]
    EvmReverted {
        /// Decoded revert reason (custom error, `Error(string)`, panic) or raw data hex.
        reason: String,
        /// Set when a mined transaction failed (status 0). Boxed: every error type above
        /// this one embeds ChainError, so its size is theirs.
        tx_hash: Option<Box<[u8; 32]>>,
    },
    /// The sending account cannot pay for gas.
    #[error("insufficient funds for gas: {0}")]
    EvmInsufficientFunds(String),
    /// The input was rejected before anything was sent.
    #[error("invalid input: {0}")]
    EvmInvalidInput(String),
    /// Any other JSON-RPC failure (error response, HTTP 5xx/429, malformed reply). Transient.
    #[error("EVM RPC error: {0}")]
    EvmRpc(String),
    /// A receipt did not look as expected (no `BatchAnchored` log, no contract address).
    #[error("unexpected EVM receipt: {0}")]
    EvmBadReceipt(String),
    /// The transaction's block was reorganised away while waiting for confirmations.
    /// Transient: resubmitting may anchor the batch again under a new id.
    #[error(
        "transaction 0x{} left the canonical chain while awaiting confirmations",
        hex::encode(tx_hash.as_ref())
    )]
    EvmReorged {
        /// The transaction that was mined and then dropped.
        tx_hash: Box<[u8; 32]>,
    },
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
            Self::TileMissing(_) => "tile_missing",
            Self::BadTile(_) => "bad_tile",
            Self::BadTilePath(_) => "bad_tile_path",
            Self::BadEntryBundle(_) => "bad_entry_bundle",
            Self::TileStore(_) => "tile_store",
            Self::TileConflict(_) => "tile_conflict",
            Self::EvmBadConfig(_) => "evm_bad_config",
            Self::EvmBadKey(_) => "evm_bad_key",
            Self::EvmUnreachable(_) => "evm_unreachable",
            Self::EvmNoContract { .. } => "evm_no_contract",
            Self::EvmReverted { .. } => "evm_reverted",
            Self::EvmInsufficientFunds(_) => "evm_insufficient_funds",
            Self::EvmInvalidInput(_) => "evm_invalid_input",
            Self::EvmRpc(_) => "evm_rpc",
            Self::EvmBadReceipt(_) => "evm_bad_receipt",
            Self::EvmReorged { .. } => "evm_reorged",
        }
    }

    /// Whether retrying the same call later may succeed: an unreachable EVM node, a failed
    /// JSON-RPC exchange, a transaction reorganised away. Everything else fails again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::EvmUnreachable(_) | Self::EvmRpc(_) | Self::EvmReorged { .. }
        )
    }
}
