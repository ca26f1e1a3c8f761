//! `recovery`: how long a restart takes with N retained events in the log. A process of
//! its own ingests the events through the real gate (so the log holds them exactly as
//! in production) into a data directory with the windowed view and exits; then another
//! new process times `Engine::open`, which returns once every view reflects the whole
//! log. Both are this binary again, told the directory by [`INGEST_DIR`] and
//! [`RESTART_DIR`]; the process that runs the workload holds no events meanwhile.
//! (A restart is a new process, after the old one is gone. Timed in the process that
//! ingested, the restart reused the memory the first engine had freed, and how much of
//! it suited the restart's allocations decided up to 1.5 s of page zeroing at 10M
//! events; timed in a new process while the ingesting one still held its memory, the
//! kernel reclaimed page cache to fault the restart's memory in, 4–5 s more:
//! docs/benchmarks.md.)

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use weir_engine::catalog::ViewDefinition;
use weir_engine::ingest::Decoded;
use weir_engine::value::Row;
use weir_engine::{Engine, EngineConfig};

use super::engine::WINDOW_SQL;
use super::{bench_streams, Report};

const BATCH: usize = 10_000;

/// The environment variable that makes `weir bench recovery` the ingesting process: it
/// ingests its events (generated, or `--input`) into this data directory, prints
/// `ingested EVENTS`, and exits.
pub const INGEST_DIR: &str = "WEIR_BENCH_INGEST_DIR";

/// The environment variable that makes `weir bench recovery` the restart's process: it
/// opens the engine on this data directory, prints how long that took, how many events
/// it recovered and its peak resident memory (`restart SECONDS EVENTS BYTES`), and exits.
pub const RESTART_DIR: &str = "WEIR_BENCH_RESTART_DIR";

/// The restart's process (see [`RESTART_DIR`]).
pub async fn restart(dir: &std::path::Path, workers: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let engine = open(dir, workers).await?;
    let seconds = start.elapsed().as_secs_f64();
    println!("restart {seconds} {} {}", engine.recovered_events(), super::peak_rss_bytes());
    engine.shutdown();
    Ok(())
}

async fn open(dir: &std::path::Path, workers: usize) -> anyhow::Result<Engine> {
    Ok(Engine::open(EngineConfig { data_dir: dir.to_path_buf(), streams: bench_streams(), views: vec![], segment_bytes: weir_engine::wal::SEGMENT_BYTES, quotas: Default::default(), detectors: vec![], archive: None, workers }).await?)
}

/// The ingesting process (see [`INGEST_DIR`]).
pub async fn ingest(dir: &std::path::Path, rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<()> {
    let engine = open(dir, workers).await?;
    engine.create_view(ViewDefinition { sql: WINDOW_SQL.into(), lateness: None, retention: None }).await?;
    let (stream, _) = engine.stream("events").context("the events stream")?;
    for chunk in rows.chunks(BATCH) {
        let decoded = Decoded { rows: chunk.iter().cloned().enumerate().map(|(i, r)| (i as u32 + 1, r)).collect(), rejected: vec![], sizes: vec![] };
        let receipt = engine.ingest(stream, decoded).await?;
        if !receipt.rejected.is_empty() {
            bail!("the log refused events: {:?}", receipt.rejected[0]);
        }
    }
    engine.close();
    println!("ingested {}", rows.len());
    Ok(())
}

/// Runs this binary's `bench recovery` with `args` and `env` set to `dir`, and returns
/// the words after `prefix` on the line of its output that starts with it.
fn child(args: &[String], env: &str, dir: &std::path::Path, prefix: &str) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "recovery"])
        .args(args)
        .env(env, dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting a process with {env}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix(prefix)).with_context(|| format!("the process with {env} printed no {prefix:?} line ({}): {stdout}", out.status))?;
    Ok(line.split_whitespace().map(str::to_string).collect())
}

/// The workload: `args` are the bench's own (events, input, workers), passed on.
pub fn run(workload: &str, args: &[String]) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let ingested: usize = child(args, INGEST_DIR, dir.path(), "ingested ")?.first().context("ingested EVENTS")?.parse()?;
    let restart = child(args, RESTART_DIR, dir.path(), "restart ")?;
    let [seconds, recovered, peak] = restart.as_slice() else { bail!("restart SECONDS EVENTS BYTES: {restart:?}") };
    let (seconds, recovered, peak): (f64, usize, u64) = (seconds.parse()?, recovered.parse()?, peak.parse()?);
    if recovered != ingested {
        bail!("recovered {recovered} events of {ingested}");
    }
    // (the restart's process's peak, not this one's)
    Ok(Report { peak_rss_bytes: peak, ..Report::new(workload, ingested, seconds, Vec::new()) })
}
