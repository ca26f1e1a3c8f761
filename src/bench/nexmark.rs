//! `nexmark`: the standard Nexmark events (from the `nexmark` crate's generator, default
//! configuration) through Nexmark queries written as Weir views, on the dataflow worker
//! as the engine workloads are. q0–q7 take the first N bids; q4 and q8, which join
//! auctions with bids or people, take the first N events of every kind, in the
//! generator's order (per 50 events: 1 person, 3 auctions, 46 bids), each to its
//! stream. The streams have every Nexmark field of their kind and a constant tenant
//! (Weir streams always have one).
//!
//! | query | what |
//! | --- | --- |
//! | q0 | pass-through |
//! | q1 | currency conversion (price × 0.908) |
//! | q2 | selection (`auction % 123 = 0`) |
//! | q4 | average closing price per category: each auction's highest bid while it is open, averaged by category |
//! | q5 | hot items: auctions with the most bids per 10 s window sliding every 2 s |
//! | q7 | highest bid: the bids at each 10 s window's highest price |
//! | q8 | new users: people who opened an auction in the 10 s window they joined in |

use std::sync::Arc;

use nexmark::config::NexmarkConfig;
use nexmark::event::{Event, EventType};
use nexmark::EventGenerator;
use weir_engine::schema::{Column, DataType, Stream, TimePolicy};
use weir_engine::value::{Row, Value};

use super::engine::{run_on, run_streams};
use super::Report;

/// (workload, view)
pub const QUERIES: &[(&str, &str)] = &[
    ("nexmark-q0", "CREATE VIEW bench AS SELECT auction, bidder, price, date_time FROM bid"),
    ("nexmark-q1", "CREATE VIEW bench AS SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid"),
    ("nexmark-q2", "CREATE VIEW bench AS SELECT auction, price FROM bid WHERE auction % 123 = 0"),
    (
        "nexmark-q5",
        "CREATE VIEW bench AS \
         SELECT hot.auction, hot.num, hot.starttime FROM \
           (SELECT auction, count(*) AS num, starttime FROM \
              (SELECT unnest(hop(INTERVAL '2 seconds', INTERVAL '10 seconds', date_time)) AS starttime, auction FROM bid) \
            GROUP BY starttime, auction) hot \
         JOIN \
           (SELECT starttime, max(num) AS maxn FROM \
              (SELECT auction, count(*) AS num, starttime FROM \
                 (SELECT unnest(hop(INTERVAL '2 seconds', INTERVAL '10 seconds', date_time)) AS starttime, auction FROM bid) \
               GROUP BY starttime, auction) counts \
            GROUP BY starttime) maxes \
         ON hot.starttime = maxes.starttime AND hot.num >= maxes.maxn",
    ),
    (
        "nexmark-q7",
        "CREATE VIEW bench AS \
         SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b \
         JOIN (SELECT date_bin(INTERVAL '10 seconds', date_time) AS w, max(price) AS maxprice FROM bid \
               GROUP BY date_bin(INTERVAL '10 seconds', date_time)) m \
         ON date_bin(INTERVAL '10 seconds', b.date_time) = m.w AND b.price = m.maxprice",
    ),
];

/// (workload, view) over the person, auction and bid streams (see [`events`]).
pub const MIXED_QUERIES: &[(&str, &str)] = &[
    (
        "nexmark-q4",
        "CREATE VIEW bench AS \
         SELECT q.category, avg(q.final) AS avg_final FROM \
           (SELECT a.id, a.category, max(b.price) AS final FROM auction a \
            JOIN bid b ON a.id = b.auction AND b.date_time >= a.date_time AND b.date_time <= a.expires \
            GROUP BY a.id, a.category) q \
         GROUP BY q.category",
    ),
    (
        "nexmark-q8",
        "CREATE VIEW bench AS \
         SELECT p.id, p.name, p.starttime FROM \
           (SELECT id, name, date_bin(INTERVAL '10 seconds', date_time) AS starttime FROM person \
            GROUP BY id, name, date_bin(INTERVAL '10 seconds', date_time)) p \
         JOIN \
           (SELECT seller, date_bin(INTERVAL '10 seconds', date_time) AS starttime FROM auction \
            GROUP BY seller, date_bin(INTERVAL '10 seconds', date_time)) a \
         ON p.id = a.seller AND p.starttime = a.starttime",
    ),
];

/// The streams of open time limits (nothing is late or expires), a constant tenant.
fn stream(name: &str, columns: Vec<Column>) -> Stream {
    let open = TimePolicy { lateness_ms: i64::MAX / 4, retention_ms: i64::MAX / 4 };
    let columns = [vec![Column::new("tenant", DataType::String, false)], columns].concat();
    Stream::new(name, columns, "tenant", "date_time", None, open).expect("a Nexmark schema is valid")
}

/// The `person` stream.
pub fn person_stream() -> Stream {
    let text = |name| Column::new(name, DataType::String, false);
    stream("person", vec![Column::new("id", DataType::Int, false), text("name"), text("email_address"), text("credit_card"), text("city"), text("state"), Column::new("date_time", DataType::Timestamp, false), text("extra")])
}

