//! Weir's engine: typed streams, SQL views lowered to differential dataflow, the
//! write-ahead log, and the live view store.
//!
//! ```text
//!              decoded rows                      committed batches                 changes per epoch
//!  (connectors) ──────────▶ ingest gate ──WAL──▶ dataflow worker (timely) ──────────▶ view store ──▶ readers,
//!                           late? dup? epoch      retained events, one                            subscribers
//!                           group fsync           dataflow per view
//!
//!  CREATE VIEW … ──▶ planner (DataFusion SQL → logical plan → ViewPlan) ──▶ dataflow worker
//! ```
//!
//! This crate has no network or object-storage clients: connectors feed it decoded
//! rows, and the binary serves its views.
#![warn(missing_docs)]

pub mod aggregate;
pub mod anomaly;
pub mod archive;
pub mod catalog;
pub mod columnar;
pub mod dataflow;
pub mod detect;
pub mod engine;
pub mod error;
pub mod expr;
pub mod ingest;
pub mod join;
pub mod json;
pub mod packed;
pub mod plan;
pub mod quota;
pub mod schema;
pub mod store;
pub mod time;
pub mod value;
pub mod wal;
pub mod windows;

pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
