//! Delivery of alerts to external receivers: Prometheus Alertmanager (API v2) and
//! webhooks signed per [Standard Webhooks](https://www.standardwebhooks.com).
//!
//! ```text
//!                 notify(&alert)          one Tokio task per receiver
//!   router ─────────────┬──▶ [queue] ──▶ Alertmanager task ──▶ POST {url}/api/v2/alerts
//!   (never waits)       │                 keeps the firing set, re-sends it every
//!                       │                 resend_interval, sends a resolved alert once
//!                       └──▶ [queue] ──▶ webhook task ──▶ POST {url}, signed
//!                                         one message at a time, in order; retries with
//!                                         backoff behind a circuit breaker
//! ```
//!
//! [`Delivery::notify`] runs on the ingest side, so it only pushes onto an in-memory queue
//! per receiver; a slow or dead receiver costs memory up to [`QUEUE_CAPACITY`] and then the
//! oldest notifications, never time on the caller's thread. Delivery is at-most-once across
//! restarts: queues are not persisted, and Alertmanager recovers on its own because firing
//! alerts are re-sent on every tick.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{Alert, Status};

/// Notifications a receiver may have waiting before the oldest is dropped.
pub const QUEUE_CAPACITY: usize = 10_000;

/// How long one HTTP request to a receiver may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many resend intervals a firing alert stays valid in Alertmanager: if Weir stops
/// re-sending (it crashed), Alertmanager resolves the alert after this many intervals
/// rather than its own `resolve_timeout`. Prometheus uses a similar margin.
const ALERTMANAGER_VALIDITY_INTERVALS: u32 = 3;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Where alerts are delivered: the receivers of the `[alerting]` section. Every receiver
/// gets every alert.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Alertmanagers to keep informed (API v2). With several, each gets every alert, as
    /// Prometheus does for an Alertmanager cluster.
    #[serde(default)]
    pub alertmanagers: Vec<AlertmanagerConfig>,
    /// HTTP endpoints that receive one signed message per alert state change.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// One Alertmanager.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL, such as `http://127.0.0.1:9093`; alerts go to `{url}/api/v2/alerts`.
    pub url: String,
    /// How often firing alerts are re-sent, such as `"1m"`. Alertmanager forgets an alert
    /// that is not re-sent before its `endsAt` (three intervals later).
    #[serde(default = "default_resend_interval")]
    pub resend_interval: String,
}

/// One webhook endpoint.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL every message is POSTed to.
    pub url: String,
    /// The signing secret, `whsec_` followed by the base64 of the key (Standard Webhooks);
    /// a secret without that prefix is used as raw bytes.
    pub secret: String,
    /// Attempts per message, the first included, before the message is dropped.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles with every further failure.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: String,
    /// The longest wait between two attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: String,
    /// Consecutive failed attempts (across messages) that open the circuit breaker.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long an open circuit stays open before one trial request is let through.
    #[serde(default = "default_open_for")]
    pub open_for: String,
}

// The secret must not reach logs through `{:?}` of the config.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("failure_threshold", &self.failure_threshold)
            .field("open_for", &self.open_for)
            .finish()
    }
}

fn default_resend_interval() -> String {
    "1m".to_owned()
}

fn default_max_attempts() -> u32 {
    6
}

fn default_initial_backoff() -> String {
    "500ms".to_owned()
}

fn default_max_backoff() -> String {
    "30s".to_owned()
}

fn default_failure_threshold() -> u32 {
    5
}

fn default_open_for() -> String {
    "30s".to_owned()
}

/// An Alertmanager, validated.
struct AlertmanagerTarget {
    /// The base URL as configured, for stats and logs.
    url: String,
    /// `{url}/api/v2/alerts`.
    endpoint: String,
    resend_interval: Duration,
}

/// A webhook, validated.
struct WebhookTarget {
    url: String,
    key: Vec<u8>,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    failure_threshold: u32,
    open_for: Duration,
}

