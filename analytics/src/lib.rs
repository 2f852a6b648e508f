//! Canopy's analytics lake: the history as Parquet files analysts can query in SQL.
//!
//! ```text
//!  vote log   ─ranges─▶ votes/            date=YYYY-MM-DD/part-p0003-<first>-<last>.parquet
//!  sensor log ─ranges─▶ sensor_readings/  (the same, per sensor-log partition)
//!  tally dataflow  ─LakeViews──▶ tally_changes/    date=…/part-s-<n>-<n>.parquet
//!  features dataflow ─final windows─▶ window_features/
//!  vote record ─signed checkpoints─▶ checkpoints/
//!  store's audit trail, decision history ─after the last seq─▶ audit_trail/, decision_history/
//!  NOAA, World Bank, OSM files ─import_external─▶ weather_daily/, indicators/, regions/
//!                 ▼
//!  LakeSql: DataFusion, a read-only session per query (a clone of its reader's first),
//!  time and memory limits per query,
//!  capped scalar functions (`sql_caps.rs`), on a runtime of its own
//!  (all of it in a local folder or an S3 bucket prefix: `store.rs`)
//! ```
//!
//! See `lake.rs` for naming, atomic files and compaction, `votes.rs` for the tables copied
//! from logs (exactly once by range), `sinks.rs` for the tables fed by sinks (exactly once
//! by marks), `writer.rs` for what a running node does and `external/` for the imports of
//! other publishers' data.

#![deny(unsafe_code)]

mod columns;
pub use columns::TableLayout;
mod decisions;
mod error;
mod external;
mod import_report;
mod lake;
mod local_reads;
mod sinks;
mod sql;
mod sql_caps;
mod store;
mod store_logs;
mod trends;
mod votes;
mod writer;

pub use decisions::{DecisionLake, decision_schema};
pub use error::AnalyticsError;
pub use external::{ExternalSource, ImportOptions, RegionMap, import_external};
pub use import_report::{ImportReport, RowError};
pub use lake::{LakeConfig, LakeReader, LakeShare, TABLES};
pub use sinks::{
    CheckpointEntry, CheckpointLake, Checkpoints, ReleaseGate, SinkLake, SinkTable, TallyChange,
    TallyChangeLake, TallyChanges, WindowFeature, WindowFeatureLake, WindowFeatures,
};
pub use sql::{
    BatchEncoder, LakeQuery, LakeSql, MAX_SQL_THREADS, MAX_VALUE_BYTES, OutputFormat,
    PARTITIONS_PER_THREAD, QueryStream, SqlLimits, record_query, render, write_parquet,
};
pub use store::LakeLocation;
pub use store_logs::{
    AuditEntry, AuditTrail, AuditTrailLake, DecisionHistory, DecisionHistoryLake, HistoryEntry,
    StoreLog, StoreLogLake,
};
pub use trends::{TimeRange, TrendBucket, TrendsSubject, trend_points, trends_sql};
pub use votes::{
    LogLake, LogTable, ReadingLake, Readings, SyncCursor, SyncReport, VoteLake, Votes, sync_log,
    sync_readings, sync_votes, vote_schema,
};
pub use writer::{FinalWindows, LakeViews, LakeWriter, Published, WriterReport};
