//! The one configuration of every command that runs or administers a node (`up`, `worker`,
//! `serve`, `migrate`, `admin create`, `config show`), layered lowest to highest:
//! compiled-in defaults, the TOML file (`--config`), environment variables
//! (`CANOPY_<SECTION>__<KEY>`, top-level keys `CANOPY_<KEY>`), command-line flags.
//!
//! It lives in the binary, not in `canopy-node`: the node crate is assembled from typed
//! [`NodeConfig`] / [`WorkerConfig`] values by tests, the benchmark and this binary alike,
//! while file names, variable names, flags and their precedence are the operator's
//! interface, which only the binary has. Keeping figment here also keeps it out of every
//! library that embeds a node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use canopy_dataflow::ClusterConfig;
use canopy_ingest::KafkaConfig;
use canopy_node::NodeConfig;
use canopy_node::worker::{RedisTarget, WorkerConfig};
use clap::Args;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Num, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Serialize};

const ENV_PREFIX: &str = "CANOPY_";

/// Single-underscore names documented before the `CANOPY_<SECTION>__<KEY>` scheme, still
/// read (below the scheme's own names) because scripts and `canopy evm deploy` use them.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("CANOPY_DATABASE_URL", "database.url"),
    ("CANOPY_JWT_KEY", "api.jwt_key"),
    ("CANOPY_KAFKA_BROKERS", "kafka.brokers"),
    ("CANOPY_EVM_RPC", "evm.rpc"),
    ("CANOPY_EVM_CONTRACT", "evm.contract"),
    ("CANOPY_EVM_KEY", "evm.key"),
];

/// Sections renamed since the cluster file had them, so an old variable gets a useful hint.
const RENAMED_SECTIONS: &[(&str, &str)] = &[("serve", "api")];

/// Every setting; see `canopy.example.toml` for what each does.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanopyConfig {
    /// The vote log (without Kafka), the SQLite store (without PostgreSQL), the record key
    /// (`keys/record-ed25519.seed`, copied to every host of a cluster), the anchor journal.
    pub data_dir: PathBuf,
    /// `canopy up` seeds a demo decision and a stream of synthetic voters.
    pub demo: bool,
    pub api: ApiSection,
    pub database: DatabaseSection,
    pub kafka: KafkaSection,
    pub redis: RedisSection,
    pub workers: WorkersSection,
    pub record: RecordSection,
    pub evm: EvmSection,
    pub sensors: SensorsSection,
    pub lake: LakeSection,
    pub agents: AgentsSection,
    pub tls: TlsSection,
}

