//! Tenant quotas: plans of limits, the usage ledger the ingest gate enforces them
//! with, and the `quota_usage` rows derived from the dataflow's usage views.
//!
//! ```text
//!   gate: accepted / refused events ─▶ ledger (tenant, minute, metric) += n ─▶ `usage` stream (weighted rows)
//!           ▲ hard limit reached? refuse the whole request (429)        ─▶ usage_per_{minute,hour,day,month} views
//!           └── current-window counters                                       │ + plans (limits)
//!                                                                             ▼
//!                                                                     `quota_usage` view
//! ```
//!
//! Windows are calendar windows in UTC on ingest time: the minute, hour, day and month an
//! event was accepted in. The `usage` stream is a bag of unit facts: each accepted event
//! adds one row with metric `events`, each of its bytes one row with metric `bytes`, each
//! refused event one row with metric `refused`; rows of the same tenant, minute and metric
//! are one row with a multiplicity, so `count(*)` sums them and memory stays one row per
//! tenant, minute and metric.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::{Column, DataType, Stream, TimePolicy};
use crate::value::{Row, Text, Value};

/// The built-in usage stream.
pub const USAGE: &str = "usage";
/// The derived view of every tenant's usage against its limits.
pub const QUOTA_USAGE: &str = "quota_usage";
/// Default retention of the usage stream: a calendar month and some.
pub const USAGE_RETENTION_MS: i64 = 35 * 86_400_000;

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Metric {
    /// Accepted events.
    Events,
    /// Bytes of accepted events, as received.
    Bytes,
    /// Events refused because a hard limit was reached.
    Refused,
}

impl Metric {
    /// The value of the `metric` column.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Events => "events",
            Metric::Bytes => "bytes",
            Metric::Refused => "refused",
        }
    }

    fn parse(s: &str) -> Option<Metric> {
        [Metric::Events, Metric::Bytes, Metric::Refused].into_iter().find(|m| m.name() == s)
    }
}

/// A calendar window in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// A minute.
    Minute,
    /// An hour.
    Hour,
    /// A day.
    Day,
    /// A calendar month.
    Month,
}

impl Period {
    /// All periods, shortest first.
    pub const ALL: [Period; 4] = [Period::Minute, Period::Hour, Period::Day, Period::Month];

    /// The name used in view names and `date_trunc`.
    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The start of the window holding `ts` (milliseconds).
    pub fn start(self, ts: i64) -> i64 {
        match self {
            Period::Minute => ts.div_euclid(60_000) * 60_000,
            Period::Hour => ts.div_euclid(3_600_000) * 3_600_000,
            Period::Day => ts.div_euclid(86_400_000) * 86_400_000,
            Period::Month => {
                let t = utc(ts);
                Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0).single().map_or(ts, |m| m.timestamp_millis())
            }
        }
    }

    /// The end (exclusive) of the window holding `ts`.
    pub fn end(self, ts: i64) -> i64 {
        let start = self.start(ts);
        match self {
            Period::Minute => start + 60_000,
            Period::Hour => start + 3_600_000,
            Period::Day => start + 86_400_000,
            Period::Month => utc(start).checked_add_months(Months::new(1)).map_or(start + 31 * 86_400_000, |t| t.timestamp_millis()),
        }
    }

    /// The name of the built-in view counting usage per window of this period.
    pub fn view(self) -> String {
        format!("usage_per_{}", self.name())
    }

    /// The built-in view counting usage per tenant and window of this period.
    pub fn view_sql(self) -> String {
        format!(
            "CREATE VIEW {} AS SELECT tenant, date_trunc('{}', ts) AS window_start, \
             count(*) FILTER (WHERE metric = 'events') AS events, \
             count(*) FILTER (WHERE metric = 'bytes') AS bytes, \
             count(*) FILTER (WHERE metric = 'refused') AS refused \
             FROM {USAGE} GROUP BY tenant, date_trunc('{}', ts)",
            self.view(),
            self.name(),
            self.name()
        )
    }

    /// How long its view keeps windows: the current and the previous one.
    pub fn view_retention_ms(self) -> i64 {
        match self {
            Period::Minute => 2 * 60_000,
            Period::Hour => 2 * 3_600_000,
            Period::Day => 2 * 86_400_000,
            Period::Month => USAGE_RETENTION_MS,
        }
    }
}

