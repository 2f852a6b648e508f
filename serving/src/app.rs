//! The HTTP API: routes, extractors and handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use canopy_dataflow::{DecisionView, TallyEngine, ViewStore, VoteRecord};
use canopy_ingest::{Gate, IngestError, Position, VoteLog};
use canopy_schemas::{
    Component, ComponentWeights, Decision, DecisionId, LoggedVote, Method, Vote, VoteId, VoterId,
    VoterSalt, Weight,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::ServingError;
use crate::auth::{self, Action, Claims, Role, TokenKeys, unix_now};
use crate::limits::{Rate, RateLimiter};
use crate::record::SaltCache;
use crate::store::{MetadataStore, RefreshUse, UserRecord, Verification, verify_audit_chain};

/// Limits and timeouts of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub body_limit: usize,
    pub per_user: Rate,
    pub per_address: Rate,
    /// The longest a results read waits for a minimum position.
    pub max_results_wait: Duration,
    pub refresh_ttl_s: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            per_user: Rate {
                per_second: 20.0,
                burst: 40.0,
            },
            per_address: Rate {
                per_second: 2_000.0,
                burst: 4_000.0,
            },
            max_results_wait: Duration::from_secs(5),
            refresh_ttl_s: 30 * 24 * 3600,
        }
    }
}

/// Everything a request handler reaches.
pub struct AppState {
    pub store: Arc<dyn MetadataStore>,
    pub keys: Arc<TokenKeys>,
    pub gate: Arc<Gate<dyn VoteLog>>,
    /// The tally engine, in a node that runs one (not in a `canopy serve` replica, whose
    /// results come from the cluster's workers through the view store).
    pub engine: Option<Arc<TallyEngine>>,
    pub views: Arc<dyn ViewStore>,
    pub config: ApiConfig,
    pub user_limits: RateLimiter,
    pub address_limits: RateLimiter,
    /// False until start-up finished and again once shutdown began.
    pub ready: AtomicBool,
    /// Every decision's Merkle log, grown by the engine (absent with the engine).
    pub record: Option<Arc<VoteRecord>>,
    /// The record key's verifier (`<name>+<hash>+<key>`), for auditors.
    pub record_key: String,
    pub record_origin: String,
    pub salts: SaltCache,
    pub data_dir: std::path::PathBuf,
    /// In a cluster: the other replicas (shared rate limits, erasure notices).
    pub coordinator: Option<Arc<crate::redis_views::ReplicaCoordinator>>,
    /// Sensor ingest, features and alerts, in a node that runs the engine.
    pub sensors: Option<Arc<crate::sensors_api::SensorService>>,
    /// SQL over the analytics lake, in a node that keeps one.
    pub analytics: Option<Arc<crate::analytics_api::AnalyticsService>>,
}

pub(crate) type SharedState = Arc<AppState>;

impl AppState {
    /// The vote record, which only a node running the engine holds.
    pub(crate) fn record(&self) -> Result<&VoteRecord, ServingError> {
        self.record.as_deref().ok_or(ServingError::RecordNotHere)
    }

    pub(crate) async fn audit(&self, actor: &str, action: &str, detail: serde_json::Value) {
        if let Err(error) = self
            .store
            .append_audit(actor, action, &detail.to_string(), now_micros())
            .await
        {
            tracing::error!(%error, action, "could not write the audit trail");
        }
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The OpenAPI document's frame; every path in it comes from a handler's annotation.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Canopy API", description = "Accounts, roles, decisions, votes and results"),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Every error the API answers with.
#[derive(utoipa::ToSchema, Serialize)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// `{ "code": "<stable snake_case code>", "message": "<for people>" }`
    error: serde_json::Value,
}

/// The router of the whole API, and the OpenAPI document generated from the same handlers.
pub fn router_and_openapi(state: SharedState) -> (Router, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let body_limit = state.config.body_limit;
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh_token))
        .routes(routes!(revoke_token))
        .routes(routes!(verify_expert))
        .routes(routes!(totp_enrol))
        .routes(routes!(totp_confirm))
        .routes(routes!(create_decision))
        .routes(routes!(cast_vote))
        .routes(routes!(cast_votes))
        .routes(routes!(results))
        .routes(routes!(breakdown))
        .routes(routes!(active_decisions))
        .routes(routes!(audit_trail))
        .routes(routes!(crate::record_api::record_key))
        .routes(routes!(crate::record_api::checkpoints))
        .routes(routes!(crate::record_api::inclusion_proof))
        .routes(routes!(crate::record_api::consistency_proof))
        .routes(routes!(crate::record_api::checkpoint_anchor))
        .routes(routes!(crate::record_api::erase_voter))
        .routes(routes!(
            crate::sensors_api::register_sensor,
            crate::sensors_api::list_sensors
        ))
        .routes(routes!(crate::sensors_api::process_sensor_data))
        .routes(routes!(crate::sensors_api::ingest_environmental_data))
        .routes(routes!(crate::sensors_api::region_metrics))
        .routes(routes!(crate::sensors_api::historical_trends))
        .routes(routes!(crate::sensors_api::alert_stream))
        .routes(routes!(crate::analytics_api::analytics_sql))
        .split_for_parts();
    let document = Arc::new(openapi.clone());
    let router = router
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(document.as_ref().clone()) }),
        )
        .fallback(|| async { ServingError::NotFound { what: "route" } })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_by_address,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(state);
    (router, openapi)
}

