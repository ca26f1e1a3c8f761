//! Alerts end to end: an anomaly fires an alert and resolves it; a real Prometheus
//! Alertmanager sees it appear and resolve; a signed webhook receiver gets it after
//! failing twice; SSE subscribers see both changes and can resume; the history is a
//! stream queryable with SQL; quota exceedance fires too.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::anomalies::minute_of_events;
use crate::weir::{SseReader, Weir};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A real Alertmanager on a free port, killed when dropped.
struct Alertmanager {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    async fn start() -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-alertmanager (scripts/test installs it)");
        let am = Alertmanager { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/-/ready", am.url)).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "Alertmanager did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        am
    }

    /// Weir's anomaly alerts for a tenant that Alertmanager holds as active.
    async fn active(&self, tenant: &str) -> Vec<Value> {
        let alerts: Vec<Value> = reqwest::get(format!("{}/api/v2/alerts", self.url)).await.unwrap().json().await.unwrap();
        alerts.into_iter().filter(|a| a["labels"]["alertname"] == "WeirAnomaly" && a["labels"]["tenant"] == tenant && a["status"]["state"] == "active").collect()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, String, u16)>>>);

/// A webhook receiver that answers 500 to its first two requests.
async fn webhook_receiver() -> (String, Received) {
    let received = Received::default();
    let state = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let mut seen = state.0.lock().unwrap();
                let status = if seen.len() < 2 { 500 } else { 200 };
                seen.push((headers, body, status));
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ingest_minutes(weir: &Weir, minutes: std::ops::Range<i64>) {
    for m in minutes {
        let mut batch = minute_of_events("steady", m, 30 + (m as usize % 3));
        batch.extend(minute_of_events("spiky", m, if m == 30 { 150 } else { 20 + (m as usize % 2) }));
        let (status, body) = weir.ingest("events", &batch).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_alert_fires_and_resolves_in_alertmanager_webhooks_sse_and_sql() {
    let am = Alertmanager::start().await;
    let (hook, received) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let alertmanagers = format!("[{{url = \"{}\", resend_interval = \"1s\"}}]", am.url);
    let webhooks = format!("[{{url = \"{hook}\", secret = \"{SECRET}\", initial_backoff = \"50ms\", max_backoff = \"200ms\"}}]");
    let weir = Weir::start(
        dir.path(),
        &[("WEIR_ALERTING__ALERTMANAGERS", &alertmanagers), ("WEIR_ALERTING__WEBHOOKS", &webhooks), ("WEIR_ALERTING__RESOLVE_AFTER", "2")],
    );
    weir.create_view(
        "CREATE VIEW traffic AS SELECT date_bin(INTERVAL '1 minute', ts) AS minute, tenant, count(*) AS n FROM events GROUP BY date_bin(INTERVAL '1 minute', ts), tenant",
    )
    .await;
    let detector = json!({"name": "calls", "view": "traffic", "series": ["tenant"], "value": "n", "baseline": 20});
    assert_eq!(weir.http.post(weir.url("/v1/anomalies")).json(&detector).send().await.unwrap().status(), 201);
    let mut sse = SseReader::open(&weir, "/v1/alerts/stream", None).await;
    assert_eq!(sse.next().await.event, "reset", "a fresh subscriber starts from the alerts firing now");

    // minutes 0..=31: the spike at 30 is scored once minute 31 arrives
    ingest_minutes(&weir, 0..32).await;
    let fired = sse.next().await;
    assert_eq!((fired.event.as_str(), fired.data["status"].as_str()), ("alert", Some("firing")), "{fired:?}");
    assert_eq!(fired.data["labels"]["tenant"], "spiky");
    assert_eq!(fired.data["labels"]["series"], "tenant=spiky");
    assert!(fired.data["annotations"]["summary"].as_str().unwrap().contains("is 150"), "{fired:?}");
    let in_am = until("the alert in Alertmanager", async || Some(am.active("spiky").await).filter(|a| !a.is_empty())).await;
    assert_eq!(in_am[0]["fingerprint"].as_str().map(str::len), Some(16));
    let listed: Value = weir.http.get(weir.url("/v1/alerts")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["active"][0]["fingerprint"], fired.data["fingerprint"]);

    // two ordinary windows later it resolves
    ingest_minutes(&weir, 32..35).await;
    let resolved = sse.next().await;
    assert_eq!(resolved.data["status"], "resolved", "{resolved:?}");
    assert_eq!(resolved.data["fingerprint"], fired.data["fingerprint"]);
    assert_eq!(resolved.data["endsAt"], "2026-11-22T10:32:00.000Z");
    until("the alert to resolve in Alertmanager", async || am.active("spiky").await.is_empty().then_some(())).await;

    // resuming after the firing event replays exactly the resolution
    let mut resumed = SseReader::open(&weir, "/v1/alerts/stream", fired.id.as_deref()).await;
    let replayed = resumed.next().await;
    assert_eq!((replayed.id, replayed.data["status"].as_str()), (resolved.id.clone(), Some("resolved")));

    // the webhook got both, signed, the first after two failed attempts with the same id
    let calls = until("both webhook messages", async || {
        let calls = received.0.lock().unwrap().clone();
        (calls.iter().filter(|c| c.2 == 200).count() >= 2).then_some(calls)
    })
    .await;
    let id = |h: &HeaderMap| h["webhook-id"].to_str().unwrap().to_string();
    assert_eq!(calls.iter().take(3).map(|c| c.2).collect::<Vec<_>>(), vec![500, 500, 200]);
    assert!(calls[..3].iter().all(|c| id(&c.0) == id(&calls[0].0)), "retries keep the message id");
    for (headers, body, _) in &calls {
        let (ts, sig) = (headers["webhook-timestamp"].to_str().unwrap(), headers["webhook-signature"].to_str().unwrap());
        assert!(weir_alerts::deliver::verify(SECRET, &id(headers), ts, sig, body.as_bytes()), "bad signature on {body}");
        assert!(!weir_alerts::deliver::verify("whsec_b3RoZXIgc2VjcmV0", &id(headers), ts, sig, body.as_bytes()));
    }
    let kinds: Vec<Value> = calls.iter().filter(|c| c.2 == 200).map(|c| serde_json::from_str::<Value>(&c.1).unwrap()["type"].clone()).collect();
    assert_eq!(kinds, vec![json!("alert.firing"), json!("alert.resolved")]);

    // the history is a stream like any other
    weir.create_view("CREATE VIEW alert_log AS SELECT alertname, status, series FROM alerts").await;
    let log = until("the alert history", async || {
        let rows = weir.read("alert_log", 0).await["rows"].clone();
        (rows.as_array().unwrap().len() >= 2).then_some(rows)
    })
    .await;
    assert!(log.as_array().unwrap().contains(&json!({"alertname": "WeirAnomaly", "status": "resolved", "series": "tenant=spiky"})), "{log}");
    let forbidden = weir.http.post(weir.url("/v1/streams/alerts/events")).body("{}").send().await.unwrap();
    assert_eq!(forbidden.status(), 403, "only Weir writes its alert history");

    // a tenant over a soft quota raises an alert of its own
    let plan = json!({"events_per_hour": 10, "mode": "soft"});
    assert_eq!(weir.http.put(weir.url("/v1/tenants/chatty/quota")).json(&plan).send().await.unwrap().status(), 200);
    let (status, _) = weir.ingest("events", &minute_of_events("chatty", 0, 12)).await;
    assert_eq!(status, 200);
    // (the detector may have its own opinion of chatty's lone burst; skip that)
    let quota = loop {
        let e = sse.next().await;
        if e.data["labels"]["alertname"] != "WeirAnomaly" {
            break e;
        }
    };
    assert_eq!((quota.data["labels"]["alertname"].as_str(), quota.data["labels"]["tenant"].as_str()), (Some("TenantQuotaExceeded"), Some("chatty")), "{quota:?}");
    assert_eq!(quota.data["labels"]["severity"], "critical");
}
