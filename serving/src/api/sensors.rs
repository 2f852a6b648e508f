//! Environmental data: the sensor registry, reading ingest (streaming and bulk), window
//! features, trends and alerts.
//!
//! ```text
//!  POST /api/v1/data/sensors                     register a sensor (operator, admin)
//!  POST /api/v1/data/process-sensor-data         one reading or a JSON array: all or nothing
//!  POST /api/v1/data/ingest-environmental-data   CSV or JSON lines: good rows kept, bad listed
//!      └─ validate against the registry ─▶ SensorLog::append_async (durable) ─▶ positions
//!  GET  /api/v1/data/metrics/{region}            newest windows per metric, anomalies, as_of
//!  GET  /api/v1/data/historical-trends           a region's windows over a range
//!  GET  /api/v1/data/alerts/stream               threshold alerts as server-sent events
//! ```
//!
//! Features are read through `SensorViewRead`: the in-process views in `canopy up`, Redis on
//! a cluster's `canopy serve` replica (which appends readings to the sensor topic).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use canopy_analytics::{TimeRange, TrendsSubject};
use canopy_dataflow::{Owner, SensorViewRead, WindowSize, WindowView};
use canopy_ingest::Position;
use canopy_schemas::{
    DecisionId, Metric, RawReading, Sensor, SensorReading, SensorRegistry, name_key,
    parse_event_time,
};
use serde::Deserialize;
use serde_json::json;

use super::analytics::trends_from_lake;
use super::extract::{ApiJson, Caller};
use crate::ServingError;
use crate::auth::Action;
use crate::state::{SensorService, SharedState};
use canopy_schemas::clock::{now_micros, now_millis};

/// The most readings one streaming request carries (the 64 KiB body limit holds about 500
/// typical ones; larger sets go to the bulk upload).
pub const MAX_STREAM_READINGS: usize = 1_000;
/// The largest bulk upload.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;
/// Good rows are appended in chunks of this many.
const APPEND_CHUNK: usize = 10_000;
/// A bulk report lists at most this many bad rows (and counts them all).
const MAX_LISTED_ERRORS: usize = 1_000;

fn service(state: &SharedState) -> Result<&SensorService, ServingError> {
    state.sensors.as_deref().ok_or(ServingError::SensorsNotHere)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SensorBody {
    sensor_id: String,
    region: String,
    latitude: f64,
    longitude: f64,
    /// Metric names, e.g. `["pm25", "no2"]`.
    metrics: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/data/sensors", tag = "data", request_body = SensorBody, security(("bearer" = [])), responses((status = 201, description = "the sensor is registered (or its registration replaced)"), (status = 422, body = super::ErrorBody)))]
pub(crate) async fn register_sensor(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<SensorBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::RegisterSensors).await?;
    let sensors = service(&state)?;
    let metrics = body
        .metrics
        .iter()
        .map(|m| m.parse::<Metric>())
        .collect::<Result<Vec<_>, _>>()?;
    let sensor = Sensor {
        sensor_id: body.sensor_id,
        region: body.region,
        latitude: body.latitude,
        longitude: body.longitude,
        metrics,
    };
    canopy_schemas::validate_sensor(&sensor)?;
    state.store.put_sensor(&sensor, now_micros()).await?;
    sensors
        .registry
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(sensor.clone())?;
    state
        .audit(
            &caller.0.sub.to_string(),
            "sensor_registered",
            json!({ "sensor_id": sensor.sensor_id, "region": sensor.region }),
        )
        .await;
    Ok((StatusCode::CREATED, Json(json!({ "sensor": sensor }))).into_response())
}

#[utoipa::path(get, path = "/api/v1/data/sensors", tag = "data", security(("bearer" = [])), responses((status = 200, description = "every registered sensor")))]
pub(crate) async fn list_sensors(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadEnvironment).await?;
    let sensors = service(&state)?;
    let mut list: Vec<Sensor> = sensors
        .registry
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .sensors()
        .cloned()
        .collect();
    list.sort_by(|a, b| a.sensor_id.cmp(&b.sensor_id));
    Ok(Json(json!({ "sensors": list })))
}

