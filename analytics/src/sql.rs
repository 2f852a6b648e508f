//! SQL over the lake: DataFusion with the lake's tables registered by name, read-only, each
//! query under a time and a memory limit.
//!
//! Every query gets a session of its own, cloned from one the reader's first query built,
//! and a memory pool of its own; its tables list their live files when the query is
//! planned, so files the sinks add show in the next query and files compaction superseded
//! never count twice.
//!
//! ```text
//!  caller (API, PostgreSQL port)            SQL runtime (≤ 2 threads, lower priority)
//!  execute ──spawn──────────────────────▶   plan, run: batches ─▶ channel (2 batches)
//!  QueryStream ◀── batches ─────────────    stops at the deadline, or when the reader
//!   checks the deadline on every poll        drops the stream; `finished()` resolves then
//! ```
//!
//! A reader that stops reading cannot hold a query past its deadline: the query runs on
//! its own task, which stops at the deadline whether or not anyone polls the stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, CachedFileMetadata, FileMetadataCache, FileStatisticsCache,
};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::cache::{SchemaFingerprint, TableScopedPath};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::create_lex_ordering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, col};
use datafusion_datasource::compute_all_files_statistics;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore};
use tokio::sync::{mpsc, oneshot, watch};

use crate::AnalyticsError;
use crate::columns::TableLayout;
use crate::external::{Indicators, Regions, WeatherDaily};
use crate::lake::{LakeReader, TableFiles};
use crate::local_reads::LocalReads;
use crate::sinks::{Checkpoints, TallyChanges, WindowFeatures};
use crate::store::LakeLocation;
use crate::store_logs::{AuditTrail, DecisionHistory};
use crate::votes::{Readings, Votes};

/// What one query may take.
#[derive(Clone, Copy, Debug)]
pub struct SqlLimits {
    /// From planning to the last row.
    pub timeout: Duration,
    /// Memory for sorts, joins and aggregations; beyond it the query fails.
    pub memory_bytes: usize,
    /// Threads a query's scans and operators fan out to (at most [`MAX_SQL_THREADS`] run
    /// at once; the plan is cut into at least [`PARTITIONS_PER_THREAD`] partitions each).
    pub target_partitions: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 30,
            target_partitions: 2,
        }
    }
}

/// One value a scalar function returns (`lpad`, `repeat`, `concat`, …) may hold this many
/// bytes; see `sql_caps.rs`.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// The most threads analysts' queries take from the machine, whatever `target_partitions`.
pub const MAX_SQL_THREADS: usize = 2;

/// A query's plan is cut into at least this many partitions per thread: an aggregation's
/// hash tables are then a quarter of the size for two threads, and a thread that finishes
/// its share early takes another. Measured with `canopy-bench analytics --votes 1000000
/// --repeat 5` (2 threads, two runs each): DuckDB's time over ours went from 0.93–0.95 to
/// 1.08–1.12 for turnout, 1.01–1.08 to 1.22–1.24 for option share, and 0.82–0.88 to
/// 0.91–0.94 for top decisions with 4 partitions instead of 2; at 50 M votes the five
/// queries stayed within the runs' noise (turnout 6.4–7.2 s with 4, 6.4–6.5 s with 2).
pub const PARTITIONS_PER_THREAD: usize = 2;

/// SQL over a lake, as one kind of reader sees it (an analyst's view unless
/// [`as_reader`](LakeSql::as_reader) says otherwise).
#[derive(Clone, Debug)]
pub struct LakeSql {
    location: LakeLocation,
    limits: SqlLimits,
    reader: LakeReader,
    /// Started on the first query, shared by every clone.
    runtime: Arc<std::sync::OnceLock<SqlRuntime>>,
    /// What earlier queries read of the files, shared by every clone and by every
    /// reader's session (each reader has a session of its own, and would otherwise read
    /// it all again).
    caches: FileCaches,
    /// Each reader's session as its first query built it, shared by every clone: a query
    /// clones it rather than build DataFusion's functions, ours and the tables again.
    sessions: Arc<std::sync::Mutex<Vec<ReaderSession>>>,
}

/// A reader's session as its first query built it.
type ReaderSession = (LakeReader, Arc<SessionState>);

/// The most memory the lake's cached Parquet footers take (LRU beyond it).
const FOOTER_CACHE_BYTES: usize = 64 << 20;

/// The most memory the lake's cached file statistics take (LRU beyond it).
const STATISTICS_CACHE_BYTES: usize = 16 << 20;

