//! Oracle tests: every view's incremental contents, after every epoch, equal DataFusion's
//! batch execution of the same SELECT over the events accepted so far.
//!
//! Event sequences are random (proptest): out of order, some too late to accept, some
//! repeating an idempotency key, some with missing values or labels. The engine is the
//! real one (ingest gate, write-ahead log, dataflow); the oracle only sees which events
//! the engine accepted, and computes everything else from scratch.

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;
use weir_engine::catalog::ViewDefinition;
use weir_engine::ingest::Decoded;
use weir_engine::schema::{Column, DataType, Stream, TimePolicy};
use weir_engine::value::{Row, Value};
use weir_engine::wal::SEGMENT_BYTES;
use weir_engine::{Engine, EngineConfig};

/// (name, SELECT): each becomes `CREATE VIEW name AS SELECT …`, and the SELECT alone is the oracle.
const VIEWS: &[(&str, &str)] = &[
    (
        "per_minute",
        "SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n, sum(value) AS total, \
         min(value) AS lo, max(value) AS hi, avg(value) AS mean \
         FROM events GROUP BY date_bin(INTERVAL '1 minute', ts), tenant",
    ),
    ("kinds", "SELECT tenant, count(DISTINCT kind) AS kinds, count(labels['region']) AS with_region FROM events GROUP BY tenant"),
    ("big_values", "SELECT tenant, kind, value * 2 + 1 AS v2 FROM events WHERE value > 10 AND kind <> 'view'"),
    ("buys", "SELECT count(*) AS n, sum(value) AS s, max(ts) AS latest FROM events WHERE kind = 'buy'"),
    (
        "busy_windows",
        "SELECT date_bin(INTERVAL '5 minutes', ts) AS w, kind, count(*) AS n FROM events \
         GROUP BY date_bin(INTERVAL '5 minutes', ts), kind HAVING count(*) > 1",
    ),
    ("regions", "SELECT DISTINCT tenant, labels['region'] AS region FROM events"),
    (
        "calendar",
        "SELECT date_trunc('month', ts) AS month, date_trunc('week', ts) AS week, date_trunc('hour', ts) AS hour, \
         tenant, count(*) AS n FROM events \
         GROUP BY date_trunc('month', ts), date_trunc('week', ts), date_trunc('hour', ts), tenant",
    ),
    (
        "with_tenant_totals",
        "SELECT e.tenant, e.kind, e.value, t.n FROM events e \
         JOIN (SELECT tenant, count(*) AS n FROM events GROUP BY tenant) t ON e.tenant = t.tenant WHERE e.value > 50",
    ),
    (
        "top_per_minute",
        "SELECT m.minute, e.tenant, e.value FROM events e \
         JOIN (SELECT date_bin(INTERVAL '1 minute', ts) AS minute, max(value) AS top FROM events GROUP BY date_bin(INTERVAL '1 minute', ts)) m \
         ON date_bin(INTERVAL '1 minute', e.ts) = m.minute AND e.value = m.top",
    ),
    (
        "bigger_pairs",
        "SELECT a.tenant, a.kind AS k1, b.kind AS k2, b.value - a.value AS gap FROM events a \
         JOIN events b ON a.tenant = b.tenant AND a.value < b.value WHERE a.kind = 'buy' AND b.kind = 'click'",
    ),
    (
        "orders_with_activity",
        "SELECT o.tenant, count(*) AS pairs, sum(o.amount) AS amount, max(e.value) AS top_value FROM events e \
         JOIN orders o ON e.tenant = o.tenant AND date_bin(INTERVAL '5 minutes', e.ts) = date_bin(INTERVAL '5 minutes', o.ts) \
         GROUP BY o.tenant",
    ),
    (
        // the same aggregate on both sides of the join (computed once by the dataflow)
        "busiest_tenant_per_minute",
        "SELECT c.minute, c.tenant, c.n FROM \
           (SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n FROM events \
            GROUP BY date_bin(INTERVAL '1 minute', ts), tenant) c \
         JOIN \
           (SELECT minute, max(n) AS top FROM \
              (SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n FROM events \
               GROUP BY date_bin(INTERVAL '1 minute', ts), tenant) per_tenant \
            GROUP BY minute) m \
         ON c.minute = m.minute AND c.n >= m.top",
    ),
    (
        "hopping",
        "SELECT window_start, tenant, count(*) AS n, sum(value) AS total FROM \
         (SELECT unnest(hop(INTERVAL '2 minutes', INTERVAL '6 minutes', ts)) AS window_start, tenant, value FROM events) \
         GROUP BY window_start, tenant",
    ),
    (
        "bands",
        "SELECT upper(tenant) AS t, CASE WHEN value >= 50 THEN 'high' ELSE 'low' END AS band, count(*) AS n, \
         count(*) FILTER (WHERE labels['region'] = 'eu') AS eu FROM events \
         GROUP BY upper(tenant), CASE WHEN value >= 50 THEN 'high' ELSE 'low' END",
    ),
    (
        // min and max of counts that change (retracted and replaced each epoch): groups of
        // one or two entries kept in their rows, taken out and put back
        "kind_count_spread",
        "SELECT tenant, min(n) AS fewest, max(n) AS most, count(*) AS kinds FROM            (SELECT tenant, kind, count(*) AS n FROM events GROUP BY tenant, kind) per_kind          GROUP BY tenant",
    ),
    (
        "value_range",
        "SELECT kind, min(value) AS lo, max(value) AS hi, min(tenant) AS first_tenant FROM events GROUP BY kind",
    ),
];

