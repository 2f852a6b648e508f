//! What every table of the lake shares: where its files live, how they are named, how they
//! appear atomically, which of them are live, and how small ones are compacted.
//!
//! A file is `<root>/<table>/date=YYYY-MM-DD/part-<space>-<first>-<last>.parquet`, the root
//! a local folder or a bucket prefix (`store.rs`). The
//! `space` says what `first..=last` counts: a log partition's offsets (`p0003`) for tables
//! copied from a log, or the table's own file sequence (`s`) for tables fed by a sink. A
//! file whose range lies strictly inside another's, in the same folder and space, is
//! *superseded* (compaction wrote their union): readers skip it, and compaction deletes it
//! once the union has been in place for a grace period, so a query that listed it before
//! can still read it.
//!
//! Layouts: a table whose columns changed so that older files say more than the table
//! may (an exact time, a per-vote weight) has a layout number above 1, and a marker
//! `<table>/_layout/v<n>` once every file of it is of that layout. Opening the table to
//! write (a node, `canopy lake sync`) rewrites older files in place, each under its own
//! name with the same rows, and then leaves the marker; a reader refuses files of a table
//! without it (`lake_old_layout`) rather than serve them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_schema::{ArrowError, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader, SortingColumn};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use parquet::schema::types::ColumnPath;

use crate::AnalyticsError;
use crate::columns::{TableLayout, start_of_hour};
use crate::store::{Contents, LakeLocation, Listed};

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Where the lake is and how its files are cut.
#[derive(Clone, Debug)]
pub struct LakeConfig {
    pub location: LakeLocation,
    /// Rows per row group: large enough that a scan reads long runs, small enough that
    /// statistics can skip some.
    pub row_group_rows: usize,
    pub zstd_level: i32,
    /// A folder's files are merged while they are smaller than this together.
    pub compact_target_bytes: u64,
    /// How long a superseded file stays for queries that listed it before it was merged.
    pub compact_grace: Duration,
    /// k: the fewest voters an aggregate of votes the lake shows may stand for. A tally
    /// cell's new state is written only once at least this many voters joined or left it
    /// since the state written before (see `ReleaseGate`).
    pub min_group_voters: u64,
    /// Which part of the lake this writer keeps (all of it for a node alone).
    pub share: LakeShare,
}

impl LakeConfig {
    pub fn new(location: impl Into<LakeLocation>) -> Self {
        Self {
            location: location.into(),
            row_group_rows: 1 << 20,
            zstd_level: 3,
            compact_target_bytes: 128 << 20,
            compact_grace: Duration::from_secs(300),
            min_group_voters: 5,
            share: LakeShare::Alone,
        }
    }
}

/// Which part of a shared lake one writer keeps.
///
/// A cluster's processes write one lake together. Each copies the log partitions its
/// dataflow workers read (timely worker w of W reads p ≡ w (mod W), and a process runs a
/// contiguous block of the W workers), and numbers the files it feeds from sinks in a
/// sequence of its own (`space`), so two processes never write the same file name. Process
/// 0 alone keeps what belongs to the whole lake: decisions, record checkpoints, layout
/// rewrites and compaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LakeShare {
    /// The only writer of the lake: every partition, every table.
    Alone,
    /// Process `process` of a cluster whose processes run `threads` workers each, out of
    /// `workers` in all.
    Process {
        process: usize,
        threads: usize,
        workers: usize,
    },
}

impl LakeShare {
    /// Process `process` of `processes`, each running `threads` dataflow workers.
    pub fn process(process: usize, processes: usize, threads: usize) -> Self {
        if processes <= 1 {
            return Self::Alone;
        }
        let threads = threads.max(1);
        Self::Process {
            process,
            threads,
            workers: processes * threads,
        }
    }

    /// Whether this writer copies `partition` of a log (any log partitioned the same way).
    pub fn owns(&self, partition: u32) -> bool {
        match *self {
            Self::Alone => true,
            Self::Process {
                process,
                threads,
                workers,
            } => (partition as usize % workers) / threads == process,
        }
    }

