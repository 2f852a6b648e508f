//! Tables copied from a log: `votes` (the vote log) and `sensor_readings` (the sensor log).
//!
//! Exactly once without a side record: a file is named after the log range it holds and its
//! content is a function of that range. At start, per log partition, the last range found
//! is written again (identical content replaces itself; a file of it that a crash left
//! unwritten appears), then copying goes on after it.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, FixedSizeBinaryBuilder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use canopy_ingest::{EntryLog, LogEntry, LogRecord, SensorLog, SensorRecord, VoteLog};

use crate::AnalyticsError;
use crate::lake::{FileName, LakeConfig, TableFiles, date_folder, day_of, parquet_error};

pub(crate) fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A table whose rows are a log's entries.
pub trait LogTable {
    type Entry;
    const NAME: &'static str;
    fn schema() -> SchemaRef;
    fn sort_columns() -> Vec<usize>;
    fn plain_columns() -> Vec<&'static str> {
        Vec::new()
    }
    fn partition(entry: &Self::Entry) -> u32;
    fn offset(entry: &Self::Entry) -> u64;
    /// Event time, UTC microseconds: it decides the row's date.
    fn time_micros(entry: &Self::Entry) -> i64;
    fn batch(rows: &[&Self::Entry], day: i32) -> Result<RecordBatch, ArrowError>;
}

/// The `votes` table: every logged vote, the voter only as its salted commitment.
#[derive(Debug)]
pub struct Votes;

/// The Arrow schema of the `votes` table.
pub fn vote_schema() -> SchemaRef {
    Votes::schema()
}

