//! `/metrics` as an operator's Prometheus sees it: the figures equal what the test did
//! (votes acknowledged, refusals by code, requests by route and status), the text passes
//! `promtool check metrics`, labels stay bounded under a flood of made-up paths and
//! methods, a real Prometheus server scrapes a running node and answers a PromQL query over
//! it, and on a cluster a worker and a serve replica each export their share (consumer lag
//! per partition, freshness, checkpoints; votes and requests).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::Value;

/// One sample of a scrape: its metric name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// The samples of a Prometheus text exposition (the subset a recorder writes: no escapes
/// in label values, no timestamps).
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect();
        samples.insert(
            Series {
                name: name.to_string(),
                labels,
            },
            value,
        );
    }
    samples
}

/// The sum of the samples of `name` whose labels include `labels`.
fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            series.name == name
                && labels
                    .iter()
                    .all(|(k, v)| series.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, value)| value)
        .sum()
}

/// Tries to cast `times` votes without a token; each must be refused 401.
async fn cast_without_token(client: &reqwest::Client, base: &str, decision: &str, times: usize) {
    for _ in 0..times {
        let (status, _) = post(
            client,
            format!("{base}/api/v1/voting/cast-vote"),
            None,
            serde_json::json!({ "decision_id": decision, "option": 0 }),
        )
        .await
        .unwrap();
        assert_eq!(status, 401);
    }
}

