//! Liveness and readiness, for load balancers and orchestrators.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::SharedState;

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up")))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready to serve"), (status = 503, description = "starting, stopping, or failed (the dataflow stopped on a corrupt log or a diverged record)")))]
pub(crate) async fn readyz(State(state): State<SharedState>) -> Response {
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
