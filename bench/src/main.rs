//! `canopy-bench`: the project's benchmarks. Each prints progress on stderr and its figures
//! as one JSON line, last, on stdout, with a baseline measured in the same run.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use canopy_dataflow::{
    CheckpointSink, CutCheckpoint, InMemoryViews, RecordConfig, ViewStore, VoteRecord,
    build_tally_dataflow, recount,
};
use canopy_ingest::{
    EntryLog, LogRecord, Position, SegmentLog, SegmentLogConfig, VoteLog, partition_for,
};
use canopy_schemas::synthetic::random_vote;
use canopy_schemas::{
    ComponentWeights, Decision, DecisionId, LoggedVote, Method, VoterCommitment, VoterId, VoterSalt,
};
use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

mod agents;
mod analytics;
mod api_setup;
mod cluster;
mod http;
mod kafka;
mod push;
mod restore;
mod sensors;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Canopy benchmarks: each prints one JSON line of figures, last")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Votes per second through the tally dataflow, against a single-threaded HashMap recount.
    Core {
        #[arg(long, default_value_t = 2_000_000)]
        votes: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 1_000)]
        decisions: usize,
        /// Votes per epoch (all workers together).
        #[arg(long, default_value_t = 500_000)]
        epoch: usize,
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Also grow the vote record (a leaf hash per vote, per-decision Merkle logs,
        /// signed checkpoints every 1000 leaves).
        #[arg(long)]
        record: bool,
        /// Every decision's voting method: single_choice, approval, ranked_choice (also
        /// `ranked`) or quadratic (100 credits a voter).
        #[arg(long, default_value = "single_choice", value_parser = parse_method)]
        method: Method,
    },
    /// Durable appends per second from concurrent appenders, against a raw write+fsync loop.
    Log {
        #[arg(long, default_value_t = 64)]
        appenders: usize,
        #[arg(long, default_value_t = 3_000)]
        appends_per_appender: usize,
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Votes in flight at once through the gate, as a server's request handlers hold
        /// them (the second phase).
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        /// Votes appended through the gate in the second phase.
        #[arg(long, default_value_t = 1_000_000)]
        gate_votes: usize,
        /// Where the log is written (a fresh temporary directory inside it).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Cast-vote over real HTTP against a server in a process of its own: peak votes/s
    /// (wrk) against the same server's trivial endpoint, latency at a fixed open-loop rate
    /// held for a minute, results-read latency, and the first minute after a restart.
    Http(http::HttpArgs),
    /// The server of the http benchmark (started by it).
    #[command(hide = true)]
    HttpServer(http::HttpServerArgs),
    /// socket.io clients following decisions while votes flow at a fixed rate: clients
    /// held, count updates delivered per second, latency from acknowledgement to client,
    /// and the cast latency against the same rate with no client.
    Push(push::PushArgs),
    /// analyze-proposal from concurrent callers (p50/p95/p99, requests per second) against
    /// the same server's /healthz, with the lake's evidence reused and read each time.
    Agents(agents::AgentsArgs),
    /// Votes per second from a producer through a Kafka topic to results in Redis, with one
    /// and with two worker processes, and the time from acknowledgement to visible.
    Kafka(kafka::KafkaArgs),
    /// One worker process of the kafka benchmark (started by it).
    #[command(hide = true)]
    KafkaWorker(kafka::KafkaWorkerArgs),
    /// The cluster as operators run it: votes and sensor readings through the broker into
    /// `canopy worker` processes (record tiles and lake on) and Redis, with one and with two
    /// processes; freshness, and proofs from a `canopy serve` replica.
    Cluster(cluster::ClusterArgs),
    /// Readings per second through the sensor features dataflow, against a hand-written
    /// single-threaded computation of the same windows.
    Sensors(sensors::SensorArgs),
    /// Typical analyst queries in SQL over a lake of generated votes (50M by default),
    /// against a hand-written single-threaded computation from the same Parquet files.
    Analytics(analytics::AnalyticsArgs),
    /// Restore time of engine checkpoints in PostgreSQL as history grows, with full
    /// checkpoints and compaction and without.
    Restore(restore::RestoreArgs),
    /// Leaves per second into a Merkle log with a signed checkpoint every 1000 leaves,
    /// against raw SHA-256 of the same bytes.
    Merkle {
        #[arg(long, default_value_t = 2_000_000)]
        leaves: usize,
        #[arg(long, default_value_t = 1_000)]
        checkpoint_every: u64,
    },
}

