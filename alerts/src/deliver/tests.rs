//! Delivery against real HTTP receivers: a local axum server records every request and
//! answers as each test scripts it. Tests wait for conditions, never for fixed times, and
//! assert only lower bounds on time, so a loaded machine makes them slower, not flaky.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::*;

/// The secret of the Standard Webhooks reference libraries' test vector.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A request as the receiver saw it.
#[derive(Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

struct TestReceiver {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestReceiver {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Starts a receiver on a free port that answers its `n`th request (from 0) with
/// `answer(n)`, or never when that is `None`.
async fn receiver(
    answer: impl Fn(usize) -> Option<StatusCode> + Send + Sync + 'static,
) -> TestReceiver {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let record = Arc::clone(&seen);
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (seen, answer) = (Arc::clone(&record), Arc::clone(&answer));
            async move {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    let path = uri.path().to_owned();
                    seen.push(Seen {
                        method,
                        path,
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    seen.len() - 1
                };
                match answer(n) {
                    Some(status) => status,
                    None => std::future::pending().await,
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestReceiver { url, seen }
}

/// Waits until `holds`; only a broken delivery takes anywhere near the deadline.
async fn eventually(what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const STARTS_AT: i64 = 1_700_000_000_123;
const ENDS_AT: i64 = 1_700_000_060_456;

fn alert(name: &str, status: Status, seq: u64) -> Alert {
    Alert {
        fingerprint: format!("fp{name}"),
        labels: BTreeMap::from([
            ("alertname".to_owned(), name.to_owned()),
            ("tenant".to_owned(), "acme".to_owned()),
        ]),
        annotations: BTreeMap::from([("summary".to_owned(), format!("{name} is odd"))]),
        starts_at: STARTS_AT,
        ends_at: (status == Status::Resolved).then_some(ENDS_AT),
        status,
        seq,
    }
}

/// A config with one webhook to `url`, `settings` on top of the defaults.
fn webhook(url: &str, settings: Value) -> DeliveryConfig {
    let mut webhook = json!({ "url": url, "secret": SECRET });
    webhook
        .as_object_mut()
        .unwrap()
        .extend(settings.as_object().unwrap().clone());
    serde_json::from_value(json!({ "webhooks": [webhook] })).unwrap()
}

fn millis(rfc3339: &Value) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339.as_str().expect("a string timestamp"))
        .expect("an RFC 3339 timestamp")
        .timestamp_millis()
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[test]
fn durations_are_a_whole_number_and_a_unit() {
    for (text, expected) in [
        ("250ms", Duration::from_millis(250)),
        ("5s", Duration::from_secs(5)),
        ("1m", Duration::from_secs(60)),
        ("2h", Duration::from_secs(7_200)),
        ("1d", Duration::from_secs(86_400)),
        ("0s", Duration::ZERO),
        (" 30s ", Duration::from_secs(30)),
    ] {
        assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
    }
    for text in [
        "",
        "5",
        "s",
        "1.5s",
        "5x",
        "-1s",
        "5 s",
        "1S",
        "99999999999999999999d",
        "999999999999999d",
    ] {
        assert!(parse_duration(text).is_err(), "{text:?} should be rejected");
    }
}

#[test]
fn config_takes_defaults_and_rejects_unknown_fields() {
    let config: DeliveryConfig = serde_json::from_value(json!({
        "alertmanagers": [{ "url": "http://am:9093" }],
        "webhooks": [{ "url": "http://hook", "secret": SECRET }],
    }))
    .unwrap();
    assert_eq!(config.alertmanagers[0].resend_interval, "1m");
    let webhook = &config.webhooks[0];
    assert_eq!(webhook.max_attempts, 6);
    assert_eq!(webhook.initial_backoff, "500ms");
    assert_eq!(webhook.max_backoff, "30s");
    assert_eq!(webhook.failure_threshold, 5);
    assert_eq!(webhook.open_for, "30s");
    assert!(
        !format!("{webhook:?}").contains("MfKQ9r8"),
        "Debug must not show the secret"
    );

    let empty: DeliveryConfig = serde_json::from_value(json!({})).unwrap();
    assert!(empty.alertmanagers.is_empty() && empty.webhooks.is_empty());

    let typo = serde_json::from_value::<DeliveryConfig>(json!({
        "webhooks": [{ "url": "http://hook", "secret": SECRET, "retries": 3 }],
    }));
    assert!(
        typo.unwrap_err()
            .to_string()
            .contains("unknown field `retries`")
    );
}

#[tokio::test]
async fn start_names_every_invalid_field_at_once() {
    let config: DeliveryConfig = serde_json::from_value(json!({
        "alertmanagers": [{ "url": "not a url", "resend_interval": "0s" }],
        "webhooks": [{
            "url": "ftp://hook", "secret": "whsec_not*base64", "max_attempts": 0,
            "failure_threshold": 0, "open_for": "5x",
        }],
    }))
    .unwrap();
    let Err(error) = Delivery::start(&config) else {
        panic!("an invalid config was accepted")
    };
    for field in [
        "alerting.alertmanagers[0].url",
        "alerting.alertmanagers[0].resend_interval",
        "alerting.webhooks[0].url",
        "alerting.webhooks[0].secret",
        "alerting.webhooks[0].max_attempts",
        "alerting.webhooks[0].failure_threshold",
        "alerting.webhooks[0].open_for",
    ] {
        assert!(error.contains(field), "{field} is not in: {error}");
    }
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    let error = Delivery::start(&DeliveryConfig::default()).err().unwrap();
    assert!(error.contains("Tokio runtime"), "{error}");
}

// ---------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------

#[test]
fn signatures_match_independently_computed_vectors() {
    // Computed with Python's hmac module; the first is also the test vector of the
    // Standard Webhooks reference libraries.
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let body = br#"{"test": 2432232314}"#;
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(sign(SECRET, id, 1_614_265_330, body), expected);
    assert!(verify(SECRET, id, "1614265330", expected, body));

    // Without the `whsec_` prefix, the secret's own bytes are the key.
    let raw = "v1,4pdQPICs3JyMo7kZmjBA55V7Yy8S8XBqbKElE+dFhPw=";
    assert_eq!(sign("plain-secret", "msg_x", 1_700_000_000, b"hello"), raw);
    assert!(verify("plain-secret", "msg_x", "1700000000", raw, b"hello"));
}

#[test]
fn verify_accepts_any_listed_signature_and_rejects_tampering() {
    let (id, body) = ("msg_fpa_7", br#"{"type":"alert.firing"}"#.as_slice());
    let good = sign(SECRET, id, 1_700_000_000, body);
    let other_key = sign("whsec_c2VjcmV0", id, 1_700_000_000, body);
    assert!(verify(SECRET, id, "1700000000", &good, body));
    // Several signatures (a key rotation, a future version): one valid v1 is enough.
    assert!(verify(
        SECRET,
        id,
        "1700000000",
        &format!("{other_key} v2,AAAA {good}"),
        body
    ));

    assert!(!verify(
        SECRET,
        id,
        "1700000000",
        &good,
        br#"{"type":"alert.resolved"}"#
    ));
    assert!(!verify(SECRET, "msg_fpa_8", "1700000000", &good, body));
    assert!(!verify(SECRET, id, "1700000001", &good, body));
    assert!(!verify("whsec_c2VjcmV0", id, "1700000000", &good, body));
    assert!(!verify(SECRET, id, "1700000000", &other_key, body));
    assert!(!verify(
        SECRET,
        id,
        "1700000000",
        &good.replace("v1,", "v2,"),
        body
    ));
    assert!(!verify(SECRET, id, "1700000000", "v1,not*base64", body));
    assert!(!verify(SECRET, id, "1700000000", "", body));
}

// ---------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------

#[test]
fn full_queue_drops_the_oldest() {
    let queue = Queue::new(3);
    let dropped: Vec<bool> = (1..=5).map(|n| queue.push(n)).collect();
    assert_eq!(dropped, [false, false, false, true, true]);
    assert_eq!(queue.len(), 3);
    assert_eq!(
        std::iter::from_fn(|| queue.try_pop()).collect::<Vec<_>>(),
        [3, 4, 5]
    );
}

#[test]
fn backoff_doubles_up_to_the_cap_with_at_most_ten_percent_jitter() {
    let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
    for (attempt, base_ms) in [
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1_000),
        (6, 1_000),
        (40, 1_000),
    ] {
        let base = Duration::from_millis(base_ms);
        let wait = backoff(initial, max, attempt);
        assert!(
            wait <= base && wait >= base.mul_f64(0.9),
            "attempt {attempt}: {wait:?}"
        );
    }
}

#[test]
fn circuit_opens_after_the_threshold_and_lets_one_trial_through() {
    let open_for = Duration::from_secs(10);
    let mut circuit = Circuit::new(2, open_for);
    let t0 = Instant::now();

    // A success in between resets the count of consecutive failures.
    circuit.failed(t0);
    circuit.succeeded();
    circuit.failed(t0);
    assert_eq!(circuit.state(), CircuitState::Closed);
    assert_eq!(circuit.admit(t0), Ok(()));

    circuit.failed(t0);
    assert_eq!(circuit.state(), CircuitState::Open);
    assert_eq!(
        circuit.admit(t0 + Duration::from_secs(9)),
        Err(t0 + open_for)
    );
    assert_eq!(circuit.state(), CircuitState::Open);

    // The trial fails: open again, counted from the failure.
    let t1 = t0 + open_for;
    assert_eq!(circuit.admit(t1), Ok(()));
    assert_eq!(circuit.state(), CircuitState::HalfOpen);
    circuit.failed(t1);
    assert_eq!(
        circuit.admit(t1 + Duration::from_secs(9)),
        Err(t1 + open_for)
    );

    // The next trial succeeds: closed, and one failure is below the threshold again.
    assert_eq!(circuit.admit(t1 + open_for), Ok(()));
    circuit.succeeded();
    assert_eq!(circuit.state(), CircuitState::Closed);
    circuit.failed(t1 + open_for);
    assert_eq!(circuit.state(), CircuitState::Closed);
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

/// Checks what every webhook request must be, and returns its `webhook-id`.
fn check_signed_request(seen: &Seen) -> String {
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.header("content-type"), "application/json");
    let (id, timestamp) = (seen.header("webhook-id"), seen.header("webhook-timestamp"));
    let sent_at: i64 = timestamp
        .parse()
        .expect("webhook-timestamp is Unix seconds");
    assert!(
        (Utc::now().timestamp() - sent_at).abs() < 60,
        "stale timestamp {sent_at}"
    );
    assert!(
        verify(
            SECRET,
            id,
            timestamp,
            seen.header("webhook-signature"),
            &seen.body
        ),
        "bad signature on {id}"
    );
    id.to_owned()
}

#[tokio::test]
async fn webhook_retries_a_message_with_the_same_id_until_delivered_in_order() {
    let hook = receiver(|n| {
        Some(if n < 2 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        })
    })
    .await;
    let config = webhook(
        &hook.url,
        json!({ "initial_backoff": "10ms", "max_backoff": "40ms" }),
    );
    let delivery = Delivery::start(&config).unwrap();

    let (firing, resolved) = (
        alert("a", Status::Firing, 1),
        alert("b", Status::Resolved, 2),
    );
    delivery.notify(&firing);
    delivery.notify(&resolved);
    let expected = ReceiverStats {
        kind: ReceiverKind::Webhook,
        url: hook.url.clone(),
        delivered: 2,
        failed_attempts: 2,
        dropped: 0,
        circuit: CircuitState::Closed,
        queued: 0,
    };
    eventually("both messages delivered", || {
        delivery.stats() == [expected.clone()]
    })
    .await;

    let seen = hook.seen();
    let ids: Vec<String> = seen.iter().map(check_signed_request).collect();
    // Three attempts at the first message, then the second: never overtaken.
    assert_eq!(ids, ["msg_fpa_1", "msg_fpa_1", "msg_fpa_1", "msg_fpb_2"]);
    // The body is the same on every attempt; only the timestamp and signature change.
    assert!(seen[..3].iter().all(|s| s.body == seen[0].body));

    let first = seen[2].json();
    assert_eq!(first["type"], "alert.firing");
    assert_eq!(first["data"], serde_json::to_value(&firing).unwrap());
    assert!(DateTime::parse_from_rfc3339(first["timestamp"].as_str().unwrap()).is_ok());
    let second = seen[3].json();
    assert_eq!(second["type"], "alert.resolved");
    assert_eq!(second["data"], serde_json::to_value(&resolved).unwrap());
}

#[tokio::test]
async fn webhook_drops_a_message_after_max_attempts_and_goes_on() {
    let hook = receiver(|n| {
        Some(if n < 2 {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::NO_CONTENT
        })
    })
    .await;
    let config = webhook(
        &hook.url,
        json!({ "max_attempts": 2, "initial_backoff": "10ms" }),
    );
    let delivery = Delivery::start(&config).unwrap();

    delivery.notify(&alert("a", Status::Firing, 1));
    delivery.notify(&alert("b", Status::Firing, 2));
    eventually("the second message delivered", || {
        delivery.stats()[0].delivered == 1
    })
    .await;

    let ids: Vec<String> = hook.seen().iter().map(check_signed_request).collect();
    assert_eq!(ids, ["msg_fpa_1", "msg_fpa_1", "msg_fpb_2"]);
    let stats = &delivery.stats()[0];
    assert_eq!((stats.failed_attempts, stats.dropped), (2, 1));
}

#[tokio::test]
async fn open_circuit_makes_no_requests_and_keeps_the_messages() {
    let hook = receiver(|_| Some(StatusCode::SERVICE_UNAVAILABLE)).await;
    let config = webhook(
        &hook.url,
        json!({ "failure_threshold": 3, "open_for": "1h", "initial_backoff": "10ms", "max_attempts": 100 }),
    );
    let delivery = Delivery::start(&config).unwrap();

    delivery.notify(&alert("a", Status::Firing, 1));
    delivery.notify(&alert("b", Status::Firing, 2));
    eventually("the circuit to open", || {
        delivery.stats()[0].circuit == CircuitState::Open
    })
    .await;

    let stats = &delivery.stats()[0];
    assert_eq!(hook.count(), 3, "requests made after the circuit opened");
    assert_eq!((stats.failed_attempts, stats.dropped), (3, 0));
    assert_eq!(
        stats.queued, 2,
        "the message being attempted and the one behind it"
    );

    let stopped = tokio::time::timeout(Duration::from_secs(10), delivery.stop()).await;
    assert!(stopped.is_ok(), "the task did not stop");
}

#[tokio::test]
async fn open_circuit_lets_one_trial_through_after_open_for() {
    // Fails the first three attempts (opening the circuit) and the first trial.
    let hook = receiver(|n| {
        Some(if n < 4 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        })
    })
    .await;
    let open_for = Duration::from_millis(300);
    let config = webhook(
        &hook.url,
        json!({
            "failure_threshold": 3, "open_for": "300ms", "initial_backoff": "10ms",
            "max_backoff": "20ms", "max_attempts": 10,
        }),
    );
    let delivery = Delivery::start(&config).unwrap();

    delivery.notify(&alert("a", Status::Firing, 1));
    delivery.notify(&alert("b", Status::Firing, 2));
    eventually("both messages delivered", || {
        delivery.stats()[0].delivered == 2
    })
    .await;

    let seen = hook.seen();
    let ids: Vec<String> = seen.iter().map(check_signed_request).collect();
    assert_eq!(
        ids,
        [
            "msg_fpa_1",
            "msg_fpa_1",
            "msg_fpa_1",
            "msg_fpa_1",
            "msg_fpa_1",
            "msg_fpb_2"
        ]
    );
    // Retries are 20 ms apart at most; the gaps that follow an opening are the circuit's
    // (less a millisecond of timer resolution).
    let slack = Duration::from_millis(1);
    assert!(
        seen[3].at - seen[2].at >= open_for - slack,
        "the first trial came early"
    );
    assert!(
        seen[4].at - seen[3].at >= open_for - slack,
        "the second trial came early"
    );
    let stats = &delivery.stats()[0];
    assert_eq!((stats.failed_attempts, stats.dropped), (4, 0));
    assert_eq!(stats.circuit, CircuitState::Closed);
}

// ---------------------------------------------------------------------------------------
// Alertmanager
// ---------------------------------------------------------------------------------------

/// The alert named `name` in an Alertmanager POST body.
fn posted<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.as_array()
        .expect("a JSON array")
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
}

#[tokio::test]
async fn alertmanager_gets_firing_alerts_every_interval_and_a_resolved_one_once() {
    // The first POST fails: its alerts must come again at the next tick.
    let am = receiver(|n| {
        Some(if n == 0 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        })
    })
    .await;
    let config: DeliveryConfig = serde_json::from_value(json!({
        "alertmanagers": [{ "url": format!("{}/", am.url), "resend_interval": "100ms" }],
    }))
    .unwrap();
    let delivery = Delivery::start(&config).unwrap();