/// One reading as JSON: the streaming body, or one line of a JSON-lines upload.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadingBody {
    sensor_id: String,
    #[serde(default)]
    region: Option<String>,
    metric: String,
    #[serde(default)]
    unit: Option<String>,
    /// A number (or a numeric string, as some exports write them).
    #[schema(value_type = f64)]
    value: serde_json::Value,
    /// RFC 3339 (`2026-06-01T00:00:10Z`) or integer milliseconds since the Unix epoch.
    #[serde(alias = "observed_at", alias = "datetime")]
    #[schema(value_type = String)]
    timestamp: serde_json::Value,
    #[serde(default)]
    quality: Option<String>,
}

impl ReadingBody {
    fn validate(
        &self,
        registry: &SensorRegistry,
        now: i64,
    ) -> Result<SensorReading, canopy_schemas::SchemaError> {
        let value = match &self.value {
            serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            serde_json::Value::String(text) => text.trim().parse().unwrap_or(f64::NAN),
            _ => f64::NAN,
        };
        let observed_at = match &self.timestamp {
            serde_json::Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| canopy_schemas::SchemaError::BadTimestamp(n.to_string()))?,
            serde_json::Value::String(text) => parse_event_time(text)?,
            other => return Err(canopy_schemas::SchemaError::BadTimestamp(other.to_string())),
        };
        registry.validate(
            &RawReading {
                sensor_id: &self.sensor_id,
                region: self.region.as_deref(),
                metric: &self.metric,
                unit: self.unit.as_deref(),
                value,
                observed_at,
                quality: self.quality.as_deref(),
            },
            now,
        )
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum StreamBody {
    One(ReadingBody),
    Many(Vec<ReadingBody>),
}

/// The position after each partition's last appended reading: wait for these in the views.
fn ends_of(positions: &[Position]) -> Vec<Position> {
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for position in positions {
        let end = ends.entry(position.partition).or_default();
        *end = (*end).max(position.offset + 1);
    }
    ends.into_iter()
        .map(|(partition, offset)| Position { partition, offset })
        .collect()
}

#[utoipa::path(post, path = "/api/v1/data/process-sensor-data", tag = "data", request_body = StreamBody, security(("bearer" = [])), responses((status = 201, description = "every reading is durable in the sensor log: positions"), (status = 422, body = super::ErrorBody, description = "a reading was refused (its index and code); nothing was stored")))]
pub(crate) async fn process_sensor_data(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<StreamBody>,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::SubmitReadings).await?;
    let sensors = service(&state)?;
    let bodies = match body {
        StreamBody::One(one) => vec![one],
        StreamBody::Many(many) => many,
    };
    if bodies.is_empty() || bodies.len() > MAX_STREAM_READINGS {
        return Err(ServingError::BadRequest(format!(
            "send 1 to {MAX_STREAM_READINGS} readings per request"
        )));
    }
    let readings = {
        let registry = sensors
            .registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_millis();
        bodies
            .iter()
            .enumerate()
            .map(|(index, body)| {
                body.validate(&registry, now)
                    .map_err(|source| ServingError::InvalidReading { index, source })
            })
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|_| {
                metrics::counter!("canopy_readings_rejected_total").increment(bodies.len() as u64);
            })?
    };
    let positions = sensors.log.append_async(&readings).await?;
    metrics::counter!("canopy_readings_accepted_total").increment(positions.len() as u64);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "accepted": positions.len(), "positions": positions, "as_of": ends_of(&positions) })),
    )
        .into_response())
}

/// One row of an upload, parsed but not yet validated, with its line number.
struct UploadRow {
    line: usize,
    parsed: Result<ReadingBody, ServingError>,
}

fn parse_json_lines(text: &str) -> Vec<UploadRow> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| UploadRow {
            line: index + 1,
            parsed: serde_json::from_str::<ReadingBody>(line)
                .map_err(|e| ServingError::BadRequest(format!("not a reading object: {e}"))),
        })
        .collect()
}

