//! Environmental data through a real node: the registry, streaming and bulk ingest with
//! their refusals, window features and trends, the anomaly model on planted faults, and
//! threshold alerts pushed to a subscriber and written to the audit trail.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use canopy_dataflow::{Owner, WindowKey, WindowSize};
use canopy_schemas::{Metric, name_key};
use canopy_serving::auth::Role;
use canopy_serving::state::ApiConfig;
use common::api::{TestNode, audit_entries, elements};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PLANTED: &str = include_str!("../../models/anomaly/testdata/planted_faults.csv");
const PLANTED_WINDOWS: &str =
    include_str!("../../models/anomaly/testdata/planted_faults_windows.csv");

const READINGS: &str = "/api/v1/data/process-sensor-data";

fn sensor_records(node: &TestNode) -> u64 {
    let log = &node.node.state.sensors.as_ref().unwrap().log;
    (0..log.partitions())
        .map(|p| log.end_offset(p).unwrap())
        .sum()
}

async fn operator(node: &TestNode) -> String {
    node.create("gateway", Role::Operator).await;
    node.login("gateway").await.0
}

async fn register(node: &TestNode, token: &str, sensor: &str, region: &str, metrics: &[&str]) {
    let sensor = json!({ "sensor_id": sensor, "region": region, "latitude": 52.5, "longitude": 13.4, "metrics": metrics });
    node.post_expecting(
        "/api/v1/data/sensors",
        Some(token),
        sensor,
        StatusCode::CREATED,
    )
    .await;
}

async fn upload(
    node: &TestNode,
    token: &str,
    content_type: &str,
    body: String,
) -> (StatusCode, Value) {
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
    (status, response.json().await.unwrap())
}

