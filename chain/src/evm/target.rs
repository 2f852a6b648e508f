//! [`EvmTarget`]: batch roots recorded by the `GovernanceVotingVerifier` contract.

use std::time::Duration;

use async_trait::async_trait;

use super::{EvmAnchor, EvmAnchorConfig};
use crate::ChainError;
use crate::anchor::AnchorBatch;
use crate::target::{AnchorReceipt, AnchorTarget};

/// How long one anchoring attempt may take, confirmations included, before it counts as
/// failed and is retried (a retry after a timeout may anchor the same root twice: harmless).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The EVM anchor target: each batch is one `recordBatch` transaction, final once it has
/// the configured confirmations. Failures keep the client's `evm_*` codes.
#[derive(Debug, Clone)]
pub struct EvmTarget {
    anchor: EvmAnchor,
}

impl EvmTarget {
    /// Connects the client ([`EvmAnchor::connect`]: key parsed, node answering, contract code
    /// at the address).
    pub async fn connect(config: EvmAnchorConfig) -> Result<Self, ChainError> {
        Ok(Self::new(EvmAnchor::connect(config).await?))
    }

    /// A target over a connected client.
    pub fn new(anchor: EvmAnchor) -> Self {
        Self { anchor }
    }

    /// The client underneath.
    pub fn client(&self) -> &EvmAnchor {
        &self.anchor
    }
}

#[async_trait]
impl AnchorTarget for EvmTarget {
    fn name(&self) -> String {
        format!("evm:0x{}", hex::encode(self.anchor.contract_address()))
    }

    async fn anchor(
        &self,
        _batch_id: i64,
        batch: &AnchorBatch,
        _note: &str,
    ) -> Result<AnchorReceipt, ChainError> {
        let decisions: Vec<[u8; 16]> = batch.entries().iter().map(|e| e.decision_id).collect();
        let tx = tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            self.anchor.record_batch(batch.root(), &decisions),
        )
        .await
        .map_err(|_| {
            ChainError::Anchoring(format!(
                "the anchoring transaction took longer than {} s",
                ATTEMPT_TIMEOUT.as_secs()
            ))
        })??;
        Ok(AnchorReceipt {
            chain_batch_id: Some(tx.batch_id as i64),
            tx_hash: Some(format!("0x{}", hex::encode(tx.tx_hash))),
            block_number: tx.block_number as i64,
            gas_used: Some(tx.gas_used),
        })
    }
}
