//! The HTTP API, a module per resource. This module assembles the router and the OpenAPI
//! document from the handlers' own annotations, so neither can list a route the other lacks.
//!
//! ```text
//!  extract   ApiJson, Caller (token, per-user limit, role check), ErrorBody
//!  health    /healthz, /readyz
//!  accounts  /api/v1/auth/*              voting  /api/v1/voting/*
//!  audit     /api/v1/audit/trail[/anchors] record  /api/v1/audit/{key,decisions/*} (proofs,
//!            tlog/checkpoint, tlog/tile/*: C2SP tlog tiles), admin erasure
//!  rolls     /api/v1/admin/rolls*, /api/v1/rolls/claim
//!  sensors   /api/v1/data/*              analytics  /api/v1/analytics/sql
//!  sql_tokens /api/v1/analytics/sql-tokens[/{id}] (the PostgreSQL port's credentials)
//!  agents    /api/v1/agents/*            imports  /api/v1/data/import (external data)
//! ```

mod accounts;
mod agents;
mod analytics;
mod audit;
mod client;
mod extract;
mod health;
mod imports;
mod record;
mod rolls;
mod sensors;
mod sql_tokens;
pub(crate) mod voting;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub use accounts::create_user;
pub use extract::{ApiJson, Caller, ErrorBody};
pub use imports::MAX_IMPORT_BYTES;
pub use sensors::{MAX_STREAM_READINGS, MAX_UPLOAD_BYTES};

use crate::ServingError;
use crate::state::SharedState;

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

/// The router of the whole API, and the OpenAPI document generated from the same handlers.
pub fn router_and_openapi(state: SharedState) -> (Router, utoipa::openapi::OpenApi) {
    router_with(state, None)
}

/// The router of the whole API with the live push's socket.io layer (`/socket.io/`) inside
/// the per-address limit, so a flood of handshakes and polls is refused like any other.
pub fn router_with_push(state: SharedState, push: socketioxide::layer::SocketIoLayer) -> Router {
    router_with(state, Some(push)).0
}

fn router_with(
    state: SharedState,
    push: Option<socketioxide::layer::SocketIoLayer>,
) -> (Router, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let body_limit = state.config.body_limit;
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::refresh_token))
        .routes(routes!(accounts::revoke_token))
        .routes(routes!(accounts::verify_expert, accounts::my_verification))
        .routes(routes!(accounts::totp_enrol))
        .routes(routes!(accounts::totp_confirm))
        .routes(routes!(accounts::totp_disable))
        .routes(routes!(accounts::recovery_codes))
        .routes(routes!(accounts::change_password))
        .routes(routes!(voting::create_decision))
        .routes(routes!(voting::cast_vote))
        .routes(routes!(voting::cast_votes))
        .routes(routes!(voting::results))
        .routes(routes!(voting::breakdown))
        .routes(routes!(voting::active_decisions))
        .routes(routes!(voting::search_decisions))
        .routes(routes!(voting::decision, voting::edit_decision))
        .routes(routes!(voting::close_decision))
        .routes(routes!(voting::cancel_decision))
        .routes(routes!(voting::my_votes))
        .routes(routes!(audit::audit_trail))
        .routes(routes!(audit::audit_anchors))
        .routes(routes!(record::record_key))
        .routes(routes!(record::checkpoints))
        .routes(routes!(record::inclusion_proof))
        .routes(routes!(record::consistency_proof))
        .routes(routes!(record::checkpoint_anchor))
        .routes(routes!(record::tlog_checkpoint))
        .routes(routes!(record::final_result))
        .routes(routes!(record::tlog_tile))
        .routes(routes!(record::erase_voter))
        .routes(routes!(rolls::import_roll))
        .routes(routes!(rolls::roll_summary))
        .routes(routes!(rolls::reissue_entry))
        .routes(routes!(rolls::claim_invitation))
        .routes(routes!(sensors::register_sensor, sensors::list_sensors))
        .routes(routes!(sensors::process_sensor_data))
        .routes(routes!(sensors::ingest_environmental_data))
        .routes(routes!(sensors::region_metrics))
        .routes(routes!(sensors::historical_trends))
        .routes(routes!(sensors::alert_stream))
        .routes(routes!(imports::import_data))
        .routes(routes!(agents::analyze_proposal))
        .routes(routes!(agents::agent_status))
        .routes(routes!(agents::invoke_consensus))
        .routes(routes!(agents::recommendations))
        .routes(routes!(analytics::analytics_sql))
        .routes(routes!(
            sql_tokens::create_sql_token,
            sql_tokens::list_sql_tokens
        ))
        .routes(routes!(sql_tokens::revoke_sql_token))
        .split_for_parts();
    let mut openapi = openapi;
    complete_responses(&mut openapi);
    let document = Arc::new(openapi.clone());
    let router = router
        .route(
            "/api/v1/openapi.json",
            get(move || async move { Json(document.as_ref().clone()) }),
        )
        .route("/metrics", get(metrics_text))
        .fallback(client::client);
    let router = match push {
        Some(push) => router.layer(push),
        None => router,
    };
    let router = router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_by_address,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(crate::metrics::record_http))
        .with_state(state);
    (router, openapi)
}

/// The process's metrics for Prometheus (its text exposition format, version 0.0.4).
async fn metrics_text() -> Response {
    use axum::http::header;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// Adds to every operation the refusals any of its kind can answer, where its own
/// annotation does not list them: 401 to those that take a token, 400 and 422 to those
/// that take a path, query or body (malformed, or well-formed and invalid), 413 to those
/// with a body, and 429 (the per-address limit) to every one but the probes.
fn complete_responses(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let refusal = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        let probe = path == "/healthz" || path == "/readyz";
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let takes_token = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let takes_input =
                operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) || path.contains('{');
            let takes_body = operation.request_body.is_some();
            let mut add = |status: &str, what: &str| {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| refusal(what).into());
            };
            if takes_token {
                add(
                    "401",
                    "unauthenticated, invalid_token, token_expired, account_erased",
                );
            }
            if takes_input || takes_body {
                add("400", "bad_request: a malformed path, query string or body");
                add("422", "bad_request and the like: well-formed, not valid");
            }
            if takes_body {
                add("413", "body_too_large");
            }
            if !probe {
                add("429", "rate_limited: too many requests from this address");
            }
        }
    }
}

/// The router of the whole API.
pub fn router(state: SharedState) -> Router {
    router_and_openapi(state).0
}
/// axum's own refusals (a path segment that is not a UUID, a query string that does not
/// parse, a method the route lacks) are plain text; every error of the API is the JSON
/// error body with a code, so a client parses one shape.
async fn json_errors(request: Request, next: Next) -> Response {
    use axum::http::{StatusCode, header};
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        _ if status.is_server_error() => "internal",
        _ => "bad_request",
    };
    let (mut parts, body) = response.into_parts();
    let said = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&said).trim() {
        "" => status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_string(),
        said => said.to_string(),
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut response = (
        status,
        Json(serde_json::json!({ "error": { "code": code, "message": message } })),
    )
        .into_response();
    response
        .extensions_mut()
        .insert(crate::metrics::ErrorCode(code));
    // What the refusal said in its headers (`Allow`, `Retry-After`) stays.
    for (name, value) in parts.headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
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
