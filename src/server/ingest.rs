//! `POST /v1/streams/{stream}/events`: NDJSON or a JSON array in, a receipt out once
//! the accepted events are durable.

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value as Json_};
use weir_connectors::format::{decode_json_array, decode_ndjson};

use weir_engine::value::Value;

use super::error::ApiError;
use crate::auth::Principal;
use super::AppState;

pub async fn ingest(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Json_>, ApiError> {
    let (index, schema) = app.engine.stream(&stream).ok_or_else(|| ApiError::not_found(format!("no stream named {stream}")))?;
    if !schema.metered {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "read_only_stream", format!("the built-in stream {stream} is written by Weir itself")));
    }
    let limit = app.config.ingest.max_body_bytes;
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body exceeds the limit of {limit} bytes (ingest.max_body_bytes); send smaller batches"))
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/x-ndjson");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let schema = schema.clone();
    let decoded = tokio::task::spawn_blocking(move || match mime.as_str() {
        "application/json" => decode_json_array(&schema, &bytes),
        _ => decode_ndjson(&schema, &bytes),
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))?;
    if let Some(tenant) = &principal.tenant {
        // a tenant-scoped publisher writes its own tenant only: anything else refuses the request
        let tenant_col = app.engine.streams()[index].tenant;
        let foreign = decoded.rows.iter().find(|(_, r)| !matches!(&r[tenant_col], Value::Str(t) if **t == **tenant)).map(|(line, _)| *line);
        let foreign = foreign.or(decoded.rejected.iter().find(|r| r.tenant.as_ref().is_some_and(|t| t != tenant)).map(|r| r.line));
        if let Some(line) = foreign {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "tenant_scope", format!("line {line} is not of tenant {tenant}, the only tenant this key may write")));
        }
    }
    let receipt = app.engine.ingest(index, decoded).await?;
    let rejected: Vec<Json_> = receipt.rejected.iter().map(|(line, error)| json!({"line": line, "error": error})).collect();
    Ok(Json(json!({
        "accepted": receipt.accepted,
        "duplicates": receipt.duplicates,
        "rejected": rejected,
        "epoch": receipt.epoch,
    })))
}

/// `GET /v1/streams`: every stream with its schema and time policy.
pub async fn list_streams(State(app): State<AppState>) -> Json<Json_> {
    let streams: Vec<Json_> = app
        .engine
        .streams()
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "columns": s.columns,
                "tenant_column": s.columns[s.tenant].name,
                "time_column": s.columns[s.time].name,
                "id_column": s.id.map(|i| s.columns[i].name.clone()),
                "lateness_ms": s.policy.lateness_ms,
                "retention_ms": s.policy.retention_ms,
            })
        })
        .collect();
    Json(json!({ "streams": streams }))
}