/// An entry of either holds only while the file's size and modification time are those it
/// was read with (a file rewritten under its name, as a new layout does, has a new time).
#[derive(Clone)]
struct FileCaches {
    /// Parquet footers and page indexes.
    footers: Arc<FileMetadataCache>,
    /// Each file's row count and per-column bounds, which planning needs (a join's build
    /// side, `COUNT(*)` from the footers) and would otherwise work out from every footer
    /// for every query.
    statistics: Arc<FileStatisticsCache>,
}

impl Default for FileCaches {
    fn default() -> Self {
        Self {
            footers: Arc::new(
                DefaultCache::new(FOOTER_CACHE_BYTES).with_name("canopy-lake-footers"),
            ),
            statistics: Arc::new(
                DefaultCache::new(STATISTICS_CACHE_BYTES).with_name("canopy-lake-statistics"),
            ),
        }
    }
}

impl std::fmt::Debug for FileCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileCaches")
    }
}

/// The threads queries run on, apart from the caller's (the API's latency holds while
/// analysts scan).
#[derive(Debug)]
struct SqlRuntime(Option<tokio::runtime::Runtime>);

impl SqlRuntime {
    fn start(threads: usize) -> Result<Self, AnalyticsError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(threads * 4)
            .thread_name("canopy-sql")
            .on_thread_start(lower_thread_priority)
            .enable_all()
            .build()
            .map_err(|e| AnalyticsError::Sql(format!("starting the SQL threads: {e}")))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }
}

impl Drop for SqlRuntime {
    fn drop(&mut self) {
        // Dropped from async code too (a node's state): never wait for the threads.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The scheduler favours the API's threads when both want the CPU: at nice 19 a query
/// thread yields a core to a woken API thread at once (tested by `/healthz` p99 under
/// heavy SQL in node/tests/resource_limits.rs).
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
    }
}

fn sql_error(error: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Sql(error.to_string())
}

/// A refusal of `sql_caps`, however deeply DataFusion wrapped it (arrow's and its own
/// error types box it on the way out of a kernel).
fn sql_limit_in(error: &DataFusionError) -> Option<AnalyticsError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(AnalyticsError::SqlLimit(reason)) = error.downcast_ref::<AnalyticsError>() {
            return Some(AnalyticsError::SqlLimit(reason.clone()));
        }
        cause = error.source();
    }
    None
}

/// A file missing when a scan came to read it, however deeply wrapped: the listing at
/// planning named it, and compaction deleted it since (another process's, on a shared lake).
fn file_gone_in(error: &DataFusionError) -> Option<AnalyticsError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        let gone = match error.downcast_ref::<object_store::Error>() {
            Some(object_store::Error::NotFound { .. }) => true,
            _ => error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound),
        };
        if gone {
            return Some(AnalyticsError::FileGone(error.to_string()));
        }
        cause = error.source();
    }
    None
}

/// Sorts DataFusion's errors into the codes a caller can act on.
fn classify(error: DataFusionError) -> AnalyticsError {
    if let Some(refusal) = sql_limit_in(&error) {
        return refusal;
    }
    if let Some(gone) = file_gone_in(&error) {
        return gone;
    }
    match error.find_root() {
        DataFusionError::ResourcesExhausted(reason) => AnalyticsError::QueryMemory(reason.clone()),
        // The lake's own failures while a scan listed or read files keep their codes.
        DataFusionError::External(inner) if inner.downcast_ref::<AnalyticsError>().is_some() => {
            match inner.downcast_ref::<AnalyticsError>() {
                Some(AnalyticsError::Store { location, reason }) => AnalyticsError::Store {
                    location: location.clone(),
                    reason: reason.clone(),
                },
                Some(AnalyticsError::Parquet { location, reason }) => AnalyticsError::Parquet {
                    location: location.clone(),
                    reason: reason.clone(),
                },
                Some(&AnalyticsError::OldLayout {
                    table,
                    found,
                    wanted,
                }) => AnalyticsError::OldLayout {
                    table,
                    found,
                    wanted,
                },
                _ => AnalyticsError::Sql(inner.to_string()),
            }
        }
        DataFusionError::ObjectStore(inner) => AnalyticsError::Store {
            location: "the lake".into(),
            reason: inner.to_string(),
        },
        root => {
            let text = root.to_string();
            // SQLOptions' refusals: "DDL not supported: …", "DML not supported: …",
            // "Statement not supported: …".
            if text.contains("DDL not supported")
                || text.contains("DML not supported")
                || text.contains("Statement not supported")
            {
                AnalyticsError::SqlNotReadOnly(text)
            } else {
                AnalyticsError::Sql(text)
            }
        }
    }
}

impl LakeSql {
    /// SQL over the lake at `location` (its tables may not exist yet: they are empty).
    pub fn new(location: impl Into<LakeLocation>, limits: SqlLimits) -> Self {
        Self {
            location: location.into(),
            limits,
            reader: LakeReader::default(),
            runtime: Arc::default(),
            caches: FileCaches::default(),
            sessions: Arc::default(),
        }
    }

