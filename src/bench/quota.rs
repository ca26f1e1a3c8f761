//! `engine-quota`: events submitted in-process to the engine, through the ingest gate
//! with its quota checks, the fsync'd log and the usage ledger, for 1,000 tenants that
//! all have hard limits (high enough that none is reached); the clock stops when
//! `quota_usage` reflects the last epoch. Compare with `recovery`'s ingest phase and
//! `ingest-http` for the cost of quotas and of HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use weir_engine::ingest::Decoded;
use weir_engine::quota::{Mode, Plan, QuotaSettings, QUOTA_USAGE};
use weir_engine::value::Row;
use weir_engine::{Engine, EngineConfig};

use super::{bench_streams, Report};

const BATCH: usize = 1_000;
const CLIENTS: usize = 4;

pub async fn run(workload: &str, rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let limit = Some(u64::MAX / 2);
    let plan = Plan { events_per_minute: limit, events_per_hour: limit, events_per_day: limit, events_per_month: limit, bytes_per_day: limit, mode: Some(Mode::Hard) };
    let quotas = QuotaSettings { default: plan, ..Default::default() };
    let config = EngineConfig { data_dir: dir.path().to_path_buf(), streams: bench_streams(), views: vec![], segment_bytes: weir_engine::wal::SEGMENT_BYTES, quotas, detectors: vec![], archive: None, workers };
    let engine = Arc::new(Engine::open(config).await?);
    let (stream, _) = engine.stream("events").context("the events stream")?;
    let batches: Vec<Decoded> = rows
        .chunks(BATCH)
        .map(|chunk| Decoded { rows: chunk.iter().cloned().enumerate().map(|(i, r)| (i as u32 + 1, r)).collect(), rejected: vec![], sizes: vec![100; chunk.len()] })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(batches));
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (engine, queue) = (engine.clone(), queue.clone());
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    let Some(batch) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else { return Ok::<_, anyhow::Error>(last) };
                    let receipt = engine.ingest(stream, batch).await?;
                    if !receipt.rejected.is_empty() {
                        bail!("refused: {:?}", receipt.rejected[0]);
                    }
                    last = last.max(receipt.epoch);
                }
            })
        })
        .collect();
    let mut last = 0;
    for c in clients {
        last = last.max(c.await??);
    }
    let view = engine.view(QUOTA_USAGE).ok_or_else(|| anyhow!("no quota_usage view"))?;
    if !view.wait_for(last, Duration::from_secs(3600)).await {
        bail!("quota_usage did not catch up");
    }
    let seconds = start.elapsed().as_secs_f64();
    engine.shutdown();
    Ok(Report::new(workload, rows.len(), seconds, Vec::new()))
}
