//! The `votes` table: every logged vote, the voter only as its salted commitment.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeBinaryBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use canopy_ingest::{LogRecord, VoteLog};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::AnalyticsError;

const TABLE: &str = "votes";
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Where the lake is and how its files are cut.
#[derive(Clone, Debug)]
pub struct LakeConfig {
    pub root: PathBuf,
    /// Rows per row group: large enough that a scan reads long runs, small enough that
    /// statistics can skip some.
    pub row_group_rows: usize,
    pub zstd_level: i32,
}

impl LakeConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            row_group_rows: 1 << 20,
            zstd_level: 3,
        }
    }
}

/// The Arrow schema of the `votes` table (the `date` column comes from the directory).
pub fn vote_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("decision_id", DataType::Utf8, false),
        Field::new("vote_id", DataType::Utf8, false),
        Field::new("voter_commitment", DataType::FixedSizeBinary(32), false),
        Field::new("option", DataType::Int32, false),
        Field::new("component", DataType::Utf8, false),
        Field::new("weight_millionths", DataType::Int64, false),
        Field::new(
            "cast_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("log_partition", DataType::Int32, false),
        Field::new("log_offset", DataType::Int64, false),
    ]))
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub rows: u64,
    pub files: u64,
    /// Ranges found at start and written again (the last of each partition).
    pub rewritten_ranges: u64,
}

/// The `votes` table of a lake.
#[derive(Debug)]
pub struct VoteLake {
    config: LakeConfig,
    dir: PathBuf,
}

impl VoteLake {
    /// Opens (creating) the table's folder and removes what a crash left half-written.
    pub fn open(config: LakeConfig) -> Result<Self, AnalyticsError> {
        let dir = config.root.join(TABLE);
        fs::create_dir_all(&dir).map_err(AnalyticsError::io(&dir))?;
        for date_dir in subdirs(&dir)? {
            for entry in fs::read_dir(&date_dir).map_err(AnalyticsError::io(&date_dir))? {
                let path = entry.map_err(AnalyticsError::io(&date_dir))?.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    fs::remove_file(&path).map_err(AnalyticsError::io(&path))?;
                }
            }
        }
        Ok(Self { config, dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last range written for `partition`, if any: (first offset, last offset).
    pub fn last_range(&self, partition: u32) -> Result<Option<(u64, u64)>, AnalyticsError> {
        let mut last = None;
        for date_dir in subdirs(&self.dir)? {
            for entry in fs::read_dir(&date_dir).map_err(AnalyticsError::io(&date_dir))? {
                let path = entry.map_err(AnalyticsError::io(&date_dir))?.path();
                if let Some((p, first, end)) = parse_file_name(&path)
                    && p == partition
                    && last.is_none_or(|(f, _)| first > f)
                {
                    last = Some((first, end));
                }
            }
        }
        Ok(last)
    }

    /// Writes one range of one log partition: `records` in offset order, dense. One file
    /// per date of `cast_at`, each named after the whole range.
    pub fn write_range(
        &self,
        partition: u32,
        records: &[LogRecord],
    ) -> Result<u64, AnalyticsError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(0);
        };
        let name = file_name(partition, first.position.offset, last.position.offset);
        let mut by_date: BTreeMap<String, Vec<&LogRecord>> = BTreeMap::new();
        for record in records {
            by_date
                .entry(date_of(record.vote.cast_at))
                .or_default()
                .push(record);
        }
        let mut files = 0;
        for (date, mut rows) in by_date {
            rows.sort_by_key(|r| (r.vote.decision_id.to_string(), r.position.offset));
            let dir = self.dir.join(format!("date={date}"));
            fs::create_dir_all(&dir).map_err(AnalyticsError::io(&dir))?;
            self.write_file(&dir.join(&name), &rows)?;
            files += 1;
        }
        Ok(files)
    }

    fn write_file(&self, path: &Path, rows: &[&LogRecord]) -> Result<(), AnalyticsError> {
        let batch = vote_batch(rows).map_err(|e| parquet_error(path, e))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(self.config.zstd_level).map_err(|e| parquet_error(path, e))?,
            ))
            .set_max_row_group_row_count(Some(self.config.row_group_rows.max(1)))
            // Queries filter by decision; the rows are sorted so, and the file says it.
            .set_sorting_columns(Some(vec![
                SortingColumn {
                    column_idx: 0,
                    descending: false,
                    nulls_first: false,
                },
                SortingColumn {
                    column_idx: 8,
                    descending: false,
                    nulls_first: false,
                },
            ]))
            // Commitments are random: a dictionary only costs.
            .set_column_dictionary_enabled(ColumnPath::from("voter_commitment"), false)
            .build();
        let temp = path.with_extension("parquet.tmp");
        let file = File::create(&temp).map_err(AnalyticsError::io(&temp))?;
        let mut writer = ArrowWriter::try_new(file, vote_schema(), Some(properties))
            .map_err(|e| parquet_error(path, e))?;
        writer.write(&batch).map_err(|e| parquet_error(path, e))?;
        let file = writer.into_inner().map_err(|e| parquet_error(path, e))?;
        file.sync_all().map_err(AnalyticsError::io(&temp))?;
        fs::rename(&temp, path).map_err(AnalyticsError::io(path))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(AnalyticsError::io(dir))
    }
}

