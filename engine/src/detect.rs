//! Anomaly detectors over views: each runs in the dataflow worker, downstream of its
//! view, takes the view's changes epoch by epoch as they are published, keeps the value
//! of every (series, window), and scores each window once it closes with the series'
//! incremental [`SeriesDetector`]; the scores form the `anomalies` view, published with
//! the epoch of the changes that produced them.
//!
//! ```text
//!   view changes (epoch by epoch) ─▶ values[series][window] ─▶ window closed? ─▶ SeriesDetector::observe
//!                                                                (a later window       │ (no look-ahead)
//!                                                                 appeared, or the     ▼
//!                                                                 wall clock passed)  `anomalies` rows
//! ```
//!
//! A window closes when any series of the view has reached a later window (event time
//! moved on), or, for live detectors, when the wall clock is a whole window past its end
//! (so that a view whose every series went quiet still closes windows). A series with no
//! row in a closed window scores a `0`: that is how silence is caught. Each window is
//! scored once; late changes to a scored window update nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::anomaly::{DetectorSpec, Method, SeriesDetector};
use crate::error::{Error, Result};
use crate::schema::{Column, DataType};
use crate::time::parse_duration_ms;
use crate::value::{Row, Value};

/// The view every detector writes to.
pub const ANOMALIES: &str = "anomalies";

/// A detector as declared in the configuration or with `POST /v1/anomalies`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorDefinition {
    /// The detector's name.
    pub name: String,
    /// The view whose series it watches.
    pub view: String,
    /// The columns that identify a series (e.g. `["tenant", "kind"]`); none: the whole view is one series.
    #[serde(default)]
    pub series: Vec<String>,
    /// The numeric column scored (e.g. `n`).
    pub value: String,
    /// The column holding the window start; default: the view's first timestamp column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The window length (e.g. `"1m"`); default: the smallest gap between window starts seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Windows in the baseline.
    #[serde(default = "default_baseline")]
    pub baseline: usize,
    /// `zscore`, `mad` or `ewma`.
    #[serde(default = "default_method")]
    pub method: String,
    /// The deviation at which a window is flagged; default: the method's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

fn default_baseline() -> usize {
    DetectorSpec::DEFAULT_BASELINE
}

fn default_method() -> String {
    Method::ZScore.name().into()
}

/// The columns of `anomalies`.
pub fn anomalies_columns() -> Vec<Column> {
    vec![
        Column::new("detector", DataType::String, false),
        Column::new("tenant", DataType::String, true),
        Column::new("series", DataType::String, false),
        Column::new("window", DataType::Timestamp, false),
        Column::new("value", DataType::Float, false),
        Column::new("baseline", DataType::Float, false),
        Column::new("deviation", DataType::Float, false),
        Column::new("score", DataType::Float, false),
        Column::new("flag", DataType::Boolean, false),
    ]
}

/// A checked definition: column positions and the detector settings.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The definition.
    pub def: DetectorDefinition,
    spec: DetectorSpec,
    series: Vec<usize>,
    tenant: Option<usize>,
    value: usize,
    time: usize,
    window_ms: Option<i64>,
    /// How long scored windows stay in `anomalies`, behind the latest window.
    keep_ms: i64,
}