    /// Whether this writer keeps the tables and the upkeep of the whole lake.
    pub fn keeps_whole_lake(&self) -> bool {
        match *self {
            Self::Alone => true,
            Self::Process { process, .. } => process == 0,
        }
    }

    /// Whether other processes write the lake at the same time.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Self::Alone)
    }

    /// The sequence this writer numbers its sink files in: `s` for process 0 (and a node
    /// alone, as before clusters), `s<n>` for process n.
    pub(crate) fn space(&self) -> String {
        match *self {
            Self::Process { process, .. } if process > 0 => format!("{SINK_SPACE}{process}"),
            _ => SINK_SPACE.to_string(),
        }
    }
}

/// The file sequence of tables fed by sinks (process 0's; process n's is `s<n>`).
pub(crate) const SINK_SPACE: &str = "s";

/// The lake's tables, by name: those the node writes, then those imported from other
/// publishers' files (`external/`).
pub const TABLES: [&str; 11] = [
    "votes",
    "decisions",
    "tally_changes",
    "checkpoints",
    "sensor_readings",
    "window_features",
    "audit_trail",
    "decision_history",
    "weather_daily",
    "indicators",
    "regions",
];

/// Who reads the lake in SQL, and so which tables a query sees (the others are not
/// registered: to the reader they do not exist).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LakeReader {
    /// Analysts: every table but the audit trail, which only auditors and admins may read
    /// (as through `GET /api/v1/audit/trail`); the imported tables too.
    #[default]
    Analyst,
    /// Auditors: the audit trail, and the decisions and their history it speaks of.
    Auditor,
    /// Admins, and the operator's own `canopy sql` over the files: every table.
    Admin,
}

impl LakeReader {
    /// Whether this reader's queries see `table`.
    pub fn reads(self, table: &str) -> bool {
        match self {
            Self::Analyst => table != "audit_trail",
            Self::Auditor => matches!(table, "audit_trail" | "decisions" | "decision_history"),
            Self::Admin => true,
        }
    }

    /// The tables this reader's queries see.
    pub fn tables(self) -> impl Iterator<Item = &'static str> {
        TABLES.into_iter().filter(move |table| self.reads(table))
    }
}

/// What a table's files share: its schema, the order of its rows, and where they are.
#[derive(Clone, Debug)]
pub(crate) struct TableFiles {
    pub location: LakeLocation,
    pub table: &'static str,
    pub schema: SchemaRef,
    /// Column indexes the rows are sorted by (ascending).
    pub sort_columns: Vec<usize>,
    /// Columns without a dictionary (random values: a dictionary only costs).
    pub plain_columns: Vec<&'static str>,
    /// The table's layout ([`TableLayout::LAYOUT`]) and the columns it coarsened to the hour.
    pub layout: u32,
    pub hours_from: &'static [(&'static str, &'static str)],
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

    /// The name of a file of the lake (the last part of its key), if it is one.
    pub fn parse(name: &str) -> Option<FileName> {
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
    /// Below the lake's root: `<table>/<folder>/<name>`.
    pub key: String,
    pub name: FileName,
    pub bytes: u64,
    pub modified: SystemTime,
}

impl TableFiles {
    /// The files of table `T` under `location`; `plain_columns` are written without a
    /// dictionary.
    pub(crate) fn of<T: TableLayout>(
        location: LakeLocation,
        plain_columns: Vec<&'static str>,
    ) -> Self {
        Self {
            location,
            table: T::NAME,
            schema: T::schema(),
            sort_columns: T::sort_columns(),
            plain_columns,
            layout: T::LAYOUT,
            hours_from: T::HOURS_FROM,
        }
    }

    /// Creates the folder and removes the temporaries a crash left. In a lake other
    /// processes write too, only temporaries older than the grace period: a younger one may
    /// be another process's write in progress.
    pub fn open(&self, config: &LakeConfig) -> Result<(), AnalyticsError> {
        let older_than = config.share.is_shared().then_some(config.compact_grace);
        self.location.clean(self.table, older_than)
    }

