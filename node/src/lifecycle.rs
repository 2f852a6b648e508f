//! A decision's life after it is created: closed by the clock, made final by a signed
//! result.
//!
//! ```text
//!  every round (each serve replica, or the single node):
//!    decisions whose closes_at passed, not closed ─▶ a close entry in the decision's
//!        partition (Gate::close_async) ─▶ record_close (the smallest offset wins)
//!    closes without a result, once the views include the close position and the record
//!    store's checkpoint holds the close leaf ─▶ recount the checkpoint's leaves, check
//!    it equals the view's tally ─▶ sign the FinalResult with the record key ─▶ store_result
//! ```
//!
//! Several replicas may run it at once: a second close entry changes nothing (the engine
//! counts up to the first), `record_close` keeps the smallest offset and `store_result`
//! the first result, and every replica signs the same statement (Ed25519 signatures are
//! deterministic and the statement is a function of the log).

use std::sync::Arc;
use std::time::Duration;

use canopy_chain::NoteSigner;
use canopy_chain::tiles::read_entries;
use canopy_dataflow::{
    ClosePoint, DecisionParams, FinalResult, Tally, ViewStore, includes_position, recount_leaves,
};
use canopy_ingest::{Gate, VoteLog};
use canopy_schemas::clock::now_micros;
use canopy_schemas::{CloseKind, Decision, DecisionClose, DecisionId};
use canopy_serving::store::{DecisionCloseRow, DecisionResultRow, MetadataStore};

use crate::NodeError;
use crate::tiles::RecordStore;

/// What the lifecycle loop works with.
pub struct Lifecycle {
    pub store: Arc<dyn MetadataStore>,
    pub gate: Arc<Gate<dyn VoteLog>>,
    pub views: Arc<dyn ViewStore>,
    pub signer: Arc<NoteSigner>,
    pub tiles: RecordStore,
    /// Checkpoint and statement origins start with this (the record's origin prefix).
    pub origin_prefix: String,
    pub interval: Duration,
}

/// Closes and finalizes decisions every `interval` until `stop` fires.
pub async fn lifecycle_loop(lifecycle: Lifecycle, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(error) = lifecycle.round().await {
            tracing::warn!(%error, "the decision lifecycle round failed; trying again");
        }
        tokio::select! {
            _ = tokio::time::sleep(lifecycle.interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

impl Lifecycle {
    /// One round: close what the clock closed, finalize what is closed.
    pub async fn round(&self) -> Result<(), NodeError> {
        let decisions = self.store.decisions().await?;
        let closed: std::collections::HashSet<DecisionId> = self
            .store
            .closes()
            .await?
            .into_iter()
            .map(|close| close.decision_id)
            .collect();
        let now = now_micros();
        for decision in &decisions {
            if closed.contains(&decision.id) {
                self.gate.note_closed(decision.id);
            } else if now >= decision.closes_at {
                self.close(decision.id, now).await?;
            }
        }
        for close in self.store.unfinalized_closes().await? {
            let Some(decision) = decisions.iter().find(|d| d.id == close.decision_id) else {
                continue;
            };
            if let Err(error) = self.finalize(decision, &close).await {
                tracing::warn!(decision = %decision.id, %error, "the final result is not ready");
            }
        }
        Ok(())
    }

    async fn close(&self, decision: DecisionId, now: i64) -> Result<(), NodeError> {
        let close = DecisionClose {
            decision,
            kind: CloseKind::Schedule,
            at: now,
            by: 0,
        };
        let position = self.gate.close_async(close).await?;
        self.store
            .record_close(&DecisionCloseRow {
                decision_id: decision,
                position,
                kind: CloseKind::Schedule,
                closed_at: now,
                closed_by: None,
            })
            .await?;
        tracing::info!(%decision, ?position, "closed at the end of its window");
        Ok(())
    }

    /// Signs and stores the result once both the views and the record store hold the
    /// close; an error means "not yet" (or a disagreement, which is logged and never
    /// signed).
    async fn finalize(
        &self,
        decision: &Decision,
        close: &DecisionCloseRow,
    ) -> Result<(), NodeError> {
        let not_yet =
            |what: &str| NodeError::Internal(format!("{what} does not include the close yet"));
        let view = self.views.get(decision.id)?;
        let frontier = self.views.frontier(close.position.partition);
        if !includes_position(frontier, view.as_ref(), close.position) {
            return Err(not_yet("the views"));
        }
        let params = DecisionParams::from(decision);
        let tally = view.map_or_else(|| Tally::from_sums(&params, []), |view| view.tally);
        let checkpoint = self
            .store
            .checkpoints(decision.id)
            .await?
            .into_iter()
            .filter(|row| row.log_offset as u64 > close.position.offset)
            .min_by_key(|row| row.tree_size)
            .ok_or_else(|| not_yet("the record's checkpoints"))?;
        let size = checkpoint.tree_size as u64;
        let tiles = self.tiles.clone();
        let id = decision.id;
        let entries = tokio::task::spawn_blocking(move || {
            read_entries(size, |bundle| tiles.read_tile_blocking(id, bundle))
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
        let recount = recount_leaves(id, &params, entries.iter().map(Vec::as_slice))?;
        if hex::encode(recount.root) != checkpoint.root || recount.close.is_none() {
            return Err(NodeError::Internal(format!(
                "decision {id}: the record store's leaves do not make checkpoint {size} ending in the close"
            )));
        }
        if recount.tally != tally {
            tracing::error!(decision = %id, "the views' final tally differs from a recount of the record's leaves; not signing");
            return Err(NodeError::Internal(format!(
                "decision {id}: the views' tally differs from the leaves' recount"
            )));
        }
        let result = FinalResult::new(
            decision,
            ClosePoint {
                partition: close.position.partition,
                offset: close.position.offset,
                kind: close.kind,
            },
            size,
            recount.root,
            tally,
        );
        let statement = result.sign(&self.origin_prefix, &self.signer);
        let stored = self
            .store
            .store_result(&DecisionResultRow {
                decision_id: id,
                statement,
                result: serde_json::to_string(&result)
                    .map_err(|e| NodeError::Internal(e.to_string()))?,
                tree_size: checkpoint.tree_size,
                root: checkpoint.root.clone(),
                position: close.position,
                finalized_at: now_micros(),
            })
            .await?;
        if stored {
            tracing::info!(decision = %id, outcome = ?result.outcome, "final result signed");
        }
        Ok(())
    }
}
