//! Accounts: registration, sign-in (password and second factor checked together, every
//! check throttled), rotating refresh tokens, the 2FA lifecycle (enrol, confirm, recovery
//! codes, disable), password change, expert and stakeholder verification.
//!
//! ```text
//!  sign-in ─▶ hash slot (PasswordHashing: bounded memory, bounded line; else 503 busy)
//!          ─▶ SecretThrottle::begin(account, address)   (else 429 too_many_attempts)
//!          ─▶ password (argon2; a dummy hash for unknown users) + TOTP or recovery code
//!          ─▶ all right: 200 (Cache-Control: no-store) │ anything wrong: 401 bad_credentials
//! ```

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
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
    /// The current TOTP code, for an account with 2FA on (sent with the password: a
    /// sign-in is answered once, for both).
    #[serde(default)]
    totp: Option<String>,
    /// One of the account's recovery codes, in place of a TOTP code; it works once.
    #[serde(default)]
    recovery_code: Option<String>,
}

/// A new username: NFKC-normalised (a full-width spelling becomes the plain one), then 3
/// to 64 ASCII letters, digits, '_', '.' or '-' (no look-alike letters from other scripts).
fn new_username(username: &str) -> Result<String, ServingError> {
    use unicode_normalization::UnicodeNormalization;
    let username: String = username.nfkc().collect();
    let username_ok = (3..=64).contains(&username.len())
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !username_ok {
        return Err(ServingError::BadRequest(
            "a username is 3 to 64 letters, digits, '_', '.' or '-'".into(),
        ));
    }
    Ok(username)
}

fn check_new_password(password: &str, username: &str) -> Result<(), ServingError> {
    match auth::password_weakness(password, username) {
        Some(why) => Err(ServingError::WeakPassword(why)),
        None => Ok(()),
    }
}

fn user_record(username: String, password_hash: String, role: Role) -> UserRecord {
    UserRecord {
        id: Uuid::new_v4(),
        username,
        password_hash,
        role,
        weight: Weight::ONE.0,
        totp_secret: None,
        totp_enabled: false,
    }
}

/// Creates a user with `role`; the CLI makes admins with it (hashing outside the request
/// path's bound), the API only citizens. A role that votes gets its sealing key and salt
/// now, as registration gives them (see `register`).
pub async fn create_user(
    store: &dyn MetadataStore,
    username: &str,
    password: &str,
    role: Role,
) -> Result<Uuid, ServingError> {
    let username = new_username(username)?;
    check_new_password(password, &username)?;
    let password_hash = {
        let password = password.to_string();
        tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))??
    };
    let user = user_record(username, password_hash, role);
    store.create_user(&user, unix_now() as i64).await?;
    if Action::CastVote.allowed(role) {
        let now = canopy_schemas::clock::now_micros();
        store.voter_key(user.id, now).await?;
        store.voter_salt(user.id, now).await?;
    }
    Ok(user.id)
}