fn main() -> anyhow::Result<()> {
    canopy_node::tls::install_crypto_provider();
    match Cli::parse().bench {
        Bench::Core {
            votes,
            workers,
            decisions,
            epoch,
            partitions,
            seed,
            record,
            method,
        } => core(
            CoreShape {
                votes,
                decisions,
                partitions,
                seed,
                method,
            },
            workers,
            epoch,
            record,
        ),
        Bench::Log {
            appenders,
            appends_per_appender,
            partitions,
            in_flight,
            gate_votes,
            dir,
        } => log(
            LogShape {
                appenders,
                per_appender: appends_per_appender,
                partitions,
                in_flight,
                gate_votes,
            },
            dir,
        ),
        Bench::Http(args) => http::run(args),
        Bench::HttpServer(args) => http::serve(args),
        Bench::Push(args) => push::run(args),
        Bench::Agents(args) => agents::run(args),
        Bench::Kafka(args) => kafka::bench(args),
        Bench::KafkaWorker(args) => kafka::worker(args),
        Bench::Cluster(args) => cluster::bench(args),
        Bench::Sensors(args) => sensors::run(args),
        Bench::Analytics(args) => analytics::run(args),
        Bench::Restore(args) => restore::run(args),
        Bench::Merkle {
            leaves,
            checkpoint_every,
        } => merkle(leaves, checkpoint_every),
    }
}

fn parse_method(text: &str) -> Result<Method, String> {
    match text {
        "ranked" => Ok(Method::RankedChoice),
        other => Method::parse(other).ok_or_else(|| {
            format!(
                "{other:?} is not a method: single_choice, approval, ranked_choice or quadratic"
            )
        }),
    }
}

/// The credits a voter has in a quadratic benchmark decision.
const BENCH_CREDITS: u32 = 100;

/// What the core benchmark's stream is made of.
struct CoreShape {
    votes: usize,
    decisions: usize,
    partitions: u32,
    seed: u64,
    method: Method,
}

/// A realistic stream: decisions of Zipf-like popularity, voters who sometimes change their
/// vote, and repeated deliveries of votes already sent; every decision of `method`.
fn vote_stream(
    votes: usize,
    decision_count: usize,
    partitions: u32,
    seed: u64,
    method: Method,
) -> (Vec<Decision>, Vec<LogRecord>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let decisions: Vec<Decision> = (0..decision_count)
        .map(|i| Decision {
            electorate: Default::default(),
            id: DecisionId(rng.random()),
            title: format!("decision {i}"),
            description: String::new(),
            region: format!("region {}", i % 17),
            options: (0..2 + i % 4).map(|o| format!("option {o}")).collect(),
            opens_at: 0,
            closes_at: i64::MAX,
            weights: ComponentWeights::DEFAULT,
            quorum: 100,
            method,
            credits: if method == Method::Quadratic {
                BENCH_CREDITS
            } else {
                0
            },
        })
        .collect();
    // Zipf(1.1) popularity by inverse-CDF over cumulative weights.
    let cumulative: Vec<f64> = (1..=decision_count)
        .scan(0.0, |sum, rank| {
            *sum += 1.0 / (rank as f64).powf(1.1);
            Some(*sum)
        })
        .collect();
    let total = *cumulative.last().expect("at least one decision");
    let mut ends: HashMap<u32, u64> = HashMap::new();
    let mut records: Vec<LogRecord> = Vec::with_capacity(votes);
    let mut next_voter = 0u128;
    for n in 0..votes {
        let roll: f64 = rng.random();
        let vote = if roll < 0.02 && n > 0 {
            records[rng.random_range(0..n)].vote
        } else {
            let pick = rng.random::<f64>() * total;
            let decision = &decisions[cumulative
                .partition_point(|c| *c < pick)
                .min(decision_count - 1)];
            let voter_id = if roll < 0.12 && n > 0 {
                // A voter changing their mind: someone who voted before, in this decision if
                // the earlier vote was in it, else a new vote of theirs here.
                records[rng.random_range(0..n)].vote.voter_id
            } else {
                next_voter += 1;
                VoterId(next_voter)
            };
            random_vote(&mut rng, decision, voter_id, n as i64)
        };
        let partition = partition_for(vote.decision_id, partitions);
        let end = ends.entry(partition).or_insert(0);
        records.push(LogRecord {
            sealed_voter: canopy_schemas::SealedVoter::NONE,
            leaf_version: canopy_schemas::LeafVersion::V2,
            position: Position {
                partition,
                offset: *end,
            },
            vote,
            commitment: VoterCommitment::new(&BENCH_SALT, vote.voter_id, vote.decision_id),
        });
        *end += 1;
    }
    (decisions, records)
}

