//! `weir bench`: reproducible workloads on the real engine, printed as a table and,
//! with `--json`, written as a machine-readable report.
//!
//! ```text
//!   engine-window, engine-hop, engine-distinct   rows pushed straight into the dataflow worker
//!                                                (no HTTP, no log): the engine's raw speed
//!   engine-anomaly                               engine-window plus a z-score detector per series
//!   engine-quota                                 in-process ingest through the gate with quota
//!                                                checks and the fsync'd log, until quota_usage is current
//!   ingest-http                                  NDJSON batches over loopback HTTP, log fsync'd
//!   freshness                                    fixed offered load; ack → SSE subscriber latency
//!   recovery                                     restart time with N events in the log
//!   nexmark-q0, -q1, -q2, -q5, -q7               Nexmark bids through Nexmark queries as views
//!   nexmark-q4, -q8                              Nexmark people, auctions and bids, joined
//!   snapshot                                     Delta snapshots: full, then after 1% more events;
//!                                                SQL latency over the snapshot table
//!   archive                                      the raw archive: appends, compaction, SQL
//!                                                latency over the archive before and after
//! ```
//!
//! Events are generated (or read with `--input`) and encoded before the clock starts.

mod archive;
mod engine;
mod http;
mod nexmark;
mod quota;
mod recovery;
mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use weir_engine::schema::{Stream, TimePolicy};
use weir_engine::value::{Row, Value};

/// Every workload, in the order `weir bench` runs them by default.
pub const WORKLOADS: &[&str] = &[
    "engine-window",
    "engine-hop",
    "engine-distinct",
    "engine-quota",
    "engine-anomaly",
    "ingest-http",
    "freshness",
    "recovery",
    "nexmark-q0",
    "nexmark-q1",
    "nexmark-q2",
    "nexmark-q5",
    "nexmark-q7",
    "nexmark-q4",
    "nexmark-q8",
    "snapshot",
    "archive",
];

/// What to run.
pub struct BenchArgs {
    pub workloads: Vec<String>,
    pub events: usize,
    pub workers: usize,
    pub json: Option<PathBuf>,
    pub input: Option<PathBuf>,
    pub rate: u64,
}

/// One workload's result.
#[derive(Debug, Serialize)]
pub struct Report {
    pub workload: String,
    pub events: usize,
    pub workers: usize,
    pub seconds: f64,
    pub events_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    pub peak_rss_bytes: u64,
    pub cores: usize,
    /// Bytes written, where it applies (snapshots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What the view's state costs, where it applies (the engine workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

/// The process's resident memory added while the events went in (the engine's retained
/// copy of every event, the view's state and its store), per row the view holds at the
/// end; and the same less the raw data's (the growth of a process that takes the same
/// events with a view that reads none of them: [`engine::RAW_DATA`]), which is what the
/// view itself costs.
#[derive(Debug, Serialize)]
pub struct Memory {
    pub live_rows: u64,
    pub rss_growth_bytes: u64,
    pub bytes_per_live_row: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_data_growth_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_live_row_beyond_raw_data: Option<f64>,
}

impl Report {
    /// The same, with the memory its view took (see [`Memory`]).
    pub fn with_memory(mut self, live_rows: usize, rss_growth_bytes: u64) -> Report {
        let bytes_per_live_row = rss_growth_bytes as f64 / live_rows.max(1) as f64;
        self.memory = Some(Memory { live_rows: live_rows as u64, rss_growth_bytes, bytes_per_live_row, raw_data_growth_bytes: None, bytes_per_live_row_beyond_raw_data: None });
        self
    }

    /// The same, with the raw data's share of the memory (see [`Memory`]).
    fn with_raw_data(mut self, raw_growth_bytes: u64) -> Report {
        if let Some(m) = &mut self.memory {
            m.raw_data_growth_bytes = Some(raw_growth_bytes);
            m.bytes_per_live_row_beyond_raw_data = Some(m.rss_growth_bytes.saturating_sub(raw_growth_bytes) as f64 / m.live_rows.max(1) as f64);
        }
        self
    }

    /// The same, with the bytes it wrote.
    pub fn with_bytes(mut self, bytes: u64) -> Report {
        self.bytes = Some(bytes);
        self
    }

