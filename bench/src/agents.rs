//! `canopy-bench agents`: `POST /api/v1/agents/analyze-proposal` from concurrent callers
//! (each sends its next request when the last is answered), against the same server's
//! `/healthz` from as many callers in the same process and run: the floor of a request on
//! this machine. Two phases of analyses: the default, where a region's lake evidence is
//! reused for 30 s, and one where every analysis reads the lake again (4 SQL queries).
//! The lake holds the NOAA sample the tests use, imported over the API first.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use canopy_node::lake::LakeSettings;
use canopy_node::{Node, NodeConfig};
use canopy_serving::api::create_user;
use canopy_serving::auth::Role;
use canopy_serving::limits::Rate;
use canopy_serving::state::ApiConfig;
use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use crate::api_setup::create_decision;
use crate::http::percentile;
use crate::round3;

const NOAA: &str = include_str!("../../analytics/testdata/external/noaa_ghcnd_USW00094728.csv");

#[derive(Args)]
pub struct AgentsArgs {
    /// Callers, each with one request in flight.
    #[arg(long, default_value_t = 50)]
    callers: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

pub fn run(args: AgentsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

struct Phase {
    requests: usize,
    errors: usize,
    latencies_ms: Vec<f64>,
    seconds: f64,
}

impl Phase {
    fn figures(&mut self) -> serde_json::Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "req_per_s": round3(self.requests as f64 / self.seconds),
            "p50_ms": round3(percentile(&mut self.latencies_ms, 0.50)),
            "p95_ms": round3(percentile(&mut self.latencies_ms, 0.95)),
            "p99_ms": round3(percentile(&mut self.latencies_ms, 0.99)),
        })
    }
}

/// `callers` loops sending `request` for `seconds`.
async fn closed_loop(
    callers: usize,
    seconds: f64,
    request: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
) -> Phase {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let request = Arc::clone(&request);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let sent = Instant::now();
                match request().send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut phase = Phase {
        requests: 0,
        errors: 0,
        latencies_ms: Vec::new(),
        seconds: 0.0,
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap_or_default();
        phase.requests += latencies.len();
        phase.errors += errors;
        phase.latencies_ms.extend(latencies);
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase
}

async fn start(evidence_ttl: Duration) -> anyhow::Result<(Node, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let unlimited = Rate {
        per_second: 1e9,
        burst: 1e9,
    };
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.api = ApiConfig {
        per_user: unlimited,
        per_address: unlimited,
        ..ApiConfig::default()
    };
    config.lake = Some(LakeSettings::new(dir.path().join("lake")));
    config.agents.evidence_ttl = evidence_ttl;
    let node = Node::start(config).await.context("starting the server")?;
    Ok((node, dir))
}

async fn phase(
    args: &AgentsArgs,
    evidence_ttl: Duration,
    client: &reqwest::Client,
) -> anyhow::Result<(Phase, Phase, bool)> {
    let (node, _dir) = start(evidence_ttl).await?;
    let state = Arc::clone(&node.state);
    let operator = create_user(
        state.store.as_ref(),
        "bench-operator",
        "a long passphrase for the benchmark",
        Role::Operator,
    )
    .await?;
    let token = state.keys.issue(operator, Role::Operator, 1_000_000)?.0;
    let base = format!("http://{}", node.addr);
    let imported = client
        .post(format!(
            "{base}/api/v1/data/import?source=noaa&regions=USW00094728:north"
        ))
        .bearer_auth(&token)
        .body(NOAA)
        .send()
        .await?;
    if !imported.status().is_success() {
        bail!("importing the sample failed: {}", imported.text().await?);
    }
    let statement = json!({ "plans": [{ "option": 0, "effects": [{ "metric": "pm25", "change_percent": -20.0, "certainty": 0.8 }], "cost_usd": 2e6, "budget_usd": 2.5e6, "annual_benefit_usd": 4e5, "jobs_created": 25, "timeline_months": 18 }] });
    let create = json!({ "title": "Benchmark proposal", "region": "north", "options": ["adopt", "reject"], "closes_at": i64::MAX, "impact_statement": statement });
    let decision = create_decision(client, &base, &token, &create).await?;
    let first = client
        .post(format!("{base}/api/v1/agents/analyze-proposal"))
        .bearer_auth(&token)
        .json(&json!({ "decision_id": decision }))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let predicted = first["prediction"].is_object();
    let weather_rows = first["assessments"][0]["evidence"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["table"] == "weather_daily"))
        .and_then(|r| r["rows"].as_u64())
        .unwrap_or(0);
    if weather_rows == 0 {
        bail!("the analysis read no weather rows: {first}");
    }
    let healthz = {
        let (client, base) = (client.clone(), base.clone());
        Arc::new(move || client.get(format!("{base}/healthz")))
            as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>
    };
    let floor = closed_loop(args.callers, args.seconds, healthz).await;
    let analyze = {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        let body = json!({ "decision_id": decision });
        Arc::new(move || {
            client
                .post(format!("{base}/api/v1/agents/analyze-proposal"))
                .bearer_auth(&token)
                .json(&body)
        }) as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>
    };
    let analyses = closed_loop(args.callers, args.seconds, analyze).await;
    node.shutdown().await?;
    Ok((floor, analyses, predicted))
}

async fn run_async(args: AgentsArgs) -> anyhow::Result<()> {
    let client = canopy_testkit::http_client_builder()
        .pool_max_idle_per_host(1_024)
        .build()?;
    eprintln!(
        "phase 1: evidence reused for 30 s, {} callers, {} s ...",
        args.callers, args.seconds
    );
    let (mut floor, mut cached, predicted) = phase(&args, Duration::from_secs(30), &client).await?;
    eprintln!("phase 2: every analysis reads the lake ...");
    let (_, mut uncached, _) = phase(&args, Duration::ZERO, &client).await?;
    let floor_figures = floor.figures();
    let cached_figures = cached.figures();
    let uncached_figures = uncached.figures();
    let ratio = |phase: &serde_json::Value| {
        round3(
            phase["req_per_s"].as_f64().unwrap_or(0.0)
                / floor_figures["req_per_s"].as_f64().unwrap_or(1.0),
        )
    };
    println!(
        "{}",
        json!({
            "bench": "agents",
            "callers": args.callers,
            "prediction": predicted,
            "healthz": floor_figures,
            "analyze_evidence_cached": cached_figures,
            "analyze_evidence_read_each_time": uncached_figures,
            "cached_rate_vs_healthz": ratio(&cached_figures),
            "uncached_rate_vs_healthz": ratio(&uncached_figures),
            "p95_under_500_ms": cached_figures["p95_ms"].as_f64().is_some_and(|p| p < 500.0),
        })
    );
    Ok(())
}
