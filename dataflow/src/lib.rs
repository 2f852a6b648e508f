//! Canopy's dataflows on timely and differential dataflow: the weighted tally and the vote
//! record (per-decision Merkle logs with signed checkpoints).
//!
//! ```text
//!  VoteLog ──read──▶ worker i feeds partitions p ≡ i (mod W) ─┐
//!  decisions ──────▶ worker 0 ────────────────────────────────┤
//!                                                             ▼
//!            latest vote per (decision, voter) ─▶ (count, weight) per (decision, option,
//!            component) ─▶ shares, composite, turnout, quorum per decision
//!                                                             │ one complete epoch at a time
//!                                                             ▼
//!                                        ViewStore (DecisionView tagged with `as_of`)
//! ```
//!
//! The sensor features dataflow ([`build_sensor_dataflow`], run by [`SensorEngine`] over a
//! [`canopy_ingest::SensorLog`]) keeps windowed features per sensor and region; its
//! [`SensorViews`] feed the anomaly [`Scorer`] and threshold alerts.
//!
//! [`TallyEngine`] runs it over a [`canopy_ingest::VoteLog`] on W worker threads;
//! [`build_tally_dataflow`] is the dataflow itself, for drivers of their own (tests, the
//! benchmark). [`recount`] is the from-scratch oracle both are checked against, and
//! [`recount_trees`] the one for the record's Merkle logs.
//!
//! Modules, each importing only those listed before it:
//! - `error`, `arithmetic` (ballots in, a [`Tally`] out), `methods` (each voting method's
//!   count, instant runoff's rounds, the outcome), `sensor_windows` (window stats,
//!   z-scores, the lateness gate, the features oracle), `epoch` (epoch buffering, log ends
//!   per epoch, the sink that publishes complete epochs), `worker_pool` (start, stop, join),
//!   `log_reader` (a worker's partitions read from a log, transient errors waited out);
//! - `record` (the Merkle logs), `state` (checkpoint entries and their store), `views`,
//!   `sensor_views`, `scoring`, `recount`;
//! - `tally/` (the tally dataflow: the latest-vote fold, the count, the record operator,
//!   checkpoint capture, the worker's inputs), `sensors` (the features dataflow),
//!   `sensor_feed` (the features dataflow on a tally engine's workers);
//! - `engine` (which runs the features dataflow too when given a sensor log) and
//!   `sensor_engine`, which drive them over a log.

#![deny(unsafe_code)]

mod arithmetic;
mod engine;
mod epoch;
mod error;
mod final_result;
mod log_reader;
mod methods;
mod record;
mod recount;
mod scoring;
mod sensor_engine;
mod sensor_feed;
mod sensor_views;
mod sensor_windows;
mod sensors;
mod state;
mod tally;
mod views;
mod worker_pool;

pub use arithmetic::{Ballot, CellTally, DecisionParams, Tally};
pub use engine::{ClusterConfig, DecisionDirectory, EngineConfig, TallyEngine};
pub use epoch::Epoch;
pub use error::DataflowError;
pub use final_result::{ClosePoint, FinalResult, LeafRecount, recount_leaves};
pub use methods::{
    CountedBallot, DecisionResult, ExhaustedBallots, Outcome, RankedRound, ballot_cells,
    count_decision, counted_incrementally,
};
pub use record::{
    CheckpointSink, CutCheckpoint, LeafEntry, RecordConfig, RecordLeaf, RecordReader, RecordTiles,
    StoredCheckpoint, VoteRecord, VoterLeaf,
};
pub use recount::{counted_votes, recount, recount_log_trees, recount_trees};
pub use scoring::{AnomalyModel, Scorer, ScorerConfig, onnx_environment};
pub use sensor_engine::{SensorEngine, SensorEngineConfig};
pub use sensor_feed::SensorFeed;
pub use sensor_views::{
    Alert, AlertRules, ModelScore, Retention, SensorMirror, SensorViewRead, SensorViews, WindowView,
};
pub use sensor_windows::{
    FeedReading, LatenessGate, Owner, WindowConfig, WindowKey, WindowSize, WindowStats,
    WindowUpdate, ZScores, floor_std, recompute_features, z_scores,
};
pub use sensors::{SensorInputs, build_sensor_dataflow};
pub use state::{
    EngineSnapshot, InMemoryStateStore, MAX_PART_BYTES, PartKey, PartKind, RestorePlan, StateChunk,
    StateEntry, StateStore, decode_entries, encode_entries, encode_parts, pack_parts,
};
pub use tally::{DueCheckpoint, TallyInputs, build_tally_dataflow};
pub use views::{
    DecisionView, InMemoryViews, ViewRead, ViewStore, ViewUpdate, includes_position, wait_included,
    wait_until_included,
};
