//! The cluster, run as an operator would: `canopy worker` processes over a Kafka topic
//! (tansu), PostgreSQL and Redis, with the recount of the topic as the oracle.
//!
//! - A worker process killed with SIGKILL mid-stream takes its cluster down (its peer exits
//!   on its own); restarted, the cluster resumes from its checkpoint and nothing is lost or
//!   counted twice.
//! - Rescaling from 1 process to 2 and back resumes from the checkpoint each time.
//! - One process and a 2-process × 2-thread cluster give identical tallies, checkpoints and
//!   Merkle roots.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_dataflow::{Tally, ViewStore, recount, recount_trees};
use canopy_ingest::{EntryLog, KafkaConfig, KafkaLog, LogRecord};
use canopy_node::redis::RedisViews;
use canopy_schemas::*;
use canopy_serving::auth::Role;
use canopy_serving::store::{MetadataStore, PostgresStore};

const PARTITIONS: u32 = 4;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn redis_url() -> String {
    env_or("CANOPY_TEST_REDIS", "redis://127.0.0.1:6379/")
}

fn postgres_admin() -> String {
    env_or(
        "CANOPY_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// A database of the test's own on the real server, dropped at the end.
struct Database {
    name: String,
    url: String,
}

impl Database {
    fn create() -> Self {
        let name = format!("canopy_cluster_{}", uuid::Uuid::new_v4().simple());
        psql(&format!("CREATE DATABASE {name}"));
        let admin = postgres_admin();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) {
    let status = Command::new("psql")
        .arg(postgres_admin())
        .args(["-qAtc", sql])
        .stdout(Stdio::null())
        .status()
        .expect("psql runs (scripts/test installs PostgreSQL)");
    assert!(status.success(), "psql {sql:?} failed");
}

/// One deployment: its database, Redis prefix, data directory and config file.
struct Deployment {
    database: Database,
    prefix: String,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Deployment {
    fn new(topic: &str) -> Self {
        let database = Database::create();
        let prefix = format!("canopy-test-{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("canopy.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\
                 [database]\nurl = {db:?}\n\
                 [kafka]\nbrokers = {brokers:?}\ntopic = {topic:?}\npartitions = {PARTITIONS}\n\
                 [redis]\nurl = {redis:?}\nprefix = {prefix:?}\n\
                 [workers]\ncheckpoint_interval_ms = 100\n\
                 [record]\nanchor_interval_s = 0.5\n",
                data = dir.path().join("data"),
                db = database.url,
                brokers = common::broker(),
                redis = redis_url(),
            ),
        )
        .unwrap();
        Self {
            database,
            prefix,
            dir,
            config,
        }
    }

    /// Starts `processes` worker processes of `threads` threads each.
    fn start(&self, processes: usize, threads: usize, run: &str) -> Running {
        let hosts = self.dir.path().join(format!("hosts-{run}"));
        let lines: Vec<String> = (0..processes)
            .map(|_| format!("127.0.0.1:{}", common::free_port()))
            .collect();
        std::fs::write(&hosts, lines.join("\n")).unwrap();
        Running(
            (0..processes)
                .map(|process| {
                    let log = std::fs::File::create(self.log_path(run, process)).unwrap();
                    Command::new(env!("CARGO_BIN_EXE_canopy"))
                        .args(["worker", "--config"])
                        .arg(&self.config)
                        .args(["--process", &process.to_string(), "--hosts"])
                        .arg(&hosts)
                        .args(["--threads", &threads.to_string()])
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }

    fn log_path(&self, run: &str, process: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{run}-{process}.log"))
    }

    fn log(&self, run: &str, process: usize) -> String {
        std::fs::read_to_string(self.log_path(run, process)).unwrap_or_default()
    }

    fn views(&self) -> RedisViews {
        RedisViews::connect(&redis_url(), &self.prefix).unwrap()
    }

    async fn store(&self) -> PostgresStore {
        let store = PostgresStore::connect(&self.database.url).await.unwrap();
        store.migrate().await.unwrap();
        store
    }
}

/// Processes a test started; whatever still runs when the test ends (or fails) is killed.
struct Running(Vec<Child>);

impl std::ops::Deref for Running {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn stop(workers: &mut [Child]) {
    for worker in workers.iter() {
        Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status()
            .unwrap();
    }
    for worker in workers.iter_mut() {
        let status = worker.wait().unwrap();
        assert!(status.success(), "a worker did not stop cleanly: {status}");
    }
}

fn decisions() -> Vec<Decision> {
    (1..=6u128)
        .map(|n| Decision {
            electorate: Default::default(),
            id: DecisionId(0xC1_0000 + n),
            title: format!("cluster decision {n}"),
            region: "r".into(),
            options: vec!["a".into(), "b".into(), "c".into()],
            opens_at: 0,
            closes_at: i64::MAX,
            weights: ComponentWeights::DEFAULT,
            quorum: 5,
            method: Method::SingleChoice,
        })
        .collect()
}

async fn register_decisions(store: &PostgresStore) {
    let owner =
        canopy_serving::api::create_user(store, "cluster-owner", common::PASSWORD, Role::Operator)
            .await
            .unwrap();
    for decision in decisions() {
        store.put_decision(&decision, owner, 1).await.unwrap();
    }
}

/// A deterministic stream: voters change their votes, and one in eight is a redelivery of an
/// earlier vote (the same vote id again, later in the topic).
fn votes(seed: u64, count: usize, earlier: &[LoggedVote]) -> Vec<LoggedVote> {
    let mut state = seed | 1;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let decisions = decisions();
    let mut out: Vec<LoggedVote> = Vec::with_capacity(count);
    for _ in 0..count {
        let pool_len = earlier.len() + out.len();
        if pool_len > 0 && next() % 8 == 0 {
            let pick = next() as usize % pool_len;
            let again = if pick < earlier.len() {
                earlier[pick]
            } else {
                out[pick - earlier.len()]
            };
            out.push(again);
            continue;
        }
        let vote = Vote {
            vote_id: VoteId(u128::from(next()) << 64 | u128::from(next())),
            decision_id: decisions[next() as usize % decisions.len()].id,
            voter_id: VoterId(u128::from(next() % 50)),
            option: (next() % 3) as u16,
            component: Component::ALL[(next() % 2) as usize],
            weight: Weight(1_000_000 + (next() % 3) as u32 * 500_000),
            cast_at: 1,
        };
        out.push(LoggedVote::new(vote, &VoterSalt([11; 32])));
    }
    out
}

fn produce(log: &KafkaLog, votes: &[LoggedVote]) {
    for batch in votes.chunks(100) {
        log.append(batch).unwrap();
    }
}

fn topic_records(log: &KafkaLog) -> Vec<LogRecord> {
    (0..PARTITIONS)
        .flat_map(|p| log.read(p, 0, usize::MAX).unwrap())
        .collect()
}

fn wait_until_caught_up(log: &KafkaLog, views: &RedisViews, workers: &mut [Child], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for partition in 0..PARTITIONS {
        let end = log.end_offset(partition).unwrap();
        while views.frontier(partition) < end {
            for worker in workers.iter_mut() {
                if let Some(status) = worker.try_wait().unwrap() {
                    panic!("{what}: a worker exited ({status}) before catching up");
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the cluster did not catch up with partition {partition} (at {} of {end})",
                views.frontier(partition)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Tallies equal the recount; every stored checkpoint is a prefix of the oracle tree, and
/// (after the time-based cut) the latest covers all of it. Returns what was compared.
async fn check(
    deployment: &Deployment,
    log: &KafkaLog,
    what: &str,
) -> (
    BTreeMap<DecisionId, Tally>,
    BTreeMap<DecisionId, (i64, String)>,
) {
    let records = topic_records(log);
    let expected = recount(&records, &decisions());
    let views = deployment.views();
    let mut tallies = BTreeMap::new();
    for decision in decisions() {
        let view = views.get(decision.id).unwrap();
        let as_of = view.as_ref().map(|v| v.as_of);
        let tally = view.map(|v| v.tally);
        assert_eq!(
            tally.as_ref(),
            expected.get(&decision.id),
            "{what}: decision {} (as of {as_of:?}, log ends {:?}) differs from the recount",
            decision.id,
            (0..PARTITIONS)
                .map(|p| log.end_offset(p).unwrap())
                .collect::<Vec<_>>()
        );
        tallies.insert(decision.id, tally.unwrap());
    }
    let trees = recount_trees(&records);
    let store = deployment.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut latest = BTreeMap::new();
    for (decision, tree) in &trees {
        loop {
            let checkpoints = store.checkpoints(*decision).await.unwrap();
            for checkpoint in &checkpoints {
                let root = tree.root_at(checkpoint.tree_size as u64).unwrap();
                assert_eq!(
                    checkpoint.root,
                    hex::encode(root),
                    "{what}: checkpoint {} of {decision} is not a prefix of the oracle tree",
                    checkpoint.tree_size
                );
            }
            if let Some(last) = checkpoints.last()
                && last.tree_size as u64 == tree.size()
            {
                latest.insert(*decision, (last.tree_size, last.root.clone()));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no checkpoint of {decision} covers all {} leaves",
                tree.size()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (tallies, latest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_sigkill_and_rescaling_and_equals_one_process() {
    let topic = format!("canopy-cluster-{}", uuid::Uuid::new_v4().simple());
    let log = Arc::new(
        KafkaLog::connect(KafkaConfig {
            partitions: PARTITIONS,
            ..KafkaConfig::new(common::broker(), topic.clone())
        })
        .unwrap(),
    );
    let cluster = Deployment::new(&topic);
    register_decisions(&cluster.store().await).await;

    let first = votes(1, 1500, &[]);
    produce(&log, &first);

    // One process of two threads.
    let mut workers = cluster.start(1, 2, "a");
    wait_until_caught_up(&log, &cluster.views(), &mut workers, "1 process");
    check(&cluster, &log, "1 process").await;
    stop(&mut workers);

    // Rescaled to two processes while votes kept coming; it resumes from the checkpoint.
    produce(&log, &votes(2, 600, &first));
    let mut workers = cluster.start(2, 2, "b");
    wait_until_caught_up(&log, &cluster.views(), &mut workers, "2 processes");
    for process in 0..2 {
        assert!(
            cluster
                .log("b", process)
                .contains("resuming from an engine checkpoint"),
            "process {process} of the rescaled cluster replayed instead of resuming:\n{}",
            cluster.log("b", process)
        );
    }

    // SIGKILL one process while votes are produced: the other stops on its own.
    let producer = {
        let log = Arc::clone(&log);
        let earlier = first.clone();
        std::thread::spawn(move || produce(&log, &votes(3, 2000, &earlier)))
    };
    std::thread::sleep(Duration::from_millis(300));
    common::kill_9(&mut workers[1]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = workers[0].try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the surviving process did not stop after its peer was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the survivor must report the failure");
    producer.join().unwrap();

    // Restarted, the cluster resumes from its checkpoint: nothing lost, nothing doubled.
    let mut workers = cluster.start(2, 2, "c");
    wait_until_caught_up(
        &log,
        &cluster.views(),
        &mut workers,
        "restarted after SIGKILL",
    );
    // The views may have been caught up already (the killed cluster took every vote before
    // it died), so the restarted process may not have written its first lines yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .log("c", 0)
        .contains("resuming from an engine checkpoint")
    {
        assert!(
            Instant::now() < deadline,
            "the restarted cluster replayed instead of resuming:\n{}",
            cluster.log("c", 0)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&cluster, &log, "restarted after SIGKILL").await;
    stop(&mut workers);

    // And back to one process.
    produce(&log, &votes(4, 500, &first));
    let mut workers = cluster.start(1, 2, "d");
    wait_until_caught_up(&log, &cluster.views(), &mut workers, "back to 1 process");
    let (cluster_tallies, cluster_checkpoints) = check(&cluster, &log, "back to 1 process").await;
    stop(&mut workers);

    // The same topic from scratch, through one single-threaded process and through a
    // 2-process × 2-thread cluster, gives the same tallies and the same checkpoints.
    for (processes, threads) in [(1, 1), (2, 2)] {
        let what = format!("{processes} × {threads} from scratch");
        let fresh = Deployment::new(&topic);
        register_decisions(&fresh.store().await).await;
        let mut workers = fresh.start(processes, threads, "fresh");
        wait_until_caught_up(&log, &fresh.views(), &mut workers, &what);
        let (tallies, checkpoints) = check(&fresh, &log, &what).await;
        stop(&mut workers);
        assert_eq!(tallies, cluster_tallies, "{what}");
        assert_eq!(checkpoints, cluster_checkpoints, "{what}");
    }
}

fn start_serve(deployment: &Deployment, port: u16, name: &str) -> Child {
    start_serve_with_rate(deployment, port, name, 100_000.0)
}

fn start_serve_with_rate(deployment: &Deployment, port: u16, name: &str, user_rate: f64) -> Child {
    let log =
        std::fs::File::create(deployment.dir.path().join(format!("serve-{name}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["serve", "--config"])
        .arg(&deployment.config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("CANOPY_API__USER_RATE", user_rate.to_string())
        .env("CANOPY_API__REGISTRATIONS_PER_ADDRESS_HOUR", "100000")
        .env("CANOPY_API__REGISTRATIONS_PER_BLOCK_HOUR", "100000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Creates the admin through the deployment's own configuration: its database, and its
/// data directory for the keys the store's audit entries are keyed with (without it the
/// command would make keys of its own under `./canopy-data`, in the checkout).
fn create_admin_in(deployment: &Deployment) {
    use std::io::Write;
    let mut admin = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["admin", "create", "--username", "root", "--config"])
        .arg(&deployment.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(admin.stdin.take().unwrap(), "{}", common::PASSWORD).unwrap();
    assert!(admin.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_replicas_share_results_and_survive_the_loss_of_one() {
    use serde_json::Value;
    let topic = format!("canopy-serve-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    let log = KafkaLog::connect(KafkaConfig {
        partitions: PARTITIONS,
        ..KafkaConfig::new(common::broker(), topic.clone())
    })
    .unwrap();
    deployment.store().await;
    create_admin_in(&deployment);
    let mut workers = deployment.start(1, 2, "w");
    // Replica A makes the shared keys; B starts once they exist.
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let client = reqwest::Client::new();
    let mut replica_a = Running(vec![start_serve(&deployment, port_a, "a")]);
    common::wait_healthy(&client, &base_a).await;
    let mut replica_b = Running(vec![start_serve(&deployment, port_b, "b")]);
    common::wait_healthy(&client, &base_b).await;

    let admin = common::login(&client, &base_a, "root").await;
    let decision = common::create_decision(
        &client,
        &base_a,
        &admin,
        common::yes_or_no("Restore the dunes?"),
    )
    .await;
    let mut voters = Vec::new();
    for n in 0..6 {
        let name = format!("serve-voter{n}");
        common::sign_up(&client, &base_b, &name).await;
        voters.push(common::login(&client, &base_a, &name).await);
    }
    // A vote cast on one replica is in the results read on the other (read your writes).
    for (n, token) in voters.iter().enumerate() {
        let (cast_on, read_on) = if n % 2 == 0 {
            (&base_a, &base_b)
        } else {
            (&base_b, &base_a)
        };
        let receipt = common::cast(&client, cast_on, token, &decision, (n % 2) as u16).await;
        let offset = receipt["position"]["offset"].as_u64().unwrap();
        let results: Value = common::get_json(
            &client,
            format!("{read_on}/api/v1/voting/decision/{decision}/results?min_offset={offset}"),
            token,
        )
        .await;
        assert!(
            results["as_of"]["offset"]
                .as_u64()
                .is_some_and(|seen| seen > offset),
            "a vote cast on one replica is missing from the other's results: {results}"
        );
    }

    // Replica A is lost; B keeps answering, and what it acknowledges is counted.
    common::kill_9(&mut replica_a[0]);
    for (n, token) in voters.iter().enumerate() {
        common::cast(&client, &base_b, token, &decision, ((n + 1) % 2) as u16).await;
    }
    wait_until_caught_up(
        &log,
        &deployment.views(),
        &mut workers,
        "after losing a replica",
    );
    let records = topic_records(&log);
    assert_eq!(
        records.len(),
        12,
        "every acknowledged vote is in the topic once"
    );
    let store = deployment.store().await;
    let expected = recount(&records, &store.decisions().await.unwrap());
    let id = DecisionId::from(uuid::Uuid::parse_str(&decision).unwrap());
    let results = common::results(&client, &base_b, &decision, &voters[0]).await;
    assert_eq!(results["turnout"], expected[&id].turnout, "{results}");
    assert_eq!(results["turnout"], 6, "{results}");
    // Proofs need the record, which lives on the workers: a replica says so plainly.
    let response = client
        .get(format!(
            "{base_b}/api/v1/audit/decisions/{decision}/proof?leaf={}",
            "00".repeat(32)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "record_not_here", "{body}");

    common::kill_9(&mut replica_b[0]);
    stop(&mut workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_rate_limits_and_erasures() {
    let topic = format!("canopy-share-{}", uuid::Uuid::new_v4().simple());
    let deployment = Deployment::new(&topic);
    deployment.store().await;
    create_admin_in(&deployment);
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let client = reqwest::Client::new();
    // 4 requests/s per user, bursts of 8, for the whole cluster.
    let _replica_a = Running(vec![start_serve_with_rate(&deployment, port_a, "a", 4.0)]);
    common::wait_healthy(&client, &base_a).await;
    let _replica_b = Running(vec![start_serve_with_rate(&deployment, port_b, "b", 4.0)]);
    common::wait_healthy(&client, &base_b).await;
    // Both have counted each other (heartbeats every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let admin = common::login(&client, &base_a, "root").await;
    let decision = common::create_decision(
        &client,
        &base_a,
        &admin,
        common::yes_or_no("Share the limits?"),
    )
    .await;
    let mut tokens = Vec::new();
    for name in ["share-reader", "share-voter"] {
        common::sign_up(&client, &base_b, name).await;
        tokens.push(common::login(&client, &base_a, name).await);
    }
    let (reader, voter) = (&tokens[0], &tokens[1]);

    // A user spreading requests over both replicas gets the cluster's burst, not twice it.
    let mut accepted = 0;
    for n in 0..24 {
        let base = if n % 2 == 0 { &base_a } else { &base_b };
        let status = client
            .get(format!("{base}/api/v1/voting/active-decisions"))
            .bearer_auth(reader)
            .send()
            .await
            .unwrap()
            .status();
        match status.as_u16() {
            200 => accepted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (6..=10).contains(&accepted),
        "{accepted} of 24 requests accepted; the cluster's burst is 8 (16 if each replica kept all of it)"
    );

    // An erasure on A reaches B's caches: B no longer takes the erased account's votes.
    let cast_on_b = || common::cast(&client, &base_b, voter, &decision, 0);
    let before = common::commitment(&cast_on_b().await);
    assert_eq!(
        common::commitment(&cast_on_b().await),
        before,
        "one salt per voter"
    );
    let (status, body) =
        common::erase_voter(&client, &base_a, &admin, &common::subject(voter)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, refusal) = common::try_cast(&client, &base_b, voter, &decision, 0)
        .await
        .unwrap();
    assert_eq!(
        status, 401,
        "replica B still takes the erased account's votes: {refusal}"
    );
}