impl Compiled {
    /// Checks a definition against the view it watches.
    pub fn new(def: DetectorDefinition, columns: &[Column], keep_ms: i64) -> Result<Compiled> {
        let bad = |m: String| Error::Sql(format!("detector {}: {m}", def.name));
        crate::plan::check_view_name(&def.name).map_err(|_| bad("names are lowercase letters, digits and _".into()))?;
        let find = |name: &str| columns.iter().position(|c| c.name == name).ok_or_else(|| bad(format!("the view {} has no column {name:?}", def.view)));
        let series = def.series.iter().map(|c| find(c)).collect::<Result<Vec<_>>>()?;
        let value = find(&def.value)?;
        if !matches!(columns[value].data_type, DataType::Int | DataType::Float) {
            return Err(bad(format!("the value column {:?} is not numeric", def.value)));
        }
        let time = match &def.time {
            Some(t) => find(t)?,
            None => columns
                .iter()
                .position(|c| c.data_type == DataType::Timestamp)
                .ok_or_else(|| bad(format!("the view {} has no timestamp column to use as the window", def.view)))?,
        };
        if columns[time].data_type != DataType::Timestamp {
            return Err(bad(format!("the time column {:?} is not a timestamp", columns[time].name)));
        }
        let method = Method::parse(&def.method).ok_or_else(|| bad(format!("unknown method {:?}: use zscore, mad or ewma", def.method)))?;
        if def.baseline < 2 {
            return Err(bad("the baseline needs at least 2 windows".into()));
        }
        let window_ms = def.window.as_deref().map(parse_duration_ms).transpose().map_err(|e| bad(e.to_string()))?;
        if window_ms.is_some_and(|w| w <= 0) {
            return Err(bad("the window must be positive".into()));
        }
        let mut spec = DetectorSpec::new(method);
        spec.baseline = def.baseline;
        if let Some(t) = def.threshold {
            if t.is_nan() || t <= 0.0 {
                return Err(bad("the threshold must be positive".into()));
            }
            spec.threshold = t;
        }
        let tenant = series.iter().copied().find(|i| columns[*i].name == "tenant" && columns[*i].data_type == DataType::String);
        Ok(Compiled { def, spec, series, tenant, value, time, window_ms, keep_ms })
    }
}

struct Series {
    detector: SeriesDetector,
    /// The next window to score.
    next: i64,
    /// The view's value per window not yet scored.
    values: BTreeMap<i64, f64>,
    /// The series' label, e.g. `tenant=acme,kind=click`, shared by all its rows.
    label: Value,
    tenant: Value,
    /// Its latest scored window's row, if it was not flagged: replaced by the next one.
    latest: Option<Row>,
}

/// One detector's state: what it has seen of its view and scored.
pub struct Detector {
    c: Compiled,
    series: HashMap<Vec<Value>, Series>,
    windows: BTreeSet<i64>,
    window_ms: Option<i64>,
    max_window: i64,
    /// Flagged rows written to `anomalies`, by window, for retention.
    emitted: BTreeMap<i64, Vec<Row>>,
    /// The detector's name, shared by all its rows.
    name: Value,
    /// Wall-clock time of the last change seen.
    last_change: i64,
    /// Every window starting before this has been scored in every series.
    closed_until: i64,
    /// A series appeared since the last close.
    new_series: bool,
}

impl Detector {
    /// A detector that has seen nothing yet.
    pub fn new(c: Compiled) -> Detector {
        let window_ms = c.window_ms;
        let name = Value::str(&c.def.name);
        Detector { c, name, series: HashMap::new(), windows: BTreeSet::new(), window_ms, max_window: i64::MIN, emitted: BTreeMap::new(), last_change: i64::MIN, closed_until: i64::MIN, new_series: false }
    }

    /// Applies changes of the view's rows (`+n` added, `-n` removed), seen at wall-clock `now`.
    pub fn apply(&mut self, changes: &[(Row, isize)], now: i64) {
        self.last_change = self.last_change.max(now);
        for (row, diff) in changes {
            let (Some(Value::Timestamp(window)), Some(value)) = (row.get(self.c.time), row.get(self.c.value).and_then(Value::as_f64)) else { continue };
            let key: Vec<Value> = self.c.series.iter().map(|i| row[*i].clone()).collect();
            let spec = &self.c.spec;
            let new_series = &mut self.new_series;
            let series = self.series.entry(key.clone()).or_insert_with(|| {
                *new_series = true;
                Series {
                detector: SeriesDetector::new(spec),
                next: *window,
                values: BTreeMap::new(),
                label: Value::str(&label(&self.c, &key)),
                latest: None,
                tenant: self.c.tenant.map(|i| row[i].clone()).unwrap_or(Value::Null),
                }
            });
            if *window < series.next {
                continue; // already scored
            }
            *series.values.entry(*window).or_default() += value * *diff as f64;
            if self.windows.insert(*window) {
                if self.c.window_ms.is_none() {
                    // the smallest gap between distinct window starts is the window length
                    let before = self.windows.range(..*window).next_back();
                    let after = self.windows.range(*window + 1..).next();
                    for gap in before.map(|b| window - b).into_iter().chain(after.map(|a| a - window)) {
                        self.window_ms = Some(self.window_ms.map_or(gap, |w| w.min(gap)));
                    }
                }
                while self.windows.len() > 64 {
                    self.windows.pop_first();
                }
            }
            self.max_window = self.max_window.max(*window);
        }
    }

