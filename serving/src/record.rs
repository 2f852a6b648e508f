//! Reading the stored record back: a batch's tree from its stored entries, and hashes as
//! the API takes them (hex).

use canopy_chain::{AnchorBatch, AnchorEntry, Hash};

use crate::ServingError;
use crate::store::CheckpointRow;

/// Rebuilds a stored batch's tree from its entries.
pub fn batch_tree(entries: &[CheckpointRow]) -> Result<AnchorBatch, ServingError> {
    let entries = entries
        .iter()
        .map(|row| {
            Ok(AnchorEntry {
                decision_id: row.decision_id.0.to_be_bytes(),
                tree_size: row.tree_size as u64,
                root: parse_hash(&row.root)?,
            })
        })
        .collect::<Result<Vec<_>, ServingError>>()?;
    AnchorBatch::new(entries).map_err(|e| ServingError::Internal(e.to_string()))
}

pub fn parse_hash(text: &str) -> Result<Hash, ServingError> {
    let bytes = hex::decode(text)
        .map_err(|_| ServingError::BadRequest(format!("{text:?} is not a hex hash")))?;
    bytes
        .try_into()
        .map_err(|_| ServingError::BadRequest(format!("{text:?} is not a 32-byte hash")))
}