fn utc(ts: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ts).unwrap_or_default()
}

/// A limit a plan can set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Limit {
    /// Events per minute.
    EventsPerMinute,
    /// Events per hour.
    EventsPerHour,
    /// Events per day.
    EventsPerDay,
    /// Events per calendar month.
    EventsPerMonth,
    /// Bytes per day.
    BytesPerDay,
}

impl Limit {
    /// Every limit.
    pub const ALL: [Limit; 5] = [Limit::EventsPerMinute, Limit::EventsPerHour, Limit::EventsPerDay, Limit::EventsPerMonth, Limit::BytesPerDay];

    /// Its name, as in plans and in the `limit` column.
    pub fn name(self) -> &'static str {
        match self {
            Limit::EventsPerMinute => "events_per_minute",
            Limit::EventsPerHour => "events_per_hour",
            Limit::EventsPerDay => "events_per_day",
            Limit::EventsPerMonth => "events_per_month",
            Limit::BytesPerDay => "bytes_per_day",
        }
    }

    /// What it counts.
    pub fn metric(self) -> Metric {
        match self {
            Limit::BytesPerDay => Metric::Bytes,
            _ => Metric::Events,
        }
    }

    /// Its window.
    pub fn period(self) -> Period {
        match self {
            Limit::EventsPerMinute => Period::Minute,
            Limit::EventsPerHour => Period::Hour,
            Limit::EventsPerDay | Limit::BytesPerDay => Period::Day,
            Limit::EventsPerMonth => Period::Month,
        }
    }
}

/// Whether reaching a limit refuses events or only warns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse events once the limit is reached (HTTP 429).
    #[default]
    Hard,
    /// Count and alert, never refuse.
    Soft,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Hard => "hard",
            Mode::Soft => "soft",
        }
    }
}

/// A plan: limits (absent = unlimited) and a mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Events per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_minute: Option<u64>,
    /// Events per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_hour: Option<u64>,
    /// Events per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_day: Option<u64>,
    /// Events per calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_month: Option<u64>,
    /// Bytes per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_day: Option<u64>,
    /// `hard` (default) or `soft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl Plan {
    /// The value of a limit, if set.
    pub fn limit(&self, limit: Limit) -> Option<u64> {
        match limit {
            Limit::EventsPerMinute => self.events_per_minute,
            Limit::EventsPerHour => self.events_per_hour,
            Limit::EventsPerDay => self.events_per_day,
            Limit::EventsPerMonth => self.events_per_month,
            Limit::BytesPerDay => self.bytes_per_day,
        }
    }

    /// The mode (hard unless set).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or_default()
    }

    /// This plan's fields over `base`'s.
    fn over(&self, base: &Plan) -> Plan {
        Plan {
            events_per_minute: self.events_per_minute.or(base.events_per_minute),
            events_per_hour: self.events_per_hour.or(base.events_per_hour),
            events_per_day: self.events_per_day.or(base.events_per_day),
            events_per_month: self.events_per_month.or(base.events_per_month),
            bytes_per_day: self.bytes_per_day.or(base.bytes_per_day),
            mode: self.mode.or(base.mode),
        }
    }
}

/// Quota settings: the default plan, per-tenant overrides, the warning ratio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuotaSettings {
    /// The plan of every tenant without an override.
    pub default: Plan,
    /// Per-tenant overrides; a field absent from an override comes from `default`.
    pub tenants: BTreeMap<String, Plan>,
    /// Usage at or above this fraction of a limit is `warning`.
    pub warning_ratio: f64,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        QuotaSettings { default: Plan::default(), tenants: BTreeMap::new(), warning_ratio: 0.8 }
    }
}

