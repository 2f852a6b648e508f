//! Where batch roots are recorded: the [`AnchorTarget`] trait, and the embedded target, an
//! append-only journal of signed batch checkpoints. The EVM contract target is
//! `EvmTarget` in the `evm` module (feature `evm`).

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::ChainError;
use crate::anchor::AnchorBatch;

/// Where a batch landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorReceipt {
    pub chain_batch_id: Option<i64>,
    pub tx_hash: Option<String>,
    pub block_number: i64,
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
                let entry: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    ChainError::Anchoring(format!("a line of the anchor journal is bad: {e}"))
                })?;
                match (entry["batch_id"].as_i64(), entry["note"].as_str()) {
                    (Some(id), Some(note)) => Ok((id, note.to_string())),
                    _ => Err(ChainError::Anchoring(
                        "a line of the anchor journal lacks batch_id or note".into(),
                    )),
                }
            })
            .collect()
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
        _batch: &AnchorBatch,
        note: &str,
    ) -> Result<AnchorReceipt, ChainError> {
        let _one_writer = self.lock.lock().await;
        let path = self.path.clone();
        let line = serde_json::json!({ "batch_id": batch_id, "note": note }).to_string();
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
        })
    }
}

/// The origin of a batch's signed checkpoint: a batch is itself a small RFC 6962 tree.
pub fn batch_origin(prefix: &str, batch_id: i64) -> String {
    format!("{prefix}/anchor-batch/{batch_id}")
}
