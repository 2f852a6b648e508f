//! SQL over the lake: DataFusion with the lake's tables registered by name, read-only.

use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, col};

use crate::{AnalyticsError, vote_schema};

/// A SQL session over a lake.
pub struct LakeSql {
    context: SessionContext,
}

impl std::fmt::Debug for LakeSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakeSql").finish_non_exhaustive()
    }
}

fn sql_error(error: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Sql(error.to_string())
}

impl LakeSql {
    /// Opens the lake under `root` with its tables registered: `votes` (with `date`, from
    /// the folder names).
    pub async fn open(root: &Path) -> Result<Self, AnalyticsError> {
        // No cached file listing: files the sinks add must show in the next query.
        let runtime = RuntimeEnvBuilder::new()
            .with_object_list_cache_limit(0)
            .build_arc()
            .map_err(sql_error)?;
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let context = SessionContext::new_with_state(state);
        let votes = root.join("votes");
        std::fs::create_dir_all(&votes).map_err(AnalyticsError::io(&votes))?;
        let votes = std::fs::canonicalize(&votes).map_err(AnalyticsError::io(&votes))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".into(), DataType::Date32)])
            .with_file_sort_order(vec![vec![
                col("decision_id").sort(true, false),
                col("log_offset").sort(true, false),
            ]]);
        context
            .register_listing_table(
                "votes",
                format!("file://{}/", votes.display()),
                options,
                Some(vote_schema()),
                None,
            )
            .await
            .map_err(sql_error)?;
        Ok(Self { context })
    }

    /// Runs one read-only statement (no DDL, no DML, no `SET`), and returns its rows.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, AnalyticsError> {
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        self.context
            .sql_with_options(sql, read_only)
            .await
            .map_err(sql_error)?
            .collect()
            .await
            .map_err(sql_error)
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