    let before = Utc::now();
    delivery.notify(&alert("a", Status::Firing, 1));
    delivery.notify(&alert("b", Status::Firing, 2));
    eventually("two POSTs after the failed one", || am.count() >= 3).await;
    let after = Utc::now();

    let seen = am.seen();
    for request in &seen {
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::POST, "/api/v2/alerts")
        );
        assert_eq!(request.header("content-type"), "application/json");
    }
    for request in &seen[1..3] {
        let a = posted(&request.json(), "a")
            .cloned()
            .expect("a is re-sent while firing");
        let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["annotations", "endsAt", "labels", "startsAt"]);
        assert_eq!(a["labels"], json!({ "alertname": "a", "tenant": "acme" }));
        assert_eq!(a["annotations"], json!({ "summary": "a is odd" }));
        assert_eq!(millis(&a["startsAt"]), STARTS_AT);
        // Valid for three intervals from the send, like Prometheus.
        let ends_at = millis(&a["endsAt"]);
        let validity = 300;
        assert!(
            ends_at >= before.timestamp_millis() + validity,
            "endsAt {ends_at} too early"
        );
        assert!(
            ends_at <= after.timestamp_millis() + validity,
            "endsAt {ends_at} too late"
        );
    }

    delivery.notify(&alert("a", Status::Resolved, 3));
    let resolved_at = |request: &Seen| {
        posted(&request.json(), "a").is_some_and(|a| millis(&a["endsAt"]) == ENDS_AT)
    };
    eventually("a sent as resolved", || am.seen().iter().any(resolved_at)).await;
    let k = am.seen().iter().position(resolved_at).unwrap();
    eventually("two re-sends after that", || am.count() >= k + 3).await;
    for request in &am.seen()[k + 1..k + 3] {
        let body = request.json();
        assert!(posted(&body, "b").is_some(), "b is still firing");
        assert!(
            posted(&body, "a").is_none(),
            "a was resolved and already sent"
        );
    }

    let stats = &delivery.stats()[0];
    assert_eq!(stats.kind, ReceiverKind::Alertmanager);
    assert_eq!(
        (stats.failed_attempts, stats.dropped, stats.queued),
        (1, 0, 0)
    );
    assert!(stats.delivered >= 4);
}

