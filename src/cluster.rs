//! `canopy worker` and `canopy serve`: the processes of a cluster, configured by one TOML
//! file (`--config`) whose keys environment variables override (`CANOPY_<SECTION>_<KEY>`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use canopy_dataflow::ClusterConfig;
use canopy_ingest::KafkaConfig;
use canopy_node::worker::{RedisTarget, WorkerConfig, WorkerNode};
use canopy_node::{Node, NodeConfig};
use clap::Args;
use serde::Deserialize;

/// The cluster's configuration file. Every key has a default except the servers'
/// addresses; see the README's operator section for what each does.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterFile {
    /// Holds the record key (`keys/record-ed25519.seed`) and, on worker 0, the anchor
    /// journal. Copy the key to every host.
    pub data_dir: Option<PathBuf>,
    pub database: DatabaseSection,
    pub kafka: KafkaSection,
    pub redis: RedisSection,
    pub workers: WorkersSection,
    pub serve: ServeSection,
    pub record: RecordSection,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// PostgreSQL URL, shared by every process.
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    pub brokers: Option<String>,
    pub topic: String,
    pub partitions: u32,
    pub replication: i32,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            brokers: None,
            topic: "canopy.votes".into(),
            partitions: 8,
            replication: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    pub url: Option<String>,
    pub prefix: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "canopy".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersSection {
    /// host:port of each worker process, in process order; the same list everywhere.
    pub hosts: Vec<String>,
    /// Timely worker threads per process.
    pub threads: usize,
    /// Milliseconds between engine checkpoints.
    pub checkpoint_interval_ms: u64,
}

impl Default for WorkersSection {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            threads: 2,
            checkpoint_interval_ms: 2000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    pub listen: SocketAddr,
    /// The RS256 key (PKCS#8 PEM) every replica shares.
    pub jwt_key: Option<PathBuf>,
    pub user_rate: f64,
    pub address_rate: f64,
}

impl Default for ServeSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            jwt_key: None,
            user_rate: 20.0,
            address_rate: 2000.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordSection {
    pub origin: String,
    pub anchor_interval_s: f64,
}

impl Default for RecordSection {
    fn default() -> Self {
        Self {
            origin: "canopy.local".into(),
            anchor_interval_s: 10.0,
        }
    }
}

/// Environment variables that override the file, by key.
const OVERRIDES: &[&str] = &[
    "CANOPY_DATA_DIR",
    "CANOPY_DATABASE_URL",
    "CANOPY_KAFKA_BROKERS",
    "CANOPY_KAFKA_TOPIC",
    "CANOPY_KAFKA_PARTITIONS",
    "CANOPY_KAFKA_REPLICATION",
    "CANOPY_REDIS_URL",
    "CANOPY_REDIS_PREFIX",
    "CANOPY_WORKERS_HOSTS",
    "CANOPY_WORKERS_THREADS",
    "CANOPY_WORKERS_CHECKPOINT_INTERVAL_MS",
    "CANOPY_SERVE_LISTEN",
    "CANOPY_SERVE_JWT_KEY",
    "CANOPY_SERVE_USER_RATE",
    "CANOPY_SERVE_ADDRESS_RATE",
    "CANOPY_RECORD_ORIGIN",
    "CANOPY_RECORD_ANCHOR_INTERVAL_S",
];

impl ClusterFile {
    /// Reads the file (if given), then applies the environment's overrides.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the config file {}", path.display()))?,
            None => String::new(),
        };
        let mut table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("parsing the config file {}", display(path)))?;
        for name in OVERRIDES {
            if let Ok(value) = std::env::var(name) {
                apply_override(&mut table, name, &value)?;
            }
        }
        toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("the config file {} is not valid", display(path)))
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("canopy-data"))
    }

    fn kafka(&self) -> anyhow::Result<KafkaConfig> {
        let Some(brokers) = self.kafka.brokers.clone() else {
            bail!("kafka.brokers is not set (config file or CANOPY_KAFKA_BROKERS)");
        };
        Ok(KafkaConfig {
            partitions: self.kafka.partitions,
            replication: self.kafka.replication,
            min_insync_replicas: self.kafka.replication,
            ..KafkaConfig::new(brokers, self.kafka.topic.clone())
        })
    }

    fn redis(&self) -> anyhow::Result<RedisTarget> {
        let Some(url) = self.redis.url.clone() else {
            bail!("redis.url is not set (config file or CANOPY_REDIS_URL)");
        };
        Ok(RedisTarget {
            url,
            prefix: self.redis.prefix.clone(),
        })
    }

    fn database_url(&self) -> anyhow::Result<String> {
        self.database
            .url
            .clone()
            .context("database.url is not set (config file or CANOPY_DATABASE_URL)")
    }
}

