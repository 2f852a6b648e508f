//! Issue 17, a fuzz test of the sensor upload decoders (CSV and JSON lines) through a real
//! node: valid uploads mutated byte by byte (flips, cuts, insertions, repeated lines) and
//! arbitrary bytes. Whatever arrives, the answer is a report (200) or a refusal with a code
//! (4xx), never a server error or a hang; a refusal appends nothing, and a report's
//! `accepted` is exactly what the sensor log grew by.

mod common;

use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::TestNode;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLANTED: &str = include_str!("../../models/anomaly/testdata/planted_faults.csv");
/// Cases per format; each is one upload over HTTP.
const CASES: u32 = 192;

fn sensor_records(node: &TestNode) -> u64 {
    let log = &node.node.state.sensors.as_ref().unwrap().log;
    (0..log.partitions())
        .map(|p| log.end_offset(p).unwrap())
        .sum()
}

/// A valid CSV upload: the header and the first rows of the planted-fault series.
fn valid_csv() -> Vec<u8> {
    PLANTED
        .lines()
        .take(25)
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// The same rows as JSON lines.
fn valid_json_lines() -> Vec<u8> {
    let mut lines = Vec::new();
    for row in PLANTED.lines().skip(1).take(24) {
        let fields: Vec<&str> = row.split(',').collect();
        lines.push(
            json!({
                "sensor_id": fields[0], "region": fields[1], "metric": fields[2],
                "unit": fields[3], "value": fields[4].parse::<f64>().unwrap(),
                "timestamp": fields[5], "quality": fields[6],
            })
            .to_string(),
        );
    }
    lines.join("\n").into_bytes()
}

#[derive(Clone, Debug)]
enum Edit {
    Flip { at: usize, bits: u8 },
    Cut { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    RepeatLine { at: usize, times: usize },
    Truncate { at: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Edit::Flip { at, bits }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Cut { at, len }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..24)
        )
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..50).prop_map(|(at, times)| Edit::RepeatLine { at, times }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Edit::Flip { at, bits } => {
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte ^= bits;
                }
            }
            Edit::Cut { at, len: cut } => {
                let from = (at % len).min(bytes.len());
                let to = (from + cut).min(bytes.len());
                bytes.drain(from..to);
            }
            Edit::Insert {
                at,
                bytes: inserted,
            } => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, inserted.iter().copied());
            }
            Edit::RepeatLine { at, times } => {
                let text = bytes.clone();
                let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
                let line = lines[at % lines.len()].to_vec();
                for _ in 0..*times {
                    bytes.push(b'\n');
                    bytes.extend_from_slice(&line);
                }
            }
            Edit::Truncate { at } => bytes.truncate(at % len),
        }
    }
    bytes
}

/// What one upload may answer, checked against the sensor log around it.
async fn upload_is_answered_well(
    node: &TestNode,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(), TestCaseError> {
    let before = sensor_records(node);
    let response = node
        .client
        .post(format!(
            "{}/api/v1/data/ingest-environmental-data",
            node.base
        ))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let grew = sensor_records(node) - before;
    prop_assert!(!status.is_server_error(), "{status}: {answer}");
    if status == StatusCode::OK {
        prop_assert_eq!(answer["accepted"].as_u64(), Some(grew), "{}", answer);
    } else {
        prop_assert!(status.is_client_error(), "{status}: {answer}");
        prop_assert!(answer["error"]["code"].is_string(), "{status}: {answer}");
        prop_assert_eq!(grew, 0, "a refused upload appended: {}", answer);
    }
    Ok(())
}

fn fuzz(content_type: &'static str, valid: fn() -> Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (node, token) = runtime.block_on(async {
        let node = TestNode::start(ApiConfig::default()).await;
        node.create("gateway", Role::Operator).await;
        let token = node.login("gateway").await.0;
        for sensor in ["tn-1", "tn-2", "tn-3", "tn-4", "tn-5"] {
            let sensor = json!({ "sensor_id": sensor, "region": "test-north",
                "latitude": 52.5, "longitude": 13.4, "metrics": ["pm25"] });
            node.post_expecting(
                "/api/v1/data/sensors",
                Some(&token),
                sensor,
                StatusCode::CREATED,
            )
            .await;
        }
        (node, token)
    });
    // The unmutated upload is accepted whole: the mutations start from something that works.
    runtime
        .block_on(upload_is_answered_well(
            &node,
            &token,
            content_type,
            valid(),
        ))
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    });
    let upload = prop_oneof![
        4 => proptest::collection::vec(edit(), 1..6).prop_map(move |edits| apply(valid(), &edits)),
        1 => proptest::collection::vec(any::<u8>(), 0..2048),
    ];
    runner
        .run(&upload, |body| {
            runtime.block_on(upload_is_answered_well(&node, &token, content_type, body))
        })
        .unwrap();
    runtime.block_on(node.node.shutdown()).unwrap();
}

#[test]
fn mutated_csv_uploads_are_reported_or_refused_never_fail() {
    fuzz("text/csv", valid_csv);
}

#[test]
fn mutated_json_lines_uploads_are_reported_or_refused_never_fail() {
    fuzz("application/x-ndjson", valid_json_lines);
}
