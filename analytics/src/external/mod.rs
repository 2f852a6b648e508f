//! Imports of data Canopy does not make itself, each publisher's own file format into a
//! table of the lake beside the ones the node writes:
//!
//! ```text
//!  NOAA GHCN-Daily (by_station CSV, CDO daily CSV) ─pivot─▶ weather_daily/ import/part-i-<n>-<n>.parquet
//!  World Bank indicators (bulk CSV, API JSON) ───────────▶ indicators/    (the same)
//!  OpenStreetMap GeoJSON (boundaries, land use) ─areas──▶ regions/       (the same)
//! ```
//!
//! An import is all or nothing by default: the whole file is parsed first, and one invalid
//! record refuses it, nothing written, with every invalid record by line (`skip_invalid`
//! imports the rest). Each import is one Parquet file, numbered after the table's files
//! and written atomically as every file of the lake is; its footer names the import (the
//! file's hash), so the same bytes imported again are found and not written twice. The
//! files are never rewritten or compacted: the footer is how an import is found again.
//! The source's places (stations, countries, boundaries) become Canopy regions through a
//! [`RegionMap`]; a place it leaves out is imported with no region and counted.

mod noaa;
mod osm;
mod reading;
mod region_map;
mod worldbank;

use std::str::FromStr;
use std::sync::Mutex;

use parquet::file::metadata::KeyValue;
use sha2::{Digest, Sha256};

pub(crate) use noaa::WeatherDaily;
pub(crate) use osm::Regions;
pub use region_map::RegionMap;
pub(crate) use worldbank::Indicators;

use crate::AnalyticsError;
use crate::columns::TableLayout;
use crate::import_report::{ImportReport, RowErrors};
use crate::lake::{FileName, LakeConfig, TableFiles};
use reading::Progress;

/// Where imports go in their table: outside any `date=` folder, so SQL reads every
/// import whatever a query's filter on `date` (an import spans many days).
const IMPORT_FOLDER: &str = "import";
/// Imports are numbered in a file sequence of their own.
const IMPORT_SPACE: &str = "i";
/// The footer key naming the import a file holds.
const IMPORT_ID_KEY: &str = "canopy.import_id";
const IMPORT_SOURCE_KEY: &str = "canopy.import_source";
/// Hex digits of the file's SHA-256 an import is named by: 64 bits, so two different files
/// of one table share a name with a chance of about n²/2⁶⁵.
const IMPORT_ID_HEX: usize = 16;

/// Two imports in one process must not both take the next file number (the second rename
/// would replace the first's file): one at a time. Separate processes importing into one
/// lake at the same moment are not guarded against.
static IMPORTING: Mutex<()> = Mutex::new(());

/// A publisher of data Canopy imports, and the table it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExternalSource {
    /// NOAA GHCN-Daily weather: `weather_daily`.
    Noaa,
    /// World Bank development indicators: `indicators`.
    WorldBank,
    /// OpenStreetMap boundaries and land use: `regions`.
    Osm,
}

impl ExternalSource {
    pub const ALL: [Self; 3] = [Self::Noaa, Self::WorldBank, Self::Osm];

    /// `noaa`, `worldbank` or `osm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Noaa => "noaa",
            Self::WorldBank => "worldbank",
            Self::Osm => "osm",
        }
    }

    /// The lake table the source's imports go to.
    pub fn table(self) -> &'static str {
        match self {
            Self::Noaa => WeatherDaily::NAME,
            Self::WorldBank => Indicators::NAME,
            Self::Osm => Regions::NAME,
        }
    }

    fn files(self, config: &LakeConfig) -> TableFiles {
        let location = config.location.clone();
        match self {
            Self::Noaa => TableFiles::of::<WeatherDaily>(location, Vec::new()),
            Self::WorldBank => TableFiles::of::<Indicators>(location, Vec::new()),
            Self::Osm => TableFiles::of::<Regions>(location, Vec::new()),
        }
    }
}

impl FromStr for ExternalSource {
    type Err = AnalyticsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|source| source.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| AnalyticsError::UnknownSource(text.to_string()))
    }
}

impl std::fmt::Display for ExternalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an import treats invalid records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Import the valid records and report the others; by default one invalid record
    /// refuses the whole file.
    pub skip_invalid: bool,
}