/// The HTTP API of `up` and `serve`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub listen: SocketAddr,
    /// Seconds from accept (or the end of the previous request) to a whole request head.
    pub header_read_timeout_s: u64,
    /// Seconds a kept-alive connection may sit idle, or a response wait for its reader.
    pub idle_timeout_s: u64,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Browser origins allowed to call the API (CORS); none: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Results reads waiting for a `min_offset` at once, per user and in all.
    pub max_waits_per_user: usize,
    pub max_waits: usize,
    /// Live push: at most one results update per decision this often (milliseconds).
    pub push_interval_ms: u64,
    /// Live push: a breakdown per followed decision this often (seconds).
    pub breakdown_interval_s: u64,
    /// The RS256 key (PKCS#8 PEM) every replica of a cluster shares; generated under the
    /// data directory if absent.
    pub jwt_key: Option<PathBuf>,
    /// The audit trail's HMAC key (32 bytes) every process writing the trail shares;
    /// `keys/audit-hmac.key` under the data directory if absent (generated if missing).
    pub audit_key: Option<PathBuf>,
    /// The key TOTP secrets are sealed under in the store (32 bytes), shared like the audit
    /// key; `keys/secrets.key` under the data directory if absent (generated if missing).
    pub secrets_key: Option<PathBuf>,
    /// Requests per second per user (burst twice as many).
    pub user_rate: f64,
    /// Requests per second per client address (burst twice as many).
    pub address_rate: f64,
    /// k: a decision's trends show a (bucket, option) only with at least this many voters,
    /// and the lake's `tally_changes` a cell's new state only once this many moved it.
    pub trend_min_voters: u64,
    /// New accounts per hour from one client address (all at once at most).
    pub registrations_per_address_hour: u32,
    /// New accounts per hour from one address block (IPv4 /24, IPv6 /48).
    pub registrations_per_block_hour: u32,
    /// Invitation codes one account may try per hour (all at once at most).
    pub claims_per_account_hour: u32,
    /// Sign-in attempts (password, TOTP or recovery code) on one account that never wait;
    /// each one past them makes the next wait twice as long, from
    /// `signin_first_delay_ms` up to `signin_max_delay_s`.
    pub signin_free_attempts: u32,
    /// Sign-in attempts from one client address (IPv6: its /64) that never wait.
    pub signin_address_free_attempts: u32,
    pub signin_first_delay_ms: u64,
    pub signin_max_delay_s: u64,
    /// An account's or address's count is forgotten this long after its last attempt.
    pub signin_forget_after_s: u64,
    /// Memory password hashing may hold (MiB): this over 19 MiB hashes run at once.
    pub hashing_memory_mib: u32,
    /// Sign-ins that may wait for a hash; more are told 503 `busy`.
    pub hashing_max_waiting: usize,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// PostgreSQL (SQLite in the data directory if absent; a cluster needs one). Secret:
    /// its password is masked by `config show`.
    pub url: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// `host:port,…`; the vote log stays under the data directory if absent (`up` only).
    pub brokers: Option<String>,
    pub topic: String,
    /// Fixed for the topic's life: a decision's partition depends on it.
    pub partitions: u32,
    /// Replicas per partition, and min.insync.replicas, of a topic created here.
    pub replication: i32,
    /// The sensor readings' topic (keyed by region, the same partition count);
    /// `<topic>-sensors` if absent.
    pub sensor_topic: Option<String>,
    /// `plaintext` (if absent), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: Option<String>,
    /// The CA (PEM) that signed the brokers' certificates; the system's roots if absent.
    pub ca_file: Option<PathBuf>,
    /// `SCRAM-SHA-256`, `SCRAM-SHA-512` or `PLAIN`, with `sasl_username` and
    /// `sasl_password`.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// Secret: masked by `config show`.
    pub sasl_password: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// Secret: its password is masked by `config show`.
    pub url: Option<String>,
    pub prefix: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersSection {
    /// host:port of each worker process, in process order; the same list everywhere.
    pub hosts: Vec<String>,
    /// Dataflow threads per process (`up`'s one process included).
    pub threads: usize,
    pub checkpoint_interval_ms: u64,
    /// Every this many engine checkpoints a full one, after which older ones are deleted
    /// (0: never, and checkpoints accumulate).
    pub full_checkpoint_every: u64,
    /// Where a worker serves `/metrics`, `/healthz` and `/readyz` (port 0: any free port).
    pub metrics_listen: SocketAddr,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSection {
    /// Checkpoint origins: `<origin>/decision/<uuid>`.
    pub origin: String,
    pub anchor_interval_s: f64,
    /// The record store: every decision's log as C2SP tlog tiles, in a folder or
    /// `s3://bucket/prefix` (credentials from the `AWS_*` variables);
    /// `<data_dir>/record-tiles` if absent. Every process of a cluster names the same.
    pub tile_store: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvmSection {
    /// Anchor on this EVM node (http(s) JSON-RPC; several, comma-separated, are tried in
    /// order) instead of in the local journal.
    pub rpc: Option<String>,
    pub contract: Option<String>,
    /// The anchoring key (hex secp256k1). Secret: masked by `config show`.
    pub key: Option<String>,
    pub confirmations: u64,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorsSection {
    pub enabled: bool,
    /// Short and long windows (the long a multiple of the short).
    pub windows_s: [i64; 2],
    /// How long after a window's end a late reading still corrects it.
    pub allowed_lateness_s: i64,
    /// ONNX Runtime's shared library; `ORT_DYLIB_PATH` if absent.
    pub onnxruntime: Option<PathBuf>,
    /// Replaced alert thresholds on a region's 1-minute mean, by metric.
    pub alert_thresholds: BTreeMap<String, AlertThreshold>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeSection {
    pub enabled: bool,
    /// A folder or `s3://bucket/prefix` (credentials from the `AWS_*` variables);
    /// `<data_dir>/lake` if absent for `up`. `worker` and `serve` keep and read a lake only
    /// at a location set here, the same for every process of the cluster.
    pub location: Option<String>,
    pub flush_s: f64,
    /// Small files are merged every this many flushes (by `up`, or a cluster's process 0).
    pub compact_every: u32,
    pub sql_timeout_s: u64,
    pub sql_memory_mib: usize,
    /// SQL over the PostgreSQL wire protocol here (`up`, and `serve` with a location).
    pub pg_listen: Option<SocketAddr>,
    /// With `tls.cert`/`tls.key` set: still take PostgreSQL clients that do not ask for TLS.
    pub pg_allow_plaintext: bool,
    /// PostgreSQL connections served at once; beyond it a client is told FATAL 53300.
    pub pg_max_connections: usize,
    /// A PostgreSQL session silent this long is closed, in seconds.
    pub pg_idle_timeout_s: u64,
}

/// The analysis agents and the consensus prediction model (`up`, `serve`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsSection {
    /// How long a region's evidence is reused before the lake is read again.
    pub evidence_ttl_s: f64,
    /// Analyses running at once; one more is refused `busy`.
    pub max_running: usize,
    /// The model version that answers.
    pub model: String,
    /// The version tried beside it on a share of the predictions; "" for none.
    pub candidate: String,
    pub candidate_share: f64,
    /// The candidate is rolled back once it has made `rollback_min_calls` predictions and
    /// its error rate passes `rollback_error_rate` or its p95 latency `rollback_p95_ms`.
    pub rollback_error_rate: f64,
    pub rollback_p95_ms: f64,
    pub rollback_min_calls: u64,
}

/// The certificate of the HTTP listener and the PostgreSQL port; both or neither.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate chain, leaf first (PEM); re-read on SIGHUP.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// A metric's alert level, or `"off"` to drop its alert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlertThreshold {
    Level(f64),
    Off,
}

impl Default for CanopyConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("canopy-data"),
            demo: false,
            api: ApiSection {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                header_read_timeout_s: 10,
                idle_timeout_s: 60,
                max_connections: 4096,
                cors_origins: Vec::new(),
                max_waits_per_user: 4,
                max_waits: 1024,
                push_interval_ms: 250,
                breakdown_interval_s: 30,
                jwt_key: None,
                audit_key: None,
                secrets_key: None,
                user_rate: 20.0,
                address_rate: 2000.0,
                trend_min_voters: 5,
                registrations_per_address_hour: 5,
                registrations_per_block_hour: 30,
                claims_per_account_hour: 10,
                signin_free_attempts: 5,
                signin_address_free_attempts: 20,
                signin_first_delay_ms: 1000,
                signin_max_delay_s: 900,
                signin_forget_after_s: 24 * 3600,
                hashing_memory_mib: 64,
                hashing_max_waiting: 32,
            },
            database: DatabaseSection { url: None },
            kafka: KafkaSection {
                brokers: None,
                topic: "canopy.votes".into(),
                partitions: 8,
                replication: 1,
                sensor_topic: None,
                security_protocol: None,
                ca_file: None,
                sasl_mechanism: None,
                sasl_username: None,
                sasl_password: None,
            },
            redis: RedisSection {
                url: None,
                prefix: "canopy".into(),
            },
            workers: WorkersSection {
                hosts: vec!["127.0.0.1:2101".into()],
                threads: 2,
                checkpoint_interval_ms: 2000,
                full_checkpoint_every: 20,
                metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            },
            record: RecordSection {
                origin: "canopy.local".into(),
                anchor_interval_s: 10.0,
                tile_store: None,
            },
            evm: EvmSection {
                rpc: None,
                contract: None,
                key: None,
                confirmations: 2,
            },
            sensors: SensorsSection {
                enabled: true,
                windows_s: [60, 3600],
                allowed_lateness_s: 300,
                onnxruntime: None,
                alert_thresholds: BTreeMap::new(),
            },
            lake: LakeSection {
                enabled: true,
                location: None,
                flush_s: 10.0,
                compact_every: 30,
                sql_timeout_s: 120,
                sql_memory_mib: 2048,
                pg_listen: None,
                pg_allow_plaintext: false,
                pg_max_connections: 64,
                pg_idle_timeout_s: 900,
            },
            agents: AgentsSection {
                evidence_ttl_s: 30.0,
                max_running: 256,
                model: "consensus-1".into(),
                candidate: "consensus-2".into(),
                candidate_share: 0.1,
                rollback_error_rate: 0.05,
                rollback_p95_ms: 100.0,
                rollback_min_calls: 20,
            },
            tls: TlsSection::default(),
        }
    }
}

impl Serialize for AlertThreshold {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Level(level) => serializer.serialize_f64(*level),
            Self::Off => serializer.serialize_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for AlertThreshold {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ThresholdVisitor;
        impl serde::de::Visitor<'_> for ThresholdVisitor {
            type Value = AlertThreshold;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or \"off\"")
            }
            fn visit_f64<E: serde::de::Error>(self, level: f64) -> Result<Self::Value, E> {
                if level.is_finite() {
                    Ok(AlertThreshold::Level(level))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(level), &self))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, level: i64) -> Result<Self::Value, E> {
                Ok(AlertThreshold::Level(level as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, level: u64) -> Result<Self::Value, E> {
                Ok(AlertThreshold::Level(level as f64))
            }
            // Environment values arrive as text.
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text.trim() == "off" {
                    return Ok(AlertThreshold::Off);
                }
                let level: f64 = text
                    .trim()
                    .parse()
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(text), &self))?;
                self.visit_f64(level)
            }
        }
        deserializer.deserialize_any(ThresholdVisitor)
    }
}

/// Puts each flag's value (when given) under its configuration key, named by its flag so
/// that `config show` can say where a value came from. One line a flag: a new flag is one
/// more line, not one more call shape.
macro_rules! set_flags {
    ($flags:ident, $($key:literal $flag:literal = $value:expr;)*) => {
        $($flags.set($key, $flag, $value);)*
    };
}

