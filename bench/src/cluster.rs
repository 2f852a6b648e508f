//! `canopy-bench cluster`: the cluster as an operator runs it, measured in one run on one
//! broker. Votes (through `KafkaLog`) and sensor readings (through the sensor topic's
//! producer), both signed with the deployment's log key, go to real `canopy worker`
//! processes started from a generated config file: the tallies, the sensor features, the
//! record written as tlog tiles into a folder and the lake written into a folder, with the
//! results in Redis and every checkpoint in a PostgreSQL database of the run's own.
//!
//! - votes/s with 1 and with 2 worker processes (each run a fresh deployment): from the
//!   first append of a backlog, produced while the workers run, until every partition's
//!   frontier in Redis reaches the topic's end; readings/s likewise, produced at the same
//!   time;
//! - freshness: a paced trickle of votes, each acknowledged append until Redis shows it;
//! - proofs: a `canopy serve` replica over the 2-process deployment answers inclusion
//!   proofs from the tiles, each leaf asked once (then once more, its tiles now cached).
//!
//! Nothing is taken on trust: the tallies in Redis must equal a recount of the topic as
//! the broker holds it, and every proof must lead to the root the recount's tree has at
//! the proof's size, or the bench fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use canopy_chain::{Hash, leaf_hash, root_from_inclusion};
use canopy_dataflow::{SensorViewRead, ViewStore, WindowConfig, recount, recount_trees};
use canopy_ingest::{EntryLog, KafkaConfig, KafkaLog, KafkaSensorLog, LogEntry, LogKey, VoteLog};
use canopy_node::redis::RedisViews;
use canopy_node::redis_sensors::RedisSensorViews;
use canopy_schemas::{
    Decision, DecisionId, LoggedVote, Method, Metric, Quality, SensorReading, VoteLogEntry,
};
use canopy_serving::auth::Role;
use canopy_serving::store::{MetadataStore, PostgresStore, UserRecord};
use canopy_testkit::TestDatabase;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::kafka::{free_port, paced_freshness, percentile};
use crate::{round3, vote_stream};

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// A Kafka-protocol broker (`host:port`).
    #[arg(long, env = "CANOPY_BENCH_KAFKA", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(
        long,
        env = "CANOPY_BENCH_REDIS",
        default_value = "redis://127.0.0.1:6379/"
    )]
    redis: String,
    /// The `canopy` binary the workers and the replica run; by default the one beside this
    /// benchmark's (`cargo build [--release]` puts it there).
    #[arg(long, env = "CANOPY_BIN")]
    canopy_bin: Option<PathBuf>,
    /// Votes in each run's backlog.
    #[arg(long, default_value_t = 200_000)]
    votes: usize,
    /// Sensor readings in each run's backlog, produced alongside the votes.
    #[arg(long, default_value_t = 200_000)]
    readings: usize,
    #[arg(long, default_value_t = 1_000)]
    decisions: usize,
    #[arg(long, default_value_t = 500)]
    sensors: usize,
    #[arg(long, default_value_t = 20)]
    regions: usize,
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Worker threads per worker process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Concurrent producer threads per topic (one producer client each topic).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Votes per second during the freshness phase (paced, well below capacity).
    #[arg(long, default_value_t = 2_000.0)]
    fresh_rate: f64,
    #[arg(long, default_value_t = 5.0)]
    fresh_seconds: f64,
    /// Leaves whose inclusion proof is asked of the replica.
    #[arg(long, default_value_t = 2_000)]
    proofs: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// How long the workers may take to drain a backlog or to stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(900);
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// One run's deployment: its database (dropped with it), Redis prefix, topics, data
/// directory with the log key, record store and lake folders, and config file.
struct Deployment {
    database: TestDatabase,
    dir: tempfile::TempDir,
    topic: String,
    prefix: String,
    config: PathBuf,
    log_key: LogKey,
}

