//! Views over HTTP: create, list, read (JSON or CSV), drop, and subscribe (SSE).

use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Extension, Path, Query, State};

use crate::auth::Principal;
use axum::http::{header, HeaderMap, StatusCode};
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use tokio::sync::broadcast::error::RecvError;
use weir_engine::catalog::ViewDefinition;
use weir_engine::json::{row_to_json, write_row_json};
use weir_engine::schema::Column;
use weir_engine::store::{EpochChanges, LiveView, Start, Subscription, ViewInfo};
use weir_engine::value::Row;

use super::error::ApiError;
use super::AppState;

fn info_json(info: &ViewInfo, epoch: u64) -> Json_ {
    json!({
        "name": info.name,
        "sql": info.sql,
        "streams": info.streams,
        "columns": info.columns,
        "epoch": epoch,
        "lateness_ms": info.lateness_ms,
        "retention_ms": info.retention_ms,
        "source": if info.from_config { "config" } else { "api" },
    })
}

pub async fn list(State(app): State<AppState>) -> Json<Json_> {
    let views: Vec<Json_> = app.engine.views().iter().map(|v| info_json(&v.info, v.epoch())).collect();
    Json(json!({ "views": views }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateView {
    sql: String,
    #[serde(default)]
    lateness: Option<String>,
    #[serde(default)]
    retention: Option<String>,
}

pub async fn create(State(app): State<AppState>, body: axum::body::Bytes) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let req: CreateView = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"sql\": \"CREATE VIEW …\", \"lateness\"?, \"retention\"?}}: {e}")))?;
    // in a task of its own: a client that goes away while the view loads drops this
    // request's future, which must not stop the creation between the dataflow and the
    // catalog (the view would run, but not come back after a restart)
    let engine = app.engine.clone();
    let def = ViewDefinition { sql: req.sql, lateness: req.lateness, retention: req.retention };
    let info = tokio::spawn(async move { engine.create_view(def).await })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("creating the view failed: {e}")))??;
    let epoch = app.engine.view(&info.name).map(|v| v.epoch()).unwrap_or(0);
    Ok((StatusCode::CREATED, Json(info_json(&info, epoch))))
}

pub async fn drop(State(app): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    app.engine.drop_view(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct ReadParams {
    /// Wait until the view reflects this epoch (e.g. the one an ingest returned).
    min_epoch: Option<u64>,
    /// How long to wait for `min_epoch`, in milliseconds (default 10 s).
    timeout_ms: Option<u64>,
}

fn view(app: &AppState, name: &str) -> Result<Arc<LiveView>, ApiError> {
    app.engine.view(name).ok_or_else(|| ApiError::not_found(format!("no view named {name}")))
}

pub async fn read(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view = view(&app, &name)?;
    let scope = scope(&principal, &view)?;
    if let Some(min) = params.min_epoch {
        let timeout = Duration::from_millis(params.timeout_ms.unwrap_or(10_000));
        if !view.wait_for(min, timeout).await {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("view {name} did not reach epoch {min} within {} ms (it is at {})", timeout.as_millis(), view.epoch()),
            ));
        }
    }
    let (epoch, mut rows) = view.snapshot();
    rows.retain(|r| keep(&scope, r));
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let epoch_header = (header::HeaderName::from_static("x-weir-epoch"), epoch.to_string());
    if accept.contains(ARROW_STREAM) {
        let body = weir_engine::columnar::rows_to_ipc(&view.info.columns, &rows)?;
        return Ok(([(header::CONTENT_TYPE, ARROW_STREAM.to_string()), epoch_header], body).into_response());
    }
    if accept.contains("text/csv") {
        let body = to_csv(&view.info.columns, &rows);
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), epoch_header], body).into_response());
    }
    let rows: Vec<Json_> = rows.iter().map(|r| row_to_json(&view.info.columns, r)).collect();
    Ok(Json(json!({ "view": name, "epoch": epoch, "rows": rows })).into_response())
}

/// The rows a tenant-scoped key may see: those whose `tenant` column is its tenant.
#[derive(Clone)]
pub struct Scope {
    column: usize,
    tenant: weir_engine::value::Text,
}

/// The scope of a principal's reads of a view: none for an unscoped key; a
/// tenant-scoped key can only read views with a `tenant` column.
pub fn scope(principal: &Principal, view: &LiveView) -> Result<Option<Scope>, ApiError> {
    let Some(tenant) = &principal.tenant else { return Ok(None) };
    let column = view.info.columns.iter().position(|c| c.name == "tenant").ok_or_else(|| {
        ApiError::new(StatusCode::FORBIDDEN, "tenant_scope", format!("the view {} has no tenant column, so a tenant-scoped key cannot read it", view.info.name))
    })?;
    Ok(Some(Scope { column, tenant: weir_engine::value::Text::from(tenant.as_str()) }))
}

fn keep(scope: &Option<Scope>, row: &Row) -> bool {
    match scope {
        None => true,
        Some(s) => matches!(row.get(s.column), Some(weir_engine::value::Value::Str(t)) if **t == *s.tenant),
    }
}

