//! SQL access tokens: what an analyst signs in to the PostgreSQL port with (as the password,
//! by SCRAM-SHA-256), issued here to a caller who signed in over HTTP in full (password and,
//! with 2FA on, a code). The account password does not work on the port.
//!
//! ```text
//!  POST   /api/v1/analytics/sql-tokens        a new token, shown once (Cache-Control: no-store)
//!  GET    /api/v1/analytics/sql-tokens        the caller's tokens: id, name, times; no secret
//!  DELETE /api/v1/analytics/sql-tokens/{id}   revokes one; the port refuses it from then on
//! ```
//!
//! Only the token's SCRAM verifier is stored (`StoredKey`, `ServerKey` under the account's
//! salt, PostgreSQL's 4096 iterations): a copy of the database signs no one in.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::extract::{ApiJson, Caller};
use crate::ServingError;
use crate::auth::Action;
use crate::state::SharedState;
use crate::store::SqlTokenRecord;

/// A token lives this long unless asked otherwise.
pub const DEFAULT_TOKEN_TTL_S: u64 = 30 * 24 * 3600;
/// The longest a token may live.
pub const MAX_TOKEN_TTL_S: u64 = 365 * 24 * 3600;
/// The shortest.
pub const MIN_TOKEN_TTL_S: u64 = 60;
/// Live tokens one account may hold.
pub const MAX_TOKENS_PER_ACCOUNT: usize = 20;
/// PostgreSQL's SCRAM iteration count (the token is 192 random bits; the count only has to
/// be what clients expect).
pub const SCRAM_ITERATIONS: u32 = 4096;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewSqlToken {
    /// What the token is for (1 to 64 characters), shown in the list.
    name: String,
    /// Lifetime in seconds: 60 to 31 536 000 (a year); 30 days if absent.
    #[serde(default)]
    expires_in_s: Option<u64>,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any size");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// SCRAM-SHA-256's `StoredKey` and `ServerKey` of `secret` (RFC 5802; PBKDF2-HMAC-SHA256 with
/// one block as `Hi`). The port checks proofs against them (`canopy_sqlwire::scram`).
pub fn scram_keys(secret: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(secret.as_bytes(), &first);
    let mut salted = u;
    for _ in 1..iterations.max(1) {
        u = hmac(secret.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let client_key = hmac(&salted, b"Client Key");
    (
        Sha256::digest(client_key).into(),
        hmac(&salted, b"Server Key"),
    )
}

fn listed(token: &SqlTokenRecord) -> serde_json::Value {
    json!({
        "id": token.id,
        "name": token.name,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
    })
}

#[utoipa::path(post, path = "/api/v1/analytics/sql-tokens", tag = "analytics", request_body = NewSqlToken, security(("bearer" = [])), responses(
    (status = 201, description = "`token`: the secret, shown only here (Cache-Control: no-store); psql signs in with the account's username and it as the password. Also id, name, created_at, expires_at (unix seconds)"),
    (status = 400, body = super::ErrorBody, description = "bad_request: name or expires_in_s out of range"),
    (status = 401, body = super::ErrorBody),
    (status = 403, body = super::ErrorBody, description = "only analysts and admins query the lake"),
    (status = 409, body = super::ErrorBody, description = "conflict: the account holds 20 live tokens already"),
    (status = 422, body = super::ErrorBody, description = "the body is not the JSON asked for")))]
