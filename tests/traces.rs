//! Traces as an operator's collector receives them: `canopy up --otlp-endpoint` sends
//! OTLP/HTTP to a receiver the test runs (decoding the protobuf with the OpenTelemetry
//! project's own message types). A cast vote is one trace: the API request, the log append
//! under it, and the vote becoming visible in the results; its trace id is in the request's
//! log line. At a sample ratio of 0 no trace of a successful request is sent, and the
//! trace of a failed one is.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post as post_route;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use serde_json::Value;

#[derive(Clone, Debug)]
struct ReceivedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    failed: bool,
}

/// An OTLP/HTTP receiver on a free port: every span it was sent.
async fn receiver() -> (u16, Arc<Mutex<Vec<ReceivedSpan>>>) {
    let received: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        post_route(move |body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut spans = store.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            spans.push(ReceivedSpan {
                                trace_id: hex::encode(&span.trace_id),
                                span_id: hex::encode(&span.span_id),
                                parent_span_id: hex::encode(&span.parent_span_id),
                                name: span.name,
                                failed: span
                                    .status
                                    .is_some_and(|s| s.code == StatusCode::Error as i32),
                            });
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, received)
}

/// Waits until `found` picks something out of the received spans.
async fn wait_for<T>(
    received: &Mutex<Vec<ReceivedSpan>>,
    what: &str,
    found: impl Fn(&[ReceivedSpan]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(result) = found(&received.lock().unwrap()) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not received; got {:#?}",
            received.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CAST: &str = "POST /api/v1/voting/cast-vote";

/// A ready `canopy up` sending traces to a fresh receiver, with its admin signed in.
struct Traced {
    data: tempfile::TempDir,
    node: std::process::Child,
    base: String,
    client: reqwest::Client,
    admin: String,
    received: Arc<Mutex<Vec<ReceivedSpan>>>,
}

async fn traced_node(sample_ratio: &str, extra: &[&str], env: &[(&str, &str)]) -> Traced {
    let (otlp_port, received) = receiver().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let mut args = vec![
        "--otlp-endpoint",
        &endpoint,
        "--trace-sample-ratio",
        sample_ratio,
    ];
    args.extend_from_slice(extra);
    // The batch processor sends every 100 ms rather than every 5 s.
    let mut env = env.to_vec();
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100"));
    let node = start_with_env(data.path(), port, &args, &env);
    let client = canopy_testkit::http_client();
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    Traced {
        data,
        node,
        base,
        client,
        admin,
        received,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_vote_is_one_trace_from_the_api_through_the_log_to_the_view() {
    let Traced {
        data,
        mut node,
        base,
        client,
        admin,
        received,
    } = traced_node(
        "1",
        &["--log-format", "json"],
        &[("RUST_LOG", "info,canopy_serving::access=debug")],
    )
    .await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("Dredge the canal?")).await;
    let voter = register(&client, &base, "traced-voter").await;
    cast(&client, &base, &voter, &decision, 1).await;

    let (trace, request) = wait_for(&received, "the cast's request span", |spans| {
        spans
            .iter()
            .find(|s| s.name == CAST)
            .map(|s| (s.trace_id.clone(), s.span_id.clone()))
    })
    .await;
    let under_request = |name: &'static str| {
        let (trace, request) = (trace.clone(), request.clone());
        move |spans: &[ReceivedSpan]| {
            spans
                .iter()
                .find(|s| s.name == name && s.trace_id == trace && s.parent_span_id == request)
                .cloned()
        }
    };
    let append = wait_for(&received, "the log append", under_request("log.append")).await;
    let visible = wait_for(
        &received,
        "the vote's visibility",
        under_request("view.visible"),
    )
    .await;
    assert!(!append.failed && !visible.failed);
    let spans = received.lock().unwrap().clone();
    let cast_traces: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.name == CAST)
        .map(|s| s.trace_id.as_str())
        .collect();
    assert_eq!(cast_traces.len(), 1, "one cast, one trace: {spans:#?}");

    // The request's access line carries the trace id.
    kill_9(&mut node);
    let log = std::fs::read_to_string(data.path().join("node.log")).unwrap();
    let line = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| {
            line["target"] == "canopy_serving::access"
                && line["span"]["http.route"] == "/api/v1/voting/cast-vote"
        })
        .unwrap_or_else(|| panic!("no access line of the cast in {log}"));
    assert_eq!(line["span"]["trace_id"], trace.as_str(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_ratio_of_zero_only_failed_requests_are_traced() {
    let Traced {
        data: _data,
        mut node,
        base,
        client,
        admin,
        received,
    } = traced_node("0", &["--no-lake"], &[]).await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("Fell the poplar?")).await;
    for n in 0..5 {
        let voter = register(&client, &base, &format!("untraced{n}")).await;
        cast(&client, &base, &voter, &decision, 0).await;
    }
    // Without a lake the SQL route fails with 503: a server-side failure, always traced.
    let (status, body) = post(
        &client,
        format!("{base}/api/v1/analytics/sql"),
        Some(&admin),
        serde_json::json!({ "sql": "SELECT 1" }),
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{body}");
    let failed = wait_for(&received, "the failed request's trace", |spans| {
        spans
            .iter()
            .find(|s| s.name == "POST /api/v1/analytics/sql")
            .cloned()
    })
    .await;
    assert!(failed.failed, "{failed:?}");
    // The casts ended before the failure, so had they been sent they would be here by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = received.lock().unwrap().clone();
    assert!(
        spans.iter().all(|s| s.trace_id == failed.trace_id),
        "spans of successful requests were sent at ratio 0: {spans:#?}"
    );
    kill_9(&mut node);
}