/// Flags that set configuration keys; every command that reads the configuration takes
/// them, and they win over the file and the environment.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigFlags {
    /// The configuration file (TOML). Environment variables CANOPY_<SECTION>__<KEY> and
    /// flags override it.
    #[arg(long, env = "CANOPY_CONFIG")]
    pub config: Option<PathBuf>,
    /// data_dir: the vote log, the SQLite store, the keys (default canopy-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// api.listen: the HTTP API's address (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// workers.threads: dataflow worker threads per process.
    #[arg(long)]
    workers: Option<usize>,
    /// workers.threads, as `canopy worker` has always called it (the same as --workers).
    #[arg(long, conflicts_with = "workers")]
    threads: Option<usize>,
    /// workers.metrics_listen: where a worker serves /metrics, /healthz and /readyz
    /// (default 127.0.0.1:9464; port 0 picks a free one).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// database.url: PostgreSQL for the metadata store (default: SQLite in the data
    /// directory).
    #[arg(long)]
    database_url: Option<String>,
    /// api.jwt_key: the RS256 signing key (PKCS#8 PEM) every replica shares.
    #[arg(long)]
    jwt_key: Option<PathBuf>,
    /// api.audit_key: the audit trail's HMAC key (32 bytes) every replica shares.
    #[arg(long)]
    audit_key: Option<PathBuf>,
    /// api.secrets_key: the key TOTP secrets are sealed under (32 bytes), shared likewise.
    #[arg(long)]
    secrets_key: Option<PathBuf>,
    /// demo: seed a demo decision and a stream of synthetic voters (`up`).
    #[arg(long)]
    demo: bool,
    /// api.user_rate: requests per second per user (burst: twice as many).
    #[arg(long)]
    user_rate: Option<f64>,
    /// api.push_interval_ms: live push sends a decision's results at most this often.
    #[arg(long)]
    push_interval_ms: Option<u64>,
    /// api.address_rate: requests per second per client address (burst: twice as many).
    #[arg(long)]
    address_rate: Option<f64>,
    /// record.anchor_interval_s: seconds between anchoring rounds.
    #[arg(long)]
    anchor_interval_s: Option<f64>,
    /// record.origin: where checkpoint origins start (`<origin>/decision/<uuid>`).
    #[arg(long)]
    record_origin: Option<String>,
    /// kafka.brokers: keep the vote log on a Kafka topic (`host:port,…`).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// kafka.topic: the votes topic; created if missing.
    #[arg(long)]
    kafka_topic: Option<String>,
    /// kafka.partitions: fixed for the topic's life; a topic with another count is refused.
    #[arg(long)]
    kafka_partitions: Option<u32>,
    /// kafka.replication: replicas per partition (and min.insync.replicas).
    #[arg(long)]
    kafka_replication: Option<i32>,
    /// sensors.windows_s: sensor windows, short,long, in seconds.
    #[arg(long, value_parser = parse_windows)]
    sensor_windows_s: Option<[i64; 2]>,
    /// sensors.allowed_lateness_s: how long after a window's end a late reading counts.
    #[arg(long)]
    allowed_lateness_s: Option<i64>,
    /// sensors.onnxruntime: ONNX Runtime's shared library for the anomaly model.
    #[arg(long)]
    onnxruntime: Option<PathBuf>,
    /// sensors.alert_thresholds: a metric's alert threshold on a region's 1-minute mean,
    /// e.g. `pm25=35` (repeatable; `pm25=off` drops the alert).
    #[arg(long = "alert-threshold", value_parser = parse_threshold)]
    alert_thresholds: Vec<(canopy_schemas::Metric, AlertThreshold)>,
    /// sensors.enabled = false: take no sensor readings.
    #[arg(long)]
    no_sensors: bool,
    /// lake.location: a folder or `s3://bucket/prefix` (default `<data-dir>/lake`).
    #[arg(long)]
    lake: Option<String>,
    /// lake.enabled = false: keep no analytics lake.
    #[arg(long, conflicts_with = "lake")]
    no_lake: bool,
    /// lake.flush_s: how often new history is written to the lake, in seconds.
    #[arg(long)]
    lake_flush_s: Option<f64>,
    /// lake.sql_timeout_s: the longest a SQL query may run, in seconds.
    #[arg(long)]
    sql_timeout_s: Option<u64>,
    /// lake.sql_memory_mib: memory one SQL query may use, in MiB.
    #[arg(long)]
    sql_memory_mib: Option<usize>,
    /// lake.pg_listen: serve the lake's SQL over the PostgreSQL wire protocol here.
    #[arg(long, conflicts_with = "no_lake")]
    pg_listen: Option<SocketAddr>,
    /// tls.cert: the listeners' certificate chain (PEM; re-read on SIGHUP).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// tls.key: the certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// api.header_read_timeout_s: seconds a client has to send a request head (default 10).
    #[arg(long)]
    header_read_timeout_s: Option<u64>,
    /// api.idle_timeout_s: seconds an idle connection stays open (default 60).
    #[arg(long)]
    idle_timeout_s: Option<u64>,
    /// api.max_connections: HTTP connections open at once (default 4096).
    #[arg(long)]
    max_connections: Option<usize>,
    /// api.cors_origins: a browser origin allowed to call the API (repeatable).
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// evm.rpc: anchor batch roots on this EVM node (http(s) JSON-RPC; a comma-separated
    /// list is tried in order).
    #[arg(long)]
    evm_rpc: Option<String>,
    /// evm.contract: the deployed GovernanceVotingVerifier (`canopy evm deploy`).
    #[arg(long)]
    evm_contract: Option<String>,
    /// evm.key: the anchoring key (hex secp256k1), the contract's owner.
    #[arg(long)]
    evm_key: Option<String>,
    /// evm.confirmations: blocks on top of an anchoring transaction before it counts.
    #[arg(long)]
    evm_confirmations: Option<u64>,
    /// workers.hosts from a file: host:port of every process, one per line, in order.
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// workers.hosts as N processes on this machine: 127.0.0.1:2101, 127.0.0.1:2102, …
    #[arg(long)]
    processes: Option<usize>,
}

/// The configuration flags of the account commands, which need only the store.
#[derive(Args, Clone, Debug, Default)]
pub struct StoreFlags {
    /// The configuration file (TOML); see `canopy config show`.
    #[arg(long, env = "CANOPY_CONFIG")]
    pub config: Option<PathBuf>,
    /// data_dir: the SQLite store, without a database URL (default canopy-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// database.url (default: SQLite in the data directory).
    #[arg(long)]
    database_url: Option<String>,
}

/// The configuration flags of the commands that read a node's data offline (`tally`, `log
/// verify`, `loadgen`).
#[derive(Args, Clone, Debug, Default)]
pub struct DataFlags {
    /// The configuration file (TOML); see `canopy config show`.
    #[arg(long, env = "CANOPY_CONFIG")]
    pub config: Option<PathBuf>,
    /// data_dir: the vote log and the decisions (default canopy-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DataFlags {
    pub fn load(&self) -> anyhow::Result<CanopyConfig> {
        self.load_with(FlagValues::default())
    }

    fn load_with(&self, mut flags: FlagValues) -> anyhow::Result<CanopyConfig> {
        flags.set("data_dir", "--data-dir", self.data_dir.as_ref());
        Ok(Loaded::load(self.config.as_deref(), flags)?.config)
    }
}

/// The configuration flags of the commands that read or fill the lake (`lake sync`, `sql`).
#[derive(Args, Clone, Debug, Default)]
pub struct LakeFlags {
    #[command(flatten)]
    data: DataFlags,
    /// lake.location: a folder or `s3://bucket/prefix` (default `<data_dir>/lake`;
    /// credentials, region and endpoint from the `AWS_*` variables).
    #[arg(long)]
    lake: Option<String>,
}

impl LakeFlags {
    pub fn load(&self) -> anyhow::Result<CanopyConfig> {
        let mut flags = FlagValues::default();
        flags.set("lake.location", "--lake", self.lake.as_ref());
        self.data.load_with(flags)
    }
}

/// `canopy tally`'s flags: the data directory and the dataflow's threads.
#[derive(Args, Clone, Debug, Default)]
pub struct TallyFlags {
    #[command(flatten)]
    data: DataFlags,
    /// workers.threads: dataflow worker threads.
    #[arg(long)]
    workers: Option<usize>,
}

