//! `canopy lake sync` and `canopy sql`: fill the analytics lake from the vote log, and ask
//! it questions in SQL.

use std::path::{Path, PathBuf};

use anyhow::Context;
use canopy_analytics::{LakeConfig, VoteLake, sync_votes};
use canopy_ingest::SegmentLogConfig;
use clap::Args;

fn lake_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("lake")
}

#[derive(Args)]
pub struct LakeSyncArgs {
    /// The data directory of a stopped node (its `votes/` log; the lake goes to `lake/`).
    #[arg(long, default_value = "canopy-data")]
    data_dir: PathBuf,
    /// Votes per range (per file and date at most).
    #[arg(long, default_value_t = 1 << 20)]
    range_rows: usize,
}

pub fn lake_sync(args: LakeSyncArgs) -> anyhow::Result<()> {
    let log = crate::log_cmd::open_log(&args.data_dir, SegmentLogConfig::default())?;
    let lake =
        VoteLake::open(LakeConfig::new(lake_dir(&args.data_dir))).context("opening the lake")?;
    let report = sync_votes(&lake, &log, args.range_rows).context("copying votes into the lake")?;
    eprintln!(
        "canopy: {} new votes in {} files under {} ({} last ranges written again)",
        report.rows,
        report.files,
        lake.dir().display(),
        report.rewritten_ranges
    );
    Ok(())
}

#[cfg(feature = "sql")]
pub use sql::{SqlArgs, sql};

#[cfg(feature = "sql")]
mod sql {
    use std::io::Write;
    use std::path::PathBuf;

    use canopy_analytics::{LakeSql, OutputFormat, render};
    use clap::Args;

    use super::lake_dir;

    #[derive(Clone, Copy, clap::ValueEnum)]
    enum Format {
        Table,
        Csv,
        Json,
    }

    #[derive(Args)]
    pub struct SqlArgs {
        /// One read-only statement, e.g. "SELECT date, COUNT(*) FROM votes GROUP BY date".
        statement: String,
        #[arg(long, default_value = "canopy-data")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    }

    pub fn sql(args: SqlArgs) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let batches = runtime.block_on(async {
            let lake = LakeSql::open(&lake_dir(&args.data_dir)).await?;
            lake.query(&args.statement).await
        })?;
        let format = match args.format {
            Format::Table => OutputFormat::Table,
            Format::Csv => OutputFormat::Csv,
            Format::Json => OutputFormat::Json,
        };
        let mut out = std::io::stdout().lock();
        out.write_all(&render(&batches, format)?)?;
        Ok(())
    }
}