/// Registers the planted-fault sensors and uploads their series; returns the upload report.
async fn upload_planted_faults(node: &TestNode, token: &str) -> Value {
    for sensor in ["tn-1", "tn-2", "tn-3", "tn-4", "tn-5"] {
        register(node, token, sensor, "test-north", &["pm25"]).await;
    }
    let (status, body) = upload(node, token, "text/csv", PLANTED.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn now_ms() -> i64 {
    canopy_schemas::clock::now_millis()
}

/// Waits until the views include every position in `as_of` (the upload's receipt).
async fn wait_for(node: &TestNode, token: &str, region: &str, as_of: &Value) {
    for position in as_of.as_array().unwrap() {
        let offset = position["offset"].as_u64().unwrap() - 1;
        node.get_ok(
            &format!("/api/v1/data/metrics/{region}?min_offset={offset}"),
            token,
        )
        .await;
    }
}

#[tokio::test]
async fn bad_readings_are_refused_with_their_codes_and_change_nothing() {
    let node = TestNode::start(ApiConfig::default()).await;
    let token = operator(&node).await;
    register(&node, &token, "r-1", "riverside", &["pm25", "temperature"]).await;
    let good = json!({ "sensor_id": "r-1", "metric": "pm25", "unit": "µg/m³", "value": 12.5, "timestamp": now_ms() - 1_000 });
    let body = node
        .post_expecting(READINGS, Some(&token), good.clone(), StatusCode::CREATED)
        .await;
    assert_eq!(body["accepted"], 1);
    let stored = sensor_records(&node);
    let future = now_ms() + 3_600_000;
    let cases = [
        (json!({ "metric": "radon" }), "unknown_metric"),
        (json!({ "value": "NaN" }), "non_finite_value"),
        (json!({ "value": -4.0 }), "implausible_value"),
        (json!({ "timestamp": future }), "reading_in_future"),
        (json!({ "timestamp": "yesterday" }), "bad_timestamp"),
        (json!({ "unit": "ppm" }), "wrong_unit"),
        (json!({ "sensor_id": "nobody" }), "unknown_sensor"),
        (json!({ "metric": "no2" }), "metric_not_reported"),
        (json!({ "region": "hills" }), "wrong_region"),
        (json!({ "quality": "great" }), "unknown_quality"),
    ];
    for (change, code) in cases {
        let mut bad = good.clone();
        for (field, value) in change.as_object().unwrap() {
            bad[field] = value.clone();
        }
        // A batch with one bad reading is refused whole, and says which one.
        let (status, body) = node.post(READINGS, Some(&token), json!([good, bad])).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{code}: {body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("reading 1"),
            "{body}"
        );
        assert_eq!(sensor_records(&node), stored, "{code} changed the log");
    }
    // Only operators and admins submit readings.
    node.register("resident").await;
    let citizen = node.login("resident").await.0;
    let (status, _) = node.post(READINGS, Some(&citizen), good).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(sensor_records(&node), stored);
}

#[tokio::test]
async fn a_bulk_upload_keeps_the_good_rows_and_lists_the_bad_ones_by_line() {
    let node = TestNode::start(ApiConfig::default()).await;
    let token = operator(&node).await;
    register(&node, &token, "m-1", "meadow", &["pm25", "no2"]).await;
    register(&node, &token, "m-2", "meadow", &["pm25"]).await;
    // OpenAQ-style columns, a quoted location with a comma, and bad rows on lines 4 and 6.
    let csv = "\
location,sensors_id,parameter,units,value,datetimeUtc
\"Meadow, east gate\",m-1,pm25,µg/m³,11.5,2026-06-01T10:00:00Z
\"Meadow, east gate\",m-1,no2,ug/m3,20.25,2026-06-01T10:00:30Z
\"Meadow, west\",m-2,pm25,µg/m³,not-a-number,2026-06-01T10:00:00Z
\"Meadow, west\",m-2,pm25,µg/m³,13,2026-06-01T10:01:00.5Z
\"Meadow, west\",m-2,no2,ug/m3,14,2026-06-01T10:01:00Z
\"Meadow, west\",m-2,pm25,µg/m³,15,2026-06-01T10:02:00+02:00
";
    let before = sensor_records(&node);
    let (status, body) = upload(&node, &token, "text/csv", csv.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"], 6);
    assert_eq!(body["accepted"], 4);
    assert_eq!(body["rejected_count"], 2);
    let rejected: Vec<(u64, String)> = elements(&body["rejected"])
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (4, "non_finite_value".to_string()),
            (6, "metric_not_reported".to_string())
        ]
    );
    assert_eq!(sensor_records(&node), before + 4);
    wait_for(&node, &token, "meadow", &body["as_of"]).await;
    let (_, metrics) = node.get("/api/v1/data/metrics/meadow", &token).await;
    let pm25 = elements(&metrics["metrics"])
        .find(|m| m["metric"] == "pm25")
        .unwrap();
    // 10:00 m-1 11.5, 10:01 m-2 13, 08:02 UTC m-2 15: the newest minute holds one reading.
    assert_eq!(pm25["short_window"]["count"], 1);
    assert_eq!(pm25["short_window"]["mean"], 13.0);
    assert_eq!(pm25["long_window"]["count"], 2);
    assert_eq!(pm25["long_window"]["mean"], 12.25);

    // JSON lines: a line that is not a reading is listed; the others are kept.
    let lines = format!(
        "{}\n{{\"sensor_id\": \"m-1\"}}\n\n{}\n",
        json!({ "sensor_id": "m-1", "metric": "pm25", "value": 9, "timestamp": "2026-06-01T10:05:00Z" }),
        json!({ "sensor_id": "m-1", "metric": "pm25", "value": 10, "timestamp": 1_780_308_360_000i64 }),
    );
    let (status, body) = upload(&node, &token, "application/x-ndjson", lines).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["line"], 2);
    assert_eq!(body["rejected"][0]["code"], "bad_request");

    // Not CSV at all, or a header without the needed columns: refused whole.
    let before = sensor_records(&node);
    let (status, body) = upload(&node, &token, "text/csv", "a,b\n1,2\n".into()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "bad_upload");
    assert_eq!(sensor_records(&node), before);
}

/// The short pm25 window of `sensor` that starts at `start_ms`: what the reference windows
/// name.
fn short_pm25_window(sensor: &str, start_ms: i64) -> WindowKey {
    WindowKey {
        owner: Owner::Sensor(name_key("sensor", sensor)),
        metric: Metric::Pm25,
        size: WindowSize::Short,
        start_ms,
    }
}

