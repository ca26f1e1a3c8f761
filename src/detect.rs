//! `weir detect`: replays a CSV time series through the real engine and an anomaly
//! detector, and writes each row's anomaly score, so that detector quality can be
//! measured on any labeled data set.
//!
//! ```text
//!   FILE.csv (timestamp,value) ─▶ engine: stream `series` ─▶ view: avg(value) per window
//!        ─▶ detector (the same one `POST /v1/anomalies` runs) ─▶ SCORES.csv (timestamp,value,anomaly_score)
//! ```
//!
//! Each row's score is its window's, computed from the windows before it only.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use weir_engine::catalog::ViewDefinition;
use weir_engine::detect::{Compiled, DetectorDefinition, Detector};
use weir_engine::ingest::Decoded;
use weir_engine::schema::{Column, DataType, Stream, TimePolicy};
use weir_engine::value::Value;
use weir_engine::{Engine, EngineConfig};

/// What `weir detect` was asked.
pub struct DetectArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    pub window: Option<String>,
    pub method: String,
    pub baseline: usize,
    pub threshold: Option<f64>,
}

struct Sample {
    raw_ts: String,
    raw_value: String,
    ts: i64,
    value: Option<f64>,
}

pub fn run(args: DetectArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let samples = read_csv(&text).with_context(|| format!("reading {}", args.input.display()))?;
    let mut times: Vec<i64> = samples.iter().map(|s| s.ts).collect();
    times.sort_unstable();
    times.dedup();
    let window_ms = match &args.window {
        Some(w) => weir_engine::time::parse_duration_ms(w)?,
        None => median_gap(&times).context("the series needs at least two distinct timestamps to infer --window")?,
    };
    if window_ms <= 0 {
        bail!("--window must be positive");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let scores = runtime.block_on(score(&samples, &times, window_ms, &args))?;
    let mut out = String::from("timestamp,value,anomaly_score\n");
    for s in &samples {
        let window = s.ts.div_euclid(window_ms) * window_ms;
        let score = scores.get(&window).copied().unwrap_or(0.0);
        out.push_str(&format!("{},{},{score:.6}\n", crate::csv::field(&s.raw_ts), crate::csv::field(&s.raw_value)));
    }
    std::fs::write(&args.output, out).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("scored {} rows in windows of {window_ms} ms with {} (baseline {} windows) → {}", samples.len(), args.method, args.baseline, args.output.display());
    Ok(())
}

/// Runs the samples through a throwaway engine and a detector; returns the score per window start.
async fn score(samples: &[Sample], times: &[i64], window_ms: i64, args: &DetectArgs) -> anyhow::Result<HashMap<i64, f64>> {
    let dir = tempfile::tempdir()?;
    let span = times.last().copied().unwrap_or(0) - times.first().copied().unwrap_or(0);
    // everything in the file is in time, and kept until the end
    let policy = TimePolicy { lateness_ms: span + window_ms, retention_ms: span + 2 * window_ms };
    let columns = vec![
        Column::new("tenant", DataType::String, false),
        Column::new("ts", DataType::Timestamp, false),
        Column::new("value", DataType::Float, false),
    ];
    let stream = Stream::new("series", columns, "tenant", "ts", None, policy)?;
    let sql = format!(
        "CREATE VIEW per_window AS SELECT date_bin(INTERVAL '{window_ms} milliseconds', ts) AS window_start, avg(value) AS value \
         FROM series GROUP BY date_bin(INTERVAL '{window_ms} milliseconds', ts)"
    );
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_path_buf(),
        streams: vec![stream],
        views: vec![ViewDefinition { sql, lateness: None, retention: None }],
        segment_bytes: weir_engine::wal::SEGMENT_BYTES,
        quotas: Default::default(),
        detectors: vec![],
        archive: None,
        workers: 1,
    })
    .await?;
    let (index, _) = engine.stream("series").expect("the stream was just declared");
    let mut ordered: Vec<&Sample> = samples.iter().filter(|s| s.value.is_some_and(f64::is_finite)).collect();
    ordered.sort_by_key(|s| s.ts);
    let series = Value::str("series");
    let mut epoch = 0;
    for chunk in ordered.chunks(10_000) {
        let rows = chunk.iter().enumerate().map(|(i, s)| (i as u32 + 1, vec![series.clone(), Value::Timestamp(s.ts), Value::Float(s.value.unwrap_or(0.0))])).collect();
        let receipt = engine.ingest(index, Decoded { rows, rejected: vec![], sizes: vec![] }).await?;
        if !receipt.rejected.is_empty() {
            bail!("the engine refused rows: {:?}", &receipt.rejected[..receipt.rejected.len().min(3)]);
        }
        epoch = receipt.epoch;
    }
    let view = engine.view("per_window").expect("the view was just created");
    while !view.wait_for(epoch, std::time::Duration::from_secs(60)).await {}
    let def = DetectorDefinition {
        name: "detect".into(),
        view: "per_window".into(),
        series: vec![],
        value: "value".into(),
        time: Some("window_start".into()),
        window: Some(format!("{window_ms}ms")),
        baseline: args.baseline,
        method: args.method.clone(),
        threshold: args.threshold,
    };
    let mut detector = Detector::new(Compiled::new(def, &view.info.columns, i64::MAX / 4)?);
    let (_, rows) = view.snapshot();
    let changes: Vec<_> = rows.into_iter().map(|r| (r, 1)).collect();
    detector.apply(&changes, i64::MIN);
    // the input is complete: every window, the last included, is closed
    let end = times.last().copied().unwrap_or(0) + 2 * window_ms;
    let scored = detector.close(Some(end));
    engine.shutdown();
    Ok(scored
        .into_iter()
        .filter(|(_, diff)| *diff > 0)
        .filter_map(|(row, _)| match (&row[3], &row[7]) {
            (Value::Timestamp(w), Value::Float(score)) => Some((*w, *score)),
            _ => None,
        })
        .collect())
}

