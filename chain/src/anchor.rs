//! Anchoring: one Merkle root over the latest checkpoints of many decisions, recorded in one
//! transaction (or one line of the local anchor journal).
//!
//! Each checkpoint becomes an entry, and the batch root is the RFC 6962 root over the
//! entries' bytes, so a decision's path to the batch root is an ordinary inclusion proof:
//!
//! ```text
//! entry (72 bytes) = "canopy/anchor/v1" ‖ decision id (16) ‖ tree size (u64 BE) ‖ root (32)
//! batch root       = MTH(entry_0, …, entry_{k-1})
//! ```
//!
//! A vote is then anchored by two paths: vote leaf → decision root (at the checkpoint's
//! size), and entry → batch root. contracts/src/GovernanceVotingVerifier.sol checks the same two
//! paths with the SHA-256 precompile.
//!
//! A batch may also hold the head of the audit trail, as one more entry of the same shape:
//! [`AUDIT_TRAIL_ID`] in place of the decision id, the head's sequence number as the size,
//! its chain hash as the root. So the anchored root commits to the trail up to that entry,
//! and the contract needs no change (it files the entry under that id like a decision's).

use crate::ChainError;
use crate::merkle::{Hash, MerkleLog, leaf_hash, root_from_inclusion};

pub const ANCHOR_TAG: &[u8; 16] = b"canopy/anchor/v1";
pub const ANCHOR_ENTRY_LEN: usize = 72;

/// The id an audit-trail head is anchored under, in place of a decision id: the bytes of
/// `canopy/audit/v1/`. As a UUID (`63616e6f-7079-2f61-7564-69742f76312f`) its version
/// nibble is 2, so no decision id (random, version 4) can be it.
pub const AUDIT_TRAIL_ID: [u8; 16] = *b"canopy/audit/v1/";

/// One decision checkpoint as a batch holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnchorEntry {
    pub decision_id: [u8; 16],
    pub tree_size: u64,
    pub root: Hash,
}

impl AnchorEntry {
    pub fn encode(&self) -> [u8; ANCHOR_ENTRY_LEN] {
        let mut out = [0u8; ANCHOR_ENTRY_LEN];
        out[..16].copy_from_slice(ANCHOR_TAG);
        out[16..32].copy_from_slice(&self.decision_id);
        out[32..40].copy_from_slice(&self.tree_size.to_be_bytes());
        out[40..].copy_from_slice(&self.root);
        out
    }

    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.encode())
    }

    /// The entry for the audit trail's head: entry `seq`, whose chain hash is `hash`.
    pub fn audit_head(seq: u64, hash: Hash) -> Self {
        Self {
            decision_id: AUDIT_TRAIL_ID,
            tree_size: seq,
            root: hash,
        }
    }

    pub fn is_audit_head(&self) -> bool {
        self.decision_id == AUDIT_TRAIL_ID
    }
}

/// The entries of one anchor batch and the tree over them.
#[derive(Clone, Debug)]
pub struct AnchorBatch {
    entries: Vec<AnchorEntry>,
    tree: MerkleLog,
}

impl AnchorBatch {
    /// Builds the batch over `entries` in the order given. Refuses an empty batch.
    pub fn new(entries: Vec<AnchorEntry>) -> Result<Self, ChainError> {
        if entries.is_empty() {
            return Err(ChainError::BadBundle(
                "an anchor batch needs an entry".into(),
            ));
        }
        let mut tree = MerkleLog::new();
        for entry in &entries {
            tree.append_hash(entry.leaf_hash());
        }
        Ok(Self { entries, tree })
    }

    pub fn root(&self) -> Hash {
        self.tree.root()
    }

    pub fn entries(&self) -> &[AnchorEntry] {
        &self.entries
    }

    /// The path from entry `index` to the batch root.
    pub fn path(&self, index: u64) -> Result<Vec<Hash>, ChainError> {
        self.tree.inclusion_proof(index, self.tree.size())
    }

    /// The audit trail's head the batch anchors, if it holds one, with its entry index.
    pub fn audit_head(&self) -> Option<(u64, &AnchorEntry)> {
        (0u64..)
            .zip(&self.entries)
            .find(|(_, entry)| entry.is_audit_head())
    }
}

/// Where a checkpoint sits in an anchored batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorPath {
    pub entry_index: u64,
    pub entry_count: u64,
    pub path: Vec<Hash>,
}

/// Checks the whole chain of a vote's anchoring, as the contract does: `vote_leaf` at
/// `index` in the decision's tree of `size` leaves (by `vote_path`) gives the decision root;
/// the entry (decision, size, root) at its place in the batch (by `anchor`) gives
/// `batch_root`. Returns the decision root the paths went through.
pub fn verify_anchored(
    vote_leaf: &Hash,
    index: u64,
    size: u64,
    vote_path: &[Hash],
    decision_id: [u8; 16],
    anchor: &AnchorPath,
    batch_root: &Hash,
) -> Result<Hash, ChainError> {
    let decision_root = root_from_inclusion(vote_leaf, index, size, vote_path)?;
    let entry = AnchorEntry {
        decision_id,
        tree_size: size,
        root: decision_root,
    };
    let computed = root_from_inclusion(
        &entry.leaf_hash(),
        anchor.entry_index,
        anchor.entry_count,
        &anchor.path,
    )?;
    if computed != *batch_root {
        return Err(ChainError::BadProof(
            "the anchor path leads to another batch root",
        ));
    }
    Ok(decision_root)
}

/// Checks that the audit trail's entry `seq` with chain hash `hash` is the entry at its place
/// in the batch whose root is `batch_root` (by `anchor`).
pub fn verify_audit_anchor(
    seq: u64,
    hash: &Hash,
    anchor: &AnchorPath,
    batch_root: &Hash,
) -> Result<(), ChainError> {
    let entry = AnchorEntry::audit_head(seq, *hash);
    let computed = root_from_inclusion(
        &entry.leaf_hash(),
        anchor.entry_index,
        anchor.entry_count,
        &anchor.path,
    )?;
    if computed != *batch_root {
        return Err(ChainError::BadProof(
            "the audit head's path leads to another batch root",
        ));
    }
    Ok(())
}
