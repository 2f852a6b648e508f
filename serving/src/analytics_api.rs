//! The analytics lake over HTTP:
//!
//! ```text
//!  POST /api/v1/analytics/sql            one read-only statement; rows stream as they come
//!  GET  /api/v1/data/historical-trends   (bucket=day|week, or decision_id) from the lake
//! ```
//!
//! Queries run under the node's limits (time, memory) and at most `concurrent` at once;
//! another is refused with `rate_limited` rather than queued behind a long scan.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use canopy_analytics::{BatchEncoder, LakeSql, OutputFormat};
use canopy_schemas::{DecisionId, Metric};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::ServingError;
use crate::app::{ApiJson, Caller, SharedState};
use crate::auth::Action;

/// What a node that keeps a lake holds for its readers.
#[derive(Debug)]
pub struct AnalyticsService {
    pub sql: LakeSql,
    /// Queries running at once.
    pub running: Arc<tokio::sync::Semaphore>,
}

impl AnalyticsService {
    pub fn new(sql: LakeSql, concurrent: usize) -> Self {
        Self {
            sql,
            running: Arc::new(tokio::sync::Semaphore::new(concurrent.max(1))),
        }
    }
}

fn service(state: &SharedState) -> Result<&AnalyticsService, ServingError> {
    state.analytics.as_deref().ok_or(ServingError::LakeNotHere)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SqlRequest {
    /// One read-only statement over votes, decisions, tally_changes, checkpoints,
    /// sensor_readings and window_features.
    sql: String,
    /// `json` (JSON lines, one object per row; the default) or `csv` (with a header).
    #[serde(default)]
    format: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/analytics/sql", tag = "analytics", request_body = SqlRequest, security(("bearer" = [])), responses(
    (status = 200, description = "the rows as they are computed: JSON lines or CSV. An error after the first rows ends the body with a line {\"error\":{\"code\",\"message\"}} (CSV: `# error <code>: <message>`)"),
    (status = 403, body = crate::app::ErrorBody),
    (status = 422, body = crate::app::ErrorBody, description = "sql (not valid SQL, unknown table or column), sql_not_read_only"),
    (status = 429, body = crate::app::ErrorBody, description = "as many queries are running as the node allows"),
    (status = 503, body = crate::app::ErrorBody, description = "lake_not_here"),
    (status = 504, body = crate::app::ErrorBody, description = "query_timeout")))]
pub(crate) async fn analytics_sql(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<SqlRequest>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::QueryAnalytics).await?;
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
    let permit = Arc::clone(&service.running)
        .try_acquire_owned()
        .map_err(|_| ServingError::RateLimited { retry_after_s: 1 })?;
    state
        .audit(
            &caller.0.sub.to_string(),
            "analytics_sql",
            json!({ "sql": request.sql }),
        )
        .await;
    let stream = service.sql.execute(&request.sql).await?;
    let mut encoder = BatchEncoder::new(format);
    let body = stream
        .map(move |batch| {
            // The permit lives as long as the body: a slow reader holds its slot.
            let _running = &permit;
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

/// A trends bucket the lake answers.
fn bucket_unit(bucket: &str) -> Option<&'static str> {
    match bucket {
        "hour" => Some("hour"),
        "day" => Some("day"),
        "week" => Some("week"),
        _ => None,
    }
}

fn sql_text(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Time bounds (epoch ms, either open) as a SQL condition on `column`.
fn range_condition(column: &str, from_ms: Option<i64>, to_ms: Option<i64>) -> String {
    let mut parts = Vec::new();
    if let Some(from) = from_ms {
        parts.push(format!(
            "{column} >= to_timestamp_micros({})",
            from.saturating_mul(1000)
        ));
    }
    if let Some(to) = to_ms {
        parts.push(format!(
            "{column} < to_timestamp_micros({})",
            to.saturating_mul(1000)
        ));
    }
    if parts.is_empty() {
        "TRUE".into()
    } else {
        parts.join(" AND ")
    }
}

/// What a trends question from the lake is about.
pub(crate) enum TrendsSubject<'a> {
    Sensors {
        region: &'a str,
        metric: Metric,
        sensor: Option<&'a str>,
    },
    Decision(DecisionId),
}

/// Buckets of a region's (or a sensor's) readings, or of a decision's votes, over any range,
/// from the lake. Readings taken during maintenance are left out, as the features leave
/// them out.
pub(crate) async fn trends_from_lake(
    state: &SharedState,
    subject: TrendsSubject<'_>,
    bucket: &str,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> Result<serde_json::Value, ServingError> {
    let service = service(state)?;
    let Some(unit) = bucket_unit(bucket) else {
        return Err(ServingError::BadRequest(format!(
            "bucket {bucket:?} is not minute, hour, day or week"
        )));
    };
    let sql = match &subject {
        TrendsSubject::Sensors {
            region,
            metric,
            sensor,
        } => format!(
            "SELECT date_trunc('{unit}', observed_at) AS bucket_start, COUNT(*) AS count, \
             AVG(value) AS mean, STDDEV_POP(value) AS std_dev, MIN(value) AS min, MAX(value) AS max \
             FROM sensor_readings WHERE region = {region} AND metric = {metric} {sensor} \
             AND quality <> 'maintenance' AND {range} \
             GROUP BY 1 ORDER BY 1",
            region = sql_text(region),
            metric = sql_text(metric.as_str()),
            sensor = sensor
                .map(|s| format!("AND sensor = {}", sql_text(s)))
                .unwrap_or_default(),
            range = range_condition("observed_at", from_ms, to_ms),
        ),
        TrendsSubject::Decision(decision) => format!(
            "SELECT date_trunc('{unit}', cast_at) AS bucket_start, option, COUNT(*) AS votes, \
             COUNT(DISTINCT voter_commitment) AS voters, SUM(weight_millionths) AS weight_millionths \
             FROM votes WHERE decision_id = {decision} AND {range} \
             GROUP BY 1, 2 ORDER BY 1, 2",
            decision = sql_text(&decision.to_string()),
            range = range_condition("cast_at", from_ms, to_ms),
        ),
    };
    let batches = service.sql.query(&sql).await?;
    let mut encoder = BatchEncoder::new(OutputFormat::Json);
    let mut points = Vec::new();
    for batch in &batches {
        let lines = encoder.encode(batch)?;
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let point: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| ServingError::Internal(format!("encoding a trend point: {e}")))?;
            points.push(point);
        }
    }
    Ok(json!({
        "source": "lake",
        "bucket": unit,
        "points": points,
    }))
}
