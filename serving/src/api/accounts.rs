//! Accounts: registration, sign-in with optional TOTP, rotating refresh tokens, expert and
//! stakeholder verification.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use canopy_schemas::Weight;
use canopy_schemas::clock::unix_now;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::extract::{ApiJson, Caller, ClientAddress, ErrorBody};
use crate::ServingError;
use crate::auth::{self, Action, Role};
use crate::limits::address_block;
use crate::state::{AppState, SharedState};
use crate::store::{MetadataStore, RefreshUse, UserRecord, Verification};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
}

fn check_new_credentials(username: &str, password: &str) -> Result<(), ServingError> {
    let username_ok = (3..=64).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !username_ok {
        return Err(ServingError::BadRequest(
            "a username is 3 to 64 letters, digits, '_', '.' or '-'".into(),
        ));
    }
    if !(10..=256).contains(&password.chars().count()) {
        return Err(ServingError::BadRequest(
            "a password is 10 to 256 characters".into(),
        ));
    }
    Ok(())
}

/// Creates a user with `role`; the CLI makes admins with it, the API only citizens.
pub async fn create_user(
    store: &dyn MetadataStore,
    username: &str,
    password: &str,
    role: Role,
) -> Result<Uuid, ServingError> {
    check_new_credentials(username, password)?;
    let password_hash = {
        let password = password.to_string();
        tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))??
    };
    let user = UserRecord {
        id: Uuid::new_v4(),
        username: username.to_string(),
        password_hash,
        role,
        weight: Weight::ONE.0,
        totp_secret: None,
        totp_enabled: false,
    };
    store.create_user(&user, unix_now() as i64).await?;
    Ok(user.id)
}

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Credentials, responses((status = 201, description = "a citizen account"), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "too_many_registrations: from this address or its block this hour")))]
pub(crate) async fn register(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ServingError> {
    if let Some(address) = address {
        let (per_address, per_block) = &state.registration_limits;
        per_address
            .check(&address.to_string())
            .and_then(|()| per_block.check(&address_block(address)))
            .map_err(|retry_after_s| ServingError::TooManyRegistrations { retry_after_s })?;
    }
    let id = create_user(
        state.store.as_ref(),
        &body.username,
        &body.password,
        Role::Citizen,
    )
    .await?;
    state.audit_as_user(id, "register", json!({})).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_id": id, "role": Role::Citizen })),
    )
        .into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenPair {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: String,
}

async fn issue_pair(
    state: &AppState,
    user: &UserRecord,
    family: Uuid,
) -> Result<TokenPair, ServingError> {
    let (access_token, _) = state.keys.issue(user.id, user.role, user.weight)?;
    let (refresh_token, hash) = auth::new_refresh_token();
    let expires_at = (unix_now() + state.config.refresh_ttl_s) as i64;
    state
        .store
        .insert_refresh_token(&hash, family, user.id, expires_at)
        .await?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer",
        expires_in: state.keys.access_ttl_s,
        refresh_token,
    })
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials, responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody, description = "bad_credentials, totp_required, bad_totp")))]
pub(crate) async fn login(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<TokenPair>, ServingError> {
    let user = state.store.user_by_username(&body.username).await?;
    let password = body.password.clone();
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Hash even for an unknown user, so timing does not tell which usernames exist.
    let password_ok = tokio::task::spawn_blocking(move || match hash {
        Some(hash) => auth::verify_password(&password, &hash),
        None => {
            let _ = auth::hash_password(&password);
            false
        }
    })
    .await
    .map_err(|e| ServingError::Internal(e.to_string()))?;
    let Some(user) = user.filter(|_| password_ok) else {
        state
            .audit(
                "anonymous",
                "login_failed",
                json!({ "reason": "bad_credentials" }),
            )
            .await;
        return Err(ServingError::BadCredentials);
    };
    if user.totp_enabled {
        let Some(code) = body.totp.as_deref() else {
            state
                .audit_as_user(
                    user.id,
                    "login_failed",
                    json!({ "reason": "totp_required" }),
                )
                .await;
            return Err(ServingError::TotpRequired);
        };
        if let Err(error) = check_totp(&state, &user, code).await {
            state
                .audit_as_user(user.id, "login_failed", json!({ "reason": error.code() }))
                .await;
            return Err(error);
        }
    }
    let family = Uuid::new_v4();
    state
        .store
        .create_refresh_family(family, user.id, unix_now() as i64)
        .await?;
    let pair = issue_pair(&state, &user, family).await?;
    state.audit_as_user(user.id, "login", json!({})).await;
    Ok(Json(pair))
}

/// Accepts a code once: its time step must be newer than the last step used.
async fn check_totp(state: &AppState, user: &UserRecord, code: &str) -> Result<(), ServingError> {
    let secret = user.totp_secret.as_deref().ok_or(ServingError::BadTotp)?;
    let step = auth::totp_step(secret, code)?.ok_or(ServingError::BadTotp)?;
    if !state.store.claim_totp_step(user.id, step as i64).await? {
        return Err(ServingError::BadTotp);
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshBody {
    refresh_token: String,
}

#[utoipa::path(post, path = "/api/v1/auth/refresh-token", tag = "auth", request_body = RefreshBody, responses((status = 200, body = TokenPair, description = "a new pair; the old refresh token is spent"), (status = 401, body = ErrorBody, description = "bad_refresh_token, refresh_token_reused (the family is revoked)")))]
pub(crate) async fn refresh_token(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenPair>, ServingError> {
    let hash = auth::refresh_token_hash(&body.refresh_token);
    match state
        .store
        .use_refresh_token(&hash, unix_now() as i64)
        .await?
    {
        RefreshUse::Fresh { family, user } => {
            let user = state
                .store
                .user_by_id(user)
                .await?
                .ok_or(ServingError::BadRefreshToken)?;
            Ok(Json(issue_pair(&state, &user, family).await?))
        }
        RefreshUse::Reused { family, user } => {
            state.store.revoke_refresh_family(family).await?;
            state
                .audit_as_user(user, "refresh_token_reused", json!({ "family": family }))
                .await;
            Err(ServingError::RefreshTokenReused)
        }
        RefreshUse::Invalid => Err(ServingError::BadRefreshToken),
    }
}

#[utoipa::path(post, path = "/api/v1/auth/revoke-token", tag = "auth", request_body = RefreshBody, responses((status = 204, description = "the token's family is revoked")))]
pub(crate) async fn revoke_token(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<StatusCode, ServingError> {
    let hash = auth::refresh_token_hash(&body.refresh_token);
    if state.store.revoke_refresh_token(&hash).await? {
        state
            .audit(
                "refresh-token-holder",
                "revoke_token",
                json!({ "token_hash": hash }),
            )
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyBody {
    user_id: Uuid,
    role: Role,
    /// Vote weight, as a decimal (e.g. 2.5).
    weight: f64,
    #[serde(default)]
    field: String,
    #[serde(default)]
    regions: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/verify-expert", tag = "auth", request_body = VerifyBody, security(("bearer" = [])), responses((status = 200, description = "the user is verified"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn verify_expert(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<VerifyBody>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::VerifyUsers).await?;
    if !matches!(body.role, Role::Expert | Role::Stakeholder) {
        return Err(ServingError::BadRequest(
            "verification grants the expert or stakeholder role".into(),
        ));
    }
    let weight = (body.weight * f64::from(canopy_schemas::WEIGHT_SCALE)).round();
    if !(weight >= 1.0 && weight <= f64::from(canopy_schemas::MAX_WEIGHT)) {
        return Err(ServingError::BadRequest(
            "a verified weight is above 0 and at most 100".into(),
        ));
    }
    let verification = Verification {
        role: body.role,
        weight: weight as u32,
        field: body.field.clone(),
        regions: body.regions.clone(),
        verified_by: caller.0.sub,
    };
    let verified = state
        .store
        .verify_user(body.user_id, &verification, unix_now() as i64)
        .await?;
    if !verified {
        return Err(ServingError::NotFound { what: "user" });
    }
    let detail = json!({ "user_id": body.user_id, "role": body.role, "weight": body.weight, "field": body.field, "regions": body.regions });
    let verified = state.store.user_pseudonym(body.user_id).await?;
    let audited = json!({ "user": verified, "role": body.role, "weight": body.weight, "field": body.field, "regions": body.regions });
    state
        .audit_as_user(caller.0.sub, "verify_user", audited)
        .await;
    Ok(Json(detail))
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/enrol", tag = "auth", security(("bearer" = [])), responses((status = 200, description = "secret_base32 and otpauth_url; confirm with a code to turn 2FA on")))]
pub(crate) async fn totp_enrol(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ServingError> {
    let user = state
        .store
        .user_by_id(caller.0.sub)
        .await?
        .ok_or(ServingError::NotFound { what: "user" })?;
    if user.totp_enabled {
        return Err(ServingError::Conflict(
            "two-factor authentication is already on".into(),
        ));
    }
    let secret = auth::new_totp_secret();
    state.store.set_totp(user.id, Some(&secret), false).await?;
    let totp = auth::totp(&secret)?;
    let secret_base32 = totp.get_secret_base32();
    let url = format!(
        "otpauth://totp/Canopy:{}?secret={secret_base32}&issuer=Canopy&algorithm=SHA1&digits=6&period=30",
        user.username
    );
    state.audit_as_user(user.id, "totp_enrol", json!({})).await;
    Ok(Json(
        json!({ "secret_base32": secret_base32, "otpauth_url": url }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CodeBody {
    code: String,
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/confirm", tag = "auth", request_body = CodeBody, security(("bearer" = [])), responses((status = 204, description = "2FA is on"), (status = 401, body = ErrorBody)))]
pub(crate) async fn totp_confirm(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<StatusCode, ServingError> {
    let user = state
        .store
        .user_by_id(caller.0.sub)
        .await?
        .ok_or(ServingError::NotFound { what: "user" })?;
    check_totp(&state, &user, &body.code).await?;
    state
        .store
        .set_totp(user.id, user.totp_secret.as_deref(), true)
        .await?;
    state
        .audit_as_user(user.id, "totp_confirm", json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
