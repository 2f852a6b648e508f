//! `canopy lake sync` and `canopy sql`: fill the analytics lake from the vote log, and ask
//! it questions in SQL.

use std::path::PathBuf;

use anyhow::Context;
use canopy_analytics::{LakeConfig, LakeLocation, VoteLake, sync_votes};

use canopy_ingest::SegmentLogConfig;
use clap::Args;

use crate::config::LakeFlags;

#[derive(Args)]
pub struct LakeSyncArgs {
    /// The data directory of a stopped node (its `votes/` log) and the lake to fill.
    #[command(flatten)]
    data: LakeFlags,
    /// Votes per range (per file and date at most).
    #[arg(long, default_value_t = 1 << 20)]
    range_rows: usize,
}

pub fn lake_sync(args: LakeSyncArgs) -> anyhow::Result<()> {
    let config = args.data.load()?;
    let log = crate::log_cmd::open_log(&config.data_dir, SegmentLogConfig::default())?;
    let lake =
        VoteLake::open(LakeConfig::new(config.lake_location()?)).context("opening the lake")?;
    let report = sync_votes(&lake, &log, args.range_rows).context("copying votes into the lake")?;
    eprintln!(
        "canopy: {} new votes in {} files under {} ({} last ranges written again)",
        report.rows,
        report.files,
        lake.location(),
        report.rewritten_ranges
    );
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
    /// One Parquet file (needs --output).
    Parquet,
}

#[derive(Args)]
pub struct SqlArgs {
    /// One read-only statement, e.g. "SELECT date, COUNT(*) FROM votes GROUP BY date".
    /// Tables: votes, decisions, tally_changes, checkpoints, sensor_readings,
    /// window_features, audit_trail, decision_history, and the imported weather_daily,
    /// indicators and regions.
    statement: String,
    /// The lake: `lake.location`, else `<data_dir>/lake`.
    #[command(flatten)]
    data: LakeFlags,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Where the result goes (standard output if absent).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Stop the query after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Memory the query may use for sorts, joins and aggregations, in MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mib: usize,
}

pub fn sql(args: SqlArgs) -> anyhow::Result<()> {
    use std::io::Write;

    use canopy_analytics::{
        LakeQuery, LakeReader, LakeSql, OutputFormat, SqlLimits, render, write_parquet,
    };

    let location = args.data.load()?.lake_location()?;
    if let LakeLocation::Local(root) = &location
        && !root.is_dir()
    {
        anyhow::bail!(
            "no lake at {} (a node with --lake writes one; `canopy lake sync` fills one from a stopped node's log)",
            root.display()
        );
    }
    let limits = SqlLimits {
        timeout: std::time::Duration::from_secs(args.timeout_s.max(1)),
        memory_bytes: args.memory_mib.max(1) << 20,
        target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (schema, batches) = runtime.block_on(async {
        // The operator holds the files themselves: every table, the audit trail too.
        LakeSql::new(location, limits)
            .as_reader(LakeReader::Admin)
            .query_with_schema(&args.statement)
            .await
    })?;
    let mut out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => match args.format {
            Format::Parquet => anyhow::bail!("--format parquet needs --output FILE"),
            _ => Box::new(std::io::stdout()),
        },
    };
    match args.format {
        Format::Parquet => write_parquet(&batches, schema, out)?,
        format => {
            let format = match format {
                Format::Csv => OutputFormat::Csv,
                Format::Json => OutputFormat::Json,
                _ => OutputFormat::Table,
            };
            out.write_all(&render(&batches, format)?)?;
            out.flush()?;
        }
    }
    Ok(())
}