impl Deployment {
    async fn create(args: &ClusterArgs, decisions: &[Decision]) -> anyhow::Result<Self> {
        let database = TestDatabase::create().await;
        let store = PostgresStore::connect(&database.url).await?;
        store.migrate().await?;
        register_decisions(&store, decisions).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (topic, prefix) = (format!("canopy-bench-{id}"), format!("canopy-bench-{id}"));
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let log_key = install_log_key(&data)?;
        let config = dir.path().join("canopy.toml");
        // The production defaults but for where things go; a replica's per-address limit
        // would otherwise throttle the one client asking for proofs.
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\
                 [api]\naddress_rate = 1000000.0\n\
                 [database]\nurl = {db:?}\n\
                 [kafka]\nbrokers = {brokers:?}\ntopic = {topic:?}\npartitions = {partitions}\n\
                 [redis]\nurl = {redis:?}\nprefix = {prefix:?}\n\
                 [workers]\nthreads = {threads}\n\
                 [record]\ntile_store = {tiles:?}\n\
                 [lake]\nenabled = true\nlocation = {lake:?}\n",
                db = database.url,
                brokers = args.brokers,
                partitions = args.partitions,
                redis = args.redis,
                threads = args.threads,
                tiles = dir.path().join("record-tiles"),
                lake = dir.path().join("lake"),
            ),
        )?;
        Ok(Self {
            database,
            dir,
            topic,
            prefix,
            config,
            log_key,
        })
    }

    fn kafka(&self, args: &ClusterArgs, topic: &str) -> KafkaConfig {
        KafkaConfig {
            partitions: args.partitions,
            // The bench reads the topic back only to recount it: the workers' dead letters
            // are the only ones.
            write_dead_letters: false,
            ..KafkaConfig::new(args.brokers.clone(), topic, self.log_key.clone())
        }
    }

    fn sensor_topic(&self) -> String {
        format!("{}-sensors", self.topic)
    }
}

/// The decisions' owner is an account no one can sign in to (its password hash matches no
/// password): the bench registers decisions in the store directly, as an API replica would.
async fn register_decisions(store: &PostgresStore, decisions: &[Decision]) -> anyhow::Result<()> {
    let now = canopy_schemas::clock::unix_now() as i64;
    let owner = UserRecord {
        id: uuid::Uuid::new_v4(),
        username: "bench-owner".into(),
        password_hash: "!".into(),
        role: Role::Operator,
        weight: 1_000_000,
        totp_secret: None,
        totp_enabled: false,
    };
    store.create_user(&owner, now).await?;
    for decision in decisions {
        store.put_decision(decision, owner.id, now).await?;
    }
    Ok(())
}

/// Writes a fresh log key where every process of the deployment reads it
/// (`<data>/keys/log-hmac.key`, private as the node keeps it) and returns it.
fn install_log_key(data: &Path) -> anyhow::Result<LogKey> {
    use std::os::unix::fs::PermissionsExt;
    let keys = data.join("keys");
    std::fs::create_dir_all(&keys)?;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))?;
    let key: [u8; 32] = rand::random();
    let file = keys.join("log-hmac.key");
    std::fs::write(&file, key)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    Ok(LogKey::from_bytes(key))
}

/// Processes the bench started, each with the file its standard error goes to. Whatever
/// still runs when this is dropped is killed.
struct Processes {
    children: Vec<(Child, PathBuf)>,
}