impl QuotaSettings {
    /// A tenant's effective plan.
    pub fn plan(&self, tenant: &str) -> Plan {
        match self.tenants.get(tenant) {
            Some(p) => p.over(&self.default),
            None => self.default.clone(),
        }
    }
}

/// The quota settings in force, shared by the gate and the API, with run-time
/// overrides kept in `<data-dir>/quotas.json`.
pub struct Quotas {
    state: RwLock<QuotaState>,
    path: Option<PathBuf>,
}

struct QuotaState {
    /// What is in force: the configuration's overrides with the run-time ones on top.
    settings: QuotaSettings,
    /// The configuration's overrides alone.
    configured: BTreeMap<String, Plan>,
    /// Overrides set at run time, as stored in `quotas.json`.
    runtime: BTreeMap<String, Plan>,
}

impl Quotas {
    /// Settings from configuration, with the overrides stored under `data_dir` on top.
    pub fn open(settings: QuotaSettings, data_dir: Option<&std::path::Path>) -> Result<Quotas> {
        let path = data_dir.map(|d| d.join("quotas.json"));
        let mut runtime = BTreeMap::new();
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => runtime = serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
            }
        }
        if !(settings.warning_ratio > 0.0 && settings.warning_ratio <= 1.0) {
            return Err(Error::Config(format!("quotas.warning_ratio must be in (0, 1], not {}", settings.warning_ratio)));
        }
        let configured = settings.tenants.clone();
        let mut state = QuotaState { settings, configured, runtime };
        state.merge();
        Ok(Quotas { state: RwLock::new(state), path })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, QuotaState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings now.
    pub fn settings(&self) -> QuotaSettings {
        self.read().settings.clone()
    }

    /// A tenant's effective plan.
    pub fn plan(&self, tenant: &str) -> Plan {
        self.read().settings.plan(tenant)
    }

    /// Sets a tenant's run-time override (over any from the configuration), durably.
    pub fn set(&self, tenant: &str, plan: Plan) -> Result<()> {
        self.update(|runtime| {
            runtime.insert(tenant.to_string(), plan);
        })
    }

    /// Removes a tenant's run-time override, durably (an override from the
    /// configuration applies again); whether there was one.
    pub fn remove(&self, tenant: &str) -> Result<bool> {
        let mut had = false;
        self.update(|runtime| had = runtime.remove(tenant).is_some())?;
        Ok(had)
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, Plan>)) -> Result<()> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut runtime = state.runtime.clone();
        change(&mut runtime);
        if let Some(p) = &self.path {
            let stored = serde_json::to_vec_pretty(&runtime).expect("plans serialize");
            let tmp = p.with_extension("json.tmp");
            std::fs::write(&tmp, stored).and_then(|_| std::fs::rename(&tmp, p)).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        }
        state.runtime = runtime;
        state.merge();
        Ok(())
    }
}

impl QuotaState {
    fn merge(&mut self) {
        let mut tenants = self.configured.clone();
        tenants.extend(self.runtime.clone());
        self.settings.tenants = tenants;
    }
}

/// The built-in `usage` stream: `tenant`, `ts` (the minute), `metric`.
pub fn usage_stream(retention_ms: i64) -> Stream {
    let columns = vec![
        Column::new("tenant", DataType::String, false),
        Column::new("ts", DataType::Timestamp, false),
        Column::new("metric", DataType::String, false),
    ];
    let mut s = Stream::new(USAGE, columns, "tenant", "ts", None, TimePolicy { lateness_ms: 0, retention_ms }).expect("the usage schema is valid");
    s.weighted = true;
    s.metered = false;
    s
}

