//! Tables fed by a sink rather than copied from a log: `tally_changes` (the tally dataflow's
//! published changes), `window_features` (the features dataflow's final windows) and
//! `checkpoints` (the vote record's signed checkpoints).
//!
//! Exactly once through marks: each row belongs to a group (a log partition, a window
//! series, a decision) and has an order within it that only grows (the log position it is
//! as of, the window's start, the tree size). Every file's footer carries the marks (per
//! group, the highest order written) as of that file; files are numbered in the order they
//! were written. At start the lake reads the newest file's marks and drops every row at or
//! below its group's mark, so rows a restart publishes again are not written twice, and rows
//! that never reached a file are written when they are published again.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use parquet::file::metadata::KeyValue;

use crate::AnalyticsError;
use crate::lake::{
    FileName, LakeConfig, LakeFile, TableFiles, date_folder, day_of, parquet_error, sort_batch,
};
use crate::votes::utc_micros;

const MARKS_KEY: &str = "canopy.marks";
const SPACE: &str = "s";

/// A table whose rows a sink hands over.
pub trait SinkTable {
    type Row;
    const NAME: &'static str;
    fn schema() -> SchemaRef;
    fn sort_columns() -> Vec<usize>;
    fn group(row: &Self::Row) -> String;
    fn order(row: &Self::Row) -> i64;
    /// UTC microseconds: the row's date. Within a group it grows with the order.
    fn time_micros(row: &Self::Row) -> i64;
    fn batch(rows: &[&Self::Row], day: i32) -> Result<RecordBatch, ArrowError>;
}

/// A table of the lake fed by a sink.
#[derive(Debug)]
pub struct SinkLake<T: SinkTable> {
    config: LakeConfig,
    files: TableFiles,
    marks: BTreeMap<String, i64>,
    next_file: u64,
    table: PhantomData<T>,
}

impl<T: SinkTable> SinkLake<T> {
    /// Opens (creating) the table and reads its marks from the newest file.
    pub fn open(config: LakeConfig) -> Result<Self, AnalyticsError> {
        let files = TableFiles {
            location: config.location.clone(),
            table: T::NAME,
            schema: T::schema(),
            sort_columns: T::sort_columns(),
            plain_columns: Vec::new(),
        };
        files.open()?;
        let newest = files
            .all_files()?
            .into_values()
            .flatten()
            .max_by_key(|f| (f.name.last, std::cmp::Reverse(f.name.first)));
        let (marks, next_file) = match newest {
            None => (BTreeMap::new(), 0),
            Some(file) => (read_marks(&files, &file)?, file.name.last + 1),
        };
        Ok(Self {
            config,
            files,
            marks,
            next_file,
            table: PhantomData,
        })
    }

    /// Where the table's files are, for people: a folder or a bucket prefix.
    pub fn location(&self) -> String {
        format!("{}/{}", self.config.location, self.files.table)
    }

    /// The highest order written for `group`.
    pub fn mark(&self, group: &str) -> Option<i64> {
        self.marks.get(group).copied()
    }

    /// Whether `row` is not in the table yet.
    pub fn is_new(&self, row: &T::Row) -> bool {
        self.mark(&T::group(row))
            .is_none_or(|mark| T::order(row) > mark)
    }

    /// Writes the rows not written before: one file per date, in date order, each carrying
    /// the marks as of itself. Returns the rows written.
    pub fn append(&mut self, rows: Vec<T::Row>) -> Result<u64, AnalyticsError> {
        let mut by_day: BTreeMap<i32, Vec<T::Row>> = BTreeMap::new();
        for row in rows {
            if self.is_new(&row) {
                by_day
                    .entry(day_of(T::time_micros(&row)))
                    .or_default()
                    .push(row);
            }
        }
        let mut written = 0;
        for (day, rows) in by_day {
            let mut marks = self.marks.clone();
            for row in &rows {
                let mark = marks.entry(T::group(row)).or_insert(i64::MIN);
                *mark = (*mark).max(T::order(row));
            }
            let name = FileName {
                space: SPACE.into(),
                first: self.next_file,
                last: self.next_file,
            };
            let refs: Vec<&T::Row> = rows.iter().collect();
            let path = self.files.key(&date_folder(day), &name);
            let batch = T::batch(&refs, day).map_err(|e| parquet_error(&path, e))?;
            let batch = sort_batch(&batch, &self.files.sort_columns)
                .map_err(|e| parquet_error(&path, e))?;
            let encoded = serde_json::to_string(&marks).map_err(|e| parquet_error(&path, e))?;
            self.files.write(
                &self.config,
                &date_folder(day),
                &name,
                &batch,
                vec![KeyValue::new(MARKS_KEY.into(), encoded)],
            )?;
            self.marks = marks;
            self.next_file += 1;
            written += rows.len() as u64;
        }
        Ok(written)
    }