impl Processes {
    /// Fails, with the tail of its log, if any process has exited.
    fn check_running(&mut self, what: &str) -> anyhow::Result<()> {
        for (child, log) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{what}: a process exited ({status}); {}", log_tail(log));
            }
        }
        Ok(())
    }

    /// SIGTERM to every process, as an operator stops a cluster; each must stop cleanly.
    fn stop(mut self) -> anyhow::Result<()> {
        for (child, _) in &self.children {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .context("running kill")?;
        }
        let deadline = Instant::now() + STOP_LIMIT;
        for (child, log) in &mut self.children {
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        bail!(
                            "a process did not stop cleanly ({status}); {}",
                            log_tail(log)
                        );
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "a process did not stop within {STOP_LIMIT:?}; {}",
                        log_tail(log)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("the end of {}:\n{tail}", log.display())
}

/// Starts `canopy <command> --config <file> <extra>`, its stderr into `log`; returns once
/// it prints a line containing `ready_marker` on stdout.
fn spawn_canopy(
    canopy: &Path,
    deployment: &Deployment,
    (command, extra): (&str, &[String]),
    log: PathBuf,
    ready_marker: &'static str,
) -> anyhow::Result<(Child, PathBuf, std::sync::mpsc::Receiver<()>)> {
    let mut child = Command::new(canopy)
        .arg(command)
        .arg("--config")
        .arg(&deployment.config)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {} {command}", canopy.display()))?;
    let stdout = child.stdout.take().context("a child's stdout")?;
    let (ready, readiness) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, so the child never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(ready_marker) {
                let _ = ready.send(());
            }
        }
    });
    Ok((child, log, readiness))
}

/// Waits for every process's ready line, failing early if one exits.
fn wait_ready(
    processes: &mut Processes,
    readiness: Vec<std::sync::mpsc::Receiver<()>>,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    for ready in readiness {
        loop {
            match ready.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    processes.check_running(what)?;
                    if Instant::now() > deadline {
                        bail!("{what}: not ready within 180 s");
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    processes.check_running(what)?;
                    bail!("{what}: a process closed its output before it was ready");
                }
            }
        }
    }
    Ok(())
}

/// `processes` `canopy worker` processes over the deployment, once all say they run.
fn start_workers(
    canopy: &Path,
    deployment: &Deployment,
    processes: usize,
) -> anyhow::Result<Processes> {
    let hosts = deployment.dir.path().join(format!("hosts-{processes}"));
    let lines: Vec<String> = (0..processes)
        .map(|_| free_port().map(|port| format!("127.0.0.1:{port}")))
        .collect::<anyhow::Result<_>>()?;
    std::fs::write(&hosts, lines.join("\n"))?;
    let mut started = Processes {
        children: Vec::new(),
    };
    let mut readiness = Vec::new();
    for process in 0..processes {
        let extra = [
            "--process".to_string(),
            process.to_string(),
            "--hosts".to_string(),
            hosts.display().to_string(),
            // Several workers on one host: each its own metrics port.
            "--metrics-listen".to_string(),
            "127.0.0.1:0".to_string(),
        ];
        let log = deployment
            .dir
            .path()
            .join(format!("worker-{processes}-{process}.log"));
        let (child, log, ready) =
            spawn_canopy(canopy, deployment, ("worker", &extra), log, ": running")?;
        started.children.push((child, log));
        readiness.push(ready);
    }
    wait_ready(&mut started, readiness, "the worker processes")?;
    Ok(started)
}

