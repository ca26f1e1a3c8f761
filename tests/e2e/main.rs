//! End-to-end tests: the real `weir` binary, driven over HTTP and SSE like a user would.

mod alerts;
mod anomalies;
mod archive;
mod auth;
mod azure;
mod detect;
mod quotas;
mod s3;
mod snapshots;
mod sql;
mod weir;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use weir::{SseReader, Weir};

const PER_MINUTE: &str = "CREATE VIEW per_minute AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, \
     count(*) AS n, sum(value) AS total FROM events GROUP BY date_bin(INTERVAL '1 minute', ts), tenant";

fn ev(tenant: &str, ts: &str, kind: &str, value: f64) -> Value {
    json!({ "tenant": tenant, "ts": ts, "kind": kind, "value": value })
}

fn epoch(receipt: &Value) -> u64 {
    receipt["epoch"].as_u64().expect("an epoch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_validates_lines_deduplicates_and_views_answer_in_json_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[]);
    weir.create_view(PER_MINUTE).await;
    weir.create_view("CREATE VIEW refused AS SELECT stream, line, raw, error FROM rejected").await;

    let body = "{\"tenant\":\"acme\",\"ts\":\"2026-11-22T10:00:05Z\",\"kind\":\"click\",\"value\":2,\"id\":\"e1\"}\n\
                {\"tenant\":\"acme\",\"ts\":1795341610000,\"kind\":\"click\",\"value\":3}\n\
                this is not json\n\
                {\"tenant\":\"acme\",\"ts\":\"2026-11-22T10:00:09Z\",\"kind\":\"click\",\"value\":5,\"id\":\"e1\"}\n\
                {\"tenant\":\"globex\",\"kind\":\"view\"}\n";
    let resp = weir.http.post(weir.url("/v1/streams/events/events")).header("content-type", "application/x-ndjson").body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let receipt: Value = resp.json().await.unwrap();
    assert_eq!(receipt["accepted"], 3, "{receipt}");
    assert_eq!(receipt["duplicates"], 1, "{receipt}");
    let rejected: Vec<u64> = receipt["rejected"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(rejected, vec![3, 5]);
    assert!(receipt["rejected"][1]["error"].as_str().unwrap().contains("missing required field \"ts\""));

    // the same events again, as a JSON array: the id'd one counts once, however often sent
    let again = json!([{"tenant":"acme","ts":"2026-11-22T10:00:05Z","kind":"click","value":2,"id":"e1"}]);
    let resp = weir.http.post(weir.url("/v1/streams/events/events")).json(&again).send().await.unwrap();
    let receipt: Value = resp.json().await.unwrap();
    assert_eq!((receipt["accepted"].as_u64(), receipt["duplicates"].as_u64()), (Some(1), Some(1)));

    let view = weir.read("per_minute", epoch(&receipt)).await;
    assert_eq!(view["view"], "per_minute");
    assert_eq!(view["rows"], json!([{"minute": "2026-11-22T10:00:00.000Z", "tenant": "acme", "n": 2, "total": 5.0}]));

    let refused = weir.read("refused", epoch(&receipt)).await;
    let raws: Vec<&str> = refused["rows"].as_array().unwrap().iter().map(|r| r["raw"].as_str().unwrap()).collect();
    assert!(raws.contains(&"this is not json"), "{refused}");
    assert_eq!(refused["rows"].as_array().unwrap().len(), 2);

    let csv = weir.http.get(weir.url("/v1/views/per_minute")).header("accept", "text/csv").send().await.unwrap().text().await.unwrap();
    assert_eq!(csv, "minute,tenant,n,total\n2026-11-22T10:00:00.000Z,acme,2,5.0\n");

    let arrow = weir.http.get(weir.url("/v1/views/per_minute")).header("accept", "application/vnd.apache.arrow.stream").send().await.unwrap();
    assert_eq!(arrow.headers()["content-type"], "application/vnd.apache.arrow.stream");
    let rows = weir_engine::columnar::ipc_to_rows(&arrow.bytes().await.unwrap()).unwrap();
    use weir_engine::value::Value as V;
    assert_eq!(rows, vec![vec![V::Timestamp(1_795_341_600_000), V::str("acme"), V::Int(2), V::Float(5.0)]]);

    let listed: Value = weir.http.get(weir.url("/v1/views")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = listed["views"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    let builtin = ["anomalies", "quota_usage", "usage_per_day", "usage_per_hour", "usage_per_minute", "usage_per_month"];
    let mine: Vec<&str> = names.iter().copied().filter(|n| !builtin.contains(n)).collect();
    assert_eq!(mine, vec!["per_minute", "refused"], "{names:?}");
    assert_eq!(listed["views"].as_array().unwrap().iter().find(|v| v["name"] == "per_minute").unwrap()["columns"][2], json!({"name": "n", "type": "int", "nullable": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[("WEIR_INGEST__MAX_BODY_BYTES", "200")]);
    let (status, body) = weir.ingest("nope", &[ev("a", "2026-11-22T10:00:00Z", "k", 1.0)]).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    let big: Vec<Value> = (0..10).map(|_| ev("a", "2026-11-22T10:00:00Z", "k", 1.0)).collect();
    let (status, body) = weir.ingest("events", &big).await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], "payload_too_large");
    assert!(body["message"].as_str().unwrap().contains("200 bytes"));

    for (sql, construct) in [
        ("CREATE VIEW j AS SELECT a.tenant FROM events a LEFT JOIN events b ON a.tenant = b.tenant", "LEFT JOIN"),
        ("CREATE VIEW c AS SELECT a.tenant FROM events a, events b WHERE a.tenant = b.tenant", "cross join"),
        ("CREATE VIEW o AS SELECT tenant FROM events ORDER BY tenant", "ORDER BY"),
        ("CREATE VIEW w AS SELECT tenant, row_number() OVER (ORDER BY ts) AS r FROM events", "window functions"),
        ("CREATE VIEW l AS SELECT tenant FROM events LIMIT 3", "LIMIT"),
        ("CREATE VIEW m AS SELECT tenant, median(value) AS m FROM events GROUP BY tenant", "median"),
        ("CREATE VIEW s AS SELECT nosuchcolumn FROM events", "nosuchcolumn"),
    ] {
        let resp = weir.http.post(weir.url("/v1/views")).json(&json!({ "sql": sql })).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{sql}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_sql");
        assert!(body["message"].as_str().unwrap().contains(construct), "{sql}: {body}");
    }
    weir.create_view(PER_MINUTE).await;
    let resp = weir.http.post(weir.url("/v1/views")).json(&json!({ "sql": PER_MINUTE })).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(weir.http.delete(weir.url("/v1/views/per_minute")).send().await.unwrap().status(), 204);
    let resp = weir.http.get(weir.url("/v1/views/per_minute")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_a_snapshot_then_ordered_changes_including_late_corrections_and_can_resume() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[("WEIR_STREAMS__EVENTS__LATENESS", "1h")]);
    weir.create_view(PER_MINUTE).await;
    let (_, first) = weir.ingest("events", &[ev("acme", "2026-11-22T10:00:05Z", "click", 1.0)]).await;
    weir.read("per_minute", epoch(&first)).await;

    let mut sse = SseReader::open(&weir, "/v1/views/per_minute/subscribe", None).await;
    let snapshot = sse.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let snapshot_id = snapshot.id.clone().unwrap();
    assert_eq!(snapshot.data["epoch"].as_u64().unwrap().to_string(), snapshot_id);
    assert_eq!(snapshot.data["rows"], json!([{"minute": "2026-11-22T10:00:00.000Z", "tenant": "acme", "n": 1, "total": 1.0}]));

    // a new window, then a late event that corrects the old one
    let (_, second) = weir.ingest("events", &[ev("acme", "2026-11-22T10:05:00Z", "click", 2.0)]).await;
    let (_, late) = weir.ingest("events", &[ev("acme", "2026-11-22T10:00:30Z", "click", 4.0)]).await;
    assert_eq!(late["accepted"], 1, "within the allowed lateness: {late}");
    let (_, too_late) = weir.ingest("events", &[ev("acme", "2026-11-22T08:00:00Z", "click", 4.0)]).await;
    assert!(too_late["rejected"][0]["error"].as_str().unwrap().starts_with("late"), "{too_late}");

    let added = sse.next().await;
    assert_eq!((added.event.as_str(), added.id.clone().unwrap()), ("change", epoch(&second).to_string()));
    assert_eq!(added.data, json!({"epoch": epoch(&second), "diff": 1, "row": {"minute": "2026-11-22T10:05:00.000Z", "tenant": "acme", "n": 1, "total": 2.0}}));
    let mut correction = vec![sse.next().await, sse.next().await];
    correction.sort_by_key(|e| e.data["diff"].as_i64());
    assert!(correction.iter().all(|e| e.id.as_deref() == Some(&*epoch(&late).to_string())));
    assert_eq!(correction[0].data["row"], json!({"minute": "2026-11-22T10:00:00.000Z", "tenant": "acme", "n": 1, "total": 1.0}));
    assert_eq!(correction[0].data["diff"], -1);
    assert_eq!(correction[1].data["row"], json!({"minute": "2026-11-22T10:00:00.000Z", "tenant": "acme", "n": 2, "total": 5.0}));
    drop(sse);

    // resuming after the snapshot replays exactly the three changes, in order
    let mut resumed = SseReader::open(&weir, "/v1/views/per_minute/subscribe", Some(&snapshot_id)).await;
    let replay = [resumed.next().await, resumed.next().await, resumed.next().await];
    assert_eq!(replay[0].data, added.data);
    assert!(replay[1..].iter().all(|e| e.data["epoch"] == epoch(&late)));
    // and nothing more until something changes
    let (_, third) = weir.ingest("events", &[ev("globex", "2026-11-22T10:05:10Z", "view", 1.0)]).await;
    let next = resumed.next().await;
    assert_eq!(next.data["epoch"], epoch(&third));
    assert_eq!(next.data["row"]["tenant"], "globex");

    // an epoch that is not retained: told to start again from a fresh snapshot
    let mut stale = SseReader::open(&weir, "/v1/views/per_minute/subscribe", Some("1")).await;
    assert_eq!(stale.next().await.event, "reset");
    let fresh = stale.next().await;
    assert_eq!(fresh.event, "snapshot");
    assert_eq!(fresh.data["rows"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_older_than_the_retention_are_retracted() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[("WEIR_STREAMS__EVENTS__LATENESS", "5m"), ("WEIR_STREAMS__EVENTS__RETENTION", "10m")]);
    weir.create_view(PER_MINUTE).await;
    // a view may narrow its stream's retention (and only narrow it)
    let narrow = json!({ "sql": PER_MINUTE.replace("per_minute", "per_minute_short"), "retention": "5m" });
    let resp = weir.http.post(weir.url("/v1/views")).json(&narrow).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let wide = json!({ "sql": PER_MINUTE.replace("per_minute", "too_long"), "retention": "1h" });
    let resp = weir.http.post(weir.url("/v1/views")).json(&wide).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    weir.ingest("events", &[ev("acme", "2026-11-22T10:00:05Z", "click", 1.0), ev("acme", "2026-11-22T10:03:00Z", "click", 1.0)]).await;
    let (_, r) = weir.ingest("events", &[ev("acme", "2026-11-22T10:12:00Z", "click", 1.0)]).await;
    let minutes = |view: &Value| -> Vec<String> { view["rows"].as_array().unwrap().iter().map(|r| r["minute"].as_str().unwrap().to_string()).collect() };
    // the watermark is 10:12, so events before 10:02 have left the 10-minute retention
    let view = weir.read("per_minute", epoch(&r)).await;
    assert_eq!(minutes(&view), vec!["2026-11-22T10:03:00.000Z", "2026-11-22T10:12:00.000Z"], "{view}");
    // and events before 10:07 have left the 5-minute one
    let view = weir.read("per_minute_short", epoch(&r)).await;
    assert_eq!(minutes(&view), vec!["2026-11-22T10:12:00.000Z"], "{view}");
}

/// Clients send batches with idempotency keys concurrently; the server is SIGKILLed
/// mid-stream and restarted. Every acknowledged event is there; the clients then retry
/// what was never acknowledged, and every event is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_concurrent_load_loses_nothing_acknowledged_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[]);
    weir.create_view("CREATE VIEW per_tenant AS SELECT tenant, count(*) AS n FROM events GROUP BY tenant").await;

    let clients = 4;
    let batches_per_client = 400;
    let batch_size = 50;
    let make_batch = move |client: usize, b: usize| -> String {
        (0..batch_size)
            .map(|i| {
                let ts = 1_795_341_600_000i64 + (b * batch_size + i) as i64;
                format!("{{\"tenant\":\"t{client}\",\"ts\":{ts},\"kind\":\"k\",\"id\":\"{client}-{b}-{i}\"}}\n")
            })
            .collect()
    };
    let url = weir.url("/v1/streams/events/events");
    let acked: Arc<std::sync::Mutex<HashMap<usize, Vec<usize>>>> = Default::default();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (url, acked, http) = (url.clone(), acked.clone(), weir.http.clone());
        tasks.push(tokio::spawn(async move {
            for b in 0..batches_per_client {
                let sent = http.post(&url).header("content-type", "application/x-ndjson").body(make_batch(client, b)).send().await;
                match sent {
                    Ok(resp) if resp.status() == 200 => {
                        let receipt: Value = match resp.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        assert_eq!(receipt["accepted"], batch_size);
                        acked.lock().unwrap().entry(client).or_default().push(b);
                    }
                    _ => return, // the server is gone
                }
            }
        }));
    }
    // let some batches through, then kill the server while the clients are mid-flight
    let start = Instant::now();
    while acked.lock().unwrap().values().map(Vec::len).sum::<usize>() < 200 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    weir.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let acked_total: usize = acked.values().map(|v| v.len() * batch_size).sum();
    assert!(acked_total > 0);

    let weir = Weir::start(dir.path(), &[]);
    let listed: Value = weir.http.get(weir.url("/v1/views")).send().await.unwrap().json().await.unwrap();
    assert!(listed["views"].as_array().unwrap().iter().any(|v| v["name"] == "per_tenant"), "views created over HTTP survive restarts");
    let counts = |view: &Value| -> BTreeMap<String, u64> {
        view["rows"].as_array().unwrap().iter().map(|r| (r["tenant"].as_str().unwrap().to_string(), r["n"].as_u64().unwrap())).collect()
    };
    let after_restart = counts(&weir.read("per_tenant", 0).await);
    for client in 0..clients {
        let acked_here = acked.get(&client).map(|v| v.len() * batch_size).unwrap_or(0) as u64;
        let counted = after_restart.get(&format!("t{client}")).copied().unwrap_or(0);
        assert!(counted >= acked_here, "client {client}: {counted} counted < {acked_here} acknowledged");
        assert!(counted % batch_size as u64 == 0, "batches are all-or-nothing: {counted}");
    }

    // retry every batch the clients never saw acknowledged, as a real client would
    let mut last_epoch = 0;
    for client in 0..clients {
        let done = acked.get(&client).cloned().unwrap_or_default();
        for b in (0..batches_per_client).filter(|b| !done.contains(b)).take(20) {
            let (status, receipt) = weir.ingest_raw(&make_batch(client, b)).await;
            assert_eq!(status, 200);
            last_epoch = last_epoch.max(epoch(&receipt));
        }
    }
    let final_counts = counts(&weir.read("per_tenant", last_epoch).await);
    for client in 0..clients {
        let done = acked.get(&client).map(Vec::len).unwrap_or(0);
        let retried = (batches_per_client - done).min(20);
        let expected = ((done + retried) * batch_size) as u64;
        assert_eq!(final_counts.get(&format!("t{client}")).copied().unwrap_or(0), expected, "client {client}");
    }
}

impl Weir {
    async fn ingest_raw(&self, body: &str) -> (u16, Value) {
        let resp = self.http.post(self.url("/v1/streams/events/events")).header("content-type", "application/x-ndjson").body(body.to_string()).send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }
}

/// With small log segments and a short retention, segments whose events have all left
/// retention are deleted as ingest goes on, and a restart from what remains rebuilds
/// the views exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_log_segments_are_deleted_and_a_restart_is_still_exact() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("WEIR_STREAMS__EVENTS__LATENESS", "5m"), ("WEIR_STREAMS__EVENTS__RETENTION", "10m"), ("WEIR_WAL__SEGMENT_BYTES", "2048"), ("WEIR_ARCHIVE__ENABLED", "false")];
    let weir = Weir::start(dir.path(), &env);
    weir.create_view(PER_MINUTE).await;
    // an hour of events, one batch a minute
    let mut last = 0;
    for minute in 0..60 {
        let ts = format!("2026-11-22T10:{minute:02}:30Z");
        let batch: Vec<Value> = (0..20).map(|i| ev(["acme", "globex"][i % 2], &ts, "click", 1.0)).collect();
        let (status, receipt) = weir.ingest("events", &batch).await;
        assert_eq!(status, 200);
        last = epoch(&receipt);
    }
    let before = weir.read("per_minute", last).await;
    // the watermark is 10:59:30: windows from 10:49 on remain, for both tenants
    assert_eq!(before["rows"].as_array().unwrap().len(), 22, "{before}");
    let segments = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(segments <= 15, "{segments} segments remain of an hour of ~2 KiB commits");
    let mut sse = SseReader::open(&weir, "/v1/views/per_minute/subscribe", None).await;
    let seen = sse.next().await.id.expect("the snapshot's epoch");
    drop(sse);

    weir.kill();
    let weir = Weir::start(dir.path(), &env);
    let after = weir.read("per_minute", 0).await;
    assert_eq!(after["rows"], before["rows"]);
    // a subscriber from before the restart starts again from a snapshot: the recovered
    // rows are not changes for it to apply a second time
    let mut resumed = SseReader::open(&weir, "/v1/views/per_minute/subscribe", Some(&seen)).await;
    assert_eq!(resumed.next().await.event, "reset");
    let fresh = resumed.next().await;
    assert_eq!(fresh.event, "snapshot");
    assert_eq!(fresh.data["rows"].as_array().unwrap().len(), 22, "{}", fresh.data);
    // the restored watermark still judges lateness
    let (_, receipt) = weir.ingest("events", &[ev("acme", "2026-11-22T10:50:00Z", "click", 1.0)]).await;
    assert!(receipt["rejected"][0]["error"].as_str().unwrap().starts_with("late"), "{receipt}");
}