const BASE: i64 = 1_795_000_000_000;

#[derive(Clone, Debug)]
struct GenEvent {
    tenant: &'static str,
    kind: &'static str,
    offset_s: i64,
    value: Option<i64>,
    region: Option<&'static str>,
    id: Option<u8>,
}

fn event() -> impl Strategy<Value = GenEvent> {
    (
        prop::sample::select(vec!["a", "b", "c"]),
        prop::sample::select(vec!["click", "view", "buy"]),
        // mostly within 15 minutes, sometimes two hours back (beyond the 1 h lateness)
        prop_oneof![9 => 0i64..900, 1 => -7_200i64..-7_000],
        prop::option::weighted(0.8, 0i64..100),
        prop::option::of(prop::sample::select(vec!["eu", "us"])),
        prop::option::weighted(0.3, 0u8..6),
    )
        .prop_map(|(tenant, kind, offset_s, value, region, id)| GenEvent { tenant, kind, offset_s, value, region, id })
}

#[derive(Clone, Debug)]
struct GenOrder {
    tenant: &'static str,
    offset_s: i64,
    amount: i64,
}

fn order() -> impl Strategy<Value = GenOrder> {
    (prop::sample::select(vec!["a", "b", "c"]), prop_oneof![9 => 0i64..900, 1 => -7_200i64..-7_000], 1i64..500)
        .prop_map(|(tenant, offset_s, amount)| GenOrder { tenant, offset_s, amount })
}

/// A second stream, so that views can join across streams.
fn orders_stream() -> Stream {
    let columns = vec![
        Column::new("tenant", DataType::String, false),
        Column::new("ts", DataType::Timestamp, false),
        Column::new("amount", DataType::Float, true),
    ];
    Stream::new("orders", columns, "tenant", "ts", None, TimePolicy::DEFAULT).unwrap()
}

fn order_row(o: &GenOrder) -> Row {
    vec![Value::str(o.tenant), Value::Timestamp(BASE + o.offset_s * 1000), Value::Float(o.amount as f64)]
}