/// Appends `entries` from `producers` threads in batches; returns once all are acknowledged.
fn produce<E: LogEntry>(
    log: &dyn EntryLog<E>,
    entries: &[E],
    producers: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let chunk = entries.len().div_ceil(producers.max(1)).max(1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = entries
            .chunks(chunk)
            .map(|share| {
                scope.spawn(move || -> anyhow::Result<()> {
                    for batch in share.chunks(batch.max(1)) {
                        log.append(batch)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a producer panicked"))??;
        }
        Ok(())
    })
}

/// One stream of a backlog: produced, then drained into Redis.
enum Stream<'scope> {
    Producing(std::thread::ScopedJoinHandle<'scope, anyhow::Result<()>>),
    Draining(Vec<u64>),
    Done(Duration),
}

impl Stream<'_> {
    /// Moves on when it can: production finished (then the topic's ends are read), or
    /// every partition's frontier reached its end (then the time since `started` is kept).
    fn advance(
        self,
        read_ends: impl FnOnce() -> anyhow::Result<Vec<u64>>,
        frontier: impl Fn(u32) -> u64,
        started: Instant,
    ) -> anyhow::Result<Self> {
        Ok(match self {
            Self::Producing(thread) if thread.is_finished() => {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("a producer panicked"))??;
                Self::Draining(read_ends()?)
            }
            Self::Draining(ends)
                if ends
                    .iter()
                    .enumerate()
                    .all(|(p, end)| frontier(p as u32) >= *end) =>
            {
                Self::Done(started.elapsed())
            }
            other => other,
        })
    }
}

fn topic_ends<E: LogEntry>(log: &dyn EntryLog<E>) -> anyhow::Result<Vec<u64>> {
    (0..log.partitions())
        .map(|p| log.end_offset(p).map_err(anyhow::Error::from))
        .collect()
}

/// What one run measured.
struct Run {
    votes_per_s: f64,
    readings_per_s: f64,
    fresh_ms: Vec<f64>,
    proofs: Option<Proofs>,
    /// Files in the record store and in the lake once the workers stopped.
    files: (usize, usize),
}

/// Proof latencies from the replica, in ms.
struct Proofs {
    /// Each leaf's first answered request.
    first_ms: Vec<f64>,
    /// Each leaf asked again, its tiles now in the replica's cache.
    repeat_ms: Vec<f64>,
    /// Requests answered 404/409 (no checkpoint covering the leaf yet) and asked again.
    retried: usize,
}

/// The streams every run gets the same of.
struct Workload {
    decisions: Vec<Decision>,
    votes: Vec<LoggedVote>,
    paced: Vec<LoggedVote>,
    readings: Vec<SensorReading>,
}

/// One run over a fresh deployment with `processes` worker processes: the backlog, the
/// freshness phase, the recount, and (`with_proofs`) the replica's proofs.
fn run(
    runtime: &tokio::runtime::Runtime,
    (args, canopy): (&ClusterArgs, &Path),
    processes: usize,
    workload: &Workload,
    with_proofs: bool,
) -> anyhow::Result<Run> {
    let deployment = runtime.block_on(Deployment::create(args, &workload.decisions))?;
    eprintln!(
        "  deployment in {} (database {}, prefix {})",
        deployment.dir.path().display(),
        deployment.database.name,
        deployment.prefix
    );
    let votes_log = KafkaLog::connect(deployment.kafka(args, &deployment.topic))?;
    let readings_log = KafkaSensorLog::connect(deployment.kafka(args, &deployment.sensor_topic()))?;
    let views = RedisViews::connect(&args.redis, &deployment.prefix)?;
    let sensor_views = RedisSensorViews::connect(
        &args.redis,
        &deployment.prefix,
        WindowConfig::default(),
        args.partitions,
    )?;
    let mut workers = start_workers(canopy, &deployment, processes)?;
    eprintln!(
        "  {processes} worker process(es) of {} thread(s) running; producing {} votes and {} readings ...",
        args.threads,
        workload.votes.len(),
        workload.readings.len()
    );

    let vote_entries: Vec<VoteLogEntry> = workload
        .votes
        .iter()
        .copied()
        .map(VoteLogEntry::from)
        .collect();
    let started = Instant::now();
    let (votes_took, readings_took) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let mut votes = Stream::Producing(
            scope.spawn(|| produce(&votes_log, &vote_entries, args.producers, args.batch)),
        );
        let mut readings = Stream::Producing(scope.spawn(|| {
            produce(
                &readings_log,
                &workload.readings,
                args.producers,
                args.batch,
            )
        }));
        let mut checked = Instant::now();
        loop {
            votes = votes.advance(|| topic_ends(&votes_log), |p| views.frontier(p), started)?;
            readings = readings.advance(
                || topic_ends(&readings_log),
                |p| sensor_views.frontier(p),
                started,
            )?;
            if let (Stream::Done(votes), Stream::Done(readings)) = (&votes, &readings) {
                return Ok((*votes, *readings));
            }
            if checked.elapsed() > Duration::from_millis(250) {
                workers.check_running("draining the backlog")?;
                checked = Instant::now();
            }
            if started.elapsed() > DRAIN_LIMIT {
                bail!("the workers did not drain the backlog within {DRAIN_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })?;
    let votes_per_s = workload.votes.len() as f64 / votes_took.as_secs_f64();
    let readings_per_s = workload.readings.len() as f64 / readings_took.as_secs_f64();
    eprintln!(
        "  votes in Redis after {:.2}s: {votes_per_s:.0} votes/s; readings after {:.2}s: {readings_per_s:.0} readings/s",
        votes_took.as_secs_f64(),
        readings_took.as_secs_f64()
    );

    eprintln!(
        "  freshness: {} votes at {} votes/s ...",
        workload.paced.len(),
        args.fresh_rate
    );
    let fresh_ms = paced_freshness(
        &votes_log,
        RedisViews::connect(&args.redis, &deployment.prefix)?,
        args.partitions,
        &workload.paced,
        args.fresh_rate,
        DRAIN_LIMIT,
    )?;
    workers.check_running("the freshness phase")?;

    eprintln!("  checking the tallies in Redis against a recount of the topic ...");
    let records: Vec<canopy_ingest::LogRecord> = (0..args.partitions)
        .map(|p| votes_log.read_votes(p, 0, usize::MAX))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let expected = recount(records.iter(), &workload.decisions);
    let wrong = expected
        .iter()
        .filter(|(decision, tally)| {
            views
                .get(**decision)
                .ok()
                .flatten()
                .is_none_or(|view| view.tally != **tally)
        })
        .count();
    if records.len() != workload.votes.len() + workload.paced.len() || wrong > 0 {
        bail!(
            "{wrong} of {} decisions' tallies in Redis differ from the recount of the topic's {} records ({} appended)",
            expected.len(),
            records.len(),
            workload.votes.len() + workload.paced.len()
        );
    }

    let proofs = if with_proofs {
        let trees = recount_trees(records.iter());
        Some(runtime.block_on(proofs(args, canopy, &deployment, &workload.votes, &trees))?)
    } else {
        None
    };
    workers.check_running("the proof phase")?;
    workers.stop()?;
    // Stopped workers have flushed the lake: both stores must hold what the run wrote.
    let (tiles, lake) = (
        count_files(&deployment.dir.path().join("record-tiles"))?,
        count_files(&deployment.dir.path().join("lake"))?,
    );
    eprintln!("  record store: {tiles} files; lake: {lake} files");
    if tiles == 0 || lake == 0 {
        bail!("the workers wrote {tiles} files to the record store and {lake} to the lake");
    }
    Ok(Run {
        votes_per_s,
        readings_per_s,
        fresh_ms,
        proofs,
        files: (tiles, lake),
    })
}

/// Files under `dir`, at any depth (none if it does not exist).
fn count_files(dir: &Path) -> anyhow::Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut count = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            count += count_files(&entry.path())?;
        } else {
            count += 1;
        }
    }
    Ok(count)
}

fn hash_from_hex(text: &str) -> anyhow::Result<Hash> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash)
        .with_context(|| format!("not a 32-byte hex hash: {text:?}"))?;
    Ok(hash)
}

