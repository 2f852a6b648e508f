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
//!
//! In a lake a cluster writes, each process numbers its files in a sequence of its own (its
//! `space`, see [`LakeShare`](crate::LakeShare)), and a group's rows may sit in several
//! (the process that publishes a decision changes when the cluster is rescaled). At start
//! the marks are the highest of every sequence's newest file: each writer's newest file
//! carries every mark it knew, so the highest is every row written, by whoever.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::ArrowError;
use parquet::file::metadata::KeyValue;

use crate::AnalyticsError;
use crate::columns::{Columns, TableLayout};
use crate::lake::{
    FileName, LakeConfig, LakeFile, TableFiles, date_folder, day_of, parquet_error, sort_batch,
};

const MARKS_KEY: &str = "canopy.marks";

/// A table whose rows a sink hands over.
pub trait SinkTable: TableLayout {
    fn group(row: &Self::Row) -> String;
    /// A group an earlier version marked the row under, whose mark still holds.
    fn earlier_group(_row: &Self::Row) -> Option<String> {
        None
    }
    fn order(row: &Self::Row) -> i64;
    /// UTC microseconds: the row's date. Within a group it grows with the order.
    fn time_micros(row: &Self::Row) -> i64;
    /// Which rows of files of an earlier layout this layout keeps (its columns are seen to
    /// apart), if it leaves some out; rows come a file at a time, in the order written.
    fn old_rows_kept(_config: &LakeConfig) -> Option<RowFilter> {
        None
    }
}

/// A filter over record batches, stateful across them.
pub type RowFilter = Box<dyn FnMut(&RecordBatch) -> Result<BooleanArray, ArrowError> + Send>;

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
    /// Opens (creating) the table, rewrites files of an earlier layout and reads its marks
    /// from the newest file.
    pub fn open(config: LakeConfig) -> Result<Self, AnalyticsError> {
        let files = TableFiles::of::<T>(config.location.clone(), Vec::new());
        files.open(&config)?;
        // Rewriting files is the whole lake's upkeep: one process of a cluster does it.
        if config.share.keeps_whole_lake() {
            if let Some(kept) = T::old_rows_kept(&config) {
                files.filter_rows_before_layout(&config, kept)?;
            }
            files.bring_to_layout(&config)?;
        }
        // Per sequence, the newest file: of those ending last the widest, which no later
        // compaction supersedes (so it is not deleted while this reads it).
        let mut newest: BTreeMap<String, LakeFile> = BTreeMap::new();
        for file in files.all_files()?.into_values().flatten() {
            let key = |f: &LakeFile| (f.name.last, std::cmp::Reverse(f.name.first));
            match newest.get(&file.name.space) {
                Some(known) if key(known) >= key(&file) => {}
                _ => {
                    newest.insert(file.name.space.clone(), file);
                }
            }
        }
        let space = config.share.space();
        let next_file = newest.get(&space).map_or(0, |file| file.name.last + 1);
        let mut marks = BTreeMap::new();
        for file in newest.values() {
            for (group, mark) in read_marks(&files, file)? {
                let known = marks.entry(group).or_insert(mark);
                *known = (*known).max(mark);
            }
        }
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
        let above = |group: &str| self.mark(group).is_none_or(|mark| T::order(row) > mark);
        above(&T::group(row)) && T::earlier_group(row).is_none_or(|group| above(&group))
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
                space: self.config.share.space(),
                first: self.next_file,
                last: self.next_file,
            };
            let refs: Vec<&T::Row> = rows.iter().collect();
            let path = self.files.key(&date_folder(day), &name);
            let batch = T::columns(&refs, day)
                .batch()
                .map_err(|e| parquet_error(&path, e))?;
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

    /// The table's rows, a file at a time: each writer's files in the order written, the
    /// writers one after another.
    pub(crate) fn for_each_batch(
        &self,
        mut each: impl FnMut(&RecordBatch) -> Result<(), ArrowError>,
    ) -> Result<(), AnalyticsError> {
        for file in self.files.live_files()? {
            for batch in self.files.read_file(&file.key)?.0 {
                each(&batch).map_err(|e| parquet_error(&file.key, e))?;
            }
        }
        Ok(())
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
    pub as_of_partition: u32,
    /// Every vote of the partition below this offset is counted.
    pub as_of_offset: u64,
    /// When the change was published, UTC microseconds; the table keeps only its hour.
    pub published_at: i64,
}

