//! Where batch roots are recorded: the [`AnchorTarget`] trait, and the embedded target, an
//! append-only journal of signed batch checkpoints. The EVM contract target is
//! `EvmTarget` in the `evm` module (feature `evm`).
//!
//! A journal line is `{"batch_id", "note"}`, and, when the batch anchors the audit trail's
//! head, `"audit": {"seq", "hash", "entry_index", "path"}`: the head and its path to the
//! signed batch root, so an auditor holding the journal checks a trail export against it
//! without asking the node (`canopy verify --audit`).

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::ChainError;
use crate::anchor::{AnchorBatch, AnchorPath};
use crate::merkle::Hash;

/// Where a batch landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorReceipt {
    pub chain_batch_id: Option<i64>,
    pub tx_hash: Option<String>,
    pub block_number: i64,
    /// Gas used, for a target that charges it.
    pub gas_used: Option<u64>,
}

/// Somewhere batch roots are recorded.
#[async_trait]
pub trait AnchorTarget: Send + Sync {
    /// `journal` or `evm:<chain id>:<contract>`.
    fn name(&self) -> String;
    /// Records the batch and returns once it is final (synced, or confirmed on chain).
    async fn anchor(
        &self,
        batch_id: i64,
        batch: &AnchorBatch,
        note: &str,
    ) -> Result<AnchorReceipt, ChainError>;
}

/// An audit-trail head as a journal line anchors it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalAuditAnchor {
    pub batch_id: i64,
    /// The batch as a signed checkpoint (its size is the batch's entry count).
    pub note: String,
    pub seq: u64,
    pub hash: Hash,
    pub entry_index: u64,
    pub path: Vec<Hash>,
}

impl JournalAuditAnchor {
    /// The head's place in its batch; the entry count is the signed note's size.
    pub fn anchor_path(&self, entry_count: u64) -> AnchorPath {
        AnchorPath {
            entry_index: self.entry_index,
            entry_count,
            path: self.path.clone(),
        }
    }
}

/// The embedded anchor target: an append-only file of signed batch checkpoints, one JSON
/// line per batch, fsync'd before the batch counts as anchored.
pub struct AnchorJournal {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl AnchorJournal {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Every journal entry: (batch id, signed note), in order.
    pub fn entries(path: &Path) -> Result<Vec<(i64, String)>, ChainError> {
        Self::lines(path)?
            .iter()
            .map(
                |entry| match (entry["batch_id"].as_i64(), entry["note"].as_str()) {
                    (Some(id), Some(note)) => Ok((id, note.to_string())),
                    _ => Err(ChainError::Anchoring(
                        "a line of the anchor journal lacks batch_id or note".into(),
                    )),
                },
            )
            .collect()
    }

    /// Every audit-trail head the journal anchors, in order.
    pub fn audit_anchors(path: &Path) -> Result<Vec<JournalAuditAnchor>, ChainError> {
        let bad =
            || ChainError::Anchoring("a line of the anchor journal has a bad audit head".into());
        let hash = |value: &serde_json::Value| -> Result<Hash, ChainError> {
            value
                .as_str()
                .and_then(|text| hex::decode(text).ok())
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(bad)
        };
        let mut anchors = Vec::new();
        for line in Self::lines(path)? {
            let audit = &line["audit"];
            if audit.is_null() {
                continue;
            }
            let (Some(batch_id), Some(note)) = (line["batch_id"].as_i64(), line["note"].as_str())
            else {
                return Err(bad());
            };
            anchors.push(JournalAuditAnchor {
                batch_id,
                note: note.to_string(),
                seq: audit["seq"].as_u64().ok_or_else(bad)?,
                hash: hash(&audit["hash"])?,
                entry_index: audit["entry_index"].as_u64().ok_or_else(bad)?,
                path: audit["path"]
                    .as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(hash)
                    .collect::<Result<_, _>>()?,
            });
        }
        Ok(anchors)
    }

    fn lines(path: &Path) -> Result<Vec<serde_json::Value>, ChainError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ChainError::Anchoring(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| {
                    ChainError::Anchoring(format!("a line of the anchor journal is bad: {e}"))
                })
            })
            .collect()
    }

    /// The journal line of a batch: its id, its signed note, and its audit head if any.
    fn line(batch_id: i64, batch: &AnchorBatch, note: &str) -> Result<String, ChainError> {
        let mut line = serde_json::json!({ "batch_id": batch_id, "note": note });
        if let Some((index, head)) = batch.audit_head() {
            let path = batch.path(index)?;
            line["audit"] = serde_json::json!({
                "seq": head.tree_size,
                "hash": hex::encode(head.root),
                "entry_index": index,
                "path": path.iter().map(hex::encode).collect::<Vec<_>>(),
            });
        }
        Ok(line.to_string())
    }
}

#[async_trait]
impl AnchorTarget for AnchorJournal {
    fn name(&self) -> String {
        "journal".to_string()
    }

    async fn anchor(
        &self,
        batch_id: i64,
        batch: &AnchorBatch,
        note: &str,
    ) -> Result<AnchorReceipt, ChainError> {
        let _one_writer = self.lock.lock().await;
        let path = self.path.clone();
        let line = Self::line(batch_id, batch, note)?;
        tokio::task::spawn_blocking(move || -> Result<i64, ChainError> {
            let line_number = AnchorJournal::entries(&path)?.len() as i64;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| ChainError::Anchoring(e.to_string()))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| ChainError::Anchoring(format!("opening {}: {e}", path.display())))?;
            file.write_all(format!("{line}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| ChainError::Anchoring(format!("writing {}: {e}", path.display())))?;
            Ok(line_number)
        })
        .await
        .map_err(|e| ChainError::Anchoring(e.to_string()))?
        .map(|line| AnchorReceipt {
            chain_batch_id: None,
            tx_hash: None,
            block_number: line,
            gas_used: None,
        })
    }
}

/// The origin of a batch's signed checkpoint: a batch is itself a small RFC 6962 tree.
pub fn batch_origin(prefix: &str, batch_id: i64) -> String {
    format!("{prefix}/anchor-batch/{batch_id}")
}
