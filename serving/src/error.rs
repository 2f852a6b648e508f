use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canopy_dataflow::DataflowError;
use canopy_ingest::IngestError;
use canopy_schemas::SchemaError;
use serde_json::json;

/// Everything the API can answer with instead of a result. Each variant maps to an HTTP
/// status and a stable machine-readable code; internal errors are logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("missing or malformed bearer token")]
    Unauthenticated,
    #[error("the token is not valid")]
    InvalidToken,
    #[error("the token has expired")]
    TokenExpired,
    /// Any failed sign-in: unknown user, wrong password, missing, wrong or spent code.
    #[error("the username, password or one-time code is not right")]
    BadCredentials,
    #[error("too many sign-in attempts for this account or address; retry in {retry_after_s} s")]
    TooManyAttempts { retry_after_s: u64 },
    #[error("too many sign-ins are being checked at once; retry in {retry_after_s} s")]
    Busy { retry_after_s: u64 },
    #[error("{0}")]
    WeakPassword(&'static str),
    #[error("the refresh token is unknown, expired or revoked")]
    BadRefreshToken,
    #[error("the refresh token was already used; every token of its family is revoked")]
    RefreshTokenReused,
    #[error("the {role} role may not {action}")]
    Forbidden {
        role: &'static str,
        action: &'static str,
    },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// A decision's lifecycle is its owner's (or an admin's) to change.
    #[error("only the decision's owner or an admin may {action}")]
    NotOwner { action: &'static str },
    #[error("decision {decision} is no longer scheduled: it can no longer be edited")]
    DecisionNotEditable {
        decision: canopy_schemas::DecisionId,
    },
    #[error("decision {decision} is not open")]
    DecisionNotOpen {
        decision: canopy_schemas::DecisionId,
    },
    #[error("decision {decision} has votes: it can no longer be cancelled, only closed")]
    DecisionHasVotes {
        decision: canopy_schemas::DecisionId,
    },
    #[error("decision {decision} is closed")]
    DecisionClosed {
        decision: canopy_schemas::DecisionId,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "vote id {vote_id} was cast before with another decision or option: a new vote needs a new id"
    )]
    VoteIdReused { vote_id: canopy_schemas::VoteId },
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// A query parameter outside its vocabulary or range; `code` says which (400).
    #[error("{message}")]
    BadParameter { code: &'static str, message: String },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("too many requests; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("too many new accounts from this address or its block; retry in {retry_after_s} s")]
    TooManyRegistrations { retry_after_s: u64 },
    #[error("the invitation code is unknown or was already used")]
    InvalidInvitation,
    #[error("this account already holds an entry of that roll")]
    RollAlreadyClaimed,
    #[error("too many invitation codes tried; retry in {retry_after_s} s")]
    TooManyClaimAttempts { retry_after_s: u64 },
    #[error("too many reads of this account wait for a position; retry in {retry_after_s} s")]
    TooManyWaits { retry_after_s: u64 },
    #[error("the roll is not valid CSV: {0}")]
    BadRoll(String),
    #[error("this account was erased")]
    AccountErased,
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Ingest(IngestError),
    #[error(transparent)]
    Dataflow(#[from] DataflowError),
    /// The record cannot answer yet: no checkpoint covers the vote (`not_checkpointed`), or
    /// the checkpoint is not anchored yet (`not_anchored`). Retry later.
    #[error("{message}")]
    NotYet { code: &'static str, message: String },
    #[error(
        "this replica does not hold the vote record (it runs no engine); ask a node started with `canopy up`"
    )]
    RecordNotHere,
    #[error("reading {index}: {source}")]
    InvalidReading { index: usize, source: SchemaError },
    #[error(
        "this replica does not process sensor data (it runs no engine); send it to a node started with `canopy up`"
    )]
    SensorsNotHere,
    #[error("the upload is not valid {format}: {reason}")]
    BadUpload {
        format: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Chain(#[from] canopy_chain::ChainError),
    #[error(transparent)]
    Analytics(#[from] canopy_analytics::AnalyticsError),
    #[error(transparent)]
    Agents(#[from] canopy_agents::AgentError),
    #[error("this node keeps no analytics lake (start it with --lake)")]
    LakeNotHere,
    #[error("another import is running on this node; retry in {retry_after_s} s")]
    ImportInProgress { retry_after_s: u64 },
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<IngestError> for ServingError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::InvalidVote { source, .. }
            | IngestError::InvalidDecision { source, .. } => Self::Schema(source),
            IngestError::DecisionClosed { decision, .. } => Self::DecisionClosed { decision },
            other => Self::Ingest(other),
        }
    }
}

impl From<sqlx::Error> for ServingError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.to_string())
    }
}