fn row(e: &GenEvent) -> Row {
    vec![
        Value::str(e.tenant),
        Value::Timestamp(BASE + e.offset_s * 1000),
        Value::str(e.kind),
        Value::Float(e.value.unwrap_or(0) as f64),
        e.region.map(|r| Value::map(vec![("region".into(), r.into())])).unwrap_or(Value::Null),
        e.id.map(|i| Value::str(&format!("id-{i}"))).unwrap_or(Value::Null),
    ]
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

async fn oracle(select: &str, events: &Stream, accepted: &[Row], orders: &[Row]) -> Vec<Row> {
    let orders_stream = orders_stream();
    let tables = [
        weir_queries::Table { name: "events", columns: &events.columns, rows: accepted },
        weir_queries::Table { name: "orders", columns: &orders_stream.columns, rows: orders },
    ];
    sorted(weir_queries::query_rows(&tables, select).await.unwrap())
}

async fn check(batches: Vec<(Vec<GenEvent>, Vec<GenOrder>)>, workers: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let events_stream = Stream::events(TimePolicy::DEFAULT);
    let views = VIEWS.iter().map(|(name, select)| ViewDefinition { sql: format!("CREATE VIEW {name} AS {select}"), lateness: None, retention: None }).collect();
    let config = EngineConfig { data_dir: dir.path().to_path_buf(), streams: vec![orders_stream()], views, segment_bytes: SEGMENT_BYTES, quotas: Default::default(), detectors: vec![], archive: None, workers };
    let engine = Engine::open(config).await.unwrap();
    let (stream, _) = engine.stream("events").unwrap();
    let (orders_index, _) = engine.stream("orders").unwrap();
    let mut accepted: Vec<Row> = Vec::new();
    let mut accepted_orders: Vec<Row> = Vec::new();
    let mut ids: HashSet<String> = HashSet::new();
    for (batch, orders) in batches {
        let rows: Vec<(u32, Row)> = batch.iter().enumerate().map(|(i, e)| (i as u32 + 1, row(e))).collect();
        let receipt = engine.ingest(stream, Decoded { rows: rows.clone(), rejected: vec![], sizes: vec![] }).await.unwrap();
        let refused: HashSet<u32> = receipt.rejected.iter().map(|(line, _)| *line).collect();
        for (line, r) in rows {
            if refused.contains(&line) {
                continue;
            }
            // an accepted event counts once per (tenant, id)
            if let (Value::Str(t), Value::Str(id)) = (&r[0], &r[5]) {
                if !ids.insert(format!("{t}/{id}")) {
                    continue;
                }
            }
            accepted.push(r);
        }
        let order_rows: Vec<(u32, Row)> = orders.iter().enumerate().map(|(i, o)| (i as u32 + 1, order_row(o))).collect();
        let order_receipt = engine.ingest(orders_index, Decoded { rows: order_rows.clone(), rejected: vec![], sizes: vec![] }).await.unwrap();
        let refused: HashSet<u32> = order_receipt.rejected.iter().map(|(line, _)| *line).collect();
        accepted_orders.extend(order_rows.into_iter().filter(|(line, _)| !refused.contains(line)).map(|(_, r)| r));
        let epoch = receipt.epoch.max(order_receipt.epoch);
        for (name, select) in VIEWS {
            let view = engine.view(name).unwrap();
            prop_assert!(view.wait_for(epoch, Duration::from_secs(10)).await, "view {name} never reached epoch {epoch}");
            let (_, live) = view.snapshot();
            let expected = oracle(select, &events_stream, &accepted, &accepted_orders).await;
            prop_assert_eq!(sorted(live), expected, "view {} after epoch {} on {} workers", name, epoch, workers);
        }
    }
    engine.shutdown();
    Ok(())
}

proptest! {
    // failing cases are saved here (relative to this crate) and replayed first on every run
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: Some(Box::new(prop::test_runner::FileFailurePersistence::Direct("tests/oracle.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn views_equal_batch_recomputation(
        batches in prop::collection::vec((prop::collection::vec(event(), 1..25), prop::collection::vec(order(), 0..6)), 1..6),
        // one dataflow worker, or several sharing each batch
        workers in 1usize..=3,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(check(batches, workers))?;
    }
}

/// A view created after events arrived starts from every retained event, and a restart
/// on the same data directory rebuilds every view exactly from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_views_and_restarts_see_every_accepted_event() {
    let dir = tempfile::tempdir().unwrap();
    let events_stream = Stream::events(TimePolicy::DEFAULT);
    let open = || Engine::open(EngineConfig { data_dir: dir.path().to_path_buf(), streams: vec![], views: vec![], segment_bytes: SEGMENT_BYTES, quotas: Default::default(), detectors: vec![], archive: None, workers: 1 });
    let engine = open().await.unwrap();
    let (stream, _) = engine.stream("events").unwrap();
    let sample: Vec<GenEvent> = (0..40)
        .map(|i| GenEvent { tenant: ["a", "b"][i % 2], kind: ["click", "buy", "view"][i % 3], offset_s: (i as i64 * 37) % 600, value: Some(i as i64), region: None, id: None })
        .collect();
    let rows: Vec<(u32, Row)> = sample.iter().enumerate().map(|(i, e)| (i as u32 + 1, row(e))).collect();
    engine.ingest(stream, Decoded { rows: rows.clone(), rejected: vec![], sizes: vec![] }).await.unwrap();
    let (name, select) = VIEWS[0];
    engine.create_view(ViewDefinition { sql: format!("CREATE VIEW {name} AS {select}"), lateness: None, retention: None }).await.unwrap();
    let accepted: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    let expected = oracle(select, &events_stream, &accepted, &[]).await;
    let view = engine.view(name).unwrap();
    assert!(view.wait_for(1, Duration::from_secs(10)).await);
    assert_eq!(sorted(view.snapshot().1), expected);
    engine.shutdown();
    drop(engine);

    let engine = open().await.unwrap();
    assert_eq!(engine.recovered_events(), 40);
    let view = engine.view(name).expect("the view survives the restart");
    assert!(view.wait_for(1, Duration::from_secs(10)).await);
    assert_eq!(sorted(view.snapshot().1), expected);
    engine.shutdown();
}
