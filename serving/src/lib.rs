//! Canopy's serving layer: the REST API voters, decision owners and operators use.
//!
//! ```text
//!  HTTP ─▶ limit_by_address ─▶ route ─▶ Caller (RS256 token, per-user limit) ─▶ Action::allowed
//!                                         │
//!       cast-vote ─▶ Gate::submit ─▶ VoteLog (durable) ─▶ receipt + position
//!       results?min_offset=p ─▶ ViewStore::wait_for ─▶ tally as of ≥ p
//!       auth/*, decision/create ─▶ MetadataStore (SQLite | PostgreSQL) ─▶ audit trail
//!       audit/decisions/* ─▶ VoteRecord (Merkle logs) + checkpoints/anchors (MetadataStore)
//! ```
//!
//! HTTP only: [`api`] has a module per resource, [`state`] what the handlers share (filled in
//! by `canopy-node`, which starts the engines, logs and loops this crate never starts).

#![deny(unsafe_code)]

pub mod api;
pub mod auth;
mod error;
pub mod limits;
pub mod metrics;
pub mod push;
pub mod receipts;
pub mod record;
pub mod salts;
pub mod state;
pub mod store;
pub mod store_backup;
pub mod store_keys;
pub mod throttle;
pub mod traces;
pub mod trail;

pub use error::ServingError;