    /// The same lake as `reader` sees it: the same limits and query threads, and only the
    /// tables `reader` may read.
    pub fn as_reader(&self, reader: LakeReader) -> Self {
        Self {
            reader,
            ..self.clone()
        }
    }

    /// Who this lake's queries are for.
    pub fn reader(&self) -> LakeReader {
        self.reader
    }

    fn runtime(&self) -> Result<tokio::runtime::Handle, AnalyticsError> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime.handle().clone());
        }
        let threads = self.limits.target_partitions.clamp(1, MAX_SQL_THREADS);
        let started = SqlRuntime::start(threads)?;
        // Two first queries at once: one runtime wins, the other shuts down unused.
        Ok(self.runtime.get_or_init(|| started).handle().clone())
    }

    /// SQL over the lake at `location` with the default limits.
    pub async fn open(location: impl Into<LakeLocation>) -> Result<Self, AnalyticsError> {
        Ok(Self::new(location, SqlLimits::default()))
    }

    pub fn location(&self) -> &LakeLocation {
        &self.location
    }

    pub fn limits(&self) -> SqlLimits {
        self.limits
    }

    /// The partitions a query's plan is cut into: `target_partitions`, and at least
    /// [`PARTITIONS_PER_THREAD`] for each thread the query runs on.
    fn partitions(&self) -> usize {
        let threads = self.limits.target_partitions.clamp(1, MAX_SQL_THREADS);
        self.limits
            .target_partitions
            .max(threads * PARTITIONS_PER_THREAD)
    }

    /// A session with the reader's tables registered, for planning: a query runs in
    /// [`Self::query_runtime`], with a memory pool of its own.
    pub fn session(&self) -> Result<SessionContext, AnalyticsError> {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let built = sessions
            .iter()
            .find(|(reader, _)| *reader == self.reader)
            .map(|(_, state)| Arc::clone(state));
        let state = match built {
            Some(state) => state,
            None => {
                let state = Arc::new(self.build_session()?);
                sessions.push((self.reader, Arc::clone(&state)));
                state
            }
        };
        drop(sessions);
        Ok(SessionContext::new_with_state(SessionState::clone(&state)))
    }

    /// Where a query planned in `session` runs: the session's object stores, file caches
    /// and spill files, and a memory pool of its own (the limit is each query's, however
    /// many run at once).
    fn query_runtime(&self, session: &SessionContext) -> Arc<RuntimeEnv> {
        let shared = session.runtime_env();
        Arc::new(RuntimeEnv {
            memory_pool: Arc::new(GreedyMemoryPool::new(self.limits.memory_bytes)),
            disk_manager: Arc::clone(&shared.disk_manager),
            cache_manager: Arc::clone(&shared.cache_manager),
            object_store_registry: Arc::clone(&shared.object_store_registry),
        })
    }

    /// What a reader's queries start from: DataFusion's functions with ours in place of
    /// the uncapped ones, the settings, and the reader's tables.
    fn build_session(&self) -> Result<SessionState, AnalyticsError> {
        // Planning takes no memory from the pool; a query's own pool is `query_runtime`'s.
        let runtime = RuntimeEnvBuilder::new()
            .with_object_list_cache_limit(0)
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory_bytes)))
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(Arc::clone(&self.caches.footers)))
                    .with_file_statistics_cache(Some(Arc::clone(&self.caches.statistics)))
                    .with_file_statistics_cache_limit(STATISTICS_CACHE_BYTES),
            )
            .build_arc()
            .map_err(sql_error)?;
        let mut config = SessionConfig::new()
            .with_target_partitions(self.partitions())
            .with_information_schema(true);
        // Filters evaluated while decoding (late materialisation): a query for one
        // decision decodes the other columns of its rows only, and the page index of the
        // sorted `decision_id` skips the pages of other decisions.
        let options = config.options_mut();
        options.execution.parquet.pushdown_filters = true;
        options.execution.parquet.reorder_filters = true;
        // A join's build side would otherwise become a filter on every row of the probe
        // side's scan: measured, it made the turnout query (votes joined with all the
        // decisions, which filter nothing out) a fifth slower.
        options.optimizer.enable_join_dynamic_filter_pushdown = false;
        // A partial aggregation first looks at this many rows per partition, then goes on
        // passing rows through unaggregated if nearly every row was a group of its own. The
        // lake's distinct counts (a voter per decision, per day and region) are such groups:
        // probing 100 k rows (the default) built a table of ~190 k groups only to drop it.
        // Measured with `canopy-bench analytics --votes 1000000 --repeat 5`: turnout 0.93 of
        // DuckDB's speed → 1.03–1.09, top decisions 0.82–0.83 → 0.85–0.92.
        options
            .execution
            .skip_partial_aggregation_probe_rows_threshold = 10_000;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let context = SessionContext::new_with_state(state);
        crate::sql_caps::cap_functions(
            &context,
            crate::sql_caps::ValueCaps {
                max_value_bytes: MAX_VALUE_BYTES.min(self.limits.memory_bytes),
                max_call_bytes: self.limits.memory_bytes,
            },
        );
        match self.location.object_store() {
            Some((url, store)) => {
                context.register_object_store(url, store);
            }
            None => {
                context.register_object_store(
                    ObjectStoreUrl::local_filesystem().as_ref(),
                    Arc::new(LocalReads::default()),
                );
            }
        }
        for name in self.reader.tables() {
            let table = self.table(name);
            context.register_table(name, table).map_err(sql_error)?;
        }
        Ok(context.state())
    }

    fn table(&self, name: &'static str) -> Arc<dyn TableProvider> {
        fn declared<T: TableLayout>() -> (SchemaRef, Vec<String>, u32) {
            let schema = T::schema();
            let sort = sort_names(&schema, &T::sort_columns());
            (schema, sort, T::LAYOUT)
        }
        let (schema, sort, layout) = match name {
            "votes" => declared::<Votes>(),
            "decisions" => (crate::decision_schema(), vec!["decision_id".to_string()], 1),
            "sensor_readings" => declared::<Readings>(),
            "tally_changes" => declared::<TallyChanges>(),
            "window_features" => declared::<WindowFeatures>(),
            "audit_trail" => declared::<AuditTrail>(),
            "decision_history" => declared::<DecisionHistory>(),
            "weather_daily" => declared::<WeatherDaily>(),
            "indicators" => declared::<Indicators>(),
            "regions" => declared::<Regions>(),
            _ => declared::<Checkpoints>(),
        };
        Arc::new(LakeTable {
            fingerprint: Arc::new(SchemaFingerprint::from_schema(&schema)),
            files: TableFiles {
                location: self.location.clone(),
                table: name,
                schema: schema.clone(),
                sort_columns: Vec::new(),
                plain_columns: Vec::new(),
                layout,
                hours_from: &[],
            },
            schema,
            sort,
        })
    }
}

