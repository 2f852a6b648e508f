//! The audit trail: every sign-in, refusal and admin action, hash-chained.

use axum::Json;
use axum::extract::State;
use serde_json::json;

use super::extract::{Caller, ErrorBody};
use crate::ServingError;
use crate::auth::Action;
use crate::state::SharedState;
use crate::store::verify_audit_chain;

#[utoipa::path(get, path = "/api/v1/audit/trail", tag = "audit", security(("bearer" = [])), responses((status = 200, description = "every entry, and whether the hash chain is intact"), (status = 403, body = ErrorBody)))]
pub(crate) async fn audit_trail(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadAudit).await?;
    let entries = state.store.audit_trail().await?;
    let chain = verify_audit_chain(&entries);
    Ok(Json(
        json!({ "chain_intact": chain.is_ok(), "chain_error": chain.err(), "entries": entries }),
    ))
}