    /// Scores every window that closed: those before the latest window seen, and, given
    /// the wall-clock `now` while the view has been quiet for a whole window, those a
    /// whole window past their end (a backfill of old events, which keeps the view
    /// busy, closes windows by event time only). Returns the rows for `anomalies` (`+1`
    /// new, `-1` expired).
    pub fn close(&mut self, now: Option<i64>) -> Vec<(Row, isize)> {
        let Some(w) = self.window_ms else { return Vec::new() };
        let mut until = self.max_window; // windows starting before this are closed
        if let Some(now) = now.filter(|now| now.saturating_sub(self.last_change) >= w) {
            // a window starting at s has been over for a whole window once now ≥ s + 2w
            until = until.max(now - 2 * w + 1);
        }
        let mut out = Vec::new();
        // a series that appeared since the last close may start before `closed_until`
        if until <= self.closed_until && !std::mem::take(&mut self.new_series) {
            return out;
        }
        self.new_series = false;
        self.closed_until = self.closed_until.max(until);
        for series in self.series.values_mut() {
            if series.next >= until {
                continue;
            }
            while series.next < until {
                let window = series.next;
                let value = series.values.remove(&window).unwrap_or(0.0);
                let s = series.detector.observe(value);
                let row = vec![
                    self.name.clone(),
                    series.tenant.clone(),
                    series.label.clone(),
                    Value::Timestamp(window),
                    Value::Float(value),
                    Value::Float(finite(s.baseline)),
                    Value::Float(finite(s.deviation)),
                    Value::Float(finite(s.score)),
                    Value::Bool(s.flag),
                ];
                // the view keeps each series' latest window and its flagged windows
                if let Some(previous) = series.latest.take() {
                    out.push((previous, -1));
                }
                if s.flag {
                    self.emitted.entry(window).or_default().push(row.clone());
                } else {
                    series.latest = Some(row.clone());
                }
                out.push((row, 1));
                series.next += w;
            }
            // values of windows skipped past (off the grid) are dropped
            while let Some(entry) = series.values.first_entry() {
                if *entry.key() >= series.next {
                    break;
                }
                entry.remove();
            }
        }
        let cutoff = self.max_window.max(until - w).saturating_sub(self.c.keep_ms);
        while let Some(entry) = self.emitted.first_entry() {
            if *entry.key() >= cutoff {
                break;
            }
            out.extend(entry.remove().into_iter().map(|r| (r, -1)));
        }
        out
    }

    /// The detector's name.
    pub fn name(&self) -> &str {
        &self.c.def.name
    }

    /// The view it watches.
    pub fn view(&self) -> &str {
        &self.c.def.view
    }

