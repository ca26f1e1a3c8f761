//! `POST /v1/sql` `{"sql": "…"}`: DataFusion over the live views (`live.<view>`), the
//! result streamed batch by batch as JSON (default), CSV or an Arrow IPC stream.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
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
    let stream = weir_queries::live::query(app.engine.clone(), &weir_lake::named_arguments(&request.sql), principal.tenant.clone(), Some(lake_tables(&app, &principal).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "lake", e.to_string()))?)).await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_sql", e.to_string()))?;
    let schema = stream.schema();
    // errors that only show when the query starts running are still the caller's: a 400
    let mut stream = stream;
    let first = match stream.next().await {
        Some(Err(e)) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_sql", e.to_string())),
        first => first,
    };
    let batches = futures::stream::iter(first).chain(stream);
    let encoder = Encoder::new(format, schema).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    // the head, a chunk per batch, the tail; an error mid-way ends the body early
    let body = futures::stream::unfold((batches.boxed(), Some(encoder), true), |(mut batches, encoder, head)| async move {
        let mut encoder = encoder?;
        if head {
            let bytes = encoder.head();
            return Some((Ok(bytes), (batches, Some(encoder), false)));
        }
        match batches.next().await {
            Some(Ok(batch)) => {
                let chunk = encoder.batch(&batch);
                Some((chunk, (batches, Some(encoder), false)))
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "a SQL query failed while streaming its result");
                Some((Err(std::io::Error::other(e.to_string())), (batches, None, false)))
            }
            None => Some((encoder.tail(), (batches, None, false))),
        }
    });
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Arrow => ARROW_STREAM,
    };
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
}

/// The lake's tables: the latest snapshots named after the views, the archives named
/// after the streams (and as `archive.<stream>`), and `snapshot(…)`; for a tenant-scoped
/// key, only tables with a `tenant` column, holding its rows only.
fn lake_tables(app: &AppState, principal: &Principal) -> Result<weir_queries::live::LakeTables, weir_lake::Error> {
    let tenant = principal.tenant.clone();
    let views = app
        .engine
        .views()
        .iter()
        .filter(|v| tenant.is_none() || v.info.columns.iter().any(|c| c.name == "tenant"))
        .map(|v| v.info.name.clone())
        .collect();
    let mut public = weir_lake::SnapshotSchema::new(app.lake.clone(), views, tenant.clone())?;
    let mut archive_schema = None;
    if let Some(archive) = &app.archive {
        public = public.with_archives(archive, archive.streams())?;
        let only_archives = weir_lake::SnapshotSchema::new(app.lake.clone(), vec![], tenant.clone())?.with_archives(archive, archive.streams())?;
        archive_schema = Some(Arc::new(only_archives) as Arc<dyn datafusion::catalog::SchemaProvider>);
    }
    Ok(weir_queries::live::LakeTables {
        public: Arc::new(public),
        archive: archive_schema,
        snapshot: Arc::new(weir_lake::SnapshotFunction::new(app.lake.clone(), tenant)),
    })
}

/// Turns batches into the body's bytes, one chunk per batch.
struct Encoder {
    format: Format,
    schema: SchemaRef,
    rows: usize,
    /// For Arrow: one IPC stream writer over a buffer drained after each message.
    arrow: Option<StreamWriter<Vec<u8>>>,
}

impl Encoder {
    fn new(format: Format, schema: SchemaRef) -> Result<Encoder, ArrowError> {
        let arrow = match format {
            Format::Arrow => Some(StreamWriter::try_new(Vec::new(), &schema)?),
            _ => None,
        };
        Ok(Encoder { format, schema, rows: 0, arrow })
    }

    /// What comes before the first batch.
    fn head(&mut self) -> Vec<u8> {
        match self.format {
            Format::Json => {
                let columns: Vec<serde_json::Value> =
                    self.schema.fields().iter().map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()})).collect();
                format!("{{\"columns\":{},\"rows\":[", serde_json::Value::Array(columns)).into_bytes()
            }
            Format::Csv => {
                let names: Vec<String> = self.schema.fields().iter().map(|f| crate::csv::field(f.name())).collect();
                format!("{}\n", names.join(",")).into_bytes()
            }
            // the schema message, written when the writer was made
            Format::Arrow => self.drain(),
        }
    }

    fn drain(&mut self) -> Vec<u8> {
        self.arrow.as_mut().map(|w| std::mem::take(w.get_mut())).unwrap_or_default()
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
                if let Some(w) = self.arrow.as_mut() {
                    w.write(batch).map_err(std::io::Error::other)?;
                }
                out = self.drain();
            }
        }
        Ok(out)
    }

    /// What comes after the last batch.
    fn tail(&mut self) -> std::io::Result<Vec<u8>> {
        match self.format {
            Format::Json => Ok(b"]}".to_vec()),
            Format::Csv => Ok(Vec::new()),
            Format::Arrow => {
                if let Some(w) = self.arrow.as_mut() {
                    w.finish().map_err(std::io::Error::other)?;
                }
                Ok(self.drain())
            }
        }
    }
}
