//! What every table of the lake shares: where its files live, how they are named, how they
//! appear atomically, which of them are live, and how small ones are compacted.
//!
//! A file is `<root>/<table>/date=YYYY-MM-DD/part-<space>-<first>-<last>.parquet`. The
//! `space` says what `first..=last` counts: a log partition's offsets (`p0003`) for tables
//! copied from a log, or the table's own file sequence (`s`) for tables fed by a sink. A
//! file whose range lies strictly inside another's, in the same folder and space, is
//! *superseded* (compaction wrote their union): readers skip it, and compaction deletes it
//! once the union has been in place for a grace period, so a query that listed it before
//! can still read it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::AnalyticsError;

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Where the lake is and how its files are cut.
#[derive(Clone, Debug)]
pub struct LakeConfig {
    pub root: PathBuf,
    /// Rows per row group: large enough that a scan reads long runs, small enough that
    /// statistics can skip some.
    pub row_group_rows: usize,
    pub zstd_level: i32,
    /// A folder's files are merged while they are smaller than this together.
    pub compact_target_bytes: u64,
    /// How long a superseded file stays for queries that listed it before it was merged.
    pub compact_grace: Duration,
}

impl LakeConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            row_group_rows: 1 << 20,
            zstd_level: 3,
            compact_target_bytes: 128 << 20,
            compact_grace: Duration::from_secs(300),
        }
    }
}

/// The lake's tables, by name.
pub const TABLES: [&str; 6] = [
    "votes",
    "decisions",
    "tally_changes",
    "checkpoints",
    "sensor_readings",
    "window_features",
];

/// What a table's files share: its schema, the order of its rows, and its folder.
#[derive(Clone, Debug)]
pub(crate) struct TableFiles {
    pub dir: PathBuf,
    pub schema: SchemaRef,
    /// Column indexes the rows are sorted by (ascending).
    pub sort_columns: Vec<usize>,
    /// Columns without a dictionary (random values: a dictionary only costs).
    pub plain_columns: Vec<&'static str>,
}

/// One file's place: its folder and the range its name gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileName {
    pub space: String,
    pub first: u64,
    pub last: u64,
}

impl FileName {
    pub fn render(&self) -> String {
        format!(
            "part-{}-{:020}-{:020}.parquet",
            self.space, self.first, self.last
        )
    }

    pub fn parse(path: &Path) -> Option<FileName> {
        let name = path.file_name()?.to_str()?;
        let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let mut parts = rest.split('-');
        let space = parts.next()?.to_string();
        let first = parts.next()?.parse().ok()?;
        let last = parts.next()?.parse().ok()?;
        (parts.next().is_none() && first <= last).then_some(FileName { space, first, last })
    }

    fn within(&self, other: &FileName) -> bool {
        self.space == other.space
            && other.first <= self.first
            && self.last <= other.last
            && (other.first, other.last) != (self.first, self.last)
    }
}

/// A file of a table, as listed.
#[derive(Clone, Debug)]
pub(crate) struct LakeFile {
    pub path: PathBuf,
    pub name: FileName,
    pub bytes: u64,
    pub modified: SystemTime,
}

