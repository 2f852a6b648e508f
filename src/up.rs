//! `canopy up` (one process, embedded defaults) and `canopy admin create`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use canopy_node::{Node, NodeConfig};
use canopy_schemas::{
    Component, ComponentWeights, Decision, DecisionId, LoggedVote, Method, Vote, VoteId, VoterId,
    VoterSalt, Weight,
};
use canopy_serving::auth::Role;
use clap::Args;
use rand::Rng;

#[derive(Args)]
pub struct UpArgs {
    #[arg(long, default_value = "canopy-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Dataflow worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// PostgreSQL URL for the metadata store (default: SQLite in the data directory).
    #[arg(long, env = "CANOPY_DATABASE_URL")]
    database_url: Option<String>,
    /// The RS256 signing key (PKCS#8 PEM), shared by every replica of a cluster; generated
    /// under the data directory if absent.
    #[arg(long, env = "CANOPY_JWT_KEY")]
    jwt_key: Option<PathBuf>,
    /// Seed a demo decision and a stream of synthetic voters.
    #[arg(long)]
    demo: bool,
    /// Requests per second allowed per user (burst: twice as many).
    #[arg(long, default_value_t = 20.0)]
    user_rate: f64,
    /// Requests per second allowed per client address (burst: twice as many).
    #[arg(long, default_value_t = 2_000.0)]
    address_rate: f64,
    /// Seconds between anchoring rounds (each anchors every checkpoint not yet anchored).
    #[arg(long, default_value_t = 10.0)]
    anchor_interval_s: f64,
    /// Where checkpoint origins start (`<origin>/decision/<uuid>`); name it after the
    /// node's public address.
    #[arg(long, default_value = "canopy.local")]
    record_origin: String,
    /// Keep the vote log on a Kafka topic (`host:port,…`) instead of under the data
    /// directory.
    #[arg(long, env = "CANOPY_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The votes topic; created if missing.
    #[arg(long, default_value = "canopy.votes", requires = "kafka_brokers")]
    kafka_topic: String,
    /// Partitions of the votes topic. Fixed for the topic's life: a decision's partition
    /// depends on it, and a topic with another count is refused.
    #[arg(long, default_value_t = 8, requires = "kafka_brokers")]
    kafka_partitions: u32,
    /// Replicas per partition (and min.insync.replicas) for a topic created here.
    #[arg(long, default_value_t = 1, requires = "kafka_brokers")]
    kafka_replication: i32,
    /// Sensor windows, short and long, in seconds (the long a multiple of the short).
    #[arg(long, default_value = "60,3600", value_parser = parse_windows)]
    sensor_windows_s: [i64; 2],
    /// How long after a window's end a late reading still corrects it.
    #[arg(long, default_value_t = 300)]
    allowed_lateness_s: i64,
    /// ONNX Runtime's shared library for the anomaly model (`scripts/onnxruntime` fetches
    /// it from PyPI). Without it z-scores still flag anomalies; the model scores nothing.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    onnxruntime: Option<PathBuf>,
    /// Replaces a metric's alert threshold on a region's 1-minute mean, e.g.
    /// `--alert-threshold pm25=35` (repeatable; `pm25=off` drops the alert).
    #[arg(long = "alert-threshold", value_parser = parse_threshold)]
    alert_thresholds: Vec<(canopy_schemas::Metric, Option<f64>)>,
    /// Take no sensor readings (no sensor log, no features dataflow).
    #[arg(long)]
    no_sensors: bool,
    /// Where the analytics lake goes (Parquet; default `<data-dir>/lake`): a folder, or
    /// `s3://bucket/prefix` on an S3-compatible store (credentials, region and endpoint from
    /// the `AWS_*` variables).
    #[arg(long)]
    lake: Option<String>,
    /// Keep no analytics lake (no Parquet files, no SQL).
    #[arg(long, conflicts_with = "lake")]
    no_lake: bool,
    /// How often new history is written to the lake, in seconds.
    #[arg(long, default_value_t = 10.0)]
    lake_flush_s: f64,
    /// The longest a SQL query may run (HTTP and PostgreSQL protocol), in seconds.
    #[arg(long, default_value_t = 120)]
    sql_timeout_s: u64,
    /// Memory one SQL query may use for sorts, joins and aggregations, in MiB.
    #[arg(long, default_value_t = 2048)]
    sql_memory_mib: usize,
    /// Serve the lake's SQL over the PostgreSQL wire protocol here (psql, BI tools), e.g.
    /// 127.0.0.1:5433. Analysts and admins sign in with their Canopy username and password.
    #[arg(long, conflicts_with = "no_lake")]
    pg_listen: Option<SocketAddr>,
    #[cfg(feature = "evm")]
    #[command(flatten)]
    evm: crate::evm::EvmArgs,
}

