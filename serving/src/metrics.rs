//! The process's metrics in Prometheus's text format, at `/metrics`.
//!
//! Every crate records through the `metrics` facade (`counter!`, `histogram!`, `gauge!`);
//! this module installs the one recorder a process has and renders what it holds. Labels
//! are bounded sets (route templates, status codes, the API's error codes, namespaces),
//! never a path, an account or a decision: a scrape says how the node does, not who voted.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The stable error code of a refusal, left on the response for the request metrics.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// Latency buckets, in seconds, for everything timed: from a cached read to a slow scan.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Entries per log flush: from a lone vote to a full group commit.
const ENTRIES_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, 5000.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls find it) and names every metric, so
/// a scrape lists each one from the start, at zero until it happens.
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("canopy_log_flush_entries".into()),
                    ENTRIES_BUCKETS,
                )
            });
        let handle = match builder.map(PrometheusBuilder::install_recorder) {
            Ok(Ok(handle)) => handle,
            Ok(Err(error)) => {
                // Another recorder was installed first (a test harness): record into it.
                tracing::warn!(%error, "metrics: a recorder is installed already");
                return None;
            }
            Err(error) => {
                tracing::warn!(%error, "metrics: the buckets were refused");
                return None;
            }
        };
        describe_all();
        Some(handle)
    });
}

/// What the recorder holds, in Prometheus's text format (empty before [`install`]).
pub fn render() -> String {
    HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

fn describe_all() {
    gauge!("canopy_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_gauge!("canopy_build_info", "the running version, always 1");

    describe_counter!(
        "canopy_http_requests_total",
        "API requests answered, by route template, method and status"
    );
    describe_histogram!(
        "canopy_http_request_duration_seconds",
        Unit::Seconds,
        "API request latency, from the request head to the response head"
    );
    describe_counter!(
        "canopy_api_errors_total",
        "API refusals and failures, by route and the error's stable code"
    );
    describe_counter!(
        "canopy_internal_errors_total",
        "requests that failed inside the node"
    );

    describe_counter!(
        "canopy_votes_accepted_total",
        "votes appended durably and acknowledged"
    );
    describe_counter!(
        "canopy_readings_accepted_total",
        "sensor readings appended durably"
    );
    describe_counter!(
        "canopy_readings_rejected_total",
        "sensor readings refused (invalid, unknown sensor, out of range)"
    );

    describe_histogram!(
        "canopy_log_append_duration_seconds",
        Unit::Seconds,
        "a batch of votes from submission to durable in the log"
    );
    describe_histogram!(
        "canopy_log_flush_entries",
        "log entries made durable by one write and sync of the local log"
    );
    describe_gauge!(
        "canopy_kafka_consumer_lag",
        "records in a partition of the votes topic not yet read by this worker"
    );
    describe_histogram!(
        "canopy_view_freshness_seconds",
        Unit::Seconds,
        "a vote's acknowledgement to its visibility in the results"
    );
    describe_gauge!(
        "canopy_view_lag_entries",
        "log entries durable but not yet in the published results"
    );

    describe_counter!(
        "canopy_record_checkpoints_total",
        "record checkpoints signed"
    );
    describe_gauge!(
        "canopy_record_unanchored_checkpoints",
        "record checkpoints not yet covered by an anchor"
    );
    describe_gauge!(
        "canopy_anchor_pending_batches",
        "anchor batches submitted to the chain and not yet confirmed"
    );
    describe_counter!(
        "canopy_chain_transactions_total",
        "anchoring transactions, by outcome (confirmed, failed)"
    );
    describe_counter!(
        "canopy_chain_gas_used_total",
        "gas used by confirmed anchoring transactions"
    );

    describe_counter!(
        "canopy_cache_lookups_total",
        "cache look-ups by cache (tokens, salts, results) and result (hit, miss)"
    );
    describe_counter!(
        "canopy_sql_queries_total",
        "analyst SQL statements by interface (http, pgwire) and outcome (ok, error)"
    );
    describe_histogram!(
        "canopy_sql_query_duration_seconds",
        Unit::Seconds,
        "analyst SQL statement duration, planning to the last row"
    );

    describe_gauge!(
        "canopy_push_clients",
        "live push sockets connected, by namespace"
    );
    describe_counter!(
        "canopy_push_events_total",
        "live push events sent, by event"
    );

    for name in [
        "canopy_internal_errors_total",
        "canopy_votes_accepted_total",
        "canopy_readings_accepted_total",
        "canopy_readings_rejected_total",
        "canopy_record_checkpoints_total",
        "canopy_chain_gas_used_total",
    ] {
        counter!(name).absolute(0);
    }
}

/// Which route a request took, as a bounded label: the matched template, or the class of
/// an unmatched path (never the path itself, which a client chooses).
fn route_label(request: &Request) -> String {
    if let Some(matched) = request.extensions().get::<MatchedPath>() {
        return matched.as_str().to_string();
    }
    let path = request.uri().path();
    if path.starts_with("/socket.io") {
        "/socket.io/".to_string()
    } else if path.starts_with("/api/") {
        "unmatched".to_string()
    } else {
        "web".to_string()
    }
}

/// The request's method, or `other` for one a client made up.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts and times every request, counts refusals by their code, and runs the request
/// in its span (`otel.*` fields name it for the traces; a server error marks its trace as
/// failed, which keeps it whatever the sampling).
pub async fn record_http(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = route_label(&request);
    let method = method_label(request.method());
    let name = format!("{method} {route}");
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace_id) = crate::traces::trace_id(&span) {
        span.record("trace_id", trace_id);
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if response.status().is_server_error() {
        span.record("otel.status_code", "error");
    }
    tracing::debug!(target: "canopy_serving::access", parent: &span, status, seconds, "answered");
    let status = status.to_string();
    metrics::histogram!(
        "canopy_http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method
    )
    .record(seconds);
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        counter!("canopy_api_errors_total", "route" => route.clone(), "code" => *code).increment(1);
    }
    counter!(
        "canopy_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status
    )
    .increment(1);
    response
}