impl LogTable for Votes {
    type Entry = LogRecord;
    const NAME: &'static str = "votes";

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("decision_id", DataType::Utf8, false),
            Field::new("vote_id", DataType::Utf8, false),
            Field::new("voter_commitment", DataType::FixedSizeBinary(32), false),
            Field::new("option", DataType::Int32, false),
            Field::new("component", DataType::Utf8, false),
            Field::new("weight_millionths", DataType::Int64, false),
            Field::new("cast_at", utc_micros(), false),
            Field::new("log_partition", DataType::Int32, false),
            Field::new("log_offset", DataType::Int64, false),
            Field::new("date", DataType::Date32, false),
        ]))
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 8]
    }

    fn plain_columns() -> Vec<&'static str> {
        vec!["voter_commitment", "vote_id"]
    }

    fn partition(entry: &LogRecord) -> u32 {
        entry.position.partition
    }

    fn offset(entry: &LogRecord) -> u64 {
        entry.position.offset
    }

    fn time_micros(entry: &LogRecord) -> i64 {
        entry.vote.cast_at
    }

    fn batch(rows: &[&LogRecord], day: i32) -> Result<RecordBatch, ArrowError> {
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
        let mut date = Date32Builder::with_capacity(n);
        for record in rows {
            let v = &record.vote;
            decision.append_value(v.decision_id.to_string());
            vote.append_value(v.vote_id.to_string());
            commitment.append_value(record.commitment.0)?;
            option.append_value(i32::from(v.option));
            component.append_value(v.component.as_str());
            weight.append_value(i64::from(v.weight.0));
            cast_at.append_value(v.cast_at);
            partition.append_value(record.position.partition as i32);
            offset.append_value(record.position.offset as i64);
            date.append_value(day);
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
            Arc::new(date.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// The `sensor_readings` table: every logged reading, in its metric's canonical unit.
#[derive(Debug)]
pub struct Readings;

impl LogTable for Readings {
    type Entry = SensorRecord;
    const NAME: &'static str = "sensor_readings";

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new("sensor", DataType::Utf8, false),
            Field::new("observed_at", utc_micros(), false),
            // The value as logged (exact) and as a float for arithmetic.
            Field::new("value_micro", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
            Field::new("unit", DataType::Utf8, false),
            Field::new("quality", DataType::Utf8, false),
            Field::new("log_partition", DataType::Int32, false),
            Field::new("log_offset", DataType::Int64, false),
            Field::new("date", DataType::Date32, false),
        ]))
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 1, 3, 9]
    }

    fn partition(entry: &SensorRecord) -> u32 {
        entry.position.partition
    }

    fn offset(entry: &SensorRecord) -> u64 {
        entry.position.offset
    }

    fn time_micros(entry: &SensorRecord) -> i64 {
        entry.reading.observed_at.saturating_mul(1000)
    }

    fn batch(rows: &[&SensorRecord], day: i32) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut region = StringBuilder::with_capacity(n, n * 8);
        let mut metric = StringBuilder::with_capacity(n, n * 6);
        let mut sensor = StringBuilder::with_capacity(n, n * 12);
        let mut observed_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut value_micro = Int64Builder::with_capacity(n);
        let mut value = Float64Builder::with_capacity(n);
        let mut unit = StringBuilder::with_capacity(n, n * 6);
        let mut quality = StringBuilder::with_capacity(n, n * 4);
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        let mut date = Date32Builder::with_capacity(n);
        for record in rows {
            let r = &record.reading;
            region.append_value(&r.region);
            metric.append_value(r.metric.as_str());
            sensor.append_value(&r.sensor_id);
            observed_at.append_value(r.observed_at.saturating_mul(1000));
            value_micro.append_value(r.value_micro);
            value.append_value(r.value_micro as f64 / 1e6);
            unit.append_value(r.metric.unit());
            quality.append_value(match r.quality {
                canopy_schemas::Quality::Ok => "ok",
                canopy_schemas::Quality::Suspect => "suspect",
                canopy_schemas::Quality::Maintenance => "maintenance",
            });
            partition.append_value(record.position.partition as i32);
            offset.append_value(record.position.offset as i64);
            date.append_value(day);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(region.finish()),
            Arc::new(metric.finish()),
            Arc::new(sensor.finish()),
            Arc::new(observed_at.finish()),
            Arc::new(value_micro.finish()),
            Arc::new(value.finish()),
            Arc::new(unit.finish()),
            Arc::new(quality.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(date.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub rows: u64,
    pub files: u64,
    /// Ranges found at start and written again (the last of each partition).
    pub rewritten_ranges: u64,
}

/// A table of the lake copied from a log.
#[derive(Debug)]
pub struct LogLake<T: LogTable> {
    config: LakeConfig,
    files: TableFiles,
    table: PhantomData<T>,
}

pub type VoteLake = LogLake<Votes>;
pub type ReadingLake = LogLake<Readings>;

impl<T: LogTable> LogLake<T> {
    /// Opens (creating) the table's folder and removes what a crash left half-written.
    pub fn open(config: LakeConfig) -> Result<Self, AnalyticsError> {
        let files = TableFiles {
            location: config.location.clone(),
            table: T::NAME,
            schema: T::schema(),
            sort_columns: T::sort_columns(),
            plain_columns: T::plain_columns(),
        };
        files.open()?;
        Ok(Self {
            config,
            files,
            table: PhantomData,
        })
    }

    /// Where the table's files are, for people: a folder or a bucket prefix.
    pub fn location(&self) -> String {
        format!("{}/{}", self.config.location, self.files.table)
    }

    /// The last range written for `partition`, if any: (first offset, last offset). Of
    /// the files ending last, the narrowest (compaction may have merged it into a wider one).
    pub fn last_range(&self, partition: u32) -> Result<Option<(u64, u64)>, AnalyticsError> {
        let space = space(partition);
        Ok(self
            .files
            .all_files()?
            .into_values()
            .flatten()
            .filter(|f| f.name.space == space)
            .map(|f| (f.name.last, f.name.first))
            .max()
            .map(|(last, first)| (first, last)))
    }

    /// Writes one range of one log partition: `records` in offset order, dense. One file
    /// per date, each named after the whole range.
    pub fn write_range(&self, partition: u32, records: &[T::Entry]) -> Result<u64, AnalyticsError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(0);
        };
        let name = FileName {
            space: space(partition),
            first: T::offset(first),
            last: T::offset(last),
        };
        let mut by_day: BTreeMap<i32, Vec<&T::Entry>> = BTreeMap::new();
        for record in records {
            by_day
                .entry(day_of(T::time_micros(record)))
                .or_default()
                .push(record);
        }
        let mut files = 0;
        for (day, rows) in by_day {
            let path = self.files.key(&date_folder(day), &name);
            let batch = T::batch(&rows, day).map_err(|e| parquet_error(&path, e))?;
            let batch = crate::lake::sort_batch(&batch, &self.files.sort_columns)
                .map_err(|e| parquet_error(&path, e))?;
            self.files
                .write(&self.config, &date_folder(day), &name, &batch, Vec::new())?;
            files += 1;
        }
        Ok(files)
    }

    /// Merges small files and deletes superseded ones past their grace period.
    pub fn compact(&self) -> Result<(u64, u64), AnalyticsError> {
        self.files.compact(&self.config)
    }
}