impl TableFiles {
    /// Creates the folder and removes the temporaries a crash left.
    pub fn open(&self) -> Result<(), AnalyticsError> {
        fs::create_dir_all(&self.dir).map_err(AnalyticsError::io(&self.dir))?;
        for date_dir in subdirs(&self.dir)? {
            for entry in fs::read_dir(&date_dir).map_err(AnalyticsError::io(&date_dir))? {
                let path = entry.map_err(AnalyticsError::io(&date_dir))?.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    fs::remove_file(&path).map_err(AnalyticsError::io(&path))?;
                }
            }
        }
        Ok(())
    }

    /// Every file, by folder, superseded ones included.
    pub fn all_files(&self) -> Result<BTreeMap<PathBuf, Vec<LakeFile>>, AnalyticsError> {
        let mut out = BTreeMap::new();
        if !self.dir.exists() {
            return Ok(out);
        }
        for date_dir in subdirs(&self.dir)? {
            let mut files = Vec::new();
            for entry in fs::read_dir(&date_dir).map_err(AnalyticsError::io(&date_dir))? {
                let entry = entry.map_err(AnalyticsError::io(&date_dir))?;
                let path = entry.path();
                let Some(name) = FileName::parse(&path) else {
                    continue;
                };
                let meta = entry.metadata().map_err(AnalyticsError::io(&path))?;
                files.push(LakeFile {
                    path,
                    name,
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
            files.sort_by(|a, b| (&a.name.space, a.name.first).cmp(&(&b.name.space, b.name.first)));
            out.insert(date_dir, files);
        }
        Ok(out)
    }

    /// The files a reader takes: every file not superseded by another in its folder.
    pub fn live_files(&self) -> Result<Vec<LakeFile>, AnalyticsError> {
        Ok(self
            .all_files()?
            .into_values()
            .flat_map(|files| {
                let live: Vec<LakeFile> = files
                    .iter()
                    .filter(|f| !files.iter().any(|g| f.name.within(&g.name)))
                    .cloned()
                    .collect();
                live
            })
            .collect())
    }

    fn properties(
        &self,
        config: &LakeConfig,
        path: &Path,
        metadata: Vec<KeyValue>,
    ) -> Result<WriterProperties, AnalyticsError> {
        let mut builder = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(config.zstd_level).map_err(|e| parquet_error(path, e))?,
            ))
            .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
            .set_sorting_columns(Some(
                self.sort_columns
                    .iter()
                    .map(|&column| SortingColumn {
                        column_idx: column as i32,
                        descending: false,
                        nulls_first: false,
                    })
                    .collect(),
            ))
            .set_key_value_metadata((!metadata.is_empty()).then_some(metadata));
        for column in &self.plain_columns {
            builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), false);
        }
        Ok(builder.build())
    }

    /// Writes `batch` (already in the table's order) as `<date_dir>/<name>`: a temporary
    /// file, synced, renamed into place, then the folder synced. A reader sees all of it or
    /// nothing.
    pub fn write(
        &self,
        config: &LakeConfig,
        folder: &str,
        name: &FileName,
        batch: &RecordBatch,
        metadata: Vec<KeyValue>,
    ) -> Result<PathBuf, AnalyticsError> {
        let dir = self.dir.join(folder);
        fs::create_dir_all(&dir).map_err(AnalyticsError::io(&dir))?;
        let path = dir.join(name.render());
        let properties = self.properties(config, &path, metadata)?;
        let temp = path.with_extension("parquet.tmp");
        let file = File::create(&temp).map_err(AnalyticsError::io(&temp))?;
        let mut writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties))
            .map_err(|e| parquet_error(&path, e))?;
        writer.write(batch).map_err(|e| parquet_error(&path, e))?;
        let file = writer.into_inner().map_err(|e| parquet_error(&path, e))?;
        file.sync_all().map_err(AnalyticsError::io(&temp))?;
        fs::rename(&temp, &path).map_err(AnalyticsError::io(&path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(AnalyticsError::io(&dir))?;
        Ok(path)
    }

    /// Merges each folder's runs of small live files into one file per run (rows sorted
    /// again), and deletes files superseded longer than the grace period. Returns (files
    /// merged away, files deleted).
    pub fn compact(&self, config: &LakeConfig) -> Result<(u64, u64), AnalyticsError> {
        let now = SystemTime::now();
        let (mut merged, mut deleted) = (0, 0);
        for (dir, files) in self.all_files()? {
            // Superseded files whose union is old enough: no query can still be reading them.
            for file in &files {
                let superseder = files.iter().find(|g| file.name.within(&g.name));
                if let Some(superseder) = superseder
                    && now
                        .duration_since(superseder.modified)
                        .is_ok_and(|age| age >= config.compact_grace)
                {
                    fs::remove_file(&file.path).map_err(AnalyticsError::io(&file.path))?;
                    deleted += 1;
                }
            }
            let live: Vec<&LakeFile> = files
                .iter()
                .filter(|f| !files.iter().any(|g| f.name.within(&g.name)))
                .collect();
            let mut by_space: BTreeMap<&str, Vec<&LakeFile>> = BTreeMap::new();
            for file in live {
                by_space.entry(&file.name.space).or_default().push(file);
            }
            let folder = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            for (space, files) in by_space {
                let mut run: Vec<&LakeFile> = Vec::new();
                let mut bytes = 0;
                for file in files.iter().copied() {
                    if bytes + file.bytes > config.compact_target_bytes && !run.is_empty() {
                        merged += self.merge(config, &folder, space, &run)?;
                        run.clear();
                        bytes = 0;
                    }
                    bytes += file.bytes;
                    run.push(file);
                }
                merged += self.merge(config, &folder, space, &run)?;
            }
        }
        Ok((merged, deleted))
    }

    fn merge(
        &self,
        config: &LakeConfig,
        folder: &str,
        space: &str,
        run: &[&LakeFile],
    ) -> Result<u64, AnalyticsError> {
        if run.len() < 2 {
            return Ok(0);
        }
        let mut batches = Vec::new();
        let mut metadata = Vec::new();
        for file in run {
            let (mut file_batches, file_metadata) = read_file(&file.path)?;
            batches.append(&mut file_batches);
            // The footer of the highest range speaks for the union (a sink's mark).
            metadata = file_metadata;
        }
        let batch = arrow_select::concat::concat_batches(&self.schema, &batches)
            .map_err(|e| parquet_error(&run[0].path, e))?;
        let batch =
            sort_batch(&batch, &self.sort_columns).map_err(|e| parquet_error(&run[0].path, e))?;
        let name = FileName {
            space: space.to_string(),
            first: run[0].name.first,
            last: run
                .iter()
                .map(|f| f.name.last)
                .max()
                .unwrap_or(run[0].name.last),
        };
        self.write(config, folder, &name, &batch, metadata)?;
        Ok(run.len() as u64)
    }
}

