//! Configuration: one typed struct, filled from built-in defaults, then the TOML file,
//! then `WEIR_*` environment variables, then command-line flags.
//!
//! Environment variables name a key path with `__` between levels:
//! `WEIR_HTTP=0.0.0.0:7070`, `WEIR_INGEST__MAX_BODY_BYTES=1048576`,
//! `WEIR_STREAMS__EVENTS__RETENTION=2h`. Values are read as TOML values where they parse
//! as one (numbers, booleans, arrays) and as strings otherwise.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;
use weir_engine::catalog::ViewDefinition;
use weir_engine::detect::DetectorDefinition;
use weir_engine::quota::{usage_stream, Plan, QuotaSettings, USAGE, USAGE_RETENTION_MS};
use weir_engine::schema::{Column, Stream, TimePolicy, EVENTS, REJECTED};
use weir_engine::time::parse_duration_ms;

/// Weir's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[serde(default = "default_http")]
    pub http: String,
    /// Directory for the write-ahead log and the catalog.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Log filter, in `tracing` env-filter syntax (e.g. `info`, `weir=debug`).
    #[serde(default = "default_log")]
    pub log: String,
    /// Dataflow worker threads: views are computed by this many timely workers, each
    /// taking a share of every batch and exchanging rows by group key.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Ingest limits.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The write-ahead log.
    #[serde(default)]
    pub wal: WalConfig,
    /// Streams by name. `events` and `rejected` are built in; their time policy can be set here.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
    /// Views created at every start.
    #[serde(default)]
    pub views: Vec<ViewConfig>,
    /// Tenant quotas.
    #[serde(default)]
    pub quotas: QuotasConfig,
    /// `[[anomalies]]`: anomaly detectors started at every start.
    #[serde(default)]
    pub anomalies: Vec<DetectorDefinition>,
    /// `[alerting]`: hysteresis and receivers.
    #[serde(default)]
    pub alerting: crate::alerting::AlertingConfig,
    /// `[auth]`: API keys.
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// `[snapshot]`: Delta Lake snapshots of the views.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// `[archive]`: the raw archive of every stream, in the lake.
    #[serde(default)]
    pub archive: ArchiveConfig,
}

/// `[archive]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Whether accepted events are archived (and the log truncated once they are).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often what was accepted is appended, e.g. `"5s"`.
    #[serde(default)]
    pub interval: Option<String>,
    /// A stream's table is compacted after this many appends (0: never).
    #[serde(default = "default_compact_after")]
    pub compact_after: usize,
}

impl Default for ArchiveConfig {
    fn default() -> ArchiveConfig {
        ArchiveConfig { enabled: true, interval: None, compact_after: default_compact_after() }
    }
}

fn default_compact_after() -> usize {
    // off: delta-rs 1.1's OPTIMIZE plans every rewritten partition against the whole
    // file list, which is quadratic for tables of many small partitions (docs/benchmarks.md)
    0
}

fn yes() -> bool {
    true
}

/// `[snapshot]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// How often every view is written, e.g. `"10s"`; `"0s"` writes only on `POST /v1/snapshots`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Where: a directory, a `file://` URL, or an `s3://`, `gs://` or `az://` URL
    /// (default `<data_dir>/lake`).
    #[serde(default)]
    pub location: Option<String>,
    /// `[snapshot.storage]`: options of the object store (credentials, endpoint,
    /// region, …), overriding the vendors' environment variables: e.g. `endpoint`,
    /// `region`, `access_key_id`, `secret_access_key`, `allow_http` for S3.
    #[serde(default)]
    pub storage: std::collections::HashMap<String, toml::Value>,
}

impl SnapshotConfig {
    /// The object store's options as strings (`allow_http = true` and `"true"` alike).
    pub fn storage_options(&self) -> std::collections::HashMap<String, String> {
        self.storage
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// `[quotas]`: the default plan, per-tenant overrides, the warning ratio.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// Usage at or above this fraction of a limit is `warning`.
    #[serde(default = "default_warning_ratio")]
    pub warning_ratio: f64,
    /// `[quotas.default]`: the plan of every tenant without an override.
    #[serde(default)]
    pub default: Plan,
    /// `[quotas.tenants.NAME]`: per-tenant overrides (fields absent come from the default).
    #[serde(default)]
    pub tenants: BTreeMap<String, Plan>,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        QuotasConfig { warning_ratio: default_warning_ratio(), default: Plan::default(), tenants: BTreeMap::new() }
    }
}