/// Column names of the CSV exports air-quality networks publish (OpenAQ's among them),
/// mapped to reading fields. Other columns (coordinates, station names) are ignored.
fn csv_field(header: &str) -> Option<&'static str> {
    let normal = header
        .trim()
        .trim_start_matches('\u{feff}')
        .to_ascii_lowercase();
    Some(match normal.as_str() {
        "sensor_id" | "sensors_id" | "sensor" | "sensorid" => "sensor_id",
        "region" | "area" => "region",
        "metric" | "parameter" | "pollutant" => "metric",
        "unit" | "units" => "unit",
        "value" | "measurement" | "concentration" => "value",
        "timestamp" | "datetime" | "datetimeutc" | "date_utc" | "observed_at" | "time" | "utc" => {
            "timestamp"
        }
        "quality" | "flag" | "qc" => "quality",
        _ => return None,
    })
}

fn parse_csv(text: &str) -> Result<Vec<UploadRow>, ServingError> {
    let bad = |reason: String| ServingError::BadUpload {
        format: "CSV",
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let columns: Vec<Option<&'static str>> = headers.iter().map(csv_field).collect();
    for required in ["sensor_id", "metric", "value", "timestamp"] {
        if !columns.contains(&Some(required)) {
            return Err(bad(format!(
                "the header has no {required} column (it has: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let (line, parsed) = match record {
            Ok(record) => {
                let line = record.position().map_or(0, |p| p.line() as usize);
                let mut fields = serde_json::Map::new();
                for (value, column) in record.iter().zip(&columns) {
                    if let Some(column) = column
                        && !value.is_empty()
                    {
                        fields.insert((*column).into(), serde_json::Value::String(value.into()));
                    }
                }
                let parsed = serde_json::from_value::<ReadingBody>(fields.into()).map_err(|e| {
                    ServingError::BadRequest(format!("a required field is missing: {e}"))
                });
                (line, parsed)
            }
            Err(error) => {
                let line = error.position().map_or(0, |p| p.line() as usize);
                (line, Err(bad(error.to_string())))
            }
        };
        rows.push(UploadRow { line, parsed });
    }
    Ok(rows)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct UploadQuery {
    /// `csv` or `jsonl`; otherwise taken from the Content-Type.
    #[serde(default)]
    format: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/data/ingest-environmental-data", tag = "data", params(UploadQuery), request_body(content = String, description = "CSV with a header row (text/csv) or JSON lines (application/x-ndjson), up to 64 MiB"), security(("bearer" = [])), responses((status = 200, description = "good rows durable in the sensor log; each bad row listed with its line number and code"), (status = 422, body = super::ErrorBody, description = "not CSV / JSON lines at all, or no row at all")))]
pub(crate) async fn ingest_environmental_data(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::SubmitReadings).await?;
    let sensors = service(&state)?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let format = match query.format.as_deref().map(str::to_ascii_lowercase) {
        Some(f) if f == "csv" => "csv",
        Some(f) if f == "jsonl" || f == "ndjson" => "jsonl",
        Some(other) => {
            return Err(ServingError::BadRequest(format!(
                "format {other:?} is not csv or jsonl"
            )));
        }
        None if content_type.contains("csv") => "csv",
        None if content_type.contains("ndjson") || content_type.contains("jsonl") => "jsonl",
        None => {
            return Err(ServingError::BadRequest(
                "say the format: Content-Type text/csv or application/x-ndjson, or ?format=csv|jsonl"
                    .into(),
            ));
        }
    };
    let bytes = axum::body::to_bytes(request.into_body(), MAX_UPLOAD_BYTES)
        .await
        .map_err(|_| ServingError::BodyTooLarge {
            limit: MAX_UPLOAD_BYTES,
        })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| ServingError::BadUpload {
        format: if format == "csv" { "CSV" } else { "JSON lines" },
        reason: format!("not UTF-8: {e}"),
    })?;
    let rows = if format == "csv" {
        parse_csv(text)?
    } else {
        parse_json_lines(text)
    };
    if rows.is_empty() {
        return Err(ServingError::BadUpload {
            format: if format == "csv" { "CSV" } else { "JSON lines" },
            reason: "it holds no rows".into(),
        });
    }
    let mut good = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    let mut rejected_count = 0usize;
    {
        let registry = sensors
            .registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_millis();
        for row in &rows {
            let checked = row
                .parsed
                .as_ref()
                .map_err(|e| (e.code(), e.to_string()))
                .and_then(|body| {
                    body.validate(&registry, now)
                        .map_err(|e| (e.code(), e.to_string()))
                });
            match checked {
                Ok(reading) => good.push(reading),
                Err((code, message)) => {
                    rejected_count += 1;
                    if rejected.len() < MAX_LISTED_ERRORS {
                        rejected
                            .push(json!({ "line": row.line, "code": code, "message": message }));
                    }
                }
            }
        }
    }
    let total = good.len();
    let mut positions = Vec::with_capacity(total);
    let started = std::time::Instant::now();
    for chunk in good.chunks(APPEND_CHUNK) {
        match sensors.log.append_async(chunk).await {
            Ok(stored) => positions.extend(stored),
            Err(error) => {
                // What is durable stays; the report says how far the upload got.
                tracing::error!(%error, stored = positions.len(), total, "a bulk upload stopped");
                return Err(error.into());
            }
        }
        if total > APPEND_CHUNK {
            tracing::info!(stored = positions.len(), total, "storing a bulk upload");
        }
    }
    metrics::counter!("canopy_readings_accepted_total").increment(positions.len() as u64);
    metrics::counter!("canopy_readings_rejected_total").increment(rejected_count as u64);
    tracing::info!(
        accepted = positions.len(),
        rejected = rejected_count,
        seconds = started.elapsed().as_secs_f64(),
        "bulk upload stored"
    );
    state
        .audit(
            &caller.0.sub.to_string(),
            "sensor_upload",
            json!({ "format": format, "accepted": positions.len(), "rejected": rejected_count }),
        )
        .await;
    Ok(Json(json!({
        "rows": rows.len(),
        "accepted": positions.len(),
        "rejected_count": rejected_count,
        "rejected": rejected,
        "as_of": ends_of(&positions),
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct MetricsQuery {
    /// Wait (up to 5 s) until the views include this offset of the region's partition.
    #[serde(default)]
    min_offset: Option<u64>,
}

fn window_json(
    views: &dyn SensorViewRead,
    size: WindowSize,
    start: i64,
    view: &WindowView,
) -> serde_json::Value {
    let length = views.config().sizes_ms[size as usize];
    let stats = &view.stats;
    json!({
        "start": start,
        "end": start + length,
        "count": stats.count,
        "mean": stats.mean(),
        "variance": stats.variance(),
        "std_dev": stats.std_dev(),
        "min": stats.min_value(),
        "max": stats.max_value(),
        "last": stats.last_value(),
        "last_at": stats.last_at,
    })
}

#[utoipa::path(get, path = "/api/v1/data/metrics/{region}", tag = "data", params(("region" = String, Path, description = "region name"), MetricsQuery), security(("bearer" = [])), responses((status = 200, description = "per metric: the newest short and long window, the sensors flagged by z-score or model, as_of"), (status = 404, body = super::ErrorBody), (status = 504, body = super::ErrorBody)))]
pub(crate) async fn region_metrics(
    State(state): State<SharedState>,
    caller: Caller,
    Path(region): Path<String>,
    Query(query): Query<MetricsQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadEnvironment).await?;
    let sensors = service(&state)?;
    let views = Arc::clone(&sensors.views);
    let wait = query
        .min_offset
        .map(|offset| (offset, state.config.max_results_wait));
    let scorer_unavailable = sensors.scorer_unavailable.clone();
    let scored = sensors.scorer.as_ref().map(canopy_dataflow::Scorer::scored);
    // Every read may be a Redis round trip: off the async threads.
    tokio::task::spawn_blocking(move || {
        region_metrics_blocking(&*views, &region, wait, scorer_unavailable, scored)
    })
    .await
    .map_err(|e| ServingError::Internal(e.to_string()))?
    .map(Json)
}

fn region_metrics_blocking(
    views: &dyn SensorViewRead,
    region: &str,
    wait: Option<(u64, Duration)>,
    scorer_unavailable: Option<String>,
    scored: Option<u64>,
) -> Result<serde_json::Value, ServingError> {
    if let Some((offset, timeout)) = wait {
        let position = Position {
            partition: views.as_of(region)?.partition,
            offset,
        };
        views.wait_for(position, timeout)?;
    }
    let as_of = views.as_of(region)?;
    let metrics = views.region_metrics(region)?;
    if metrics.is_empty() {
        return Err(ServingError::NotFound {
            what: "region with readings",
        });
    }
    let owner = Owner::Region(name_key("region", region));
    let sensors_of_region = views.region_sensors(region)?;
    let mut out = Vec::new();
    for metric in metrics {
        let mut windows = serde_json::Map::new();
        for size in WindowSize::BOTH {
            if let Some((start, view)) = views.latest(owner, metric, size)? {
                let name = match size {
                    WindowSize::Short => "short_window",
                    WindowSize::Long => "long_window",
                };
                windows.insert(name.to_string(), window_json(views, size, start, &view));
            }
        }
        let mut anomalies = Vec::new();
        for (key, name) in &sensors_of_region {
            if let Some((start, view)) =
                views.latest(Owner::Sensor(*key), metric, WindowSize::Short)?
            {
                let z_flagged = view.z.is_some_and(|z| z.flagged);
                let model_flagged = view.model.is_some_and(|m| m.flagged);
                if z_flagged || model_flagged {
                    anomalies.push(json!({
                        "sensor_id": name,
                        "window_start": start,
                        "z_max": view.z.map(|z| z.max_abs),
                        "z_flagged": z_flagged,
                        "p_fault": view.model.map(|m| m.p_fault),
                        "model_flagged": model_flagged,
                    }));
                }
            }
        }
        let mut entry = serde_json::Map::new();
        entry.insert("metric".into(), json!(metric));
        entry.insert("unit".into(), json!(metric.unit()));
        entry.extend(windows);
        entry.insert("anomalies".into(), json!(anomalies));
        out.push(serde_json::Value::Object(entry));
    }
    Ok(json!({
        "region": region,
        "as_of": as_of,
        "metrics": out,
        "model": match scorer_unavailable.or_else(|| views.model_unavailable()) {
            Some(reason) => json!({ "available": false, "reason": reason }),
            None => json!({ "available": true, "scored_windows": scored }),
        },
        "too_late_readings": views.too_late()?,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct TrendsQuery {
    /// The region (with `metric`); or ask about a decision with `decision_id`.
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    /// A decision's votes per bucket and option, from the lake.
    #[serde(default)]
    decision_id: Option<String>,
    /// `minute` or `hour` (the live windows; `hour` is the default), `day` or `week` (from
    /// the lake, which also answers `hour` with `source=lake`).
    #[serde(default)]
    bucket: Option<String>,
    /// `views` (the live windows, a day of minutes and a month of hours) or `lake` (the
    /// whole history, as of the lake's last flush).
    #[serde(default)]
    source: Option<String>,
    /// Epoch milliseconds or RFC 3339; default: everything the view store holds.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    /// Per-sensor series instead of the region's.
    #[serde(default)]
    sensor_id: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/data/historical-trends", tag = "data", params(TrendsQuery), security(("bearer" = [])), responses((status = 200, description = "the series' buckets in the range, oldest first: minute and hour windows from the view store (a day of minutes, a month of hours); day and week buckets, source=lake, and decisions from the analytics lake (any range)"), (status = 422, body = super::ErrorBody)))]
pub(crate) async fn historical_trends(
    State(state): State<SharedState>,
    caller: Caller,
    Query(query): Query<TrendsQuery>,
) -> Result<Json<serde_json::Value>, ServingError> {
    caller.require(&state, Action::ReadEnvironment).await?;
    let from = query.from.as_deref().map(parse_event_time).transpose()?;
    let to = query.to.as_deref().map(parse_event_time).transpose()?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ServingError::BadRequest("from must be before to".into()));
    }
    let range = TimeRange {
        from_ms: from,
        to_ms: to,
    };
    if let Some(decision) = &query.decision_id {
        let decision = uuid::Uuid::parse_str(decision)
            .map(|id| DecisionId(id.as_u128()))
            .map_err(|_| ServingError::BadRequest(format!("{decision:?} is not a decision id")))?;
        let bucket = query.bucket.as_deref().unwrap_or("day");
        let subject = TrendsSubject::Decision {
            decision,
            min_voters: state.config.trend_min_voters,
        };
        let answer = trends_from_lake(&state, subject, bucket, range).await?;
        return Ok(Json(answer));
    }
    let (Some(region), Some(metric)) = (&query.region, &query.metric) else {
        return Err(ServingError::BadRequest(
            "name a region and a metric, or a decision_id".into(),
        ));
    };
    let metric: Metric = metric.parse()?;
    let bucket = query.bucket.as_deref().unwrap_or("hour");
    let from_lake = match query.source.as_deref() {
        Some("lake") => true,
        Some("views") | None => matches!(bucket, "day" | "week"),
        Some(other) => {
            return Err(ServingError::BadRequest(format!(
                "source {other:?} is not views or lake"
            )));
        }
    };
    if from_lake {
        let subject = TrendsSubject::Sensors {
            region,
            metric,
            sensor: query.sensor_id.as_deref(),
        };
        let mut answer = trends_from_lake(&state, subject, bucket, range).await?;
        answer["region"] = json!(region);
        answer["sensor_id"] = json!(query.sensor_id);
        answer["metric"] = json!(metric);
        answer["unit"] = json!(metric.unit());
        return Ok(Json(answer));
    }
    let sensors = service(&state)?;
    let size = match bucket {
        "minute" | "short" => WindowSize::Short,
        "hour" | "long" => WindowSize::Long,
        other => {
            return Err(ServingError::BadRequest(format!(
                "bucket {other:?} is not minute, hour, day or week"
            )));
        }
    };
    let owner = match &query.sensor_id {
        Some(sensor) => Owner::Sensor(name_key("sensor", sensor)),
        None => Owner::Region(name_key("region", region)),
    };
    let views = Arc::clone(&sensors.views);
    let region_name = region.clone();
    let (points, as_of) = tokio::task::spawn_blocking(move || {
        let points: Vec<serde_json::Value> = views
            .windows(
                owner,
                metric,
                size,
                from.unwrap_or(i64::MIN),
                to.unwrap_or(i64::MAX),
            )?
            .iter()
            .map(|(start, view)| window_json(&*views, size, *start, view))
            .collect();
        Ok::<_, ServingError>((points, views.as_of(&region_name)?))
    })
    .await
    .map_err(|e| ServingError::Internal(e.to_string()))??;
    Ok(Json(json!({
        "source": "views",
        "region": region,
        "sensor_id": query.sensor_id,
        "metric": metric,
        "unit": metric.unit(),
        "bucket": if size == WindowSize::Short { "minute" } else { "hour" },
        "as_of": as_of,
        "points": points,
    })))
}

#[utoipa::path(get, path = "/api/v1/data/alerts/stream", tag = "data", security(("bearer" = [])), responses((status = 200, description = "text/event-stream: one `alert` event per threshold crossing")))]
pub(crate) async fn alert_stream(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Response, ServingError> {
    caller.require(&state, Action::ReadEnvironment).await?;
    let sensors = service(&state)?;
    let streams = (sensors.alerts.subscribe(), sensors.closing.subscribe());
    let events = futures_util::stream::unfold(streams, |(mut alerts, mut closing)| async move {
        let received = tokio::select! {
            received = alerts.recv() => received,
            _ = closing.wait_for(|closed| *closed) => return None,
        };
        let event = match received {
            Ok(alert) => Event::default()
                .event("alert")
                .json_data(&alert)
                .unwrap_or_else(|_| Event::default().event("alert")),
            // A subscriber too slow for the alert rate misses some; it is told how many.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                Event::default().event("lagged").data(missed.to_string())
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), (alerts, closing)))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
