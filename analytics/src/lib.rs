//! Canopy's analytics lake: the history as Parquet files analysts can query.
//!
//! ```text
//!  VoteLog partition p ─read in ranges─▶ VoteLake::write_range(p, records)
//!     one file per (date of cast_at, range):
//!     <root>/votes/date=2026-06-01/part-p0003-00000000000000000000-00000000000000004095.parquet
//!     rows sorted by (decision_id, log_offset), zstd, the voter only as its commitment
//! ```
//!
//! **Exactly once, without a side record.** A file's name is the log range it holds, and its
//! content is a function of that range. At start the lake finds, per log partition, the last
//! range it wrote and writes that range again (under the same names: an atomic replacement
//! by identical content, and any file of it a crash left unwritten appears); then it goes on
//! after it. So a restart leaves no gap and no row twice.
//!
//! **Atomic files.** A file is written as `<name>.tmp` (never listed by readers, which take
//! `*.parquet` only), synced, renamed into place, and the directory synced.

#![deny(unsafe_code)]

mod error;
#[cfg(feature = "sql")]
mod sql;
mod votes;

pub use error::AnalyticsError;
#[cfg(feature = "sql")]
pub use sql::{LakeSql, OutputFormat, render};
pub use votes::{LakeConfig, SyncReport, VoteLake, sync_votes, vote_schema};
