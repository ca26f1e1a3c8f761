//! `POST /v1/sql` `{"sql": "…"}`: DataFusion over the live views (`live.<view>`), the
//! result streamed batch by batch as JSON (default), CSV or an Arrow IPC stream.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;

use super::error::ApiError;
use crate::auth::Principal;
use super::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    sql: String,
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Csv,
    Arrow,
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

pub async fn sql(State(app): State<AppState>, Extension(principal): Extension<Principal>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("expected {{\"sql\": \"SELECT …\"}}: {e}")))?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    };
    let stream = weir_queries::live::query(app.engine.clone(), &weir_lake::named_arguments(&request.sql), principal.tenant.clone(), snapshots(&app, &principal)).await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_sql", e.to_string()))?;
    let schema = stream.schema();
    // errors that only show when the query starts running are still the caller's: a 400
    let mut stream = stream;
    let first = match stream.next().await {
        Some(Err(e)) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_sql", e.to_string())),
        first => first,
    };
    let stream = futures::stream::iter(first).chain(stream);
    let mut encoder = Encoder::new(format, schema);
    let head = encoder.head();
    let mut tail = Some(encoder.clone_tail());
    let chunks = stream.map(move |batch| match batch {
        Ok(batch) => encoder.batch(&batch),
        Err(e) => {
            tracing::warn!(error = %e, "a SQL query failed while streaming its result");
            Err(std::io::Error::other(e.to_string()))
        }
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(chunks)
        .chain(futures::stream::poll_fn(move |_| std::task::Poll::Ready(tail.take().map(Ok))));
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Arrow => ARROW_STREAM,
    };
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
}

/// The latest snapshots as tables named after the views, and `snapshot(…)`; for a
/// tenant-scoped key, only views with a `tenant` column, holding its rows only.
fn snapshots(app: &AppState, principal: &Principal) -> Option<(Arc<dyn datafusion::catalog::SchemaProvider>, Arc<dyn datafusion::catalog::TableFunctionImpl>)> {
    let tenant = principal.tenant.clone();
    let views = app
        .engine
        .views()
        .iter()
        .filter(|v| tenant.is_none() || v.info.columns.iter().any(|c| c.name == "tenant"))
        .map(|v| v.info.name.clone())
        .collect();
    Some((
        Arc::new(weir_lake::SnapshotSchema::new(app.lake.clone(), views, tenant.clone())),
        Arc::new(weir_lake::SnapshotFunction::new(app.lake.clone(), tenant)),
    ))
}

/// Turns batches into the body's bytes, one chunk per batch.
struct Encoder {
    format: Format,
    schema: SchemaRef,
    rows: usize,
}

impl Encoder {
    fn new(format: Format, schema: SchemaRef) -> Encoder {
        Encoder { format, schema, rows: 0 }
    }

    fn head(&self) -> Vec<u8> {
        match self.format {
            Format::Json => {
                let columns: Vec<serde_json::Value> =
                    self.schema.fields().iter().map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()})).collect();
                format!("{{\"columns\":{},\"rows\":[", serde_json::Value::Array(columns)).into_bytes()
            }
            Format::Csv => {
                let names: Vec<String> = self.schema.fields().iter().map(|f| csv_field(f.name())).collect();
                format!("{}\n", names.join(",")).into_bytes()
            }
            Format::Arrow => {
                // the schema message: a writer over an empty stream
                let mut out = Vec::new();
                let writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &self.schema).expect("writing to memory");
                drop(writer);
                out
            }
        }
    }

    /// The bytes after the last batch.
    fn clone_tail(&self) -> Vec<u8> {
        match self.format {
            Format::Json => b"]}".to_vec(),
            Format::Csv => Vec::new(),
            // the end-of-stream marker
            Format::Arrow => vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        }
    }

    fn batch(&mut self, batch: &RecordBatch) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.format {
            Format::Json => {
                let mut lines = Vec::new();
                let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut lines);
                writer.write(batch).map_err(std::io::Error::other)?;
                writer.finish().map_err(std::io::Error::other)?;
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if self.rows > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(line);
                    self.rows += 1;
                }
            }
            Format::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(false).build(&mut out);
                writer.write(batch).map_err(std::io::Error::other)?;
            }
            Format::Arrow => {
                // a stream writer's output minus its schema message and end marker
                let mut full = Vec::new();
                let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut full, &self.schema).map_err(std::io::Error::other)?;
                writer.write(batch).map_err(std::io::Error::other)?;
                drop(writer);
                let skip = self.head().len();
                out.extend_from_slice(&full[skip..]);
            }
        }
        Ok(out)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}