/// The media type of the Arrow IPC stream format.
const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn to_csv(columns: &[Column], rows: &[Row]) -> String {
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|c| crate::csv::field(&c.name)).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for row in rows {
        let fields: Vec<String> = row
            .iter()
            .map(|v| match weir_engine::json::value_to_json(v) {
                Json_::Null => String::new(),
                Json_::String(s) => crate::csv::field(&s),
                other => crate::csv::field(&other.to_string()),
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// `GET /v1/views/{view}/subscribe`: a snapshot, then every change in epoch order.
pub async fn subscribe(State(app): State<AppState>, Extension(principal): Extension<Principal>, Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let view = view(&app, &name)?;
    let scope = scope(&principal, &view)?;
    let last = match headers.get("last-event-id").map(|v| v.to_str().map(|s| s.trim().parse::<u64>())) {
        None => None,
        Some(Ok(Ok(epoch))) => Some(epoch),
        Some(_) => return Err(ApiError::bad_request("Last-Event-ID must be an epoch (a whole number)")),
    };
    let subscription = view.subscribe(last);
    let columns = Arc::new(view.info.columns.clone());
    let events = change_stream(subscription, Arc::downgrade(&view), columns, scope);
    let mut shutdown = app.shutdown.clone();
    let events = events.take_until(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    });
    Ok(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(events.map(Ok::<_, Infallible>))).into_response())
}

/// Appends one Server-Sent Event: its `event:` and `id:` lines, `data:` (one line of
/// JSON, which `data` writes), and the blank line that ends it.
fn sse_event(out: &mut Vec<u8>, event: &str, id: Option<u64>, data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(format!("\nid: {id}").as_bytes());
    }
    out.extend_from_slice(b"\ndata: ");
    data(out);
    out.extend_from_slice(b"\n\n");
}

fn snapshot_event(out: &mut Vec<u8>, columns: &[Column], epoch: u64, rows: &[Row], scope: &Option<Scope>) {
    sse_event(out, "snapshot", Some(epoch), |out| {
        out.extend_from_slice(format!("{{\"epoch\":{epoch},\"rows\":[").as_bytes());
        for (i, row) in rows.iter().filter(|r| keep(scope, r)).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_row_json(out, columns, row);
        }
        out.extend_from_slice(b"]}");
    });
}

/// Appends an epoch's changes, one `change` event per row and unit of its difference.
fn change_events(out: &mut Vec<u8>, columns: &[Column], changes: &EpochChanges, scope: &Option<Scope>) {
    let epoch = changes.epoch;
    for change in changes.changes.iter() {
        let (row, diff) = (change.row.to_row(), change.diff);
        if !keep(scope, &row) {
            continue;
        }
        let start = out.len();
        sse_event(out, "change", Some(epoch), |out| {
            out.extend_from_slice(format!("{{\"epoch\":{epoch},\"diff\":{},\"row\":", diff.signum()).as_bytes());
            write_row_json(out, columns, &row);
            out.push(b'}');
        });
        for _ in 1..diff.unsigned_abs() {
            out.extend_from_within(start..);
        }
    }
}

fn reset_event(out: &mut Vec<u8>, reason: &str, requested: Option<u64>, epoch: u64) {
    sse_event(out, "reset", None, |out| out.extend_from_slice(json!({ "reason": reason, "requested": requested, "epoch": epoch }).to_string().as_bytes()));
}

fn start_events(columns: &[Column], start: Start, scope: &Option<Scope>) -> Vec<u8> {
    let mut out = Vec::new();
    match start {
        Start::Snapshot { epoch, rows } => snapshot_event(&mut out, columns, epoch, &rows, scope),
        Start::Resume(changes) => {
            for c in &changes {
                change_events(&mut out, columns, c, scope);
            }
        }
        Start::Reset { requested, epoch, rows } => {
            reset_event(&mut out, "the requested epoch is no longer retained; discard your copy and use the snapshot that follows", Some(requested), epoch);
            snapshot_event(&mut out, columns, epoch, &rows, scope);
        }
    }
    out
}

/// How long a quiet stream waits before a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The subscription as the text of SSE events, one chunk per epoch (all of its changes
/// written together: one write instead of one per change). The view is held weakly, so
/// that dropping the view ends the stream; a subscriber that falls too far behind is
/// sent a fresh snapshot.
fn change_stream(sub: Subscription, view: Weak<LiveView>, columns: Arc<Vec<Column>>, scope: Option<Scope>) -> impl Stream<Item = Bytes> {
    let first = start_events(&columns, sub.start, &scope);
    futures::stream::unfold((sub.changes, view, columns, Some(first), scope), |(mut rx, view, columns, mut first, scope)| async move {
        if let Some(first) = first.take().filter(|f| !f.is_empty()) {
            return Some((Bytes::from(first), (rx, view, columns, None, scope)));
        }
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                Err(_) => out.extend_from_slice(b":\n\n"),
                Ok(Ok(changes)) => change_events(&mut out, &columns, &changes, &scope),
                Ok(Err(RecvError::Lagged(_))) => {
                    let view_now = view.upgrade()?;
                    let sub = view_now.subscribe(None);
                    std::mem::drop(view_now);
                    rx = sub.changes;
                    if let Start::Snapshot { epoch, rows } = sub.start {
                        reset_event(&mut out, "the subscriber fell behind; discard your copy and use the snapshot that follows", None, epoch);
                        snapshot_event(&mut out, &columns, epoch, &rows, &scope);
                    }
                }
                Ok(Err(RecvError::Closed)) => return None,
            }
            if !out.is_empty() {
                return Some((Bytes::from(out), (rx, view, columns, None, scope)));
            }
        }
    })
}