/// Collects every problem of a config, so that the user fixes them in one go.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn duration(&mut self, field: &str, value: &str) -> Duration {
        parse_duration(value).unwrap_or_else(|reason| {
            self.0.push(format!("{field}: {reason}"));
            Duration::ZERO
        })
    }

    /// A duration that must not be zero, such as a period.
    fn positive_duration(&mut self, field: &str, value: &str) -> Duration {
        match parse_duration(value) {
            Ok(duration) if duration.is_zero() => {
                self.0.push(format!("{field}: must be longer than zero"));
                duration
            }
            Ok(duration) => duration,
            Err(reason) => {
                self.0.push(format!("{field}: {reason}"));
                Duration::ZERO
            }
        }
    }

    fn url(&mut self, field: &str, value: &str) {
        match reqwest::Url::parse(value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(_) => self.0.push(format!(
                "{field}: {value:?} is not an http:// or https:// URL"
            )),
            Err(e) => self
                .0
                .push(format!("{field}: {value:?} is not a URL ({e})")),
        }
    }

    fn check(&mut self, holds: bool, problem: impl FnOnce() -> String) {
        if !holds {
            self.0.push(problem());
        }
    }
}

/// Turns the raw config into targets, or reports every problem at once.
fn resolve(
    config: &DeliveryConfig,
) -> Result<(Vec<AlertmanagerTarget>, Vec<WebhookTarget>), String> {
    let mut problems = Problems::default();
    let mut alertmanagers = Vec::new();
    for (i, am) in config.alertmanagers.iter().enumerate() {
        let field = format!("alerting.alertmanagers[{i}]");
        problems.url(&format!("{field}.url"), &am.url);
        let resend_interval =
            problems.positive_duration(&format!("{field}.resend_interval"), &am.resend_interval);
        alertmanagers.push(AlertmanagerTarget {
            url: am.url.clone(),
            endpoint: format!("{}/api/v2/alerts", am.url.trim_end_matches('/')),
            resend_interval,
        });
    }
    let mut webhooks = Vec::new();
    for (i, wh) in config.webhooks.iter().enumerate() {
        let field = format!("alerting.webhooks[{i}]");
        problems.url(&format!("{field}.url"), &wh.url);
        let key = secret_key(&wh.secret).unwrap_or_else(|reason| {
            problems.0.push(format!("{field}.secret: {reason}"));
            Vec::new()
        });
        problems.check(!wh.secret.is_empty(), || {
            format!("{field}.secret: must not be empty")
        });
        problems.check(wh.max_attempts > 0, || {
            format!("{field}.max_attempts: must be at least 1")
        });
        problems.check(wh.failure_threshold > 0, || {
            format!("{field}.failure_threshold: must be at least 1")
        });
        webhooks.push(WebhookTarget {
            url: wh.url.clone(),
            key,
            max_attempts: wh.max_attempts,
            initial_backoff: problems
                .duration(&format!("{field}.initial_backoff"), &wh.initial_backoff),
            max_backoff: problems.duration(&format!("{field}.max_backoff"), &wh.max_backoff),
            failure_threshold: wh.failure_threshold,
            open_for: problems.duration(&format!("{field}.open_for"), &wh.open_for),
        });
    }
    if problems.0.is_empty() {
        Ok((alertmanagers, webhooks))
    } else {
        Err(problems.0.join("; "))
    }
}

/// Parses `"250ms"`, `"5s"`, `"1m"`, `"2h"` or `"1d"`: a whole number and a unit.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: expected a whole number followed by ms, s, m, h or d")
    };
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

// ---------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------

/// The running delivery: one task per receiver, fed by [`Delivery::notify`].
///
/// Dropping it stops the tasks, like [`Delivery::shutdown`].
pub struct Delivery {
    receivers: Vec<Arc<Receiver>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a receiver is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// A Prometheus Alertmanager.
    Alertmanager,
    /// A Standard Webhooks endpoint.
    Webhook,
}