fn read_csv(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = crate::csv::split(lines.next().context("the file is empty")?).iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let col = |name: &str| header.iter().position(|h| h == name).with_context(|| format!("the header has no {name:?} column (it needs timestamp,value)"));
    let (t, v) = (col("timestamp")?, col("value")?);
    let mut samples = Vec::new();
    for (i, line) in lines.enumerate() {
        let fields = crate::csv::split(line);
        let raw_ts = fields.get(t).cloned().unwrap_or_default();
        let raw_value = fields.get(v).cloned().unwrap_or_default();
        let ts = parse_time(raw_ts.trim()).with_context(|| format!("line {}: cannot read the timestamp {raw_ts:?}", i + 2))?;
        samples.push(Sample { value: raw_value.trim().parse().ok(), raw_ts, raw_value, ts });
    }
    Ok(samples)
}

/// RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC), or Unix seconds / milliseconds.
fn parse_time(text: &str) -> Option<i64> {
    if let Some(ms) = weir_engine::time::parse_rfc3339_ms(text) {
        return Some(ms);
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    let n: f64 = text.parse().ok()?;
    // below 10^11 it is seconds (until the year 5138), else milliseconds
    Some(if n.abs() < 1e11 { (n * 1000.0) as i64 } else { n as i64 })
}

fn median_gap(times: &[i64]) -> Option<i64> {
    let mut gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).filter(|g| *g > 0).collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_unstable();
    Some(gaps[gaps.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_the_usual_forms() {
        assert_eq!(parse_time("2026-11-22T10:00:00Z"), Some(1_795_341_600_000));
        assert_eq!(parse_time("2026-11-22 10:00:00"), Some(1_795_341_600_000));
        assert_eq!(parse_time("1795341600"), Some(1_795_341_600_000));
        assert_eq!(parse_time("1795341600000"), Some(1_795_341_600_000));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn the_window_defaults_to_the_median_sampling_interval() {
        assert_eq!(median_gap(&[0, 300, 600, 900, 1000, 1300]), Some(300));
    }
}