fn parse_reference_windows() -> Vec<(String, i64, [f64; 5], bool)> {
    let mut lines = PLANTED_WINDOWS.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (sensor, start, fault) = (
        column("sensor_id"),
        column("window_start_ms"),
        column("fault"),
    );
    let features: Vec<usize> = (0..5).map(|i| column(&format!("f{i}"))).collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (
                fields[sensor].to_string(),
                fields[start].parse().unwrap(),
                std::array::from_fn(|i| fields[features[i]].parse().unwrap()),
                fields[fault] == "1",
            )
        })
        .collect()
}

/// The features the dataflow keeps are the ones the model was trained on (the training
/// script's reference values for the same readings), and the model flags the planted stuck
/// sensor, spikes and drift while leaving the healthy sensors alone.
#[tokio::test]
async fn planted_faults_are_flagged_by_the_model() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH must name ONNX Runtime's library (scripts/test sets it via scripts/onnxruntime)"
    );
    let node = TestNode::start(ApiConfig::default()).await;
    let token = operator(&node).await;
    let body = upload_planted_faults(&node, &token).await;
    assert_eq!(body["rejected_count"], 0, "{body}");
    wait_for(&node, &token, "test-north", &body["as_of"]).await;
    let sensors = node.node.state.sensors.as_ref().unwrap();
    let views = sensors.local_views.as_ref().unwrap();
    let reference = parse_reference_windows();
    assert!(
        reference.len() > 500,
        "{} reference windows",
        reference.len()
    );
    for (sensor, start, expected, _) in &reference {
        let key = short_pm25_window(sensor, *start);
        let features = views
            .model_features(&key)
            .unwrap_or_else(|| panic!("no features for {sensor} at {start}"));
        for (i, (got, want)) in features.iter().zip(expected).enumerate() {
            let tolerance = 1e-4 * want.abs().max(1.0);
            assert!(
                (f64::from(*got) - want).abs() <= tolerance,
                "{sensor} at {start}: f{i} is {got}, the training script computed {want}"
            );
        }
    }
    // The scorer catches up off the hot path.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let scored = |key: &WindowKey| {
        views
            .windows(
                key.owner,
                key.metric,
                key.size,
                key.start_ms,
                key.start_ms + 1,
            )
            .first()
            .and_then(|(_, view)| view.model)
    };
    let mut verdicts: HashMap<(String, i64), bool> = HashMap::new();
    while verdicts.len() < reference.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {} windows scored; scorer: {:?}",
            verdicts.len(),
            reference.len(),
            sensors.scorer_unavailable
        );
        for (sensor, start, _, _) in &reference {
            let key = short_pm25_window(sensor, *start);
            if let Some(score) = scored(&key) {
                verdicts.insert((sensor.clone(), *start), score.flagged);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut by_sensor: HashMap<&str, (usize, usize)> = HashMap::new();
    for (sensor, start, _, fault) in &reference {
        let flagged = verdicts[&(sensor.clone(), *start)];
        let entry = by_sensor.entry(sensor.as_str()).or_default();
        if *fault || sensor == "tn-1" || sensor == "tn-2" {
            entry.0 += usize::from(flagged);
            entry.1 += 1;
        }
    }
    let rate = |sensor: &str| {
        let (flagged, of) = by_sensor[sensor];
        flagged as f64 / of.max(1) as f64
    };
    assert!(rate("tn-3") >= 0.8, "stuck sensor: {:?}", by_sensor["tn-3"]);
    assert!(rate("tn-4") >= 0.5, "spikes: {:?}", by_sensor["tn-4"]);
    assert!(rate("tn-5") >= 0.7, "drift: {:?}", by_sensor["tn-5"]);
    for healthy in ["tn-1", "tn-2"] {
        assert!(
            rate(healthy) <= 0.05,
            "{healthy} flagged: {:?}",
            by_sensor[healthy]
        );
    }
    // The region's metrics name the flagged sensors of the newest minute.
    let (_, metrics) = node.get("/api/v1/data/metrics/test-north", &token).await;
    assert_eq!(metrics["model"]["available"], true, "{metrics}");
    let flagged: Vec<&str> = elements(&metrics["metrics"][0]["anomalies"])
        .filter(|a| a["model_flagged"] == true)
        .map(|a| a["sensor_id"].as_str().unwrap())
        .collect();
    assert!(
        flagged.contains(&"tn-3") && flagged.contains(&"tn-5"),
        "{metrics}"
    );
    // Hourly trend of the region: three hours, every reading counted once.
    let trends = node
        .get_ok(
            "/api/v1/data/historical-trends?region=test-north&metric=pm25&bucket=hour",
            &token,
        )
        .await;
    let points = trends["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    let counted: u64 = points.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, body["accepted"].as_u64().unwrap());
}

/// A region whose newest minute crosses the pm25 threshold raises an alert: pushed to a
/// subscriber of the stream and written to the audit trail; falling back clears it.
#[tokio::test]
async fn threshold_alerts_reach_subscribers_and_the_audit_trail() {
    let node = TestNode::start(ApiConfig::default()).await;
    let token = operator(&node).await;
    register(&node, &token, "h-1", "harbour", &["pm25"]).await;
    let mut stream = node
        .client
        .get(format!("{}/api/v1/data/alerts/stream", node.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let now = now_ms();
    for (at, value) in [
        (now - 180_000, 20.0),
        (now - 120_000, 140.0),
        (now - 60_000, 30.0),
    ] {
        let reading =
            json!({ "sensor_id": "h-1", "metric": "pm25", "value": value, "timestamp": at });
        let body = node
            .post_expecting(READINGS, Some(&token), reading, StatusCode::CREATED)
            .await;
        wait_for(&node, &token, "harbour", &body["as_of"]).await;
    }
    let mut events = String::new();
    while events.matches("event: alert").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("an alert within 10 s")
            .unwrap()
            .expect("the stream stays open");
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    let alerts: Vec<Value> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(alerts[0]["kind"], "threshold_exceeded");
    assert_eq!(alerts[0]["region"], "harbour");
    assert_eq!(alerts[0]["value"], 140.0);
    assert_eq!(alerts[1]["kind"], "threshold_cleared");
    node.create("inspector", Role::Auditor).await;
    let auditor = node.login("inspector").await.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, trail) = node.get("/api/v1/audit/trail", &auditor).await;
        let written = audit_entries(&trail, "sensor_alert");
        if written == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{trail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A subscriber still connected does not hold the node up: shutting down ends its stream.
    tokio::time::timeout(Duration::from_secs(10), node.node.shutdown())
        .await
        .expect("the node shuts down with a subscriber connected")
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the alert stream ended with the node");
}

/// A restarted node replays the sensor log, and says it is ready only once its views hold
/// every reading acknowledged before the restart.
#[tokio::test]
async fn a_restarted_node_is_ready_only_once_its_sensor_views_are_complete() {
    let node = TestNode::start(ApiConfig::default()).await;
    let token = operator(&node).await;
    let body = upload_planted_faults(&node, &token).await;
    let accepted = body["accepted"].as_u64().unwrap();
    let TestNode { node, dir, .. } = node;
    node.shutdown().await.unwrap();

    let mut config = canopy_node::NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let restarted = canopy_node::Node::start(config).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !restarted
        .state
        .ready
        .load(std::sync::atomic::Ordering::Acquire)
    {
        assert!(std::time::Instant::now() < deadline, "not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let views = restarted
        .state
        .sensors
        .as_ref()
        .unwrap()
        .local_views
        .as_ref()
        .unwrap();
    let counted: u64 = views
        .windows(
            Owner::Region(name_key("region", "test-north")),
            Metric::Pm25,
            WindowSize::Long,
            i64::MIN,
            i64::MAX,
        )
        .iter()
        .map(|(_, view)| view.stats.count)
        .sum();
    assert_eq!(counted, accepted, "ready before the replay was done");
    restarted.shutdown().await.unwrap();
}
