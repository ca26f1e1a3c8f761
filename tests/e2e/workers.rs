//! Several dataflow workers (`workers = 2`): the same answers as one, whole epochs to
//! subscribers, and a restart that rebuilds the views from the log.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::weir::{SseReader, Weir};
use crate::{epoch, ev, PER_MINUTE};

type Groups = BTreeMap<(String, String), (i64, f64)>;

fn groups(rows: &Value) -> Groups {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| ((r["minute"].as_str().unwrap().to_string(), r["tenant"].as_str().unwrap().to_string()), (r["n"].as_i64().unwrap(), r["total"].as_f64().unwrap())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_answer_like_one_publish_whole_epochs_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("WEIR_WORKERS", "2"), ("WEIR_STREAMS__EVENTS__LATENESS", "1d"), ("WEIR_STREAMS__EVENTS__RETENTION", "2d")];
    let weir = Weir::start(dir.path(), &env);
    weir.create_view(PER_MINUTE).await;
    weir.create_view("CREATE VIEW totals AS SELECT count(*) AS n, sum(value) AS s FROM events").await;
    // a join (both sides exchanged by key between the workers) with an aggregate
    weir.create_view(TOP).await;
    // a global aggregate over nothing is one row, once (not once per worker)
    assert_eq!(weir.read("totals", 0).await["rows"], json!([{"n": 0, "s": null}]));

    let mut sse = SseReader::open(&weir, "/v1/views/per_minute/subscribe", None).await;
    let snapshot = sse.next().await;
    assert_eq!((snapshot.event.as_str(), &snapshot.data["rows"]), ("snapshot", &json!([])));

    // 6 batches of 500 events, 7 tenants over 10 minutes, in no particular order
    let mut expected = Groups::new();
    let (mut count, mut sum) = (0i64, 0.0);
    let mut events: Vec<(String, f64)> = Vec::new();
    let mut last = 0;
    for batch in 0..6 {
        let lines: Vec<Value> = (0..500)
            .map(|i| {
                let k = batch * 500 + i;
                let (tenant, minute, value) = (format!("t{}", k % 7), (k * 13) % 10, (k % 17) as f64);
                let group = expected.entry((format!("2026-11-22T10:{minute:02}:00.000Z"), tenant.clone())).or_default();
                group.0 += 1;
                group.1 += value;
                count += 1;
                sum += value;
                events.push((tenant.clone(), value));
                ev(&tenant, &format!("2026-11-22T10:{minute:02}:{:02}Z", k % 60), "click", value)
            })
            .collect();
        let (status, receipt) = weir.ingest("events", &lines).await;
        assert_eq!((status, receipt["accepted"].as_u64()), (200, Some(500)), "{receipt}");
        last = epoch(&receipt);
    }
    assert_eq!(groups(&weir.read("per_minute", last).await["rows"]), expected);
    assert_eq!(weir.read("totals", last).await["rows"], json!([{"n": count, "s": sum}]));
    let top = top_events(&events);
    assert_eq!(top_rows(&weir.read("top", last).await["rows"]), top);

    // the subscriber's changes come epoch by epoch and add up to the view
    let mut state: BTreeMap<String, i64> = BTreeMap::new();
    let mut seen_epoch = 0;
    let mut rebuilt = Groups::new();
    while rebuilt != expected {
        let change = sse.next().await;
        assert_eq!(change.event, "change");
        let at = change.data["epoch"].as_u64().unwrap();
        assert!(at >= seen_epoch && at <= last, "epoch {at} after {seen_epoch}");
        seen_epoch = at;
        *state.entry(change.data["row"].to_string()).or_default() += change.data["diff"].as_i64().unwrap();
        let rows: Vec<Value> = state.iter().filter(|(_, n)| **n > 0).map(|(row, _)| serde_json::from_str(row).unwrap()).collect();
        rebuilt = groups(&Value::Array(rows));
    }
    assert!(state.values().all(|n| *n == 0 || *n == 1), "a row counted twice: {state:?}");

    // a restart on two workers rebuilds both views from the log
    weir.kill();
    let weir = Weir::start(dir.path(), &env);
    assert_eq!(groups(&weir.read("per_minute", last).await["rows"]), expected);
    assert_eq!(weir.read("totals", last).await["rows"], json!([{"n": count, "s": sum}]));
    assert_eq!(top_rows(&weir.read("top", last).await["rows"]), top);
}

/// Each tenant's events with its highest value.
const TOP: &str = "CREATE VIEW top AS SELECT e.tenant, e.value FROM events e \
                   JOIN (SELECT tenant, max(value) AS high FROM events GROUP BY tenant) m ON e.tenant = m.tenant AND e.value = m.high";

fn top_events(events: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut high: BTreeMap<&str, f64> = BTreeMap::new();
    for (tenant, value) in events {
        let h = high.entry(tenant).or_insert(*value);
        *h = h.max(*value);
    }
    let mut top: Vec<(String, f64)> = events.iter().filter(|(t, v)| high[t.as_str()] == *v).cloned().collect();
    top.sort_by(|a, b| a.partial_cmp(b).unwrap());
    top
}

fn top_rows(rows: &Value) -> Vec<(String, f64)> {
    let mut top: Vec<(String, f64)> = rows.as_array().expect("rows").iter().map(|r| (r["tenant"].as_str().unwrap().to_string(), r["value"].as_f64().unwrap())).collect();
    top.sort_by(|a, b| a.partial_cmp(b).unwrap());
    top
}
