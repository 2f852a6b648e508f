//! The node's side of the vote record: the record key, the checkpoint store writer, and
//! the anchoring loop that sends batches to an [`AnchorTarget`] (the local anchor journal,
//! or an EVM contract).
//!
//! ```text
//!  dataflow ─cut checkpoint + tiles─▶ CheckpointWriter ─▶ tiles, bundles (record store)
//!                                    ─▶ checkpoints table (SQL) ─▶ `checkpoint` (record store)
//!                                                     │ every anchor interval
//!                                                     ▼
//!   AnchorLoop: unanchored checkpoints (+ the audit trail's head, if it grew) ─▶ batch
//!        (root over entries) ─▶ fixed in SQL first
//!        ─▶ AnchorTarget::anchor (journal line fsync'd | EVM tx + N confirmations),
//!           retried with exponential backoff ─▶ batch confirmed (tx hash, block) in SQL
//! ```
//!
//! The write order makes every reader safe: a checkpoint row or `checkpoint` object exists
//! only once its tiles do. A failed write is retried with backoff (logged), never dropped:
//! later cuts wait behind it, in order.
//!
//! A batch is written to SQL before it is sent, so a crash in between re-sends the same
//! batch on restart; a duplicate on chain is harmless (the same root twice).
//!
//! The first batch of a round also anchors the audit trail's head (seq, chain hash) when the
//! trail grew since the last anchored head, as its last entry (`canopy_chain::AUDIT_TRAIL_ID`):
//! a trail that grew alone makes a batch of its own, so a rewrite or a cut tail of the audit
//! trail shows against the anchor within one anchoring interval.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use canopy_chain::{
    AnchorBatch, AnchorJournal, AnchorTarget, Checkpoint, NoteSigner, TileKind, TileWrite,
    batch_origin,
};
use canopy_dataflow::{CheckpointSink, CutCheckpoint, RecordConfig, StoredCheckpoint, VoteRecord};
use canopy_schemas::DecisionId;
use canopy_schemas::clock::now_micros;
use canopy_serving::record::{batch_tree, parse_hash, stored_batch_tree};
use canopy_serving::store::{AnchorBatchRow, AuditAnchorRow, CheckpointRow, MetadataStore};

use crate::NodeError;
use crate::keys::load_or_generate_key;
use crate::tiles::RecordStore;

/// What a process that keeps the vote record needs to know of it: the same for a node and
/// a cluster worker.
#[derive(Clone)]
pub struct RecordSettings {
    /// Checkpoint origins start with this (`<origin>/decision/<uuid>`); also the name of the
    /// record key.
    pub origin: String,
    pub record: RecordConfig,
    pub anchor: AnchorConfig,
    /// Where batch roots go; the local anchor journal (`anchors/journal.jsonl`) if absent.
    pub anchor_target: Option<Arc<dyn AnchorTarget>>,
    /// The record store (C2SP tlog tiles): a folder or `s3://bucket/prefix`;
    /// `<data_dir>/record-tiles` if absent. Every process of a cluster must name the same.
    pub tile_store: Option<String>,
}

impl Default for RecordSettings {
    fn default() -> Self {
        Self {
            origin: "canopy.local".to_string(),
            record: RecordConfig::default(),
            anchor: AnchorConfig::default(),
            anchor_target: None,
            tile_store: None,
        }
    }
}

/// Loads the node's Ed25519 record key seed from `path`, generating it on first start.
pub fn load_or_generate_record_key(path: &Path, name: &str) -> Result<NoteSigner, NodeError> {
    let seed = load_or_generate_key(path)?;
    NoteSigner::from_seed(name, &seed).map_err(|e| NodeError::Internal(e.to_string()))
}

/// Loads (or makes, on first start) the record key under `data_dir/keys`.
pub(crate) async fn record_signer(
    data_dir: &Path,
    origin: &str,
) -> Result<Arc<NoteSigner>, NodeError> {
    let path = data_dir.join("keys").join("record-ed25519.seed");
    let origin = origin.to_string();
    let signer = tokio::task::spawn_blocking(move || load_or_generate_record_key(&path, &origin))
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
    Ok(Arc::new(signer))
}

