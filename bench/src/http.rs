//! `canopy-bench http`: the voting API over real HTTP, in one process with its server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use canopy_node::{Node, NodeConfig};
use canopy_serving::api::create_user;
use canopy_serving::auth::Role;
use canopy_serving::limits::Rate;
use canopy_serving::state::ApiConfig;
use clap::Args;

use crate::round3;
use serde_json::json;

#[derive(Args)]
pub struct HttpArgs {
    /// Authenticated voters casting.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Concurrent requests in the closed-loop (peak) phases.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// The open-loop rate, votes per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Dataflow worker threads of the server.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

struct Target {
    client: reqwest::Client,
    base: String,
    tokens: Vec<String>,
    decision: String,
}

impl Target {
    async fn cast(&self, n: u64) -> bool {
        let token = &self.tokens[n as usize % self.tokens.len()];
        let body = json!({ "decision_id": self.decision, "option": n % 3 });
        let sent = self
            .client
            .post(format!("{}/api/v1/voting/cast-vote", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        ok_with(sent, reqwest::StatusCode::CREATED).await
    }

    async fn health(&self) -> bool {
        let sent = self
            .client
            .get(format!("{}/healthz", self.base))
            .send()
            .await;
        ok_with(sent, reqwest::StatusCode::OK).await
    }

    async fn results(&self, n: u64) -> bool {
        let token = &self.tokens[n as usize % self.tokens.len()];
        let sent = self
            .client
            .get(format!(
                "{}/api/v1/voting/decision/{}/results",
                self.base, self.decision
            ))
            .bearer_auth(token)
            .send()
            .await;
        ok_with(sent, reqwest::StatusCode::OK).await
    }
}

/// True if the response came with `status` and its whole body.
async fn ok_with(
    sent: Result<reqwest::Response, reqwest::Error>,
    status: reqwest::StatusCode,
) -> bool {
    match sent {
        Ok(response) if response.status() == status => response.bytes().await.is_ok(),
        _ => false,
    }
}

#[derive(Clone, Copy)]
enum Call {
    Cast,
    Health,
    Results,
}

/// Closed loop: `concurrency` callers back to back for `seconds`. Returns (ok per second,
/// latencies in ms).
async fn closed_loop(
    target: &Arc<Target>,
    call: Call,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, counter) = (Arc::clone(target), Arc::clone(&counter));
            tokio::spawn(async move {
                let (mut ok, mut latencies) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let succeeded = match call {
                        Call::Cast => target.cast(n).await,
                        Call::Health => target.health().await,
                        Call::Results => target.results(n).await,
                    };
                    if succeeded {
                        ok += 1;
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    }
                }
                (ok, latencies)
            })
        })
        .collect();
    let (mut ok, mut latencies) = (0u64, Vec::new());
    for caller in callers {
        let (n, l) = caller.await?;
        ok += n;
        latencies.extend(l);
    }
    Ok((ok as f64 / started.elapsed().as_secs_f64(), latencies))
}

/// Open loop: a vote sent every 1/rate s whatever happened to the others; latency counts
/// from the intended send time, so a stalled server is charged for the queue it causes.
async fn open_loop(
    target: &Arc<Target>,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<(u64, u64, Vec<f64>)> {
    let total = (rate * seconds) as u64;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut sends = Vec::with_capacity(total as usize);
    for n in 0..total {
        let intended = start + Duration::from_secs_f64(n as f64 / rate);
        let target = Arc::clone(target);
        sends.push(tokio::spawn(async move {
            tokio::time::sleep_until(intended).await;
            let ok = target.cast(1_000_000_000 + n).await;
            (ok, intended.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::with_capacity(total as usize));
    for send in sends {
        let (succeeded, latency) = send.await?;
        if succeeded {
            ok += 1;
            latencies.push(latency);
        } else {
            failed += 1;
        }
    }
    Ok((ok, failed, latencies))
}

pub(crate) fn percentile(latencies: &mut [f64], p: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    latencies.sort_unstable_by(f64::total_cmp);
    latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
}

pub fn run(args: HttpArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: HttpArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let unlimited = Rate {
        per_second: 1e9,
        burst: 1e9,
    };
    let mut config = NodeConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.workers = args.workers;
    config.api = ApiConfig {
        per_user: unlimited,
        per_address: unlimited,
        ..ApiConfig::default()
    };
    let node = Node::start(config).await.context("starting the server")?;
    let state = Arc::clone(&node.state);

    eprintln!("creating {} voters ...", args.users);
    let owner = create_user(
        state.store.as_ref(),
        "bench-owner",
        "a long passphrase for the benchmark",
        Role::Operator,
    )
    .await?;
    let owner_token = state.keys.issue(owner, Role::Operator, 1_000_000)?.0;
    let mut tokens = Vec::with_capacity(args.users);
    for n in 0..args.users {
        // Accounts go through the store (argon2 is deliberately slow); tokens are real.
        let id = create_user(
            state.store.as_ref(),
            &format!("voter{n}"),
            "bench-voter-password",
            Role::Citizen,
        )
        .await?;
        tokens.push(state.keys.issue(id, Role::Citizen, 1_000_000)?.0);
    }
    let client = canopy_testkit::http_client_builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let base = format!("http://{}", node.addr);
    let create = json!({ "title": "Benchmark decision", "options": ["a", "b", "c"], "closes_at": i64::MAX, "quorum": 1 });
    let response = client
        .post(format!("{base}/api/v1/voting/decision/create"))
        .bearer_auth(&owner_token)
        .json(&create)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::CREATED {
        bail!("creating the decision failed: {}", response.text().await?);
    }
    let decision = response.json::<serde_json::Value>().await?["id"]
        .as_str()
        .context("decision id")?
        .to_string();
    let target = Arc::new(Target {
        client,
        base,
        tokens,
        decision,
    });

    eprintln!(
        "floor: GET /healthz, {} concurrent, {} s ...",
        args.concurrency, args.seconds
    );
    let (floor, _) = closed_loop(&target, Call::Health, args.concurrency, args.seconds).await?;
    eprintln!(
        "peak: cast-vote, {} concurrent, {} s ...",
        args.concurrency, args.seconds
    );
    let (votes_per_s, _) = closed_loop(&target, Call::Cast, args.concurrency, args.seconds).await?;
    eprintln!(
        "results: GET results, 32 concurrent, {} s ...",
        args.seconds
    );
    let (_, mut result_latencies) = closed_loop(&target, Call::Results, 32, args.seconds).await?;
    eprintln!(
        "open loop: cast-vote at {} votes/s for {} s ...",
        args.rate, args.seconds
    );
    let (ok, failed, mut latencies) = open_loop(&target, args.rate, args.seconds).await?;
    eprintln!(
        "peak {votes_per_s:.0} votes/s, floor {floor:.0} req/s; open loop {ok} ok, {failed} failed"
    );
    node.shutdown().await?;

    println!(
        "{}",
        json!({
            "bench": "http",
            "votes_per_s": votes_per_s.round(),
            "p50_ms": round3(percentile(&mut latencies, 0.50)),
            "p99_ms": round3(percentile(&mut latencies, 0.99)),
            "p999_ms": round3(percentile(&mut latencies, 0.999)),
            "at_rate": args.rate,
            "open_loop_failed": failed,
            "floor_req_per_s": floor.round(),
            "ratio": round3(votes_per_s / floor),
            "results_p99_ms": round3(percentile(&mut result_latencies, 0.99)),
        })
    );
    Ok(())
}