/// A request refused because a tenant reached a hard limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Refusal {
    /// The tenant.
    pub tenant: String,
    /// The limit reached, e.g. `events_per_minute`.
    pub limit: &'static str,
    /// Its value.
    pub limit_value: u64,
    /// Usage in the current window before this request.
    pub used: u64,
    /// What this request would have added.
    pub requested: u64,
    /// Start of the current window (Unix ms).
    pub window_start: i64,
    /// Seconds until the window resets.
    pub retry_after_s: u64,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {} has reached its {} limit of {} ({} used); requests are refused until the window resets in {} s",
            self.tenant, self.limit, self.limit_value, self.used, self.retry_after_s
        )
    }
}

/// Usage the gate remembers: every (tenant, minute, metric) amount within retention,
/// and each tenant's totals in the current window of every period.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    entries: BTreeMap<(i64, Text, Metric), i64>,
    /// Per tenant, per period: (window start, events, bytes).
    current: foldhash::HashMap<Text, [(i64, u64, u64); 4]>,
    expired_before: i64,
}

impl Ledger {
    /// Records `n` of `metric` for `tenant` at `ts`.
    pub fn add(&mut self, tenant: &Text, ts: i64, metric: Metric, n: i64) {
        let minute = Period::Minute.start(ts);
        *self.entries.entry((minute, tenant.clone(), metric)).or_default() += n;
        if metric == Metric::Refused {
            return;
        }
        // (the tenant is copied only the first time it is seen)
        let windows = match self.current.get_mut(tenant) {
            Some(windows) => windows,
            None => self.current.entry(tenant.clone()).or_insert([(i64::MIN, 0, 0); 4]),
        };
        for (p, w) in Period::ALL.iter().zip(windows.iter_mut()) {
            let start = p.start(ts);
            if start > w.0 {
                *w = (start, 0, 0);
            }
            if start == w.0 {
                match metric {
                    Metric::Events => w.1 += n.max(0) as u64,
                    _ => w.2 += n.max(0) as u64,
                }
            }
        }
    }

    /// A tenant's usage of a limit in the window holding `now`.
    pub fn used(&self, tenant: &str, limit: Limit, now: i64) -> u64 {
        let Some(windows) = self.current.get(tenant) else { return 0 };
        let i = Period::ALL.iter().position(|p| *p == limit.period()).expect("every period has a slot");
        let (start, events, bytes) = windows[i];
        if start != limit.period().start(now) {
            return 0;
        }
        match limit.metric() {
            Metric::Bytes => bytes,
            _ => events,
        }
    }

    /// Whether a request adding `events` and `bytes` for `tenant` at `now` must be
    /// refused: the tenant has already reached a hard limit of `plan` in its current
    /// window (the request that reaches a limit is accepted whole; the ones after it are
    /// refused until the window resets). The first such limit.
    pub fn check(&self, tenant: &str, plan: &Plan, now: i64, events: u64, bytes: u64) -> Option<Refusal> {
        if plan.mode() != Mode::Hard {
            return None;
        }
        Limit::ALL.into_iter().find_map(|limit| {
            let value = plan.limit(limit)?;
            let used = self.used(tenant, limit, now);
            let requested = if limit.metric() == Metric::Bytes { bytes } else { events };
            (requested > 0 && used >= value).then(|| Refusal {
                tenant: tenant.to_string(),
                limit: limit.name(),
                limit_value: value,
                used,
                requested,
                window_start: limit.period().start(now),
                retry_after_s: ((limit.period().end(now) - now).max(0) as u64).div_ceil(1000).max(1),
            })
        })
    }

    /// Forgets minutes before `cutoff` (at most once a minute: it is called often).
    pub fn expire(&mut self, cutoff: i64) {
        if cutoff < self.expired_before.saturating_add(60_000) {
            return;
        }
        self.expired_before = cutoff;
        self.entries = self.entries.split_off(&(cutoff, Text::from(""), Metric::Events));
    }