/// The record store the settings name (`<data_dir>/record-tiles` by default).
pub(crate) fn open_tile_store(
    settings: &RecordSettings,
    data_dir: &Path,
) -> Result<RecordStore, NodeError> {
    let location = match &settings.tile_store {
        Some(location) => location.clone(),
        None => data_dir.join("record-tiles").display().to_string(),
    };
    Ok(RecordStore::open(&location)?)
}

/// The vote record an engine grows: checkpoints go to the store (their tiles to the record
/// store first), and the latest stored ones are what the replayed or restored trees must
/// reproduce.
pub(crate) async fn open_record(
    store: &Arc<dyn MetadataStore>,
    tiles: &RecordStore,
    signer: &NoteSigner,
    settings: &RecordSettings,
    partitions: u32,
) -> Result<Arc<VoteRecord>, NodeError> {
    let record = Arc::new(VoteRecord::new(
        signer.clone(),
        RecordConfig {
            origin_prefix: settings.origin.clone(),
            ..settings.record.clone()
        },
        partitions,
        Arc::new(CheckpointWriter::start(Arc::clone(store), tiles.clone())),
    ));
    for stored in store.latest_checkpoints().await? {
        // A record store new to this record (configured after checkpoints were cut) has
        // no `checkpoint` object: the replay then writes every tile up to the stored size.
        let tiles_stored = tiles.read_checkpoint(stored.decision_id).await?.is_some();
        record.resume_from(StoredCheckpoint {
            decision: stored.decision_id,
            size: stored.tree_size as u64,
            root: parse_hash(&stored.root)?,
            tiles_stored,
        });
    }
    Ok(record)
}

/// The dataflow's checkpoint sink: hands each cut checkpoint to a task that stores it, off
/// the dataflow's threads.
pub struct CheckpointWriter {
    sender: tokio::sync::mpsc::UnboundedSender<CutCheckpoint>,
}

