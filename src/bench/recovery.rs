//! `recovery`: how long a restart takes with N retained events in the log. The events
//! are ingested through the real gate (so the log holds them exactly as in production)
//! into a data directory with the windowed view; then the engine is closed and a new
//! process (this binary again, told the directory by [`RESTART_DIR`]) times
//! `Engine::open`, which returns once every view reflects the whole log. (A restart is
//! a new process: timed in the process that ingested, the restart reused the memory the
//! first engine had freed, and how much of it suited the restart's allocations decided
//! up to 1.5 s of page zeroing at 10M events: docs/benchmarks.md.)

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

/// The environment variable that makes `weir bench recovery` the restart's process: it
/// opens the engine on this data directory, prints how long that took and how many
/// events it recovered (`restart SECONDS EVENTS`), and exits.
pub const RESTART_DIR: &str = "WEIR_BENCH_RESTART_DIR";

/// The restart's process (see [`RESTART_DIR`]).
pub async fn restart(dir: &std::path::Path, workers: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let engine = open(dir, workers).await?;
    let seconds = start.elapsed().as_secs_f64();
    println!("restart {seconds} {}", engine.recovered_events());
    engine.shutdown();
    Ok(())
}

async fn open(dir: &std::path::Path, workers: usize) -> anyhow::Result<Engine> {
    Ok(Engine::open(EngineConfig { data_dir: dir.to_path_buf(), streams: bench_streams(), views: vec![], segment_bytes: weir_engine::wal::SEGMENT_BYTES, quotas: Default::default(), detectors: vec![], archive: None, workers }).await?)
}

pub async fn run(workload: &str, rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    {
        let engine = open(dir.path(), workers).await?;
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
    }
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "recovery", "--workers", &workers.to_string()])
        .env(RESTART_DIR, dir.path())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting the restart's process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("restart ")).with_context(|| format!("the restart's process printed no time ({}): {stdout}", out.status))?;
    let (seconds, recovered) = line.split_once(' ').context("restart SECONDS EVENTS")?;
    let (seconds, recovered): (f64, usize) = (seconds.parse()?, recovered.parse()?);
    if recovered != rows.len() {
        bail!("recovered {recovered} events of {}", rows.len());
    }
    Ok(Report::new(workload, rows.len(), seconds, Vec::new()))
}
