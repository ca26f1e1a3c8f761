//! Criterion benchmarks of the per-event hot paths: NDJSON decoding and validation, row
//! encoding for the log and packing for the view store and the groups, window assignment, the `GROUP BY` step, and log append. Run with
//! `cargo bench --bench hot_paths`; the whole ingest → view path is measured by
//! `weir bench` (see docs/benchmarks.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_connectors::format::decode_ndjson;
use weir_engine::expr::bin;
use weir_engine::json::row_to_json;
use weir_engine::packed::PackedRow;
use weir_engine::schema::{Stream, TimePolicy};
use weir_engine::value::{Row, Value};
use weir_engine::wal::{Record, Wal};
use weir_engine::windows::hop_starts;

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            vec![
                Value::str(&format!("tenant-{:03}", i % 1000)),
                Value::Timestamp(1_795_000_000_000 + i as i64 * 4),
                Value::str(&format!("kind-{:02}", i % 20)),
                Value::Float((i % 1000) as f64),
                Value::map(vec![("region".into(), ["eu", "us", "ap"][i % 3].into())]),
                Value::Null,
            ]
        })
        .collect()
}

fn ndjson(c: &mut Criterion) {
    let stream = Stream::events(TimePolicy::DEFAULT);
    let body: String = rows(1000).iter().map(|r| format!("{}\n", row_to_json(&stream.columns, r))).collect();
    let mut g = c.benchmark_group("ndjson");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("decode_and_validate_1000_events", |b| b.iter(|| decode_ndjson(&stream, black_box(body.as_bytes())).unwrap()));
    g.finish();
}

fn row_encoding(c: &mut Criterion) {
    let record = Record { epoch: 1, stream: "events".into(), max_ts: 0, rows: rows(1000), sizes: vec![] };
    let mut g = c.benchmark_group("row_encoding");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("bincode_1000_rows", |b| b.iter(|| bincode::serialize(black_box(&record)).unwrap()));
    // (the rows the view store and the groups keep: packed, unpacked to be read, and
    // compared with a change's row to find their entry)
    let packed: Vec<PackedRow> = record.rows.iter().map(|r| PackedRow::new(r)).collect();
    g.bench_function("pack_1000_rows", |b| b.iter(|| record.rows.iter().map(|r| PackedRow::new(black_box(r))).collect::<Vec<_>>()));
    g.bench_function("unpack_1000_rows", |b| b.iter(|| packed.iter().map(|p| black_box(p).to_row()).collect::<Vec<_>>()));
    g.bench_function("compare_1000_packed_rows", |b| b.iter(|| packed.iter().zip(&record.rows).filter(|(p, r)| black_box(p).equals(r)).count()));
    g.finish();
}

fn windows(c: &mut Criterion) {
    let times: Vec<i64> = (0..1000).map(|i| 1_795_000_000_000 + i * 4_321).collect();
    let mut g = c.benchmark_group("window_assignment");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("tumbling_1m_1000_events", |b| b.iter(|| times.iter().map(|t| bin(black_box(*t), 60_000, 0)).sum::<i64>()));
    g.bench_function("hopping_1m_5m_1000_events", |b| b.iter(|| times.iter().flat_map(|t| hop_starts(black_box(*t), 60_000, 300_000)).sum::<i64>()));
    g.finish();
}

/// One epoch of 10,000 events into `engine-window`'s grouping (minute, tenant, kind →
/// count, sum, min, max of value): first into new groups, then into groups that exist.
fn group_step(c: &mut Criterion) {
    use weir_engine::aggregate::Grouping;
    use weir_engine::expr::Scalar;
    use weir_engine::plan::{AggFunc, Aggregate};
    use weir_engine::schema::DataType;
    let value = || Scalar::Column(3);
    let aggregates: Vec<Aggregate> = [(AggFunc::Count, Scalar::Literal(Value::Int(1)), DataType::Int), (AggFunc::Sum, value(), DataType::Float), (AggFunc::Min, value(), DataType::Float), (AggFunc::Max, value(), DataType::Float)]
        .into_iter()
        .map(|(func, arg, output)| Aggregate { func, arg, distinct: false, filter: None, output })
        .collect();
    // rows as the view's input makes them: the group key, then the aggregates' input
    let updates = |n: usize| -> Vec<(Row, isize)> {
        rows(n).into_iter().map(|r| (vec![Value::Timestamp(bin(match r[1] { Value::Timestamp(t) => t, _ => 0 }, 60_000, 0)), r[0].clone(), r[2].clone(), r[3].clone()], 1)).collect()
    };
    let mut g = c.benchmark_group("group_step");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("window_count_sum_min_max_10000_new_groups", |b| {
        b.iter_batched(|| (Grouping::new(3, &aggregates), updates(10_000)), |(mut grouping, batch)| {
            let mut changes = 0;
            grouping.apply(batch, |_, _| changes += 1);
            // (the state is dropped outside the timing)
            (grouping, changes)
        }, BatchSize::LargeInput)
    });
    g.bench_function("window_count_sum_min_max_10000_into_existing_groups", |b| {
        b.iter_batched(
            || {
                let mut grouping = Grouping::new(3, &aggregates);
                grouping.apply(updates(10_000), |_, _| {});
                (grouping, updates(10_000))
            },
            |(mut grouping, batch)| {
                let mut changes = 0;
                grouping.apply(batch, |_, _| changes += 1);
                (grouping, changes)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), weir_engine::wal::SEGMENT_BYTES, |_| {}).unwrap();
    let record = Record { epoch: 1, stream: "events".into(), max_ts: 0, rows: rows(1000), sizes: vec![] };
    let mut g = c.benchmark_group("log_append");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("append_and_fsync_1000_events", |b| {
        b.iter_batched(|| (), |_| {
            wal.append(&record).unwrap();
            wal.commit().unwrap();
        }, BatchSize::SmallInput)
    });
    g.finish();
}

criterion_group!(hot_paths, ndjson, row_encoding, windows, group_step, log_append);
criterion_main!(hot_paths);