/// Leaves of `votes` to ask proofs of: up to `count` distinct ones, spread over the stream.
fn sample_leaves(votes: &[LoggedVote], count: usize) -> Vec<(DecisionId, Hash)> {
    let mut seen = std::collections::HashSet::new();
    let step = (votes.len() / count.max(1)).max(1);
    votes
        .iter()
        .step_by(step)
        .map(|vote| (vote.vote.decision_id, leaf_hash(&vote.leaf_data())))
        .filter(|leaf| seen.insert(*leaf))
        .take(count)
        .collect()
}

/// One GET of a leaf's proof; checked against the recount's tree when it is answered.
async fn ask_proof(
    client: &reqwest::Client,
    base: &str,
    (decision, leaf): (DecisionId, Hash),
    trees: &HashMap<DecisionId, canopy_chain::MerkleLog>,
) -> anyhow::Result<Option<Duration>> {
    let asked = Instant::now();
    let response = client
        .get(format!(
            "{base}/api/v1/audit/decisions/{decision}/proof?leaf={}",
            hex::encode(leaf)
        ))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.bytes().await?;
    let took = asked.elapsed();
    match status {
        200 => {}
        // Not yet covered by a checkpoint in the record store.
        404 | 409 => return Ok(None),
        _ => bail!(
            "proof of {} in {decision}: {status} {}",
            hex::encode(leaf),
            String::from_utf8_lossy(&body)
        ),
    }
    let proof: serde_json::Value = serde_json::from_slice(&body)?;
    let (index, size) = (
        proof["index"].as_u64().context("a proof's index")?,
        proof["tree_size"].as_u64().context("a proof's tree_size")?,
    );
    let path: Vec<Hash> = proof["proof"]
        .as_array()
        .context("a proof's path")?
        .iter()
        .map(|hash| hash_from_hex(hash.as_str().unwrap_or_default()))
        .collect::<anyhow::Result<_>>()?;
    let tree = trees.get(&decision).context("a decision the recount has")?;
    if tree.leaf(index) != Some(leaf)
        || root_from_inclusion(&leaf, index, size, &path)? != tree.root_at(size)?
    {
        bail!(
            "the replica's proof of {} in {decision} (index {index}, size {size}) disagrees with the recount's tree",
            hex::encode(leaf)
        );
    }
    Ok(Some(took))
}