    /// Every file, by folder, superseded ones included.
    pub fn all_files(&self) -> Result<BTreeMap<String, Vec<LakeFile>>, AnalyticsError> {
        Ok(by_folder(self.location.list(self.table)?))
    }

    /// The files not superseded by another in their folder, in the order they were written
    /// (for the files of a sink: the order of their numbers).
    pub fn live_files(&self) -> Result<Vec<LakeFile>, AnalyticsError> {
        let mut files = live(self.all_files()?);
        files.sort_by_key(|f| (f.name.space.clone(), f.name.first));
        Ok(files)
    }

    /// The files a reader takes from the folders `keep_folder` keeps (by name): every
    /// file not superseded by another in its folder. A table whose files are not all of
    /// its layout yet is refused.
    pub async fn live_files_async(
        &self,
        keep_folder: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<LakeFile>, AnalyticsError> {
        let listed = self.location.list_async(self.table, keep_folder).await?;
        let found = layout_of(self.table, &listed);
        let files = live(by_folder(listed));
        if found < self.layout && !files.is_empty() {
            return Err(AnalyticsError::OldLayout {
                table: self.table,
                found,
                wanted: self.layout,
            });
        }
        Ok(files)
    }

    /// Rewrites the files of an earlier layout in this one, each under its own name (see
    /// the module's docs), then marks the table. Returns the files rewritten.
    pub fn bring_to_layout(&self, config: &LakeConfig) -> Result<u64, AnalyticsError> {
        if self.layout <= 1 {
            return Ok(0);
        }
        let listed = self.location.list(self.table)?;
        if layout_of(self.table, &listed) >= self.layout {
            return Ok(0);
        }
        let mut rewritten = 0;
        // Superseded files too: they hold the same old columns until compaction deletes them.
        for file in by_folder(listed).into_values().flatten() {
            let (batches, metadata) = self.read_file(&file.key)?;
            if batches
                .iter()
                .all(|b| same_columns(&b.schema(), &self.schema))
            {
                continue;
            }
            let upgraded = batches
                .iter()
                .map(|batch| self.in_layout(batch))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|batches| arrow_select::concat::concat_batches(&self.schema, &batches))
                .and_then(|batch| sort_batch(&batch, &self.sort_columns))
                .map_err(|e| parquet_error(&file.key, e))?;
            // The footer's own notes (a sink's marks) stay; the Arrow schema is the new one.
            let metadata = metadata
                .into_iter()
                .filter(|kv| kv.key != parquet::arrow::ARROW_SCHEMA_META_KEY)
                .collect();
            self.write_key(config, &file.key, &upgraded, metadata)?;
            rewritten += 1;
        }
        let marker = layout_marker(self.table, self.layout);
        self.location.write(&marker, |mut body| {
            use std::io::Write;
            writeln!(
                body,
                "every file of {} is of layout {}",
                self.table, self.layout
            )
            .map_err(AnalyticsError::io(&marker))?;
            Ok(body)
        })?;
        if rewritten > 0 {
            tracing::info!(
                table = self.table,
                layout = self.layout,
                files = rewritten,
                "rewrote the files of an earlier layout"
            );
        }
        Ok(rewritten)
    }

