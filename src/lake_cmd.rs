//! `canopy lake sync` and `canopy sql`: fill the analytics lake from the vote log, and ask
//! it questions in SQL.

use std::path::{Path, PathBuf};

use anyhow::Context;
use canopy_analytics::{LakeConfig, LakeLocation, VoteLake, sync_votes};
use canopy_ingest::SegmentLogConfig;
use clap::Args;

/// `--lake` if given (a folder or `s3://bucket/prefix`), else `<data-dir>/lake`.
fn lake_location(lake: Option<&str>, data_dir: &Path) -> anyhow::Result<LakeLocation> {
    match lake {
        Some(text) => LakeLocation::parse(text).with_context(|| format!("--lake {text}")),
        None => Ok(LakeLocation::Local(data_dir.join("lake"))),
    }
}

#[derive(Args)]
pub struct LakeSyncArgs {
    /// The data directory of a stopped node (its `votes/` log; the lake goes to `lake/`).
    #[arg(long, default_value = "canopy-data")]
    data_dir: PathBuf,
    /// The lake, if not `<data-dir>/lake`: a folder, or `s3://bucket/prefix` (credentials,
    /// region and endpoint from the `AWS_*` variables).
    #[arg(long)]
    lake: Option<String>,
    /// Votes per range (per file and date at most).
    #[arg(long, default_value_t = 1 << 20)]
    range_rows: usize,
}

pub fn lake_sync(args: LakeSyncArgs) -> anyhow::Result<()> {
    let log = crate::log_cmd::open_log(&args.data_dir, SegmentLogConfig::default())?;
    let location = lake_location(args.lake.as_deref(), &args.data_dir)?;
    let lake = VoteLake::open(LakeConfig::new(location)).context("opening the lake")?;
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
    /// window_features.
    statement: String,
    #[arg(long, default_value = "canopy-data")]
    data_dir: PathBuf,
    /// The lake, if not `<data-dir>/lake`: a folder, or `s3://bucket/prefix` (credentials,
    /// region and endpoint from the `AWS_*` variables).
    #[arg(long)]
    lake: Option<String>,
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

    use canopy_analytics::{LakeQuery, LakeSql, OutputFormat, SqlLimits, render, write_parquet};

    let location = lake_location(args.lake.as_deref(), &args.data_dir)?;
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
        LakeSql::new(location, limits)
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
