//! The `decisions` table: the registered decisions, for joining votes with their region,
//! title and option labels. It is small and changes rarely, so each change writes a whole
//! new snapshot; a snapshot's name covers every earlier one's, so readers take the newest.

use arrow_schema::SchemaRef;
use canopy_schemas::Decision;

use crate::AnalyticsError;
use crate::columns::Columns;
use crate::lake::{FileName, LakeConfig, TableFiles, parquet_error, sort_batch};

const FOLDER: &str = "snapshot";

/// The Arrow schema of the `decisions` table.
pub fn decision_schema() -> SchemaRef {
    decision_columns(&[]).schema()
}

fn decision_columns<'r>(decisions: &'r [&'r Decision]) -> Columns<'r, Decision> {
    Columns::of(decisions)
        .text("decision_id", |d| d.id.to_string())
        .text("title", |d| &d.title)
        .text("region", |d| &d.region)
        // Labels by option index: `options[option + 1]` (SQL arrays count from 1).
        .text_list("options", |d| &d.options)
        .int32("option_count", |d| d.options.len() as i32)
        .utc_micros("opens_at", |d| d.opens_at)
        .utc_micros("closes_at", |d| d.closes_at)
        .int64("quorum", |d| d.quorum as i64)
}

/// The `decisions` table of a lake.
#[derive(Debug)]
pub struct DecisionLake {
    config: LakeConfig,
    files: TableFiles,
    written: Option<Vec<Decision>>,
}

impl DecisionLake {
    pub fn open(config: LakeConfig) -> Result<Self, AnalyticsError> {
        let files = TableFiles {
            location: config.location.clone(),
            table: "decisions",
            schema: decision_schema(),
            sort_columns: vec![0],
            plain_columns: Vec::new(),
            layout: 1,
            hours_from: &[],
        };
        files.open(&config)?;
        Ok(Self {
            config,
            files,
            written: None,
        })
    }

    /// Writes `decisions` as the new snapshot, unless it is what this writer wrote last.
    /// Returns whether it wrote.
    pub fn write_snapshot(&mut self, decisions: &[Decision]) -> Result<bool, AnalyticsError> {
        let mut decisions = decisions.to_vec();
        decisions.sort_by_key(|d| d.id);
        if self.written.as_ref() == Some(&decisions) {
            return Ok(false);
        }
        let last = self
            .files
            .all_files()?
            .into_values()
            .flatten()
            .map(|f| f.name.last + 1)
            .max()
            .unwrap_or(0);
        let name = FileName {
            space: "s".into(),
            first: 0,
            last,
        };
        let path = self.files.key(FOLDER, &name);
        let rows: Vec<&Decision> = decisions.iter().collect();
        let batch = decision_columns(&rows)
            .batch()
            .map_err(|e| parquet_error(&path, e))?;
        let batch = sort_batch(&batch, &[0]).map_err(|e| parquet_error(&path, e))?;
        self.files
            .write(&self.config, FOLDER, &name, &batch, Vec::new())?;
        self.written = Some(decisions);
        Ok(true)
    }

    /// Deletes snapshots superseded longer than the grace period.
    pub fn compact(&self) -> Result<(u64, u64), AnalyticsError> {
        self.files.compact(&self.config)
    }
}
