//! Tables copied from a log: `votes` (the vote log) and `sensor_readings` (the sensor log).
//!
//! Exactly once without a side record: a file is named after the log range it holds and its
//! content is a function of that range. At start, per log partition, the last range found
//! is written again (identical content replaces itself; a file of it that a crash left
//! unwritten appears), then copying goes on after it.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use arrow_schema::SchemaRef;
use canopy_ingest::{
    EntryLog, LogEntry, LogRecord, Positioned, SensorLog, SensorRecord, VoteLog, VoteLogRecord,
};
use canopy_schemas::Ballot;

use crate::AnalyticsError;
use crate::columns::{Columns, TableLayout};
use crate::lake::{FileName, LakeConfig, TableFiles, date_folder, day_of, parquet_error};

/// A table whose rows are a log's entries (some of them: `row` picks).
pub trait LogTable: TableLayout {
    /// What the log hands back.
    type Record: Positioned;
    /// The row a record makes; None for a record the table leaves out (a decision's close
    /// is not a vote).
    fn row(record: Self::Record) -> Option<Self::Row>;
    fn plain_columns() -> Vec<&'static str> {
        Vec::new()
    }
    fn partition(entry: &Self::Row) -> u32;
    fn offset(entry: &Self::Row) -> u64;
    /// Event time, UTC microseconds: it decides the row's date.
    fn time_micros(entry: &Self::Row) -> i64;
}

/// The `votes` table: every logged vote, the voter only as its salted commitment.
///
/// Ballot secrecy decides what a row leaves out. The commitment changes from decision to
/// decision so that one person's votes cannot be linked; a verified weight is the same in
/// every decision, so a per-vote weight would link them again (the weighted totals are in
/// `tally_changes`). The time is the hour: to the microsecond it would find the row of
/// anyone whose moment of voting is known. `option` is a single-choice ballot's option and
/// -1 for a ballot of another method (whose marks the record's leaves hold; the lake has
/// no column for them in this layout).
#[derive(Debug)]
pub struct Votes;

/// The Arrow schema of the `votes` table.
pub fn vote_schema() -> SchemaRef {
    Votes::schema()
}

impl TableLayout for Votes {
    type Row = LogRecord;
    const NAME: &'static str = "votes";
    /// Layout 1 had `weight_millionths` and `cast_at` (µs).
    const LAYOUT: u32 = 2;
    const HOURS_FROM: &'static [(&'static str, &'static str)] = &[("cast_at", "cast_hour")];

    fn columns<'r>(rows: &'r [&'r LogRecord], day: i32) -> Columns<'r, LogRecord> {
        Columns::of(rows)
            .text("decision_id", |r| r.vote.decision_id.to_string())
            .text("vote_id", |r| r.vote.vote_id.to_string())
            .fixed_binary("voter_commitment", |r| r.commitment.0)
            .int32("option", |r| match r.vote.ballot {
                Ballot::SingleChoice(option) => i32::from(option),
                _ => -1,
            })
            .text("component", |r| r.vote.component.as_str())
            .utc_hour("cast_hour", |r| r.vote.cast_at)
            .int32("log_partition", |r| r.position.partition as i32)
            .int64("log_offset", |r| r.position.offset as i64)
            .date32("date", |_| day)
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 7]
    }
}

impl LogTable for Votes {
    type Record = VoteLogRecord;

    fn row(record: VoteLogRecord) -> Option<LogRecord> {
        record.vote().copied()
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
}

/// The `sensor_readings` table: every logged reading, in its metric's canonical unit.
#[derive(Debug)]
pub struct Readings;

impl TableLayout for Readings {
    type Row = SensorRecord;
    const NAME: &'static str = "sensor_readings";

    fn columns<'r>(rows: &'r [&'r SensorRecord], day: i32) -> Columns<'r, SensorRecord> {
        Columns::of(rows)
            .text("region", |r| &r.reading.region)
            .text("metric", |r| r.reading.metric.as_str())
            .text("sensor", |r| &r.reading.sensor_id)
            .utc_micros("observed_at", |r| {
                r.reading.observed_at.saturating_mul(1000)
            })
            // The value as logged (exact) and as a float for arithmetic.
            .int64("value_micro", |r| r.reading.value_micro)
            .float64("value", |r| r.reading.value_micro as f64 / 1e6)
            .text("unit", |r| r.reading.metric.unit())
            .text("quality", |r| match r.reading.quality {
                canopy_schemas::Quality::Ok => "ok",
                canopy_schemas::Quality::Suspect => "suspect",
                canopy_schemas::Quality::Maintenance => "maintenance",
            })
            .int32("log_partition", |r| r.position.partition as i32)
            .int64("log_offset", |r| r.position.offset as i64)
            .date32("date", |_| day)
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 1, 3, 9]
    }
}

impl LogTable for Readings {
    type Record = SensorRecord;

