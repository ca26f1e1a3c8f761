//! Tenant quotas: hard limits refuse whole requests with 429 and Retry-After, other
//! tenants are unaffected, and usage matches a recount, across a restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::weir::Weir;

fn batch(tenant: &str, n: usize, start: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"tenant": tenant, "ts": "2026-11-22T10:00:00Z", "kind": "click", "id": format!("{tenant}-{}", start + i)})).collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn put_quota(weir: &Weir, tenant: &str, plan: Value) -> Value {
    let resp = weir.http.put(weir.url(&format!("/v1/tenants/{tenant}/quota"))).json(&plan).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// The tenant's `quota_usage` row for a limit once the view reflects `epoch` and shows
/// `used` (usage reaches the view within half a second of the acknowledgement).
async fn usage(weir: &Weir, tenant: &str, limit: &str, epoch: u64, used: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = weir.read("quota_usage", epoch).await;
        let row = view["rows"].as_array().unwrap().iter().find(|r| r["tenant"] == tenant && r["limit"] == limit).cloned().unwrap_or(Value::Null);
        if row["used"] == used || std::time::Instant::now() > deadline {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_hard_limit_gets_429s_and_no_one_else_does() {
    // the hourly window must not roll over mid-test
    let into_hour = now_ms() % 3_600_000;
    if into_hour > 3_600_000 - 30_000 {
        tokio::time::sleep(Duration::from_millis((3_600_000 - into_hour + 1000) as u64)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[("WEIR_QUOTAS__DEFAULT__EVENTS_PER_DAY", "1000000")]);
    let plan = put_quota(&weir, "greedy", json!({"events_per_hour": 50, "mode": "hard"})).await;
    assert_eq!(plan["plan"]["events_per_hour"], 50);
    assert_eq!(plan["plan"]["events_per_day"], 1_000_000, "the default plan fills in: {plan}");
    put_quota(&weir, "calm", json!({"events_per_hour": 10, "mode": "soft"})).await;
    let bad = weir.http.put(weir.url("/v1/tenants/x/quota")).json(&json!({"events_per_fortnight": 1})).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let (mut greedy_acked, mut fair_acked, mut greedy_refused, mut last_epoch) = (0u64, 0u64, 0u64, 0u64);
    let mut statuses = Vec::new();
    for round in 0..12 {
        let (status, body) = weir.ingest("events", &batch("greedy", 7, round * 7)).await;
        statuses.push(status);
        if status == 200 {
            greedy_acked += body["accepted"].as_u64().unwrap();
            last_epoch = last_epoch.max(body["epoch"].as_u64().unwrap());
        } else {
            assert_eq!(status, 429, "{body}");
            greedy_refused += 7;
            assert_eq!(body["code"], "quota_exceeded");
            assert_eq!((body["tenant"].as_str(), body["limit"].as_str(), body["limit_value"].as_u64()), (Some("greedy"), Some("events_per_hour"), Some(50)), "{body}");
        }
        let (status, body) = weir.ingest("events", &batch("fair", 7, round * 7)).await;
        assert_eq!(status, 200, "a tenant without a limit is never refused: {body}");
        fair_acked += body["accepted"].as_u64().unwrap();
        last_epoch = last_epoch.max(body["epoch"].as_u64().unwrap());
    }
    // 7 batches leave it under 50 (49 events); the 8th reaches the limit and is taken
    // whole (56); every later one is refused
    assert_eq!(greedy_acked, 56, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 4);

    // Retry-After is the time until the hourly window resets
    let before = now_ms();
    let body: String = batch("greedy", 1, 1000).iter().map(|l| format!("{l}\n")).collect();
    let resp = weir.http.post(weir.url("/v1/streams/events/events")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: i64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let expected = (3_600_000 - before % 3_600_000 + 999) / 1000;
    assert!((retry_after - expected).abs() <= 2, "Retry-After {retry_after}, expected about {expected}");
    greedy_refused += 1;

    // a request mixing tenants is refused whole: none of fair's events in it count
    let mut mixed = batch("fair", 3, 5000);
    mixed.extend(batch("greedy", 1, 5000));
    let (status, _) = weir.ingest("events", &mixed).await;
    assert_eq!(status, 429);
    greedy_refused += 1;

    // a soft limit only warns
    let (status, body) = weir.ingest("events", &batch("calm", 12, 0)).await;
    assert_eq!(status, 200);
    last_epoch = last_epoch.max(body["epoch"].as_u64().unwrap());

    let greedy = usage(&weir, "greedy", "events_per_hour", last_epoch, greedy_acked).await;
    assert_eq!(greedy["used"], greedy_acked, "{greedy}");
    assert_eq!(greedy["state"], "exceeded", "{greedy}");
    assert_eq!(greedy["limit_value"], 50);
    let calm = usage(&weir, "calm", "events_per_hour", last_epoch, 12).await;
    assert_eq!((calm["used"].as_u64(), calm["state"].as_str(), calm["mode"].as_str()), (Some(12), Some("exceeded"), Some("soft")), "{calm}");
    let fair = usage(&weir, "fair", "events_per_day", last_epoch, fair_acked).await;
    assert_eq!((fair["used"].as_u64(), fair["state"].as_str()), (Some(fair_acked), Some("ok")), "{fair}");

    // refusals are counted per tenant, queryable like any stream
    let view = weir.create_view("CREATE VIEW refusals AS SELECT tenant, count(*) AS refused FROM usage WHERE metric = 'refused' GROUP BY tenant").await;
    assert_eq!(view["name"], "refusals");
    // the mixed request's 3 fair events were refused with it
    let expected = json!([{"tenant": "fair", "refused": 3}, {"tenant": "greedy", "refused": greedy_refused}]);
    let mut rows = Value::Null;
    for _ in 0..100 {
        rows = weir.read("refusals", last_epoch).await["rows"].clone();
        if rows == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows, expected);

    let described: Value = weir.http.get(weir.url("/v1/tenants/greedy/quota")).send().await.unwrap().json().await.unwrap();
    let hourly = described["usage"].as_array().unwrap().iter().find(|u| u["limit"] == "events_per_hour").unwrap();
    assert_eq!((hourly["used"].as_u64(), hourly["refused"].as_u64()), (Some(56), Some(greedy_refused)));

    // usage and limits survive a crash: still over, still counted
    weir.kill();
    let weir = Weir::start(dir.path(), &[("WEIR_QUOTAS__DEFAULT__EVENTS_PER_DAY", "1000000")]);
    let (status, _) = weir.ingest("events", &batch("greedy", 1, 9000)).await;
    assert_eq!(status, 429);
    let (status, body) = weir.ingest("events", &batch("fair", 1, 9000)).await;
    assert_eq!(status, 200);
    let greedy = usage(&weir, "greedy", "events_per_hour", body["epoch"].as_u64().unwrap(), 56).await;
    assert_eq!(greedy["used"], 56, "{greedy}");
    // raising the limit lets the tenant in again
    put_quota(&weir, "greedy", json!({"events_per_hour": 100})).await;
    let (status, _) = weir.ingest("events", &batch("greedy", 7, 9100)).await;
    assert_eq!(status, 200);
    // removing the override puts the tenant back on the default plan
    let resp = weir.http.delete(weir.url("/v1/tenants/greedy/quota")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let plan: Value = resp.json().await.unwrap();
    assert_eq!((plan["plan"]["events_per_hour"].as_u64(), plan["override"].is_null()), (None, true), "{plan}");
    assert_eq!(weir.http.delete(weir.url("/v1/tenants/greedy/quota")).send().await.unwrap().status(), 404);
}