/// What a reader of the lake asks of it: one read-only statement at a time. The API and
/// the PostgreSQL port hold the lake through this face; [`LakeSql`] is the one behind it.
#[async_trait::async_trait]
pub trait LakeQuery: Send + Sync + std::fmt::Debug {
    /// Plans one read-only statement (no DDL, no DML, no `SET`) and starts it. The rows
    /// stream; the stream ends with `query_timeout` once the time limit has passed, and the
    /// query stops then even if nobody reads (see [`QueryStream::finished`]).
    async fn execute(&self, sql: &str) -> Result<QueryStream, AnalyticsError>;

    /// Runs one read-only statement and returns all its rows.
    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, AnalyticsError> {
        Ok(self.query_with_schema(sql).await?.1)
    }

    /// Runs one read-only statement and returns its schema and all its rows.
    async fn query_with_schema(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), AnalyticsError> {
        let mut stream = self.execute(sql).await?;
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            out.push(batch?);
        }
        Ok((stream.schema(), out))
    }

    /// The types `sql`'s `$1`, `$2`, … placeholders take from where they stand (`None`
    /// where nothing tells), for clients that send parameters untyped; empty when the
    /// statement does not plan (running it says why).
    async fn parameter_types(&self, _sql: &str) -> Vec<Option<arrow_schema::DataType>> {
        Vec::new()
    }

    /// The same lake as `reader` sees it (only the tables it may read).
    fn for_reader(&self, reader: LakeReader) -> Arc<dyn LakeQuery>;
}

#[async_trait::async_trait]
impl LakeQuery for LakeSql {
    fn for_reader(&self, reader: LakeReader) -> Arc<dyn LakeQuery> {
        Arc::new(self.as_reader(reader))
    }