/// A file's rows and its footer's key-value metadata.
pub(crate) fn read_file(path: &Path) -> Result<(Vec<RecordBatch>, Vec<KeyValue>), AnalyticsError> {
    let file = File::open(path).map_err(AnalyticsError::io(path))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let reader = builder.build().map_err(|e| parquet_error(path, e))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet_error(path, e))?;
    Ok((batches, metadata))
}

/// A file's footer key-value metadata only.
pub(crate) fn read_footer(path: &Path) -> Result<Vec<KeyValue>, AnalyticsError> {
    let file = File::open(path).map_err(AnalyticsError::io(path))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
    Ok(builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default())
}

pub(crate) fn sort_batch(
    batch: &RecordBatch,
    columns: &[usize],
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    if columns.is_empty() || batch.num_rows() == 0 {
        return Ok(batch.clone());
    }
    let keys: Vec<arrow_ord::sort::SortColumn> = columns
        .iter()
        .map(|&c| arrow_ord::sort::SortColumn {
            values: batch.column(c).clone(),
            options: None,
        })
        .collect();
    let indices = arrow_ord::sort::lexsort_to_indices(&keys, None)?;
    let columns = batch
        .columns()
        .iter()
        .map(|column| arrow_select::take::take(column, &indices, None))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(batch.schema(), columns)
}

pub(crate) fn parquet_error(path: &Path, error: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Parquet {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

pub(crate) fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, AnalyticsError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(AnalyticsError::io(dir))? {
        let path = entry.map_err(AnalyticsError::io(dir))?.path();
        if path.is_dir() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Days since the Unix epoch of a time in microseconds (the `date` column, Date32).
pub(crate) fn day_of(micros: i64) -> i32 {
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// The folder of a day's files: `date=YYYY-MM-DD`.
pub(crate) fn date_folder(days: i32) -> String {
    format!("date={}", date_name(days))
}

/// `YYYY-MM-DD` (UTC) of a day number.
pub(crate) fn date_name(days: i32) -> String {
    let days = i64::from(days);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(date_name(0), "1970-01-01");
        assert_eq!(date_name(day_of(1_780_272_000_000_000)), "2026-06-01");
        assert_eq!(date_name(day_of(951_782_400_000_000)), "2000-02-29");
        assert_eq!(date_name(-1), "1969-12-31");
    }

    #[test]
    fn a_range_inside_another_is_superseded() {
        let name = |first, last| FileName {
            space: "p0001".into(),
            first,
            last,
        };
        assert!(name(5, 9).within(&name(0, 9)));
        assert!(!name(0, 9).within(&name(0, 9)));
        assert!(!name(5, 12).within(&name(0, 9)));
        let other_space = FileName {
            space: "p0002".into(),
            ..name(5, 9)
        };
        assert!(!other_space.within(&name(0, 9)));
        let parsed = FileName::parse(Path::new(&name(3, 4).render()));
        assert_eq!(parsed, Some(name(3, 4)));
    }
}