    /// Every entry, as usage rows with their weight, for seeding the dataflow.
    pub fn rows(&self) -> impl Iterator<Item = (Row, i64, i64)> + '_ {
        self.entries.iter().map(|((minute, tenant, metric), n)| (usage_row(tenant, *minute, *metric), *minute, *n))
    }

    /// The entries for a checkpoint: minute-grained for the last two hours before
    /// `now`, hour-grained before that, which keeps checkpoints small.
    pub fn compacted(&self, now: i64) -> Vec<(String, i64, Metric, i64)> {
        let fine_from = Period::Hour.start(now) - 3_600_000;
        let mut out: BTreeMap<(i64, &str, Metric), i64> = BTreeMap::new();
        for ((minute, tenant, metric), n) in &self.entries {
            let at = if *minute < fine_from { Period::Hour.start(*minute) } else { *minute };
            *out.entry((at, tenant, *metric)).or_default() += n;
        }
        out.into_iter().map(|((at, tenant, metric), n)| (tenant.to_string(), at, metric, n)).collect()
    }

    /// Starts from a checkpoint's entries.
    pub fn restore(&mut self, entries: &[(String, i64, Metric, i64)]) {
        for (tenant, at, metric, n) in entries {
            self.add(&Text::from(tenant.as_str()), *at, *metric, *n);
        }
    }
}

/// A `usage` row: tenant, minute, metric.
pub fn usage_row(tenant: &Text, minute: i64, metric: Metric) -> Row {
    vec![Value::Str(tenant.clone()), Value::Timestamp(minute), Value::str(metric.name())]
}

/// The columns of `quota_usage`.
pub fn quota_usage_columns() -> Vec<Column> {
    vec![
        Column::new("tenant", DataType::String, false),
        Column::new("limit", DataType::String, false),
        Column::new("window", DataType::String, false),
        Column::new("window_start", DataType::Timestamp, false),
        Column::new("used", DataType::Int, false),
        Column::new("limit_value", DataType::Int, false),
        Column::new("ratio", DataType::Float, false),
        Column::new("state", DataType::String, false),
        Column::new("mode", DataType::String, false),
        Column::new("refused", DataType::Int, false),
    ]
}

/// Usage per tenant and period, read from the `usage_per_*` views: window start,
/// events, bytes, refused.
pub type WindowUsage = HashMap<(Text, Period), (i64, u64, u64, u64)>;

/// Reads a `usage_per_*` view's rows (tenant, window_start, events, bytes, refused)
/// into `into`, keeping for each tenant the window holding `now`.
pub fn read_usage_rows(period: Period, rows: &[Row], now: i64, into: &mut WindowUsage) {
    let current = period.start(now);
    for row in rows {
        let (Some(Value::Str(tenant)), Some(Value::Timestamp(start))) = (row.first(), row.get(1)) else { continue };
        if *start != current {
            continue;
        }
        let int = |i: usize| match row.get(i) {
            Some(Value::Int(n)) => (*n).max(0) as u64,
            _ => 0,
        };
        into.insert((tenant.clone(), period), (*start, int(2), int(3), int(4)));
    }
}

/// The `quota_usage` rows: one per tenant and limit set for it, for tenants with an
/// override or with usage in a current window.
pub fn quota_usage_rows(settings: &QuotaSettings, usage: &WindowUsage, now: i64) -> Vec<Row> {
    let mut tenants: Vec<Text> = settings.tenants.keys().map(|t| Text::from(t.as_str())).collect();
    tenants.extend(usage.keys().map(|(t, _)| t.clone()));
    tenants.sort();
    tenants.dedup();
    let mut rows = Vec::new();
    for tenant in tenants {
        let plan = settings.plan(&tenant);
        for limit in Limit::ALL {
            let Some(value) = plan.limit(limit) else { continue };
            let period = limit.period();
            let (start, events, bytes, refused) = usage.get(&(tenant.clone(), period)).copied().unwrap_or((period.start(now), 0, 0, 0));
            let used = if limit.metric() == Metric::Bytes { bytes } else { events };
            let ratio = if value == 0 { if used > 0 || refused > 0 { f64::INFINITY } else { 0.0 } } else { used as f64 / value as f64 };
            let state = if ratio >= 1.0 {
                "exceeded"
            } else if ratio >= settings.warning_ratio {
                "warning"
            } else {
                "ok"
            };
            rows.push(vec![
                Value::Str(tenant.clone()),
                Value::str(limit.name()),
                Value::str(period.name()),
                Value::Timestamp(start),
                Value::Int(used as i64),
                Value::Int(value as i64),
                Value::Float(if ratio.is_finite() { ratio } else { f64::MAX }),
                Value::str(state),
                Value::str(plan.mode().name()),
                Value::Int(refused as i64),
            ]);
        }
    }
    rows
}