    async fn parameter_types(&self, sql: &str) -> Vec<Option<arrow_schema::DataType>> {
        let Ok(context) = self.session() else {
            return Vec::new();
        };
        // Planning only: nothing runs, and DataFusion infers each placeholder's type from
        // the column or operator it meets.
        let state = context.state();
        let planning = state.create_logical_plan(sql);
        let Ok(Ok(plan)) = tokio::time::timeout(self.limits.timeout, planning).await else {
            return Vec::new();
        };
        let Ok(types) = plan.get_parameter_types() else {
            return Vec::new();
        };
        let count = types
            .keys()
            .filter_map(|name| name.strip_prefix('$')?.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        (1..=count)
            .map(|n| types.get(&format!("${n}")).cloned().flatten())
            .collect()
    }

    async fn execute(&self, sql: &str) -> Result<QueryStream, AnalyticsError> {
        let timeout = self.limits.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let runtime = self.runtime()?;
        let (planned_tx, planned) = oneshot::channel();
        let (rows_tx, rows) = mpsc::channel(2);
        let (running, finished) = watch::channel(());
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed_in_task = Arc::clone(&failed);
        let lake = self.clone();
        let sql = sql.to_string();
        let task = runtime.spawn(async move {
            // Held until the query ends, however it ends: `finished()` waits for its drop.
            let _running = running;
            let planning = tokio::time::timeout_at(deadline, lake.plan(&sql));
            let stream = match planning.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    let _ = planned_tx.send(Err(error));
                    return;
                }
                Err(_) => {
                    let _ = planned_tx.send(Err(AnalyticsError::QueryTimeout(timeout)));
                    return;
                }
            };
            if planned_tx.send(Ok(stream.schema())).is_ok() {
                pump(stream, rows_tx, deadline, timeout, &failed_in_task).await;
            }
        });
        let schema = match tokio::time::timeout_at(deadline, planned).await {
            Ok(Ok(planned)) => planned,
            Ok(Err(_)) => Err(AnalyticsError::Sql("the query's task ended early".into())),
            Err(_) => Err(AnalyticsError::QueryTimeout(timeout)),
        };
        let schema = match schema {
            Ok(schema) => schema,
            Err(error) => {
                task.abort();
                return Err(error);
            }
        };
        Ok(QueryStream {
            schema,
            rows,
            deadline,
            wake_at_deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
            done: false,
            task: task.abort_handle(),
            finished,
            failed,
        })
    }
}

impl LakeSql {
    /// Plans `sql` read-only and starts it (on the SQL runtime).
    async fn plan(
        &self,
        sql: &str,
    ) -> Result<datafusion::execution::SendableRecordBatchStream, AnalyticsError> {
        let context = self.session()?;
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = context
            .sql_with_options(sql, read_only)
            .await
            .map_err(classify)?;
        let task = frame.task_ctx().with_runtime(self.query_runtime(&context));
        let plan = frame.create_physical_plan().await.map_err(classify)?;
        datafusion::physical_plan::execute_stream(plan, Arc::new(task)).map_err(classify)
    }
}

/// Counts an analyst's statement in the SQL metrics: refused at planning (`ok` false) or
/// finished.
pub fn record_query(interface: &'static str, started: std::time::Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("canopy_sql_queries_total", "interface" => interface, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("canopy_sql_query_duration_seconds", "interface" => interface)
        .record(started.elapsed().as_secs_f64());
}

/// Moves a query's batches to its reader until the query ends, the deadline passes or the
/// reader leaves; waits for room no longer than the deadline.
async fn pump(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    rows: mpsc::Sender<Result<RecordBatch, AnalyticsError>>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    failed: &std::sync::atomic::AtomicBool,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline) => None,
            _ = rows.closed() => return,
            next = stream.next() => Some(next),
        };
        let item = match next {
            None => Err(AnalyticsError::QueryTimeout(timeout)),
            Some(None) => return,
            Some(Some(batch)) => batch.map_err(classify),
        };
        let last = item.is_err();
        if last {
            failed.store(true, std::sync::atomic::Ordering::Release);
        }
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline) => return,
            sent = rows.send(item) => if sent.is_err() { return },
        }
        if last {
            return;
        }
    }
}

fn sort_names(schema: &SchemaRef, columns: &[usize]) -> Vec<String> {
    columns
        .iter()
        .map(|&c| schema.field(c).name().clone())
        .collect()
}

/// A query's rows as they come, under its deadline. Dropping it cancels the query.
pub struct QueryStream {
    schema: SchemaRef,
    rows: mpsc::Receiver<Result<RecordBatch, AnalyticsError>>,
    deadline: tokio::time::Instant,
    wake_at_deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    done: bool,
    task: tokio::task::AbortHandle,
    finished: watch::Receiver<()>,
    /// Set when the query ended in an error (its timeout included) after planning.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for QueryStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl QueryStream {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Counts an analyst's statement, started at `started`, in the SQL metrics under
    /// `interface` (`http`, `pgwire`) once it stops computing.
    pub fn observe(&self, interface: &'static str, started: std::time::Instant) {
        let finished = self.finished();
        let failed = Arc::clone(&self.failed);
        tokio::spawn(async move {
            finished.await;
            let failed = failed.load(std::sync::atomic::Ordering::Acquire);
            record_query(interface, started, !failed);
        });
    }