    /// Before a table is brought to its layout, when some of the rows it kept say more than
    /// the layout may: keeps, of every live file, the rows `keep` admits (files in the order
    /// they were written, each file's rows in its order), written in the new layout under
    /// the file's own name with its footer's notes. Superseded files go first: their rows
    /// are in the file that merged them. Filtering twice keeps what filtering once kept, so
    /// a crash midway is mended by running it again. Returns the rows left out.
    pub(crate) fn filter_rows_before_layout(
        &self,
        config: &LakeConfig,
        mut keep: impl FnMut(&RecordBatch) -> Result<arrow_array::BooleanArray, ArrowError>,
    ) -> Result<u64, AnalyticsError> {
        let listed = self.location.list(self.table)?;
        if layout_of(self.table, &listed) >= self.layout {
            return Ok(0);
        }
        for files in by_folder(listed).values() {
            for file in files {
                if files.iter().any(|g| file.name.within(&g.name)) {
                    self.location.delete(&file.key)?;
                }
            }
        }
        let mut left_out = 0;
        for file in self.live_files()? {
            let (batches, metadata) = self.read_file(&file.key)?;
            let Some(first) = batches.first() else {
                continue;
            };
            let kept = arrow_select::concat::concat_batches(&first.schema(), &batches)
                .and_then(|batch| {
                    let mask = keep(&batch)?;
                    let kept = arrow_select::filter::filter_record_batch(&batch, &mask)?;
                    left_out += (batch.num_rows() - kept.num_rows()) as u64;
                    self.in_layout(&kept)
                })
                .and_then(|batch| sort_batch(&batch, &self.sort_columns))
                .map_err(|e| parquet_error(&file.key, e))?;
            let metadata = metadata
                .into_iter()
                .filter(|kv| kv.key != parquet::arrow::ARROW_SCHEMA_META_KEY)
                .collect();
            self.write_key(config, &file.key, &kept, metadata)?;
        }
        if left_out > 0 {
            tracing::info!(
                table = self.table,
                rows = left_out,
                "left out rows an earlier layout kept and this one may not show"
            );
        }
        Ok(left_out)
    }

    /// `batch`, of an earlier layout, in this one: the columns it keeps as they were, the
    /// ones coarsened since truncated to the hour, the ones gone left out.
    fn in_layout(&self, batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
        let old = batch.schema();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let name = field.name().as_str();
            if let Ok(index) = old.index_of(name)
                && old.field(index).data_type() == field.data_type()
            {
                columns.push(Arc::clone(batch.column(index)));
                continue;
            }
            let exact = self
                .hours_from
                .iter()
                .find(|(_, new)| *new == name)
                .and_then(|(old, _)| batch.column_by_name(old))
                .and_then(|column| column.as_primitive_opt::<TimestampMicrosecondType>())
                .ok_or_else(|| {
                    ArrowError::SchemaError(format!(
                        "layout {} of {} has {name}, and the file has nothing to make it from",
                        self.layout, self.table
                    ))
                })?;
            let hours = exact
                .unary::<_, TimestampMicrosecondType>(start_of_hour)
                .with_timezone("UTC");
            columns.push(Arc::new(hours));
        }
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
    }

