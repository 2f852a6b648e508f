//! The HTTP API, a module per resource. This module assembles the router and the OpenAPI
//! document from the handlers' own annotations, so neither can list a route the other lacks.
//!
//! ```text
//!  extract   ApiJson, Caller (token, per-user limit, role check), ErrorBody
//!  health    /healthz, /readyz
//!  accounts  /api/v1/auth/*              voting  /api/v1/voting/*
//!  audit     /api/v1/audit/trail[/anchors] record  /api/v1/audit/{key,decisions/*}, admin erasure
//!  rolls     /api/v1/admin/rolls*, /api/v1/rolls/claim
//!  sensors   /api/v1/data/*              analytics  /api/v1/analytics/sql
//! ```

mod accounts;
mod analytics;
mod audit;
mod extract;
mod health;
mod record;
mod rolls;
mod sensors;
mod voting;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub use accounts::create_user;
pub use extract::{ApiJson, Caller, ErrorBody};
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
        .routes(routes!(accounts::verify_expert))
        .routes(routes!(accounts::totp_enrol))
        .routes(routes!(accounts::totp_confirm))
        .routes(routes!(voting::create_decision))
        .routes(routes!(voting::cast_vote))
        .routes(routes!(voting::cast_votes))
        .routes(routes!(voting::results))
        .routes(routes!(voting::breakdown))
        .routes(routes!(voting::active_decisions))
        .routes(routes!(audit::audit_trail))
        .routes(routes!(audit::audit_anchors))
        .routes(routes!(record::record_key))
        .routes(routes!(record::checkpoints))
        .routes(routes!(record::inclusion_proof))
        .routes(routes!(record::consistency_proof))
        .routes(routes!(record::checkpoint_anchor))
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
        .routes(routes!(analytics::analytics_sql))
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