/// Retries `attempt` with backoff (0.1 s doubling to 10 s) until it succeeds, logging each
/// failure with `what`.
async fn until_done<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    cut: &CutCheckpoint,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(error) => {
                tracing::warn!(%error, decision = %cut.decision, size = cut.size, retry_in_ms = backoff.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The most cuts one round of the writer takes from its queue.
const MAX_CUTS_PER_ROUND: usize = 256;

impl CheckpointWriter {
    /// Starts the storing task on the current runtime: per cut, its tiles into the record
    /// store, then the row into the metadata store, then the record store's `checkpoint`.
    /// Cuts that queued while earlier ones were written are written as one round (see
    /// [`write_round`]).
    pub fn start(store: Arc<dyn MetadataStore>, tiles: RecordStore) -> Self {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<CutCheckpoint>();
        tokio::spawn(async move {
            let mut round = Vec::new();
            while receiver.recv_many(&mut round, MAX_CUTS_PER_ROUND).await > 0 {
                write_round(store.as_ref(), &tiles, std::mem::take(&mut round)).await;
            }
        });
        Self { sender }
    }
}

/// Writes queued cuts keeping the order's guarantees: every cut's tiles before its row, every
/// row before the decision's `checkpoint` object. Per decision, the tiles of all its cuts
/// are written together, less the partial tiles a full tile of the same round covers (a
/// reader falls back to the full tile's prefix, as C2SP tlog-tiles allows), and only the
/// newest cut becomes the `checkpoint` object. Under load, when cuts come faster than one
/// is written, this is what keeps the writer from falling behind.
async fn write_round(store: &dyn MetadataStore, tiles: &RecordStore, mut cuts: Vec<CutCheckpoint>) {
    let mut decisions: Vec<(DecisionId, Vec<TileWrite>, usize)> = Vec::new();
    for index in 0..cuts.len() {
        let writes = std::mem::take(&mut cuts[index].tiles);
        let (decision, size) = (cuts[index].decision, cuts[index].size);
        match decisions
            .iter_mut()
            .find(|(known, _, _)| *known == decision)
        {
            Some((_, pending, newest)) => {
                pending.extend(writes);
                if size >= cuts[*newest].size {
                    *newest = index;
                }
            }
            None => decisions.push((decision, writes, index)),
        }
    }
    for (_, writes, newest) in &mut decisions {
        let full: HashSet<(TileKind, u64)> = writes
            .iter()
            .filter(|write| write.tile.is_full())
            .map(|write| (write.tile.kind, write.tile.index))
            .collect();
        writes.retain(|write| {
            write.tile.is_full() || !full.contains(&(write.tile.kind, write.tile.index))
        });
        if !writes.is_empty() {
            let cut = &cuts[*newest];
            until_done(
                "writing a checkpoint's tiles to the record store",
                cut,
                || tiles.write_tiles(cut.decision, writes.clone()),
            )
            .await;
        }
    }
    for cut in cuts.iter().filter(|cut| !cut.already_stored) {
        store_row(store, cut).await;
    }
    for (_, _, newest) in &decisions {
        let cut = &cuts[*newest];
        until_done("writing the checkpoint to the record store", cut, || {
            tiles.write_checkpoint(cut.decision, cut.size, cut.note.clone())
        })
        .await;
    }
}

/// The checkpoint's row, retried until stored.
async fn store_row(store: &dyn MetadataStore, cut: &CutCheckpoint) {
    let row = CheckpointRow {
        decision_id: cut.decision,
        tree_size: cut.size as i64,
        root: hex::encode(cut.root),
        note: cut.note.clone(),
        log_partition: i64::from(cut.as_of.partition),
        log_offset: cut.as_of.offset as i64,
        cut_at: now_micros(),
        batch_id: None,
        entry_index: None,
    };
    until_done("storing a checkpoint", cut, || {
        store.insert_checkpoint(&row)
    })
    .await;
    metrics::counter!("canopy_record_checkpoints_total").increment(1);
}

impl CheckpointSink for CheckpointWriter {
    fn store(&self, checkpoint: CutCheckpoint) {
        // Only fails once the runtime is shutting down; the next start re-cuts it.
        let _ = self.sender.send(checkpoint);
    }
}

#[derive(Clone, Debug)]
pub struct AnchorConfig {
    /// How often the loop looks for unanchored checkpoints.
    pub interval: Duration,
    /// The most checkpoints in one batch.
    pub max_batch: i64,
    pub first_retry: Duration,
    pub max_retry: Duration,
}

impl Default for AnchorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            max_batch: 1_000,
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(60),
        }
    }
}

/// The anchoring loop's parts: where checkpoints come from and go, and how batches are
/// signed and retried.
pub struct Anchorer {
    pub store: Arc<dyn MetadataStore>,
    pub target: Arc<dyn AnchorTarget>,
    pub signer: Arc<NoteSigner>,
    pub origin_prefix: String,
    pub config: AnchorConfig,
}

