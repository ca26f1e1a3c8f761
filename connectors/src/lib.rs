//! Weir's connectors: how bytes from outside become rows of a stream.
//!
//! ```text
//!   transport (HTTP body, file, broker message) ──bytes──▶ format (JSON, NDJSON) ──▶ Decoded rows
//!                                                                                   + rejected lines
//! ```
//!
//! Transport is kept apart from format so that any transport can carry any format.
//! The HTTP ingest endpoint is served by the `weir` binary and uses [`format`].
#![warn(missing_docs)]

pub mod format;