#[derive(Args)]
pub struct AdminCreateArgs {
    #[arg(long, default_value = "canopy-data")]
    data_dir: PathBuf,
    #[arg(long, env = "CANOPY_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long)]
    username: String,
    #[arg(long, default_value = "admin")]
    role: String,
}

fn node_config(args: &UpArgs) -> anyhow::Result<NodeConfig> {
    let mut config = NodeConfig::new(&args.data_dir);
    config.listen = args.listen;
    config.workers = args.workers;
    config.database_url = args.database_url.clone();
    config.jwt_key = args.jwt_key.clone();
    config.api.per_user = canopy_serving::limits::Rate {
        per_second: args.user_rate,
        burst: 2.0 * args.user_rate,
    };
    config.api.per_address = canopy_serving::limits::Rate {
        per_second: args.address_rate,
        burst: 2.0 * args.address_rate,
    };
    config.anchor.interval = Duration::from_secs_f64(args.anchor_interval_s.max(0.05));
    config.record_origin = args.record_origin.clone();
    config.kafka = args
        .kafka_brokers
        .as_ref()
        .map(|brokers| canopy_ingest::KafkaConfig {
            partitions: args.kafka_partitions,
            replication: args.kafka_replication,
            min_insync_replicas: args.kafka_replication,
            ..canopy_ingest::KafkaConfig::new(brokers.clone(), args.kafka_topic.clone())
        });
    config.sensors.enabled = !args.no_sensors;
    config.sensors.onnxruntime = args.onnxruntime.clone();
    let windows = &mut config.sensors.engine.windows;
    windows.sizes_ms = [
        args.sensor_windows_s[0].saturating_mul(1000),
        args.sensor_windows_s[1].saturating_mul(1000),
    ];
    windows.allowed_lateness_ms = args.allowed_lateness_s.saturating_mul(1000);
    if !args.no_lake {
        let location = match &args.lake {
            Some(text) => canopy_analytics::LakeLocation::parse(text)
                .with_context(|| format!("--lake {text}"))?,
            None => canopy_analytics::LakeLocation::Local(args.data_dir.join("lake")),
        };
        let mut lake = canopy_node::lake::LakeSettings::new(location);
        lake.flush_interval = Duration::from_secs_f64(args.lake_flush_s.max(0.05));
        lake.sql.timeout = Duration::from_secs(args.sql_timeout_s.max(1));
        lake.sql.memory_bytes = args.sql_memory_mib.max(1) << 20;
        lake.sql.target_partitions = args.workers.max(1);
        config.lake = Some(lake);
    }
    let thresholds = &mut config.sensors.alert_rules.thresholds;
    for (metric, threshold) in &args.alert_thresholds {
        match threshold {
            Some(level) => thresholds.insert(*metric, *level),
            None => thresholds.remove(metric),
        };
    }
    Ok(config)
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
fn parse_threshold(text: &str) -> Result<(canopy_schemas::Metric, Option<f64>), String> {
    let (metric, level) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not metric=level"))?;
    let metric = metric
        .parse()
        .map_err(|e: canopy_schemas::SchemaError| e.to_string())?;
    if level == "off" {
        return Ok((metric, None));
    }
    let level: f64 = level
        .parse()
        .ok()
        .filter(|l: &f64| l.is_finite())
        .ok_or_else(|| format!("{level:?} is not a number or off"))?;
    Ok((metric, Some(level)))
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        #[allow(unused_mut)]
        let mut config = node_config(&args)?;
        #[cfg(feature = "evm")]
        if let Some(target) = crate::evm::target(&args.evm).await? {
            println!("  anchoring on chain: {}", {
                use canopy_chain::AnchorTarget;
                target.name()
            });
            config.anchor_target = Some(Arc::new(target));
        }
        let lake_sql = config
            .lake
            .as_ref()
            .map(|lake| canopy_analytics::LakeSql::new(lake.location.clone(), lake.sql));
        let node = Node::start(config).await.context("starting the node")?;
        println!("Canopy is listening on http://{}", node.addr);
        let pg = match (args.pg_listen, lake_sql) {
            (Some(listen), Some(lake)) => {
                let credentials = Arc::new(AnalystCredentials(Arc::clone(&node.state.store)));
                let server = canopy_sqlwire::PgServer::start(listen, lake, credentials)
                    .await
                    .context("starting the PostgreSQL protocol listener")?;
                println!(
                    "  SQL over the lake (PostgreSQL protocol): psql -h {} -p {} -U <analyst> canopy",
                    server.local_addr().ip(),
                    server.local_addr().port()
                );
                Some(server)
            }
            _ => None,
        };
        println!("  data directory: {}", args.data_dir.display());
        println!(
            "  create the first admin: canopy admin create --data-dir {} --username <name>",
            args.data_dir.display()
        );
        println!("    (reads the password, 10 characters or more, from standard input)");
        println!(
            "  health: http://{0}/healthz   readiness: http://{0}/readyz",
            node.addr
        );
        if args.demo {
            let decision = seed_demo(&node).await?;
            println!(
                "  demo decision {} ({}) is receiving synthetic votes:",
                decision.id, decision.title
            );
            println!(
                "    a signed-in user can read /api/v1/voting/decision/{}/results",
                decision.id
            );
        }
        wait_for_stop_signal().await;
        println!("canopy: stopping: no new connections; finishing requests in flight");
        if let Some(pg) = pg {
            pg.shutdown()
                .await
                .context("stopping the PostgreSQL protocol listener")?;
        }
        node.shutdown().await.context("shutting down")?;
        println!("canopy: stopped cleanly");
        Ok(())
    })
}