impl TallyFlags {
    pub fn load(&self) -> anyhow::Result<CanopyConfig> {
        let mut flags = FlagValues::default();
        flags.set("workers.threads", "--workers", self.workers);
        self.data.load_with(flags)
    }
}

/// `short,long` in seconds.
fn parse_windows(text: &str) -> Result<[i64; 2], String> {
    let bad = || format!("{text:?} is not two whole numbers of seconds, short,long");
    let (short, long) = text.split_once(',').ok_or_else(bad)?;
    Ok([
        short.trim().parse().map_err(|_| bad())?,
        long.trim().parse().map_err(|_| bad())?,
    ])
}

/// `metric=level` or `metric=off`.
fn parse_threshold(text: &str) -> Result<(canopy_schemas::Metric, AlertThreshold), String> {
    let (metric, level) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not metric=level"))?;
    let metric = metric
        .parse()
        .map_err(|e: canopy_schemas::SchemaError| e.to_string())?;
    if level == "off" {
        return Ok((metric, AlertThreshold::Off));
    }
    let level: f64 = level
        .parse()
        .ok()
        .filter(|l: &f64| l.is_finite())
        .ok_or_else(|| format!("{level:?} is not a number or off"))?;
    Ok((metric, AlertThreshold::Level(level)))
}

/// Names where the value at a key path came from (`env CANOPY_KAFKA__TOPIC`, …).
type DescribeSource = Arc<dyn Fn(&[&str]) -> String + Send + Sync>;

/// One layer's values, and how `config show` and errors name where each came from.
struct Layer {
    name: &'static str,
    values: Dict,
    describe: DescribeSource,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let describe = Arc::clone(&self.describe);
        Metadata::named(self.name).interpolater(move |_: &Profile, keys: &[&str]| describe(keys))
    }

    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Sets `path` (dotted) in `dict`, making the sections on the way.
fn insert_at(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_string(), value);
        }
        Some((section, rest)) => {
            let entry = dict
                .entry(section.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_at(inner, rest, value);
            }
        }
    }
}

/// The flag layer: each flag given, at the key it sets.
#[derive(Default)]
pub struct FlagValues {
    entries: Vec<(String, Value, &'static str)>,
}

impl FlagValues {
    fn set<T: Serialize>(&mut self, key: &str, flag: &'static str, value: Option<T>) {
        if let Some(value) = value {
            let value = Value::serialize(value).expect("flag values serialize");
            self.entries.push((key.to_string(), value, flag));
        }
    }

    fn layer(self) -> Layer {
        let mut values = Dict::new();
        let mut flags = BTreeMap::new();
        for (key, value, flag) in self.entries {
            insert_at(&mut values, &key, value);
            flags.insert(key, flag);
        }
        Layer {
            name: "command-line flags",
            values,
            describe: Arc::new(move |keys| {
                let key = keys.join(".");
                match flags.get(&key) {
                    Some(flag) => format!("flag {flag}"),
                    None => format!("flags ({key})"),
                }
            }),
        }
    }
}

impl ConfigFlags {
    pub fn values(&self) -> anyhow::Result<FlagValues> {
        let mut flags = FlagValues::default();
        set_flags!(flags,
            "data_dir" "--data-dir" = self.data_dir.as_ref();
            "api.listen" "--listen" = self.listen;
            "workers.threads" "--workers" = self.workers;
            "workers.threads" "--threads" = self.threads;
            "workers.metrics_listen" "--metrics-listen" = self.metrics_listen;
            "database.url" "--database-url" = self.database_url.as_ref();
            "api.jwt_key" "--jwt-key" = self.jwt_key.as_ref();
            "api.audit_key" "--audit-key" = self.audit_key.as_ref();
            "api.secrets_key" "--secrets-key" = self.secrets_key.as_ref();
            "demo" "--demo" = self.demo.then_some(true);
            "api.user_rate" "--user-rate" = self.user_rate;
            "api.push_interval_ms" "--push-interval-ms" = self.push_interval_ms;
            "api.address_rate" "--address-rate" = self.address_rate;
            "record.anchor_interval_s" "--anchor-interval-s" = self.anchor_interval_s;
            "record.origin" "--record-origin" = self.record_origin.as_ref();
            "kafka.brokers" "--kafka-brokers" = self.kafka_brokers.as_ref();
            "kafka.topic" "--kafka-topic" = self.kafka_topic.as_ref();
            "kafka.partitions" "--kafka-partitions" = self.kafka_partitions;
            "kafka.replication" "--kafka-replication" = self.kafka_replication;
            "sensors.windows_s" "--sensor-windows-s" = self.sensor_windows_s;
            "sensors.allowed_lateness_s" "--allowed-lateness-s" = self.allowed_lateness_s;
            "sensors.onnxruntime" "--onnxruntime" = self.onnxruntime.as_ref();
            "sensors.enabled" "--no-sensors" = self.no_sensors.then_some(false);
            "lake.location" "--lake" = self.lake.as_ref();
            "lake.enabled" "--no-lake" = self.no_lake.then_some(false);
            "lake.flush_s" "--lake-flush-s" = self.lake_flush_s;
            "lake.sql_timeout_s" "--sql-timeout-s" = self.sql_timeout_s;
            "lake.sql_memory_mib" "--sql-memory-mib" = self.sql_memory_mib;
            "lake.pg_listen" "--pg-listen" = self.pg_listen;
            "tls.cert" "--tls-cert" = self.tls_cert.as_ref();
            "tls.key" "--tls-key" = self.tls_key.as_ref();
            "api.header_read_timeout_s" "--header-read-timeout-s" = self.header_read_timeout_s;
            "api.idle_timeout_s" "--idle-timeout-s" = self.idle_timeout_s;
            "api.max_connections" "--max-connections" = self.max_connections;
            "api.cors_origins" "--cors-origin" = (!self.cors_origins.is_empty()).then_some(&self.cors_origins);
            "evm.rpc" "--evm-rpc" = self.evm_rpc.as_ref();
            "evm.contract" "--evm-contract" = self.evm_contract.as_ref();
            "evm.key" "--evm-key" = self.evm_key.as_ref();
            "evm.confirmations" "--evm-confirmations" = self.evm_confirmations;
        );
        for (metric, threshold) in &self.alert_thresholds {
            flags.set(
                &format!("sensors.alert_thresholds.{}", metric.as_str()),
                "--alert-threshold",
                Some(threshold),
            );
        }
        let listed = match &self.hosts {
            Some(path) => Some(read_hosts(path)?),
            None => None,
        };
        if let (Some(processes), Some(listed)) = (self.processes, &listed)
            && processes != listed.len()
        {
            bail!(
                "--processes {processes} but {} hosts are listed in {}",
                listed.len(),
                display(self.hosts.as_deref())
            );
        }
        match listed {
            Some(hosts) => flags.set("workers.hosts", "--hosts", Some(hosts)),
            None => flags.set(
                "workers.hosts",
                "--processes",
                self.processes.map(|processes| {
                    (0..processes)
                        .map(|i| format!("127.0.0.1:{}", 2101 + i))
                        .collect::<Vec<_>>()
                }),
            ),
        }
        Ok(flags)
    }

    pub fn load(&self) -> anyhow::Result<Loaded> {
        Loaded::load(self.config.as_deref(), self.values()?)
    }
}

impl StoreFlags {
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let mut flags = FlagValues::default();
        flags.set("data_dir", "--data-dir", self.data_dir.as_ref());
        flags.set("database.url", "--database-url", self.database_url.as_ref());
        Loaded::load(self.config.as_deref(), flags)
    }
}