async fn scrape(client: &reqwest::Client, url: &str) -> String {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// `promtool check metrics` (Debian's prometheus package) accepts the exposition.
fn promtool_accepts(text: &str) {
    let promtool = std::env::var("CANOPY_PROMTOOL")
        .expect("CANOPY_PROMTOOL must name promtool (scripts/test installs Debian's prometheus)");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool refused the metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_metrics_count_what_was_done_and_prometheus_scrapes_them() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // Anchoring often, so the anchoring metrics move during the test.
    let mut node = start_with(data.path(), port, &["--anchor-interval-s", "0.2"]);
    let client = canopy_testkit::http_client();
    wait_healthy(&client, &base).await;
    create_admin(data.path());
    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("Plant the verge?")).await;

    const VOTERS: usize = 30;
    let mut voters = Vec::new();
    for n in 0..VOTERS {
        voters.push(register(&client, &base, &format!("metrics-voter{n}")).await);
    }
    let mut last_offset = 0;
    for (n, token) in voters.iter().enumerate() {
        let receipt = cast(&client, &base, token, &decision, (n % 2) as u16).await;
        last_offset = receipt["position"]["offset"].as_u64().unwrap();
    }
    // Refusals the test can count: no token, a decision that does not exist.
    const UNAUTHENTICATED: usize = 4;
    cast_without_token(&client, &base, &decision, UNAUTHENTICATED).await;
    const UNKNOWN: usize = 3;
    let mut unknown_code = String::new();
    for _ in 0..UNKNOWN {
        let (status, body) = try_cast(
            &client,
            &base,
            &voters[0],
            &uuid::Uuid::new_v4().to_string(),
            0,
        )
        .await
        .unwrap();
        assert_eq!(status, 404, "{body}");
        unknown_code = body["error"]["code"].as_str().unwrap().to_string();
    }
    // The votes are visible before the scrape, so freshness has been measured.
    let seen: Value = get_json(
        &client,
        format!("{base}/api/v1/voting/decision/{decision}/results?min_offset={last_offset}"),
        &voters[0],
    )
    .await;
    assert_eq!(seen["turnout"], VOTERS, "{seen}");

    let text = scrape(&client, &format!("{base}/metrics")).await;
    promtool_accepts(&text);
    let samples = parse(&text);
    let cast_route = [("route", "/api/v1/voting/cast-vote"), ("method", "POST")];
    assert_eq!(
        value(&samples, "canopy_votes_accepted_total", &[]),
        VOTERS as f64
    );
    assert_eq!(
        value(
            &samples,
            "canopy_http_requests_total",
            &[cast_route[0], cast_route[1], ("status", "201")]
        ),
        VOTERS as f64
    );
    assert_eq!(
        value(
            &samples,
            "canopy_api_errors_total",
            &[cast_route[0], ("code", "unauthenticated")]
        ),
        UNAUTHENTICATED as f64
    );
    assert_eq!(
        value(
            &samples,
            "canopy_api_errors_total",
            &[cast_route[0], ("code", unknown_code.as_str())]
        ),
        UNKNOWN as f64
    );
    assert_eq!(
        value(
            &samples,
            "canopy_http_request_duration_seconds_count",
            &cast_route
        ),
        (VOTERS + UNAUTHENTICATED + UNKNOWN) as f64
    );
    assert_eq!(
        value(&samples, "canopy_log_append_duration_seconds_count", &[]),
        VOTERS as f64,
        "one append per accepted vote (the refused ones never reach the log)"
    );
    // Each durable entry was in exactly one flush; the log also holds the close-free
    // decision's votes only, so the flushed entries are the votes.
    assert!(
        value(&samples, "canopy_log_flush_entries_sum", &[]) >= VOTERS as f64,
        "{text}"
    );
    assert!(value(&samples, "canopy_view_freshness_seconds_count", &[]) >= 1.0);
    assert_eq!(value(&samples, "canopy_internal_errors_total", &[]), 0.0);
    assert_eq!(
        value(
            &samples,
            "canopy_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // A flood of made-up paths and methods adds no series past the first of its kind:
    // labels are bounded sets, whatever a client invents.
    async fn flood(client: &reqwest::Client, base: &str, round: usize) -> BTreeMap<Series, f64> {
        for n in 0..100 {
            let _ = client
                .get(format!("{base}/api/v1/no-such-route-{round}-{n}"))
                .send()
                .await
                .unwrap();
            let method = format!("GUESS{round}X{n}");
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let _ = client
                .request(method, format!("{base}/api/v1/voting/cast-vote"))
                .send()
                .await
                .unwrap();
        }
        parse(&scrape(client, &format!("{base}/metrics")).await)
    }
    let first = flood(&client, &base, 1).await;
    let flooded = flood(&client, &base, 2).await;
    let request_series = |samples: &BTreeMap<Series, f64>| -> Vec<Series> {
        samples
            .keys()
            .filter(|s| s.name.starts_with("canopy_http_") || s.name == "canopy_api_errors_total")
            .cloned()
            .collect()
    };
    assert_eq!(
        request_series(&first),
        request_series(&flooded),
        "a second flood of other names added series"
    );
    assert!(
        flooded.keys().all(|series| !series
            .labels
            .values()
            .any(|v| v.contains("no-such-route") || v.contains("GUESS"))),
        "a client-chosen path or method became a label"
    );
    assert!(
        value(
            &flooded,
            "canopy_http_requests_total",
            &[("route", "unmatched")]
        ) >= 200.0
    );

    // Debian's Prometheus scrapes the node and answers PromQL over what it scraped.
    let answer = prometheus_query(
        &format!("127.0.0.1:{port}"),
        "sum(canopy_votes_accepted_total)",
    )
    .await;
    assert_eq!(answer, VOTERS as f64);

    // Every metric the dashboards and alert rules use is exported (the consumer lag by a
    // worker: the cluster test below); an analyst's query and the push loop's rounds
    // make the last ones appear.
    let (status, body) = post(
        &client,
        format!("{base}/api/v1/analytics/sql"),
        Some(&admin),
        serde_json::json!({ "sql": "SELECT count(*) AS n FROM votes" }),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let used = deploy_metric_names();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let exported: BTreeSet<String> = parse(&scrape(&client, &format!("{base}/metrics")).await)
            .into_keys()
            .map(|series| base_name(&series.name).to_string())
            .collect();
        let missing: Vec<&String> = used
            .iter()
            .filter(|name| *name != "canopy_kafka_consumer_lag" && !exported.contains(*name))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deploy/ uses metrics `canopy up` does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kill_9(&mut node);
}

/// The metric names deploy/'s dashboards and alert rules use (`scripts/check-deploy
/// --metric-names`).
fn deploy_metric_names() -> BTreeSet<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-deploy");
    let output = Command::new(script).arg("--metric-names").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let names: BTreeSet<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(names.len() > 10, "{names:?}");
    names
}

/// A histogram's series name without its `_bucket`, `_sum` or `_count`.
fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Starts a Prometheus server scraping `target`'s `/metrics` every second, waits until
/// `query` has an answer and returns it.
async fn prometheus_query(target: &str, query: &str) -> f64 {
    let prometheus = std::env::var("CANOPY_PROMETHEUS").expect(
        "CANOPY_PROMETHEUS must name the prometheus server (scripts/test installs Debian's)",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: canopy\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let web_port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let client = canopy_testkit::http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let response = client
            .get(format!(
                "http://127.0.0.1:{web_port}/api/v1/query?query={encoded}"
            ))
            .send()
            .await;
        if let Ok(response) = response
            && let Ok(body) = response.json::<Value>().await
            && let Some(value) = body["data"]["result"][0]["value"][1].as_str()
        {
            break value.parse::<f64>().unwrap();
        }
        if Instant::now() > deadline {
            let log =
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            kill_9(&mut server);
            panic!("Prometheus never answered {query}; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    kill_9(&mut server);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_a_serve_replica_export_their_share_of_the_metrics() {
    let topic = format!("canopy-metrics-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    deployment.store().await;
    create_admin_in(&deployment);
    let mut workers = deployment.start(1, 1, "w");
    let worker_base = format!("http://127.0.0.1:{}", workers.metrics_ports[0]);
    let client = canopy_testkit::http_client();
    wait_healthy(&client, &worker_base).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut replica = Running::new(vec![start_serve(&deployment, port, "metrics")]);
    wait_healthy(&client, &base).await;

    let admin = login(&client, &base, "root").await;
    let decision = create_decision(&client, &base, &admin, yes_or_no("Open the sluice?")).await;
    const VOTERS: usize = 12;
    let mut last = (0, 0);
    let mut token = String::new();
    for n in 0..VOTERS {
        token = register(&client, &base, &format!("cluster-metrics{n}")).await;
        let receipt = cast(&client, &base, &token, &decision, (n % 2) as u16).await;
        last = (
            receipt["position"]["partition"].as_u64().unwrap(),
            receipt["position"]["offset"].as_u64().unwrap(),
        );
    }
    let seen: Value = get_json(
        &client,
        format!(
            "{base}/api/v1/voting/decision/{decision}/results?min_offset={}",
            last.1
        ),
        &token,
    )
    .await;
    assert_eq!(seen["turnout"], VOTERS, "{seen}");

    const REFUSED: usize = 2;
    cast_without_token(&client, &base, &decision, REFUSED).await;
    let replica_text = scrape(&client, &format!("{base}/metrics")).await;
    promtool_accepts(&replica_text);
    let replica_samples = parse(&replica_text);
    assert_eq!(
        value(&replica_samples, "canopy_votes_accepted_total", &[]),
        VOTERS as f64
    );
    assert_eq!(
        value(
            &replica_samples,
            "canopy_api_errors_total",
            &[("code", "unauthenticated")]
        ),
        REFUSED as f64
    );
    assert_eq!(
        value(
            &replica_samples,
            "canopy_log_append_duration_seconds_count",
            &[]
        ),
        VOTERS as f64,
        "one append to Kafka per vote"
    );

    // The worker's lag in the vote's partition falls to zero once it is published, and
    // the published epochs' freshness and the record's checkpoints are counted.
    let partition = last.0.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let worker_samples = loop {
        let text = scrape(&client, &format!("{worker_base}/metrics")).await;
        let samples = parse(&text);
        let lag = samples.iter().find(|(series, _)| {
            series.name == "canopy_kafka_consumer_lag"
                && series.labels.get("partition") == Some(&partition)
        });
        if lag.is_some_and(|(_, lag)| *lag == 0.0)
            && value(&samples, "canopy_record_checkpoints_total", &[]) >= 1.0
        {
            promtool_accepts(&text);
            break samples;
        }
        workers.assert_none_exited("while waiting for the worker's metrics");
        assert!(
            Instant::now() < deadline,
            "the worker's lag never reached 0 in partition {partition}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(value(&worker_samples, "canopy_view_freshness_seconds_count", &[]) >= 1.0);
    assert_eq!(
        value(
            &worker_samples,
            "canopy_kafka_consumer_lag",
            &[("topic", topic.as_str())]
        ),
        0.0,
        "every partition caught up"
    );
    let ready = get_public_json(&client, format!("{worker_base}/readyz")).await;
    assert_eq!(ready["status"], "ready");
    kill_9(&mut replica[0]);
    stop(&mut workers);
}
