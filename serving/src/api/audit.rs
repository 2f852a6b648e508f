//! The audit trail: every sign-in, refusal and admin action, hash-chained.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

use super::extract::{Caller, ErrorBody};
use crate::ServingError;
use crate::auth::Action;
use crate::state::SharedState;
use crate::store::verify_audit_chain_after;

/// The most entries one page of the trail holds.
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

#[utoipa::path(get, path = "/api/v1/audit/trail", tag = "audit", params(AuditPageQuery), security(("bearer" = [])), responses((status = 200, description = "a page of entries, oldest first, whether its hash chain is intact back to the entry before it, and `next_after` while more follow"), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
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
    let chain = verify_audit_chain_after(before.as_ref(), &entries);
    let next_after = more.then(|| entries.last().map(|e| e.seq)).flatten();
    Ok(Json(json!({
        "chain_intact": chain.is_ok(),
        "chain_error": chain.err(),
        "entries": entries,
        "next_after": next_after,
    })))
}
