//! Canopy assembled. `canopy-node` wires the parts into a running process for every shape
//! the binary starts; `canopy-serving` serves HTTP only and reaches the parts through the
//! state this crate fills in.
//!
//! ```text
//!  canopy up      Node: metadata store, keys, vote log (segments | Kafka), TallyEngine +
//!                 VoteRecord, CheckpointWriter, anchor_loop, sensors, lake_loop, listener
//!  canopy serve   Node without an engine: appends to Kafka, reads results from Redis
//!  canopy worker  WorkerNode: the tally dataflow as one timely cluster over Kafka, engine
//!                 checkpoints in PostgreSQL, results into Redis, the record and anchoring
//! ```
//!
//! - [`node`]: the single node and the `serve` replica ([`Node`], [`NodeConfig`]).
//! - [`worker`]: the cluster worker ([`worker::WorkerNode`]).
//! - [`record`]: the record key, the checkpoint writer and the anchoring loop.
//! - [`keys`]: the node's key files: the record key's seed, the audit and secrets keys.
//! - [`lake`]: the analytics lake's flush and compaction loop.
//! - [`redis`]: the cluster's view store and replica coordination in Redis.
//! - [`listener`]: the HTTP listener's accept loop: timeouts, connection cap, headers.
//! - [`tls`]: the listeners' certificate, reloaded on SIGHUP.

#![deny(unsafe_code)]

pub mod data_dir;
mod error;
pub mod keys;
pub mod lake;
pub mod listener;
pub mod node;
mod readiness;
pub mod record;
pub mod redis;
pub mod sensors;
mod sql_port;
pub mod tls;
pub mod worker;

pub use error::NodeError;
pub use node::{Node, NodeConfig};
pub use sensors::SensorSettings;
pub use sql_port::SqlPortSettings;
