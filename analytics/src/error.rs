use std::path::PathBuf;

use canopy_ingest::IngestError;

use crate::import_report::ImportReport;

/// What can go wrong keeping the lake.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Parquet {location}: {reason}")]
    Parquet { location: String, reason: String },
    #[error("the lake's store, {location}: {reason}")]
    Store { location: String, reason: String },
    #[error("lake location {0}")]
    Location(String),
    #[error(
        "the {table} table holds files of layout {found}, which keeps more than layout \
         {wanted} may (exact vote times or weights); a node of this version rewrites them \
         when it opens the lake (`canopy up`; for votes also `canopy lake sync`)"
    )]
    OldLayout {
        table: &'static str,
        found: u32,
        wanted: u32,
    },
    #[error("reading the log: {0}")]
    Log(#[from] IngestError),
    #[error("SQL: {0}")]
    Sql(String),
    #[error("the lake is read-only to SQL: {0}")]
    SqlNotReadOnly(String),
    #[error("the query ran past its time limit of {0:?} and was stopped")]
    QueryTimeout(std::time::Duration),
    #[error("the query needs more memory than its limit allows: {0}")]
    QueryMemory(String),
    #[error("the query asks for more than a query may: {0}")]
    SqlLimit(String),
    #[error(
        "a file of the lake went away while the query read it (compaction replaced it); \
         run the query again: {0}"
    )]
    FileGone(String),
    #[error("the log has a gap in partition {partition}: expected offset {expected}, got {got}")]
    LogGap {
        partition: u32,
        expected: u64,
        got: u64,
    },
    #[error("unknown source of external data {0:?}: noaa, worldbank or osm")]
    UnknownSource(String),
    #[error("region map: {0}")]
    RegionMap(String),
    /// The file is not of the source's format at all (so no record of it is either).
    #[error("the file is not {expected}: {found}")]
    ImportFormat {
        expected: &'static str,
        found: String,
    },
    /// Some records are invalid and the import did not ask to skip them: nothing was
    /// written. The report lists them by line.
    #[error("{}", .report.refusal())]
    ImportRefused { report: Box<ImportReport> },
}

impl AnalyticsError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "lake_io",
            Self::Parquet { .. } => "lake_parquet",
            Self::Store { .. } => "lake_store",
            Self::Location(_) => "lake_location",
            Self::OldLayout { .. } => "lake_old_layout",
            Self::Log(error) => error.code(),
            Self::LogGap { .. } => "log_gap",
            Self::FileGone(_) => "lake_file_gone",
            Self::Sql(_) => "sql",
            Self::SqlNotReadOnly(_) => "sql_not_read_only",
            Self::QueryTimeout(_) => "query_timeout",
            Self::QueryMemory(_) => "query_memory_exceeded",
            Self::SqlLimit(_) => "sql_limit",
            Self::UnknownSource(_) => "unknown_import_source",
            Self::RegionMap(_) => "bad_region_map",
            Self::ImportFormat { .. } => "import_format",
            Self::ImportRefused { .. } => "import_refused",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