impl QuotasConfig {
    /// The engine's quota settings.
    pub fn settings(&self) -> QuotaSettings {
        QuotaSettings { default: self.default.clone(), tenants: self.tenants.clone(), warning_ratio: self.warning_ratio }
    }
}

fn default_warning_ratio() -> f64 {
    0.8
}

/// `[ingest]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body accepted by `POST /v1/streams/{stream}/events`, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { max_body_bytes: default_max_body_bytes() }
    }
}

/// `[wal]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// Size in bytes at which the log starts a new segment. Whole segments are deleted
    /// once all their events have left retention.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig { segment_bytes: default_segment_bytes() }
    }
}

fn default_segment_bytes() -> u64 {
    weir_engine::wal::SEGMENT_BYTES
}

/// `[streams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// How far behind the watermark an event may be and still be accepted (e.g. `"1h"`).
    #[serde(default)]
    pub lateness: Option<String>,
    /// How long events are kept in views, behind the watermark (e.g. `"1d"`).
    #[serde(default)]
    pub retention: Option<String>,
    /// The columns (not for the built-in streams).
    #[serde(default)]
    pub columns: Option<Vec<Column>>,
    /// The tenant column (a string).
    #[serde(default = "default_tenant_column")]
    pub tenant_column: String,
    /// The event-time column (a timestamp).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// The idempotency-key column (a string), if any.
    #[serde(default)]
    pub id_column: Option<String>,
}

/// `[[views]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// The `CREATE VIEW name AS SELECT …` statement.
    pub sql: String,
    /// Allowed lateness for this view, at most its stream's.
    #[serde(default)]
    pub lateness: Option<String>,
    /// Retention for this view, at most its stream's.
    #[serde(default)]
    pub retention: Option<String>,
}

fn default_http() -> String {
    "127.0.0.1:7070".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./weir-data")
}
fn default_workers() -> usize {
    1
}

fn default_log() -> String {
    // the Delta Lake kernel reports a table that does not exist yet as an error, and
    // every table load at info
    "info,buoyant_kernel=off,deltalake_core=warn".into()
}
fn default_max_body_bytes() -> usize {
    16 << 20
}
fn default_tenant_column() -> String {
    "tenant".into()
}
fn default_time_column() -> String {
    "ts".into()
}

/// Flags that override the configuration.
#[derive(Debug, Default)]
pub struct Overrides {
    /// `--config FILE`
    pub file: Option<PathBuf>,
    /// `--data-dir DIR`
    pub data_dir: Option<PathBuf>,
    /// `--http ADDR`
    pub http: Option<String>,
}

