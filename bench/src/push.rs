//! `canopy-bench push`: socket.io clients following decisions on `/voting` while votes flow
//! over HTTP at a fixed open-loop rate, all on loopback in one process with the server.
//!
//! Each client is a WebSocket speaking engine.io v4 / socket.io v5 (the framing below is all
//! a subscriber needs); the stock JavaScript client is proven against the same server by
//! tests/push.rs. The baseline is the same open loop with no client connected, run first in
//! the same process: what following costs the vote path is the ratio of the two.
//!
//! Latency is from a vote's acknowledgement (its HTTP answer) to a client receiving the
//! first `vote_count_updated` whose position covers it, for every (vote, following client)
//! pair: with pushes coalesced every `--push-interval-ms`, a vote waits for the next push
//! of its decision, so the interval bounds the figure from below (p50 about half of it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use canopy_node::listener::{HttpSettings, raise_open_file_limit};
use canopy_node::{Node, NodeConfig};
use canopy_serving::api::create_user;
use canopy_serving::auth::Role;
use canopy_serving::limits::Rate;
use canopy_serving::state::ApiConfig;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::api_setup::create_decision;
use crate::http::percentile;
use crate::round3;

#[derive(Args)]
pub struct PushArgs {
    /// socket.io clients, each following `--follow` decisions.
    #[arg(long, default_value_t = 5_000)]
    clients: usize,
    /// Decisions votes are cast in (clients are spread over them).
    #[arg(long, default_value_t = 100)]
    decisions: usize,
    /// Decisions each client follows.
    #[arg(long, default_value_t = 1)]
    follow: usize,
    /// The open-loop rate, votes per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of votes per phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Voters casting (each vote replaces the voter's previous one in its decision).
    #[arg(long, default_value_t = 200)]
    voters: usize,
    /// The server's `--push-interval-ms`.
    #[arg(long, default_value_t = 250)]
    push_interval_ms: u64,
    /// Dataflow worker threads of the server.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

/// Acknowledged votes: per decision, (log offset, when the answer came).
type Acks = Vec<Mutex<Vec<(u64, Instant)>>>;

/// One `vote_count_updated` a client received.
struct Received {
    decision: usize,
    offset: u64,
    at: Instant,
}

#[derive(Deserialize)]
struct Position {
    offset: u64,
}

#[derive(Deserialize)]
struct CountUpdate<'a> {
    decision_id: &'a str,
    as_of: Option<Position>,
}

#[derive(Deserialize)]
struct CastAnswer {
    position: Position,
}

struct Caster {
    client: reqwest::Client,
    base: String,
    tokens: Vec<String>,
    decisions: Vec<String>,
    acks: Acks,
}