fn read_hosts(path: &Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading the hosts file {}", path.display()))?
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn display(path: Option<&Path>) -> String {
    path.map_or_else(|| "(none)".into(), |p| p.display().to_string())
}

/// The configuration's key names, read off the defaults so a new key needs no list.
struct KeyNames {
    top_level: Vec<String>,
    sections: Vec<String>,
}

impl KeyNames {
    fn of(defaults: &Dict) -> Self {
        let (sections, top_level) = defaults
            .iter()
            .partition::<Vec<_>, _>(|(_, value)| matches!(value, Value::Dict(..)));
        Self {
            top_level: top_level.into_iter().map(|(k, _)| k.clone()).collect(),
            sections: sections.into_iter().map(|(k, _)| k.clone()).collect(),
        }
    }
}

fn env_name(keys: &[&str]) -> String {
    format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
}

/// An environment value as text, unless it is a list or table (`[a, b]`, `{k = v}`):
/// the configuration's types decide whether text is a number, so `123` stays usable as a
/// string (a Redis prefix, a key).
fn env_value(raw: &str) -> Value {
    match raw.parse::<Value>() {
        Ok(value @ (Value::Array(..) | Value::Dict(..))) => value,
        _ => Value::from(raw.to_string()),
    }
}

fn env_layer(names: &KeyNames) -> Layer {
    let top_level = names.top_level.clone();
    let env = Env::prefixed(ENV_PREFIX)
        .filter(move |key| {
            key.as_str().contains("__")
                || top_level
                    .iter()
                    .any(|name| key.as_str().eq_ignore_ascii_case(name))
        })
        .split("__");
    let mut values = Dict::new();
    for (key, raw) in env.iter() {
        insert_at(&mut values, key.as_str(), env_value(&raw));
    }
    Layer {
        name: "environment",
        values,
        describe: Arc::new(|keys| format!("env {}", env_name(keys))),
    }
}

fn env_alias_layer() -> Layer {
    let mut values = Dict::new();
    for (name, key) in ENV_ALIASES {
        if let Ok(raw) = std::env::var(name) {
            insert_at(&mut values, key, env_value(&raw));
        }
    }
    Layer {
        name: "environment",
        values,
        describe: Arc::new(|keys| {
            let key = keys.join(".");
            match ENV_ALIASES.iter().find(|(_, aliased)| *aliased == key) {
                Some((name, _)) => format!("env {name}"),
                None => format!("env {}", env_name(keys)),
            }
        }),
    }
}

/// A `CANOPY_<SECTION>_<KEY>` variable (one underscore) would otherwise be silently
/// ignored; the cluster file's overrides used that form, so it is refused with its new
/// name. Other `CANOPY_*` variables (the test setup's, `CANOPY_CONFIG`) are not ours.
fn refuse_single_underscore_keys(names: &KeyNames) -> anyhow::Result<()> {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().to_ascii_uppercase();
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest.contains("__")
            || names.top_level.iter().any(|k| k.eq_ignore_ascii_case(rest))
            || ENV_ALIASES.iter().any(|(alias, _)| *alias == name)
        {
            continue;
        }
        let Some((section, key)) = rest.split_once('_') else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        let current = RENAMED_SECTIONS
            .iter()
            .find(|(old, _)| *old == section)
            .map_or(section.as_str(), |(_, new)| new);
        if names.sections.iter().any(|s| s == current) {
            bail!(
                "the environment variable {name} is not read: {current}.{} is set by {}",
                key.to_ascii_lowercase(),
                env_name(&[current, key])
            );
        }
    }
    Ok(())
}

/// The effective configuration, and the layers it came from.
pub struct Loaded {
    pub config: CanopyConfig,
    figment: Figment,
}