/// The router of the whole API.
pub fn router(state: SharedState) -> Router {
    router_and_openapi(state).0
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn limit_by_address(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip().to_string());
    if let Some(address) = address
        && let Err(retry_after_s) = state.address_limits.check(&address)
    {
        return ServingError::RateLimited { retry_after_s }.into_response();
    }
    next.run(request).await
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready to serve"), (status = 503, description = "starting, stopping, or failed (the dataflow stopped on a corrupt log or a diverged record)")))]
async fn readyz(State(state): State<SharedState>) -> Response {
    let sensor_failure = state.sensors.as_ref().and_then(|s| s.views.failure());
    if let Some(reason) = state.views.failure().or(sensor_failure) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failed", "reason": reason })),
        )
            .into_response();
    }
    if state.ready.load(Ordering::Acquire) {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready" })),
        )
            .into_response()
    }
}

/// A JSON body whose rejections (malformed, wrong type, too large) are API errors.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<SharedState> for ApiJson<T> {
    type Rejection = ServingError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::BytesRejection(rejection))
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ServingError::BodyTooLarge {
                    limit: state.config.body_limit,
                })
            }
            Err(rejection) => Err(ServingError::BadRequest(rejection.body_text())),
        }
    }
}

/// The authenticated caller: a verified access token, within its rate limit.
pub struct Caller(pub Claims);

impl FromRequestParts<SharedState> for Caller {
    type Rejection = ServingError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(ServingError::Unauthenticated);
        };
        let claims = match state.keys.verify(token) {
            Ok(claims) => claims,
            Err(error) => {
                state
                    .audit(
                        "anonymous",
                        "refused",
                        json!({ "path": parts.uri.path(), "reason": error.code() }),
                    )
                    .await;
                return Err(error);
            }
        };
        state
            .user_limits
            .check(&claims.sub.to_string())
            .map_err(|retry_after_s| ServingError::RateLimited { retry_after_s })?;
        Ok(Self(claims))
    }
}

