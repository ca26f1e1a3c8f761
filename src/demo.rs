//! `weir demo`: a generator of multi-tenant events and a few views over them, so that a
//! newcomer sees views change within seconds.
//!
//! Five tenants of different sizes send page views, clicks, signups, purchases and
//! errors with region and plan labels. Every few minutes one tenant has an error burst
//! for a minute, which the demo's anomaly detector flags and the alert router raises;
//! the smallest tenant has a soft quota it keeps exceeding. Events go through the same
//! ingest gate and write-ahead log as HTTP ingest.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use weir_engine::catalog::ViewDefinition;
use weir_engine::ingest::Decoded;
use weir_engine::schema::EVENTS;
use weir_engine::value::{Text, Value};
use weir_engine::{Engine, Error};

/// The demo views.
const VIEWS: &[&str] = &[
    "CREATE VIEW events_per_minute AS \
     SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, kind, count(*) AS n, sum(value) AS total \
     FROM events GROUP BY date_bin(INTERVAL '1 minute', ts), tenant, kind",
    "CREATE VIEW revenue_by_region AS \
     SELECT tenant, labels['region'] AS region, count(*) AS purchases, sum(value) AS revenue, avg(value) AS avg_order \
     FROM events WHERE kind = 'purchase' GROUP BY tenant, labels['region']",
    "CREATE VIEW errors_per_minute AS \
     SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS errors, count(DISTINCT labels['service']) AS services \
     FROM events WHERE kind = 'error' GROUP BY date_bin(INTERVAL '1 minute', ts), tenant HAVING count(*) > 0",
];

/// The demo's detector: error counts per tenant and minute.
const DETECTOR: &str = r#"{"name": "error_bursts", "view": "errors_per_minute", "series": ["tenant"], "value": "errors", "baseline": 20}"#;
/// How often an error burst starts, and how long it lasts.
const BURST_EVERY_MS: i64 = 4 * 60_000;
const BURST_FOR_MS: i64 = 60_000;

/// (tenant, share of the traffic)
const TENANTS: &[(&str, f64)] = &[("acme", 0.35), ("globex", 0.25), ("initech", 0.2), ("umbrella", 0.15), ("hooli", 0.05)];
/// (kind, share, value range)
const KINDS: &[(&str, f64, (f64, f64))] = &[
    ("page_view", 0.6, (20.0, 900.0)),
    ("click", 0.25, (0.0, 0.0)),
    ("signup", 0.04, (0.0, 0.0)),
    ("purchase", 0.06, (5.0, 250.0)),
    ("error", 0.05, (0.0, 0.0)),
];
const REGIONS: &[&str] = &["eu-west", "us-east", "ap-south"];
const PLANS: &[&str] = &["free", "pro", "enterprise"];
const SERVICES: &[&str] = &["api", "checkout", "search", "auth"];

fn pick<'a, T>(rng: &mut impl Rng, items: &'a [T], weight: impl Fn(&T) -> f64) -> &'a T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut x = rng.random::<f64>() * total;
    for item in items {
        x -= weight(item);
        if x <= 0.0 {
            return item;
        }
    }
    items.last().expect("non-empty")
}

/// Creates the demo views (if absent) and starts the generator.
pub async fn start(engine: Arc<Engine>, rate: u32, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    for sql in VIEWS {
        match engine.create_view(ViewDefinition { sql: sql.to_string(), lateness: None, retention: None }).await {
            Ok(_) | Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let detector = serde_json::from_str(DETECTOR).expect("the demo detector parses");
    match engine.create_detector(detector).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // a soft limit: counted, shown in quota_usage, alerted on, never refused
    let per_minute = ((rate as f64 * 60.0 * 0.05) * 0.8) as u64;
    let plan = weir_engine::quota::Plan { events_per_minute: Some(per_minute.max(1)), mode: Some(weir_engine::quota::Mode::Soft), ..Default::default() };
    engine.quotas().set("hooli", plan)?;
    let (stream, _) = engine.stream(EVENTS).expect("the events stream exists");
    tokio::spawn(async move {
        let tick = Duration::from_millis(100);
        let per_tick = (rate as f64 / 10.0).max(1.0);
        let mut interval = tokio::time::interval(tick);
        let mut carry = 0.0;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            carry += per_tick;
            let n = carry as usize;
            carry -= n as f64;
            let decoded = {
                let mut rng = rand::rng();
                let now = weir_engine::time::now_ms();
                // during a burst, one tenant (in turn) sends many errors
                let burst = (now.rem_euclid(BURST_EVERY_MS) < BURST_FOR_MS).then(|| TENANTS[(now / BURST_EVERY_MS) as usize % 4].0);
                let extra = if burst.is_some() { n / 4 + 1 } else { 0 };
                let rows = (0..n + extra)
                    .map(|i| {
                        let &(mut tenant, _) = pick(&mut rng, TENANTS, |t| t.1);
                        let &(mut kind, _, (lo, hi)) = pick(&mut rng, KINDS, |k| k.1);
                        if i >= n {
                            tenant = burst.expect("extra events only in a burst");
                            kind = "error";
                        }
                        // a little jitter in event time, as real clients have
                        let ts = now - rng.random_range(0..2_000);
                        let value = if hi > lo { rng.random_range(lo..hi) } else { 1.0 };
                        let mut labels = vec![
                            (Text::from("region"), Text::from(REGIONS[rng.random_range(0..REGIONS.len())])),
                            (Text::from("plan"), Text::from(PLANS[rng.random_range(0..PLANS.len())])),
                        ];
                        if kind == "error" {
                            labels.push((Text::from("service"), Text::from(SERVICES[rng.random_range(0..SERVICES.len())])));
                        }
                        let row = vec![Value::str(tenant), Value::Timestamp(ts), Value::str(kind), Value::Float((value * 100.0).round() / 100.0), Value::map(labels), Value::Null];
                        (i as u32 + 1, row)
                    })
                    .collect();
                Decoded { rows, rejected: Vec::new(), sizes: Vec::new() }
            };
            if let Err(e) = engine.ingest(stream, decoded).await {
                tracing::warn!(error = %e, "the demo generator stops");
                return;
            }
        }
    });
    Ok(())
}