/// The `auction` stream.
pub fn auction_stream() -> Stream {
    let int = |name| Column::new(name, DataType::Int, false);
    let text = |name| Column::new(name, DataType::String, false);
    let time = |name| Column::new(name, DataType::Timestamp, false);
    stream("auction", vec![int("id"), text("item_name"), text("description"), int("initial_bid"), int("reserve"), time("date_time"), time("expires"), int("seller"), int("category"), text("extra")])
}

/// The `bid` stream.
pub fn bid_stream() -> Stream {
    let columns = vec![
        Column::new("auction", DataType::Int, false),
        Column::new("bidder", DataType::Int, false),
        Column::new("price", DataType::Int, false),
        Column::new("channel", DataType::String, false),
        Column::new("url", DataType::String, false),
        Column::new("date_time", DataType::Timestamp, false),
        Column::new("extra", DataType::String, false),
    ];
    stream("bid", columns)
}

/// The first `n` Nexmark bids, as rows of the `bid` stream.
pub fn bids(n: usize) -> Vec<Row> {
    let tenant = Value::str("nexmark");
    EventGenerator::new(NexmarkConfig::default()).with_type_filter(EventType::Bid).take(n).map(|e| row(&tenant, e).1).collect()
}

/// The first `n` Nexmark events of every kind, as rows, and each row's stream: 0 person,
/// 1 auction, 2 bid (the streams of [`run_mixed`]).
pub fn events(n: usize) -> (Vec<Row>, Vec<u8>) {
    let tenant = Value::str("nexmark");
    EventGenerator::new(NexmarkConfig::default()).take(n).map(|e| row(&tenant, e)).map(|(stream, row)| (row, stream)).unzip()
}

/// An event's stream (as [`events`] numbers them) and row.
fn row(tenant: &Value, event: Event) -> (u8, Row) {
    let (int, text, time) = (|x: usize| Value::Int(x as i64), |s: &str| Value::str(s), |t: u64| Value::Timestamp(t as i64));
    match event {
        Event::Person(p) => (0, vec![tenant.clone(), int(p.id), text(&p.name), text(&p.email_address), text(&p.credit_card), text(&p.city), text(&p.state), time(p.date_time), text(&p.extra)]),
        Event::Auction(a) => (
            1,
            vec![
                tenant.clone(),
                int(a.id),
                text(&a.item_name),
                text(&a.description),
                int(a.initial_bid),
                int(a.reserve),
                time(a.date_time),
                time(a.expires),
                int(a.seller),
                int(a.category),
                text(&a.extra),
            ],
        ),
        Event::Bid(b) => (2, vec![tenant.clone(), int(b.auction), int(b.bidder), int(b.price), text(&b.channel), text(&b.url), time(b.date_time), text(&b.extra)]),
    }
}

pub fn run(workload: &str, bids: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Report> {
    let (_, sql) = QUERIES.iter().find(|(w, _)| *w == workload).expect("a known query");
    run_on(workload, bid_stream(), sql, None, bids, workers)
}

/// q4 and q8: every kind of event (see [`events`]), each to its stream.
pub fn run_mixed(workload: &str, events: &(Vec<Row>, Vec<u8>), workers: usize) -> anyhow::Result<Report> {
    let (_, sql) = MIXED_QUERIES.iter().find(|(w, _)| *w == workload).expect("a known query");
    let (rows, streams) = events;
    run_streams(workload, vec![person_stream(), auction_stream(), bid_stream()], sql, None, rows, |i| streams[i] as usize, workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every Nexmark query's view, over the first 150,000 events of every kind (about
    /// 15 s of event time: several of q5's, q7's and q8's windows) on 2 workers, holds
    /// what DataFusion's batch execution of its SELECT over the same events returns (the
    /// oracle).
    #[test]
    fn every_query_agrees_with_the_batch_oracle() {
        let (rows, kinds) = events(150_000);
        let streams = [person_stream(), auction_stream(), bid_stream()];
        let of_kind = |k: u8| -> Vec<Row> { rows.iter().zip(&kinds).filter(|(_, s)| **s == k).map(|(r, _)| r.clone()).collect() };
        let (people, auctions, bids) = (of_kind(0), of_kind(1), of_kind(2));
        assert!(!people.is_empty() && !auctions.is_empty() && !bids.is_empty());
        let tables = [
            weir_queries::Table { name: "person", columns: &streams[0].columns, rows: &people },
            weir_queries::Table { name: "auction", columns: &streams[1].columns, rows: &auctions },
            weir_queries::Table { name: "bid", columns: &streams[2].columns, rows: &bids },
        ];
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (workload, sql) in QUERIES.iter().chain(MIXED_QUERIES) {
            let (_, mut live) = super::super::engine::run_view(workload, streams.to_vec(), sql, None, &rows, |i| kinds[i] as usize, 2).unwrap();
            let select = sql.strip_prefix("CREATE VIEW bench AS ").expect("a view");
            let mut expected = runtime.block_on(weir_queries::query_rows(&tables, select)).unwrap();
            live.sort();
            expected.sort();
            assert!(!expected.is_empty(), "{workload}: the oracle finds rows");
            assert_eq!(live, expected, "{workload}");
        }
    }
}