#[derive(Default)]
struct CountCheckpoints(std::sync::atomic::AtomicU64);

impl CheckpointSink for CountCheckpoints {
    fn store(&self, _checkpoint: CutCheckpoint) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The benchmark's voters are synthetic and share one salt.
const BENCH_SALT: VoterSalt = VoterSalt([0x5a; 32]);

fn core(
    shape: CoreShape,
    workers: usize,
    epoch_size: usize,
    with_record: bool,
) -> anyhow::Result<()> {
    let CoreShape {
        votes,
        decisions: decision_count,
        partitions,
        seed,
        method,
    } = shape;
    eprintln!("generating {votes} {method} votes over {decision_count} decisions ...");
    let (decisions, records) = vote_stream(votes, decision_count, partitions, seed, method);
    let decisions = Arc::new(decisions);
    let records = Arc::new(records);

    eprintln!("baseline: single-threaded HashMap recount ...");
    let started = Instant::now();
    let expected = recount(records.iter(), &decisions);
    let baseline_secs = started.elapsed().as_secs_f64();

    eprintln!("dataflow: {workers} workers, epochs of {epoch_size} votes ...");
    let views = Arc::new(InMemoryViews::new());
    let checkpoints = Arc::new(CountCheckpoints::default());
    let record = with_record.then(|| {
        let signer = canopy_chain::NoteSigner::from_seed("canopy.bench", &[42u8; 32])
            .expect("a valid key name");
        Arc::new(VoteRecord::new(
            signer,
            RecordConfig::default(),
            partitions,
            Arc::clone(&checkpoints) as Arc<dyn CheckpointSink>,
        ))
    });
    let started = Instant::now();
    let (worker_records, worker_decisions, worker_views) = (
        Arc::clone(&records),
        Arc::clone(&decisions),
        Arc::clone(&views),
    );
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let views: Arc<dyn ViewStore> = worker_views.clone();
        let mut inputs = build_tally_dataflow(worker, views, partitions, record.clone(), false);
        if index == 0 {
            for decision in worker_decisions.iter() {
                inputs.upsert_decision(decision);
            }
        }
        for chunk in worker_records.chunks(epoch_size) {
            for record in chunk.iter().skip(index).step_by(peers) {
                inputs.push(record);
            }
            let epoch = inputs.seal();
            inputs.run_until_published(worker, epoch);
        }
    })
    .map_err(anyhow::Error::msg)?;
    for result in guards.join() {
        result.map_err(anyhow::Error::msg)?;
    }
    let dataflow_secs = started.elapsed().as_secs_f64();

    let views = views.all()?;
    let mismatched = views
        .iter()
        .filter(|view| expected.get(&view.decision) != Some(&view.tally))
        .count();
    if views.len() != expected.len() || mismatched > 0 {
        bail!(
            "the dataflow disagrees with the recount on {mismatched} of {} decisions",
            expected.len()
        );
    }
    eprintln!(
        "dataflow {dataflow_secs:.3}s, baseline {baseline_secs:.3}s; all {} tallies equal the recount",
        views.len()
    );
    let votes_per_s = votes as f64 / dataflow_secs;
    let baseline_votes_per_s = votes as f64 / baseline_secs;
    println!(
        "{}",
        json!({
            "bench": "core",
            "method": method,
            "votes": votes,
            "workers": workers,
            "record": with_record,
            "checkpoints": checkpoints.0.load(std::sync::atomic::Ordering::Relaxed),
            "votes_per_s": votes_per_s.round(),
            "baseline_votes_per_s": baseline_votes_per_s.round(),
            "ratio": round3(votes_per_s / baseline_votes_per_s),
        })
    );
    Ok(())
}