impl Loaded {
    pub fn load(file: Option<&Path>, flags: FlagValues) -> anyhow::Result<Self> {
        let defaults = match Value::serialize(CanopyConfig::default()) {
            Ok(Value::Dict(_, dict)) => dict,
            _ => bail!("the default configuration is not a table"),
        };
        let names = KeyNames::of(&defaults);
        refuse_single_underscore_keys(&names)?;
        let mut figment = Figment::new().merge(Layer {
            name: "defaults",
            values: defaults,
            describe: Arc::new(|_| "default".into()),
        });
        if let Some(path) = file {
            // Toml::file would search the parent directories for a missing file.
            std::fs::metadata(path)
                .with_context(|| format!("reading the config file {}", path.display()))?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment
            .merge(env_alias_layer())
            .merge(env_layer(&names))
            .merge(flags.layer());
        // Lossy: environment values are text, and "8" must fill a number.
        let config: CanopyConfig = figment.extract_lossy().map_err(|error| {
            let messages: Vec<String> = error.into_iter().map(|e| describe_error(&e)).collect();
            anyhow::anyhow!("the configuration is not valid: {}", messages.join("; "))
        })?;
        config.check()?;
        Ok(Self { config, figment })
    }

    /// Where the value at `keys` came from: `default`, `file <path>`, `env <NAME>`,
    /// `flag <--name>`.
    fn source(&self, keys: &[&str]) -> String {
        let Some(metadata) = self.figment.find_metadata(&keys.join(".")) else {
            return "default".into();
        };
        match &metadata.source {
            Some(Source::File(path)) => format!("file {}", path.display()),
            _ => metadata.interpolate(&Profile::Default, keys),
        }
    }

    /// The effective configuration as TOML, each value followed by its source, secrets
    /// masked; unset keys as comments. The output is itself a valid config file.
    pub fn show(&self) -> anyhow::Result<String> {
        let Value::Dict(_, table) = Value::serialize(self.config.masked())? else {
            bail!("the configuration is not a table");
        };
        let mut out = String::new();
        self.write_table(&mut out, &[], &table);
        Ok(out)
    }

    fn write_table(&self, out: &mut String, path: &[&str], table: &Dict) {
        for (key, value) in table {
            if matches!(value, Value::Dict(..)) {
                continue;
            }
            let keys: Vec<&str> = path.iter().copied().chain([key.as_str()]).collect();
            let line = match render(value) {
                Some(text) => format!("{key} = {text}"),
                None => format!("# {key} (not set)"),
            };
            out.push_str(&format!("{line:<44} # {}\n", self.source(&keys)));
        }
        for (key, value) in table {
            if let Value::Dict(_, inner) = value {
                let keys: Vec<&str> = path.iter().copied().chain([key.as_str()]).collect();
                out.push_str(&format!("\n[{}]\n", keys.join(".")));
                self.write_table(out, &keys, inner);
            }
        }
    }
}

/// One of figment's errors, naming the key and the layer that set it as `config show` would.
fn describe_error(error: &figment::Error) -> String {
    if error.path.is_empty() {
        return error.to_string();
    }
    let key = error.path.join(".");
    let source = match &error.metadata {
        Some(metadata) => match &metadata.source {
            Some(Source::File(path)) => format!("file {}", path.display()),
            _ => metadata.interpolate(&Profile::Default, &error.path),
        },
        None => "an unknown layer".into(),
    };
    match &error.kind {
        figment::error::Kind::UnknownField(_, expected) => format!(
            "unknown key `{key}` ({source}); the keys there are {}",
            expected.join(", ")
        ),
        kind => format!("{key} ({source}): {kind}"),
    }
}

/// A value as TOML; `None` for an unset one.
fn render(value: &Value) -> Option<String> {
    Some(match value {
        Value::String(_, text) => serde_json::to_string(text).unwrap_or_default(),
        Value::Char(_, c) => serde_json::to_string(&c.to_string()).unwrap_or_default(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, Num::F32(x)) => format!("{x:?}"),
        Value::Num(_, Num::F64(x)) => format!("{x:?}"),
        Value::Num(_, n) => n
            .to_i128()
            .map(|i| i.to_string())
            .or_else(|| n.to_u128().map(|u| u.to_string()))
            .unwrap_or_default(),
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().filter_map(render).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Empty(..) => return None,
        Value::Dict(_, table) => {
            let items: Vec<String> = table
                .iter()
                .filter_map(|(k, v)| Some(format!("{k} = {}", render(v)?)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    })
}

/// `scheme://user:password@host…` with the password (and a `password=` parameter) hidden.
fn mask_url_password(url: &str) -> String {
    let mut masked = url.to_string();
    if let Some(scheme_end) = url.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = url[authority_start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| authority_start + i);
        if let Some(at) = url[authority_start..authority_end].rfind('@') {
            let userinfo = &url[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                masked = format!(
                    "{}****{}",
                    &url[..authority_start + colon + 1],
                    &url[authority_start + at..]
                );
            }
        }
    }
    if let Some(start) = masked.find("password=") {
        let value_start = start + "password=".len();
        let value_end = masked[value_start..]
            .find('&')
            .map_or(masked.len(), |i| value_start + i);
        masked.replace_range(value_start..value_end, "****");
    }
    masked
}

impl CanopyConfig {
    /// A copy fit to print: URL passwords and keys hidden.
    fn masked(&self) -> Self {
        let mut masked = self.clone();
        masked.database.url = masked.database.url.as_deref().map(mask_url_password);
        masked.redis.url = masked.redis.url.as_deref().map(mask_url_password);
        masked.evm.key = masked.evm.key.as_ref().map(|_| "****".into());
        masked.kafka.sasl_password = masked.kafka.sasl_password.as_ref().map(|_| "****".into());
        masked
    }

    /// What no single key's type can say.
    fn check(&self) -> anyhow::Result<()> {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key go together: set both or neither");
        }
        if self.lake.pg_listen.is_some() && !self.lake.enabled {
            bail!("lake.pg_listen serves the lake's SQL, but lake.enabled is false");
        }
        for name in self.sensors.alert_thresholds.keys() {
            name.parse::<canopy_schemas::Metric>()
                .with_context(|| format!("sensors.alert_thresholds.{name}"))?;
        }
        if self.workers.hosts.is_empty() {
            bail!("workers.hosts lists no process");
        }
        Ok(())
    }

    fn rate(per_second: f64) -> canopy_serving::limits::Rate {
        canopy_serving::limits::Rate {
            per_second,
            burst: 2.0 * per_second,
        }
    }

    /// With the log's signing key, `<data_dir>/keys/log-hmac.key` (made if missing).
    fn kafka(&self) -> anyhow::Result<Option<KafkaConfig>> {
        let kafka = &self.kafka;
        let Some(brokers) = &kafka.brokers else {
            return Ok(None);
        };
        let signing_key = canopy_node::keys::load_log_key(&self.data_dir)
            .context("the Kafka log's signing key")?;
        Ok(Some(KafkaConfig {
            partitions: kafka.partitions,
            replication: kafka.replication,
            min_insync_replicas: kafka.replication,
            security: self.kafka_security()?,
            ..KafkaConfig::new(brokers.clone(), kafka.topic.clone(), signing_key)
        }))
    }

    /// librdkafka's security properties from the `kafka` section.
    fn kafka_security(&self) -> anyhow::Result<Vec<(String, String)>> {
        let kafka = &self.kafka;
        let protocol = kafka.security_protocol.as_deref().unwrap_or("plaintext");
        let (tls, sasl) = match protocol {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => anyhow::bail!(
                "kafka.security_protocol {other:?}: one of plaintext, ssl, sasl_plaintext, sasl_ssl"
            ),
        };
        let mut properties = vec![("security.protocol".to_string(), protocol.to_string())];
        match (&kafka.ca_file, tls) {
            (Some(ca), true) => {
                anyhow::ensure!(ca.is_file(), "kafka.ca_file {} is not a file", ca.display());
                properties.push(("ssl.ca.location".into(), ca.display().to_string()));
            }
            (Some(_), false) => anyhow::bail!(
                "kafka.ca_file is set but kafka.security_protocol ({protocol}) is not ssl or sasl_ssl"
            ),
            (None, _) => {}
        }
        if sasl {
            let (Some(mechanism), Some(username), Some(password)) = (
                &kafka.sasl_mechanism,
                &kafka.sasl_username,
                &kafka.sasl_password,
            ) else {
                anyhow::bail!(
                    "kafka.security_protocol {protocol} needs kafka.sasl_mechanism, sasl_username and sasl_password"
                );
            };
            anyhow::ensure!(
                ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"].contains(&mechanism.as_str()),
                "kafka.sasl_mechanism {mechanism:?}: one of SCRAM-SHA-256, SCRAM-SHA-512, PLAIN"
            );
            properties.push(("sasl.mechanism".into(), mechanism.clone()));
            properties.push(("sasl.username".into(), username.clone()));
            properties.push(("sasl.password".into(), password.clone()));
        }
        Ok(properties)
    }

    fn cluster_kafka(&self) -> anyhow::Result<KafkaConfig> {
        self.kafka()?.context(
            "kafka.brokers is not set (config file, CANOPY_KAFKA__BROKERS or --kafka-brokers)",
        )
    }

    fn cluster_database_url(&self) -> anyhow::Result<String> {
        self.database.url.clone().context(
            "database.url is not set (config file, CANOPY_DATABASE__URL or --database-url)",
        )
    }

    fn cluster_redis(&self) -> anyhow::Result<RedisTarget> {
        let url = self
            .redis
            .url
            .clone()
            .context("redis.url is not set (config file or CANOPY_REDIS__URL)")?;
        Ok(RedisTarget {
            url,
            prefix: self.redis.prefix.clone(),
        })
    }

    fn anchor_interval(&self) -> Duration {
        Duration::from_secs_f64(self.record.anchor_interval_s.max(0.05))
    }

    /// Only the metadata store (`migrate`, `admin create`), with its keys.
    pub fn store_config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(&self.data_dir);
        config.database_url = self.database.url.clone();
        config.audit_key = self.api.audit_key.clone();
        config.secrets_key = self.api.secrets_key.clone();
        config
    }

    /// The sign-in throttle and the bounds of password hashing.
    fn signin_limits(&self, api: &mut canopy_serving::state::ApiConfig) {
        let section = &self.api;
        api.signin_throttle = canopy_serving::throttle::ThrottlePolicy {
            account_free_attempts: section.signin_free_attempts,
            address_free_attempts: section.signin_address_free_attempts,
            first_delay: Duration::from_millis(section.signin_first_delay_ms.max(1)),
            max_delay: Duration::from_secs(section.signin_max_delay_s),
            forget_after: Duration::from_secs(section.signin_forget_after_s.max(1)),
        };
        api.password_hashing = canopy_serving::auth::HashingLimits {
            memory_kib: section.hashing_memory_mib.saturating_mul(1024),
            max_waiting: section.hashing_max_waiting,
        };
    }

    /// The HTTP listener's limits, its certificate and the waits a user may park.
    fn listener_limits(&self, config: &mut NodeConfig) {
        let api = &self.api;
        config.http = canopy_node::listener::HttpSettings {
            header_read_timeout: Duration::from_secs(api.header_read_timeout_s.max(1)),
            idle_timeout: Duration::from_secs(api.idle_timeout_s.max(1)),
            max_connections: api.max_connections.max(1),
            cors_origins: api.cors_origins.clone(),
        };
        config.tls = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some(canopy_node::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        config.api.max_waits_per_user = api.max_waits_per_user.max(1);
        config.api.max_waits = api.max_waits.max(1);
        config.api.push_interval = Duration::from_millis(api.push_interval_ms.max(10));
        config.api.breakdown_interval = Duration::from_secs(api.breakdown_interval_s.max(1));
    }

    /// `canopy up`: the whole node in one process.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = NodeConfig::new(&self.data_dir);
        config.listen = self.api.listen;
        self.listener_limits(&mut config);
        config.workers = self.workers.threads;
        config.database_url = self.database.url.clone();
        config.jwt_key = self.api.jwt_key.clone();
        config.audit_key = self.api.audit_key.clone();
        config.secrets_key = self.api.secrets_key.clone();
        config.api.per_user = Self::rate(self.api.user_rate);
        config.api.per_address = Self::rate(self.api.address_rate);
        config.api.trend_min_voters = self.api.trend_min_voters.max(1);
        config.api.registrations_per_address =
            canopy_serving::limits::Rate::per_hour(self.api.registrations_per_address_hour);
        config.api.registrations_per_block =
            canopy_serving::limits::Rate::per_hour(self.api.registrations_per_block_hour);
        config.api.claims_per_account =
            canopy_serving::limits::Rate::per_hour(self.api.claims_per_account_hour);
        self.signin_limits(&mut config.api);
        config.record.anchor.interval = self.anchor_interval();
        config.record.origin = self.record.origin.clone();
        config.record.tile_store = self.record.tile_store.clone();
        config.kafka = self.kafka()?;
        config.sensors = self.sensor_settings()?;
        config.agents = self.agent_settings()?;
        if self.lake.enabled {
            let mut lake = canopy_node::lake::LakeSettings::new(self.lake_location()?);
            lake.flush_interval = Duration::from_secs_f64(self.lake.flush_s.max(0.05));
            lake.compact_every = self.lake.compact_every.max(1);
            lake.sql.timeout = Duration::from_secs(self.lake.sql_timeout_s.max(1));
            lake.sql.memory_bytes = self.lake.sql_memory_mib.max(1) << 20;
            lake.sql.target_partitions = self.workers.threads.max(1);
            lake.pg_listen = self.lake.pg_listen;
            config.sql_port.allow_plaintext = self.lake.pg_allow_plaintext;
            config.sql_port.max_connections = self.lake.pg_max_connections.max(1);
            config.sql_port.idle_timeout = Duration::from_secs(self.lake.pg_idle_timeout_s.max(1));
            lake.min_group_voters = self.api.trend_min_voters.max(1);
            config.lake = Some(lake);
        }
        Ok(config)
    }

    /// The `[agents]` section, checked: shares and rates are fractions, and the versions
    /// named are built in.
    fn agent_settings(&self) -> anyhow::Result<canopy_agents::AgentServiceConfig> {
        let agents = &self.agents;
        let fraction = |name: &str, value: f64| {
            anyhow::ensure!(
                (0.0..=1.0).contains(&value),
                "agents.{name} is {value}: it must be between 0 and 1"
            );
            Ok(value)
        };
        anyhow::ensure!(
            agents.evidence_ttl_s.is_finite() && agents.evidence_ttl_s >= 0.0,
            "agents.evidence_ttl_s must be 0 or more seconds"
        );
        anyhow::ensure!(
            agents.rollback_p95_ms.is_finite() && agents.rollback_p95_ms > 0.0,
            "agents.rollback_p95_ms must be a positive number of milliseconds"
        );
        let built_in: Vec<&str> = canopy_agents::BUILT_IN_MODELS
            .iter()
            .map(|(version, _)| *version)
            .collect();
        let candidate = Some(agents.candidate.clone()).filter(|c| !c.is_empty());
        for (name, version) in [
            ("model", Some(&agents.model)),
            ("candidate", candidate.as_ref()),
        ] {
            if let Some(version) = version {
                anyhow::ensure!(
                    built_in.contains(&version.as_str()),
                    "agents.{name} = {version:?} is not a model version this build has ({})",
                    built_in.join(", ")
                );
            }
        }
        anyhow::ensure!(
            candidate.as_ref() != Some(&agents.model),
            "agents.candidate is the model that answers already: name another version, or \"\""
        );
        Ok(canopy_agents::AgentServiceConfig {
            evidence_ttl: Duration::from_secs_f64(agents.evidence_ttl_s),
            max_running: agents.max_running,
            current: Some(agents.model.clone()),
            candidate,
            policy: canopy_agents::RolloutPolicy {
                candidate_share: fraction("candidate_share", agents.candidate_share)?,
                max_error_rate: fraction("rollback_error_rate", agents.rollback_error_rate)?,
                max_p95_ms: agents.rollback_p95_ms,
                min_calls: agents.rollback_min_calls,
            },
            ..canopy_agents::AgentServiceConfig::default()
        })
    }

    /// The `[sensors]` section and `kafka.sensor_topic`: the same for `up`, every worker
    /// (which run the features dataflow) and every replica (which read its windows).
    fn sensor_settings(&self) -> anyhow::Result<canopy_node::SensorSettings> {
        let sensors = &self.sensors;
        let mut settings = canopy_node::SensorSettings {
            enabled: sensors.enabled,
            onnxruntime: sensors.onnxruntime.clone(),
            topic: self.kafka.sensor_topic.clone(),
            ..Default::default()
        };
        let windows = &mut settings.engine.windows;
        windows.sizes_ms = [
            sensors.windows_s[0].saturating_mul(1000),
            sensors.windows_s[1].saturating_mul(1000),
        ];
        windows.allowed_lateness_ms = sensors.allowed_lateness_s.saturating_mul(1000);
        windows
            .validate()
            .map_err(anyhow::Error::msg)
            .context("sensors.windows_s")?;
        let thresholds = &mut settings.alert_rules.thresholds;
        for (name, threshold) in &sensors.alert_thresholds {
            let metric: canopy_schemas::Metric = name.parse()?;
            match threshold {
                AlertThreshold::Level(level) => thresholds.insert(metric, *level),
                AlertThreshold::Off => thresholds.remove(&metric),
            };
        }
        Ok(settings)
    }

    /// `lake.location`, else `<data_dir>/lake`.
    pub fn lake_location(&self) -> anyhow::Result<canopy_analytics::LakeLocation> {
        match &self.lake.location {
            Some(text) => canopy_analytics::LakeLocation::parse(text)
                .with_context(|| format!("lake.location {text}")),
            None => Ok(canopy_analytics::LakeLocation::Local(
                self.data_dir.join("lake"),
            )),
        }
    }

    /// The lake of a cluster's process: only at an explicit `lake.location`, which every
    /// process must share (the default, under each process's own data directory, would
    /// split the lake).
    fn cluster_lake(&self) -> anyhow::Result<Option<canopy_node::lake::LakeSettings>> {
        if !self.lake.enabled || self.lake.location.is_none() {
            return Ok(None);
        }
        let mut lake = canopy_node::lake::LakeSettings::new(self.lake_location()?);
        lake.flush_interval = Duration::from_secs_f64(self.lake.flush_s.max(0.05));
        lake.compact_every = self.lake.compact_every.max(1);
        lake.sql.timeout = Duration::from_secs(self.lake.sql_timeout_s.max(1));
        lake.sql.memory_bytes = self.lake.sql_memory_mib.max(1) << 20;
        lake.sql.target_partitions = self.workers.threads.max(1);
        lake.pg_listen = self.lake.pg_listen;
        lake.min_group_voters = self.api.trend_min_voters.max(1);
        Ok(Some(lake))
    }

    /// `canopy serve`: a stateless API replica of a cluster.
    pub fn serve_config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = NodeConfig::new(&self.data_dir);
        config.listen = self.api.listen;
        self.listener_limits(&mut config);
        config.database_url = Some(self.cluster_database_url()?);
        config.jwt_key = self.api.jwt_key.clone();
        config.audit_key = self.api.audit_key.clone();
        config.secrets_key = self.api.secrets_key.clone();
        // Redis before Kafka: a refused start makes no log key.
        config.redis = Some(self.cluster_redis()?);
        config.kafka = Some(self.cluster_kafka()?);
        config.run_engine = false;
        config.sensors = self.sensor_settings()?;
        config.agents = self.agent_settings()?;
        // SQL, trends and the PostgreSQL port over the lake the workers write.
        if self.lake.pg_listen.is_some() && self.lake.location.is_none() {
            bail!("lake.pg_listen on a replica needs lake.location: the lake the workers write");
        }
        config.lake = self.cluster_lake()?;
        config.sql_port.allow_plaintext = self.lake.pg_allow_plaintext;
        config.sql_port.max_connections = self.lake.pg_max_connections.max(1);
        config.sql_port.idle_timeout = Duration::from_secs(self.lake.pg_idle_timeout_s.max(1));
        config.record.origin = self.record.origin.clone();
        config.record.tile_store = self.record.tile_store.clone();
        config.api.per_user = Self::rate(self.api.user_rate);
        config.api.per_address = Self::rate(self.api.address_rate);
        config.api.trend_min_voters = self.api.trend_min_voters.max(1);
        config.api.registrations_per_address =
            canopy_serving::limits::Rate::per_hour(self.api.registrations_per_address_hour);
        config.api.registrations_per_block =
            canopy_serving::limits::Rate::per_hour(self.api.registrations_per_block_hour);
        config.api.claims_per_account =
            canopy_serving::limits::Rate::per_hour(self.api.claims_per_account_hour);
        self.signin_limits(&mut config.api);
        Ok(config)
    }

