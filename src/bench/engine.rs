//! Engine workloads: rows go straight into the dataflow worker (no HTTP, no log), in
//! batches of 10,000, one epoch each, without waiting between epochs; the clock stops
//! when the view has published the last epoch.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::sync::oneshot;
use weir_engine::dataflow::{run_worker, Batch, Command, Event, ViewTime};
use weir_engine::plan::Planner;
use weir_engine::store::{ViewInfo, ViewStore};
use weir_engine::schema::Stream;
use weir_engine::value::{Row, Value};

use super::{bench_streams, Report};

pub const WINDOW_SQL: &str = "CREATE VIEW bench AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, kind, \
    count(*) AS n, sum(value) AS total, min(value) AS lo, max(value) AS hi FROM events \
    GROUP BY date_bin(INTERVAL '1 minute', ts), tenant, kind";
pub const HOP_SQL: &str = "CREATE VIEW bench AS SELECT window_start, tenant, count(*) AS n, sum(value) AS total FROM \
    (SELECT unnest(hop(INTERVAL '1 minute', INTERVAL '5 minutes', ts)) AS window_start, tenant, value FROM events) \
    GROUP BY window_start, tenant";
pub const DISTINCT_SQL: &str = "CREATE VIEW bench AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, \
    count(DISTINCT kind) AS kinds FROM events GROUP BY date_bin(INTERVAL '1 minute', ts), tenant";

/// The `engine-anomaly` detector: a z-score per (tenant, kind) series of the windowed view.
pub const DETECTOR: &str = r#"{"name": "bench", "view": "bench", "series": ["tenant", "kind"], "value": "n", "baseline": 30}"#;

const BATCH: usize = 10_000;

/// Runs a view over the `events` stream.
pub fn run(workload: &str, sql: &str, rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Report> {
    let mut streams = bench_streams();
    run_on(workload, streams.remove(0), sql, None, rows, workers)
}

/// The environment variable that makes an engine workload measure its raw data alone:
/// the same events go in, retained as always, but its view reads the `rejected` stream,
/// which gets none; the process prints `raw GROWTH_BYTES` (its resident memory's growth)
/// after the table. The workload's memory beyond the raw data is its own growth less
/// this one's (the issue's target: docs/benchmarks.md).
pub const RAW_DATA: &str = "WEIR_BENCH_RAW_DATA";

/// The raw-data pass's view (see [`RAW_DATA`]).
const RAW_SQL: &str = "CREATE VIEW bench AS SELECT tenant, count(*) AS n FROM rejected GROUP BY tenant";

/// Runs a view over `stream` (fed `rows`, which must be of its schema), with an anomaly
/// detector over it if given; the clock stops when the view (and the detector's output)
/// reflects the last epoch.
pub fn run_on(workload: &str, stream: Stream, sql: &str, detector: Option<&str>, rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Report> {
    run_streams(workload, vec![stream], sql, detector, rows, |_| 0, workers)
}

/// [`run_on`] over several streams: row `i` of `rows` goes to stream `stream_of(i)`
/// (each row of its stream's schema). Each batch of 10,000 rows is one epoch, its rows
/// in a batch per stream.
pub fn run_streams(workload: &str, streams: Vec<Stream>, sql: &str, detector: Option<&str>, rows: &[Row], stream_of: impl Fn(usize) -> usize, workers: usize) -> anyhow::Result<Report> {
    run_view(workload, streams, sql, detector, rows, stream_of, workers).map(|(report, _)| report)
}

/// [`run_streams`], and the view's rows at the end (for checking them).
pub fn run_view(workload: &str, mut streams: Vec<Stream>, sql: &str, detector: Option<&str>, rows: &[Row], stream_of: impl Fn(usize) -> usize, workers: usize) -> anyhow::Result<(Report, Vec<Row>)> {
    let raw = std::env::var_os(RAW_DATA).is_some();
    let (sql, detector) = if raw { (RAW_SQL, None) } else { (sql, detector) };
    let time_columns: Vec<usize> = streams.iter().map(|s| s.time).collect();
    streams.push(bench_streams().pop().expect("the rejected stream"));
    let streams = Arc::new(streams);
    let store = Arc::new(ViewStore::default());
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (streams, store) = (streams.clone(), store.clone());
        std::thread::spawn(move || run_worker(workers, streams, store, rx, 0))
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let plan = runtime.block_on(Planner::new(&streams)?.plan(sql))?;
    let time = ViewTime { lateness_ms: i64::MAX / 4, retention_ms: i64::MAX / 4 };
    let view = store.insert(ViewInfo::of(&plan, time, false));
    let (reply, created) = oneshot::channel();
    tx.send(Command::CreateView { plan, time, reply }).map_err(|_| anyhow!("the dataflow worker stopped"))?;
    runtime.block_on(created)?.context("creating the view")?;
    let mut done = view.clone();
    if let Some(json) = detector {
        let def: weir_engine::detect::DetectorDefinition = serde_json::from_str(json)?;
        let compiled = weir_engine::detect::Compiled::new(def, &view.info.columns, i64::MAX / 4)?;
        done = store.insert(ViewInfo {
            name: weir_engine::detect::ANOMALIES.into(),
            sql: String::new(),
            streams: vec![],
            columns: weir_engine::detect::anomalies_columns(),
            lateness_ms: 0,
            retention_ms: i64::MAX,
            from_config: true,
        });
        let (reply, created) = oneshot::channel();
        tx.send(Command::CreateDetector { detector: Box::new(compiled), reply }).map_err(|_| anyhow!("the dataflow worker stopped"))?;
        runtime.block_on(created)?.context("creating the detector")?;
    }

    // build every command before the clock starts
    let mut commands = Vec::new();
    let mut watermarks = vec![i64::MIN; time_columns.len()];
    for (i, chunk) in rows.chunks(BATCH).enumerate() {
        let mut events: Vec<Vec<Event>> = time_columns.iter().map(|_| Vec::new()).collect();
        for (j, row) in chunk.iter().enumerate() {
            let stream = stream_of(i * BATCH + j);
            let ts = match row[time_columns[stream]] {
                Value::Timestamp(t) => t,
                _ => 0,
            };
            watermarks[stream] = watermarks[stream].max(ts);
            // (room for the whole chunk: one stream's events take it all, as one vector)
            let into = &mut events[stream];
            if into.capacity() == 0 {
                into.reserve_exact(chunk.len());
            }
            into.push(Event { row: row.clone(), ts, late_by: 0, weight: 1 });
        }
        let epoch = i as u64 + 1;
        let batches = events.into_iter().enumerate().filter(|(_, e)| !e.is_empty()).map(|(stream, events)| Batch { epoch, stream, events, watermark: watermarks[stream] }).collect();
        commands.push(Command::Ingest { epoch, batches });
    }
    let last = commands.len() as u64;
    let resident = super::rss_bytes();
    let ticks = super::thread_ticks();
    let start = Instant::now();
    for c in commands {
        tx.send(c).map_err(|_| anyhow!("the dataflow worker stopped"))?;
    }
    if !runtime.block_on(done.wait_for(last, Duration::from_secs(3600))) {
        return Err(anyhow!("the view did not catch up"));
    }
    let seconds = start.elapsed().as_secs_f64();
    super::trace_threads(&ticks, &super::thread_ticks(), seconds);
    let grown = super::rss_bytes().saturating_sub(resident);
    let live = view.snapshot().1;
    if raw {
        println!("raw {grown}");
    }
    let _ = tx.send(Command::Shutdown);
    let _ = worker.join();
    Ok((Report::new(workload, rows.len(), seconds, Vec::new()).with_memory(live.len(), grown), live))
}