pub(crate) async fn create_sql_token(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<NewSqlToken>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::QueryAnalytics).await?;
    let user = caller.0.sub;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ServingError::BadRequest(
            "name is 1 to 64 characters, none of them control characters".into(),
        ));
    }
    let ttl = request.expires_in_s.unwrap_or(DEFAULT_TOKEN_TTL_S);
    if !(MIN_TOKEN_TTL_S..=MAX_TOKEN_TTL_S).contains(&ttl) {
        return Err(ServingError::BadRequest(format!(
            "expires_in_s is {MIN_TOKEN_TTL_S} to {MAX_TOKEN_TTL_S}"
        )));
    }
    // The role now, not the token's (which may be minutes old).
    let record = state
        .store
        .user_by_id(user)
        .await?
        .ok_or(ServingError::AccountErased)?;
    if !Action::QueryAnalytics.allowed(record.role) {
        return Err(ServingError::Forbidden {
            role: record.role.as_str(),
            action: Action::QueryAnalytics.as_str(),
        });
    }
    let now = canopy_schemas::clock::unix_now() as i64;
    if state.store.sql_tokens(user, now).await?.len() >= MAX_TOKENS_PER_ACCOUNT {
        return Err(ServingError::Conflict(format!(
            "an account holds at most {MAX_TOKENS_PER_ACCOUNT} SQL tokens: revoke one first"
        )));
    }
    let mut fresh_salt = [0u8; 16];
    rand::rng().fill_bytes(&mut fresh_salt);
    let salt = state.store.sql_token_salt(user, &fresh_salt).await?;
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let keys_for = token.clone();
    let salt_for = salt.clone();
    let (stored_key, server_key) =
        tokio::task::spawn_blocking(move || scram_keys(&keys_for, &salt_for, SCRAM_ITERATIONS))
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))?;
    let record = SqlTokenRecord {
        id: Uuid::new_v4(),
        user_id: user,
        name: name.to_owned(),
        salt,
        iterations: SCRAM_ITERATIONS,
        stored_key: stored_key.to_vec(),
        server_key: server_key.to_vec(),
        created_at: now,
        expires_at: now + ttl as i64,
        last_used_at: None,
    };
    state.store.create_sql_token(&record).await?;
    state
        .audit_as_user(
            user,
            "sql_token_created",
            json!({ "token": record.id, "expires_at": record.expires_at }),
        )
        .await;
    let mut body = listed(&record);
    body["token"] = json!(token);
    body["username"] = json!(record_username(&state, user).await?);
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn record_username(state: &SharedState, user: Uuid) -> Result<String, ServingError> {
    Ok(state
        .store
        .user_by_id(user)
        .await?
        .map(|record| record.username)
        .unwrap_or_default())
}

#[utoipa::path(get, path = "/api/v1/analytics/sql-tokens", tag = "analytics", security(("bearer" = [])), responses(
    (status = 200, description = "`tokens`: the caller's live tokens (id, name, created_at, expires_at, last_used_at; never the secret)"),
    (status = 401, body = super::ErrorBody)))]
pub(crate) async fn list_sql_tokens(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ServingError> {
    let now = canopy_schemas::clock::unix_now() as i64;
    let tokens = state.store.sql_tokens(caller.0.sub, now).await?;
    Ok(Json(
        json!({ "tokens": tokens.iter().map(listed).collect::<Vec<_>>() }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/analytics/sql-tokens/{id}", tag = "analytics", params(("id" = uuid::Uuid, Path, description = "the token's id")), security(("bearer" = [])), responses(
    (status = 204, description = "revoked: the port refuses the token from now on (sessions signed in with it stay open until they end)"),
    (status = 400, body = super::ErrorBody, description = "the id is not a UUID"),
    (status = 401, body = super::ErrorBody),
    (status = 404, body = super::ErrorBody, description = "the caller holds no such token")))]
pub(crate) async fn revoke_sql_token(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ServingError> {
    // Any signed-in account may revoke its own tokens, a demoted one too.
    if !state.store.revoke_sql_token(caller.0.sub, id).await? {
        return Err(ServingError::NotFound { what: "SQL token" });
    }
    state
        .audit_as_user(caller.0.sub, "sql_token_revoked", json!({ "token": id }))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_keys_match_rfc_7677() {
        // RFC 7677 §3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096.
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        let (stored_key, server_key) = scram_keys("pencil", &salt, 4096);
        // ServerSignature of the RFC's AuthMessage is "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(&server_key, auth.as_bytes());
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_ne!(stored_key, server_key);
    }
}
