//! The raw archive: accepted events land in a Delta table per stream, partitioned by
//! tenant and date, rejected lines in `rejected`; SQL reads them (tenant-scoped for a
//! scoped key); the log is truncated once archived, and a restart rebuilds the views
//! exactly from the archive plus what is left of the log.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::hash;
use crate::snapshots::read_delta_at;
use crate::weir::Weir;

async fn sql(weir: &Weir, sql: &str) -> Value {
    let resp = weir.http.post(weir.url("/v1/sql")).json(&json!({ "sql": sql })).send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    body["rows"].clone()
}

fn line(tenant: &str, day: u32, i: usize) -> String {
    json!({"tenant": tenant, "ts": format!("2026-11-{day}T10:{:02}:00Z", i % 60), "kind": "call", "value": i as f64, "id": format!("{tenant}-{day}-{i}")}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_archived_by_tenant_and_date_and_recovery_reads_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    // an admin key and a read-only key scoped to tenant acme
    let keys = format!(
        "[{{name = \"admin\", hash = \"{}\", role = \"admin\"}}, {{name = \"acme\", hash = \"{}\", role = \"read-only\", tenant = \"acme\"}}]",
        hash("admin-secret"),
        hash("acme-secret")
    );
    let env = [
        ("WEIR_AUTH__ENABLED", "true"),
        ("WEIR_AUTH__KEYS", keys.as_str()),
        ("WEIR_ARCHIVE__INTERVAL", "100ms"),
        // compaction every few appends: reads, recovery and the exactly-once bookkeeping go on through it
        ("WEIR_ARCHIVE__COMPACT_AFTER", "3"),
        ("WEIR_SNAPSHOT__INTERVAL", "0s"),
        ("WEIR_WAL__SEGMENT_BYTES", "4096"),
        ("WEIR_STREAMS__EVENTS__RETENTION", "7d"),
    ];
    let mut weir = Weir::start(dir.path(), &env);
    weir.http = authorized("admin-secret");
    weir.create_view("CREATE VIEW per_tenant AS SELECT tenant, count(*) AS n, sum(value) AS total FROM events GROUP BY tenant").await;
    // the archive's tables exist (empty) from the start
    assert_eq!(sql(&weir, "SELECT count(*) AS n FROM events").await, json!([{"n": 0}]));
    // two days of events of two tenants, a malformed line now and then
    let mut last = 0;
    for b in 0..40 {
        let day = if b < 20 { 22 } else { 23 };
        let mut body: String = (0..10).map(|i| line(["acme", "globex"][i % 2], day, b * 10 + i) + "\n").collect();
        if b % 10 == 0 {
            body.push_str("not json at all\n");
        }
        let resp = weir.http.post(weir.url("/v1/streams/events/events")).header("content-type", "application/x-ndjson").body(body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        last = resp.json::<Value>().await.unwrap()["epoch"].as_u64().unwrap();
    }
    let before = weir.read("per_tenant", last).await["rows"].clone();

    // the archive fills within a few intervals
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(&weir, "SELECT count(*) AS n FROM events").await != json!([{"n": 400}]) || sql(&weir, "SELECT count(*) AS n FROM rejected").await != json!([{"n": 4}]) {
        assert!(Instant::now() < deadline, "the archive did not fill: {}", sql(&weir, "SELECT count(*) AS n FROM events").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sql(&weir, "SELECT tenant, date, count(*) AS n FROM archive.events GROUP BY tenant, date ORDER BY tenant, date").await,
        json!([
            {"tenant": "acme", "date": "2026-11-22", "n": 100}, {"tenant": "acme", "date": "2026-11-23", "n": 100},
            {"tenant": "globex", "date": "2026-11-22", "n": 100}, {"tenant": "globex", "date": "2026-11-23", "n": 100},
        ])
    );
    assert_eq!(sql(&weir, "SELECT raw, error LIKE '%JSON%' AS parse_error FROM rejected LIMIT 1").await, json!([{"raw": "not json at all", "parse_error": true}]));
    // the archive agrees with the live view it feeds
    assert_eq!(sql(&weir, "SELECT tenant, count(*) AS n, sum(value) AS total FROM events GROUP BY tenant ORDER BY tenant").await, before);

    // an independent reader sees the same table, partitioned by tenant and date
    let table = dir.path().join("lake/_archive/events");
    let delta = read_delta_at(table.to_str().unwrap(), &json!({})).unwrap();
    assert_eq!(delta["partitions"], json!(["tenant", "date"]));
    assert_eq!(delta["rows"].as_array().unwrap().len(), 400);
    assert!(table.join("tenant=acme").join("date=2026-11-23").is_dir());
    // and so does Polars
    let polars = std::process::Command::new("python3")
        .args(["-c", "import sys, json, polars as pl\nd = pl.read_delta(sys.argv[1]).group_by('tenant', 'date').agg(pl.len().alias('n')).sort('tenant', 'date')\nprint(json.dumps(d.to_dicts()))", table.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(polars.status.success(), "polars: {}", String::from_utf8_lossy(&polars.stderr));
    let by_polars: Value = serde_json::from_slice(&polars.stdout).unwrap();
    assert_eq!(by_polars, sql(&weir, "SELECT tenant, date, count(*) AS n FROM events GROUP BY tenant, date ORDER BY tenant, date").await);

    // a tenant-scoped key reads its own rows only, through joins and subqueries too
    let acme = authorized("acme-secret");
    let scoped = |sql: &'static str| {
        let (acme, url) = (acme.clone(), weir.url("/v1/sql"));
        async move {
            let body: Value = acme.post(url).json(&json!({ "sql": sql })).send().await.unwrap().json().await.unwrap();
            assert!(body["rows"].is_array(), "{sql}: {body}");
            body["rows"].clone()
        }
    };
    assert_eq!(scoped("SELECT DISTINCT tenant FROM events").await, json!([{"tenant": "acme"}]));
    assert_eq!(scoped("SELECT count(*) AS n FROM archive.events e JOIN live.per_tenant p ON e.tenant <> p.tenant").await, json!([{"n": 0}]));
    assert_eq!(scoped("SELECT count(*) AS n FROM events WHERE tenant IN (SELECT tenant FROM archive.events WHERE tenant = 'globex')").await, json!([{"n": 0}]));

    // archived segments are deleted at the next commit
    let resp = weir.http.post(weir.url("/v1/streams/events/events")).header("content-type", "application/x-ndjson").body(line("initech", 23, 0)).send().await.unwrap();
    last = resp.json::<Value>().await.unwrap()["epoch"].as_u64().unwrap();
    let segments = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(segments <= 2, "{segments} log segments remain after archiving");
    let before = weir.read("per_tenant", last).await["rows"].clone();

    // a restart rebuilds the views from the archive and the rest of the log
    weir.kill();
    let mut weir = Weir::start(dir.path(), &env);
    weir.http = authorized("admin-secret");
    assert_eq!(weir.read("per_tenant", 0).await["rows"], before);
    // the archived events' idempotency keys are known again: a resend counts nothing twice
    // (batch 30: within the lateness of the watermark, in a deleted segment)
    let resend: String = (0..10).map(|i| line(["acme", "globex"][i % 2], 23, 300 + i) + "\n").collect();
    let resp = weir.http.post(weir.url("/v1/streams/events/events")).header("content-type", "application/x-ndjson").body(resend).send().await.unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["duplicates"], 10);
    // and nothing was archived twice: once a new event is archived after the restart
    // (so the writer has had its round over the log's backlog), every id is there once
    weir.http.post(weir.url("/v1/streams/events/events")).header("content-type", "application/x-ndjson").body(line("initech", 23, 1)).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sql(&weir, "SELECT count(*) AS n FROM events WHERE id = 'initech-23-1'").await != json!([{"n": 1}]) {
        assert!(Instant::now() < deadline, "the event after the restart was not archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sql(&weir, "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM events").await, json!([{"n": 402, "ids": 402}]));
}

fn authorized(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}