fn parquet_error(path: &Path, error: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Parquet {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

fn vote_batch(rows: &[&LogRecord]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let n = rows.len();
    let mut decision = StringBuilder::with_capacity(n, n * 36);
    let mut vote = StringBuilder::with_capacity(n, n * 36);
    let mut commitment = FixedSizeBinaryBuilder::with_capacity(n, 32);
    let mut option = Int32Builder::with_capacity(n);
    let mut component = StringBuilder::with_capacity(n, n * 12);
    let mut weight = Int64Builder::with_capacity(n);
    let mut cast_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    for record in rows {
        let v = &record.vote;
        decision.append_value(v.decision_id.to_string());
        vote.append_value(v.vote_id.to_string());
        commitment.append_value(record.commitment.0)?;
        option.append_value(i32::from(v.option));
        component.append_value(v.component.to_string());
        weight.append_value(i64::from(v.weight.0));
        cast_at.append_value(v.cast_at);
        partition.append_value(record.position.partition as i32);
        offset.append_value(record.position.offset as i64);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(decision.finish()),
        Arc::new(vote.finish()),
        Arc::new(commitment.finish()),
        Arc::new(option.finish()),
        Arc::new(component.finish()),
        Arc::new(weight.finish()),
        Arc::new(cast_at.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
    ];
    RecordBatch::try_new(vote_schema(), columns)
}

fn file_name(partition: u32, first: u64, last: u64) -> String {
    format!("part-p{partition:04}-{first:020}-{last:020}.parquet")
}

/// (partition, first offset, last offset) of a lake file's name.
fn parse_file_name(path: &Path) -> Option<(u32, u64, u64)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("part-p")?.strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((partition, first, last))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, AnalyticsError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(AnalyticsError::io(dir))? {
        let path = entry.map_err(AnalyticsError::io(dir))?.path();
        if path.is_dir() {
            out.push(path);
        }
    }
    Ok(out)
}

/// `YYYY-MM-DD` (UTC) of a time in microseconds since the Unix epoch.
fn date_of(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
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

/// Reads exactly offsets `first..=last` of `partition`.
fn read_exact(
    log: &dyn VoteLog,
    partition: u32,
    first: u64,
    last: u64,
) -> Result<Vec<LogRecord>, AnalyticsError> {
    let mut out = Vec::with_capacity((last - first + 1) as usize);
    let mut next = first;
    while next <= last {
        let batch = log.read(partition, next, (last - next + 1) as usize)?;
        if batch.is_empty() {
            return Err(AnalyticsError::LogGap {
                partition,
                expected: next,
                got: log.end_offset(partition)?,
            });
        }
        for record in batch {
            if record.position.offset != next {
                return Err(AnalyticsError::LogGap {
                    partition,
                    expected: next,
                    got: record.position.offset,
                });
            }
            next += 1;
            out.push(record);
        }
    }
    Ok(out)
}

/// Copies the vote log into the lake: per partition, the last range found is written
/// again, then everything after it, in ranges of at most `range_rows`.
pub fn sync_votes(
    lake: &VoteLake,
    log: &dyn VoteLog,
    range_rows: usize,
) -> Result<SyncReport, AnalyticsError> {
    let mut report = SyncReport::default();
    for partition in 0..log.partitions() {
        let mut next = 0;
        if let Some((first, last)) = lake.last_range(partition)? {
            let records = read_exact(log, partition, first, last)?;
            report.files += lake.write_range(partition, &records)?;
            report.rewritten_ranges += 1;
            next = last + 1;
        }
        loop {
            let records = log.read(partition, next, range_rows.max(1))?;
            let Some(end) = records.last().map(|r| r.position.offset) else {
                break;
            };
            if records[0].position.offset != next {
                return Err(AnalyticsError::LogGap {
                    partition,
                    expected: next,
                    got: records[0].position.offset,
                });
            }
            report.files += lake.write_range(partition, &records)?;
            report.rows += records.len() as u64;
            next = end + 1;
        }
    }
    Ok(report)
}
