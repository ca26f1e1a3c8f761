//! `snapshot` and `sql`: the lake. Events spread over 100 days go through the engine into
//! a per-minute view (about one row per event, 100 daily partitions) and are written to a
//! Delta lake in a temporary directory.
//!
//! - `snapshot-full`: the first snapshot, every partition written;
//! - `snapshot` : after 1% more events, all on the last day, the next snapshot (only that
//!   day's partition is rewritten); `bytes` is what the snapshot added to the lake;
//! - `sql`: latency of a `GROUP BY` over the snapshot table, 20 runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use weir_engine::catalog::ViewDefinition;
use weir_engine::ingest::Decoded;
use weir_engine::value::{Row, Value};
use weir_engine::{Engine, EngineConfig};

use super::{bench_streams, lake_files, sql_latencies, Report};

const VIEW: &str = "CREATE VIEW bench AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, kind, \
    count(*) AS n, sum(value) AS total FROM events GROUP BY date_bin(INTERVAL '1 minute', ts), tenant, kind";
const DAYS: i64 = 100;

async fn ingest(engine: &Engine, rows: Vec<Row>) -> anyhow::Result<u64> {
    let (stream, _) = engine.stream("events").context("the events stream")?;
    let mut epoch = 0;
    for chunk in rows.chunks(10_000) {
        let decoded = Decoded { rows: chunk.iter().cloned().enumerate().map(|(i, r)| (i as u32 + 1, r)).collect(), rejected: vec![], sizes: vec![] };
        let receipt = engine.ingest(stream, decoded).await?;
        if !receipt.rejected.is_empty() {
            bail!("refused: {:?}", receipt.rejected[0]);
        }
        epoch = receipt.epoch;
    }
    Ok(epoch)
}

/// The events re-timed to spread over `DAYS` days, in order.
fn spread(rows: &[Row]) -> Vec<Row> {
    let base = 1_795_000_000_000i64 - DAYS * 86_400_000;
    let step = DAYS * 86_400_000 / rows.len().max(1) as i64;
    rows.iter().enumerate().map(|(i, r)| {
        let mut r = r.clone();
        r[1] = Value::Timestamp(base + i as i64 * step);
        r
    }).collect()
}

pub async fn run(rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Vec<Report>> {
    let dir = tempfile::tempdir()?;
    let config = EngineConfig { data_dir: dir.path().join("data"), streams: bench_streams(), views: vec![], segment_bytes: weir_engine::wal::SEGMENT_BYTES, quotas: Default::default(), detectors: vec![], archive: None, workers };
    let engine = Arc::new(Engine::open(config).await?);
    engine.create_view(ViewDefinition { sql: VIEW.into(), lateness: None, retention: None }).await?;
    let events = spread(rows);
    let epoch = ingest(&engine, events.clone()).await?;
    let view = engine.view("bench").context("the view")?;
    while !view.wait_for(epoch, Duration::from_secs(600)).await {}
    let lake_dir = dir.path().join("lake");
    let lake = Arc::new(weir_lake::Lake::in_dir(&lake_dir)?);

    let start = Instant::now();
    lake.snapshot(engine.capture().await?).await?;
    let full = Report::new("snapshot-full", view.snapshot().1.len(), start.elapsed().as_secs_f64(), Vec::new()).with_bytes(lake_files(&lake_dir).iter().map(|(_, len)| len).sum::<u64>());

    // 1% more events, on the last day
    let last = events.last().map(|r| match r[1] { Value::Timestamp(t) => t, _ => 0 }).unwrap_or(0);
    let more: Vec<Row> = events.iter().take(events.len() / 100).enumerate().map(|(i, r)| {
        let mut r = r.clone();
        r[1] = Value::Timestamp(last - 3_600_000 + i as i64 * 100);
        r
    }).collect();
    let changed = more.len();
    let epoch = ingest(&engine, more).await?;
    while !view.wait_for(epoch, Duration::from_secs(600)).await {}
    let before = lake_files(&lake_dir).iter().map(|(_, len)| len).sum::<u64>();
    let start = Instant::now();
    lake.snapshot(engine.capture().await?).await?;
    let incremental = Report::new("snapshot", changed, start.elapsed().as_secs_f64(), Vec::new()).with_bytes(lake_files(&lake_dir).iter().map(|(_, len)| len).sum::<u64>() - before);

    let sql = "SELECT tenant, sum(n) AS n FROM bench GROUP BY tenant ORDER BY n DESC LIMIT 10";
    let rows_in_view = view.snapshot().1.len();
    let start = Instant::now();
    let tables = || {
        Ok(weir_queries::live::LakeTables {
            public: Arc::new(weir_lake::SnapshotSchema::new(lake.clone(), vec!["bench".into()], None)?),
            archive: None,
            snapshot: Arc::new(weir_lake::SnapshotFunction::new(lake.clone(), None)),
        })
    };
    let latencies = sql_latencies(&engine, tables, sql, 20).await?;
    let seconds = start.elapsed().as_secs_f64();
    let sql_report = Report::new("sql", rows_in_view * 20, seconds, latencies);
    engine.shutdown();
    Ok(vec![full, incremental, sql_report])
}
