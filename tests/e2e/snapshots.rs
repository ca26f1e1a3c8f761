//! Delta Lake snapshots: every view written as of one epoch, read back by an independent
//! reader (the Python `deltalake` package) with the same rows Weir's SQL returns; an
//! unchanged view writes nothing; the interval takes snapshots on its own.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::anomalies::minute_of_events;
use crate::weir::Weir;

/// Reads a Delta table with delta-rs's Python bindings: its version, rows (sorted) and
/// the last commit's Weir metadata.
fn read_delta(path: &std::path::Path) -> Value {
    read_delta_at(path.to_str().unwrap(), &json!({})).unwrap()
}

/// [`read_delta`] at a URL (`s3://…`) with the reader's storage options.
pub fn read_delta_at(location: &str, options: &Value) -> Result<Value, String> {
    read_delta_with_env(location, options, &[])
}

/// [`read_delta_at`] with extra environment variables for the reader.
pub fn read_delta_with_env(location: &str, options: &Value, env: &[(&str, &str)]) -> Result<Value, String> {
    let script = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]) or None)
rows = t.to_pyarrow_table().to_pylist()
for r in rows:
    for k, v in r.items():
        if hasattr(v, "isoformat"):
            r[k] = v.isoformat()
rows.sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
info = t.history(1)[0]
print(json.dumps({"version": t.version(), "rows": rows, "epoch": info.get("weir.epoch"), "watermarks": info.get("weir.watermarks"), "partitions": t.metadata().partition_columns}, default=str), flush=True)
# the bindings' runtime can abort at interpreter exit ("terminate called without an active exception")
import os
os._exit(0)
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(location).arg(options.to_string()).envs(env.iter().copied()).output().expect("python3");
    if !out.status.success() {
        return Err(format!("the Python deltalake reader failed on {location}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_delta_tables_an_independent_reader_agrees_with() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[("WEIR_SNAPSHOT__INTERVAL", "0s")]);
    weir.create_view("CREATE VIEW per_minute AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n, sum(value) AS total FROM events GROUP BY 1, 2").await;
    weir.create_view("CREATE VIEW kinds AS SELECT kind, count(*) AS n FROM events GROUP BY kind").await;
    let mut batch = minute_of_events("a", 0, 3);
    batch.extend(minute_of_events("b", 1, 2));
    let (_, receipt) = weir.ingest("events", &batch).await;
    let epoch = receipt["epoch"].as_u64().unwrap();
    weir.read("per_minute", epoch).await;

    let snap: Value = weir.http.post(weir.url("/v1/snapshots")).send().await.unwrap().json().await.unwrap();
    assert!(snap["epoch"].as_u64().unwrap() >= epoch, "{snap}");
    let table = |name: &str| snap["tables"].as_array().unwrap().iter().find(|t| t["view"] == name).unwrap().clone();
    assert_eq!((table("per_minute")["written"].as_bool(), table("per_minute")["version"].as_u64()), (Some(true), Some(0)));

    let lake = dir.path().join("lake");
    let delta = read_delta(&lake.join("per_minute"));
    assert_eq!(delta["epoch"], snap["epoch"], "the commit records the snapshot's epoch");
    assert!(delta["watermarks"]["events"].as_i64().is_some(), "{delta}");
    // Weir's SQL over the snapshot sees the same rows
    let (sql_rows, _) = weir_sql(&weir, "SELECT tenant, n, total FROM per_minute ORDER BY tenant").await;
    let delta_rows: Vec<Value> = delta["rows"].as_array().unwrap().iter().map(|r| json!({"tenant": r["tenant"], "n": r["n"], "total": r["total"]})).collect();
    assert_eq!(json!(sql_rows), json!(delta_rows));
    assert_eq!(delta_rows, vec![json!({"tenant": "a", "n": 3, "total": 0.0}), json!({"tenant": "b", "n": 2, "total": 0.0})]);
    // all views of one snapshot share its epoch
    assert_eq!(read_delta(&lake.join("kinds"))["epoch"], snap["epoch"]);

    // nothing changed: nothing is written
    let again: Value = weir.http.post(weir.url("/v1/snapshots")).send().await.unwrap().json().await.unwrap();
    assert!(again["tables"].as_array().unwrap().iter().all(|t| t["written"] == false), "{again}");

    // more events: a new version, which the reader sees
    let (_, receipt) = weir.ingest("events", &minute_of_events("c", 2, 4)).await;
    weir.read("per_minute", receipt["epoch"].as_u64().unwrap()).await;
    weir.http.post(weir.url("/v1/snapshots")).send().await.unwrap();
    let delta = read_delta(&lake.join("per_minute"));
    assert_eq!((delta["version"].as_u64(), delta["rows"].as_array().unwrap().len()), (Some(1), 3));
    // time travel: the earlier version is still there, by version and by time
    let (v0, body) = weir_sql(&weir, "SELECT count(*) AS n FROM snapshot('per_minute', version => 0)").await;
    assert_eq!(v0, vec![json!({"n": 2})], "{body}");
    let (latest, _) = weir_sql(&weir, "SELECT count(*) AS n FROM snapshot('per_minute')").await;
    assert_eq!(latest, vec![json!({"n": 3})]);
    let now = chrono_now();
    let (by_time, body) = weir_sql(&weir, &format!("SELECT count(*) AS n FROM snapshot('per_minute', timestamp => '{now}')")).await;
    assert_eq!(by_time, vec![json!({"n": 3})], "{body}");
    let (_, bad) = weir_sql(&weir, "SELECT * FROM snapshot('per_minute', version => 99)").await;
    assert_eq!(bad["code"], "invalid_sql", "{bad}");
    // windowed views are partitioned by window date: a change on another day leaves the
    // earlier day's files alone
    let files = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        names.sort();
        names
    };
    let day_one = lake.join("per_minute").join("window_date=2026-11-22");
    // (files of earlier versions stay until a vacuum: time travel reads them)
    let before = files(&day_one);
    assert!(!before.is_empty());
    let next_day = json!({"tenant": "a", "ts": "2026-11-23T00:00:30Z", "kind": "call"});
    let (_, receipt) = weir.ingest("events", &[next_day]).await;
    weir.read("per_minute", receipt["epoch"].as_u64().unwrap()).await;
    weir.http.post(weir.url("/v1/snapshots")).send().await.unwrap();
    assert_eq!(files(&day_one), before, "the unchanged day was not rewritten");
    assert_eq!(files(&lake.join("per_minute").join("window_date=2026-11-23")).len(), 1);
    let delta = read_delta(&lake.join("per_minute"));
    assert_eq!((delta["version"].as_u64(), delta["rows"].as_array().unwrap().len()), (Some(2), 4));
    let (sql_rows, _) = weir_sql(&weir, "SELECT count(*) AS n, count(DISTINCT window_date) AS days FROM per_minute").await;
    assert_eq!(sql_rows, vec![json!({"n": 4, "days": 2})]);
    drop(weir);

    // with an interval, snapshots happen by themselves
    let weir = Weir::start(dir.path(), &[("WEIR_SNAPSHOT__INTERVAL", "500ms")]);
    // (the next day's event moved the watermark: this one is on that day too, not late)
    let (_, receipt) = weir.ingest("events", &minute_of_events("d", 14 * 60 + 1, 1)).await;
    assert!(receipt["rejected"].as_array().unwrap().is_empty(), "{receipt}");
    weir.read("per_minute", receipt["epoch"].as_u64().unwrap()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_delta(&lake.join("per_minute"))["rows"].as_array().unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "no snapshot from the interval: {}", read_delta(&lake.join("per_minute")));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn chrono_now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    weir_engine::time::format_rfc3339_ms(ms)
}

async fn weir_sql(weir: &Weir, sql: &str) -> (Vec<Value>, Value) {
    let resp = weir.http.post(weir.url("/v1/sql")).json(&json!({ "sql": sql })).send().await.unwrap();
    let body: Value = resp.json().await.unwrap();
    (body["rows"].as_array().cloned().unwrap_or_default(), body)
}
