//! `canopy-bench kafka`: votes per second from a producer through a Kafka topic to results
//! in Redis, for one and for two dataflow worker processes in the same run, and the time
//! from an append's acknowledgement to its vote being visible in the results.
//!
//! Each worker process is this binary (`canopy-bench kafka-worker`) running the tally engine
//! as one process of a timely cluster, exactly as `canopy worker` does, without the vote
//! record and checkpoints (which the `core --record` and `merkle` benchmarks measure).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use canopy_dataflow::{ClusterConfig, EngineConfig, TallyEngine, ViewStore};
use canopy_ingest::{EntryLog, KafkaConfig, KafkaLog, VoteLog};
use canopy_node::redis::RedisViews;
use canopy_schemas::{LoggedVote, Method};
use serde_json::json;

use crate::{round3, vote_stream};

#[derive(clap::Args)]
pub struct KafkaArgs {
    /// A Kafka-protocol broker (`host:port`).
    #[arg(long, env = "CANOPY_BENCH_KAFKA", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(
        long,
        env = "CANOPY_BENCH_REDIS",
        default_value = "redis://127.0.0.1:6379/"
    )]
    redis: String,
    #[arg(long, default_value_t = 200_000)]
    votes: usize,
    #[arg(long, default_value_t = 1_000)]
    decisions: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Worker threads per worker process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Concurrent producer threads (one producer client), each appending batches.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Votes per second during the freshness phase (paced, well below capacity).
    #[arg(long, default_value_t = 2_000.0)]
    fresh_rate: f64,
    #[arg(long, default_value_t = 5.0)]
    fresh_seconds: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(clap::Args)]
pub struct KafkaWorkerArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    redis: String,
    #[arg(long)]
    prefix: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    partitions: u32,
    #[arg(long)]
    decisions: usize,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    process: usize,
    /// host:port of every process, comma-separated, in process order.
    #[arg(long)]
    hosts: String,
    #[arg(long)]
    threads: usize,
}

/// The log's signing key of a run, the same in the benchmark and its worker processes
/// (each run has a topic of its own; the key guards nothing here).
fn log_key(topic: &str) -> canopy_ingest::LogKey {
    use sha2::Digest;
    canopy_ingest::LogKey::from_bytes(sha2::Sha256::digest(topic.as_bytes()).into())
}

