//! The auditor API: checkpoints, inclusion and consistency proofs, anchors, the record's
//! C2SP tlog tiles; and the GDPR erasure of a voter. Reading the record is public: anyone
//! may check it.
//!
//! The record is read through `RecordReader` (the engine's trees, or a replica's tiles from
//! the record store), whose reads may wait on the store: they run off the async threads.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canopy_chain::{Hash, ProofBundle, TileRef};
use canopy_dataflow::{RecordReader, RecordTiles};
use canopy_schemas::{DecisionId, VoterId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::extract::{ApiJson, Caller, ErrorBody};
use crate::ServingError;
use crate::auth::Action;
use crate::state::SharedState;

use crate::record::{journal_note, parse_hash, stored_batch_tree};
use crate::store::CheckpointRow;

#[utoipa::path(get, path = "/api/v1/audit/key", tag = "record", responses((status = 200, description = "the verifier key every checkpoint is signed with")))]
pub(crate) async fn record_key(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(json!({ "key": state.record_key, "origin_prefix": state.record_origin }))
}

#[utoipa::path(get, path = "/api/v1/audit/decisions/{id}/checkpoints", tag = "record", params(("id" = uuid::Uuid, Path, description = "decision id")), responses((status = 200, description = "the decision's signed checkpoints, oldest first, with the log position each covers and its anchor batch")))]
pub(crate) async fn checkpoints(
    State(state): State<SharedState>,
    Path(id): Path<Uuid>,
) -> Result<Json<serde_json::Value>, ServingError> {
    let decision = DecisionId::from(id);
    let rows = state.store.checkpoints(decision).await?;
    Ok(Json(json!({
        "decision_id": decision,
        "origin": format!("{}/decision/{}", state.record_origin, decision),
        "checkpoints": rows,
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ProofQuery {
    /// The leaf hash from the cast-vote receipt (hex).
    leaf: String,
    /// The checkpoint size to prove against; by default the latest anchored checkpoint
    /// that covers the leaf, or else the latest that does.
    #[serde(default)]
    size: Option<u64>,
}

/// A vote's inclusion proof with everything needed to check it offline.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ProofResponse {
    #[schema(value_type = uuid::Uuid)]
    decision_id: DecisionId,
    leaf_hash: String,
    index: u64,
    tree_size: u64,
    /// The audit path, leaf to root (hex).
    proof: Vec<String>,
    /// The signed checkpoint the path leads to.
    checkpoint: String,
    /// The same, as a C2SP tlog-proof bundle (extra = the decision id's 16 bytes).
    bundle: String,
    /// The record's verifier key. Check it against one obtained independently.
    key: String,
    /// Where the checkpoint was anchored, once it is.
    #[schema(value_type = Option<Object>)]
    anchor: Option<AnchorInfo>,
}

/// A checkpoint's place in an anchor batch, and where the batch was recorded.
#[derive(Serialize, Deserialize, Clone, Debug, utoipa::ToSchema)]
pub struct AnchorInfo {
    pub batch_id: i64,
    /// `journal` or `evm:<chain id>:<contract>`.
    pub target: String,
    pub batch_root: String,
    pub entry_index: u64,
    pub entry_count: u64,
    /// The path from the checkpoint's entry to the batch root (hex).
    pub path: Vec<String>,
    /// The contract's batch id (EVM).
    pub chain_batch_id: Option<i64>,
    pub tx_hash: Option<String>,
    /// The block (EVM) or line (journal) the batch was recorded at.
    pub block_number: Option<i64>,
    /// The batch as a signed checkpoint (origin `<prefix>/anchor-batch/<id>`); for the
    /// journal, exactly the line it wrote.
    pub batch_note: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit/decisions/{id}/proof", tag = "record", params(("id" = uuid::Uuid, Path, description = "decision id"), ProofQuery), responses((status = 200, body = ProofResponse), (status = 404, body = ErrorBody, description = "leaf_not_found"), (status = 409, body = ErrorBody, description = "not_checkpointed: retry once a checkpoint covers the vote")))]
pub(crate) async fn inclusion_proof(
    State(state): State<SharedState>,
    Path(id): Path<Uuid>,
    Query(query): Query<ProofQuery>,
) -> Result<Json<ProofResponse>, ServingError> {
    let decision = DecisionId::from(id);
    let leaf = parse_hash(&query.leaf)?;
    let index = read_record(&state, move |record| record.index_of(decision, &leaf))
        .await?
        .ok_or(ServingError::NotFound {
            what: "a vote with this leaf hash in the decision's record",
        })?;
    let checkpoints = state.store.checkpoints(decision).await?;
    let covering: Vec<&CheckpointRow> = checkpoints
        .iter()
        .filter(|c| c.tree_size as u64 > index)
        .collect();
    let chosen = match query.size {
        Some(size) => covering
            .iter()
            .find(|c| c.tree_size as u64 == size)
            .copied()
            .ok_or(ServingError::NotFound {
                what: "a checkpoint of that size covering the vote",
            })?,
        None => covering
            .iter()
            .rev()
            .find(|c| c.batch_id.is_some())
            .or(covering.last())
            .copied()
            .ok_or_else(|| ServingError::NotYet {
                code: "not_checkpointed",
                message: format!(
                    "vote {index} of the decision is not covered by a checkpoint yet; retry in a second"
                ),
            })?,
    };
    let size = chosen.tree_size as u64;
    let proof = read_record(&state, move |record| {
        record.inclusion_proof(decision, index, size)
    })
    .await??;
    let anchor = match chosen.batch_id {
        Some(_) => anchor_info(&state, chosen).await?,
        None => None,
    };
    let bundle = ProofBundle {
        extra: Some(decision.0.to_be_bytes().to_vec()),
        index,
        proof: proof.clone(),
        checkpoint: chosen.note.clone(),
    };
    Ok(Json(ProofResponse {
        decision_id: decision,
        leaf_hash: hex::encode(leaf),
        index,
        tree_size: size,
        proof: proof.iter().map(hex::encode).collect(),
        checkpoint: chosen.note.clone(),
        bundle: bundle.encode(),
        key: state.record_key.clone(),
        anchor,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[utoipa::path(get, path = "/api/v1/audit/decisions/{id}/consistency", tag = "record", params(("id" = uuid::Uuid, Path, description = "decision id"), ConsistencyQuery), responses((status = 200, description = "the RFC 9162 consistency proof between two tree sizes, with both roots"), (status = 422, body = ErrorBody, description = "sizes_out_of_order, size_beyond_log")))]
pub(crate) async fn consistency_proof(
    State(state): State<SharedState>,
    Path(id): Path<Uuid>,
    Query(query): Query<ConsistencyQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    let decision = DecisionId::from(id);
    let latest = state
        .store
        .checkpoints(decision)
        .await?
        .last()
        .map_or(0, |c| c.tree_size as u64);
    if query.to > latest {
        return Err(canopy_chain::ChainError::SizeBeyondLog {
            size: query.to,
            log: latest,
        }
        .into());
    }
    let (from, to) = (query.from, query.to);
    let (proof, from_root, to_root) = read_record(&state, move |record| {
        Ok::<_, canopy_chain::ChainError>((
            record.consistency_proof(decision, from, to)?,
            record.root_at(decision, from)?,
            record.root_at(decision, to)?,
        ))
    })
    .await??;
    Ok(Json(json!({
        "decision_id": decision,
        "from": query.from,
        "to": query.to,
        "from_root": hex::encode(from_root),
        "to_root": hex::encode(to_root),
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    })))
}

/// Runs a read of the record off the async threads (a replica's reads wait on the store).
async fn read_record<T: Send + 'static>(
    state: &SharedState,
    read: impl FnOnce(&dyn RecordReader) -> T + Send + 'static,
) -> Result<T, ServingError> {
    let record = state.record.clone().ok_or(ServingError::RecordNotHere)?;
    tokio::task::spawn_blocking(move || read(record.as_ref()))
        .await
        .map_err(|e| ServingError::Internal(e.to_string()))
}

/// The same for the record store's raw tiles.
async fn read_tiles<T: Send + 'static>(
    state: &SharedState,
    read: impl FnOnce(&dyn RecordTiles) -> T + Send + 'static,
) -> Result<T, ServingError> {
    let tiles: Arc<dyn RecordTiles> = state
        .record_tiles
        .clone()
        .ok_or(ServingError::RecordNotHere)?;
    tokio::task::spawn_blocking(move || read(tiles.as_ref()))
        .await
        .map_err(|e| ServingError::Internal(e.to_string()))
}

fn with_headers(body: Vec<u8>, content_type: &'static str, cache: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[utoipa::path(get, path = "/api/v1/audit/decisions/{id}/tlog/checkpoint", tag = "record", params(("id" = uuid::Uuid, Path, description = "decision id")), responses((status = 200, content_type = "text/plain", description = "the decision's latest signed checkpoint in the record store (C2SP tlog-checkpoint; the log's tiles are under tlog/tile/)"), (status = 404, body = ErrorBody, description = "no checkpoint yet"), (status = 503, body = ErrorBody, description = "the record store is unreachable")))]
pub(crate) async fn tlog_checkpoint(
    State(state): State<SharedState>,
    Path(id): Path<Uuid>,
) -> Result<Response, ServingError> {
    let decision = DecisionId::from(id);
    let note = read_tiles(&state, move |tiles| tiles.checkpoint(decision))
        .await??
        .ok_or(ServingError::NotFound {
            what: "a checkpoint of the decision in the record store",
        })?;
    // Clients poll it; a stale copy for a second is harmless, a day is not.
    Ok(with_headers(
        note.into_bytes(),
        "text/plain; charset=utf-8",
        "public, max-age=1",
    ))
}

#[utoipa::path(get, path = "/api/v1/audit/decisions/{id}/result", tag = "record", params(("id" = uuid::Uuid, Path, description = "decision id")), responses((status = 200, content_type = "text/plain", description = "the decision's final result: a C2SP signed note by the record key (origin line, then the result as JSON), for `canopy verify --tally`; it never changes"), (status = 404, body = ErrorBody, description = "not_found: the decision is not final (yet)")))]
pub(crate) async fn final_result(
    State(state): State<SharedState>,
    Path(id): Path<Uuid>,
) -> Result<Response, ServingError> {
    let result = state
        .store
        .decision_result(DecisionId::from(id))
        .await?
        .ok_or(ServingError::NotFound {
            what: "a final result of the decision",
        })?;
    Ok(with_headers(
        result.statement.into_bytes(),
        "text/plain; charset=utf-8",
        "public, max-age=31536000, immutable",
    ))
}

#[utoipa::path(get, path = "/api/v1/audit/decisions/{id}/tlog/tile/{*path}", tag = "record", params(("id" = uuid::Uuid, Path, description = "decision id"), ("path" = String, Path, description = "the rest of a C2SP tlog-tiles path: `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, N in 3-digit groups (x001/x234/067)")), responses((status = 200, content_type = "application/octet-stream", description = "the hash tile (32-byte hashes) or entry bundle (u16 length-prefixed leaf encodings); full tiles never change"), (status = 400, body = ErrorBody, description = "bad_tile_path"), (status = 404, body = ErrorBody, description = "no such tile (yet)"), (status = 503, body = ErrorBody, description = "the record store is unreachable")))]
pub(crate) async fn tlog_tile(
    State(state): State<SharedState>,
    Path((id, path)): Path<(Uuid, String)>,
) -> Result<Response, ServingError> {
    let decision = DecisionId::from(id);
    let tile = TileRef::parse(&format!("tile/{path}"))?;
    let bytes = read_tiles(&state, move |tiles| tiles.tile(decision, tile))
        .await??
        .ok_or(ServingError::NotFound { what: "tile" })?;
    // Every tile is a function of the log's first leaves; a full one is also never
    // replaced by another path, so it may be kept forever.
    let cache = if tile.is_full() {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=60"
    };
    Ok(with_headers(bytes, "application/octet-stream", cache))
}

#[utoipa::path(get, path = "/api/v1/audit/decisions/{id}/checkpoints/{size}/anchor", tag = "record", params(("id" = uuid::Uuid, Path, description = "decision id"), ("size" = u64, Path, description = "checkpoint tree size")), responses((status = 200, body = AnchorInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not_anchored: retry later")))]
pub(crate) async fn checkpoint_anchor(
    State(state): State<SharedState>,
    Path((id, size)): Path<(Uuid, u64)>,
) -> Result<Json<AnchorInfo>, ServingError> {
    let decision = DecisionId::from(id);
    let checkpoints = state.store.checkpoints(decision).await?;
    let checkpoint = checkpoints
        .iter()
        .find(|c| c.tree_size as u64 == size)
        .ok_or(ServingError::NotFound { what: "checkpoint" })?;
    anchor_info(&state, checkpoint)
        .await?
        .map(Json)
        .ok_or_else(|| ServingError::NotYet {
            code: "not_anchored",
            message: format!("the checkpoint at size {size} is not anchored yet"),
        })
}

/// The anchor of a checkpoint, if its batch is confirmed.
async fn anchor_info(
    state: &SharedState,
    checkpoint: &CheckpointRow,
) -> Result<Option<AnchorInfo>, ServingError> {
    let (Some(batch_id), Some(entry_index)) = (checkpoint.batch_id, checkpoint.entry_index) else {
        return Ok(None);
    };
    let Some(batch) = state.store.anchor_batch(batch_id).await? else {
        return Ok(None);
    };
    if batch.confirmed_at.is_none() {
        return Ok(None);
    }
    let tree = stored_batch_tree(state.store.as_ref(), batch_id).await?;
    let path: Vec<Hash> = tree.path(entry_index as u64)?;
    let batch_note = journal_note(&state.data_dir, &batch).await?;
    Ok(Some(AnchorInfo {
        batch_id,
        target: batch.target,
        batch_root: batch.root,
        entry_index: entry_index as u64,
        entry_count: batch.entry_count as u64,
        path: path.iter().map(hex::encode).collect(),
        chain_batch_id: batch.chain_batch_id,
        tx_hash: batch.tx_hash,
        block_number: batch.block_number,
        batch_note,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EraseBody {
    voter_id: Uuid,
}

#[utoipa::path(post, path = "/api/v1/admin/erase-voter", tag = "record", request_body = EraseBody, security(("bearer" = [])), responses((status = 200, description = "the account, its key, salt and pseudonym are gone: no stored byte links the person to a ballot or an audit entry; every proof still verifies"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the account created decisions or verified others")))]
pub(crate) async fn erase_voter(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<EraseBody>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::EraseVoter).await?;
    let voter = VoterId::from(body.voter_id);
    let erased = state
        .store
        .erase_voter(voter.as_uuid(), canopy_schemas::clock::now_micros())
        .await?;
    state.salts.forget_all();
    state.recent_casts.forget_all();
    state.confirmations.forget_all().await;
    if let Some(replicas) = state.replicas.clone() {
        // The other replicas drop their cached salts at their next heartbeat.
        let told = tokio::task::spawn_blocking(move || replicas.voter_erased()).await;
        if !matches!(told, Ok(Ok(()))) {
            tracing::warn!(
                "could not tell the other replicas of an erasure; they drop cached salts while Redis is unreachable"
            );
        }
    }
    let Some(pseudonym) = erased else {
        return Err(ServingError::NotFound {
            what: "an account to erase",
        });
    };
    // The trail names the erased person by the pseudonym whose mapping was just deleted.
    state
        .audit_as_user(caller.0.sub, "erase_voter", json!({ "voter": pseudonym }))
        .await;
    Ok(Json(json!({ "voter_id": voter, "erased": true })))
}