pub(crate) async fn wait_for_stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Registers the demo decision (once) and starts synthetic voters casting through the gate.
async fn seed_demo(node: &Node) -> anyhow::Result<Decision> {
    let state = Arc::clone(&node.state);
    let title = "Demo: restore the river delta wetlands?";
    let existing = state
        .store
        .decisions()
        .await?
        .into_iter()
        .find(|d| d.title == title);
    let decision = match existing {
        Some(decision) => decision,
        None => {
            let owner = match state.store.user_by_username("demo-owner").await? {
                Some(user) => user.id,
                None => {
                    let password: String = (0..32)
                        .map(|_| rand::rng().random_range('a'..='z'))
                        .collect();
                    canopy_serving::api::create_user(
                        state.store.as_ref(),
                        "demo-owner",
                        &password,
                        Role::Operator,
                    )
                    .await?
                }
            };
            let now = canopy_schemas::clock::now_micros();
            let decision = Decision {
                id: DecisionId::new_random(),
                title: title.into(),
                region: "delta".into(),
                options: vec![
                    "restore".into(),
                    "partially restore".into(),
                    "leave as is".into(),
                ],
                opens_at: now,
                closes_at: now + 365 * 24 * 3600 * 1_000_000,
                weights: ComponentWeights::DEFAULT,
                quorum: 500,
                method: Method::SingleChoice,
            };
            state.gate.register(decision.clone(), now)?;
            state
                .store
                .put_decision(&decision, owner, now / 1_000_000)
                .await?;
            if let Some(engine) = &state.engine {
                engine.register(decision.clone());
            }
            decision
        }
    };
    let gate = Arc::clone(&state.gate);
    let salted = Arc::clone(&state);
    let runtime = tokio::runtime::Handle::current();
    let demo = decision.clone();
    std::thread::Builder::new()
        .name("canopy-demo-voters".into())
        .spawn(move || {
            let mut rng = rand::rng();
            loop {
                let expert = rng.random_range(0..10) == 0;
                let vote = Vote {
                    vote_id: VoteId::new_random(),
                    decision_id: demo.id,
                    voter_id: VoterId(rng.random_range(0..2_000)),
                    option: *[0u16, 0, 0, 1, 1, 2]
                        .get(rng.random_range(0..6))
                        .unwrap_or(&0),
                    component: if expert {
                        Component::Expert
                    } else {
                        Component::Democratic
                    },
                    weight: if expert {
                        Weight(2_000_000)
                    } else {
                        Weight::ONE
                    },
                    cast_at: canopy_schemas::clock::now_micros(),
                };
                let Ok(salt) = runtime.block_on(
                    salted
                        .salts
                        .salt(salted.store.as_ref(), vote.voter_id.as_uuid()),
                ) else {
                    return;
                };
                if gate
                    .submit(&[LoggedVote::new(vote, &VoterSalt(salt))])
                    .is_err()
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
    Ok(decision)
}

#[derive(Args)]
pub struct MigrateArgs {
    #[arg(long, default_value = "canopy-data")]
    data_dir: PathBuf,
    #[arg(long, env = "CANOPY_DATABASE_URL")]
    database_url: Option<String>,
}

/// A one-threaded runtime and the store settings the CLI's account commands share.
fn store_command(
    data_dir: &std::path::Path,
    database_url: Option<String>,
) -> anyhow::Result<(tokio::runtime::Runtime, NodeConfig)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut config = NodeConfig::new(data_dir);
    config.database_url = database_url;
    Ok((runtime, config))
}

/// Brings the metadata store's schema up to date (`canopy up` does it too, at start).
pub fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let (runtime, config) = store_command(&args.data_dir, args.database_url)?;
    runtime.block_on(async move {
        let store = canopy_node::node::connect_store(&config).await?;
        let applied = store.migrate().await?;
        println!("{}", serde_json::json!({ "applied": applied }));
        anyhow::Ok(())
    })
}

pub fn admin_create(args: AdminCreateArgs) -> anyhow::Result<()> {
    let role = Role::parse(&args.role).with_context(|| format!("unknown role {:?}", args.role))?;
    eprintln!(
        "password for {} (one line on standard input):",
        args.username
    );
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']).to_string();
    let (runtime, config) = store_command(&args.data_dir, args.database_url)?;
    runtime.block_on(async move {
        let store = canopy_node::node::open_store(&config).await?;
        let id = canopy_serving::api::create_user(store.as_ref(), &args.username, &password, role)
            .await?;
        let created = serde_json::json!({ "user_id": id, "username": args.username, "role": role });
        store
            .append_audit(
                "cli",
                "create_user",
                &created.to_string(),
                canopy_schemas::clock::now_micros(),
            )
            .await?;
        println!("{created}");
        anyhow::Ok(())
    })
}

/// Who may sign in over the PostgreSQL protocol: an analyst or an admin, with the password
/// they use for the API (checked against its argon2 hash on a blocking thread).
struct AnalystCredentials(Arc<dyn canopy_serving::store::MetadataStore>);

impl canopy_sqlwire::Credentials for AnalystCredentials {
    fn check<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let Ok(Some(record)) = self.0.user_by_username(user).await else {
                return false;
            };
            if !canopy_serving::auth::Action::QueryAnalytics.allowed(record.role) {
                return false;
            }
            let password = password.to_string();
            tokio::task::spawn_blocking(move || {
                canopy_serving::auth::verify_password(&password, &record.password_hash)
            })
            .await
            .unwrap_or(false)
        })
    }
}