/// Anchors every unanchored checkpoint, batch by batch, until `stop` fires.
pub async fn anchor_loop(anchorer: Anchorer, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(error) = anchorer.anchor_pending(&mut stop).await {
            tracing::warn!(%error, "anchoring stopped for this round");
        }
        tokio::select! {
            _ = tokio::time::sleep(anchorer.config.interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

impl Anchorer {
    /// The anchorer of a node's record: batch roots go to `target`, or to the local anchor
    /// journal under `data_dir` if there is none.
    pub(crate) fn new(
        store: &Arc<dyn MetadataStore>,
        signer: &Arc<NoteSigner>,
        settings: &RecordSettings,
        data_dir: &Path,
    ) -> Self {
        let target = match &settings.anchor_target {
            Some(target) => Arc::clone(target),
            None => Arc::new(AnchorJournal::new(
                data_dir.join("anchors").join("journal.jsonl"),
            )),
        };
        Self {
            store: Arc::clone(store),
            target,
            signer: Arc::clone(signer),
            origin_prefix: settings.origin.clone(),
            config: settings.anchor.clone(),
        }
    }

    /// One round: re-send batches a crash left unconfirmed, then batch what is new.
    async fn anchor_pending(
        &self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let pending_batches = self.store.pending_anchor_batches().await?;
        metrics::gauge!("canopy_anchor_pending_batches").set(pending_batches.len() as f64);
        for pending in pending_batches {
            let batch = stored_batch_tree(self.store.as_ref(), pending.batch_id).await?;
            self.send_batch(pending, &batch, stop).await?;
        }
        let mut audit_head = self.grown_audit_head().await?;
        loop {
            let entries = self
                .store
                .unanchored_checkpoints(self.config.max_batch)
                .await?;
            // Counted up to one batch: a backlog past that is an alert either way.
            metrics::gauge!("canopy_record_unanchored_checkpoints").set(entries.len() as f64);
            if entries.is_empty() && audit_head.is_none() {
                metrics::gauge!("canopy_record_unanchored_checkpoints").set(0.0);
                return Ok(());
            }
            let batch_id = self.store.next_anchor_batch_id().await?;
            // The audit head goes last, after the checkpoints.
            let audit_anchor = audit_head.take().map(|(seq, hash)| AuditAnchorRow {
                batch_id,
                entry_index: entries.len() as i64,
                seq,
                hash,
            });
            let batch = batch_tree(&entries, audit_anchor.as_ref())?;
            let row = AnchorBatchRow {
                batch_id,
                root: hex::encode(batch.root()),
                entry_count: batch.entries().len() as i64,
                target: self.target.name(),
                chain_batch_id: None,
                tx_hash: None,
                block_number: None,
                created_at: now_micros(),
                confirmed_at: None,
            };
            // Fixed in SQL before it is sent, so a crash in between re-sends the same batch.
            self.store
                .create_anchor_batch(&row, &entries, audit_anchor.as_ref())
                .await?;
            self.send_batch(row, &batch, stop).await?;
            if (entries.len() as i64) < self.config.max_batch {
                metrics::gauge!("canopy_record_unanchored_checkpoints").set(0.0);
                metrics::gauge!("canopy_anchor_pending_batches").set(0.0);
                return Ok(());
            }
        }
    }

    /// The audit trail's head (seq, chain hash), if the trail grew since the last anchored
    /// head. Anchoring writes no audit entry itself, so a quiet trail makes no batches.
    async fn grown_audit_head(&self) -> Result<Option<(i64, String)>, NodeError> {
        let Some(head) = self.store.audit_head().await? else {
            return Ok(None);
        };
        let anchored = self.store.latest_audit_anchor().await?;
        if anchored.is_some_and(|anchored| anchored.seq >= head.seq) {
            return Ok(None);
        }
        Ok(Some((head.seq, head.hash)))
    }

    async fn send_batch(
        &self,
        mut row: AnchorBatchRow,
        batch: &AnchorBatch,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let note = Checkpoint {
            origin: batch_origin(&self.origin_prefix, row.batch_id),
            size: batch.entries().len() as u64,
            root: batch.root(),
        }
        .sign(&self.signer);
        let mut backoff = self.config.first_retry;
        let receipt = loop {
            use tracing::Instrument;
            let span = tracing::info_span!(
                "chain.anchor",
                otel.kind = "client",
                batch = row.batch_id,
                target = %self.target.name(),
                otel.status_code = tracing::field::Empty,
            );
            let sent = self
                .target
                .anchor(row.batch_id, batch, &note)
                .instrument(span.clone())
                .await;
            if sent.is_err() {
                span.record("otel.status_code", "error");
            }
            match sent {
                Ok(receipt) => {
                    metrics::counter!("canopy_chain_transactions_total", "outcome" => "confirmed")
                        .increment(1);
                    if let Some(gas) = receipt.gas_used {
                        metrics::counter!("canopy_chain_gas_used_total").increment(gas);
                    }
                    break receipt;
                }
                Err(error) => {
                    metrics::counter!("canopy_chain_transactions_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(%error, batch = row.batch_id, retry_in_ms = backoff.as_millis() as u64, "anchoring a batch failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return Err(NodeError::Internal("shutting down".into())),
                    }
                    backoff = (backoff * 2).min(self.config.max_retry);
                }
            }
        };
        row.chain_batch_id = receipt.chain_batch_id;
        row.tx_hash = receipt.tx_hash;
        row.block_number = Some(receipt.block_number);
        row.confirmed_at = Some(now_micros());
        self.store.confirm_anchor_batch(&row).await?;
        tracing::info!(batch = row.batch_id, entries = row.entry_count, target = %row.target, "anchored");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiles::TileRecordReader;
    use canopy_chain::MerkleLog;
    use canopy_chain::tiles::{growth_bundles, growth_tiles};
    use canopy_dataflow::RecordReader;
    use canopy_serving::store::SqliteStore;

    /// Cuts that queued while the writer was busy are written as one round: each keeps its
    /// row, the newest is the checkpoint, and every cut's size still proves inclusion and
    /// consistency from the stored tiles, although the round dropped the partial tiles its
    /// full ones cover.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_of_queued_cuts_keeps_every_cut_provable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("canopy.db"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let tiles = RecordStore::open(dir.path().join("record").to_str().unwrap()).unwrap();
        let signer = NoteSigner::from_seed("canopy.test", &[5; 32]).unwrap();
        let (first, second) = (DecisionId(7), DecisionId(9));
        let entries: Vec<Vec<u8>> = (0..1_500u64).map(|n| n.to_be_bytes().repeat(10)).collect();
        let mut log = MerkleLog::new();
        for entry in &entries {
            log.append(entry);
        }
        let entry_refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        let cut = |decision: DecisionId, old: u64, size: u64| {
            let mut writes = growth_tiles(&log, old, size).unwrap();
            writes.extend(growth_bundles(old, size, 0, &entry_refs).unwrap());
            let root = log.root_at(size).unwrap();
            CutCheckpoint {
                decision,
                size,
                root,
                note: Checkpoint {
                    origin: format!("canopy.test/decision/{decision}"),
                    size,
                    root,
                }
                .sign(&signer),
                as_of: canopy_ingest::Position {
                    partition: 0,
                    offset: size,
                },
                tiles: writes,
                already_stored: false,
            }
        };
        // Sizes inside a tile, at a tile's end and past it; a second decision's cuts
        // between the first's.
        let sizes = [100, 250, 256, 300, 600, 700, 1_024, 1_100, 1_500];
        let mut cuts = Vec::new();
        let mut old = 0;
        for size in sizes {
            cuts.push(cut(first, old, size));
            old = size;
        }
        for (n, (old, size)) in [(0, 100), (100, 256), (256, 300)].into_iter().enumerate() {
            cuts.insert(2 * n + 1, cut(second, old, size));
        }
        write_round(&store, &tiles, cuts.clone()).await;

        for decision in [first, second] {
            let ours: Vec<&CutCheckpoint> =
                cuts.iter().filter(|c| c.decision == decision).collect();
            let rows = store.checkpoints(decision).await.unwrap();
            let mut stored: Vec<u64> = rows.iter().map(|row| row.tree_size as u64).collect();
            stored.sort_unstable();
            let expected: Vec<u64> = ours.iter().map(|c| c.size).collect();
            assert_eq!(stored, expected, "every cut keeps its row");
            let newest = ours.iter().max_by_key(|c| c.size).unwrap();
            assert_eq!(
                tiles.read_checkpoint(decision).await.unwrap().as_deref(),
                Some(newest.note.as_str())
            );
        }
        let reader = TileRecordReader::new(tiles, signer.verifier(), Default::default());
        tokio::task::spawn_blocking(move || {
            let mut previous = 0;
            for size in sizes {
                for index in [0, size / 2, size - 1] {
                    assert_eq!(
                        reader.inclusion_proof(first, index, size).unwrap(),
                        log.inclusion_proof(index, size).unwrap(),
                        "leaf {index} at size {size}"
                    );
                }
                if previous > 0 {
                    assert_eq!(
                        reader.consistency_proof(first, previous, size).unwrap(),
                        log.consistency_proof(previous, size).unwrap()
                    );
                }
                previous = size;
            }
        })
        .await
        .unwrap();
    }
}
