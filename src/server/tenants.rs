//! `GET` and `PUT /v1/tenants/{tenant}/quota`: a tenant's plan and its usage.

use axum::extract::{Extension, Path, State};
use axum::Json;
use serde_json::{json, Value as Json_};
use weir_engine::quota::{Plan, QUOTA_USAGE};

use super::error::ApiError;
use crate::auth::Principal;
use super::AppState;

/// The tenant's effective plan, its override, and its `quota_usage` rows.
pub async fn get_quota(State(app): State<AppState>, Extension(principal): Extension<Principal>, Path(tenant): Path<String>) -> Result<Json<Json_>, ApiError> {
    if !principal.sees(&tenant) {
        return Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, "tenant_scope", format!("this key may not see tenant {tenant}")));
    }
    Ok(Json(describe(&app, &tenant)))
}

/// Replaces the tenant's override with the body, e.g.
/// `{"events_per_minute": 1000, "events_per_month": 5000000, "mode": "hard"}`.
pub async fn put_quota(State(app): State<AppState>, Path(tenant): Path<String>, body: axum::body::Bytes) -> Result<Json<Json_>, ApiError> {
    if tenant.is_empty() {
        return Err(ApiError::bad_request("the tenant is empty"));
    }
    let plan: Plan = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid plan: {e}; expected an object with any of events_per_minute, events_per_hour, events_per_day, events_per_month, bytes_per_day (non-negative integers) and mode (\"hard\" or \"soft\")"
        ))
    })?;
    app.engine.quotas().set(&tenant, plan)?;
    // the quota_usage view follows within a moment; wait for it so that a read after
    // this reply sees the new limits
    if let Some(view) = app.engine.view(QUOTA_USAGE) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        let epoch = view.epoch();
        while view.epoch() == epoch && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    Ok(Json(describe(&app, &tenant)))
}

/// `DELETE /v1/tenants/{tenant}/quota`: removes the tenant's override; the default plan
/// applies again.
pub async fn delete_quota(State(app): State<AppState>, Path(tenant): Path<String>) -> Result<Json<Json_>, ApiError> {
    if !app.engine.quotas().remove(&tenant)? {
        return Err(ApiError::not_found(format!("tenant {tenant} has no quota override")));
    }
    Ok(Json(describe(&app, &tenant)))
}

fn describe(app: &AppState, tenant: &str) -> Json_ {
    let quotas = app.engine.quotas();
    let settings = quotas.settings();
    let usage: Vec<Json_> = match app.engine.view(QUOTA_USAGE) {
        Some(view) => {
            let (_, rows) = view.snapshot();
            rows.iter()
                .filter(|r| matches!(r.first(), Some(weir_engine::value::Value::Str(t)) if &**t == tenant))
                .map(|r| weir_engine::json::row_to_json(&view.info.columns, r))
                .collect()
        }
        None => Vec::new(),
    };
    json!({
        "tenant": tenant,
        "plan": settings.plan(tenant),
        "override": settings.tenants.get(tenant),
        "warning_ratio": settings.warning_ratio,
        "usage": usage,
    })
}
