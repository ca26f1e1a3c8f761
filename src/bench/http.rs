//! HTTP workloads against the real server, started in this process on a free loopback
//! port with a fresh data directory (so the write-ahead log is fsync'd as in production).
//!
//! - `ingest-http`: 4 clients post NDJSON batches of 1,000 events as fast as they are
//!   acknowledged; events/s until the view reflects every acknowledged event, and
//!   acknowledgement latency.
//! - `freshness`: one client posts batches of 1,000 at a fixed offered rate while an
//!   SSE subscriber watches the view; latency from each batch's acknowledgement to the
//!   first change event of its epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use weir_engine::catalog::ViewDefinition;
use weir_engine::json::row_to_json;
use weir_engine::schema::{Stream, TimePolicy};
use weir_engine::value::Row;

use super::engine::WINDOW_SQL;
use super::Report;
use crate::config::{Config, Overrides};
use crate::serve::{start, Running};

const BATCH: usize = 1_000;
const CLIENTS: usize = 4;

async fn server(dir: &std::path::Path, workers: usize) -> anyhow::Result<Running> {
    let workers = workers.to_string();
    let env = [("WEIR_STREAMS__EVENTS__LATENESS", "100000d"), ("WEIR_STREAMS__EVENTS__RETENTION", "100000d"), ("WEIR_LOG", "warn"), ("WEIR_WORKERS", workers.as_str())];
    let overrides = Overrides { file: None, data_dir: Some(dir.to_path_buf()), http: Some("127.0.0.1:0".into()) };
    // WEIR_* variables of the bench's own environment apply on top (e.g. WEIR_ARCHIVE__ENABLED=false)
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).chain(std::env::vars().filter(|(k, _)| k.starts_with("WEIR_")));
    let config = Config::load(&overrides, env)?;
    let running = start(config).await?;
    running.engine.create_view(ViewDefinition { sql: WINDOW_SQL.into(), lateness: None, retention: None }).await?;
    Ok(running)
}

fn bodies(rows: &[Row]) -> Vec<String> {
    let columns = Stream::events(TimePolicy::DEFAULT).columns;
    rows.chunks(BATCH)
        .map(|chunk| {
            let mut body = String::with_capacity(chunk.len() * 160);
            for row in chunk {
                body.push_str(&row_to_json(&columns, row).to_string());
                body.push('\n');
            }
            body
        })
        .collect()
}

pub async fn ingest(workload: &str, rows: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let running = server(dir.path(), workers).await?;
    let url = format!("http://{}/v1/streams/events/events", running.address);
    let bodies = Arc::new(bodies(rows));
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (bodies, next, http, url) = (bodies.clone(), next.clone(), http.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut last_epoch = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { return Ok::<_, anyhow::Error>((latencies, last_epoch)) };
                let sent = Instant::now();
                let resp = http.post(&url).header("content-type", "application/x-ndjson").body(body.clone()).send().await?;
                if !resp.status().is_success() {
                    bail!("ingest answered {}", resp.status());
                }
                let receipt: serde_json::Value = resp.json().await?;
                latencies.push(sent.elapsed());
                last_epoch = last_epoch.max(receipt["epoch"].as_u64().context("no epoch in the receipt")?);
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut last_epoch = 0;
    for c in clients {
        let (l, e) = c.await??;
        latencies.extend(l);
        last_epoch = last_epoch.max(e);
    }
    // the clock stops when the view reflects every acknowledged event
    let view = running.engine.view("bench").context("the bench view exists")?;
    if !view.wait_for(last_epoch, Duration::from_secs(3600)).await {
        bail!("the view did not catch up");
    }
    let seconds = start.elapsed().as_secs_f64();
    running.stop().await?;
    Ok(Report::new(workload, rows.len(), seconds, latencies))
}

pub async fn freshness(workload: &str, rows: &Arc<Vec<Row>>, rate: u64, workers: usize) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let running = server(dir.path(), workers).await?;
    let base = format!("http://{}", running.address);
    let http = reqwest::Client::new();
    // ten seconds of offered load at most
    let n = rows.len().min((rate * 10) as usize).max(BATCH);
    let bodies = bodies(&rows[..n.min(rows.len())]);

    // the subscriber notes when the first change of each epoch arrives
    let arrivals: Arc<Mutex<HashMap<u64, Instant>>> = Default::default();
    let resp = http.get(format!("{base}/v1/views/bench/subscribe")).send().await?;
    let mut stream = resp.bytes_stream();
    let seen = arrivals.clone();
    let subscriber = tokio::spawn(async move {
        // (the subscriber shares the machine with the server: it reads only the `id:`
        // lines, in place, and notes each epoch once)
        let mut buffer: Vec<u8> = Vec::new();
        let mut last = None;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return };
            let now = Instant::now();
            buffer.extend_from_slice(&chunk);
            let complete = buffer.iter().rposition(|b| *b == b'\n').map_or(0, |end| end + 1);
            for line in buffer[..complete].split(|b| *b == b'\n') {
                let id = line.strip_prefix(b"id:").and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(id) = id.filter(|id| last != Some(*id)) {
                    last = Some(id);
                    seen.lock().unwrap().entry(id).or_insert(now);
                }
            }
            buffer.drain(..complete);
        }
    });

    let url = format!("{base}/v1/streams/events/events");
    let period = Duration::from_secs_f64(BATCH as f64 / rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut acks: Vec<(u64, Instant)> = Vec::new();
    let mut in_flight = Vec::new();
    for body in bodies {
        tick.tick().await;
        let (http, url) = (http.clone(), url.clone());
        in_flight.push(tokio::spawn(async move {
            let resp = http.post(&url).header("content-type", "application/x-ndjson").body(body).send().await?;
            let receipt: serde_json::Value = resp.json().await?;
            let acked = Instant::now();
            let epoch = receipt["epoch"].as_u64().context("no epoch in the receipt")?;
            Ok::<_, anyhow::Error>((epoch, acked))
        }));
    }
    for f in in_flight {
        acks.push(f.await??);
    }
    let seconds = start.elapsed().as_secs_f64();
    // give the last epochs time to arrive
    let last = acks.iter().map(|(e, _)| *e).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !arrivals.lock().unwrap().contains_key(&last) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrived = arrivals.lock().unwrap().clone();
    let latencies: Vec<Duration> = acks.iter().filter_map(|(e, acked)| arrived.get(e).map(|t| t.saturating_duration_since(*acked))).collect();
    if latencies.len() < acks.len() {
        bail!("{} of {} acknowledged batches never reached the subscriber", acks.len() - latencies.len(), acks.len());
    }
    // each batch's acknowledgement time, epoch and latency, to trace the tail
    if std::env::var_os("BENCH_TRACE").is_some() {
        for ((e, acked), l) in acks.iter().zip(&latencies) {
            eprintln!("batch acked_s={:.3} epoch={} latency_ms={:.1}", acked.duration_since(start).as_secs_f64(), e, l.as_secs_f64() * 1000.0);
        }
    }
    subscriber.abort();
    running.stop().await?;
    Ok(Report::new(workload, n, seconds, latencies))
}