    /// Merges small files and deletes superseded ones past their grace period.
    pub fn compact(&self) -> Result<(u64, u64), AnalyticsError> {
        self.files.compact(&self.config)
    }
}

fn read_marks(
    files: &TableFiles,
    file: &LakeFile,
) -> Result<BTreeMap<String, i64>, AnalyticsError> {
    let path = &file.key;
    let footer = files.read_footer(file)?;
    let Some(encoded) = footer
        .iter()
        .find(|kv| kv.key == MARKS_KEY)
        .and_then(|kv| kv.value.clone())
    else {
        return Err(parquet_error(path, "the file carries no marks"));
    };
    serde_json::from_str(&encoded).map_err(|e| parquet_error(path, e))
}

/// One cell of a decision's tally as of a log position, after it changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TallyChange {
    pub decision_id: String,
    pub option: i32,
    pub component: &'static str,
    /// Voters whose current vote is in this cell (0: the cell emptied).
    pub count: i64,
    pub weight_millionths: i64,
    pub share_ppb: i64,
    pub as_of_partition: u32,
    /// Every vote of the partition below this offset is counted.
    pub as_of_offset: u64,
    pub published_at: i64,
}

/// The `tally_changes` table.
#[derive(Debug)]
pub struct TallyChanges;
pub type TallyChangeLake = SinkLake<TallyChanges>;

impl SinkTable for TallyChanges {
    type Row = TallyChange;
    const NAME: &'static str = "tally_changes";

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("decision_id", DataType::Utf8, false),
            Field::new("option", DataType::Int32, false),
            Field::new("component", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new("weight_millionths", DataType::Int64, false),
            Field::new("share_ppb", DataType::Int64, false),
            Field::new("as_of_partition", DataType::Int32, false),
            Field::new("as_of_offset", DataType::Int64, false),
            Field::new("published_at", utc_micros(), false),
            Field::new("date", DataType::Date32, false),
        ]))
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 7, 1, 2]
    }

    fn group(row: &TallyChange) -> String {
        format!("p{}", row.as_of_partition)
    }

    fn order(row: &TallyChange) -> i64 {
        row.as_of_offset as i64
    }

    fn time_micros(row: &TallyChange) -> i64 {
        row.published_at
    }

    fn batch(rows: &[&TallyChange], day: i32) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut decision = StringBuilder::with_capacity(n, n * 36);
        let mut option = Int32Builder::with_capacity(n);
        let mut component = StringBuilder::with_capacity(n, n * 10);
        let mut count = Int64Builder::with_capacity(n);
        let mut weight = Int64Builder::with_capacity(n);
        let mut share = Int64Builder::with_capacity(n);
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        let mut published = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut date = Date32Builder::with_capacity(n);
        for row in rows {
            decision.append_value(&row.decision_id);
            option.append_value(row.option);
            component.append_value(row.component);
            count.append_value(row.count);
            weight.append_value(row.weight_millionths);
            share.append_value(row.share_ppb);
            partition.append_value(row.as_of_partition as i32);
            offset.append_value(row.as_of_offset as i64);
            published.append_value(row.published_at);
            date.append_value(day);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(decision.finish()),
            Arc::new(option.finish()),
            Arc::new(component.finish()),
            Arc::new(count.finish()),
            Arc::new(weight.finish()),
            Arc::new(share.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(published.finish()),
            Arc::new(date.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// A final feature window: the summary of a sensor's or a region's readings of a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowFeature {
    pub region: String,
    /// `None` for a region's window (all its sensors).
    pub sensor: Option<String>,
    pub metric: &'static str,
    pub width_s: i64,
    pub window_start: i64,
    pub count: i64,
    pub mean: f64,
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    /// The largest |z| of the window's readings against the sensor's baseline, if it had one.
    pub max_abs_z: Option<f64>,
}

/// The `window_features` table.
#[derive(Debug)]
pub struct WindowFeatures;
pub type WindowFeatureLake = SinkLake<WindowFeatures>;

impl SinkTable for WindowFeatures {
    type Row = WindowFeature;
    const NAME: &'static str = "window_features";

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new("sensor", DataType::Utf8, true),
            Field::new("width_s", DataType::Int64, false),
            Field::new("window_start", utc_micros(), false),
            Field::new("window_end", utc_micros(), false),
            Field::new("count", DataType::Int64, false),
            Field::new("mean", DataType::Float64, false),
            Field::new("stddev", DataType::Float64, false),
            Field::new("min", DataType::Float64, false),
            Field::new("max", DataType::Float64, false),
            Field::new("last", DataType::Float64, false),
            Field::new("max_abs_z", DataType::Float64, true),
            Field::new("date", DataType::Date32, false),
        ]))
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 1, 4]
    }

    fn group(row: &WindowFeature) -> String {
        format!(
            "{}/{}/{}/{}",
            row.region,
            row.sensor.as_deref().unwrap_or(""),
            row.metric,
            row.width_s
        )
    }

    fn order(row: &WindowFeature) -> i64 {
        row.window_start
    }

    fn time_micros(row: &WindowFeature) -> i64 {
        row.window_start
    }

    fn batch(rows: &[&WindowFeature], day: i32) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut region = StringBuilder::with_capacity(n, n * 8);
        let mut metric = StringBuilder::with_capacity(n, n * 6);
        let mut sensor = StringBuilder::with_capacity(n, n * 12);
        let mut width = Int64Builder::with_capacity(n);
        let mut start = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut end = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut count = Int64Builder::with_capacity(n);
        let mut floats: [Float64Builder; 5] =
            std::array::from_fn(|_| Float64Builder::with_capacity(n));
        let mut z = Float64Builder::with_capacity(n);
        let mut date = Date32Builder::with_capacity(n);
        for row in rows {
            region.append_value(&row.region);
            metric.append_value(row.metric);
            sensor.append_option(row.sensor.as_deref());
            width.append_value(row.width_s);
            start.append_value(row.window_start);
            end.append_value(row.window_start + row.width_s * 1_000_000);
            count.append_value(row.count);
            for (builder, value) in floats
                .iter_mut()
                .zip([row.mean, row.stddev, row.min, row.max, row.last])
            {
                builder.append_value(value);
            }
            z.append_option(row.max_abs_z);
            date.append_value(day);
        }
        let [mut mean, mut stddev, mut min, mut max, mut last] = floats;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(region.finish()),
            Arc::new(metric.finish()),
            Arc::new(sensor.finish()),
            Arc::new(width.finish()),
            Arc::new(start.finish()),
            Arc::new(end.finish()),
            Arc::new(count.finish()),
            Arc::new(mean.finish()),
            Arc::new(stddev.finish()),
            Arc::new(min.finish()),
            Arc::new(max.finish()),
            Arc::new(last.finish()),
            Arc::new(z.finish()),
            Arc::new(date.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// A signed checkpoint of a decision's vote record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub decision_id: String,
    pub tree_size: i64,
    /// The Merkle root, hex.
    pub root: String,
    /// The signed note an auditor checks (origin, size, root, signature).
    pub note: String,
    pub log_partition: i32,
    pub log_offset: i64,
    pub cut_at: i64,
}

