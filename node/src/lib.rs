//! Canopy assembled. `canopy-node` wires the parts into a running process for every shape
//! the binary starts; `canopy-serving` serves HTTP only and reaches the parts through the
//! state this crate fills in.
//!
//! ```text
//!  canopy up      Node: metadata store, keys, vote log (segments | Kafka), TallyEngine +
//!                 VoteRecord, CheckpointWriter, anchor_loop, sensors, lake_loop, listener
//!  canopy serve   Node without an engine: appends votes and readings to Kafka, reads
//!                 results, features and alerts from Redis
//!  canopy worker  WorkerNode: the tally and features dataflows as one timely cluster over
//!                 Kafka, engine checkpoints in PostgreSQL, results, features and alerts
//!                 into Redis, the record and anchoring
//! ```
//!
//! - [`node`]: the single node and the `serve` replica ([`Node`], [`NodeConfig`]).
//! - [`worker`]: the cluster worker ([`worker::WorkerNode`]).
//! - [`record`]: the record key, the checkpoint writer and the anchoring loop.
//! - [`tiles`]: the record store (C2SP tlog tiles in a folder or bucket) and its reader.
//! - [`keys`]: the node's key files: the record key's seed, the audit and secrets keys.
//! - [`lake`]: the analytics lake's flush and compaction loop.
//! - [`lifecycle`]: decisions closed at the end of their window, final results signed.
//! - [`redis`]: the cluster's view store and replica coordination in Redis.
//! - [`redis_sensors`]: the cluster's sensor features and alerts in Redis.
//! - [`listener`]: the HTTP listener's accept loop: timeouts, connection cap, headers.
//! - `probes`: a worker's own listener for `/metrics`, `/healthz`, `/readyz`, and its lag
//!   gauges.
//! - [`tls`]: the listeners' certificate, reloaded on SIGHUP.
//! - [`backup`]: `canopy backup` and `canopy restore`; [`backup_repo`]: where backups live
//!   and how they are sealed (age).

#![deny(unsafe_code)]

pub mod backup;
pub mod backup_repo;
pub mod data_dir;
mod error;
pub mod keys;
pub mod lake;
pub mod lifecycle;
pub mod listener;
pub mod node;
mod probes;
mod readiness;
pub mod record;
pub mod redis;
pub mod redis_sensors;
pub mod sensors;
mod sql_port;
pub mod tiles;
pub mod tls;
pub mod worker;

pub use error::NodeError;
pub use node::{Node, NodeConfig};
pub use probes::serve_metrics;
pub use sensors::SensorSettings;
pub use sql_port::SqlPortSettings;