impl Config {
    /// Loads the configuration: defaults, then the file, then `WEIR_*`, then flags.
    pub fn load(overrides: &Overrides, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let mut table = match &overrides.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                text.parse::<toml::Table>().with_context(|| format!("parsing {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(path) = key.strip_prefix("WEIR_") else { continue };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            set(&mut table, &keys, parse_env_value(&value)).with_context(|| format!("environment variable {key}"))?;
        }
        if let Some(dir) = &overrides.data_dir {
            table.insert("data_dir".into(), toml::Value::String(dir.display().to_string()));
        }
        if let Some(http) = &overrides.http {
            table.insert("http".into(), toml::Value::String(http.clone()));
        }
        let config: Config = toml::Value::Table(table).try_into().context("invalid configuration")?;
        config.streams()?; // report stream errors now, all at once
        if config.workers == 0 {
            bail!("invalid configuration: workers must be at least 1");
        }
        Ok(config)
    }

    /// The streams this configuration declares, built-ins included.
    pub fn streams(&self) -> anyhow::Result<Vec<Stream>> {
        let mut errors = Vec::new();
        let mut streams = Vec::new();
        let policy = |c: Option<&StreamConfig>| -> anyhow::Result<TimePolicy> {
            let mut p = TimePolicy::DEFAULT;
            if let Some(c) = c {
                if let Some(l) = &c.lateness {
                    p.lateness_ms = parse_duration_ms(l)?;
                }
                if let Some(r) = &c.retention {
                    p.retention_ms = parse_duration_ms(r)?;
                }
            }
            Ok(p)
        };
        for builtin in [EVENTS, REJECTED] {
            let c = self.streams.get(builtin);
            if c.is_some_and(|c| c.columns.is_some() || c.id_column.is_some()) {
                errors.push(format!("streams.{builtin}: the built-in stream's columns cannot be changed (only lateness and retention)"));
            }
            let checked = policy(c).and_then(|p| {
                if p.lateness_ms < 0 || p.retention_ms <= 0 || p.lateness_ms > p.retention_ms {
                    bail!("lateness must be at most the retention, and the retention positive");
                }
                Ok(p)
            });
            match checked {
                Ok(p) if builtin == EVENTS => streams.push(Stream::events(p)),
                Ok(p) => streams.push(Stream::rejected(p)),
                Err(e) => errors.push(format!("streams.{builtin}: {e}")),
            }
        }
        let mut usage = None;
        match self.streams.get(USAGE) {
            Some(c) if c.columns.is_some() || c.id_column.is_some() || c.lateness.is_some() => {
                errors.push(format!("streams.{USAGE}: only the retention of the built-in usage stream can be set"))
            }
            c => match c.and_then(|c| c.retention.as_deref()).map(parse_duration_ms).transpose() {
                Ok(Some(ms)) if ms <= 0 => errors.push(format!("streams.{USAGE}: the retention must be positive")),
                Ok(r) => usage = Some(usage_stream(r.unwrap_or(USAGE_RETENTION_MS))),
                Err(e) => errors.push(format!("streams.{USAGE}: {e}")),
            },
        }
        for (name, c) in &self.streams {
            if name == EVENTS || name == REJECTED || name == USAGE {
                continue;
            }
            if weir_engine::plan::check_view_name(name).is_err() {
                errors.push(format!("streams.{name}: stream names are lowercase letters, digits and _"));
                continue;
            }
            let Some(columns) = &c.columns else {
                errors.push(format!("streams.{name}: columns are required"));
                continue;
            };
            let built = policy(Some(c)).and_then(|p| {
                Ok(Stream::new(name, columns.clone(), &c.tenant_column, &c.time_column, c.id_column.as_deref(), p)?)
            });
            match built {
                Ok(s) => streams.push(s),
                Err(e) => errors.push(format!("streams.{name}: {e}")),
            }
        }
        if !errors.is_empty() {
            bail!("invalid configuration:\n  {}", errors.join("\n  "));
        }
        // keep `rejected` last, as the engine expects nothing of the order but people read lists
        let rejected = streams.remove(1);
        streams.extend(usage);
        streams.push(rejected);
        Ok(streams)
    }

    /// The views this configuration declares.
    pub fn view_definitions(&self) -> Vec<ViewDefinition> {
        self.views
            .iter()
            .map(|v| ViewDefinition { sql: v.sql.clone(), lateness: v.lateness.clone(), retention: v.retention.clone() })
            .collect()
    }
}

fn parse_env_value(value: &str) -> toml::Value {
    match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("the key was just parsed"),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

fn set(table: &mut toml::Table, keys: &[String], value: toml::Value) -> anyhow::Result<()> {
    match keys {
        [] => bail!("empty key"),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set(t, rest, value),
                _ => bail!("{first} is not a section"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)], overrides: Overrides) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let mut overrides = overrides;
        if let Some(text) = file {
            let path = dir.path().join("weir.toml");
            std::fs::write(&path, text)?;
            overrides.file = Some(path);
        }
        Config::load(&overrides, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn layers_apply_in_order() {
        let file = "http = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\n[ingest]\nmax_body_bytes = 10\n";
        let c = load(Some(file), &[("WEIR_HTTP", "127.0.0.1:2"), ("WEIR_INGEST__MAX_BODY_BYTES", "20")], Overrides::default()).unwrap();
        assert_eq!(c.http, "127.0.0.1:2");
        assert_eq!(c.ingest.max_body_bytes, 20);
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        let c = load(Some(file), &[("WEIR_HTTP", "127.0.0.1:2")], Overrides { http: Some("127.0.0.1:3".into()), ..Default::default() }).unwrap();
        assert_eq!(c.http, "127.0.0.1:3");
    }

    #[test]
    fn unknown_keys_and_bad_streams_are_reported() {
        assert!(load(Some("htp = \"x\""), &[], Overrides::default()).is_err());
        assert!(load(None, &[("WEIR_NOPE", "1")], Overrides::default()).is_err());
        assert!(load(None, &[("WEIR_WORKERS", "0")], Overrides::default()).is_err());
        assert_eq!(load(None, &[("WEIR_WORKERS", "2")], Overrides::default()).unwrap().workers, 2);
        let err = load(Some("[streams.clicks]\ntenant_column = \"t\"\n[streams.other]\ncolumns = []\n"), &[], Overrides::default()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("streams.clicks: columns are required"), "{text}");
        assert!(text.contains("streams.other"), "{text}");
    }

    #[test]
    fn the_shipped_container_configuration_loads() {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/weir.toml"));
        let c = Config::load(&Overrides { file: Some(path), ..Default::default() }, []).unwrap();
        assert_eq!(c.http, "0.0.0.0:7070");
        c.streams().unwrap();
    }

    #[test]
    fn a_builtin_stream_with_lateness_beyond_retention_is_an_error_not_a_panic() {
        let err = load(Some("[streams.events]\nlateness = \"2d\"\n"), &[], Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("streams.events: lateness must be at most the retention"), "{err:#}");
    }

    #[test]
    fn custom_streams_and_policies() {
        let file = r#"
[streams.events]
lateness = "10m"
retention = "2h"
[streams.orders]
columns = [
  { name = "shop", type = "string", nullable = false },
  { name = "at", type = "timestamp", nullable = false },
  { name = "amount", type = "float" },
]
tenant_column = "shop"
time_column = "at"
"#;
        let c = load(Some(file), &[("WEIR_STREAMS__ORDERS__RETENTION", "3h")], Overrides::default()).unwrap();
        let streams = c.streams().unwrap();
        let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["events", "orders", "usage", "rejected"]);
        assert_eq!(streams[0].policy.lateness_ms, 600_000);
        assert_eq!(streams[1].policy.retention_ms, 3 * 3_600_000);
    }

    #[test]
    fn quotas_detectors_and_alerting() {
        let file = r#"
[quotas]
warning_ratio = 0.9
[quotas.default]
events_per_day = 1000000
[quotas.tenants.acme]
events_per_minute = 1000
mode = "soft"

[[anomalies]]
name = "traffic"
view = "per_minute"
series = ["tenant", "kind"]
value = "n"
method = "mad"

[alerting]
resolve_after = 3
[[alerting.webhooks]]
url = "http://127.0.0.1:9000/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;
        let env = [("WEIR_ALERTING__ALERTMANAGERS", r#"[{url = "http://127.0.0.1:9093"}]"#), ("WEIR_QUOTAS__TENANTS__ACME__EVENTS_PER_HOUR", "50000")];
        let c = load(Some(file), &env, Overrides::default()).unwrap();
        let q = c.quotas.settings();
        assert_eq!((q.warning_ratio, q.plan("acme").events_per_day, q.plan("acme").events_per_hour), (0.9, Some(1_000_000), Some(50_000)));
        assert_eq!(q.plan("acme").mode(), weir_engine::quota::Mode::Soft);
        assert_eq!((c.anomalies[0].name.as_str(), c.anomalies[0].baseline, c.anomalies[0].method.as_str()), ("traffic", 30, "mad"));
        assert_eq!((c.alerting.fire_after, c.alerting.resolve_after), (1, 3));
        assert_eq!((c.alerting.webhooks.len(), c.alerting.alertmanagers[0].url.as_str()), (1, "http://127.0.0.1:9093"));
        let bad = load(Some("[quotas.default]\nevents_per_week = 1\n"), &[], Overrides::default()).unwrap_err();
        assert!(format!("{bad:#}").contains("events_per_week"), "{bad:#}");
    }
}