    /// `canopy worker --process <process>`: one process of the dataflow cluster.
    pub fn worker_config(&self, process: usize) -> anyhow::Result<WorkerConfig> {
        let hosts = &self.workers.hosts;
        if process >= hosts.len() {
            bail!(
                "--process {process} is not below the number of processes ({}, workers.hosts)",
                hosts.len()
            );
        }
        // The Kafka configuration last: it makes the log key, which a refused start must not.
        let (database_url, redis) = (self.cluster_database_url()?, self.cluster_redis()?);
        let mut config = WorkerConfig::new(
            self.data_dir.clone(),
            database_url,
            self.cluster_kafka()?,
            redis,
        );
        config.threads = self.workers.threads.max(1);
        config.checkpoint_interval =
            Duration::from_millis(self.workers.checkpoint_interval_ms.max(10));
        config.full_checkpoint_every = self.workers.full_checkpoint_every;
        config.metrics_listen = Some(self.workers.metrics_listen);
        config.sensors = self.sensor_settings()?;
        // Workers write the lake; its SQL port is a replica's.
        config.lake = self
            .cluster_lake()?
            .map(|lake| canopy_node::lake::LakeSettings {
                pg_listen: None,
                ..lake
            });
        config.record.origin = self.record.origin.clone();
        config.record.tile_store = self.record.tile_store.clone();
        config.record.anchor.interval = self.anchor_interval();
        config.cluster = (hosts.len() > 1).then(|| ClusterConfig {
            process,
            addresses: hosts.clone(),
        });
        Ok(config)
    }

