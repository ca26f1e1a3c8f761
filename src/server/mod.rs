//! The HTTP API, versioned under `/v1`.
//!
//! ```text
//!   POST   /v1/streams/{stream}/events   ingest (NDJSON or JSON array)
//!   GET    /v1/streams                   streams and schemas
//!   GET    /v1/views                     views with SQL and schema
//!   POST   /v1/views                     create a view {"sql": "CREATE VIEW …"}
//!   GET    /v1/views/{view}              rows (JSON, or CSV with Accept: text/csv)
//!   DELETE /v1/views/{view}              drop a view
//!   GET    /v1/views/{view}/subscribe    Server-Sent Events: snapshot, then changes
//!   POST   /v1/snapshots                 write every view to the lake now
//!   POST   /v1/sql                       SQL over the live views {"sql": "SELECT … FROM live.view"}
//!   GET    /v1/alerts                    alerts firing and recent state changes
//!   GET    /v1/alerts/stream             Server-Sent Events: alert state changes
//!   GET    /v1/anomalies                 anomaly detectors
//!   POST   /v1/anomalies                 declare one {"name", "view", "series", "value", …}
//!   DELETE /v1/anomalies/{name}          delete one
//!   GET    /v1/tenants/{tenant}/quota    a tenant's plan and usage
//!   PUT    /v1/tenants/{tenant}/quota    set a tenant's plan {"events_per_minute": 1000, …}
//!   DELETE /v1/tenants/{tenant}/quota    remove a tenant's override
//!   GET    /livez, /readyz               health
//! ```

mod alerts;
mod anomalies;
pub mod error;
mod ingest;
mod snapshots;
mod sql;
mod tenants;
mod views;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;
use weir_engine::Engine;

use crate::config::Config;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub alerting: Arc<crate::alerting::Alerting>,
    pub lake: Arc<weir_lake::Lake>,
    /// The raw archive, unless `[archive] enabled = false`.
    pub archive: Option<Arc<weir_lake::archive::Archive>>,
    pub config: Arc<Config>,
    /// Becomes true when the server is shutting down, ending long-lived streams.
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(state: AppState, keys: Arc<crate::auth::Keys>) -> Router {
    Router::new()
        .route("/v1/streams", get(ingest::list_streams))
        .route("/v1/streams/{stream}/events", post(ingest::ingest))
        .route("/v1/views", get(views::list).post(views::create))
        .route("/v1/views/{view}", get(views::read).delete(views::drop))
        .route("/v1/views/{view}/subscribe", get(views::subscribe))
        .route("/v1/sql", post(sql::sql))
        .route("/v1/snapshots", post(snapshots::take))
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/alerts/stream", get(alerts::stream))
        .route("/v1/anomalies", get(anomalies::list).post(anomalies::create))
        .route("/v1/anomalies/{name}", axum::routing::delete(anomalies::drop))
        .route("/v1/tenants/{tenant}/quota", get(tenants::get_quota).put(tenants::put_quota).delete(tenants::delete_quota))
        .route("/livez", get(|| async { Json(json!({"status": "live"})) }))
        .route("/readyz", get(|| async { Json(json!({"status": "ready"})) }))
        .fallback(|| async { error::ApiError::not_found("no such endpoint; see docs/http-api.md") })
        // the ingest handler enforces its own, configurable limit
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(keys, crate::auth::authorize))
        .with_state(state)
}
