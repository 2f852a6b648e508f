//! The analytics lake over HTTP:
//!
//! ```text
//!  POST /api/v1/analytics/sql            one read-only statement; rows stream as they come
//!  GET  /api/v1/data/historical-trends   (bucket=day|week, or decision_id) from the lake
//! ```
//!
//! Queries run under the node's limits (time, memory) and at most `concurrent` at once
//! (SQL and lake trends together); another is refused with `rate_limited` rather than
//! queued behind a long scan. A query's slot is freed when the query stops computing (its
//! last row computed, its deadline passed, or its client gone), not when a client that
//! stopped reading gets round to it.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use canopy_analytics::{
    BatchEncoder, LakeReader, OutputFormat, TimeRange, TrendBucket, TrendsSubject, trend_points,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::extract::{ApiJson, Caller};
use crate::ServingError;
use crate::auth::Action;
use crate::state::{AnalyticsService, SharedState};

fn service(state: &SharedState) -> Result<&AnalyticsService, ServingError> {
    state.analytics.as_deref().ok_or(ServingError::LakeNotHere)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SqlRequest {
    /// One read-only statement over the caller's tables: for analysts votes, decisions,
    /// decision_history, tally_changes, checkpoints, sensor_readings, window_features and
    /// the imported weather_daily, indicators and regions; for auditors audit_trail, decisions and decision_history; for admins all of them.
    sql: String,
    /// `json` (JSON lines, one object per row; the default) or `csv` (with a header).
    #[serde(default)]
    format: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/analytics/sql", tag = "analytics", request_body = SqlRequest, security(("bearer" = [])), responses(
    (status = 200, description = "the rows as they are computed: JSON lines or CSV. An error after the first rows ends the body with a line {\"error\":{\"code\",\"message\"}} (CSV: `# error <code>: <message>`); an error before the first row is an error status"),
    (status = 403, body = super::ErrorBody, description = "neither an analyst, an auditor nor an admin"),
    (status = 422, body = super::ErrorBody, description = "sql (not valid SQL, unknown table (one the caller's role does not read included) or column, an error such as division by zero before the first row), sql_not_read_only, sql_limit (a function asked to build a value or batch larger than a query may)"),
    (status = 429, body = super::ErrorBody, description = "as many queries are running as the node allows"),
    (status = 503, body = super::ErrorBody, description = "lake_not_here"),
    (status = 504, body = super::ErrorBody, description = "query_timeout")))]
pub(crate) async fn analytics_sql(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<SqlRequest>,
) -> Result<Response, ServingError> {
    // Each reader sees its own tables: the audit trail only those who may read it.
    let role = caller.0.role;
    let reader = match (
        Action::QueryAnalytics.allowed(role),
        Action::ReadAudit.allowed(role),
    ) {
        (true, true) => LakeReader::Admin,
        (false, true) => LakeReader::Auditor,
        _ => {
            caller.require(&state, Action::QueryAnalytics).await?;
            LakeReader::Analyst
        }
    };
    let service = service(&state)?;
    let (format, content_type) = match request.format.as_deref().unwrap_or("json") {
        "json" | "jsonl" | "ndjson" => (OutputFormat::Json, "application/x-ndjson"),
        "csv" => (OutputFormat::Csv, "text/csv; charset=utf-8"),
        other => {
            return Err(ServingError::BadRequest(format!(
                "format {other:?} is not json or csv"
            )));
        }
    };
    let permit = std::sync::Arc::clone(&service.running)
        .try_acquire_owned()
        .map_err(|_| ServingError::RateLimited { retry_after_s: 1 })?;
    state
        .audit(
            &caller.0.sub.to_string(),
            "analytics_sql",
            json!({ "sql": request.sql }),
        )
        .await;
    let started = std::time::Instant::now();
    let mut stream = service
        .sql
        .for_reader(reader)
        .execute(&request.sql)
        .instrument(tracing::info_span!(
            "sql.query",
            db.system = "datafusion",
            otel.kind = "client"
        ))
        .await
        .inspect_err(|_| canopy_analytics::record_query("http", started, false))?;
    stream.observe("http", started);
    // The slot is the query's, not the reader's: a client that stops reading does not keep
    // it past the deadline.
    let finished = stream.finished();
    tokio::spawn(async move {
        finished.await;
        drop(permit);
    });
    // Until a row is ready an error can still be a status, not a line in a 200 body.
    let mut first = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let has_rows = batch.num_rows() > 0;
        first.push(Ok(batch));
        if has_rows {
            break;
        }
    }
    let mut encoder = BatchEncoder::new(format);
    let body = futures_util::stream::iter(first)
        .chain(stream)
        .map(move |batch| {
            let bytes = match batch.and_then(|batch| encoder.encode(&batch)) {
                Ok(bytes) => bytes,
                Err(error) => match format {
                    OutputFormat::Csv => {
                        format!("# error {}: {error}\n", error.code()).into_bytes()
                    }
                    _ => format!(
                        "{}\n",
                        json!({ "error": { "code": error.code(), "message": error.to_string() } })
                    )
                    .into_bytes(),
                },
            };
            Ok::<_, std::convert::Infallible>(bytes)
        })
        .boxed();
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response())
}

/// Buckets of a region's (or a sensor's) readings, or of a decision's votes, over any range,
/// from the lake.
pub(crate) async fn trends_from_lake(
    state: &SharedState,
    subject: TrendsSubject<'_>,
    bucket: &str,
    range: TimeRange,
) -> Result<serde_json::Value, ServingError> {
    let service = service(state)?;
    let Some(bucket) = TrendBucket::parse(bucket) else {
        return Err(ServingError::BadRequest(format!(
            "bucket {bucket:?} is not minute, hour, day or week"
        )));
    };
    // Trends scan the lake as SQL does, under the same limit on queries at once.
    let _running = std::sync::Arc::clone(&service.running)
        .try_acquire_owned()
        .map_err(|_| ServingError::RateLimited { retry_after_s: 1 })?;
    let points = trend_points(service.sql.as_ref(), subject, bucket, range).await?;
    Ok(json!({
        "source": "lake",
        "bucket": bucket.as_str(),
        "points": points,
    }))
}
