//! `canopy import noaa|worldbank|osm FILE`: external data from a file in its publisher's
//! format into the lake's `weather_daily`, `indicators` or `regions` table.

use std::path::PathBuf;

use anyhow::Context;
use canopy_analytics::{
    AnalyticsError, ExternalSource, ImportOptions, ImportReport, LakeConfig, RegionMap,
    import_external,
};
use clap::Args;

use crate::config::LakeFlags;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Source {
    /// NOAA GHCN-Daily: a by-station CSV, or a CDO daily-summaries CSV → weather_daily.
    Noaa,
    /// World Bank indicators: the bulk CSV or the API's JSON → indicators.
    Worldbank,
    /// OpenStreetMap boundaries and land use as GeoJSON → regions.
    Osm,
}

#[derive(Args)]
pub struct ImportArgs {
    #[arg(value_enum)]
    source: Source,
    /// The file, as its publisher gives it.
    file: PathBuf,
    /// `source_region,region` lines mapping the source's stations, ISO3 country codes or
    /// boundaries (ISO 3166-2 code or name) to Canopy's regions.
    #[arg(long)]
    regions: Option<PathBuf>,
    /// Import the good rows and report the bad ones, rather than refuse the file.
    #[arg(long)]
    skip_invalid: bool,
    /// The lake: `lake.location`, else `<data_dir>/lake`.
    #[command(flatten)]
    data: LakeFlags,
}

fn print_errors(report: &ImportReport) {
    for error in &report.errors {
        eprintln!("  line {}: {} ({})", error.line, error.message, error.code);
    }
    if report.errors_total > report.errors.len() as u64 {
        eprintln!(
            "  … and {} more",
            report.errors_total - report.errors.len() as u64
        );
    }
}

pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let source = match args.source {
        Source::Noaa => ExternalSource::Noaa,
        Source::Worldbank => ExternalSource::WorldBank,
        Source::Osm => ExternalSource::Osm,
    };
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let map = match &args.regions {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            RegionMap::parse_csv(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => RegionMap::new(),
    };
    let lake = LakeConfig::new(args.data.load()?.lake_location()?);
    let options = ImportOptions {
        skip_invalid: args.skip_invalid,
    };
    let mut progress = |rows: u64| eprintln!("canopy: {rows} rows read");
    let report = match import_external(&lake, source, &bytes, &map, &options, &mut progress) {
        Ok(report) => report,
        Err(AnalyticsError::ImportRefused { report }) => {
            eprintln!(
                "canopy: {} of {} rows of {} are not valid; nothing was imported:",
                report.errors_total,
                report.rows_read,
                args.file.display()
            );
            print_errors(&report);
            anyhow::bail!("import refused (--skip-invalid imports the valid rows)");
        }
        Err(error) => return Err(error).context("importing"),
    };
    if report.already_imported {
        eprintln!(
            "canopy: {} was imported before (import {}); nothing written",
            args.file.display(),
            report.import_id
        );
        return Ok(());
    }
    print_errors(&report);
    eprintln!(
        "canopy: {} rows into {} ({} without a mapped region, {} skipped, {} invalid) as {}",
        report.rows_imported,
        report.table,
        report.rows_unmapped,
        report.rows_skipped,
        report.errors_total,
        report.file.as_deref().unwrap_or("-")
    );
    Ok(())
}
