//! `POST /v1/snapshots`: writes every view to the lake now, as of one epoch.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value as Json_;

use super::error::ApiError;
use super::AppState;

pub async fn take(State(app): State<AppState>) -> Result<Json<Json_>, ApiError> {
    let snapshot = crate::serve::snapshot(&app.engine, &app.lake).await.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "snapshot_failed", format!("{e:#}")))?;
    Ok(Json(serde_json::to_value(snapshot).expect("snapshots serialize")))
}