// ---------------------------------------------------------------------------------------
// The caller never waits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn notify_never_waits_for_a_hanging_receiver() {
    let hang = receiver(|_| None).await;
    let mut config = webhook(&hang.url, json!({}));
    config.alertmanagers = vec![AlertmanagerConfig {
        url: hang.url.clone(),
        resend_interval: "50ms".to_owned(),
    }];
    let delivery = Delivery::start(&config).unwrap();

    delivery.notify(&alert("a", Status::Firing, 0));
    eventually("both receivers stuck in a request", || hang.count() == 2).await;

    // Were notify to wait for a receiver, this would never end: nobody answers, and this
    // single-threaded runtime cannot run the delivery tasks meanwhile.
    let overflow = 10_000;
    for seq in 1..=(QUEUE_CAPACITY + overflow) as u64 {
        delivery.notify(&alert("a", Status::Firing, seq));
    }
    let [am, hook] = <[ReceiverStats; 2]>::try_from(delivery.stats()).unwrap();
    assert_eq!(
        (am.kind, hook.kind),
        (ReceiverKind::Alertmanager, ReceiverKind::Webhook)
    );
    assert_eq!(
        (am.queued, am.dropped),
        (QUEUE_CAPACITY as u64, overflow as u64)
    );
    // The webhook also holds the message it is attempting.
    assert_eq!(
        (hook.queued, hook.dropped),
        (QUEUE_CAPACITY as u64 + 1, overflow as u64)
    );

    delivery.shutdown();
    eventually("the tasks to stop", || {
        delivery.tasks.iter().all(|t| t.is_finished())
    })
    .await;
    delivery.notify(&alert("a", Status::Resolved, 99_999));
    assert_eq!(
        delivery.stats()[0].queued,
        QUEUE_CAPACITY as u64,
        "notify after shutdown queues nothing"
    );
    assert_eq!(hang.count(), 2);
}