/// One worker process: the engine over the topic, results into Redis, until stdin closes.
pub fn worker(args: KafkaWorkerArgs) -> anyhow::Result<()> {
    let (decisions, _) = vote_stream(
        0,
        args.decisions,
        args.partitions,
        args.seed,
        Method::SingleChoice,
    );
    let log = KafkaLog::connect(KafkaConfig {
        partitions: args.partitions,
        create_topic: false,
        ..KafkaConfig::new(
            args.brokers.clone(),
            args.topic.clone(),
            log_key(&args.topic),
        )
    })?;
    let views = Arc::new(RedisViews::connect(&args.redis, &args.prefix)?);
    let addresses: Vec<String> = args.hosts.split(',').map(str::to_string).collect();
    let engine = TallyEngine::start(
        EngineConfig {
            workers: args.threads,
            cluster: (addresses.len() > 1).then_some(ClusterConfig {
                process: args.process,
                addresses,
            }),
            ..EngineConfig::default()
        },
        Arc::new(log),
        views,
        None,
        decisions,
    )?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut rest = String::new();
    while std::io::stdin().read_line(&mut rest)? > 0 {}
    engine.shutdown()?;
    Ok(())
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            drop(child.stdin.take());
        }
        for child in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_workers(
    args: &KafkaArgs,
    processes: usize,
    topic: &str,
    prefix: &str,
) -> anyhow::Result<Workers> {
    let hosts: Vec<String> = (0..processes)
        .map(|_| free_port().map(|port| format!("127.0.0.1:{port}")))
        .collect::<anyhow::Result<_>>()?;
    let mut workers = Workers(Vec::new());
    for process in 0..processes {
        let child = Command::new(std::env::current_exe()?)
            .args([
                "kafka-worker",
                "--brokers",
                &args.brokers,
                "--redis",
                &args.redis,
            ])
            .args(["--prefix", prefix, "--topic", topic])
            .args(["--partitions", &args.partitions.to_string()])
            .args(["--decisions", &args.decisions.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args([
                "--process",
                &process.to_string(),
                "--hosts",
                &hosts.join(","),
            ])
            .args(["--threads", &args.threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a worker process")?;
        workers.0.push(child);
    }
    // Timely reports its connections on stdout too; "ready" is ours.
    let (said_ready, readiness) = std::sync::mpsc::channel::<()>();
    for child in &mut workers.0 {
        let stdout = child.stdout.take().context("a worker's stdout")?;
        let said_ready = said_ready.clone();
        std::thread::spawn(move || {
            // Read to the end, so the worker never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "ready" {
                    let _ = said_ready.send(());
                }
            }
        });
    }
    for _ in 0..processes {
        readiness
            .recv_timeout(Duration::from_secs(60))
            .context("a worker process did not become ready within 60 s")?;
    }
    Ok(workers)
}

/// Appends `votes` from `producers` threads in batches; returns when all are acknowledged.
fn produce(log: &KafkaLog, votes: &[LoggedVote], producers: usize, batch: usize) {
    let chunk = votes.len().div_ceil(producers.max(1)).max(1);
    std::thread::scope(|scope| {
        for share in votes.chunks(chunk) {
            scope.spawn(move || {
                for batch in share.chunks(batch) {
                    log.append_votes(batch).expect("the broker acknowledges");
                }
            });
        }
    });
}

fn caught_up(views: &RedisViews, ends: &HashMap<u32, u64>) -> bool {
    ends.iter().all(|(p, end)| views.frontier(*p) >= *end)
}

struct Run {
    votes_per_s: f64,
    fresh_ms: Vec<f64>,
}

fn run(
    args: &KafkaArgs,
    processes: usize,
    votes: &[LoggedVote],
    paced: &[LoggedVote],
) -> anyhow::Result<Run> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("canopy-bench-{id}");
    let prefix = format!("canopy-bench-{id}");
    let log = KafkaLog::connect(KafkaConfig {
        partitions: args.partitions,
        ..KafkaConfig::new(args.brokers.clone(), topic.clone(), log_key(&topic))
    })?;
    let views = RedisViews::connect(&args.redis, &prefix)?;
    let _workers = start_workers(args, processes, &topic, &prefix)?;
    eprintln!(
        "  {processes} worker process(es) ready; producing {} votes ...",
        votes.len()
    );

    let started = Instant::now();
    produce(&log, votes, args.producers, args.batch);
    let produced_s = started.elapsed().as_secs_f64();
    let ends: HashMap<u32, u64> = (0..args.partitions)
        .map(|p| log.end_offset(p).map(|end| (p, end)))
        .collect::<Result<_, _>>()?;
    while !caught_up(&views, &ends) {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the workers did not materialize the votes within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "  produced in {produced_s:.2}s, all results materialized after {elapsed:.2}s: {:.0} votes/s",
        votes.len() as f64 / elapsed
    );

    // Freshness: a paced trickle; each acknowledged batch's time until the results include it.
    eprintln!(
        "  freshness: {} votes at {} votes/s ...",
        paced.len(),
        args.fresh_rate
    );
    let fresh_ms = paced_freshness(
        &log,
        RedisViews::connect(&args.redis, &prefix)?,
        args.partitions,
        paced,
        args.fresh_rate,
        Duration::from_secs(600),
    )?;
    Ok(Run {
        votes_per_s: votes.len() as f64 / elapsed,
        fresh_ms,
    })
}

/// Appends `paced` in batches of 10 at `rate` votes per second; for each acknowledged batch,
/// the milliseconds until every partition's frontier in `views` passes its offsets. Fails
/// unless every vote became visible within `give_up`.
pub(crate) fn paced_freshness(
    log: &KafkaLog,
    views: RedisViews,
    partitions: u32,
    paced: &[LoggedVote],
    rate: f64,
    give_up: Duration,
) -> anyhow::Result<Vec<f64>> {
    let pending: Arc<Mutex<Vec<(u32, u64, Instant)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pending, done) = (Arc::clone(&pending), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let give_up = Instant::now() + give_up;
            loop {
                let frontiers: Vec<u64> = (0..partitions).map(|p| views.frontier(p)).collect();
                let now = Instant::now();
                let mut waiting = pending.lock().expect("not poisoned");
                waiting.retain(|(p, offset, acked)| {
                    if frontiers[*p as usize] > *offset {
                        latencies.push(now.duration_since(*acked).as_secs_f64() * 1000.0);
                        false
                    } else {
                        true
                    }
                });
                let finished = done.load(Ordering::Acquire) && waiting.is_empty();
                drop(waiting);
                if finished || now > give_up {
                    return latencies;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let per_batch = 10usize;
    let gap = Duration::from_secs_f64(per_batch as f64 / rate.max(1.0));
    let mut next = Instant::now();
    for batch in paced.chunks(per_batch) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += gap;
        let positions = log.append_votes(batch)?;
        let acked = Instant::now();
        let mut waiting = pending.lock().expect("not poisoned");
        for position in positions {
            waiting.push((position.partition, position.offset, acked));
        }
    }
    done.store(true, Ordering::Release);
    let latencies = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the freshness watcher panicked"))?;
    if latencies.len() != paced.len() {
        bail!(
            "only {} of {} paced votes became visible",
            latencies.len(),
            paced.len()
        );
    }
    Ok(latencies)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn bench(args: KafkaArgs) -> anyhow::Result<()> {
    let paced_count = (args.fresh_rate * args.fresh_seconds) as usize;
    eprintln!(
        "generating {} votes over {} decisions ...",
        args.votes + paced_count,
        args.decisions
    );
    let (_, records) = vote_stream(
        args.votes + paced_count,
        args.decisions,
        args.partitions,
        args.seed,
        Method::SingleChoice,
    );
    let all: Vec<LoggedVote> = records.iter().map(|r| r.logged()).collect();
    let (votes, paced) = all.split_at(args.votes);

    eprintln!("1 worker process of {} thread(s):", args.threads);
    let one = run(&args, 1, votes, paced)?;
    eprintln!("2 worker processes of {} thread(s) each:", args.threads);
    let two = run(&args, 2, votes, paced)?;
    let mut fresh = two.fresh_ms.clone();
    fresh.sort_by(f64::total_cmp);
    let mut fresh_one = one.fresh_ms.clone();
    fresh_one.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "bench": "kafka",
            "votes": args.votes,
            "partitions": args.partitions,
            "threads_per_process": args.threads,
            "votes_per_s_1": one.votes_per_s.round(),
            "votes_per_s_2": two.votes_per_s.round(),
            "scaling": round3(two.votes_per_s / one.votes_per_s),
            "freshness_p50_ms": round3(percentile(&fresh, 50.0)),
            "freshness_p99_ms": round3(percentile(&fresh, 99.0)),
            "freshness_p99_ms_1": round3(percentile(&fresh_one, 99.0)),
            "fresh_rate": args.fresh_rate,
        })
    );
    Ok(())
}