    /// Resolves once the query has stopped computing: its last batch handed over (rows may
    /// still wait in the stream), its deadline passed, or the stream dropped. A caller that
    /// limits queries running at once frees the slot then, not when a slow reader is done.
    pub fn finished(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut finished = self.finished.clone();
        async move { while finished.changed().await.is_ok() {} }
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, AnalyticsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // Checked first, every time: a stream that is always ready must stop too.
        if tokio::time::Instant::now() >= this.deadline {
            this.done = true;
            this.task.abort();
            return Poll::Ready(Some(Err(AnalyticsError::QueryTimeout(this.timeout))));
        }
        if let Poll::Ready(item) = this.rows.poll_recv(cx) {
            if !matches!(item, Some(Ok(_))) {
                this.done = true;
            }
            return Poll::Ready(item);
        }
        if this.wake_at_deadline.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(AnalyticsError::QueryTimeout(this.timeout))));
        }
        Poll::Pending
    }
}

/// A table of the lake: at each scan, its live files (see the module's docs).
#[derive(Debug)]
struct LakeTable {
    files: TableFiles,
    schema: SchemaRef,
    sort: Vec<String>,
    /// The schema as the statistics cache tells schemas apart.
    fingerprint: Arc<SchemaFingerprint>,
}

/// How many files' statistics a scan works out at once (those not cached: on an object
/// store, a footer request each).
const STATISTICS_CONCURRENCY: usize = 32;

impl LakeTable {
    /// A file to scan, with its row count and column bounds: the lake's cached ones while
    /// the file is the one they were worked out from, else from its footer.
    async fn file_with_statistics(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        format: &ParquetFormat,
        cache: Option<&Arc<FileStatisticsCache>>,
        meta: ObjectMeta,
    ) -> datafusion::error::Result<PartitionedFile> {
        let key = TableScopedPath {
            table: None,
            path: meta.location.clone(),
        };
        let cached = cache
            .and_then(|cache| cache.get(&key))
            .filter(|cached| cached.is_valid_for(&meta, &self.fingerprint));
        let statistics = match cached {
            Some(cached) => cached.statistics,
            None => {
                let statistics = Arc::new(
                    format
                        .infer_stats(state, store, self.schema.clone(), &meta)
                        .await?,
                );
                if let Some(cache) = cache {
                    cache.put(
                        &key,
                        CachedFileMetadata::new(
                            meta.clone(),
                            Arc::clone(&self.fingerprint),
                            Arc::clone(&statistics),
                            None,
                        ),
                    );
                }
                statistics
            }
        };
        Ok(PartitionedFile::new_from_meta(meta).with_statistics(statistics))
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Parquet statistics prune row groups; DataFusion still applies every filter.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // A file holds one day's rows, the day its folder names: a filter on `date` that
        // rules the day out rules the whole folder out, unlisted.
        let days = DayRange::of(filters);
        let live = self
            .files
            .live_files_async(&|folder| days.admits_folder(folder))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if live.is_empty() {
            let schema = match projection {
                Some(columns) => Arc::new(self.schema.project(columns)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        // The files as listed, each with its statistics: DataFusion's own listing would ask
        // the store about every file again, one request each.
        let root = self
            .files
            .location
            .query_root()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let store = state.runtime_env().object_store(&root.url)?;
        let format = ParquetFormat::default();
        let cache = state.runtime_env().cache_manager.get_file_statistic_cache();
        let files: Vec<PartitionedFile> = futures::stream::iter(live)
            .map(|file| {
                let meta = ObjectMeta {
                    location: root.path(&file.key),
                    last_modified: file.modified.into(),
                    size: file.bytes,
                    e_tag: None,
                    version: None,
                };
                self.file_with_statistics(state, &store, &format, cache.as_ref(), meta)
            })
            .buffered(STATISTICS_CONCURRENCY)
            .try_collect()
            .await?;
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());
        let (groups, statistics) =
            compute_all_files_statistics(groups, self.schema.clone(), true, false)?;
        let sort = self
            .sort
            .iter()
            .map(|c| col(c.as_str()).sort(true, false))
            .collect::<Vec<_>>();
        let ordering = create_lex_ordering(&self.schema, &[sort], state.execution_props())?;
        let config = FileScanConfigBuilder::new(
            root.url,
            format.file_source(TableSchema::from(self.schema.clone())),
        )
        .with_file_groups(groups)
        .with_statistics(statistics)
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .with_output_ordering(ordering)
        .build();
        format.create_physical_plan(state, config).await
    }
}

/// The days a query's filters on the `date` column leave, inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DayRange {
    first: i32,
    last: i32,
}

impl DayRange {
    /// The conjunction of `date = d`, `date < d`, `date <= d`, `date > d`, `date >= d`
    /// (either side) and `date BETWEEN a AND b` among `filters`; any other filter leaves
    /// every day (DataFusion applies all of them to the rows anyway).
    fn of(filters: &[Expr]) -> Self {
        use datafusion::logical_expr::utils::split_conjunction;
        let mut range = DayRange {
            first: i32::MIN,
            last: i32::MAX,
        };
        for filter in filters {
            for conjunct in split_conjunction(filter) {
                range = range.and(Self::of_one(conjunct));
            }
        }
        range
    }

