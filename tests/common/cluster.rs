//! The cluster as an operator runs it, for the tests: a deployment (its own PostgreSQL
//! database, Redis prefix, data directory and config file), `canopy worker` and `canopy serve`
//! processes, a deterministic vote stream and the waits on the cluster catching up.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canopy_dataflow::ViewStore;
use canopy_ingest::{EntryLog, KafkaLog, LogRecord, VoteLog};
use canopy_node::redis::RedisViews;
use canopy_schemas::*;
use canopy_serving::auth::Role;
use canopy_serving::store::{MetadataStore, PostgresStore};

/// Partitions of every test topic.
pub const PARTITIONS: u32 = 4;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn redis_url() -> String {
    env_or("CANOPY_TEST_REDIS", "redis://127.0.0.1:6379/")
}

pub fn postgres_admin() -> String {
    env_or(
        "CANOPY_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// A database of the test's own on the real server, dropped at the end.
pub struct Database {
    pub name: String,
    pub url: String,
}

impl Database {
    pub fn create() -> Self {
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

/// Runs `sql` in the database at `url`, which must succeed.
pub fn psql_in(url: &str, sql: &str) {
    let status = Command::new("psql")
        .arg(url)
        .args(["-qAtc", sql])
        .stdout(Stdio::null())
        .status()
        .expect("psql runs (scripts/test installs PostgreSQL)");
    assert!(status.success(), "psql {sql:?} failed");
}

pub fn psql(sql: &str) {
    let status = Command::new("psql")
        .arg(postgres_admin())
        .args(["-qAtc", sql])
        .stdout(Stdio::null())
        .status()
        .expect("psql runs (scripts/test installs PostgreSQL)");
    assert!(status.success(), "psql {sql:?} failed");
}

/// One deployment: its database, Redis prefix, data directory and config file.
pub struct Deployment {
    pub database: Database,
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Deployment {
    pub fn new(topic: &str) -> Self {
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
                brokers = super::broker(),
                redis = redis_url(),
            ),
        )
        .unwrap();
        install_log_key(&dir.path().join("data"));
        Self {
            database,
            prefix,
            dir,
            config,
        }
    }

    /// Starts `processes` worker processes of `threads` threads each.
    pub fn start(&self, processes: usize, threads: usize, run: &str) -> Running {
        self.start_with_env(processes, threads, run, &[])
    }

    /// [`Deployment::start`] with extra environment variables for every worker.
    pub fn start_with_env(
        &self,
        processes: usize,
        threads: usize,
        run: &str,
        env: &[(String, String)],
    ) -> Running {
        let hosts = self.dir.path().join(format!("hosts-{run}"));
        let lines: Vec<String> = (0..processes)
            .map(|_| format!("127.0.0.1:{}", super::free_port()))
            .collect();
        std::fs::write(&hosts, lines.join("\n")).unwrap();
        let logs: Vec<PathBuf> = (0..processes).map(|p| self.log_path(run, p)).collect();
        let metrics_ports: Vec<u16> = (0..processes).map(|_| super::free_port()).collect();
        let children = logs
            .iter()
            .enumerate()
            .map(|(process, log)| {
                Command::new(env!("CARGO_BIN_EXE_canopy"))
                    .args(["worker", "--config"])
                    .arg(&self.config)
                    .args(["--process", &process.to_string(), "--hosts"])
                    .arg(&hosts)
                    .args(["--threads", &threads.to_string()])
                    .arg("--metrics-listen")
                    .arg(format!("127.0.0.1:{}", metrics_ports[process]))
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(log).unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect();
        Running {
            children,
            logs,
            metrics_ports,
        }
    }

    pub fn log_path(&self, run: &str, process: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{run}-{process}.log"))
    }

    pub fn log(&self, run: &str, process: usize) -> String {
        std::fs::read_to_string(self.log_path(run, process)).unwrap_or_default()
    }

    pub fn views(&self) -> RedisViews {
        RedisViews::connect(&redis_url(), &self.prefix).unwrap()
    }

    pub async fn store(&self) -> PostgresStore {
        let store = PostgresStore::connect(&self.database.url).await.unwrap();
        store.migrate().await.unwrap();
        store
    }
}

/// Processes a test started; whatever still runs when the test ends (or fails) is killed.
pub struct Running {
    pub children: Vec<Child>,
    /// Where each child's standard error goes, when the test keeps it.
    pub logs: Vec<PathBuf>,
    /// Each worker's `/metrics` port (empty for processes started otherwise).
    pub metrics_ports: Vec<u16>,
}

impl Running {
    pub fn new(children: Vec<Child>) -> Self {
        Self {
            children,
            logs: Vec::new(),
            metrics_ports: Vec::new(),
        }
    }

    /// Panics with the child's log if any child has exited.
    pub fn assert_none_exited(&mut self, what: &str) {
        for (n, child) in self.children.iter_mut().enumerate() {
            if let Some(status) = child.try_wait().unwrap() {
                let log = self
                    .logs
                    .get(n)
                    .map(|path| std::fs::read_to_string(path).unwrap_or_default())
                    .unwrap_or_default();
                panic!("{what}: process {n} exited ({status}); its log:\n{log}");
            }
        }
    }
}

impl std::ops::Deref for Running {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.children
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.children
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.children {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn stop(workers: &mut [Child]) {
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

/// Waits for the survivor of a cluster whose peer was killed to stop on its own, reporting
/// the failure.
pub fn wait_for_exit(worker: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = worker.try_wait().unwrap() {
            assert!(
                !status.success(),
                "{what}: the survivor must report the failure"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the survivor did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn decisions() -> Vec<Decision> {
    (1..=6u128)
        .map(|n| Decision {
            electorate: Default::default(),
            credits: 0,
            id: DecisionId(0xC1_0000 + n),
            title: format!("cluster decision {n}"),
            description: String::new(),
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

pub async fn register_decisions(store: &PostgresStore) {
    let owner =
        canopy_serving::api::create_user(store, "cluster-owner", super::PASSWORD, Role::Operator)
            .await
            .unwrap();
    for decision in decisions() {
        store.put_decision(&decision, owner, 1).await.unwrap();
    }
}

/// A deterministic stream: voters change their votes, and one in eight is a redelivery of an
/// earlier vote (the same vote id again, later in the topic).
pub fn votes(seed: u64, count: usize, earlier: &[LoggedVote]) -> Vec<LoggedVote> {
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
            ballot: Ballot::single_choice((next() % 3) as u16).unwrap(),
            component: Component::ALL[(next() % 2) as usize],
            weight: Weight(1_000_000 + (next() % 3) as u32 * 500_000),
            cast_at: 1,
        };
        out.push(LoggedVote::new(vote, &VoterSalt([11; 32])));
    }
    out
}

pub fn produce(log: &KafkaLog, votes: &[LoggedVote]) {
    for batch in votes.chunks(100) {
        log.append_votes(batch).unwrap();
    }
}

/// Every entry of the topic, closes included, partition after partition.
pub fn topic_entries(log: &KafkaLog) -> Vec<canopy_ingest::VoteLogRecord> {
    (0..PARTITIONS)
        .flat_map(|p| log.read(p, 0, usize::MAX).unwrap())
        .collect()
}

pub fn topic_records(log: &KafkaLog) -> Vec<LogRecord> {
    (0..PARTITIONS)
        .flat_map(|p| log.read_votes(p, 0, usize::MAX).unwrap())
        .collect()
}

pub fn wait_until_caught_up(log: &KafkaLog, views: &RedisViews, workers: &mut Running, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for partition in 0..PARTITIONS {
        let end = log.end_offset(partition).unwrap();
        while views.frontier(partition) < end {
            workers.assert_none_exited(&format!("{what}, before catching up"));
            assert!(
                Instant::now() < deadline,
                "{what}: the cluster did not catch up with partition {partition} (at {} of {end})",
                views.frontier(partition)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn start_serve(deployment: &Deployment, port: u16, name: &str) -> Child {
    start_serve_with_rate(deployment, port, name, 100_000.0)
}

pub fn start_serve_with_rate(
    deployment: &Deployment,
    port: u16,
    name: &str,
    user_rate: f64,
) -> Child {
    start_serve_with(deployment, port, name, user_rate, &[])
}

/// [`start_serve`] with extra environment variables (the lake's, the record store's).
pub fn start_serve_with_env(
    deployment: &Deployment,
    port: u16,
    name: &str,
    env: &[(String, String)],
) -> Child {
    start_serve_with(deployment, port, name, 100_000.0, env)
}

fn start_serve_with(
    deployment: &Deployment,
    port: u16,
    name: &str,
    user_rate: f64,
    env: &[(String, String)],
) -> Child {
    let log =
        std::fs::File::create(deployment.dir.path().join(format!("serve-{name}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(["serve", "--config"])
        .arg(&deployment.config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (k, v)))
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
pub fn create_admin_in(deployment: &Deployment) {
    create_account_in(deployment, "root", "admin");
}

/// [`create_admin_in`] for an account of any role (`analyst`, `operator`, …).
pub fn create_account_in(deployment: &Deployment, username: &str, role: &str) {
    use std::io::Write;
    let mut account = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args([
            "admin",
            "create",
            "--username",
            username,
            "--role",
            role,
            "--config",
        ])
        .arg(&deployment.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(account.stdin.take().unwrap(), "{}", super::PASSWORD).unwrap();
    assert!(account.wait().unwrap().success());
}

/// The Kafka log's signing key of every test deployment: a topic outlives a deployment
/// (fresh ones re-read it), so they all sign and check with this one, as the processes of
/// one cluster share `keys/log-hmac.key`.
pub fn test_log_key() -> canopy_ingest::LogKey {
    canopy_ingest::LogKey::from_bytes(TEST_LOG_KEY)
}

const TEST_LOG_KEY: [u8; 32] = [0x5a; 32];

/// Puts [`test_log_key`] where a deployment's processes read it (`<data>/keys/log-hmac.key`).
pub fn install_log_key(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let keys = data_dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = keys.join("log-hmac.key");
    std::fs::write(&file, TEST_LOG_KEY).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The test's own connection to `topic`, signing with the deployments' key. It only
/// inspects what it reads (recounts), so the workers' dead letters are the only ones.
pub fn test_kafka_config(topic: &str) -> canopy_ingest::KafkaConfig {
    canopy_ingest::KafkaConfig {
        partitions: PARTITIONS,
        write_dead_letters: false,
        ..canopy_ingest::KafkaConfig::new(super::broker(), topic, test_log_key())
    }
}

/// `canopy <args>`: its exit code and the one line it printed.
pub fn canopy_line(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_canopy"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

/// A replica's proof of `leaf`, asked until a checkpoint covering it has reached the
/// record store (404 `not_found` and 409 `not_checkpointed` until then).
pub async fn proof_from_replica(
    client: &reqwest::Client,
    base: &str,
    decision: &str,
    leaf: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = client
            .get(format!(
                "{base}/api/v1/audit/decisions/{decision}/proof?leaf={leaf}"
            ))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        if status == 200 {
            return body;
        }
        assert!(
            [404, 409].contains(&status) && Instant::now() < deadline,
            "no proof of {leaf} from {base}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks a replica's proof with `canopy verify` (and the trusted key), written to `dir`.
pub fn verify_proof(dir: &std::path::Path, proof: &serde_json::Value, key: &str) -> String {
    let file = dir.join(format!("proof-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, proof.to_string()).unwrap();
    let (status, verdict) = canopy_line(&["verify", file.to_str().unwrap(), "--key", key]);
    assert_eq!(status, 0, "{verdict}\n{proof}");
    verdict
}
