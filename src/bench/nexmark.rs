//! `nexmark`: the standard Nexmark bids (from the `nexmark` crate's generator, default
//! configuration) through Nexmark queries written as Weir views, on the dataflow worker
//! as the engine workloads are. The bid stream has every Nexmark bid field and a
//! constant tenant (Weir streams always have one).
//!
//! | query | what |
//! | --- | --- |
//! | q0 | pass-through |
//! | q1 | currency conversion (price × 0.908) |
//! | q2 | selection (`auction % 123 = 0`) |
//! | q5 | hot items: auctions with the most bids per 10 s window sliding every 2 s |
//! | q7 | highest bid: the bids at each 10 s window's highest price |

use std::sync::Arc;

use nexmark::config::NexmarkConfig;
use nexmark::event::{Event, EventType};
use nexmark::EventGenerator;
use weir_engine::schema::{Column, DataType, Stream, TimePolicy};
use weir_engine::value::{Row, Value};

use super::engine::run_on;
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

/// The `bid` stream.
pub fn bid_stream() -> Stream {
    let open = TimePolicy { lateness_ms: i64::MAX / 4, retention_ms: i64::MAX / 4 };
    let columns = vec![
        Column::new("tenant", DataType::String, false),
        Column::new("auction", DataType::Int, false),
        Column::new("bidder", DataType::Int, false),
        Column::new("price", DataType::Int, false),
        Column::new("channel", DataType::String, false),
        Column::new("url", DataType::String, false),
        Column::new("date_time", DataType::Timestamp, false),
        Column::new("extra", DataType::String, false),
    ];
    Stream::new("bid", columns, "tenant", "date_time", None, open).expect("the bid schema is valid")
}

/// The first `n` Nexmark bids, as rows of the `bid` stream.
pub fn bids(n: usize) -> Vec<Row> {
    let tenant = Value::str("nexmark");
    EventGenerator::new(NexmarkConfig::default())
        .with_type_filter(EventType::Bid)
        .take(n)
        .filter_map(|e| match e {
            Event::Bid(b) => Some(vec![
                tenant.clone(),
                Value::Int(b.auction as i64),
                Value::Int(b.bidder as i64),
                Value::Int(b.price as i64),
                Value::str(&b.channel),
                Value::str(&b.url),
                Value::Timestamp(b.date_time as i64),
                Value::str(&b.extra),
            ]),
            _ => None,
        })
        .collect()
}

pub fn run(workload: &str, bids: &Arc<Vec<Row>>, workers: usize) -> anyhow::Result<Report> {
    let (_, sql) = QUERIES.iter().find(|(w, _)| *w == workload).expect("a known query");
    run_on(workload, bid_stream(), sql, None, bids, workers)
}