    /// The EVM anchor target's settings, if `evm.rpc` names a node.
    #[cfg(feature = "evm")]
    pub fn evm_args(&self) -> crate::evm::EvmArgs {
        crate::evm::EvmArgs {
            evm_rpc: self.evm.rpc.clone(),
            evm_contract: self.evm.contract.clone(),
            evm_key: self.evm.key.clone(),
            evm_confirmations: self.evm.confirmations,
        }
    }

    #[cfg(not(feature = "evm"))]
    pub fn refuse_evm(&self) -> anyhow::Result<()> {
        if self.evm.rpc.is_some() {
            bail!("evm.rpc is set, but this canopy is built without EVM anchoring");
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    flags: ConfigFlags,
}

/// `canopy config show`.
pub fn show(args: ShowArgs) -> anyhow::Result<()> {
    print!("{}", args.flags.load()?.show()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            mask_url_password("postgres://canopy:hunter2@db:5432/canopy"),
            "postgres://canopy:****@db:5432/canopy"
        );
        assert_eq!(
            mask_url_password("redis://:hunter2@cache:6379/"),
            "redis://:****@cache:6379/"
        );
        assert_eq!(
            mask_url_password("postgres://db/canopy?user=a&password=hunter2&x=1"),
            "postgres://db/canopy?user=a&password=****&x=1"
        );
        assert_eq!(
            mask_url_password("postgres://canopy@db/canopy"),
            "postgres://canopy@db/canopy"
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("canopy.example.toml");
        let loaded = Loaded::load(Some(&path), FlagValues::default()).unwrap();
        // Building a Kafka configuration makes the log key under data_dir: not under /srv.
        let data = tempfile::tempdir().unwrap();
        let config = &CanopyConfig {
            data_dir: data.path().to_path_buf(),
            ..loaded.config.clone()
        };
        assert_eq!(config.workers.hosts.len(), 2);
        assert!(config.worker_config(1).is_ok() && config.serve_config().is_ok());
        assert!(config.node_config().is_ok());
    }

    #[test]
    fn agent_settings_are_checked_and_reach_the_node() {
        let data = tempfile::tempdir().unwrap();
        let load = |agents: &str| {
            let path = data.path().join("canopy.toml");
            let text = format!("data_dir = {:?}\n[agents]\n{agents}\n", data.path());
            std::fs::write(&path, text).unwrap();
            Loaded::load(Some(&path), FlagValues::default())
                .and_then(|loaded| loaded.config.node_config())
        };
        let config = load("candidate = \"\"\nmax_running = 8\nevidence_ttl_s = 2.5").unwrap();
        assert_eq!(config.agents.candidate, None);
        assert_eq!(config.agents.current.as_deref(), Some("consensus-1"));
        assert_eq!(config.agents.max_running, 8);
        assert_eq!(config.agents.evidence_ttl, Duration::from_millis(2500));
        let swapped =
            load("model = \"consensus-2\"\ncandidate = \"consensus-1\"\ncandidate_share = 0.25")
                .unwrap();
        assert_eq!(swapped.agents.current.as_deref(), Some("consensus-2"));
        assert_eq!(swapped.agents.policy.candidate_share, 0.25);
        for (bad, says) in [
            ("candidate_share = 1.5", "agents.candidate_share is 1.5"),
            ("rollback_error_rate = -0.1", "agents.rollback_error_rate"),
            (
                "model = \"consensus-9\"",
                "not a model version this build has (consensus-1, consensus-2)",
            ),
            (
                "candidate = \"consensus-1\"",
                "the model that answers already",
            ),
            ("rollback_p95_ms = 0.0", "agents.rollback_p95_ms"),
        ] {
            let error = format!(
                "{:#}",
                load(bad).err().unwrap_or_else(|| panic!("{bad} was taken"))
            );
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn environment_text_is_typed_by_the_configuration() {
        assert_eq!(env_value("8"), Value::from("8".to_string()));
        assert!(matches!(env_value("[a:1, b:2]"), Value::Array(..)));
    }
}