    fn properties(
        &self,
        config: &LakeConfig,
        key: &str,
        metadata: Vec<KeyValue>,
    ) -> Result<WriterProperties, AnalyticsError> {
        let mut builder = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(config.zstd_level).map_err(|e| parquet_error(key, e))?,
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

    /// The key of a file of this table.
    pub fn key(&self, folder: &str, name: &FileName) -> String {
        format!("{}/{folder}/{}", self.table, name.render())
    }

    /// Writes `batch` (already in the table's order) as `<folder>/<name>`, atomically: a
    /// reader sees all of it or nothing (see `store.rs`).
    pub fn write(
        &self,
        config: &LakeConfig,
        folder: &str,
        name: &FileName,
        batch: &RecordBatch,
        metadata: Vec<KeyValue>,
    ) -> Result<String, AnalyticsError> {
        let key = self.key(folder, name);
        self.write_key(config, &key, batch, metadata)?;
        Ok(key)
    }

    fn write_key(
        &self,
        config: &LakeConfig,
        key: &str,
        batch: &RecordBatch,
        metadata: Vec<KeyValue>,
    ) -> Result<(), AnalyticsError> {
        let properties = self.properties(config, key, metadata)?;
        self.location.write(key, |body| {
            let mut writer = ArrowWriter::try_new(body, self.schema.clone(), Some(properties))
                .map_err(|e| parquet_error(key, e))?;
            writer.write(batch).map_err(|e| parquet_error(key, e))?;
            writer.into_inner().map_err(|e| parquet_error(key, e))
        })
    }

    /// Merges each folder's runs of small live files into one file per run (rows sorted
    /// again), and deletes files superseded longer than the grace period. Returns (files
    /// merged away, files deleted).
    pub fn compact(&self, config: &LakeConfig) -> Result<(u64, u64), AnalyticsError> {
        let now = SystemTime::now();
        let (mut merged, mut deleted) = (0, 0);
        for (folder, files) in self.all_files()? {
            // Superseded files whose union is old enough: no query can still be reading them.
            for file in &files {
                let superseder = files.iter().find(|g| file.name.within(&g.name));
                if let Some(superseder) = superseder
                    && now
                        .duration_since(superseder.modified)
                        .is_ok_and(|age| age >= config.compact_grace)
                {
                    self.location.delete(&file.key)?;
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
            let (mut file_batches, file_metadata) = self.read_file(&file.key)?;
            batches.append(&mut file_batches);
            // The footer of the highest range speaks for the union (a sink's mark).
            metadata = file_metadata;
        }
        let batch = arrow_select::concat::concat_batches(&self.schema, &batches)
            .map_err(|e| parquet_error(&run[0].key, e))?;
        let batch =
            sort_batch(&batch, &self.sort_columns).map_err(|e| parquet_error(&run[0].key, e))?;
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

    /// A file's rows and its footer's key-value metadata.
    pub fn read_file(
        &self,
        key: &str,
    ) -> Result<(Vec<RecordBatch>, Vec<KeyValue>), AnalyticsError> {
        match self.location.read(key)? {
            Contents::File(file) => decode(file, key),
            Contents::Memory(bytes) => decode(bytes, key),
        }
    }

    /// A file's footer key-value metadata only: the footer's bytes, not the rows.
    pub fn read_footer(&self, file: &LakeFile) -> Result<Vec<KeyValue>, AnalyticsError> {
        const FOOTER_TAIL: u64 = 8;
        let key = &file.key;
        let mut tail = self.location.read_tail(key, file.bytes, 64 << 10)?;
        if (tail.len() as u64) < FOOTER_TAIL || &tail[tail.len() - 4..] != b"PAR1" {
            return Err(parquet_error(
                key,
                "not a Parquet file (no PAR1 at its end)",
            ));
        }
        let length_at = tail.len() - 8;
        let metadata_len = u32::from_le_bytes(
            tail[length_at..length_at + 4]
                .try_into()
                .expect("four bytes"),
        ) as u64;
        if metadata_len + FOOTER_TAIL > tail.len() as u64 {
            tail = self
                .location
                .read_tail(key, file.bytes, metadata_len + FOOTER_TAIL)?;
        }
        let end = tail.len() - FOOTER_TAIL as usize;
        let start = end
            .checked_sub(metadata_len as usize)
            .ok_or_else(|| parquet_error(key, "footer longer than the file"))?;
        let metadata = ParquetMetaDataReader::decode_metadata(&tail[start..end])
            .map_err(|e| parquet_error(key, e))?;
        Ok(metadata
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default())
    }
}

/// The marker saying every file of `table` is of `layout`.
fn layout_marker(table: &str, layout: u32) -> String {
    format!("{table}/_layout/v{layout}")
}

/// The highest layout a marker among `listed` vouches for; 1 (no marker) for a table
/// written before layouts were numbered.
fn layout_of(table: &str, listed: &[Listed]) -> u32 {
    let prefix = format!("{table}/_layout/v");
    listed
        .iter()
        .filter_map(|file| file.key.strip_prefix(&prefix)?.parse().ok())
        .max()
        .unwrap_or(1)
}

/// The same column names and types in the same order (what a file read back keeps).
fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type())
}

fn by_folder(listed: Vec<Listed>) -> BTreeMap<String, Vec<LakeFile>> {
    let mut out: BTreeMap<String, Vec<LakeFile>> = BTreeMap::new();
    for file in listed {
        let mut parts = file.key.rsplitn(3, '/');
        let (Some(name), Some(folder)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(name) = FileName::parse(name) else {
            continue;
        };
        out.entry(folder.to_string()).or_default().push(LakeFile {
            name,
            bytes: file.bytes,
            modified: file.modified,
            key: file.key,
        });
    }
    for files in out.values_mut() {
        files.sort_by(|a, b| (&a.name.space, a.name.first).cmp(&(&b.name.space, b.name.first)));
    }
    out
}

fn live(folders: BTreeMap<String, Vec<LakeFile>>) -> Vec<LakeFile> {
    folders
        .into_values()
        .flat_map(|files| {
            let live: Vec<LakeFile> = files
                .iter()
                .filter(|f| !files.iter().any(|g| f.name.within(&g.name)))
                .cloned()
                .collect();
            live
        })
        .collect()
}

fn decode<R: ChunkReader + 'static>(
    reader: R,
    key: &str,
) -> Result<(Vec<RecordBatch>, Vec<KeyValue>), AnalyticsError> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| parquet_error(key, e))?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let reader = builder.build().map_err(|e| parquet_error(key, e))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parquet_error(key, e))?;
    Ok((batches, metadata))
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