    /// A workload's result, with the process's memory and cores read now.
    pub fn new(workload: &str, events: usize, seconds: f64, mut latencies: Vec<Duration>) -> Report {
        Report {
            workload: workload.into(),
            events,
            workers: 1,
            seconds,
            events_per_sec: events as f64 / seconds,
            latency_ms: Latency::of(&mut latencies),
            peak_rss_bytes: peak_rss_bytes(),
            cores: cores(),
            bytes: None,
            memory: None,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(samples: &mut [Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
        Some(Latency { p50: at(0.5), p99: at(0.99), max: at(1.0) })
    }
}

/// The stream the workloads use: `events`, with time limits that never bite.
fn bench_streams() -> Vec<Stream> {
    let open = TimePolicy { lateness_ms: i64::MAX / 4, retention_ms: i64::MAX / 4 };
    vec![Stream::events(open), Stream::rejected(open)]
}

/// Deterministic events: 1,000 tenants × 20 kinds, event time advancing 4 ms per event
/// (so 1M events cover ~67 one-minute windows), values 0–1000, a region label.
pub fn generate(n: usize) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(7);
    // (strings as the decoders make them: see `Interner`)
    let mut strings = weir_engine::value::Interner::new(1 << 16);
    let tenants: Vec<Value> = (0..1000).map(|i| Value::Str(strings.get(&format!("tenant-{i:04}")))).collect();
    let kinds: Vec<Value> = (0..20).map(|i| Value::Str(strings.get(&format!("kind-{i:02}")))).collect();
    let regions: Vec<Value> = ["eu", "us", "ap"].iter().map(|r| Value::map(vec![(strings.get("region"), strings.get(r))])).collect();
    let base = 1_795_000_000_000i64;
    (0..n)
        .map(|i| {
            vec![
                tenants[rng.random_range(0..tenants.len())].clone(),
                Value::Timestamp(base + i as i64 * 4),
                kinds[rng.random_range(0..kinds.len())].clone(),
                Value::Float(rng.random_range(0..1000) as f64),
                regions[rng.random_range(0..regions.len())].clone(),
                Value::Null,
            ]
        })
        .collect()
}

fn load_input(path: &PathBuf) -> anyhow::Result<Vec<Row>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let stream = Stream::events(TimePolicy::DEFAULT);
    let decoded = weir_connectors::format::decode_ndjson(&stream, &bytes)?;
    if let Some(r) = decoded.rejected.first() {
        bail!("{} line {}: {}", path.display(), r.line, r.error);
    }
    Ok(decoded.rows.into_iter().map(|(_, row)| row).collect())
}

/// The process's peak resident set size, from /proc (0 where unavailable).
/// Latencies of `runs` runs of `sql` through Weir's query path over the lake's `tables`
/// (opened afresh each run, as each request does).
async fn sql_latencies(
    engine: &Arc<weir_engine::Engine>,
    tables: impl Fn() -> anyhow::Result<weir_queries::live::LakeTables>,
    sql: &str,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    use futures::StreamExt;
    let mut latencies = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = std::time::Instant::now();
        let mut stream = weir_queries::live::query(engine.clone(), sql, None, Some(tables()?)).await?;
        while let Some(batch) = stream.next().await {
            batch?;
        }
        latencies.push(t.elapsed());
    }
    Ok(latencies)
}

/// Every file under `dir`, recursively: (file name, size in bytes).
fn lake_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => files.extend(lake_files(&entry.path())),
            Ok(m) => files.push((entry.file_name().to_string_lossy().into_owned(), m.len())),
            Err(_) => {}
        }
    }
    files
}

pub fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

/// The process's resident memory now.
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// Each thread's CPU time so far (user + system, in the kernel's clock ticks, `USER_HZ`:
/// 100 a second on Linux), by thread id, with the thread's name.
pub fn thread_ticks() -> Vec<(u32, String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let id: u32 = t.file_name()?.to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(t.join("comm")).ok()?.trim().to_string();
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            // (fields after the parenthesised name: state is the 3rd, utime the 14th, stime the 15th)
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some((id, name, ticks))
        })
        .collect()
}

/// With `BENCH_TRACE` set, prints each thread's CPU time between two [`thread_ticks`]
/// readings and the wall time between them: how busy each thread was while timed.
pub fn trace_threads(before: &[(u32, String, u64)], after: &[(u32, String, u64)], seconds: f64) {
    if std::env::var_os("BENCH_TRACE").is_none() {
        return;
    }
    let hz = 100.0;
    eprintln!("threads while timed ({seconds:.3} s):");
    for (id, name, ticks) in after {
        let was = before.iter().find(|(i, _, _)| i == id).map_or(0, |(_, _, t)| *t);
        if *ticks > was {
            eprintln!("  {name:<16} {:>7.3} s CPU ({:>3.0}% of the wall time)", (ticks - was) as f64 / hz, 100.0 * (ticks - was) as f64 / hz / seconds);
        }
    }
}

/// A memory figure of `/proc/self/status` (0 where there is none).
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()))
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn print_row(report: &Report) {
    let l = report.latency_ms.as_ref();
    let ms = |f: fn(&Latency) -> f64| l.map(|l| format!("{:.2}", f(l))).unwrap_or_else(|| "-".into());
    println!(
        "{:<16} {:>10} {:>8.2} {:>14.0} {:>9} {:>9} {:>9} {:>7} MiB",
        report.workload,
        report.events,
        report.seconds,
        report.events_per_sec,
        ms(|l| l.p50),
        ms(|l| l.p99),
        ms(|l| l.max),
        report.peak_rss_bytes >> 20
    );
    if let Some(bytes) = report.bytes {
        println!("{:<16} wrote {:.1} MiB", "", bytes as f64 / (1 << 20) as f64);
    }
    if let Some(m) = &report.memory {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!("{:<16} {} live rows; resident memory grew {:.1} MiB: {:.0} bytes per live row", "", m.live_rows, mib(m.rss_growth_bytes), m.bytes_per_live_row);
        if let (Some(raw), Some(beyond)) = (m.raw_data_growth_bytes, m.bytes_per_live_row_beyond_raw_data) {
            println!("{:<16} the raw data alone grew it {:.1} MiB: {:.0} bytes per live row beyond the raw data", "", mib(raw), beyond);
        }
    }
}

