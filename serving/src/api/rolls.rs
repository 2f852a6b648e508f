//! Voter rolls: an operator imports a census as CSV and gets one invitation code per entry;
//! a voter claims an entry with its code; an operator can take a claim back by issuing the
//! entry a new code. A decision whose electorate names the roll counts only its entries.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use canopy_schemas::clock::now_micros;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::extract::{ApiJson, Caller, ErrorBody};
use crate::ServingError;
use crate::auth::Action;
use crate::state::SharedState;
use crate::store::{ClaimOutcome, NewRollEntry, Reissue};

/// The largest roll one import takes.
pub const MAX_ROLL_BYTES: usize = 16 << 20;
/// The most entries one roll holds.
pub const MAX_ROLL_ENTRIES: usize = 200_000;

/// Crockford's base32: no I, L, O or U, so a code read aloud or retyped survives.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 20 symbols of 5 bits: 100 bits, far beyond any guessing a claim limit allows.
const CODE_SYMBOLS: usize = 20;

/// A fresh invitation code, `XXXXX-XXXXX-XXXXX-XXXXX`.
fn new_invitation_code() -> String {
    let mut rng = rand::rng();
    let symbols: Vec<char> = (0..CODE_SYMBOLS)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect();
    symbols
        .chunks(5)
        .map(|group| group.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// What is stored of a code: the SHA-256 of its symbols, whatever case and dashes it was
/// typed with. A code is random, so no salt or slow hash is needed against a stolen table.
fn code_hash(code: &str) -> Result<String, ServingError> {
    let symbols: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if symbols.len() != CODE_SYMBOLS || !symbols.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
        return Err(ServingError::InvalidInvitation);
    }
    Ok(hex::encode(Sha256::digest(symbols.as_bytes())))
}

/// One row of an imported roll.
#[derive(Debug)]
struct RollRow {
    identifier: String,
    region: String,
}

/// Reads a roll: a header naming `identifier` and `region`, then one row per person.
fn parse_roll(text: &str) -> Result<Vec<RollRow>, ServingError> {
    let bad = |line: u64, reason: String| ServingError::BadRoll(format!("line {line}: {reason}"));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| ServingError::BadRoll(e.to_string()))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            ServingError::BadRoll(format!(
                "the header has no {name} column (it has: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let (identifier_at, region_at) = (column("identifier")?, column("region")?);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let identifier = record.get(identifier_at).unwrap_or_default();
        let region = record.get(region_at).unwrap_or_default();
        if identifier.is_empty() || identifier.len() > 200 {
            return Err(bad(line, "an identifier is 1 to 200 bytes".into()));
        }
        if region.is_empty() || region.len() > 100 {
            return Err(bad(line, "a region is 1 to 100 bytes".into()));
        }
        rows.push(RollRow {
            identifier: identifier.to_string(),
            region: region.to_string(),
        });
        if rows.len() > MAX_ROLL_ENTRIES {
            return Err(ServingError::BadRoll(format!(
                "a roll holds at most {MAX_ROLL_ENTRIES} entries"
            )));
        }
    }
    if rows.is_empty() {
        return Err(ServingError::BadRoll("the roll has no entry".into()));
    }
    Ok(rows)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportQuery {
    /// A name for the roll, shown to operators.
    name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Invitation {
    identifier: String,
    region: String,
    /// The one-time code to hand to this person; shown only here.
    code: String,
}

#[utoipa::path(post, path = "/api/v1/admin/rolls", tag = "rolls", params(ImportQuery), request_body(content = String, description = "CSV (text/csv) with a header naming `identifier` (opaque, e.g. a hash of a register number, 1 to 200 bytes) and `region`; up to 16 MiB and 200 000 entries"), security(("bearer" = [])), responses((status = 201, description = "the roll's id and one invitation code per entry, shown only in this answer"), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "an identifier is in the roll twice"), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody, description = "bad_roll, with the line")))]
pub(crate) async fn import_roll(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<ImportQuery>,
    request: Request,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::ManageRolls).await?;
    let name = query.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ServingError::BadRequest(
            "a roll's name is 1 to 200 bytes".into(),
        ));
    }
    let bytes = axum::body::to_bytes(request.into_body(), MAX_ROLL_BYTES)
        .await
        .map_err(|_| ServingError::BodyTooLarge {
            limit: MAX_ROLL_BYTES,
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ServingError::BadRoll(format!("not UTF-8: {e}")))?;
    let rows = parse_roll(text)?;
    let roll = Uuid::new_v4();
    let mut entries = Vec::with_capacity(rows.len());
    let mut invitations = Vec::with_capacity(rows.len());
    for row in rows {
        let code = new_invitation_code();
        entries.push(NewRollEntry {
            id: Uuid::new_v4(),
            identifier: row.identifier.clone(),
            region: row.region.clone(),
            code_hash: code_hash(&code)?,
        });
        invitations.push(Invitation {
            identifier: row.identifier,
            region: row.region,
            code,
        });
    }
    state
        .store
        .create_roll(roll, name, caller.0.sub, &entries, now_micros())
        .await?;
    state
        .audit_as_user(
            caller.0.sub,
            "import_roll",
            json!({ "roll_id": roll, "name": name, "entries": entries.len() }),
        )
        .await;
    let body = json!({ "roll_id": roll, "name": name, "entries": entries.len(), "invitations": invitations });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/admin/rolls/{id}", tag = "rolls", params(("id" = uuid::Uuid, Path, description = "roll id")), security(("bearer" = [])), responses((status = 200, description = "name, entries, how many are claimed, and how many are spent (their claimant was erased)"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn roll_summary(
    State(state): State<SharedState>,
    caller: Caller,
    Path(roll): Path<Uuid>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ManageRolls).await?;
    let summary = state
        .store
        .roll_summary(roll)
        .await?
        .ok_or(ServingError::NotFound { what: "roll" })?;
    Ok(Json(json!({ "roll_id": roll, "summary": summary })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReissueBody {
    /// The entry's identifier, as in the imported CSV.
    identifier: String,
}

#[utoipa::path(post, path = "/api/v1/admin/rolls/{id}/reissue", tag = "rolls", params(("id" = uuid::Uuid, Path, description = "roll id")), request_body = ReissueBody, security(("bearer" = [])), responses((status = 200, description = "the entry's new code (the old one, and any claim, no longer count)"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the entry's claimant was erased: it has voted its last")))]
pub(crate) async fn reissue_entry(
    State(state): State<SharedState>,
    caller: Caller,
    Path(roll): Path<Uuid>,
    ApiJson(body): ApiJson<ReissueBody>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ManageRolls).await?;
    let code = new_invitation_code();
    let revoked_claim = match state
        .store
        .reissue_roll_entry(roll, &body.identifier, &code_hash(&code)?)
        .await?
    {
        Reissue::Reissued {
            former_claimant, ..
        } => former_claimant.is_some(),
        Reissue::NoSuchEntry => return Err(ServingError::NotFound { what: "roll entry" }),
        Reissue::Spent => {
            return Err(ServingError::Conflict(
                "the entry's claimant was erased: it has voted its last".into(),
            ));
        }
    };
    state
        .audit_as_user(
            caller.0.sub,
            "reissue_roll_entry",
            json!({ "roll_id": roll, "identifier": body.identifier, "revoked_claim": revoked_claim }),
        )
        .await;
    Ok(Json(json!({
        "roll_id": roll,
        "identifier": body.identifier,
        "code": code,
        "revoked_claim": revoked_claim,
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimBody {
    /// The invitation code, as handed out (case and dashes do not matter).
    code: String,
}

#[utoipa::path(post, path = "/api/v1/rolls/claim", tag = "rolls", request_body = ClaimBody, security(("bearer" = [])), responses((status = 200, description = "the caller now holds the entry: the roll and its region"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "invalid_invitation: unknown, used or taken back"), (status = 409, body = ErrorBody, description = "roll_already_claimed: the account holds an entry of this roll"), (status = 429, body = ErrorBody, description = "too_many_claim_attempts")))]
pub(crate) async fn claim_invitation(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<ClaimBody>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ClaimInvitation).await?;
    // Every attempt costs, a right one too: guessing pays per code tried.
    state
        .claim_attempts
        .check(&caller.0.sub.to_string())
        .map_err(|retry_after_s| ServingError::TooManyClaimAttempts { retry_after_s })?;
    let hash = code_hash(&body.code)?;
    match state
        .store
        .claim_roll_entry(&hash, caller.0.sub, now_micros())
        .await?
    {
        ClaimOutcome::Claimed { roll, region, .. } => {
            state
                .audit_as_user(caller.0.sub, "claim_roll_entry", json!({ "roll_id": roll }))
                .await;
            Ok(Json(json!({ "roll_id": roll, "region": region })))
        }
        ClaimOutcome::UnknownCode => Err(ServingError::InvalidInvitation),
        ClaimOutcome::AlreadyHolds { .. } => Err(ServingError::RollAlreadyClaimed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_back_whatever_their_case_and_dashes() {
        let code = new_invitation_code();
        assert_eq!(code.len(), 23);
        let typed = code.to_ascii_lowercase().replace('-', " ");
        assert_eq!(code_hash(&typed).unwrap(), code_hash(&code).unwrap());
        assert_ne!(
            code_hash(&new_invitation_code()).unwrap(),
            code_hash(&code).unwrap()
        );
        assert!(code_hash("ILOU0-00000-00000-00000").is_err());
        assert!(code_hash(&code[..22]).is_err());
    }

    #[test]
    fn a_roll_needs_its_columns_and_sane_fields() {
        let rows = parse_roll("region,identifier\nnorth,a1\n south , b2 \n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].identifier.as_str(), rows[1].region.as_str()),
            ("b2", "south")
        );
        let refused = |text: &str| parse_roll(text).unwrap_err().code();
        assert_eq!(refused("identifier\na1\n"), "bad_roll");
        assert_eq!(refused("identifier,region\n"), "bad_roll");
        assert_eq!(refused("identifier,region\na1,north\n,north\n"), "bad_roll");
        assert_eq!(refused("identifier,region\na1,north,extra\n"), "bad_roll");
        let long = format!("identifier,region\n{},north\n", "x".repeat(201));
        assert_eq!(refused(&long), "bad_roll");
    }
}
