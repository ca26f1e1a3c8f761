//! `archive`: the raw archive. The events, spread over 10 days, are appended by the real
//! archive writer to a Delta table partitioned by tenant and date in a temporary
//! directory, in appends of 200,000 events (what 5-second appends at 40,000 events/s
//! make); then SQL runs over the archive table as the appends left it.
//!
//! - `archive-append`: the appends, events/s;
//! - `sql-archive-scan`: a `GROUP BY tenant` over every archived event, 3 runs;
//! - `sql-archive-tenant-day`: one tenant's day (`WHERE tenant = … AND date = …`), 3 runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir_engine::value::{Row, Value};
use weir_engine::wal::Record;
use weir_engine::{Engine, EngineConfig};

use super::{bench_streams, lake_files, sql_latencies, Report};

const DAYS: i64 = 10;
const APPEND: usize = 200_000;
const RUNS: usize = 3;

async fn latencies(engine: &Arc<Engine>, lake: &Arc<weir_lake::Lake>, archive: &Arc<weir_lake::archive::Archive>, sql: &str) -> anyhow::Result<Vec<Duration>> {
    let tables = || {
        Ok(weir_queries::live::LakeTables {
            public: Arc::new(weir_lake::SnapshotSchema::new(lake.clone(), vec![], None)?.with_archives(archive, archive.streams())?),
            archive: None,
            snapshot: Arc::new(weir_lake::SnapshotFunction::new(lake.clone(), None)),
        })
    };
    sql_latencies(engine, tables, sql, RUNS).await
}

pub async fn run(rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Vec<Report>> {
    let dir = tempfile::tempdir()?;
    let streams = weir_engine::engine::with_builtin_streams(bench_streams());
    let events = streams.iter().find(|s| s.name == "events").context("the events stream")?.clone();
    let lake_dir = dir.path().join("lake");
    let lake = Arc::new(weir_lake::Lake::in_dir(&lake_dir)?);
    let archive = Arc::new(weir_lake::archive::Archive::open(lake.clone(), &streams).await?);

    // the events re-timed over DAYS days, in order
    let base = 1_795_000_000_000i64 - DAYS * 86_400_000;
    let step = DAYS * 86_400_000 / rows.len().max(1) as i64;
    let start = Instant::now();
    for (epoch, chunk) in rows.chunks(APPEND).enumerate() {
        let first = epoch * APPEND;
        let rows: Vec<Row> = chunk.iter().enumerate().map(|(i, r)| {
            let mut r = r.clone();
            r[1] = Value::Timestamp(base + (first + i) as i64 * step);
            r
        }).collect();
        let record = Record { epoch: epoch as u64 + 1, stream: events.name.clone(), max_ts: 0, rows, sizes: vec![] };
        archive.append(&events, &[record]).await?;
    }
    let append = Report::new("archive-append", rows.len(), start.elapsed().as_secs_f64(), Vec::new());

    let config = EngineConfig { data_dir: dir.path().join("data"), streams: bench_streams(), views: vec![], segment_bytes: weir_engine::wal::SEGMENT_BYTES, quotas: Default::default(), detectors: vec![], archive: None, workers };
    let engine = Arc::new(Engine::open(config).await?);
    let scan = "SELECT tenant, count(*) AS n, sum(value) AS total FROM events GROUP BY tenant ORDER BY n DESC LIMIT 10";
    let day = chrono::DateTime::from_timestamp_millis(base + 86_400_000 * (DAYS / 2)).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default();
    let one = format!("SELECT kind, count(*) AS n, sum(value) AS total FROM events WHERE tenant = 'tenant-0007' AND date = '{day}' GROUP BY kind");
    let mut reports = vec![append];
    let files = lake_files(&lake_dir).iter().filter(|(name, _)| name.ends_with(".parquet")).count();
    println!("  ({files} parquet files, {DAYS} days × 1,000 tenants)");
    for (name, sql) in [("sql-archive-scan", scan), ("sql-archive-tenant-day", one.as_str())] {
        let latencies = latencies(&engine, &lake, &archive, sql).await?;
        let seconds = latencies.iter().map(Duration::as_secs_f64).sum();
        let report = Report::new(name, rows.len() * latencies.len(), seconds, latencies);
        reports.push(report);
    }
    engine.shutdown();
    Ok(reports)
}