/// The raw data's growth of the resident memory for an engine workload, measured in a
/// process of its own (in this one, the workload's freed memory would be reused): see
/// [`engine::RAW_DATA`].
fn raw_data_growth(workload: &str, args: &BenchArgs) -> anyhow::Result<u64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", workload, "--events", &args.events.to_string(), "--workers", &args.workers.to_string()])
        .args(args.input.iter().flat_map(|p| [std::ffi::OsStr::new("--input"), p.as_os_str()]))
        .env(engine::RAW_DATA, "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting the raw data's process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let raw = stdout.lines().find_map(|l| l.strip_prefix("raw ")).with_context(|| format!("the raw data's process printed no growth ({}): {stdout}", out.status))?;
    Ok(raw.trim().parse()?)
}

/// Runs the workloads, prints the table, writes the JSON report.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let workers = args.workers;
    if let Some(dir) = std::env::var_os(recovery::RESTART_DIR) {
        // (the `recovery` workload's restart, in a process of its own)
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return runtime.block_on(recovery::restart(std::path::Path::new(&dir), workers));
    }
    if let Some(dir) = std::env::var_os(recovery::INGEST_DIR) {
        // (and its ingest, in another)
        let events = Arc::new(match &args.input {
            Some(path) => load_input(path)?,
            None => generate(args.events),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return runtime.block_on(recovery::ingest(std::path::Path::new(&dir), &events, workers));
    }
    let workloads: Vec<String> = if args.workloads.is_empty() { WORKLOADS.iter().map(|s| s.to_string()).collect() } else { args.workloads.clone() };
    for w in &workloads {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload {w}; known: {}", WORKLOADS.join(", "));
        }
    }
    // (`recovery` makes its events in a process of its own)
    let events = Arc::new(match &args.input {
        _ if workloads.iter().all(|w| w == "recovery") => Vec::new(),
        Some(path) => load_input(path)?,
        None => generate(args.events),
    });
    let mixed = |w: &str| nexmark::MIXED_QUERIES.iter().any(|(m, _)| *m == w);
    let bids = Arc::new(if workloads.iter().any(|w| w.starts_with("nexmark") && !mixed(w)) { nexmark::bids(args.events) } else { Vec::new() });
    let nexmark_events = if workloads.iter().any(|w| mixed(w)) { nexmark::events(args.events) } else { Default::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut reports = Vec::new();
    println!("{:<16} {:>10} {:>8} {:>14} {:>9} {:>9} {:>9} {:>10}", "workload", "events", "seconds", "events/s", "p50 ms", "p99 ms", "max ms", "peak RSS");
    for w in &workloads {
        let one = |r: Report| vec![r];
        let results = match w.as_str() {
            "engine-window" => one(engine::run(w, engine::WINDOW_SQL, &events, workers)?),
            "engine-hop" => one(engine::run(w, engine::HOP_SQL, &events, workers)?),
            "engine-distinct" => one(engine::run(w, engine::DISTINCT_SQL, &events, workers)?),
            "engine-quota" => one(runtime.block_on(quota::run(w, &events, workers))?),
            "engine-anomaly" => one(engine::run_on(w, bench_streams().remove(0), engine::WINDOW_SQL, Some(engine::DETECTOR), &events, workers)?),
            "ingest-http" => one(runtime.block_on(http::ingest(w, &events, workers))?),
            "freshness" => one(runtime.block_on(http::freshness(w, &events, args.rate, workers))?),
            "recovery" => {
                // (the bench's own arguments, for the workload's processes)
                let passed: Vec<String> = ["--events".to_string(), args.events.to_string(), "--workers".to_string(), workers.to_string()]
                    .into_iter()
                    .chain(args.input.iter().flat_map(|p| ["--input".to_string(), p.display().to_string()]))
                    .collect();
                one(recovery::run(w, &passed)?)
            }
            "snapshot" => runtime.block_on(snapshot::run(&events, workers))?,
            "archive" => runtime.block_on(archive::run(&events, workers))?,
            w if mixed(w) => one(nexmark::run_mixed(w, &nexmark_events, workers)?),
            w if w.starts_with("nexmark-") => one(nexmark::run(w, &bids, workers)?),
            _ => unreachable!("checked above"),
        };
        for mut report in results {
            report.workers = workers;
            if report.memory.is_some() && std::env::var_os(engine::RAW_DATA).is_none() {
                report = report.with_raw_data(raw_data_growth(w, &args)?);
            }
            print_row(&report);
            reports.push(report);
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
