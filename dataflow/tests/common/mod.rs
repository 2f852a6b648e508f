//! Shared by the dataflow tests, and by node's `redis_views` test (which includes this file
//! by path, as testkit cannot depend on the log): a segment log in a directory, everything a
//! log holds, and an engine over a log waited on until it shows a position.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use canopy_dataflow::{DecisionView, EngineConfig, TallyEngine, ViewStore};
use canopy_ingest::{LogRecord, Position, SegmentLog, SegmentLogConfig, VoteLog};
use canopy_schemas::{Decision, DecisionId};

/// A segment log of `partitions` partitions in `dir`, otherwise configured by default.
pub fn open_segment_log(dir: &Path, partitions: u32) -> Arc<SegmentLog> {
    let config = SegmentLogConfig {
        partitions,
        ..Default::default()
    };
    Arc::new(SegmentLog::open(dir, config).unwrap())
}

/// Every record of `log`, partition after partition, each in offset order.
pub fn all_records(log: &dyn VoteLog) -> Vec<LogRecord> {
    (0..log.partitions())
        .flat_map(|partition| log.read_votes(partition, 0, usize::MAX).unwrap())
        .collect()
}

/// An engine of the default configuration, without a vote record, tallying `decisions`
/// from `log` into `views`.
pub fn start_engine(
    log: Arc<dyn VoteLog>,
    views: Arc<dyn ViewStore>,
    decisions: &[Decision],
) -> TallyEngine {
    TallyEngine::start(
        EngineConfig::default(),
        log,
        views,
        None,
        decisions.to_vec(),
    )
    .unwrap()
}

/// The view of `decision` once it includes the record at `offset` of `partition`; panics
/// when there is none within `timeout`.
pub fn view_including(
    views: &dyn ViewStore,
    decision: DecisionId,
    partition: u32,
    offset: u64,
    timeout: Duration,
) -> DecisionView {
    views
        .wait_for(decision, Position { partition, offset }, timeout)
        .unwrap()
        .unwrap()
}
