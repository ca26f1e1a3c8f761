//! The alerting service: watches the `anomalies` and `quota_usage` views, routes their
//! rows through the alert router, and hands each state change to delivery
//! (Alertmanager, webhooks), to SSE subscribers and to the `alerts` history stream.
//!
//! ```text
//!   anomalies ───┐ rows (diff > 0)               ┌─▶ Delivery::notify (never waits)
//!                ├──▶ signals ─▶ Router ─ change ─┼─▶ broadcast ─▶ GET /v1/alerts/stream
//!   quota_usage ─┘                               └─▶ engine.ingest(`alerts`) ─▶ SQL
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::sync::broadcast;
use weir_alerts::deliver::{AlertmanagerConfig, Delivery, DeliveryConfig, WebhookConfig};
use weir_alerts::router::{Router, RouterConfig, Signal};
use weir_alerts::{Alert, Status};
use weir_engine::detect::ANOMALIES;
use weir_engine::ingest::Decoded;
use weir_engine::quota::QUOTA_USAGE;
use weir_engine::schema::ALERTS;
use weir_engine::store::{LiveView, Start};
use weir_engine::value::{Row, Value};
use weir_engine::Engine;

/// `[alerting]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Flagged windows in a row before an anomaly alert fires.
    #[serde(default = "default_fire_after")]
    pub fire_after: u32,
    /// Unflagged windows in a row before it resolves.
    #[serde(default = "default_resolve_after")]
    pub resolve_after: u32,
    /// `[[alerting.alertmanagers]]`
    #[serde(default)]
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// `[[alerting.webhooks]]`
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

fn default_fire_after() -> u32 {
    1
}
fn default_resolve_after() -> u32 {
    2
}

/// The running alerting service.
pub struct Alerting {
    router: Mutex<Router>,
    delivery: Delivery,
    changes: broadcast::Sender<Alert>,
    engine: Arc<Engine>,
}

impl Alerting {
    /// Starts delivery and the watchers of `anomalies` and `quota_usage`.
    pub fn start(engine: Arc<Engine>, config: &AlertingConfig) -> anyhow::Result<Arc<Alerting>> {
        let delivery = Delivery::start(&DeliveryConfig { alertmanagers: config.alertmanagers.clone(), webhooks: config.webhooks.clone() })
            .map_err(|e| anyhow::anyhow!("invalid [alerting] configuration: {e}"))?;
        let fire_after = if config.fire_after == 0 { default_fire_after() } else { config.fire_after };
        let resolve_after = if config.resolve_after == 0 { default_resolve_after() } else { config.resolve_after };
        let router = Router::new(RouterConfig { fire_after, resolve_after, history: 1000 });
        let (changes, _) = broadcast::channel(1024);
        let alerting = Arc::new(Alerting { router: Mutex::new(router), delivery, changes, engine: engine.clone() });
        for (name, to_signals) in [(ANOMALIES, anomaly_signals as fn(&Row, u64) -> Vec<Signal>), (QUOTA_USAGE, quota_signals)] {
            let Some(view) = engine.view(name) else { continue };
            tokio::spawn(watch(Arc::downgrade(&alerting), view, to_signals));
        }
        Ok(alerting)
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes observations; delivers and records the state changes.
    fn handle(&self, mut signals: Vec<Signal>) {
        signals.sort_by_key(|s| s.at);
        let changes: Vec<Alert> = {
            let mut router = self.router();
            let changes: Vec<Alert> = signals.into_iter().filter_map(|s| router.observe(s)).collect();
            // broadcast under the lock, so that subscribers see changes in `seq` order
            for alert in &changes {
                let _ = self.changes.send(alert.clone());
            }
            changes
        };
        if changes.is_empty() {
            return;
        }
        for alert in &changes {
            tracing::info!(alert = %alert.labels.get("alertname").map_or("", String::as_str), status = ?alert.status, fingerprint = %alert.fingerprint, "alert");
            self.delivery.notify(alert);
        }
        // the history stream goes through the gate like any event: durable, queryable
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let Some((index, _)) = engine.stream(ALERTS) else { return };
            let now = weir_engine::time::now_ms();
            let rows = changes.iter().enumerate().map(|(i, a)| (i as u32 + 1, history_row(a, now))).collect();
            if let Err(e) = engine.ingest(index, Decoded { rows, rejected: vec![], sizes: vec![] }).await {
                tracing::warn!(error = %e, "could not record alert history");
            }
        });
    }

    /// Alerts firing now and the most recent state changes.
    pub fn list(&self) -> (Vec<Alert>, Vec<Alert>) {
        let router = self.router();
        (router.active(), router.recent())
    }

    /// What a subscriber starts with, and later changes: after `last` (the last `seq` it
    /// saw) the changes since, else (or if those are no longer kept) the alerts firing
    /// now, with `true` to say it is a fresh start.
    pub fn subscribe(&self, last: Option<u64>) -> (bool, Vec<Alert>, broadcast::Receiver<Alert>) {
        let router = self.router();
        let rx = self.changes.subscribe();
        match last.and_then(|seq| router.since(seq)) {
            Some(changes) => (false, changes, rx),
            None => (true, router.active(), rx),
        }
    }

    /// Delivery statistics per receiver.
    pub fn delivery_stats(&self) -> Vec<weir_alerts::deliver::ReceiverStats> {
        self.delivery.stats()
    }
}