/// The `tally_changes` table.
#[derive(Debug)]
pub struct TallyChanges;
pub type TallyChangeLake = SinkLake<TallyChanges>;

impl TableLayout for TallyChanges {
    type Row = TallyChange;
    const NAME: &'static str = "tally_changes";
    /// Layout 1 had `published_at` (µs), which put a time on each vote's change of the tally.
    /// Layout 2 kept every published change and each cell's share: the difference of two
    /// rows was one voter's weight. Layout 3 keeps the changes [`ReleaseGate`] admits and no
    /// share (the share moved with every other cell's changes, gated or not).
    const LAYOUT: u32 = 3;
    const HOURS_FROM: &'static [(&'static str, &'static str)] =
        &[("published_at", "published_hour")];

    fn columns<'r>(rows: &'r [&'r TallyChange], day: i32) -> Columns<'r, TallyChange> {
        Columns::of(rows)
            .text("decision_id", |r| &r.decision_id)
            .int32("option", |r| r.option)
            .text("component", |r| r.component)
            .int64("count", |r| r.count)
            .int64("weight_millionths", |r| r.weight_millionths)
            .int32("as_of_partition", |r| r.as_of_partition as i32)
            .int64("as_of_offset", |r| r.as_of_offset as i64)
            .utc_hour("published_hour", |r| r.published_at)
            .date32("date", |_| day)
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 6, 1, 2]
    }
}

impl SinkTable for TallyChanges {
    /// The decision: one process publishes all of a decision's changes, in log order
    /// (while a partition's decisions may be published by several processes of a cluster).
    fn group(row: &TallyChange) -> String {
        row.decision_id.clone()
    }

    /// Before clusters wrote the lake, the group was the log partition.
    fn earlier_group(row: &TallyChange) -> Option<String> {
        Some(format!("p{}", row.as_of_partition))
    }

    fn order(row: &TallyChange) -> i64 {
        row.as_of_offset as i64
    }

    fn time_micros(row: &TallyChange) -> i64 {
        row.published_at
    }

    /// Rows an older file kept that the gate would not have let through are left out.
    fn old_rows_kept(config: &LakeConfig) -> Option<RowFilter> {
        let mut gate = ReleaseGate::new(config.min_group_voters);
        Some(Box::new(move |batch| gate.admit_rows(batch)))
    }
}

/// Which tally changes the lake may show, so that no difference between two rows it shows
/// is fewer than k voters' votes. A cell's new state is shown once at least k voters
/// joined or left it since the state it showed before (from none: once it holds k); until
/// then the cell keeps showing the older state. The difference of two shown states of a
/// cell is then the weights of at least k voters together (voters moving in and out at
/// once only count as the net change, which undercounts them: the gate waits longer, never
/// shorter). With k = 1 every change is shown.
#[derive(Clone, Debug)]
pub struct ReleaseGate {
    min_group_voters: i64,
    /// Per cell (decision, option, component): the count of the state last shown.
    shown: HashMap<(String, i32, String), i64>,
}

impl ReleaseGate {
    pub fn new(min_group_voters: u64) -> Self {
        Self {
            min_group_voters: min_group_voters.max(1) as i64,
            shown: HashMap::new(),
        }
    }

    /// A gate that knows what `lake` shows already: its newest row of each cell (by log
    /// position; of rows at the same position, the one written last).
    pub fn seeded(lake: &TallyChangeLake, min_group_voters: u64) -> Result<Self, AnalyticsError> {
        let mut gate = Self::new(min_group_voters);
        let mut newest: HashMap<(String, i32, String), i64> = HashMap::new();
        lake.for_each_batch(|batch| {
            let cells = TallyCells::of(batch)?;
            for row in 0..batch.num_rows() {
                let (cell, count) = cells.get(row);
                let offset = cells.offset.value(row);
                if newest.get(&cell).is_none_or(|&seen| offset >= seen) {
                    newest.insert(cell.clone(), offset);
                    gate.shown.insert(cell, count);
                }
            }
            Ok(())
        })?;
        Ok(gate)
    }

    /// Whether the change may be shown; if so it is from now on the state shown.
    pub fn admits(&mut self, row: &TallyChange) -> bool {
        self.admit(
            (
                row.decision_id.clone(),
                row.option,
                row.component.to_string(),
            ),
            row.count,
        )
    }

