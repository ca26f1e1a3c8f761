//! SQL over the live views: `POST /v1/sql` in JSON, CSV and Arrow, errors as 400, and
//! `weir sql` printing a table.

use serde_json::{json, Value};

use crate::anomalies::minute_of_events;
use crate::weir::Weir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_live_views_in_json_csv_and_arrow() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[]);
    weir.create_view("CREATE VIEW per_minute AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n FROM events GROUP BY 1, 2").await;
    let mut batch = minute_of_events("a", 0, 3);
    batch.extend(minute_of_events("a", 1, 2));
    batch.extend(minute_of_events("b", 0, 4));
    let (_, receipt) = weir.ingest("events", &batch).await;
    weir.read("per_minute", receipt["epoch"].as_u64().unwrap()).await;

    let query = json!({"sql": "SELECT tenant, sum(n) AS n, count(*) AS minutes FROM live.per_minute GROUP BY tenant ORDER BY tenant"});
    let resp = weir.http.post(weir.url("/v1/sql")).json(&query).send().await.unwrap();
    let status = resp.status();
    let result: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["rows"], json!([{"tenant": "a", "n": 5, "minutes": 2}, {"tenant": "b", "n": 4, "minutes": 1}]), "{result}");
    assert_eq!(result["columns"][0]["name"], "tenant");

    let csv = weir.http.post(weir.url("/v1/sql")).header("accept", "text/csv").json(&query).send().await.unwrap().text().await.unwrap();
    assert_eq!(csv, "tenant,n,minutes\na,5,2\nb,4,1\n");

    let arrow = weir.http.post(weir.url("/v1/sql")).header("accept", "application/vnd.apache.arrow.stream").json(&query).send().await.unwrap();
    let rows = weir_engine::columnar::ipc_to_rows(&arrow.bytes().await.unwrap()).unwrap();
    use weir_engine::value::Value as V;
    assert_eq!(rows, vec![vec![V::str("a"), V::Int(5), V::Int(2)], vec![V::str("b"), V::Int(4), V::Int(1)]]);

    // a join of live views, and a large result streamed in several batches
    let big = weir
        .http
        .post(weir.url("/v1/sql"))
        .json(&json!({"sql": "SELECT p.tenant, q.n FROM live.per_minute p JOIN live.per_minute q ON p.tenant = q.tenant CROSS JOIN (SELECT * FROM unnest(range(0, 5000))) AS r(i)"}))
        .send()
        .await
        .unwrap();
    let big: Value = big.json().await.unwrap();
    assert_eq!(big["rows"].as_array().unwrap().len(), (4 + 1) * 5000);

    for (sql, needle) in [("SELECT nope FROM live.per_minute", "nope"), ("SELECT * FROM live.missing", "missing"), ("CREATE TABLE t AS SELECT 1", "not supported")] {
        let resp = weir.http.post(weir.url("/v1/sql")).json(&json!({ "sql": sql })).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{sql}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_sql");
        assert!(body["message"].as_str().unwrap().contains(needle), "{sql}: {body}");
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["sql", "SELECT tenant, sum(n) AS n FROM live.per_minute GROUP BY tenant ORDER BY tenant", "--url", &weir.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "tenant | n\n-------+--\na      | 5\nb      | 4\n(2 rows)\n");
}