/// The state of a receiver's circuit breaker. Alertmanagers have none and are always
/// `Closed`: a failed POST is simply repeated at the next resend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// The endpoint failed too often: no requests until `open_for` has passed.
    Open,
    /// One trial request is under way; its outcome closes or reopens the circuit.
    HalfOpen,
}

impl CircuitState {
    fn from_u8(value: u8) -> CircuitState {
        match value {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }
}

/// Counters of one receiver since [`Delivery::start`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceiverStats {
    /// Alertmanager or webhook.
    pub kind: ReceiverKind,
    /// The URL as configured (the base URL for an Alertmanager).
    pub url: String,
    /// Webhook: messages accepted with a 2xx. Alertmanager: batches accepted.
    pub delivered: u64,
    /// Requests that failed: non-2xx, connection error or timeout.
    pub failed_attempts: u64,
    /// Notifications lost: pushed out of a full queue or, for a webhook, given up after
    /// `max_attempts`.
    pub dropped: u64,
    /// The circuit breaker.
    pub circuit: CircuitState,
    /// Notifications not delivered yet: those waiting in the queue, plus the webhook
    /// message being attempted or the resolved alerts an Alertmanager has not taken yet.
    pub queued: u64,
}

/// What [`Delivery`] and a receiver's task share.
struct Receiver {
    kind: ReceiverKind,
    url: String,
    queue: Queue<Notification>,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
    dropped: AtomicU64,
    /// Notifications pushed out of the full queue, to rate-limit the warning.
    overflowed: AtomicU64,
    /// Taken from the queue by the task but not delivered yet.
    held: AtomicU64,
    circuit: AtomicU8,
}

impl Receiver {
    fn new(kind: ReceiverKind, url: String) -> Receiver {
        Receiver {
            kind,
            url,
            queue: Queue::new(QUEUE_CAPACITY),
            delivered: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            held: AtomicU64::new(0),
            circuit: AtomicU8::new(CircuitState::Closed as u8),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            kind: self.kind,
            url: self.url.clone(),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            circuit: CircuitState::from_u8(self.circuit.load(Ordering::Relaxed)),
            queued: self.queue.len() as u64 + self.held.load(Ordering::Relaxed),
        }
    }
}

/// One state change of one alert, as queued for every receiver.
#[derive(Clone)]
struct Notification {
    alert: Arc<Alert>,
    /// When Weir emitted it: the webhook payload's `timestamp`.
    at: DateTime<Utc>,
}