pub(crate) fn parquet_error(key: &str, error: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Parquet {
        location: key.to_string(),
        reason: error.to_string(),
    }
}

/// Days since the Unix epoch of a time in microseconds (the `date` column, Date32).
pub(crate) fn day_of(micros: i64) -> i32 {
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// The folder of a day's files: `date=YYYY-MM-DD`.
pub(crate) fn date_folder(days: i32) -> String {
    format!("date={}", date_name(days))
}

/// The day number of `YYYY-MM-DD` (UTC), if it is a date of the proleptic Gregorian calendar.
pub(crate) fn day_number(text: &str) -> Option<i32> {
    let mut parts = text.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i32::try_from(era * 146_097 + doe - 719_468).ok()
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
    fn day_numbers_and_names_round_trip() {
        for day in (-719_468..800_000)
            .step_by(997)
            .chain([-1, 0, 1, 11_016, 20_605])
        {
            assert_eq!(day_number(&date_name(day)), Some(day), "{}", date_name(day));
        }
        assert_eq!(day_number("1970-01-01"), Some(0));
        assert_eq!(day_number("2000-02-29"), Some(11_016));
        for bad in [
            "2001-02-29",
            "2026-13-01",
            "2026-04-31",
            "2026-06",
            "june",
            "2026-06-00",
        ] {
            assert_eq!(day_number(bad), None, "{bad}");
        }
    }

    /// Every partition has exactly one owner, the process running worker p mod W (timely
    /// numbers process i's workers i·T..(i+1)·T), and a node alone owns them all.
    #[test]
    fn every_partition_has_one_owner_the_process_of_its_worker() {
        for processes in 1..=4 {
            for threads in 1..=3 {
                let shares: Vec<LakeShare> = (0..processes)
                    .map(|process| LakeShare::process(process, processes, threads))
                    .collect();
                for partition in 0..64u32 {
                    let owners: Vec<usize> = (0..processes)
                        .filter(|&process| shares[process].owns(partition))
                        .collect();
                    let worker = partition as usize % (processes * threads);
                    assert_eq!(
                        owners,
                        vec![worker / threads],
                        "{processes}×{threads} p{partition}"
                    );
                }
                let spaces: std::collections::BTreeSet<String> =
                    shares.iter().map(LakeShare::space).collect();
                assert_eq!(spaces.len(), processes, "one file sequence per process");
                assert!(shares[0].keeps_whole_lake());
                assert!(shares.iter().skip(1).all(|share| !share.keeps_whole_lake()));
            }
        }
        assert_eq!(LakeShare::process(0, 1, 4), LakeShare::Alone);
        assert_eq!(LakeShare::Alone.space(), "s");
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
        let parsed = FileName::parse(&name(3, 4).render());
        assert_eq!(parsed, Some(name(3, 4)));
    }
}