fn space(partition: u32) -> String {
    format!("p{partition:04}")
}

/// Reads exactly offsets `first..=last` of `partition`.
fn read_exact<T: LogTable, E: LogEntry<Record = T::Entry>, L: EntryLog<E> + ?Sized>(
    log: &L,
    partition: u32,
    first: u64,
    last: u64,
) -> Result<Vec<T::Entry>, AnalyticsError> {
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
            if T::offset(&record) != next {
                return Err(AnalyticsError::LogGap {
                    partition,
                    expected: next,
                    got: T::offset(&record),
                });
            }
            next += 1;
            out.push(record);
        }
    }
    Ok(out)
}

/// Where a long-running copy stands: the lake's position per log partition, so that a
/// periodic sync writes the last range again only once (at start).
#[derive(Clone, Debug, Default)]
pub struct SyncCursor {
    next: Option<Vec<u64>>,
}

/// Copies a log into its table: per partition, at the first call the last range found is
/// written again; then everything after it, in ranges of at most `range_rows`.
pub fn sync_log<T: LogTable, E: LogEntry<Record = T::Entry>, L: EntryLog<E> + ?Sized>(
    lake: &LogLake<T>,
    log: &L,
    range_rows: usize,
    cursor: &mut SyncCursor,
) -> Result<SyncReport, AnalyticsError> {
    let mut report = SyncReport::default();
    let partitions = log.partitions();
    if cursor.next.is_none() {
        let mut next = vec![0; partitions as usize];
        for partition in 0..partitions {
            if let Some((first, last)) = lake.last_range(partition)? {
                let records = read_exact::<T, E, L>(log, partition, first, last)?;
                report.files += lake.write_range(partition, &records)?;
                report.rewritten_ranges += 1;
                next[partition as usize] = last + 1;
            }
        }
        cursor.next = Some(next);
    }
    let next = cursor.next.as_mut().expect("set above");
    for partition in 0..partitions {
        let at = &mut next[partition as usize];
        loop {
            let records = log.read(partition, *at, range_rows.max(1))?;
            let (Some(head), Some(end)) = (records.first(), records.last()) else {
                break;
            };
            if T::offset(head) != *at {
                return Err(AnalyticsError::LogGap {
                    partition,
                    expected: *at,
                    got: T::offset(head),
                });
            }
            let end = T::offset(end);
            report.files += lake.write_range(partition, &records)?;
            report.rows += records.len() as u64;
            *at = end + 1;
        }
    }
    Ok(report)
}

/// Copies the vote log into the `votes` table (once; see [`sync_log`]).
pub fn sync_votes(
    lake: &VoteLake,
    log: &dyn VoteLog,
    range_rows: usize,
) -> Result<SyncReport, AnalyticsError> {
    sync_log(lake, log, range_rows, &mut SyncCursor::default())
}

/// Copies the sensor log into the `sensor_readings` table (once; see [`sync_log`]).
pub fn sync_readings(
    lake: &ReadingLake,
    log: &dyn SensorLog,
    range_rows: usize,
) -> Result<SyncReport, AnalyticsError> {
    sync_log(lake, log, range_rows, &mut SyncCursor::default())
}