struct LogShape {
    appenders: usize,
    per_appender: usize,
    partitions: u32,
    in_flight: usize,
    gate_votes: usize,
}

/// Durable appends two ways: OS threads each appending one vote at a time (the log's own
/// API, blocking), then the way a node's request handlers append, many votes in flight at
/// once through the gate (validated, then appended async), which the committer's rounds
/// batch. Both against one `write` + `fdatasync` per vote.
fn log(shape: LogShape, dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let LogShape {
        appenders,
        per_appender,
        partitions,
        in_flight,
        gate_votes,
    } = shape;
    let parent = dir.unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&parent)
        .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
    let (_, records) = vote_stream(
        appenders * per_appender,
        1_000,
        partitions,
        11,
        Method::SingleChoice,
    );
    let votes: Arc<Vec<LoggedVote>> = Arc::new(records.iter().map(|r| r.logged()).collect());

    eprintln!("baseline: one write + fdatasync per vote for 2 s ...");
    let baseline_path = scratch.path().join("baseline.bin");
    let mut file = File::create(&baseline_path)?;
    let started = Instant::now();
    let mut baseline_appends = 0usize;
    while started.elapsed() < Duration::from_secs(2) {
        let payload = votes[baseline_appends % votes.len()].encode();
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
        frame.extend_from_slice(&payload);
        file.write_all(&frame)?;
        file.sync_data()?;
        baseline_appends += 1;
    }
    let baseline_per_s = baseline_appends as f64 / started.elapsed().as_secs_f64();

    // What a new node's log costs before its first vote, and what that first vote waits.
    let first_log_dir = scratch.path().join("first-log");
    let opening = Instant::now();
    let first_log = SegmentLog::open(
        &first_log_dir,
        SegmentLogConfig {
            partitions,
            ..Default::default()
        },
    )?;
    let open_ms = round3(opening.elapsed().as_secs_f64() * 1e3);
    let appending = Instant::now();
    first_log.append_votes(std::slice::from_ref(&votes[0]))?;
    let first_append_ms = round3(appending.elapsed().as_secs_f64() * 1e3);
    drop(first_log);
    eprintln!("a new log: opened in {open_ms} ms, its first append took {first_append_ms} ms");

    eprintln!(
        "segment log: {appenders} threads x {per_appender} single-vote appends, {partitions} partitions ..."
    );
    let log = Arc::new(SegmentLog::open(
        scratch.path().join("log"),
        SegmentLogConfig {
            partitions,
            ..Default::default()
        },
    )?);
    let started = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|a| {
            let (log, votes) = (Arc::clone(&log), Arc::clone(&votes));
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let mut latencies = Vec::with_capacity(per_appender);
                for vote in votes.iter().skip(a).step_by(appenders) {
                    let sent = Instant::now();
                    log.append_votes(std::slice::from_ref(vote))?;
                    latencies.push(sent.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(votes.len());
    for thread in threads {
        latencies.extend(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("an appender panicked"))??,
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    check_stored(&log, partitions, votes.len())?;
    let threads = AppendFigures::of(latencies, elapsed);
    drop(log);

    eprintln!("gate: {gate_votes} votes, {in_flight} in flight at once on a 2-thread runtime ...");
    let (decisions, records) = vote_stream(gate_votes, 1_000, partitions, 12, Method::SingleChoice);
    let votes: Arc<Vec<LoggedVote>> = Arc::new(records.iter().map(|r| r.logged()).collect());
    let log = Arc::new(SegmentLog::open(
        scratch.path().join("gate-log"),
        SegmentLogConfig {
            partitions,
            ..Default::default()
        },
    )?);
    let gate = Arc::new(canopy_ingest::Gate::new(Arc::clone(&log)));
    for decision in decisions {
        gate.register(decision, 0)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let latencies = runtime.block_on(async {
        let tasks: Vec<_> = (0..in_flight)
            .map(|task| {
                let (gate, votes) = (Arc::clone(&gate), Arc::clone(&votes));
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(votes.len() / in_flight + 1);
                    for vote in votes.iter().skip(task).step_by(in_flight) {
                        let sent = Instant::now();
                        gate.submit_async(std::slice::from_ref(vote)).await?;
                        latencies.push(sent.elapsed());
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(votes.len());
        for task in tasks {
            latencies.extend(task.await??);
        }
        anyhow::Ok(latencies)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    check_stored(&log, partitions, votes.len())?;
    let gate = AppendFigures::of(latencies, elapsed);
    println!(
        "{}",
        json!({
            "bench": "log",
            "open_ms": open_ms,
            "first_append_ms": first_append_ms,
            "appenders": appenders,
            "appends_per_s": threads.per_s.round(),
            "p50_ms": threads.p50_ms,
            "p99_ms": threads.p99_ms,
            "baseline_appends_per_s": baseline_per_s.round(),
            "ratio": round3(threads.per_s / baseline_per_s),
            "gate_in_flight": in_flight,
            "gate_appends_per_s": gate.per_s.round(),
            "gate_p50_ms": gate.p50_ms,
            "gate_p99_ms": gate.p99_ms,
            "gate_max_ms": gate.max_ms,
            "gate_ratio": round3(gate.per_s / baseline_per_s),
        })
    );
    Ok(())
}

/// Every acknowledged append is in the log.
fn check_stored(log: &SegmentLog, partitions: u32, acknowledged: usize) -> anyhow::Result<()> {
    let stored: u64 = (0..partitions)
        .map(|p| log.end_offset(p))
        .sum::<Result<u64, _>>()?;
    if stored != acknowledged as u64 {
        bail!("{stored} records in the log after {acknowledged} acknowledged appends");
    }
    Ok(())
}

struct AppendFigures {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl AppendFigures {
    fn of(mut latencies: Vec<Duration>, elapsed_s: f64) -> Self {
        latencies.sort_unstable();
        let percentile = |p: f64| {
            round3(
                latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
                    .as_secs_f64()
                    * 1e3,
            )
        };
        Self {
            per_s: latencies.len() as f64 / elapsed_s,
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            max_ms: percentile(1.0),
        }
    }
}

fn merkle(leaves: usize, checkpoint_every: u64) -> anyhow::Result<()> {
    use sha2::Digest;
    eprintln!("encoding {leaves} votes as record leaves ...");
    let (_, records) = vote_stream(leaves, 100, 1, 3, Method::SingleChoice);
    let encoded: Vec<canopy_schemas::LeafBytes> =
        records.iter().map(|r| r.logged().leaf_data()).collect();

    eprintln!("baseline: SHA-256 of each encoding ...");
    let started = Instant::now();
    let mut sink = 0u8;
    for bytes in &encoded {
        sink ^= sha2::Sha256::digest(bytes)[0];
    }
    let baseline = leaves as f64 / started.elapsed().as_secs_f64();

    eprintln!("merkle log: append, signed checkpoint every {checkpoint_every} leaves ...");
    let signer = canopy_chain::NoteSigner::from_seed("canopy.bench", &[42u8; 32])?;
    let started = Instant::now();
    let mut log = canopy_chain::MerkleLog::new();
    let mut checkpoints = 0usize;
    for bytes in &encoded {
        log.append(bytes);
        if log.size().is_multiple_of(checkpoint_every) {
            let checkpoint = canopy_chain::Checkpoint {
                origin: "canopy.bench/decision".into(),
                size: log.size(),
                root: log.root(),
            };
            checkpoints += checkpoint.sign(&signer).len();
        }
    }
    let merkle = leaves as f64 / started.elapsed().as_secs_f64();
    eprintln!("({sink} {checkpoints})");
    println!(
        "{}",
        json!({
            "bench": "merkle",
            "leaves_per_s": merkle.round(),
            "sha256_leaves_per_s": baseline.round(),
            "ratio": round3(merkle / baseline),
        })
    );
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
