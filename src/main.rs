//! `canopy`: the thin binary over Canopy's crates.

#![deny(unsafe_code)]

mod backup_cmd;
mod cluster;
mod config;
#[cfg(feature = "evm")]
mod evm;
mod import_cmd;
mod lake_cmd;
mod loadgen;
mod log_cmd;
mod telemetry;
mod up;
mod verify;
mod verify_audit;
mod verify_tally;

use clap::{Parser, Subcommand};
use telemetry::LogFormat;

// The request path allocates small buffers at a high rate; glibc's malloc showed as ~12% of
// the server's CPU under load (perf), mimalloc takes most of that back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "canopy",
    version,
    about = "Verifiable environmental governance on a dataflow engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text` for a person, `json` (one object a line,
    /// with its span's fields) for a log collector. Which lines: `RUST_LOG` (default
    /// `info`; e.g. `RUST_LOG=info,canopy_node::record=debug`).
    #[arg(long, global = true, value_enum, env = "CANOPY_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Send traces (OpenTelemetry, OTLP over HTTP) to this collector, e.g.
    /// http://127.0.0.1:4318; none without it.
    #[arg(long, global = true, env = "CANOPY_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The share of traces sent (0 to 1); a trace with an error is always sent.
    #[arg(
        long,
        global = true,
        env = "CANOPY_TRACE_SAMPLE_RATIO",
        default_value_t = 0.1
    )]
    trace_sample_ratio: f64,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole node in one process: API on 127.0.0.1:8080, data under ./canopy-data.
    Up(Box<up::UpArgs>),
    /// Run one process of the dataflow cluster (a timely process over the Kafka topic,
    /// publishing results into Redis, checkpointing into PostgreSQL).
    Worker(cluster::WorkerArgs),
    /// Run a stateless API replica of a cluster: appends to Kafka, reads results from Redis.
    Serve(cluster::ServeArgs),
    /// The configuration every command above reads: defaults, the file (--config),
    /// CANOPY_<SECTION>__<KEY> variables, flags.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Apply the metadata store's migrations that have not been applied yet.
    Migrate(up::MigrateArgs),
    /// Administer accounts.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Append synthetic, valid votes to the embedded vote log from concurrent appenders.
    Loadgen(loadgen::LoadgenArgs),
    /// Replay the vote log through the tally dataflow and print each decision's result.
    Tally(config::TallyFlags),
    /// Back up a node (its store, data directory and key files), sealed with age, to a
    /// folder or bucket: once, or on a schedule with --backup-every.
    Backup(Box<backup_cmd::BackupArgs>),
    /// Write a new age identity for backups and print its recipient (age1…).
    BackupKeygen(backup_cmd::KeygenArgs),
    /// Bring a node back from a backup into an empty data directory (and database).
    Restore(backup_cmd::RestoreArgs),
    /// Inspect the embedded vote log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// The analytics lake (Parquet).
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// Ask the analytics lake a read-only SQL question (tables: votes).
    Sql(lake_cmd::SqlArgs),
    /// Import external data (NOAA weather, World Bank indicators, OpenStreetMap regions and
    /// land use) from a file into the lake.
    Import(import_cmd::ImportArgs),
    /// Check a vote's proof: inclusion, the checkpoint's signature, consistency with an
    /// earlier checkpoint, and the anchor (on chain with --rpc); or, with --audit, an export
    /// of the audit trail against its anchors. Prints one verdict line.
    Verify(verify::VerifyArgs),
    /// The GovernanceVotingVerifier contract.
    #[cfg(feature = "evm")]
    Evm {
        #[command(subcommand)]
        command: EvmCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (TOML), each value with where it came from
    /// (default, file, env, flag); secrets masked.
    Show(config::ShowArgs),
}

#[derive(Subcommand)]
enum LakeCommand {
    /// Copy the vote log of a stopped node into the lake (`<data>/lake`), exactly once.
    Sync(lake_cmd::LakeSyncArgs),
}

#[cfg(feature = "evm")]
#[derive(Subcommand)]
enum EvmCommand {
    /// Deploy the contract; the deploying key becomes the anchoring key.
    Deploy(evm::DeployArgs),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an account with any role (the first admin, operators, auditors).
    Create(up::AdminCreateArgs),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Open the log (cutting a torn tail), check every frame, print what it holds.
    Verify(config::DataFlags),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    // The data directory holds voter salts and keys: what this process creates (database,
    // log segments, keys, the lake) is readable by its user only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    canopy_node::tls::install_crypto_provider();
    let cli = Cli::parse();
    let _telemetry = telemetry::init(
        cli.log_format,
        cli.otlp_endpoint.as_deref(),
        cli.trace_sample_ratio,
    )?;
    let done = match cli.command {
        Command::Verify(args) if args.audit.is_some() => return Ok(verify_audit::run(args)),
        Command::Verify(args) if args.tally.is_some() => return Ok(verify_tally::run(args)),
        Command::Verify(args) => return Ok(verify::run(args)),
        Command::Worker(args) => return cluster::worker(args),
        Command::Serve(args) => return cluster::serve(args),
        #[cfg(feature = "evm")]
        Command::Evm {
            command: EvmCommand::Deploy(args),
        } => evm::deploy(args),
        Command::Up(args) => up::up(*args),
        Command::Config {
            command: ConfigCommand::Show(args),
        } => config::show(args),
        Command::Migrate(args) => up::migrate(args),
        Command::Admin {
            command: AdminCommand::Create(args),
        } => up::admin_create(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Backup(args) => backup_cmd::backup(*args),
        Command::Restore(args) => backup_cmd::restore_cmd(args),
        Command::BackupKeygen(args) => backup_cmd::keygen(args),
        Command::Lake {
            command: LakeCommand::Sync(args),
        } => lake_cmd::lake_sync(args),
        Command::Sql(args) => lake_cmd::sql(args),
        Command::Import(args) => import_cmd::import(args),
        Command::Tally(flags) => {
            let config = flags.load()?;
            log_cmd::tally(&config.data_dir, config.workers.threads)
        }
        Command::Log {
            command: LogCommand::Verify(flags),
        } => log_cmd::verify(&flags.load()?.data_dir),
    };
    match done {
        // A reader that has read enough (`canopy tally | head`) is not a failure of ours.
        Err(error) if reader_went_away(&error) => Ok(std::process::ExitCode::SUCCESS),
        done => done.map(|()| std::process::ExitCode::SUCCESS),
    }
}

/// Whether `error` comes from writing to a pipe whose reader closed it.
fn reader_went_away(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