/// The `checkpoints` table.
#[derive(Debug)]
pub struct Checkpoints;
pub type CheckpointLake = SinkLake<Checkpoints>;

impl SinkTable for Checkpoints {
    type Row = CheckpointEntry;
    const NAME: &'static str = "checkpoints";

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("decision_id", DataType::Utf8, false),
            Field::new("tree_size", DataType::Int64, false),
            Field::new("root", DataType::Utf8, false),
            Field::new("note", DataType::Utf8, false),
            Field::new("log_partition", DataType::Int32, false),
            Field::new("log_offset", DataType::Int64, false),
            Field::new("cut_at", utc_micros(), false),
            Field::new("date", DataType::Date32, false),
        ]))
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 1]
    }

    fn group(row: &CheckpointEntry) -> String {
        row.decision_id.clone()
    }

    fn order(row: &CheckpointEntry) -> i64 {
        row.tree_size
    }

    fn time_micros(row: &CheckpointEntry) -> i64 {
        row.cut_at
    }

    fn batch(rows: &[&CheckpointEntry], day: i32) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut decision = StringBuilder::with_capacity(n, n * 36);
        let mut size = Int64Builder::with_capacity(n);
        let mut root = StringBuilder::with_capacity(n, n * 64);
        let mut note = StringBuilder::with_capacity(n, n * 200);
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        let mut cut_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut date = Date32Builder::with_capacity(n);
        for row in rows {
            decision.append_value(&row.decision_id);
            size.append_value(row.tree_size);
            root.append_value(&row.root);
            note.append_value(&row.note);
            partition.append_value(row.log_partition);
            offset.append_value(row.log_offset);
            cut_at.append_value(row.cut_at);
            date.append_value(day);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(decision.finish()),
            Arc::new(size.finish()),
            Arc::new(root.finish()),
            Arc::new(note.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(cut_at.finish()),
            Arc::new(date.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}
