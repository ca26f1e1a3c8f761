//! `recovery`: how long a restart takes with N retained events in the log. The events
//! are ingested through the real gate (so the log holds them exactly as in production)
//! into a data directory with the windowed view; then the engine is closed (its
//! dataflow's threads end, having let go of their state: a restart is a new process, and
//! the old one's work must not compete with it) and the clock times `Engine::open`,
//! which returns once every view reflects the whole log.

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
    let start = Instant::now();
    let engine = open(dir.path(), workers).await?;
    let seconds = start.elapsed().as_secs_f64();
    if engine.recovered_events() != rows.len() {
        bail!("recovered {} events of {}", engine.recovered_events(), rows.len());
    }
    engine.shutdown();
    Ok(Report::new(workload, rows.len(), seconds, Vec::new()))
}