    fn row(record: SensorRecord) -> Option<SensorRecord> {
        Some(record)
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
    /// Opens (creating) the table's folder, removes what a crash left half-written and
    /// rewrites files of an earlier layout.
    pub fn open(config: LakeConfig) -> Result<Self, AnalyticsError> {
        let files = TableFiles::of::<T>(config.location.clone(), T::plain_columns());
        files.open(&config)?;
        if config.share.keeps_whole_lake() {
            files.bring_to_layout(&config)?;
        }
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
    pub fn write_range(&self, partition: u32, records: &[T::Row]) -> Result<u64, AnalyticsError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(0);
        };
        let name = FileName {
            space: space(partition),
            first: T::offset(first),
            last: T::offset(last),
        };
        let mut by_day: BTreeMap<i32, Vec<&T::Row>> = BTreeMap::new();
        for record in records {
            by_day
                .entry(day_of(T::time_micros(record)))
                .or_default()
                .push(record);
        }
        let mut files = 0;
        for (day, rows) in by_day {
            let path = self.files.key(&date_folder(day), &name);
            let batch = T::columns(&rows, day)
                .batch()
                .map_err(|e| parquet_error(&path, e))?;
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

    /// Whether this writer copies `partition` (a cluster's process: the partitions its
    /// workers read).
    pub fn owns(&self, partition: u32) -> bool {
        self.config.share.owns(partition)
    }
}

fn space(partition: u32) -> String {
    format!("p{partition:04}")
}

/// Reads the records of offsets `first..=last` of `partition`: every offset, but those the
/// log refuses to hand over (a Kafka log's dead letters), which it refuses every time.
fn read_exact<T: LogTable, E: LogEntry<Record = T::Record>, L: EntryLog<E> + ?Sized>(
    log: &L,
    partition: u32,
    first: u64,
    last: u64,
) -> Result<Vec<T::Row>, AnalyticsError> {
    let mut out = Vec::with_capacity((last - first + 1) as usize);
    let mut next = first;
    while next <= last {
        let batch = log.read_batch(partition, next, (last - next + 1) as usize)?;
        if batch.next <= next {
            return Err(AnalyticsError::LogGap {
                partition,
                expected: next,
                got: log.end_offset(partition)?,
            });
        }
        for record in batch.records {
            let offset = record.position().offset;
            if offset < next || offset > last {
                return Err(AnalyticsError::LogGap {
                    partition,
                    expected: next,
                    got: offset,
                });
            }
            next = offset + 1;
            out.extend(T::row(record));
        }
        next = next.max(batch.next);
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
pub fn sync_log<T: LogTable, E: LogEntry<Record = T::Record>, L: EntryLog<E> + ?Sized>(
    lake: &LogLake<T>,
    log: &L,
    range_rows: usize,
    cursor: &mut SyncCursor,
) -> Result<SyncReport, AnalyticsError> {
    let mut report = SyncReport::default();
    let partitions = log.partitions();
    if cursor.next.is_none() {
        let mut next = vec![0; partitions as usize];
        for partition in (0..partitions).filter(|&p| lake.owns(p)) {
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
    for partition in (0..partitions).filter(|&p| lake.owns(p)) {
        let at = &mut next[partition as usize];
        loop {
            // Records the log refuses (dead letters) are left out, the same every time, so
            // a range's content is still a function of its offsets.
            let batch = log.read_batch(partition, *at, range_rows.max(1))?;
            if let Some(head) = batch.records.first()
                && head.position().offset < *at
            {
                return Err(AnalyticsError::LogGap {
                    partition,
                    expected: *at,
                    got: head.position().offset,
                });
            }
            let records: Vec<T::Row> = batch.records.into_iter().filter_map(T::row).collect();
            if !records.is_empty() {
                report.files += lake.write_range(partition, &records)?;
                report.rows += records.len() as u64;
            }
            if batch.next <= *at {
                break;
            }
            *at = batch.next;
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