/// Keeps the `quota_usage` view current: reads the `usage_per_*` views and the plans,
/// and publishes what changed, whenever the usage views move or a second passes (a
/// window may have rolled over). Ends when the store is gone.
pub fn maintain_quota_usage(store: std::sync::Weak<crate::store::ViewStore>, quotas: Arc<Quotas>) {
    let mut current: BTreeMap<Row, isize> = BTreeMap::new();
    let mut seen_epoch = 0;
    let mut published = 0;
    let mut last_run = 0i64;
    let mut last_settings = None;
    loop {
        // at most five times a second: under load the usage views move with every commit
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Some(store) = store.upgrade() else { return };
        let Some(target) = store.get(QUOTA_USAGE) else { return };
        let views: Vec<_> = Period::ALL.iter().filter_map(|p| store.get(&p.view()).map(|v| (*p, v))).collect();
        let epoch = views.iter().map(|(_, v)| v.epoch()).min().unwrap_or(0);
        let now = crate::time::now_ms();
        let settings = quotas.settings();
        let changed_settings = last_settings.as_ref() != Some(&settings);
        if epoch == seen_epoch && now - last_run < 1000 && !changed_settings {
            continue;
        }
        seen_epoch = epoch;
        last_run = now;
        let mut usage = WindowUsage::new();
        for (period, view) in &views {
            read_usage_rows(*period, &view.snapshot().1, now, &mut usage);
        }
        let mut next: BTreeMap<Row, isize> = BTreeMap::new();
        for row in quota_usage_rows(&settings, &usage, now) {
            *next.entry(row).or_default() += 1;
        }
        last_settings = Some(settings);
        let mut changes: Vec<(Row, isize)> = Vec::new();
        for (row, n) in &current {
            let m = next.get(row).copied().unwrap_or(0);
            if m != *n {
                changes.push((row.clone(), m - n));
            }
        }
        for (row, n) in &next {
            if !current.contains_key(row) {
                changes.push((row.clone(), *n));
            }
        }
        if changes.is_empty() && epoch <= published {
            continue;
        }
        published = epoch.max(published + 1);
        target.publish_changes(published, changes);
        current = next;
    }
}