    fn and(self, other: Self) -> Self {
        Self {
            first: self.first.max(other.first),
            last: self.last.min(other.last),
        }
    }

    fn of_one(expr: &Expr) -> Self {
        use datafusion::logical_expr::{Between, BinaryExpr, Operator};
        let all = DayRange {
            first: i32::MIN,
            last: i32::MAX,
        };
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (day, op) = match (date_column(left), day_literal(right)) {
                    (true, Some(day)) => (day, *op),
                    _ => match (day_literal(left), date_column(right)) {
                        (Some(day), true) => match op.swap() {
                            Some(swapped) => (day, swapped),
                            None => return all,
                        },
                        _ => return all,
                    },
                };
                match op {
                    Operator::Eq => DayRange {
                        first: day,
                        last: day,
                    },
                    Operator::Lt => DayRange {
                        last: day.saturating_sub(1),
                        ..all
                    },
                    Operator::LtEq => DayRange { last: day, ..all },
                    Operator::Gt => DayRange {
                        first: day.saturating_add(1),
                        ..all
                    },
                    Operator::GtEq => DayRange { first: day, ..all },
                    _ => all,
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if date_column(expr) => match (day_literal(low), day_literal(high)) {
                (Some(first), Some(last)) => DayRange { first, last },
                _ => all,
            },
            _ => all,
        }
    }

    /// Whether a table's folder (`date=YYYY-MM-DD`) is a day in the range; folders that
    /// are not a day's are always read (`decisions/snapshot/`, the imports'
    /// `<table>/import/`, whose rows span many days).
    fn admits_folder(&self, folder: &str) -> bool {
        let day = folder
            .strip_prefix("date=")
            .and_then(crate::lake::day_number);
        day.is_none_or(|day| self.first <= day && day <= self.last)
    }
}

fn date_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(column) if column.name == "date")
}

fn day_literal(expr: &Expr) -> Option<i32> {
    use datafusion::scalar::ScalarValue;
    match expr {
        Expr::Literal(ScalarValue::Date32(Some(day)), _) => Some(*day),
        Expr::Literal(ScalarValue::Utf8(Some(text)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(text)), _)
        | Expr::Literal(ScalarValue::LargeUtf8(Some(text)), _) => crate::lake::day_number(text),
        _ => None,
    }
}

/// How `canopy sql` prints results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    /// One JSON object per line.
    Json,
}

/// Renders query results for people (a table) or programs (CSV with a header, JSON lines).
pub fn render(batches: &[RecordBatch], format: OutputFormat) -> Result<Vec<u8>, AnalyticsError> {
    use datafusion::arrow::{csv, json, util::pretty};
    let mut out = Vec::new();
    match format {
        OutputFormat::Table => {
            let table = pretty::pretty_format_batches(batches).map_err(sql_error)?;
            out.extend_from_slice(format!("{table}\n").as_bytes());
        }
        OutputFormat::Csv => {
            let mut writer = csv::WriterBuilder::new().with_header(true).build(&mut out);
            for batch in batches {
                writer.write(batch).map_err(sql_error)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = json::LineDelimitedWriter::new(&mut out);
            for batch in batches {
                writer.write(batch).map_err(sql_error)?;
            }
            writer.finish().map_err(sql_error)?;
        }
    }
    Ok(out)
}

/// Encodes a result batch by batch, for a response that streams: JSON lines, or CSV whose
/// header comes with the first batch.
#[derive(Debug)]
pub struct BatchEncoder {
    format: OutputFormat,
    header_written: bool,
}

impl BatchEncoder {
    /// `Csv` or `Json` (a table cannot stream: its column widths depend on every row).
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            header_written: false,
        }
    }

    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, AnalyticsError> {
        use datafusion::arrow::{csv, json};
        let mut out = Vec::new();
        match self.format {
            OutputFormat::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .build(&mut out);
                writer.write(batch).map_err(sql_error)?;
                self.header_written = true;
            }
            OutputFormat::Json | OutputFormat::Table => {
                let mut writer = json::LineDelimitedWriter::new(&mut out);
                writer.write(batch).map_err(sql_error)?;
                writer.finish().map_err(sql_error)?;
            }
        }
        Ok(out)
    }
}