/// The account an analysis agent votes as (`agent:<id>`, a name no one can register), made
/// the first time it is needed with a random password nobody keeps.
pub(crate) async fn agent_account(state: &AppState, agent: &str) -> Result<Uuid, ServingError> {
    let username = format!("agent:{agent}");
    if let Some(user) = state.store.user_by_username(&username).await? {
        return Ok(user.id);
    }
    let password_hash = tokio::task::spawn_blocking(|| {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        auth::hash_password(&hex::encode(secret))
    })
    .await
    .map_err(|e| ServingError::Internal(e.to_string()))??;
    let user = user_record(username.clone(), password_hash, Role::Agent);
    match state.store.create_user(&user, unix_now() as i64).await {
        Ok(()) => Ok(user.id),
        // Made by a concurrent invocation in the meantime.
        Err(_) => state
            .store
            .user_by_username(&username)
            .await?
            .map(|user| user.id)
            .ok_or(ServingError::Internal(format!(
                "could not create the account {username}"
            ))),
    }
}

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Credentials, responses((status = 201, description = "a citizen account"), (status = 409, body = ErrorBody, description = "conflict: the username is taken, in any case or Unicode spelling"), (status = 422, body = ErrorBody, description = "weak_password (under 10 characters, a common password, the username in it, repeated or consecutive characters), bad_request"), (status = 429, body = ErrorBody, description = "too_many_registrations: from this address or its block this hour"), (status = 503, body = ErrorBody, description = "busy: too many passwords being hashed; retry after Retry-After")))]
pub(crate) async fn register(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ServingError> {
    let username = new_username(&body.username)?;
    check_new_password(&body.password, &username)?;
    if let Some(address) = address {
        let (per_address, per_block) = &state.registration_limits;
        per_address
            .check(&address.to_string())
            .and_then(|()| per_block.check(&address_block(address)))
            .map_err(|retry_after_s| ServingError::TooManyRegistrations { retry_after_s })?;
    }
    let password_hash = state.passwords.hash(&body.password).await?;
    let user = user_record(username, password_hash, Role::Citizen);
    state.store.create_user(&user, unix_now() as i64).await?;
    // A voter's sealing key and salt are made with the account (and kept in this node's
    // cache), not by its first vote: the first vote then only reads them, and a burst of
    // new voters does not queue on the store's writer for two commits each (measured: 200
    // new voters at 10 k votes/s stalled casting for 1.2 s on a fresh node).
    state.salts.key(state.store.as_ref(), user.id).await?;
    state.salts.salt(state.store.as_ref(), user.id).await?;
    state.audit_as_user(user.id, "register", json!({})).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_id": user.id, "role": Role::Citizen })),
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

/// A JSON answer that holds a secret (tokens, a TOTP secret, recovery codes): no cache
/// between the client and us may keep it.
fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
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

/// The second secret of a check, as sent.
#[derive(Clone, Copy, Debug)]
enum Code<'a> {
    None,
    Totp(&'a str),
    Recovery(&'a str),
}

impl<'a> Code<'a> {
    /// A `code` field that may hold either: six digits are a TOTP code.
    fn either(code: &'a str) -> Self {
        let code = code.trim();
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            Self::Totp(code)
        } else {
            Self::Recovery(code)
        }
    }
}

/// What a secret check asks for.
struct SecretCheck<'a> {
    /// The name the account is throttled under (an unknown one too).
    username: &'a str,
    user: Option<&'a UserRecord>,
    password: &'a str,
    code: Code<'a>,
    /// Whether a right code is required (2FA on, or being confirmed).
    code_required: bool,
    address: Option<IpAddr>,
}

/// Checks a password and a code together under the throttle, with one answer for every
/// failure: an unknown user, a wrong password, a missing, wrong or spent code all answer
/// 401 `bad_credentials`, and each costs the same Argon2 hash, so neither the password nor
/// the username can be told apart past the second factor. While the account or address
/// waits, even right secrets answer 429 and nothing is checked or spent.
async fn check_secrets(state: &AppState, check: SecretCheck<'_>) -> Result<(), ServingError> {
    let slot = state.passwords.slot().await?;
    let attempt = state
        .throttle
        .begin(&auth::username_key(check.username), check.address)
        .await?;
    let stored = check.user.map(|user| user.password_hash.as_str());
    let password_ok = slot.verify(check.password, stored).await?;
    drop(slot);
    // The code is looked at whatever the password was, so that a right password with a
    // wrong code takes as long as a wrong one; it is spent only with the right password.
    let user_id = check.user.map_or(Uuid::nil(), |user| user.id);
    let code_ok = match check.code {
        _ if !check.code_required => true,
        Code::None => false,
        Code::Totp(code) => {
            let secret = check.user.and_then(|user| user.totp_secret.as_deref());
            let step = match secret {
                Some(secret) => auth::totp_step(secret, code)?,
                None => None,
            };
            match step {
                Some(step) if password_ok => {
                    state.store.claim_totp_step(user_id, step as i64).await?
                }
                _ => false,
            }
        }
        Code::Recovery(code) => match auth::recovery_code_hash(code) {
            Some(hash) => {
                let unused = state.store.recovery_code_unused(user_id, &hash).await?;
                unused
                    && password_ok
                    && state
                        .store
                        .spend_recovery_code(user_id, &hash, unix_now() as i64)
                        .await?
            }
            None => false,
        },
    };
    if password_ok && code_ok {
        attempt.succeeded().await;
        if let (Code::Recovery(_), Some(user)) = (check.code, check.user)
            && check.code_required
        {
            let left = state.store.recovery_codes_left(user.id).await?;
            state
                .audit_as_user(user.id, "recovery_code_used", json!({ "left": left }))
                .await;
        }
        return Ok(());
    }
    attempt.failed();
    let reason = if password_ok {
        "second_factor"
    } else {
        "password"
    };
    match check.user {
        Some(user) => {
            state
                .audit_as_user(user.id, "login_failed", json!({ "reason": reason }))
                .await
        }
        None => {
            state
                .audit("anonymous", "login_failed", json!({ "reason": reason }))
                .await
        }
    }
    Err(ServingError::BadCredentials)
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials, responses((status = 200, body = TokenPair, description = "a token pair (Cache-Control: no-store)"), (status = 401, body = ErrorBody, description = "bad_credentials: any failure (unknown user, wrong password, missing, wrong or spent code), one answer"), (status = 429, body = ErrorBody, description = "too_many_attempts: the account or address waits (Retry-After); even the right password is refused until then"), (status = 503, body = ErrorBody, description = "busy: too many sign-ins being checked at once (Retry-After)")))]
pub(crate) async fn login(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ServingError> {
    // Agent accounts never sign in: to a sign-in they are unknown.
    let user = state
        .store
        .user_by_username(&body.username)
        .await?
        .filter(|user| user.role != Role::Agent);
    let code = match (&body.totp, &body.recovery_code) {
        (Some(totp), _) => Code::Totp(totp.trim()),
        (None, Some(recovery)) => Code::Recovery(recovery),
        (None, None) => Code::None,
    };
    check_secrets(
        &state,
        SecretCheck {
            username: &body.username,
            user: user.as_ref(),
            password: &body.password,
            code,
            code_required: user.as_ref().is_some_and(|user| user.totp_enabled),
            address,
        },
    )
    .await?;
    let user = user.ok_or(ServingError::BadCredentials)?;
    let family = Uuid::new_v4();
    state
        .store
        .create_refresh_family(family, user.id, unix_now() as i64)
        .await?;
    let pair = issue_pair(&state, &user, family).await?;
    state.audit_as_user(user.id, "login", json!({})).await;
    Ok(no_store(StatusCode::OK, pair))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshBody {
    refresh_token: String,
}

#[utoipa::path(post, path = "/api/v1/auth/refresh-token", tag = "auth", request_body = RefreshBody, responses((status = 200, body = TokenPair, description = "a new pair (Cache-Control: no-store); the old refresh token is spent"), (status = 401, body = ErrorBody, description = "bad_refresh_token, refresh_token_reused (the family is revoked)")))]
pub(crate) async fn refresh_token(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Response, ServingError> {
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
            let pair = issue_pair(&state, &user, family).await?;
            Ok(no_store(StatusCode::OK, pair))
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

#[utoipa::path(get, path = "/api/v1/auth/verify-expert", tag = "auth", security(("bearer" = [])), responses((status = 200, description = "the caller's own verification: `role`, `weight` (a decimal, as verified), `verified`, and once verified `field`, `regions`, `verified_by` (the verifier as the audit trail names them) and `verified_at` (unix seconds); an account never verified gets its role with `verified: false`")))]
pub(crate) async fn my_verification(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ServingError> {
    // The account as stored now, not the token's claims (which may be minutes old).
    let user = state
        .store
        .user_by_id(caller.0.sub)
        .await?
        .ok_or(ServingError::AccountErased)?;
    let weight = f64::from(user.weight) / f64::from(canopy_schemas::WEIGHT_SCALE);
    let Some(verification) = state.store.latest_verification(user.id).await? else {
        return Ok(Json(
            json!({ "role": user.role, "weight": weight, "verified": false }),
        ));
    };
    let verified_by = state.store.user_pseudonym(verification.verified_by).await?;
    let regions = state.store.regions_of(user.id).await?;
    Ok(Json(json!({
        "role": user.role,
        "weight": weight,
        "verified": true,
        "field": verification.field,
        "regions": regions,
        "verified_by": verified_by,
        "verified_at": verification.verified_at,
    })))
}

/// The signed-in caller's account.
async fn caller_account(state: &AppState, caller: &Caller) -> Result<UserRecord, ServingError> {
    state
        .store
        .user_by_id(caller.0.sub)
        .await?
        .ok_or(ServingError::NotFound { what: "user" })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordBody {
    /// The account's password: a stolen access token alone cannot turn 2FA on.
    password: String,
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/enrol", tag = "auth", request_body = PasswordBody, security(("bearer" = [])), responses((status = 200, description = "secret_base32 and otpauth_url (Cache-Control: no-store); confirm with the password and a code to turn 2FA on"), (status = 401, body = ErrorBody, description = "bad_credentials: the password is not right"), (status = 409, body = ErrorBody, description = "2FA is already on"), (status = 429, body = ErrorBody, description = "too_many_attempts"), (status = 503, body = ErrorBody, description = "busy")))]
pub(crate) async fn totp_enrol(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<Response, ServingError> {
    let user = caller_account(&state, &caller).await?;
    if user.totp_enabled {
        return Err(ServingError::Conflict(
            "two-factor authentication is already on".into(),
        ));
    }
    check_secrets(
        &state,
        SecretCheck {
            username: &user.username,
            user: Some(&user),
            password: &body.password,
            code: Code::None,
            code_required: false,
            address,
        },
    )
    .await?;
    let secret = auth::new_totp_secret();
    state.store.set_totp(user.id, Some(&secret), false).await?;
    let totp = auth::totp(&secret)?;
    let secret_base32 = totp.get_secret_base32();
    let url = format!(
        "otpauth://totp/Canopy:{}?secret={secret_base32}&issuer=Canopy&algorithm=SHA1&digits=6&period=30",
        user.username
    );
    state.audit_as_user(user.id, "totp_enrol", json!({})).await;
    Ok(no_store(
        StatusCode::OK,
        json!({ "secret_base32": secret_base32, "otpauth_url": url }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordAndCode {
    password: String,
    /// A current TOTP code (six digits) or, once 2FA is on, one of the recovery codes.
    code: String,
}

/// Fresh recovery codes for `user`, replacing any before: what is stored is their hashes,
/// what is returned is shown once.
async fn issue_recovery_codes(state: &AppState, user: Uuid) -> Result<Vec<String>, ServingError> {
    let (shown, hashes): (Vec<String>, Vec<String>) = (0..auth::RECOVERY_CODES)
        .map(|_| auth::new_recovery_code())
        .unzip();
    state.store.replace_recovery_codes(user, &hashes).await?;
    Ok(shown)
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/confirm", tag = "auth", request_body = PasswordAndCode, security(("bearer" = [])), responses((status = 200, description = "2FA is on; `recovery_codes`: 10 one-time codes, shown only here (Cache-Control: no-store)"), (status = 401, body = ErrorBody, description = "bad_credentials: the password or the code is not right"), (status = 409, body = ErrorBody, description = "2FA is already on, or was never enrolled"), (status = 429, body = ErrorBody, description = "too_many_attempts"), (status = 503, body = ErrorBody, description = "busy")))]
pub(crate) async fn totp_confirm(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordAndCode>,
) -> Result<Response, ServingError> {
    let user = caller_account(&state, &caller).await?;
    if user.totp_enabled || user.totp_secret.is_none() {
        return Err(ServingError::Conflict(
            "two-factor authentication is on already, or was not enrolled".into(),
        ));
    }
    check_secrets(
        &state,
        SecretCheck {
            username: &user.username,
            user: Some(&user),
            password: &body.password,
            code: Code::Totp(body.code.trim()),
            code_required: true,
            address,
        },
    )
    .await?;
    state
        .store
        .set_totp(user.id, user.totp_secret.as_deref(), true)
        .await?;
    let codes = issue_recovery_codes(&state, user.id).await?;
    state
        .audit_as_user(user.id, "totp_confirm", json!({}))
        .await;
    Ok(no_store(StatusCode::OK, json!({ "recovery_codes": codes })))
}

/// Checks the password and a current code (TOTP or recovery) of an account with 2FA on.
async fn check_password_and_code(
    state: &AppState,
    user: &UserRecord,
    body: &PasswordAndCode,
    address: Option<IpAddr>,
) -> Result<(), ServingError> {
    if !user.totp_enabled {
        return Err(ServingError::Conflict(
            "two-factor authentication is off".into(),
        ));
    }
    check_secrets(
        state,
        SecretCheck {
            username: &user.username,
            user: Some(user),
            password: &body.password,
            code: Code::either(&body.code),
            code_required: true,
            address,
        },
    )
    .await
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/disable", tag = "auth", request_body = PasswordAndCode, security(("bearer" = [])), responses((status = 204, description = "2FA is off; the secret and the recovery codes are gone"), (status = 401, body = ErrorBody, description = "bad_credentials: the password or the code is not right"), (status = 409, body = ErrorBody, description = "2FA is off"), (status = 429, body = ErrorBody, description = "too_many_attempts"), (status = 503, body = ErrorBody, description = "busy")))]
pub(crate) async fn totp_disable(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordAndCode>,
) -> Result<StatusCode, ServingError> {
    let user = caller_account(&state, &caller).await?;
    check_password_and_code(&state, &user, &body, address).await?;
    state.store.set_totp(user.id, None, false).await?;
    state.store.replace_recovery_codes(user.id, &[]).await?;
    state
        .audit_as_user(user.id, "totp_disable", json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/recovery-codes", tag = "auth", request_body = PasswordAndCode, security(("bearer" = [])), responses((status = 200, description = "`recovery_codes`: 10 new one-time codes, shown only here (Cache-Control: no-store); the old ones no longer work"), (status = 401, body = ErrorBody, description = "bad_credentials"), (status = 409, body = ErrorBody, description = "2FA is off"), (status = 429, body = ErrorBody, description = "too_many_attempts"), (status = 503, body = ErrorBody, description = "busy")))]
pub(crate) async fn recovery_codes(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordAndCode>,
) -> Result<Response, ServingError> {
    let user = caller_account(&state, &caller).await?;
    check_password_and_code(&state, &user, &body, address).await?;
    let codes = issue_recovery_codes(&state, user.id).await?;
    state
        .audit_as_user(user.id, "recovery_codes_renewed", json!({}))
        .await;
    Ok(no_store(StatusCode::OK, json!({ "recovery_codes": codes })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChange {
    password: String,
    new_password: String,
    /// With 2FA on: a current TOTP code or a recovery code.
    #[serde(default)]
    code: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = PasswordChange, security(("bearer" = [])), responses((status = 204, description = "the password is changed; every refresh token of the account is revoked"), (status = 401, body = ErrorBody, description = "bad_credentials: the password (or, with 2FA on, the code) is not right"), (status = 422, body = ErrorBody, description = "weak_password"), (status = 429, body = ErrorBody, description = "too_many_attempts"), (status = 503, body = ErrorBody, description = "busy")))]
pub(crate) async fn change_password(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ServingError> {
    let user = caller_account(&state, &caller).await?;
    check_new_password(&body.new_password, &user.username)?;
    check_secrets(
        &state,
        SecretCheck {
            username: &user.username,
            user: Some(&user),
            password: &body.password,
            code: body.code.as_deref().map_or(Code::None, Code::either),
            code_required: user.totp_enabled,
            address,
        },
    )
    .await?;
    let password_hash = state.passwords.hash(&body.new_password).await?;
    state
        .store
        .set_password_hash(user.id, &password_hash)
        .await?;
    state
        .audit_as_user(user.id, "password_changed", json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