impl Caster {
    /// Casts vote `n` and notes its acknowledgement; false if it was not acknowledged.
    async fn cast(&self, n: u64) -> bool {
        let decision = n as usize % self.decisions.len();
        let token = &self.tokens[(n as usize / self.decisions.len()) % self.tokens.len()];
        let body = json!({ "decision_id": self.decisions[decision], "option": n % 3 });
        let sent = self
            .client
            .post(format!("{}/api/v1/voting/cast-vote", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        let Ok(response) = sent else { return false };
        if response.status() != reqwest::StatusCode::CREATED {
            return false;
        }
        let Ok(answer) = response.json::<CastAnswer>().await else {
            return false;
        };
        self.acks[decision]
            .lock()
            .await
            .push((answer.position.offset, Instant::now()));
        true
    }
}

/// Votes at `rate` for `seconds`, each sent at its intended time whatever the others do;
/// latency counts from that time. Returns (acknowledged, failed, latencies in ms).
async fn open_loop(
    caster: &Arc<Caster>,
    rate: f64,
    seconds: f64,
    first: u64,
) -> (u64, u64, Vec<f64>) {
    let total = (rate * seconds) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let sends: Vec<_> = (0..total)
        .map(|n| {
            let intended = start + Duration::from_secs_f64(n as f64 / rate);
            let caster = Arc::clone(caster);
            tokio::spawn(async move {
                tokio::time::sleep_until(intended).await;
                let ok = caster.cast(first + n).await;
                (ok, intended.elapsed().as_secs_f64() * 1e3)
            })
        })
        .collect();
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::with_capacity(total as usize));
    for send in sends {
        match send.await {
            Ok((true, latency)) => {
                ok += 1;
                latencies.push(latency);
            }
            _ => failed += 1,
        }
    }
    (ok, failed, latencies)
}

/// What one client saw.
#[derive(Default)]
struct Followed {
    received: Vec<Received>,
    refused: u64,
    held: bool,
}

/// One subscriber: connects, joins `/voting` with `token`, follows `decisions`, and notes
/// How long the connecting loop waits for any of 64 handshakes in flight to finish.
const HANDSHAKE_STALL: Duration = Duration::from_secs(30);

/// every count update until `stop`.
async fn follow(
    url: String,
    token: String,
    decisions: Vec<(usize, String)>,
    subscribed: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Followed> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("connecting")?;
    let index: HashMap<String, usize> = decisions
        .iter()
        .map(|(index, id)| (id.clone(), *index))
        .collect();
    let mut followed = Followed::default();
    let mut pending_answers = decisions.len();
    loop {
        let message = tokio::select! {
            message = socket.next() => message,
            _ = stop.changed() => break,
        };
        let Some(message) = message else {
            return Ok(followed);
        };
        let text = match message.context("reading")? {
            Message::Text(text) => text,
            Message::Close(_) => return Ok(followed),
            _ => continue,
        };
        let text = text.as_str();
        if text.starts_with('0') {
            // engine.io open: join the namespace with the token.
            let connect = format!("40/voting,{}", json!({ "token": token }));
            socket.send(Message::text(connect)).await?;
        } else if text == "2" {
            socket.send(Message::text("3")).await?;
        } else if text.starts_with("44/voting,") {
            bail!("refused at the handshake: {text}");
        } else if text.starts_with("40/voting,") {
            for (_, id) in &decisions {
                let subscribe =
                    format!("42/voting,{}", json!(["subscribe", { "decision_id": id }]));
                socket.send(Message::text(subscribe)).await?;
            }
        } else if let Some(event) = text.strip_prefix("42/voting,") {
            let at = Instant::now();
            if event.starts_with("[\"vote_count_updated\"") {
                let (_, update): (&str, CountUpdate) =
                    serde_json::from_str(event).context("a count update")?;
                let (Some(&decision), Some(as_of)) = (index.get(update.decision_id), update.as_of)
                else {
                    continue;
                };
                followed.received.push(Received {
                    decision,
                    offset: as_of.offset,
                    at,
                });
                if pending_answers > 0 {
                    pending_answers -= 1;
                    if pending_answers == 0 {
                        subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else if event.starts_with("[\"refused\"") {
                followed.refused += 1;
            }
        }
    }
    followed.held = true;
    let _ = socket.close(None).await;
    Ok(followed)
}

pub fn run(args: PushArgs) -> anyhow::Result<()> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: PushArgs) -> anyhow::Result<()> {
    if args.decisions == 0 || args.follow == 0 || args.follow > args.decisions {
        bail!("--follow must be between 1 and --decisions");
    }
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
        push_interval: Duration::from_millis(args.push_interval_ms),
        ..ApiConfig::default()
    };
    config.http = HttpSettings {
        max_connections: args.clients + 2_048,
        ..HttpSettings::default()
    };
    let node = Node::start(config).await.context("starting the server")?;
    let state = Arc::clone(&node.state);

    eprintln!(
        "creating {} voters and {} decisions ...",
        args.voters, args.decisions
    );
    let owner = create_user(
        state.store.as_ref(),
        "bench-owner",
        "a long passphrase for the benchmark",
        Role::Operator,
    )
    .await?;
    let owner_token = state.keys.issue(owner, Role::Operator, 1_000_000)?.0;
    let watcher = create_user(
        state.store.as_ref(),
        "bench-watcher",
        "a long passphrase for the benchmark",
        Role::Citizen,
    )
    .await?;
    let watcher_token = state.keys.issue(watcher, Role::Citizen, 1_000_000)?.0;
    let mut tokens = Vec::with_capacity(args.voters);
    for n in 0..args.voters {
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
        .pool_max_idle_per_host(1_024)
        .build()?;
    let base = format!("http://{}", node.addr);
    let mut decisions = Vec::with_capacity(args.decisions);
    for n in 0..args.decisions {
        let create = json!({ "title": format!("Benchmark decision {n}"), "options": ["a", "b", "c"], "closes_at": i64::MAX, "quorum": 1 });
        let id = create_decision(&client, &base, &owner_token, &create).await?;
        decisions.push(id);
    }
    let caster = Arc::new(Caster {
        client,
        base,
        tokens,
        decisions: decisions.clone(),
        acks: (0..args.decisions)
            .map(|_| Mutex::new(Vec::new()))
            .collect(),
    });

    // Every voter's first vote reads its salt from the store: out of both phases.
    eprintln!("warming up: {} votes/s for 2 s ...", args.rate);
    let warm_up = (args.rate * 2.0) as u64;
    open_loop(&caster, args.rate, 2.0, 0).await;
    eprintln!(
        "baseline: {} votes/s for {} s with no client following ...",
        args.rate, args.seconds
    );
    let (_, baseline_failed, mut baseline_latencies) =
        open_loop(&caster, args.rate, args.seconds, warm_up).await;

    eprintln!("connecting {} clients ...", args.clients);
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr);
    let (stop, stopped) = watch::channel(false);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let failed_connects = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(args.clients);
    for n in 0..args.clients {
        let follows: Vec<(usize, String)> = (0..args.follow)
            .map(|k| {
                let index = (n * args.follow + k) % args.decisions;
                (index, decisions[index].clone())
            })
            .collect();
        let (url, token, answered, stopped, failed) = (
            url.clone(),
            watcher_token.clone(),
            Arc::clone(&subscribed),
            stopped.clone(),
            Arc::clone(&failed_connects),
        );
        clients.push(tokio::spawn(async move {
            let followed = follow(url, token, follows, answered, stopped).await;
            if followed.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            followed
        }));
        // At most 64 handshakes at once: a client counts as connecting until its
        // subscriptions are answered (or it failed).
        let waiting_since = Instant::now();
        while clients.len()
            - subscribed.load(Ordering::Relaxed)
            - failed_connects.load(Ordering::Relaxed) as usize
            >= 64
        {
            if waiting_since.elapsed() > HANDSHAKE_STALL {
                bail!(
                    "64 clients have waited {} s for their subscriptions to be answered \
                     ({} of {} subscribed, {} failed): the server stopped answering handshakes",
                    HANDSHAKE_STALL.as_secs(),
                    subscribed.load(Ordering::Relaxed),
                    n,
                    failed_connects.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if (n + 1) % 1_000 == 0 {
            eprintln!("  {} connected", n + 1);
        }
    }
    let wait_until = Instant::now() + Duration::from_secs(60);
    while subscribed.load(Ordering::Relaxed) + (failed_connects.load(Ordering::Relaxed) as usize)
        < args.clients
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} clients subscribed; {} votes/s for {} s ...",
        subscribed.load(Ordering::Relaxed),
        args.rate,
        args.seconds
    );
    for acks in &caster.acks {
        acks.lock().await.clear();
    }
    let phase_start = Instant::now();
    let first_vote = warm_up + (args.rate * args.seconds) as u64;
    let (_, followed_failed, mut followed_latencies) =
        open_loop(&caster, args.rate, args.seconds, first_vote).await;
    // The last votes' pushes are still on their way.
    tokio::time::sleep(Duration::from_millis(args.push_interval_ms * 2 + 500)).await;
    let phase_seconds = phase_start.elapsed().as_secs_f64();
    stop.send(true)?;

    let mut acks: Vec<Vec<(u64, Instant)>> = Vec::with_capacity(args.decisions);
    for decision in &caster.acks {
        let mut decision = decision.lock().await.clone();
        decision.sort_unstable_by_key(|(offset, _)| *offset);
        acks.push(decision);
    }
    let (mut held, mut refused, mut events, mut delivery) = (0usize, 0u64, 0u64, Vec::new());
    let mut errors: HashMap<String, usize> = HashMap::new();
    for client in clients {
        match client.await? {
            Ok(followed) => {
                held += usize::from(followed.held);
                refused += followed.refused;
                let mut last: HashMap<usize, u64> = HashMap::new();
                for received in followed.received {
                    if received.at < phase_start {
                        last.insert(received.decision, received.offset);
                        continue;
                    }
                    events += 1;
                    let since = last.insert(received.decision, received.offset);
                    // Every acknowledged vote this push newly covers for this client.
                    let covered = &acks[received.decision];
                    let from =
                        since.map_or(0, |since| covered.partition_point(|(o, _)| *o <= since));
                    let to = covered.partition_point(|(o, _)| *o <= received.offset);
                    for (_, acknowledged) in &covered[from..to.max(from)] {
                        let waited = received.at.saturating_duration_since(*acknowledged);
                        delivery.push(waited.as_secs_f64() * 1e3);
                    }
                }
            }
            Err(error) => *errors.entry(format!("{error:#}")).or_default() += 1,
        }
    }
    for (error, count) in &errors {
        eprintln!("{count} clients failed: {error}");
    }
    node.shutdown().await?;

    let baseline_p99 = percentile(&mut baseline_latencies, 0.99);
    let followed_p99 = percentile(&mut followed_latencies, 0.99);
    println!(
        "{}",
        json!({
            "bench": "push",
            "clients": args.clients,
            "clients_held": held,
            "decisions": args.decisions,
            "rate": args.rate,
            "push_interval_ms": args.push_interval_ms,
            "events_per_s": (events as f64 / phase_seconds).round(),
            "delivered_votes": delivery.len(),
            "delivery_p50_ms": round3(percentile(&mut delivery, 0.50)),
            "delivery_p99_ms": round3(percentile(&mut delivery, 0.99)),
            "refused": refused,
            "cast_p99_ms": round3(followed_p99),
            "cast_failed": followed_failed,
            "baseline_cast_p99_ms": round3(baseline_p99),
            "baseline_cast_failed": baseline_failed,
            "cast_p99_ratio": round3(followed_p99 / baseline_p99),
        })
    );
    Ok(())
}