/// Writes query results as one Parquet file (zstd), for tools that read Parquet.
pub fn write_parquet(
    batches: &[RecordBatch],
    schema: SchemaRef,
    out: impl std::io::Write + Send,
) -> Result<(), AnalyticsError> {
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(out, schema, Some(properties)).map_err(sql_error)?;
    for batch in batches {
        writer.write(batch).map_err(sql_error)?;
    }
    writer.close().map_err(sql_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::LakeConfig;
    use crate::sinks::{TallyChange, TallyChangeLake};

    fn change(offset: u64) -> TallyChange {
        TallyChange {
            decision_id: "d".into(),
            option: 0,
            component: "democratic",
            count: offset as i64,
            weight_millionths: offset as i64,
            as_of_partition: 0,
            as_of_offset: offset,
            published_at: 1_780_272_000_000_000,
        }
    }

    /// A join whose build side holds `rows` keys in memory while its rows stream.
    fn join_of(rows: u64) -> String {
        format!(
            "SELECT a.value FROM generate_series(1, {rows}) a \
             JOIN generate_series(1, {rows}) b ON a.value = b.value"
        )
    }

    /// The memory limit binds each query, and each query only: a query over it is refused
    /// with `query_memory_exceeded`, and two queries that each fit run side by side even
    /// when together they take more than the limit (the sessions are clones of one, but
    /// their memory pools are not shared).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_memory_limit_is_each_querys_own() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SqlLimits {
            memory_bytes: 16 << 20,
            target_partitions: 1,
            ..SqlLimits::default()
        };
        let sql = LakeSql::new(dir.path().to_path_buf(), limits);
        // The smallest join (rows doubling) the limit refuses: half of it takes more than
        // half the limit, as a hash table's memory doubles with its keys.
        let mut rows = 1u64 << 14;
        let refused = loop {
            assert!(rows < 1 << 26, "no join up to {rows} rows was refused");
            match sql.query(&join_of(rows)).await {
                Ok(_) => rows *= 2,
                Err(error) => {
                    assert_eq!(error.code(), "query_memory_exceeded", "{error}");
                    break rows;
                }
            }
        };
        let fits = join_of(refused / 2);
        // The first holds its build side while its rows wait for a reader.
        let mut first = sql.execute(&fits).await.unwrap();
        let mut both = first.next().await.unwrap().unwrap().num_rows() as u64;
        let mut second = sql.execute(&fits).await.unwrap();
        match second.next().await.unwrap() {
            Ok(batch) => both += batch.num_rows() as u64,
            Err(error) => panic!("the second query, beside the first: {error}"),
        }
        for stream in [&mut first, &mut second] {
            while let Some(batch) = stream.next().await {
                both += batch.unwrap().num_rows() as u64;
            }
        }
        assert_eq!(both, refused, "every row of both joins");
    }

    /// A file a query listed and then found gone (another process's compaction deleted it
    /// after its grace period) is a retryable `lake_file_gone`, not a panic or a bare error.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_deleted_under_a_query_is_a_retryable_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = LakeConfig {
            min_group_voters: 1,
            ..LakeConfig::new(dir.path().to_path_buf())
        };
        let mut lake = TallyChangeLake::open(config).unwrap();
        // Files larger than the footer DataFusion fetches at planning, so their rows are
        // read only when the query runs: random decision ids, which do not compress.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for file in 1..=2 {
            let rows = (0..100_000u64)
                .map(|n| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    TallyChange {
                        decision_id: format!("{state:016x}{:016x}", state.rotate_left(29)),
                        as_of_offset: file * 1_000_000 + n,
                        ..change(file)
                    }
                })
                .collect();
            lake.append(rows).unwrap();
        }
        let sql = LakeSql::new(dir.path().to_path_buf(), SqlLimits::default());
        let context = sql.session().unwrap();
        let plan = context
            .sql("SELECT COUNT(DISTINCT decision_id) FROM tally_changes")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let files = TableFiles::of::<TallyChanges>(dir.path().to_path_buf().into(), Vec::new());
        let victim = files.live_files().unwrap().remove(0);
        std::fs::remove_file(dir.path().join(&victim.key)).unwrap();
        let error = datafusion::physical_plan::collect(plan, context.task_ctx())
            .await
            .unwrap_err();
        let error = classify(error);
        assert_eq!(error.code(), "lake_file_gone", "{error}");

        // The next query lists the files again.
        let rows = sql
            .query("SELECT COUNT(*) FROM tally_changes")
            .await
            .unwrap();
        assert_eq!(rows[0].num_rows(), 1);
    }
}