impl Delivery {
    /// Validates `config` and starts one task per receiver on the current Tokio runtime.
    ///
    /// Errors name every invalid field at once; calling it outside a Tokio runtime is
    /// an error too.
    pub fn start(config: &DeliveryConfig) -> Result<Delivery, String> {
        let (alertmanagers, webhooks) = resolve(config)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "alert delivery must be started inside a Tokio runtime".to_owned())?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for alert delivery: {e}"))?;
        let (stop, _) = watch::channel(false);
        let mut receivers = Vec::new();
        let mut tasks = Vec::new();
        for target in alertmanagers {
            let receiver = Arc::new(Receiver::new(
                ReceiverKind::Alertmanager,
                target.url.clone(),
            ));
            tasks.push(runtime.spawn(run_alertmanager(
                target,
                Arc::clone(&receiver),
                client.clone(),
                stop.subscribe(),
            )));
            receivers.push(receiver);
        }
        for target in webhooks {
            let receiver = Arc::new(Receiver::new(ReceiverKind::Webhook, target.url.clone()));
            tasks.push(runtime.spawn(run_webhook(
                target,
                Arc::clone(&receiver),
                client.clone(),
                stop.subscribe(),
            )));
            receivers.push(receiver);
        }
        Ok(Delivery {
            receivers,
            stop,
            tasks,
        })
    }

    /// Queues a state change of `alert` for every receiver. Never waits: when a receiver's
    /// queue is full its oldest notification is dropped (and counted, and logged). After
    /// [`Delivery::shutdown`] it does nothing.
    pub fn notify(&self, alert: &Alert) {
        if self.receivers.is_empty() || *self.stop.borrow() {
            return;
        }
        let notification = Notification {
            alert: Arc::new(alert.clone()),
            at: Utc::now(),
        };
        for receiver in &self.receivers {
            if receiver.queue.push(notification.clone()) {
                Receiver::count(&receiver.dropped);
                let overflowed = receiver.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per thousand, not one per alert, while a receiver is down.
                if overflowed == 1 || overflowed % 1_000 == 0 {
                    tracing::warn!(
                        receiver = %receiver.url,
                        kind = ?receiver.kind,
                        dropped_so_far = overflowed,
                        "alert delivery queue full ({QUEUE_CAPACITY}): dropping the oldest notification"
                    );
                }
            }
        }
    }

    /// Counters of every receiver, Alertmanagers first, in config order.
    pub fn stats(&self) -> Vec<ReceiverStats> {
        self.receivers
            .iter()
            .map(|receiver| receiver.stats())
            .collect()
    }

    /// Stops every task at its next await point, abandoning requests in flight and
    /// whatever is queued. Does not wait: see [`Delivery::stop`] for that.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Stops every task, like [`Delivery::shutdown`], and returns once all have ended.
    pub async fn stop(mut self) {
        self.shutdown();
        for task in std::mem::take(&mut self.tasks) {
            if let Err(error) = task.await {
                tracing::error!(%error, "an alert delivery task failed");
            }
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `work` unless the delivery is stopped first (or dropped); `None` means stopped.
async fn until_stopped<F: Future>(stop: &mut watch::Receiver<bool>, work: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => None,
        output = work => Some(output),
    }
}

/// An error with its causes: reqwest's own message ("error sending request") says little.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sends a request and turns anything but a 2xx into an error.
async fn send(request: reqwest::RequestBuilder) -> Result<(), String> {
    let response = request.send().await.map_err(|e| describe(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

// ---------------------------------------------------------------------------------------
// The queue
// ---------------------------------------------------------------------------------------

/// A multi-producer, single-consumer FIFO that never makes the producer wait: when full,
/// the oldest item makes room. The lock is held only to push or pop, never across an await.
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    ready: Notify,
    capacity: usize,
}

impl<T> Queue<T> {
    fn new(capacity: usize) -> Queue<T> {
        Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        // The critical sections cannot panic half-way; a poisoned queue is still consistent.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item`; returns whether the oldest item was dropped to make room.
    fn push(&self, item: T) -> bool {
        let dropped = {
            let mut items = self.lock();
            let full = items.len() >= self.capacity;
            if full {
                items.pop_front();
            }
            items.push_back(item);
            full
        };
        self.ready.notify_one();
        dropped
    }

    fn try_pop(&self) -> Option<T> {
        self.lock().pop_front()
    }

    /// The next item, waiting for one. Cancel-safe: an item is only taken when returned.
    async fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            // `notify_one` keeps a permit when nobody waits, so a push between
            // `try_pop` and here is not missed.
            self.ready.notified().await;
        }
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

// ---------------------------------------------------------------------------------------
// Alertmanager
// ---------------------------------------------------------------------------------------

/// An alert as Alertmanager's `POST /api/v2/alerts` takes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert<'a> {
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    starts_at: String,
    /// For a firing alert, when Alertmanager may consider it resolved if no re-send comes.
    ends_at: String,
}

/// Keeps one Alertmanager in sync: every change is sent at once, and the whole firing set
/// is re-sent every `resend_interval` (one POST for all alerts). A resolved alert rides
/// along until one POST succeeds, then it is forgotten. A failed POST is only logged: the
/// next tick sends the same alerts again.
async fn run_alertmanager(
    target: AlertmanagerTarget,
    receiver: Arc<Receiver>,
    client: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) {
    let mut firing: BTreeMap<String, Arc<Alert>> = BTreeMap::new();
    let mut resolved: BTreeMap<String, Arc<Alert>> = BTreeMap::new();
    let mut resend = tokio::time::interval_at(
        Instant::now() + target.resend_interval,
        target.resend_interval,
    );
    resend.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let change = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            notification = receiver.queue.pop() => Some(notification),
            _ = resend.tick() => None,
        };
        if let Some(notification) = change {
            // Whatever else is queued goes into the same POST.
            apply(notification, &mut firing, &mut resolved);
            while let Some(notification) = receiver.queue.try_pop() {
                apply(notification, &mut firing, &mut resolved);
            }
        }
        receiver
            .held
            .store(resolved.len() as u64, Ordering::Relaxed);
        if firing.is_empty() && resolved.is_empty() {
            continue;
        }
        let now = Utc::now();
        let valid_until =
            TimeDelta::from_std(target.resend_interval * ALERTMANAGER_VALIDITY_INTERVALS)
                .ok()
                .and_then(|validity| now.checked_add_signed(validity))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let batch: Vec<PostableAlert<'_>> = firing
            .values()
            .map(|alert| PostableAlert {
                labels: &alert.labels,
                annotations: &alert.annotations,
                starts_at: rfc3339_from_millis(alert.starts_at),
                ends_at: rfc3339(valid_until),
            })
            .chain(resolved.values().map(|alert| {
                PostableAlert {
                    labels: &alert.labels,
                    annotations: &alert.annotations,
                    starts_at: rfc3339_from_millis(alert.starts_at),
                    ends_at: alert
                        .ends_at
                        .map_or_else(|| rfc3339(now), rfc3339_from_millis),
                }
            }))
            .collect();
        // The next re-send is one full interval after this send, whatever triggered it.
        resend.reset();
        let request = client.post(&target.endpoint).json(&batch);
        match until_stopped(&mut stop, send(request)).await {
            None => return,
            Some(Ok(())) => {
                Receiver::count(&receiver.delivered);
                resolved.clear();
            }
            Some(Err(reason)) => {
                Receiver::count(&receiver.failed_attempts);
                tracing::warn!(
                    alertmanager = %target.url,
                    alerts = batch.len(),
                    %reason,
                    "Alertmanager did not take the alerts; sending them again at the next resend"
                );
            }
        }
        receiver
            .held
            .store(resolved.len() as u64, Ordering::Relaxed);
    }
}

/// Files a state change: an alert is either in the firing set or waiting to be sent
/// once as resolved, whichever it did last.
fn apply(
    notification: Notification,
    firing: &mut BTreeMap<String, Arc<Alert>>,
    resolved: &mut BTreeMap<String, Arc<Alert>>,
) {
    let alert = notification.alert;
    let fingerprint = alert.fingerprint.clone();
    match alert.status {
        Status::Firing => {
            resolved.remove(&fingerprint);
            firing.insert(fingerprint, alert);
        }
        Status::Resolved => {
            firing.remove(&fingerprint);
            resolved.insert(fingerprint, alert);
        }
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rfc3339_from_millis(millis: i64) -> String {
    // The router's timestamps come from the clock; one out of chrono's range
    // (±262,000 years) can only be a bug upstream, and the epoch is as good as any.
    rfc3339(DateTime::from_timestamp_millis(millis).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

/// The body of a webhook message.
#[derive(Serialize)]
struct WebhookPayload<'a> {
    #[serde(rename = "type")]
    event_type: &'static str,
    timestamp: String,
    data: &'a Alert,
}

/// A message ready to be signed and sent; `id` and `body` stay the same on every attempt.
struct WebhookMessage {
    id: String,
    body: Vec<u8>,
}

impl WebhookMessage {
    fn new(notification: &Notification) -> WebhookMessage {
        let alert = &notification.alert;
        let payload = WebhookPayload {
            event_type: match alert.status {
                Status::Firing => "alert.firing",
                Status::Resolved => "alert.resolved",
            },
            timestamp: rfc3339(notification.at),
            data: alert,
        };
        WebhookMessage {
            // `seq` grows with every state change, so the id names this message only.
            id: format!("msg_{}_{}", alert.fingerprint, alert.seq),
            body: serde_json::to_vec(&payload)
                .expect("an alert has string keys and plain values, so it serializes to JSON"),
        }
    }
}

/// Delivers one webhook's messages one at a time, in order.
async fn run_webhook(
    target: WebhookTarget,
    receiver: Arc<Receiver>,
    client: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) {
    let mut circuit = Circuit::new(target.failure_threshold, target.open_for);
    while let Some(notification) = until_stopped(&mut stop, receiver.queue.pop()).await {
        receiver.held.store(1, Ordering::Relaxed);
        let message = WebhookMessage::new(&notification);
        let attempts = WebhookAttempts {
            target: &target,
            receiver: &receiver,
            client: &client,
        };
        if attempts
            .deliver(&message, &mut circuit, &mut stop)
            .await
            .is_none()
        {
            return;
        }
        receiver.held.store(0, Ordering::Relaxed);
    }
}

/// The attempts to deliver one message to one webhook.
struct WebhookAttempts<'a> {
    target: &'a WebhookTarget,
    receiver: &'a Receiver,
    client: &'a reqwest::Client,
}

impl WebhookAttempts<'_> {
    /// Attempts `message` until it is delivered or has used `max_attempts`; `None` if
    /// stopped meanwhile. While the circuit is open the message waits without spending
    /// attempts.
    async fn deliver(
        &self,
        message: &WebhookMessage,
        circuit: &mut Circuit,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<()> {
        let (target, receiver) = (self.target, self.receiver);
        let mut attempt = 0;
        loop {
            while let Err(until) = circuit.admit(Instant::now()) {
                until_stopped(stop, tokio::time::sleep_until(until)).await?;
            }
            receiver
                .circuit
                .store(circuit.state() as u8, Ordering::Relaxed);
            attempt += 1;
            let outcome = until_stopped(stop, self.attempt(message)).await?;
            let was = circuit.state();
            match outcome {
                Ok(()) => {
                    circuit.succeeded();
                    receiver
                        .circuit
                        .store(circuit.state() as u8, Ordering::Relaxed);
                    Receiver::count(&receiver.delivered);
                    if was != CircuitState::Closed {
                        tracing::info!(webhook = %target.url, "webhook answered the trial request: circuit closed");
                    }
                    return Some(());
                }
                Err(reason) => {
                    circuit.failed(Instant::now());
                    receiver
                        .circuit
                        .store(circuit.state() as u8, Ordering::Relaxed);
                    Receiver::count(&receiver.failed_attempts);
                    if circuit.state() == CircuitState::Open {
                        tracing::warn!(
                            webhook = %target.url,
                            open_for = ?target.open_for,
                            "webhook keeps failing: circuit open, no requests until it has passed"
                        );
                    }
                    if attempt >= target.max_attempts {
                        Receiver::count(&receiver.dropped);
                        tracing::error!(
                            webhook = %target.url,
                            webhook_id = %message.id,
                            attempts = attempt,
                            %reason,
                            "webhook message dropped after its last attempt"
                        );
                        return Some(());
                    }
                    let wait = backoff(target.initial_backoff, target.max_backoff, attempt);
                    tracing::warn!(
                        webhook = %target.url,
                        webhook_id = %message.id,
                        attempt,
                        %reason,
                        retry_in = ?wait,
                        "webhook delivery failed"
                    );
                    // An open circuit makes the wait longer still: see `admit` above.
                    until_stopped(stop, tokio::time::sleep(wait)).await?;
                }
            }
        }
    }

    /// One signed POST; the timestamp (and so the signature) is fresh on every attempt,
    /// since receivers reject stale timestamps.
    async fn attempt(&self, message: &WebhookMessage) -> Result<(), String> {
        let timestamp = Utc::now().timestamp();
        let signature = sign_with_key(&self.target.key, &message.id, timestamp, &message.body);
        let request = self
            .client
            .post(&self.target.url)
            .header("webhook-id", &message.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(message.body.clone());
        send(request).await
    }
}

/// The wait after failed attempt number `attempt` (from 1): `initial` doubled per earlier
/// failure, capped at `max`, then shortened by up to 10% at random so that many Weir
/// instances retrying the same endpoint drift apart.
fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1 << doublings).min(max);
    base.mul_f64(1.0 - 0.1 * random_fraction())
}

/// A number in `[0, 1)`; good enough for jitter, from the std hasher's random keys.
fn random_fraction() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1_u64 << 53) as f64
}