    /// Every row this detector has in `anomalies`, to retract when it is dropped.
    pub fn rows(&self) -> Vec<Row> {
        self.emitted.values().flatten().chain(self.series.values().filter_map(|s| s.latest.as_ref())).cloned().collect()
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

fn label(c: &Compiled, key: &[Value]) -> String {
    if key.is_empty() {
        return "all".into();
    }
    c.def
        .series
        .iter()
        .zip(key)
        .map(|(name, v)| match v {
            Value::Str(s) => format!("{name}={s}"),
            Value::Null => format!("{name}="),
            other => format!("{name}={}", crate::json::value_to_json(other)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(window: Option<&str>) -> Compiled {
        let columns = vec![
            Column::new("minute", DataType::Timestamp, false),
            Column::new("tenant", DataType::String, false),
            Column::new("n", DataType::Int, false),
        ];
        let def = DetectorDefinition {
            name: "traffic".into(),
            view: "per_minute".into(),
            series: vec!["tenant".into()],
            value: "n".into(),
            time: None,
            window: window.map(str::to_string),
            baseline: 20,
            method: "zscore".into(),
            threshold: None,
        };
        Compiled::new(def, &columns, i64::MAX / 4).unwrap()
    }

    fn row(minute: i64, tenant: &str, n: i64) -> Row {
        vec![Value::Timestamp(minute * 60_000), Value::str(tenant), Value::Int(n)]
    }

    #[test]
    fn windows_close_as_event_time_moves_on_and_silence_scores_zero() {
        let mut d = Detector::new(compiled(None));
        let mut flagged = Vec::new();
        let mut scored = 0;
        for minute in 0..60 {
            let mut changes = vec![(row(minute, "busy", 100 + (minute % 3)), 1)];
            // "quiet" stops sending at minute 40: its windows close on "busy"'s progress
            if minute < 40 {
                changes.push((row(minute, "quiet", 50 + (minute % 2)), 1));
            }
            d.apply(&changes, minute * 60_000);
            for (r, diff) in d.close(None) {
                if diff < 0 {
                    // an unflagged latest window, replaced by the next
                    assert_eq!(r[8], Value::Bool(false));
                    continue;
                }
                scored += 1;
                if r[8] == Value::Bool(true) {
                    flagged.push((r[2].clone(), r[3].clone()));
                }
            }
        }
        // minute 59 is still open; every earlier window of both series is scored once, and
        // the view keeps each series' latest window and its flagged ones
        assert_eq!(scored, 59 * 2);
        assert_eq!(d.rows().len(), flagged.len() + 2 - usize::from(flagged.iter().any(|(_, w)| *w == Value::Timestamp(58 * 60_000))));
        assert!(flagged.iter().all(|(s, _)| *s == Value::str("tenant=quiet")), "{flagged:?}");
        let first = flagged.first().expect("silence is flagged");
        assert!(matches!(first.1, Value::Timestamp(t) if (40 * 60_000..=45 * 60_000).contains(&t)), "{first:?}");
    }

    #[test]
    fn the_wall_clock_closes_windows_when_everything_goes_quiet() {
        let mut d = Detector::new(compiled(Some("1m")));
        for minute in 0..30 {
            d.apply(&[(row(minute, "a", 10), 1)], minute * 60_000);
        }
        let added = |rows: &[(Row, isize)]| rows.iter().filter(|(_, d)| *d > 0).count();
        assert_eq!(added(&d.close(None)), 29);
        // within a window of the last change, the clock closes nothing more
        assert_eq!(added(&d.close(Some(29 * 60_000 + 59_000))), 0);
        // at minute 40 with nothing new, minutes 29..=38 are a whole window past their end
        let rows = d.close(Some(40 * 60_000));
        assert_eq!(added(&rows), 10, "{rows:?}");
        assert!(rows.iter().any(|(r, _)| r[8] == Value::Bool(true)), "the silence is flagged");
    }

    #[test]
    fn definitions_are_checked_against_the_view() {
        let columns = vec![Column::new("minute", DataType::Timestamp, false), Column::new("kind", DataType::String, false)];
        let mut def = compiled(None).def;
        assert!(Compiled::new(def.clone(), &columns, 1).unwrap_err().to_string().contains("no column \"tenant\""));
        def.series = vec![];
        def.value = "kind".into();
        assert!(Compiled::new(def.clone(), &columns, 1).unwrap_err().to_string().contains("not numeric"));
    }
}