impl Caller {
    pub(crate) async fn require(
        &self,
        state: &AppState,
        action: Action,
    ) -> Result<(), ServingError> {
        if action.allowed(self.0.role) {
            return Ok(());
        }
        let detail = json!({ "action": action.as_str(), "role": self.0.role.as_str() });
        state
            .audit(&self.0.sub.to_string(), "refused", detail)
            .await;
        Err(ServingError::Forbidden {
            role: self.0.role.as_str(),
            action: action.as_str(),
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Credentials {
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

#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Credentials, responses((status = 201, description = "a citizen account"), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn register(
    State(state): State<SharedState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ServingError> {
    let id = create_user(
        state.store.as_ref(),
        &body.username,
        &body.password,
        Role::Citizen,
    )
    .await?;
    state
        .audit(
            &id.to_string(),
            "register",
            json!({ "username": body.username }),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user_id": id, "role": Role::Citizen })),
    )
        .into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
struct TokenPair {
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
async fn login(
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
                json!({ "username": body.username, "reason": "bad_credentials" }),
            )
            .await;
        return Err(ServingError::BadCredentials);
    };
    if user.totp_enabled {
        let Some(code) = body.totp.as_deref() else {
            state
                .audit(
                    &user.id.to_string(),
                    "login_failed",
                    json!({ "reason": "totp_required" }),
                )
                .await;
            return Err(ServingError::TotpRequired);
        };
        if let Err(error) = check_totp(&state, &user, code).await {
            state
                .audit(
                    &user.id.to_string(),
                    "login_failed",
                    json!({ "reason": error.code() }),
                )
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
    state
        .audit(
            &user.id.to_string(),
            "login",
            json!({ "username": user.username }),
        )
        .await;
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
struct RefreshBody {
    refresh_token: String,
}

#[utoipa::path(post, path = "/api/v1/auth/refresh-token", tag = "auth", request_body = RefreshBody, responses((status = 200, body = TokenPair, description = "a new pair; the old refresh token is spent"), (status = 401, body = ErrorBody, description = "bad_refresh_token, refresh_token_reused (the family is revoked)")))]
async fn refresh_token(
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
                .audit(
                    &user.to_string(),
                    "refresh_token_reused",
                    json!({ "family": family }),
                )
                .await;
            Err(ServingError::RefreshTokenReused)
        }
        RefreshUse::Invalid => Err(ServingError::BadRefreshToken),
    }
}

#[utoipa::path(post, path = "/api/v1/auth/revoke-token", tag = "auth", request_body = RefreshBody, responses((status = 204, description = "the token's family is revoked")))]
async fn revoke_token(
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
struct VerifyBody {
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
async fn verify_expert(
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
    state
        .audit(&caller.0.sub.to_string(), "verify_user", detail.clone())
        .await;
    Ok(Json(detail))
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/enrol", tag = "auth", security(("bearer" = [])), responses((status = 200, description = "secret_base32 and otpauth_url; confirm with a code to turn 2FA on")))]
async fn totp_enrol(
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
    state
        .audit(&user.id.to_string(), "totp_enrol", json!({}))
        .await;
    Ok(Json(
        json!({ "secret_base32": secret_base32, "otpauth_url": url }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

#[utoipa::path(post, path = "/api/v1/auth/2fa/confirm", tag = "auth", request_body = CodeBody, security(("bearer" = [])), responses((status = 204, description = "2FA is on"), (status = 401, body = ErrorBody)))]
async fn totp_confirm(
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
        .audit(&user.id.to_string(), "totp_confirm", json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    title: String,
    #[serde(default)]
    region: String,
    options: Vec<String>,
    /// Microseconds since the Unix epoch; now if absent.
    #[serde(default)]
    opens_at: Option<i64>,
    closes_at: i64,
    /// Millionths per component (democratic, expert, community, environmental); sum 1000000.
    #[serde(default)]
    #[schema(value_type = Option<Vec<u32>>)]
    weights: Option<ComponentWeights>,
    #[serde(default)]
    quorum: u64,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "single_choice")]
    method: Method,
}

#[utoipa::path(post, path = "/api/v1/voting/decision/create", tag = "voting", request_body = DecisionBody, security(("bearer" = [])), responses((status = 201, description = "the decision, with its id"), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_decision(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<DecisionBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::CreateDecision).await?;
    let now = now_micros();
    let decision = Decision {
        id: DecisionId::new_random(),
        title: body.title,
        region: body.region,
        options: body.options,
        opens_at: body.opens_at.unwrap_or(now),
        closes_at: body.closes_at,
        weights: body.weights.unwrap_or_default(),
        quorum: body.quorum,
        method: body.method,
    };
    state.gate.register(decision.clone(), now)?;
    state
        .store
        .put_decision(&decision, caller.0.sub, unix_now() as i64)
        .await?;
    if let Some(engine) = &state.engine {
        engine.register(decision.clone());
    }
    state
        .audit(
            &caller.0.sub.to_string(),
            "create_decision",
            json!({ "decision_id": decision.id, "title": decision.title }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(decision)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CastBody {
    /// The idempotency key; generated if absent.
    #[serde(default)]
    vote_id: Option<Uuid>,
    decision_id: Uuid,
    option: u16,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CastReceipt {
    #[schema(value_type = uuid::Uuid)]
    vote_id: VoteId,
    #[schema(value_type = uuid::Uuid)]
    decision_id: DecisionId,
    /// {"partition": …, "offset": …}: pass the offset as min_offset to read your own vote.
    #[schema(value_type = Object)]
    position: Position,
    /// The vote's Merkle leaf hash (hex): SHA-256(0x00 ‖ leaf encoding), where the leaf
    /// encoding is the vote with the voter replaced by a salted commitment. Ask
    /// /api/v1/audit/decisions/{decision_id}/proof?leaf=… for its inclusion proof once a
    /// checkpoint covers it.
    leaf_hash: String,
    /// The leaf encoding (hex): the vote as the record holds it, the voter replaced by the
    /// salted commitment (layout in canopy-schemas' record module).
    leaf: String,
}

fn vote_for(claims: &Claims, body: &CastBody) -> Result<Vote, ServingError> {
    let voter_role = claims.role.voter_role().ok_or(ServingError::Forbidden {
        role: claims.role.as_str(),
        action: Action::CastVote.as_str(),
    })?;
    let component: Component = voter_role.component();
    Ok(Vote {
        vote_id: body.vote_id.map_or_else(VoteId::new_random, VoteId::from),
        decision_id: DecisionId::from(body.decision_id),
        voter_id: VoterId::from(claims.sub),
        option: body.option,
        component,
        weight: Weight(if component == Component::Democratic {
            Weight::ONE.0
        } else {
            claims.weight
        }),
        cast_at: now_micros(),
    })
}

fn receipt(logged: &LoggedVote, position: Position) -> CastReceipt {
    let leaf = logged.leaf_data();
    CastReceipt {
        vote_id: logged.vote.vote_id,
        decision_id: logged.vote.decision_id,
        position,
        leaf_hash: auth::hex(&canopy_chain::leaf_hash(&leaf)),
        leaf: auth::hex(&leaf),
    }
}

/// A decision this replica knows, or one another replica created since it started.
async fn known_decision(state: &SharedState, id: DecisionId) -> Result<Decision, ServingError> {
    if let Some(decision) = state.gate.decision(id) {
        return Ok(decision);
    }
    learn_decisions(state).await?;
    state
        .gate
        .decision(id)
        .ok_or(ServingError::NotFound { what: "decision" })
}

/// Registers with the gate the decisions another replica created since this one started.
async fn learn_decisions(state: &SharedState) -> Result<(), ServingError> {
    let now = now_micros();
    for decision in state.store.decisions().await? {
        if state.gate.decision(decision.id).is_none() {
            state.gate.register(decision, now)?;
        }
    }
    Ok(())
}

/// Stands each voter in for by their salted commitment, then appends durably.
async fn submit(
    state: &SharedState,
    votes: Vec<Vote>,
) -> Result<(Vec<LoggedVote>, Vec<Position>), ServingError> {
    let mut logged = Vec::with_capacity(votes.len());
    for vote in votes {
        let salt = state
            .salts
            .salt(state.store.as_ref(), vote.voter_id.as_uuid())
            .await?;
        logged.push(LoggedVote::new(vote, &VoterSalt(salt)));
    }
    let positions = match state.gate.submit_async(&logged).await {
        // Created on another replica since this one started: learn it and try once more
        // (the gate refused the whole batch, so nothing was appended).
        Err(IngestError::UnknownDecision { .. }) => {
            learn_decisions(state).await?;
            state.gate.submit_async(&logged).await?
        }
        result => result?,
    };
    Ok((logged, positions))
}

#[utoipa::path(post, path = "/api/v1/voting/cast-vote", tag = "voting", request_body = CastBody, security(("bearer" = [])), responses((status = 201, body = CastReceipt, description = "durable; voter, component and weight come from the token"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn cast_vote(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<CastBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::CastVote).await?;
    let vote = vote_for(&caller.0, &body)?;
    let (logged, positions) = submit(&state, vec![vote]).await?;
    Ok((StatusCode::CREATED, Json(receipt(&logged[0], positions[0]))).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchVote {
    /// The voter's own access token: a gateway relays votes, it does not speak for voters.
    voter_token: String,
    #[serde(flatten)]
    vote: CastBody,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    votes: Vec<BatchVote>,
}

#[utoipa::path(post, path = "/api/v1/voting/cast-votes", tag = "voting", request_body = BatchBody, security(("bearer" = [])), responses((status = 201, description = "receipts, in order"), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn cast_votes(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::CastForOthers).await?;
    if body.votes.is_empty() || body.votes.len() > 1_000 {
        return Err(ServingError::BadRequest(
            "a batch holds 1 to 1000 votes".into(),
        ));
    }
    let mut votes = Vec::with_capacity(body.votes.len());
    for (index, entry) in body.votes.iter().enumerate() {
        let claims = state
            .keys
            .verify(&entry.voter_token)
            .map_err(|e| ServingError::BadRequest(format!("vote {index}: {e}")))?;
        if !Action::CastVote.allowed(claims.role) {
            return Err(ServingError::BadRequest(format!(
                "vote {index}: the {} role does not vote",
                claims.role.as_str()
            )));
        }
        votes.push(vote_for(&claims, &entry.vote)?);
    }
    let (logged, positions) = submit(&state, votes).await?;
    let receipts: Vec<CastReceipt> = logged
        .iter()
        .zip(positions)
        .map(|(vote, position)| receipt(vote, position))
        .collect();
    Ok((StatusCode::CREATED, Json(json!({ "receipts": receipts }))).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FreshnessQuery {
    /// Wait until the result includes this offset of the decision's partition (the
    /// position a cast returned).
    #[serde(default)]
    min_offset: Option<u64>,
}

async fn current_view(
    state: &SharedState,
    id: Uuid,
    freshness: &FreshnessQuery,
) -> Result<(Decision, Option<DecisionView>), ServingError> {
    let decision_id = DecisionId::from(id);
    let decision = known_decision(state, decision_id).await?;
    let view = match freshness.min_offset {
        None => state.views.get(decision_id)?,
        Some(offset) => {
            let views = Arc::clone(&state.views);
            let partition = state.gate.log().partition_of(decision_id);
            let wait = state.config.max_results_wait;
            tokio::task::spawn_blocking(move || {
                views.wait_for(decision_id, Position { partition, offset }, wait)
            })
            .await
            .map_err(|e| ServingError::Internal(e.to_string()))??
        }
    };
    Ok((decision, view))
}

#[utoipa::path(get, path = "/api/v1/voting/decision/{id}/results", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id"), FreshnessQuery), security(("bearer" = [])), responses((status = 200, description = "composite score per option, turnout, quorum, as_of"), (status = 404, body = ErrorBody), (status = 504, body = ErrorBody, description = "results_timeout")))]
async fn results(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(freshness): Query<FreshnessQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadResults).await?;
    let (decision, view) = current_view(&state, id, &freshness).await?;
    let tally = view.as_ref().map(|v| &v.tally);
    let options: Vec<serde_json::Value> = decision
        .options
        .iter()
        .enumerate()
        .map(|(index, label)| {
            let composite = tally.map_or(0.0, |t| t.composite(index as u16));
            json!({ "option": index, "label": label, "composite": composite })
        })
        .collect();
    Ok(Json(json!({
        "decision_id": decision.id,
        "title": decision.title,
        "options": options,
        "turnout": tally.map_or(0, |t| t.turnout),
        "quorum": decision.quorum,
        "quorum_met": tally.is_some_and(|t| t.quorum_met),
        "as_of": view.map(|v| v.as_of),
    })))
}

#[utoipa::path(get, path = "/api/v1/voting/decision/{id}/breakdown", tag = "voting", params(("id" = uuid::Uuid, Path, description = "decision id"), FreshnessQuery), security(("bearer" = [])), responses((status = 200, description = "count, weight and share per option and component"), (status = 404, body = ErrorBody), (status = 504, body = ErrorBody)))]
async fn breakdown(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(freshness): Query<FreshnessQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadResults).await?;
    let (decision, view) = current_view(&state, id, &freshness).await?;
    let cells: Vec<serde_json::Value> = view
        .as_ref()
        .map(|v| v.tally.cells.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|cell| {
            json!({
                "option": cell.option,
                "component": cell.component,
                "count": cell.count,
                "weight": cell.weight_sum as f64 / f64::from(canopy_schemas::WEIGHT_SCALE),
                "share": cell.share_ppb as f64 / canopy_schemas::SHARE_SCALE as f64,
            })
        })
        .collect();
    Ok(Json(json!({
        "decision_id": decision.id,
        "component_weights": decision.weights,
        "cells": cells,
        "turnout_by_component": view.as_ref().map(|v| v.tally.turnout_by_component),
        "as_of": view.map(|v| v.as_of),
    })))
}

#[utoipa::path(get, path = "/api/v1/voting/active-decisions", tag = "voting", security(("bearer" = [])), responses((status = 200, description = "decisions open now")))]
async fn active_decisions(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<Vec<Decision>>, ServingError> {
    caller.require(&state, Action::ReadResults).await?;
    let now = now_micros();
    let decisions = state.store.decisions().await?;
    Ok(Json(
        decisions
            .into_iter()
            .filter(|d| d.opens_at <= now && now < d.closes_at)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/audit/trail", tag = "audit", security(("bearer" = [])), responses((status = 200, description = "every entry, and whether the hash chain is intact"), (status = 403, body = ErrorBody)))]
async fn audit_trail(
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