/// Starts a `canopy serve` replica over the deployment and asks it for proofs of sampled
/// leaves: each once, as an auditor would (timed once answered; the few not yet covered by
/// a checkpoint are asked again shortly), then each once more.
async fn proofs(
    args: &ClusterArgs,
    canopy: &Path,
    deployment: &Deployment,
    votes: &[LoggedVote],
    trees: &HashMap<DecisionId, canopy_chain::MerkleLog>,
) -> anyhow::Result<Proofs> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let (child, log, ready) = spawn_canopy(
        canopy,
        deployment,
        (
            "serve",
            &["--listen".to_string(), format!("127.0.0.1:{port}")],
        ),
        deployment.dir.path().join("serve.log"),
        "listening on",
    )?;
    let mut replica = Processes {
        children: vec![(child, log)],
    };
    wait_ready(&mut replica, vec![ready], "the serve replica")?;
    let client = canopy_testkit::http_client();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        replica.check_running("the serve replica")?;
        if Instant::now() > deadline {
            bail!("the serve replica was not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leaves = sample_leaves(votes, args.proofs);
    eprintln!(
        "  proofs: {} leaves from a canopy serve replica ...",
        leaves.len()
    );
    let mut first = Vec::with_capacity(leaves.len());
    let mut retried = 0usize;
    for leaf in &leaves {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(took) = ask_proof(&client, &base, *leaf, trees).await? {
                first.push(took.as_secs_f64() * 1000.0);
                break;
            }
            retried += 1;
            if Instant::now() > deadline {
                bail!(
                    "no checkpoint covered leaf {} within 60 s",
                    hex::encode(leaf.1)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut repeat = Vec::with_capacity(leaves.len());
    for leaf in &leaves {
        let took = ask_proof(&client, &base, *leaf, trees)
            .await?
            .context("a proof answered before is answered again")?;
        repeat.push(took.as_secs_f64() * 1000.0);
    }
    replica.check_running("the proof phase")?;
    replica.stop()?;
    Ok(Proofs {
        first_ms: first,
        repeat_ms: repeat,
        retried,
    })
}

/// Sensors reporting pm25 and no2 every ~10 s of event time, ending a minute ago, with a
/// diurnal swing, a regional offset and noise.
fn reading_stream(args: &ClusterArgs) -> Vec<SensorReading> {
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5e45_0125);
    let metrics = [Metric::Pm25, Metric::No2];
    let (sensors, regions) = (args.sensors.max(1), args.regions.max(1));
    let per_round = sensors * metrics.len();
    let rounds = args.readings.div_ceil(per_round) as i64;
    let start = canopy_schemas::clock::now_millis() - 60_000 - rounds * 10_000;
    (0..args.readings)
        .map(|i| {
            let (round, slot) = ((i / per_round) as i64, i % per_round);
            let (sensor, metric) = (slot / metrics.len(), metrics[slot % metrics.len()]);
            let region = sensor % regions;
            let observed_at = start + round * 10_000 + rng.random_range(0..10_000);
            let hour = (observed_at / 3_600_000 % 24) as f64;
            let level = match metric {
                Metric::No2 => 40.0,
                _ => 20.0,
            } + 10.0 * (hour / 24.0 * std::f64::consts::TAU).sin()
                + region as f64 * 0.1;
            let value = level + rng.random_range(-3.0..3.0);
            SensorReading {
                sensor_id: format!("bench-sensor-{sensor}"),
                region: format!("bench-region-{region}"),
                metric,
                value_micro: (value * 1e6).round() as i64,
                observed_at,
                quality: Quality::Ok,
            }
        })
        .collect()
}

/// The `canopy` binary: as given, else beside this benchmark's.
fn canopy_binary(args: &ClusterArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.canopy_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .join("canopy"),
    };
    if !path.is_file() {
        bail!(
            "no canopy binary at {}: build it first (`cargo build --release`, the same profile \
             as the benchmark) or name it with --canopy-bin",
            path.display()
        );
    }
    Ok(path)
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

pub fn bench(args: ClusterArgs) -> anyhow::Result<()> {
    let canopy = canopy_binary(&args)?;
    let paced_count = (args.fresh_rate * args.fresh_seconds) as usize;
    eprintln!(
        "canopy: {}; generating {} votes over {} decisions and {} readings of {} sensors in {} regions ...",
        canopy.display(),
        args.votes + paced_count,
        args.decisions,
        args.readings,
        args.sensors,
        args.regions
    );
    let (decisions, records) = vote_stream(
        args.votes + paced_count,
        args.decisions,
        args.partitions,
        args.seed,
        Method::SingleChoice,
    );
    let mut votes: Vec<LoggedVote> = records.iter().map(|r| r.logged()).collect();
    let paced = votes.split_off(args.votes);
    let workload = Workload {
        decisions,
        votes,
        paced,
        readings: reading_stream(&args),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!("1 worker process:");
    let one = run(&runtime, (&args, &canopy), 1, &workload, false)?;
    eprintln!("2 worker processes:");
    let two = run(&runtime, (&args, &canopy), 2, &workload, true)?;
    let proofs = two.proofs.context("the 2-process run asked for proofs")?;
    let (fresh, fresh_one) = (sorted(two.fresh_ms), sorted(one.fresh_ms));
    let (first, repeat) = (sorted(proofs.first_ms), sorted(proofs.repeat_ms));
    println!(
        "{}",
        json!({
            "bench": "cluster",
            "votes_per_s_1": one.votes_per_s.round(),
            "votes_per_s_2": two.votes_per_s.round(),
            "readings_per_s_1": one.readings_per_s.round(),
            "proof_p99_ms": round3(percentile(&first, 99.0)),
            "freshness_p99_ms": round3(percentile(&fresh, 99.0)),
            "scaling": round3(two.votes_per_s / one.votes_per_s),
            "readings_per_s_2": two.readings_per_s.round(),
            "freshness_p50_ms": round3(percentile(&fresh, 50.0)),
            "freshness_p99_ms_1": round3(percentile(&fresh_one, 99.0)),
            "proof_p50_ms": round3(percentile(&first, 50.0)),
            "proof_p99_ms_repeat": round3(percentile(&repeat, 99.0)),
            "proofs": first.len(),
            "record_store_files_2": two.files.0,
            "lake_files_2": two.files.1,
            "proofs_not_yet_checkpointed": proofs.retried,
            "votes": args.votes,
            "readings": args.readings,
            "decisions": args.decisions,
            "partitions": args.partitions,
            "threads_per_process": args.threads,
            "fresh_rate": args.fresh_rate,
            "anomaly_model": std::env::var_os("ORT_DYLIB_PATH").is_some(),
        })
    );
    Ok(())
}