impl ServingError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::BadCredentials => "bad_credentials",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::Busy { .. } => "busy",
            Self::WeakPassword(_) => "weak_password",
            Self::BadRefreshToken => "bad_refresh_token",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::Forbidden { .. } => "forbidden",
            Self::NotFound { .. } => "not_found",
            Self::NotOwner { .. } => "not_owner",
            Self::DecisionNotEditable { .. } => "decision_not_editable",
            Self::DecisionNotOpen { .. } => "decision_not_open",
            Self::DecisionHasVotes { .. } => "decision_has_votes",
            Self::DecisionClosed { .. } => "decision_closed",
            Self::Conflict(_) => "conflict",
            Self::VoteIdReused { .. } => "vote_id_reused",
            Self::BadRequest(_) => "bad_request",
            Self::BadParameter { code, .. } => code,
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyRegistrations { .. } => "too_many_registrations",
            Self::InvalidInvitation => "invalid_invitation",
            Self::RollAlreadyClaimed => "roll_already_claimed",
            Self::TooManyClaimAttempts { .. } => "too_many_claim_attempts",
            Self::TooManyWaits { .. } => "too_many_waits",
            Self::BadRoll(_) => "bad_roll",
            Self::AccountErased => "account_erased",
            Self::Schema(error) => error.code(),
            Self::Ingest(error) => error.code(),
            Self::Dataflow(error) => error.code(),
            Self::NotYet { code, .. } => code,
            Self::RecordNotHere => "record_not_here",
            Self::InvalidReading { source, .. } => source.code(),
            Self::SensorsNotHere => "sensors_not_here",
            Self::BadUpload { .. } => "bad_upload",
            Self::Chain(error) => error.code(),
            Self::Analytics(error) => error.code(),
            Self::LakeNotHere => "lake_not_here",
            Self::ImportInProgress { .. } => "import_in_progress",
            Self::Agents(error) => error.code(),
            Self::Storage(_) => "storage",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated
            | Self::InvalidToken
            | Self::TokenExpired
            | Self::BadCredentials
            | Self::AccountErased => StatusCode::UNAUTHORIZED,
            Self::BadRefreshToken | Self::RefreshTokenReused => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } | Self::NotOwner { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } | Self::InvalidInvitation => StatusCode::NOT_FOUND,
            Self::Conflict(_)
            | Self::VoteIdReused { .. }
            | Self::NotYet { .. }
            | Self::RollAlreadyClaimed
            | Self::DecisionNotEditable { .. }
            | Self::DecisionNotOpen { .. }
            | Self::DecisionHasVotes { .. }
            | Self::DecisionClosed { .. } => StatusCode::CONFLICT,
            Self::Chain(canopy_chain::ChainError::BadTilePath(_)) | Self::BadParameter { .. } => {
                StatusCode::BAD_REQUEST
            }
            // The record store failed or is behind: the request may succeed later.
            Self::Chain(
                canopy_chain::ChainError::TileStore(_)
                | canopy_chain::ChainError::TileMissing(_)
                | canopy_chain::ChainError::TileConflict(_)
                | canopy_chain::ChainError::BadTile(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Chain(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Analytics(error) => match error.code() {
                "sql"
                | "sql_not_read_only"
                | "sql_limit"
                | "import_refused"
                | "import_format"
                | "bad_region_map"
                | "unknown_import_source" => StatusCode::UNPROCESSABLE_ENTITY,
                "query_timeout" => StatusCode::GATEWAY_TIMEOUT,
                "query_memory_exceeded" => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::LakeNotHere => StatusCode::SERVICE_UNAVAILABLE,
            Self::ImportInProgress { .. } => StatusCode::CONFLICT,
            Self::Agents(error) => match error {
                canopy_agents::AgentError::InvalidStatement(_) => StatusCode::UNPROCESSABLE_ENTITY,
                canopy_agents::AgentError::UnknownVersion(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::Schema(SchemaError::NotEligible { .. }) => StatusCode::FORBIDDEN,
            Self::BadRequest(_)
            | Self::Schema(_)
            | Self::InvalidReading { .. }
            | Self::BadUpload { .. }
            | Self::BadRoll(_)
            | Self::WeakPassword(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. }
            | Self::TooManyRegistrations { .. }
            | Self::TooManyClaimAttempts { .. }
            | Self::TooManyWaits { .. }
            | Self::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Ingest(IngestError::UnknownDecision { .. }) => StatusCode::NOT_FOUND,
            Self::Ingest(IngestError::DecisionFrozen { .. }) => StatusCode::CONFLICT,
            Self::Dataflow(DataflowError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Self::RecordNotHere
            | Self::SensorsNotHere
            | Self::Ingest(_)
            | Self::Dataflow(_)
            | Self::Storage(_)
            | Self::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn is_internal(&self) -> bool {
        self.status().is_server_error()
            && !matches!(
                self,
                Self::Dataflow(DataflowError::Timeout { .. })
                    | Self::Analytics(_)
                    | Self::LakeNotHere
                    | Self::Agents(_)
                    | Self::RecordNotHere
                    | Self::SensorsNotHere
                    | Self::Busy { .. }
            )
    }
}

/// Requests this process answered with an internal error since it started.
static INTERNAL_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many requests this process answered with an internal error (a 5xx it logged).
pub fn internal_errors() -> u64 {
    INTERNAL_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

impl IntoResponse for ServingError {
    fn into_response(self) -> Response {
        let message = if self.is_internal() {
            INTERNAL_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("canopy_internal_errors_total").increment(1);
            tracing::error!(code = self.code(), error = %self, "request failed");
            "the service could not complete the request; it has been logged".to_string()
        } else {
            self.to_string()
        };
        let mut response = (
            self.status(),
            axum::Json(json!({ "error": { "code": self.code(), "message": message } })),
        )
            .into_response();
        response
            .extensions_mut()
            .insert(crate::metrics::ErrorCode(self.code()));
        if let Self::RateLimited { retry_after_s }
        | Self::TooManyRegistrations { retry_after_s }
        | Self::TooManyClaimAttempts { retry_after_s }
        | Self::TooManyWaits { retry_after_s }
        | Self::TooManyAttempts { retry_after_s }
        | Self::ImportInProgress { retry_after_s }
        | Self::Busy { retry_after_s } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
        }
        // An analysis takes well under a second once its evidence is read: come back in one.
        if let Self::Agents(canopy_agents::AgentError::Busy) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        }
        response
    }
}
