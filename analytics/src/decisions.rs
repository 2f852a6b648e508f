//! The `decisions` table: the registered decisions, for joining votes with their region,
//! title and option labels. It is small and changes rarely, so each change writes a whole
//! new snapshot; a snapshot's name covers every earlier one's, so readers take the newest.

use std::sync::Arc;

use arrow_array::builder::{
    Int32Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use canopy_schemas::Decision;

use crate::AnalyticsError;
use crate::lake::{FileName, LakeConfig, TableFiles, parquet_error, sort_batch};
use crate::votes::utc_micros;

const FOLDER: &str = "snapshot";

/// The Arrow schema of the `decisions` table.
pub fn decision_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("decision_id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        // Labels by option index: `options[option + 1]` (SQL arrays count from 1).
        Field::new(
            "options",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("option_count", DataType::Int32, false),
        Field::new("opens_at", utc_micros(), false),
        Field::new("closes_at", utc_micros(), false),
        Field::new("quorum", DataType::Int64, false),
    ]))
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
        };
        files.open()?;
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
        let batch = decision_batch(&decisions).map_err(|e| parquet_error(&path, e))?;
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

fn decision_batch(decisions: &[Decision]) -> Result<RecordBatch, ArrowError> {
    let n = decisions.len();
    let mut id = StringBuilder::with_capacity(n, n * 36);
    let mut title = StringBuilder::with_capacity(n, n * 32);
    let mut region = StringBuilder::with_capacity(n, n * 8);
    let mut options = ListBuilder::new(StringBuilder::new());
    let mut option_count = Int32Builder::with_capacity(n);
    let mut opens = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut closes = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut quorum = Int64Builder::with_capacity(n);
    for decision in decisions {
        id.append_value(decision.id.to_string());
        title.append_value(&decision.title);
        region.append_value(&decision.region);
        for label in &decision.options {
            options.values().append_value(label);
        }
        options.append(true);
        option_count.append_value(decision.options.len() as i32);
        opens.append_value(decision.opens_at);
        closes.append_value(decision.closes_at);
        quorum.append_value(decision.quorum as i64);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(title.finish()),
        Arc::new(region.finish()),
        Arc::new(options.finish()),
        Arc::new(option_count.finish()),
        Arc::new(opens.finish()),
        Arc::new(closes.finish()),
        Arc::new(quorum.finish()),
    ];
    RecordBatch::try_new(decision_schema(), columns)
}
