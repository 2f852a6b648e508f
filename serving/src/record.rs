//! Reading the stored record back: a batch's tree from its stored entries, and hashes as
//! the API takes them (hex).

use std::collections::HashMap;
use std::path::Path;

use canopy_chain::{AnchorBatch, AnchorEntry, AnchorJournal, Hash};

use crate::ServingError;
use crate::store::{AnchorBatchRow, AuditAnchorRow, CheckpointRow, MetadataStore};

/// Rebuilds a batch's tree from its checkpoints, in entry order, and the audit head it
/// anchors (at its own entry index).
pub fn batch_tree(
    entries: &[CheckpointRow],
    audit_head: Option<&AuditAnchorRow>,
) -> Result<AnchorBatch, ServingError> {
    let mut entries = entries
        .iter()
        .map(|row| {
            Ok(AnchorEntry {
                decision_id: row.decision_id.0.to_be_bytes(),
                tree_size: row.tree_size as u64,
                root: parse_hash(&row.root)?,
            })
        })
        .collect::<Result<Vec<_>, ServingError>>()?;
    if let Some(head) = audit_head {
        let index = usize::try_from(head.entry_index)
            .ok()
            .filter(|index| *index <= entries.len())
            .ok_or_else(|| {
                ServingError::Storage(format!(
                    "the audit head of batch {} is at entry {}, beyond its checkpoints",
                    head.batch_id, head.entry_index
                ))
            })?;
        entries.insert(
            index,
            AnchorEntry::audit_head(head.seq as u64, parse_hash(&head.hash)?),
        );
    }
    AnchorBatch::new(entries).map_err(|e| ServingError::Internal(e.to_string()))
}

/// A stored batch's tree: its checkpoints and its audit head, as the store holds them.
pub async fn stored_batch_tree(
    store: &dyn MetadataStore,
    batch_id: i64,
) -> Result<AnchorBatch, ServingError> {
    let entries = store.batch_entries(batch_id).await?;
    let audit_head = store.batch_audit_anchor(batch_id).await?;
    batch_tree(&entries, audit_head.as_ref())
}

/// The signed line the anchor journal under `data_dir` holds for `batch`, if the batch went
/// to the journal.
pub async fn journal_note(
    data_dir: &Path,
    batch: &AnchorBatchRow,
) -> Result<Option<String>, ServingError> {
    if batch.target != "journal" {
        return Ok(None);
    }
    Ok(journal_notes(data_dir).await?.remove(&batch.batch_id))
}

/// Every signed line of the anchor journal under `data_dir`, by batch id (the last line of
/// a batch sent twice).
pub async fn journal_notes(data_dir: &Path) -> Result<HashMap<i64, String>, ServingError> {
    let journal = data_dir.join("anchors").join("journal.jsonl");
    let entries = tokio::task::spawn_blocking(move || AnchorJournal::entries(&journal))
        .await
        .map_err(|e| ServingError::Internal(e.to_string()))?
        .map_err(|e| ServingError::Internal(e.to_string()))?;
    Ok(entries.into_iter().collect())
}

pub fn parse_hash(text: &str) -> Result<Hash, ServingError> {
    let bytes = hex::decode(text)
        .map_err(|_| ServingError::BadRequest(format!("{text:?} is not a hex hash")))?;
    bytes
        .try_into()
        .map_err(|_| ServingError::BadRequest(format!("{text:?} is not a 32-byte hash")))
}