/// Imports `bytes`, a file of `source`'s format, into its table of the lake at `config`,
/// mapping the source's places to regions by `map`. `progress` hears the records parsed so
/// far every 10 000 records, and once at the end.
///
/// Refused, nothing written: a file not of the format (`import_format`), and one with an
/// invalid record unless `options.skip_invalid` (`import_refused`, carrying the report and
/// its line-numbered errors). A file imported before (the same bytes) is not written
/// again: the report says `already_imported`.
pub fn import_external(
    config: &LakeConfig,
    source: ExternalSource,
    bytes: &[u8],
    map: &RegionMap,
    options: &ImportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport, AnalyticsError> {
    let import_id = import_id_of(bytes);
    let mut errors = RowErrors::default();
    let mut progress = Progress::new(progress);
    let parsed = match source {
        ExternalSource::Noaa => noaa::parse(bytes, map, &import_id, &mut progress, &mut errors)?,
        ExternalSource::WorldBank => {
            worldbank::parse(bytes, map, &import_id, &mut progress, &mut errors)?
        }
        ExternalSource::Osm => osm::parse(bytes, map, &import_id, &mut progress, &mut errors)?,
    };
    progress.finish();
    let mut report = ImportReport {
        source: source.as_str(),
        table: source.table(),
        import_id,
        rows_read: progress.rows,
        rows_imported: parsed.batch.num_rows() as u64,
        rows_unmapped: parsed.rows_unmapped,
        rows_skipped: parsed.rows_skipped,
        errors: errors.listed,
        errors_total: errors.total,
        already_imported: false,
        file: None,
    };
    if report.errors_total > 0 && !options.skip_invalid {
        return Err(AnalyticsError::ImportRefused {
            report: Box::new(report),
        });
    }

    let _one_import_at_a_time = IMPORTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let files = source.files(config);
    files.open(config)?;
    let (earlier, next) = earlier_import(&files, &report.import_id)?;
    if let Some(key) = earlier {
        report.already_imported = true;
        report.file = Some(key);
        return Ok(report);
    }
    let name = FileName {
        space: IMPORT_SPACE.into(),
        first: next,
        last: next,
    };
    let metadata = vec![
        KeyValue::new(IMPORT_ID_KEY.to_string(), report.import_id.clone()),
        KeyValue::new(IMPORT_SOURCE_KEY.to_string(), source.as_str().to_string()),
    ];
    let key = files.write(config, IMPORT_FOLDER, &name, &parsed.batch, metadata)?;
    tracing::info!(
        source = source.as_str(),
        table = source.table(),
        import_id = %report.import_id,
        rows = report.rows_imported,
        unmapped = report.rows_unmapped,
        skipped = report.rows_skipped,
        invalid = report.errors_total,
        file = %key,
        "imported external data"
    );
    report.file = Some(key);
    Ok(report)
}

/// The first hex digits of the file's SHA-256.
fn import_id_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut id = String::with_capacity(IMPORT_ID_HEX);
    for byte in &digest[..IMPORT_ID_HEX / 2] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// The file of the table holding import `import_id`, if one does, and the number the next
/// file takes (after every file of the table, as decisions' snapshots are numbered).
fn earlier_import(
    files: &TableFiles,
    import_id: &str,
) -> Result<(Option<String>, u64), AnalyticsError> {
    let mut earlier = None;
    let mut next = 0;
    for (folder, listed) in files.all_files()? {
        for file in listed {
            next = next.max(file.name.last + 1);
            if folder != IMPORT_FOLDER || earlier.is_some() {
                continue;
            }
            let footer = files.read_footer(&file)?;
            let names_it = footer
                .iter()
                .any(|kv| kv.key == IMPORT_ID_KEY && kv.value.as_deref() == Some(import_id));
            if names_it {
                earlier = Some(file.key);
            }
        }
    }
    Ok((earlier, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_by_name_and_name_their_tables() {
        for source in ExternalSource::ALL {
            assert_eq!(source.as_str().parse::<ExternalSource>().unwrap(), source);
        }
        assert_eq!(
            "WorldBank".parse::<ExternalSource>().unwrap(),
            ExternalSource::WorldBank
        );
        assert_eq!(
            "ecmwf".parse::<ExternalSource>().unwrap_err().code(),
            "unknown_import_source"
        );
        let tables: Vec<_> = ExternalSource::ALL.map(ExternalSource::table).into();
        assert_eq!(tables, ["weather_daily", "indicators", "regions"]);
    }

    #[test]
    fn an_import_is_named_by_the_hash_of_its_bytes() {
        // SHA-256("abc") = ba7816bf8f01cfea…
        assert_eq!(import_id_of(b"abc"), "ba7816bf8f01cfea");
    }
}