/// A webhook's circuit breaker.
///
/// ```text
///            failure_threshold consecutive failed attempts
///   Closed ─────────────────────────────────────────────────▶ Open ◀─┐
///     ▲                                                        │     │ trial fails
///     │ trial succeeds                   open_for has passed   ▼     │
///     └──────────────────────────────────────────────────── HalfOpen ┘
/// ```
///
/// Any success resets the count of consecutive failures.
struct Circuit {
    threshold: u32,
    open_for: Duration,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

impl Circuit {
    fn new(threshold: u32, open_for: Duration) -> Circuit {
        Circuit {
            threshold,
            open_for,
            phase: Phase::Closed {
                consecutive_failures: 0,
            },
        }
    }

    /// Whether a request may be made at `now`; if not, when to ask again. An open
    /// circuit whose time is up lets one trial through and becomes half-open.
    fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        match self.phase {
            Phase::Open { until } if now < until => Err(until),
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen;
                Ok(())
            }
            Phase::Closed { .. } | Phase::HalfOpen => Ok(()),
        }
    }

    fn succeeded(&mut self) {
        self.phase = Phase::Closed {
            consecutive_failures: 0,
        };
    }

    fn failed(&mut self, now: Instant) {
        self.phase = match self.phase {
            Phase::Closed {
                consecutive_failures,
            } if consecutive_failures + 1 < self.threshold => Phase::Closed {
                consecutive_failures: consecutive_failures + 1,
            },
            Phase::Closed { .. } | Phase::HalfOpen | Phase::Open { .. } => Phase::Open {
                until: now + self.open_for,
            },
        };
    }

    fn state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed { .. } => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen => CircuitState::HalfOpen,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Signatures (Standard Webhooks)
