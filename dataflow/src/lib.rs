//! Canopy's dataflows on timely and differential dataflow. So far: the weighted tally.
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
//! [`TallyEngine`] runs it over a [`canopy_ingest::VoteLog`] on W worker threads;
//! [`build_tally_dataflow`] is the dataflow itself, for drivers of their own (tests, the
//! benchmark). [`recount`] is the from-scratch oracle both are checked against.

#![deny(unsafe_code)]

mod engine;
mod error;
mod positions;
mod recount;
mod tally;
mod views;

pub use engine::{EngineConfig, TallyEngine};
pub use error::DataflowError;
pub use positions::EpochPositions;
pub use recount::recount;
pub use tally::{
    Ballot, CellTally, DecisionParams, Epoch, Tally, TallyInputs, build_tally_dataflow,
};
pub use views::{DecisionView, InMemoryViews, ViewStore, ViewUpdate};