/// Parses a metric name from a logged usage row.
pub fn metric_of(row: &Row) -> Option<Metric> {
    match row.get(2) {
        Some(Value::Str(s)) => Metric::parse(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        crate::time::parse_rfc3339_ms(s).unwrap()
    }

    #[test]
    fn calendar_windows_in_utc() {
        let t = ms("2026-02-14T10:31:20.500Z");
        assert_eq!(Period::Minute.start(t), ms("2026-02-14T10:31:00Z"));
        assert_eq!(Period::Hour.end(t), ms("2026-02-14T11:00:00Z"));
        assert_eq!(Period::Day.start(t), ms("2026-02-14T00:00:00Z"));
        assert_eq!(Period::Month.start(t), ms("2026-02-01T00:00:00Z"));
        assert_eq!(Period::Month.end(t), ms("2026-03-01T00:00:00Z"));
        assert_eq!(Period::Month.end(ms("2026-12-31T23:59:59Z")), ms("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn hard_limits_refuse_whole_requests_with_the_time_to_reset() {
        let plan = Plan { events_per_minute: Some(10), bytes_per_day: Some(1000), ..Plan::default() };
        let mut ledger = Ledger::default();
        let a: Text = Text::from("a");
        let now = ms("2026-02-14T10:31:20Z");
        assert_eq!(ledger.check("a", &plan, now, 10, 100), None);
        ledger.add(&a, now, Metric::Events, 8);
        // the request that reaches the limit is taken whole; then the tenant is refused
        assert_eq!(ledger.check("a", &plan, now, 3, 10), None);
        ledger.add(&a, now, Metric::Events, 3);
        let refusal = ledger.check("a", &plan, now, 1, 10).expect("11 ≥ 10");
        assert_eq!((refusal.limit, refusal.used, refusal.retry_after_s), ("events_per_minute", 11, 40));
        // the next minute starts afresh; the day's bytes do not
        ledger.add(&a, now, Metric::Bytes, 999);
        let later = now + 60_000;
        assert_eq!(ledger.check("a", &plan, later, 3, 10), None);
        ledger.add(&a, later, Metric::Bytes, 1);
        assert_eq!(ledger.check("a", &plan, later, 3, 10).map(|r| r.limit), Some("bytes_per_day"));
        let soft = Plan { mode: Some(Mode::Soft), ..plan };
        assert_eq!(ledger.check("a", &soft, now, 1000, 0), None);
    }

    #[test]
    fn run_time_overrides_are_stored_apart_from_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let configured = Plan { events_per_day: Some(100), ..Plan::default() };
        let settings = QuotaSettings {
            default: Plan { events_per_minute: Some(10), ..Plan::default() },
            tenants: [("a".to_string(), configured.clone())].into(),
            warning_ratio: 0.8,
        };
        let quotas = Quotas::open(settings.clone(), Some(dir.path())).unwrap();
        assert_eq!(quotas.plan("a").events_per_minute, Some(10), "the default fills in");
        quotas.set("a", Plan { events_per_day: Some(5), ..Plan::default() }).unwrap();
        quotas.set("b", Plan { mode: Some(Mode::Soft), ..Plan::default() }).unwrap();
        assert_eq!(quotas.plan("a").events_per_day, Some(5));
        // a restart with a changed configuration keeps the run-time overrides on top
        let changed = QuotaSettings { tenants: [("a".to_string(), Plan { events_per_day: Some(7), ..Plan::default() })].into(), ..settings };
        let quotas = Quotas::open(changed, Some(dir.path())).unwrap();
        assert_eq!((quotas.plan("a").events_per_day, quotas.plan("b").mode()), (Some(5), Mode::Soft));
        assert!(quotas.remove("a").unwrap());
        assert_eq!(quotas.plan("a").events_per_day, Some(7), "the configuration's override applies again");
        assert!(!quotas.remove("a").unwrap());
        let stored: BTreeMap<String, Plan> = serde_json::from_slice(&std::fs::read(dir.path().join("quotas.json")).unwrap()).unwrap();
        assert_eq!(stored.keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn checkpoints_keep_totals_while_coarsening_old_minutes() {
        let mut ledger = Ledger::default();
        let a: Text = Text::from("a");
        let now = ms("2026-02-14T10:31:20Z");
        for i in 0..300 {
            ledger.add(&a, now - i * 60_000, Metric::Events, 2);
        }
        let compacted = ledger.compacted(now);
        assert!(compacted.len() < 120, "{} entries", compacted.len());
        let mut restored = Ledger::default();
        restored.restore(&compacted);
        for limit in [Limit::EventsPerMinute, Limit::EventsPerHour, Limit::EventsPerDay, Limit::EventsPerMonth] {
            assert_eq!(restored.used("a", limit, now), ledger.used("a", limit, now), "{limit:?}");
        }
        assert_eq!(restored.rows().map(|(_, _, n)| n).sum::<i64>(), 600);
    }
}
