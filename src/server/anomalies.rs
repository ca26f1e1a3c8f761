//! `/v1/anomalies`: declare, list and delete anomaly detectors. Their scores are the
//! `anomalies` view.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value as Json_};
use weir_engine::detect::DetectorDefinition;

use super::error::ApiError;
use super::AppState;

/// `POST /v1/anomalies` `{"name", "view", "series", "value", "baseline", "method", …}`.
pub async fn create(State(app): State<AppState>, body: axum::body::Bytes) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let def: DetectorDefinition = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid detector: {e}; expected {{\"name\", \"view\", \"value\", and optionally \"series\", \"time\", \"window\", \"baseline\", \"method\", \"threshold\"}}"
        ))
    })?;
    let def = app.engine.create_detector(def).await?;
    Ok((StatusCode::CREATED, Json(describe(&def, false))))
}

/// `GET /v1/anomalies`: every detector.
pub async fn list(State(app): State<AppState>) -> Json<Json_> {
    let detectors: Vec<Json_> = app.engine.detectors().await.iter().map(|(d, from_config)| describe(d, *from_config)).collect();
    Json(json!({ "detectors": detectors }))
}

/// `DELETE /v1/anomalies/{name}`.
pub async fn drop(State(app): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    app.engine.drop_detector(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn describe(def: &DetectorDefinition, from_config: bool) -> Json_ {
    let mut v = serde_json::to_value(def).expect("definitions serialize");
    v["from_config"] = json!(from_config);
    v
}
