//! Anomaly detectors over HTTP: declared over a live view, they flag a spike and a
//! silence in the `anomalies` view, survive a restart, and go away when deleted.

use serde_json::{json, Value};

use crate::weir::Weir;

const PER_MINUTE: &str = "CREATE VIEW traffic AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n \
     FROM events GROUP BY date_bin(INTERVAL '1 minute', ts), tenant";

/// `n` events of `tenant` in minute `m` after 2026-11-22T10:00Z.
pub fn minute_of_events(tenant: &str, m: i64, n: usize) -> Vec<Value> {
    let base = 1_795_341_600_000i64;
    (0..n).map(|i| json!({"tenant": tenant, "ts": base + m * 60_000 + (i as i64 * 997) % 60_000, "kind": "call"})).collect()
}

pub async fn flagged(weir: &Weir, epoch: u64) -> Vec<(String, String)> {
    let rows = weir.read("anomalies", epoch).await["rows"].clone();
    rows.as_array().unwrap().iter().filter(|r| r["flag"] == true).map(|r| (r["series"].as_str().unwrap().to_string(), r["window"].as_str().unwrap().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_flags_a_spike_and_a_silence_in_the_anomalies_view() {
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &[]);
    weir.create_view(PER_MINUTE).await;
    let detector = json!({"name": "calls", "view": "traffic", "series": ["tenant"], "value": "n", "baseline": 20, "method": "mad"});
    let resp = weir.http.post(weir.url("/v1/anomalies")).json(&detector).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let bad = weir.http.post(weir.url("/v1/anomalies")).json(&json!({"name": "x", "view": "traffic", "value": "tenant"})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let dropped = weir.http.delete(weir.url("/v1/views/traffic")).send().await.unwrap();
    assert_eq!(dropped.status(), 409, "a watched view stays");

    let mut epoch = 0;
    for m in 0..40 {
        let mut batch = minute_of_events("steady", m, 30 + (m as usize % 3));
        // "spiky" bursts at minute 30; "fading" goes silent from minute 32
        batch.extend(minute_of_events("spiky", m, if m == 30 { 150 } else { 20 + (m as usize % 2) }));
        if m < 32 {
            batch.extend(minute_of_events("fading", m, 40));
        }
        let (status, receipt) = weir.ingest("events", &batch).await;
        assert_eq!(status, 200);
        epoch = receipt["epoch"].as_u64().unwrap();
    }
    let flags = flagged(&weir, epoch).await;
    assert!(flags.contains(&("tenant=spiky".into(), "2026-11-22T10:30:00.000Z".into())), "{flags:?}");
    assert!(flags.iter().any(|(s, w)| s == "tenant=fading" && w.as_str() >= "2026-11-22T10:32:00.000Z"), "{flags:?}");
    assert!(!flags.iter().any(|(s, _)| s == "tenant=steady"), "{flags:?}");

    // the detector comes back after a restart and scores the same history
    weir.kill();
    let weir = Weir::start(dir.path(), &[]);
    let listed: Value = weir.http.get(weir.url("/v1/anomalies")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["detectors"][0]["name"], "calls");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let again = flagged(&weir, 0).await;
        if again.contains(&("tenant=spiky".into(), "2026-11-22T10:30:00.000Z".into())) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{again:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let resp = weir.http.delete(weir.url("/v1/anomalies/calls")).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(weir.read("anomalies", 0).await["rows"], json!([]));
}
