//! Alerts: the router turns anomaly flags and quota states into alerts with a
//! firing → resolved lifecycle; delivery sends them to Alertmanager and webhooks.
//!
//! ```text
//!   anomalies view ─┐                      ┌─▶ GET /v1/alerts, /v1/alerts/stream (SSE)
//!                   ├─▶ router (hysteresis,├─▶ Alertmanager API v2 (re-sent while firing)
//!   quota_usage ────┘    de-duplication)   ├─▶ signed webhooks (retries, circuit breaker)
//!                                          └─▶ the `alerts` history stream (SQL)
//! ```

pub mod deliver;
pub mod router;

use std::collections::BTreeMap;

use serde::Serialize;

/// Whether an alert is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The condition holds.
    Firing,
    /// The condition no longer holds; `ends_at` says since when.
    Resolved,
}

/// One alert, as it is delivered. Its identity is `fingerprint`, a stable hash of its
/// labels: the same condition on the same series is always the same alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// Hex digest of the labels; stable across restarts.
    pub fingerprint: String,
    /// `alertname`, `tenant`, `severity`, `series` and, for quotas, `limit`.
    pub labels: BTreeMap<String, String>,
    /// `summary` (with value and baseline) and `description`.
    pub annotations: BTreeMap<String, String>,
    /// When it started firing, Unix milliseconds.
    pub starts_at: i64,
    /// When it resolved, Unix milliseconds.
    pub ends_at: Option<i64>,
    /// Firing or resolved.
    pub status: Status,
    /// A number that grows with every state change of any alert: the SSE event id.
    pub seq: u64,
}