    fn admit(&mut self, cell: (String, i32, String), count: i64) -> bool {
        let shown = self.shown.get(&cell).copied().unwrap_or(0);
        let admitted = self.min_group_voters == 1 || (count - shown).abs() >= self.min_group_voters;
        if admitted {
            self.shown.insert(cell, count);
        }
        admitted
    }

    fn admit_rows(&mut self, batch: &RecordBatch) -> Result<BooleanArray, ArrowError> {
        let cells = TallyCells::of(batch)?;
        Ok((0..batch.num_rows())
            .map(|row| {
                let (cell, count) = cells.get(row);
                Some(self.admit(cell, count))
            })
            .collect())
    }
}

/// The columns of `tally_changes` rows that name a cell and its count, in any layout.
struct TallyCells<'b> {
    decision: &'b arrow_array::StringArray,
    option: &'b arrow_array::Int32Array,
    component: &'b arrow_array::StringArray,
    count: &'b arrow_array::Int64Array,
    offset: &'b arrow_array::Int64Array,
}

impl<'b> TallyCells<'b> {
    fn of(batch: &'b RecordBatch) -> Result<Self, ArrowError> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("tally_changes has no {name}")))
        };
        let wrong =
            |name: &str| ArrowError::SchemaError(format!("tally_changes.{name}: wrong type"));
        Ok(Self {
            decision: column("decision_id")?
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong("decision_id"))?,
            option: column("option")?
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| wrong("option"))?,
            component: column("component")?
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong("component"))?,
            count: column("count")?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong("count"))?,
            offset: column("as_of_offset")?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong("as_of_offset"))?,
        })
    }

    fn get(&self, row: usize) -> ((String, i32, String), i64) {
        (
            (
                self.decision.value(row).to_string(),
                self.option.value(row),
                self.component.value(row).to_string(),
            ),
            self.count.value(row),
        )
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

impl TableLayout for WindowFeatures {
    type Row = WindowFeature;
    const NAME: &'static str = "window_features";

    fn columns<'r>(rows: &'r [&'r WindowFeature], day: i32) -> Columns<'r, WindowFeature> {
        Columns::of(rows)
            .text("region", |r| &r.region)
            .text("metric", |r| r.metric)
            .optional_text("sensor", |r| r.sensor.as_deref())
            .int64("width_s", |r| r.width_s)
            .utc_micros("window_start", |r| r.window_start)
            .utc_micros("window_end", |r| r.window_start + r.width_s * 1_000_000)
            .int64("count", |r| r.count)
            .float64("mean", |r| r.mean)
            .float64("stddev", |r| r.stddev)
            .float64("min", |r| r.min)
            .float64("max", |r| r.max)
            .float64("last", |r| r.last)
            .optional_float64("max_abs_z", |r| r.max_abs_z)
            .date32("date", |_| day)
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 1, 4]
    }
}

impl SinkTable for WindowFeatures {
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
    /// When the checkpoint was cut, UTC microseconds; the table keeps only its hour (a
    /// checkpoint is cut a second after a lone vote, so its exact time is that vote's).
    pub cut_at: i64,
}

/// The `checkpoints` table.
#[derive(Debug)]
pub struct Checkpoints;
pub type CheckpointLake = SinkLake<Checkpoints>;

impl TableLayout for Checkpoints {
    type Row = CheckpointEntry;
    const NAME: &'static str = "checkpoints";
    /// Layout 1 had `cut_at` (µs).
    const LAYOUT: u32 = 2;
    const HOURS_FROM: &'static [(&'static str, &'static str)] = &[("cut_at", "cut_hour")];

    fn columns<'r>(rows: &'r [&'r CheckpointEntry], day: i32) -> Columns<'r, CheckpointEntry> {
        Columns::of(rows)
            .text("decision_id", |r| &r.decision_id)
            .int64("tree_size", |r| r.tree_size)
            .text("root", |r| &r.root)
            .text("note", |r| &r.note)
            .int32("log_partition", |r| r.log_partition)
            .int64("log_offset", |r| r.log_offset)
            .utc_hour("cut_hour", |r| r.cut_at)
            .date32("date", |_| day)
    }

    fn sort_columns() -> Vec<usize> {
        vec![0, 1]
    }
}

impl SinkTable for Checkpoints {
    fn group(row: &CheckpointEntry) -> String {
        row.decision_id.clone()
    }

    fn order(row: &CheckpointEntry) -> i64 {
        row.tree_size
    }

    fn time_micros(row: &CheckpointEntry) -> i64 {
        row.cut_at
    }
}
