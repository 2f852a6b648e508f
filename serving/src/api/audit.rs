//! The audit trail: every sign-in, refusal and admin action, hash-chained, keyed (HMAC under
//! the audit key) and anchored with the vote record; and where its heads were anchored.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

use super::extract::{Caller, ErrorBody};
use crate::ServingError;
use crate::auth::Action;
use crate::record::{journal_notes, parse_hash, stored_batch_tree};
use crate::state::SharedState;
use crate::trail::{AnchoredHead, TrailRun, check_trail};

/// The most entries (or anchors) one page holds.
pub const MAX_AUDIT_PAGE: i64 = 1_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditPageQuery {
    /// The entries after this sequence number (0, the default: from the first).
    #[serde(default)]
    after: i64,
    /// At most this many entries (1 to 1000, the default).
    #[serde(default)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit/trail", tag = "audit", params(AuditPageQuery), security(("bearer" = [])), responses((status = 200, description = "a page of entries, oldest first, checked back to the entry before it: the hash chain, each entry's HMAC under the audit key, the latest anchored head (`latest_anchor`: seq, batch, whether its batch is confirmed at the target yet); `chain_intact`, the first bad entry (`first_bad`: seq, kind missing | altered | bad_hmac | hmac_missing | not_as_anchored), how many entries predate the keying (`unkeyed`), and `next_after` while more follow"), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn audit_trail(
    State(state): State<SharedState>,
    caller: Caller,
    Query(page): Query<AuditPageQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadAudit).await?;
    let limit = page.limit.unwrap_or(MAX_AUDIT_PAGE);
    if page.after < 0 || !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ServingError::BadRequest(format!(
            "after is 0 or more, limit 1 to {MAX_AUDIT_PAGE}"
        )));
    }
    // The entry before the page too, so the page's chain is checked from its link.
    let from = (page.after - 1).max(0);
    let mut entries = state.store.audit_page(from, limit + 2).await?;
    let before = match page.after {
        0 => None,
        after => match entries.first() {
            Some(first) if first.seq == after => Some(entries.remove(0)),
            _ => {
                return Err(ServingError::NotFound {
                    what: "audit entry",
                });
            }
        },
    };
    let more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    // The latest anchored head commits to every entry up to it: a page holding it shows a
    // rewrite anywhere before, the last page a tail cut off after it.
    let latest_anchor = state.store.latest_audit_anchor().await?;
    let latest_confirmed = match &latest_anchor {
        Some(anchor) => state
            .store
            .anchor_batch(anchor.batch_id)
            .await?
            .is_some_and(|batch| batch.confirmed_at.is_some()),
        None => false,
    };
    let anchored = match &latest_anchor {
        Some(anchor) => vec![AnchoredHead {
            seq: anchor.seq,
            hash: parse_hash(&anchor.hash)?,
            batch: format!("batch {}", anchor.batch_id),
        }],
        None => Vec::new(),
    };
    let run = TrailRun {
        before: before.as_ref(),
        entries: &entries,
        reaches_end: !more,
    };
    let check = check_trail(&run, state.store.audit_key(), &anchored);
    let next_after = more.then(|| entries.last().map(|e| e.seq)).flatten();
    Ok(Json(json!({
        "chain_intact": check.intact(),
        "chain_error": check.first_bad.as_ref().map(|fault| fault.message.clone()),
        "first_bad": check.first_bad,
        "hmac_checked": check.hmac_checked,
        "keyed_from": check.keyed_from,
        "unkeyed": check.unkeyed,
        "latest_anchor": latest_anchor.map(|a| json!({ "seq": a.seq, "batch_id": a.batch_id, "confirmed": latest_confirmed })),
        "entries": entries,
        "next_after": next_after,
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AnchorPageQuery {
    /// The anchors in batches after this batch id (-1, the default: from the first).
    #[serde(default = "before_every_batch")]
    after: i64,
    /// At most this many anchors (1 to 1000, the default).
    #[serde(default)]
    limit: Option<i64>,
}

fn before_every_batch() -> i64 {
    -1
}

#[utoipa::path(get, path = "/api/v1/audit/trail/anchors", tag = "audit", params(AnchorPageQuery), security(("bearer" = [])), responses((status = 200, description = "where the trail's heads were anchored, by batch: the head (seq, hash), its entry index and path to the batch root, the batch's target, root and receipt (for the journal its signed line); `next_after` while more follow"), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn audit_anchors(
    State(state): State<SharedState>,
    caller: Caller,
    Query(page): Query<AnchorPageQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadAudit).await?;
    let limit = page.limit.unwrap_or(MAX_AUDIT_PAGE);
    if page.after < -1 || !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ServingError::BadRequest(format!(
            "after is -1 or more, limit 1 to {MAX_AUDIT_PAGE}"
        )));
    }
    let heads = state.store.audit_anchors(page.after, limit).await?;
    let mut journal = journal_notes(&state.data_dir).await?;
    let mut anchors = Vec::with_capacity(heads.len());
    for head in &heads {
        let Some(batch) = state.store.anchor_batch(head.batch_id).await? else {
            continue;
        };
        let tree = stored_batch_tree(state.store.as_ref(), head.batch_id).await?;
        let path = tree.path(head.entry_index as u64)?;
        anchors.push(json!({
            "batch_id": head.batch_id,
            "seq": head.seq,
            "hash": head.hash,
            "entry_index": head.entry_index,
            "entry_count": batch.entry_count,
            "path": path.iter().map(hex::encode).collect::<Vec<_>>(),
            "batch_root": batch.root,
            "target": batch.target,
            "chain_batch_id": batch.chain_batch_id,
            "tx_hash": batch.tx_hash,
            "block_number": batch.block_number,
            "confirmed_at": batch.confirmed_at,
            "batch_note": (batch.target == "journal").then(|| journal.remove(&head.batch_id)).flatten(),
        }));
    }
    let next_after = (heads.len() as i64 == limit)
        .then(|| heads.last().map(|head| head.batch_id))
        .flatten();
    Ok(Json(
        json!({ "anchors": anchors, "next_after": next_after }),
    ))
}