fn display(path: Option<&Path>) -> String {
    path.map_or_else(|| "(none)".into(), |p| p.display().to_string())
}

/// Sets `section.key` (or a top-level key) from `CANOPY_SECTION_KEY`, typed like the
/// file's value would be: numbers as numbers, `workers.hosts` as a comma-separated list.
fn apply_override(table: &mut toml::Table, name: &str, value: &str) -> anyhow::Result<()> {
    let key = name.trim_start_matches("CANOPY_").to_ascii_lowercase();
    let (section, field) = match key.as_str() {
        "data_dir" => (None, key.as_str()),
        _ => {
            let (section, field) = key.split_once('_').context("an override names a key")?;
            (Some(section), field)
        }
    };
    let parsed = match field {
        "hosts" => toml::Value::Array(
            value
                .split(',')
                .map(|h| toml::Value::String(h.trim().to_string()))
                .collect(),
        ),
        "partitions" | "replication" | "threads" | "checkpoint_interval_ms" => {
            toml::Value::Integer(
                value
                    .parse()
                    .with_context(|| format!("{name}={value:?} is not a whole number"))?,
            )
        }
        "user_rate" | "address_rate" | "anchor_interval_s" => toml::Value::Float(
            value
                .parse()
                .with_context(|| format!("{name}={value:?} is not a number"))?,
        ),
        _ => toml::Value::String(value.to_string()),
    };
    match section {
        None => {
            table.insert(field.to_string(), parsed);
        }
        Some(section) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(section_table) = entry.as_table_mut() else {
                bail!("{section} in the config file is not a section");
            };
            section_table.insert(field.to_string(), parsed);
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The cluster's config file (TOML); CANOPY_<SECTION>_<KEY> variables override it.
    #[arg(long, env = "CANOPY_CONFIG")]
    config: Option<PathBuf>,
    /// This process's index in the cluster, from 0.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// The number of processes, when the hosts are not listed: they are then
    /// 127.0.0.1:2101, 127.0.0.1:2102, … (one machine).
    #[arg(long)]
    processes: Option<usize>,
    /// A file listing host:port of every process, one per line, in process order
    /// (instead of workers.hosts in the config file).
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Worker threads in this process (instead of workers.threads).
    #[arg(long)]
    threads: Option<usize>,
}

fn cluster_hosts(args: &WorkerArgs, file: &ClusterFile) -> anyhow::Result<Vec<String>> {
    let hosts = if let Some(path) = &args.hosts {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the hosts file {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_string)
            .collect()
    } else if let Some(processes) = args.processes {
        (0..processes)
            .map(|i| format!("127.0.0.1:{}", 2101 + i))
            .collect()
    } else if !file.workers.hosts.is_empty() {
        file.workers.hosts.clone()
    } else {
        vec!["127.0.0.1:2101".to_string()]
    };
    if let Some(processes) = args.processes
        && processes != hosts.len()
    {
        bail!(
            "--processes {processes} but {} hosts are listed",
            hosts.len()
        );
    }
    if args.process >= hosts.len() {
        bail!(
            "--process {} is not below the number of processes ({})",
            args.process,
            hosts.len()
        );
    }
    Ok(hosts)
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<std::process::ExitCode> {
    let file = ClusterFile::load(args.config.as_deref())?;
    let hosts = cluster_hosts(&args, &file)?;
    let mut config = WorkerConfig::new(
        file.data_dir(),
        file.database_url()?,
        file.kafka()?,
        file.redis()?,
    );
    config.threads = args.threads.unwrap_or(file.workers.threads).max(1);
    config.checkpoint_interval = Duration::from_millis(file.workers.checkpoint_interval_ms.max(10));
    config.record_origin = file.record.origin.clone();
    config.anchor.interval = Duration::from_secs_f64(file.record.anchor_interval_s.max(0.05));
    let processes = hosts.len();
    config.cluster = (processes > 1).then_some(ClusterConfig {
        process: args.process,
        addresses: hosts,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        eprintln!(
            "canopy worker {} of {processes}: connecting to its peers, the store, Kafka and Redis",
            args.process
        );
        let node = WorkerNode::start(config)
            .await
            .context("starting the worker")?;
        println!("canopy worker {} of {processes}: running", args.process);
        let failure = tokio::select! {
            () = crate::up::wait_for_stop_signal() => None,
            reason = watch_failure(&node) => Some(reason),
        };
        if let Some(reason) = failure {
            eprintln!(
                "canopy worker {}: the dataflow stopped: {reason}",
                args.process
            );
            eprintln!("  restart every worker process; they resume from the last checkpoint");
            // A worker whose peer died cannot be joined cleanly; exit at once.
            return Ok(std::process::ExitCode::from(3));
        }
        println!("canopy worker {}: stopping", args.process);
        node.shutdown().await.context("shutting down")?;
        println!("canopy worker {}: stopped cleanly", args.process);
        Ok(std::process::ExitCode::SUCCESS)
    })
}

async fn watch_failure(node: &WorkerNode) -> String {
    loop {
        if let Some(reason) = node.failure() {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// The cluster's config file (TOML); CANOPY_<SECTION>_<KEY> variables override it.
    #[arg(long, env = "CANOPY_CONFIG")]
    config: Option<PathBuf>,
    /// Where to listen (instead of serve.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let file = ClusterFile::load(args.config.as_deref())?;
    let mut config = NodeConfig::new(file.data_dir());
    config.listen = args.listen.unwrap_or(file.serve.listen);
    config.database_url = Some(file.database_url()?);
    config.jwt_key = file.serve.jwt_key.clone();
    config.kafka = Some(file.kafka()?);
    config.redis = Some(file.redis()?);
    config.run_engine = false;
    config.record_origin = file.record.origin.clone();
    config.api.per_user = canopy_serving::limits::Rate {
        per_second: file.serve.user_rate,
        burst: 2.0 * file.serve.user_rate,
    };
    config.api.per_address = canopy_serving::limits::Rate {
        per_second: file.serve.address_rate,
        burst: 2.0 * file.serve.address_rate,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let node = Node::start(config).await.context("starting the replica")?;
        println!("canopy serve: listening on http://{}", node.addr);
        crate::up::wait_for_stop_signal().await;
        println!("canopy serve: stopping: finishing requests in flight");
        node.shutdown().await.context("shutting down")?;
        println!("canopy serve: stopped cleanly");
        Ok(std::process::ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_an_unknown_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canopy.toml");
        std::fs::write(&path, "[kafka]\nbrokres = \"x:9092\"\n").unwrap();
        let error = format!("{:#}", ClusterFile::load(Some(&path)).unwrap_err());
        assert!(error.contains("brokres"), "{error}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("canopy.example.toml");
        let file = ClusterFile::load(Some(&path)).unwrap();
        assert_eq!(file.workers.hosts.len(), 2);
        assert!(file.kafka().is_ok() && file.redis().is_ok() && file.database_url().is_ok());
    }

    #[test]
    fn overrides_are_typed_like_the_file() {
        let mut table: toml::Table = toml::from_str("[workers]\nthreads = 1\n").unwrap();
        apply_override(&mut table, "CANOPY_WORKERS_THREADS", "4").unwrap();
        apply_override(&mut table, "CANOPY_WORKERS_HOSTS", "a:1, b:2").unwrap();
        apply_override(&mut table, "CANOPY_DATA_DIR", "/srv/canopy").unwrap();
        apply_override(&mut table, "CANOPY_KAFKA_BROKERS", "k:9092").unwrap();
        let file: ClusterFile = toml::Value::Table(table).try_into().unwrap();
        assert_eq!(file.workers.threads, 4);
        assert_eq!(file.workers.hosts, vec!["a:1", "b:2"]);
        assert_eq!(file.data_dir, Some(PathBuf::from("/srv/canopy")));
        assert_eq!(file.kafka.brokers.as_deref(), Some("k:9092"));
        assert_eq!(file.kafka.partitions, 8);
        assert!(apply_override(&mut toml::Table::new(), "CANOPY_WORKERS_THREADS", "four").is_err());
    }
}