/// Follows a view: every added row is an observation.
async fn watch(alerting: std::sync::Weak<Alerting>, view: Arc<LiveView>, to_signals: fn(&Row, u64) -> Vec<Signal>) {
    let mut sub = view.subscribe(None);
    let mut last_epoch = 0;
    if let Start::Snapshot { epoch, rows } = std::mem::replace(&mut sub.start, Start::Resume(Vec::new())) {
        last_epoch = epoch;
        let Some(a) = alerting.upgrade() else { return };
        a.handle(rows.iter().flat_map(|r| to_signals(r, epoch)).collect());
    }
    loop {
        match sub.changes.recv().await {
            Ok(c) => {
                last_epoch = c.epoch;
                let Some(a) = alerting.upgrade() else { return };
                a.handle(c.changes.iter().filter(|c| c.diff > 0).flat_map(|change| to_signals(&change.row.to_row(), c.epoch)).collect());
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                sub = view.subscribe(Some(last_epoch));
                if let Start::Resume(changes) = std::mem::replace(&mut sub.start, Start::Resume(Vec::new())) {
                    let Some(a) = alerting.upgrade() else { return };
                    for c in changes {
                        last_epoch = c.epoch;
                        a.handle(c.changes.iter().filter(|c| c.diff > 0).flat_map(|change| to_signals(&change.row.to_row(), c.epoch)).collect());
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::Str(s)) => Some(s.to_string()),
        _ => None,
    }
}

fn float(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(0.0)
}

fn labels(pairs: &[(&str, Option<String>)]) -> BTreeMap<String, String> {
    pairs.iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))).collect()
}

/// An `anomalies` row (detector, tenant, series, window, value, baseline, deviation, score, flag).
fn anomaly_signals(row: &Row, _epoch: u64) -> Vec<Signal> {
    let (Some(detector), Some(series), Some(Value::Timestamp(window))) = (text(row.first()), text(row.get(2)), row.get(3)) else { return vec![] };
    let tenant = text(row.get(1));
    let (value, baseline, score) = (float(row.get(4)), float(row.get(5)), float(row.get(7)));
    let active = matches!(row.get(8), Some(Value::Bool(true)));
    let labels = labels(&[
        ("alertname", Some("WeirAnomaly".into())),
        ("detector", Some(detector.clone())),
        ("tenant", tenant),
        ("series", Some(series.clone())),
        ("severity", Some("warning".into())),
    ]);
    let when = weir_engine::time::format_rfc3339_ms(*window);
    let annotations = labels_map(&[
        ("summary", format!("{detector}: {series} is {value} in the window at {when}, baseline {baseline:.1} (score {score:.2})")),
        ("description", format!("The anomaly detector {detector} flagged {series}: value {value} against a baseline of {baseline:.2}.")),
        ("value", format!("{value}")),
        ("baseline", format!("{baseline:.3}")),
    ]);
    vec![Signal { labels, annotations, active, at: *window, immediate: false }]
}

/// A `quota_usage` row (tenant, limit, window, window_start, used, limit_value, ratio, state, mode, refused).
fn quota_signals(row: &Row, epoch: u64) -> Vec<Signal> {
    let (Some(tenant), Some(limit), Some(state)) = (text(row.first()), text(row.get(1)), text(row.get(7))) else { return vec![] };
    let (used, value, ratio) = (float(row.get(4)), float(row.get(5)), float(row.get(6)));
    let mode = text(row.get(8)).unwrap_or_default();
    [("TenantQuotaWarning", "warning", "warning"), ("TenantQuotaExceeded", "exceeded", "critical")]
        .into_iter()
        .map(|(name, when, severity)| Signal {
            labels: labels(&[
                ("alertname", Some(name.into())),
                ("tenant", Some(tenant.clone())),
                ("limit", Some(limit.clone())),
                ("series", Some(format!("{tenant}/{limit}"))),
                ("severity", Some(severity.into())),
            ]),
            annotations: labels_map(&[
                ("summary", format!("tenant {tenant} has used {used} of its {limit} limit of {value} ({:.0}%, {mode})", ratio * 100.0)),
                ("description", format!("Quota state {state}: {used} used against a limit of {value}.")),
                ("value", format!("{used}")),
                ("baseline", format!("{value}")),
            ]),
            active: state == when,
            at: epoch as i64,
            immediate: true,
        })
        .collect()
}

fn labels_map(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// A row of the `alerts` history stream.
fn history_row(a: &Alert, now: i64) -> Row {
    let label = |k: &str| a.labels.get(k).map(|v| Value::str(v)).unwrap_or(Value::Null);
    vec![
        label("tenant"),
        Value::Timestamp(now),
        Value::str(&a.fingerprint),
        label("alertname"),
        Value::str(match a.status {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }),
        label("severity"),
        label("series"),
        a.annotations.get("summary").map(|v| Value::str(v)).unwrap_or(Value::Null),
        Value::Timestamp(a.starts_at),
        a.ends_at.map(Value::Timestamp).unwrap_or(Value::Null),
    ]
}