// ---------------------------------------------------------------------------------------

/// The HMAC key of a secret: the base64 after `whsec_`, or the raw bytes of a secret
/// without that prefix.
fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => BASE64
            .decode(encoded)
            .map_err(|e| format!("the part after `whsec_` is not valid base64 ({e})")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// [`secret_key`] for [`sign`] and [`verify`], which cannot fail: a `whsec_` secret with
/// broken base64 (which [`Delivery::start`] rejects) is used as raw bytes.
fn secret_key_lenient(secret: &str) -> Vec<u8> {
    secret_key(secret).unwrap_or_else(|_| secret.as_bytes().to_vec())
}

fn signing_mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn sign_with_key(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = signing_mac(key, id, &timestamp.to_string(), body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value for a message: `v1,` and the base64 of
/// HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed by `secret` (`whsec_<base64>`, or
/// raw bytes without the prefix).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    sign_with_key(&secret_key_lenient(secret), id, timestamp, body)
}

/// Whether `signatures` (a `webhook-signature` header: space-separated `v1,<base64>`
/// entries, other versions ignored) holds a valid signature of the message under
/// `secret`. Compares in constant time.
///
/// Only the signature is checked: a receiver should also reject a `timestamp` far from
/// its clock (Standard Webhooks suggests five minutes) so that captured messages cannot
/// be replayed, and may de-duplicate on `id`.
pub fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let expected = signing_mac(&secret_key_lenient(secret), id, timestamp, body);
    signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .any(|signature| expected.clone().verify_slice(&signature).is_ok())
}

#[cfg(test)]
mod tests;
