//! Formats: parsing bytes into rows of a stream's schema.
//!
//! A format never fails a whole batch for one bad line: each line is validated on its
//! own, and a bad line becomes a [`Rejection`](weir_engine::ingest::Rejection) with its
//! line number and the reason.

pub mod json;

pub use json::{decode_json_array, decode_ndjson, BodyError};
