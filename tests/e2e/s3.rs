//! The lake on S3: snapshots and the raw archive written to a real S3-compatible server
//! (moto's server mode, a separate process speaking the S3 protocol over HTTP), read
//! back by an independent reader; while the server is unreachable (cut off, then
//! frozen), ingest goes on, and the lake catches up when it is back, losing nothing; a
//! restart recovers from the S3 archive and the log.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::snapshots::read_delta_at;
use crate::weir::Weir;

/// moto's S3 server on a free port, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto's S3 server (pip install 'moto[server]')");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto's server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }
}

impl Moto {
    /// Sends the server process a signal (`STOP`, `CONT`).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder to the S3 server that can be cut: while cut, connections to it are
/// refused and open ones are closed, as when the server is down.
struct Outage {
    port: u16,
    target: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Outage {
    async fn start(target: SocketAddr) -> Outage {
        let outage = Outage { port: free_port(), target, tasks: Arc::default() };
        outage.restore().await;
        outage
    }

    /// Forwards again, on the same port.
    async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("binding the forwarder's port again");
        let (target, tasks) = (self.target, self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Refuses and closes every connection.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Reads a Delta table on moto with the Python reader (an error if there is none yet).
fn read_s3(moto: &Moto, location: &str) -> Result<Value, String> {
    let options = json!({
        "AWS_ENDPOINT_URL": format!("http://127.0.0.1:{}", moto.port),
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "weir",
        "AWS_SECRET_ACCESS_KEY": "weir",
        "AWS_REGION": "us-east-1",
    });
    read_delta_at(location, &options)
}

async fn sql(weir: &Weir, sql: &str) -> (u16, Value) {
    let resp = weir.http.post(weir.url("/v1/sql")).json(&json!({ "sql": sql })).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn batch(tenant: &str, minute: usize, n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"tenant": tenant, "ts": format!("2026-11-22T11:{minute:02}:{:02}Z", i % 60), "kind": "call", "value": 1.0, "id": format!("{tenant}-{minute}-{i}")})).collect()
}

fn totals(rows: &Value) -> BTreeMap<String, i64> {
    rows.as_array().unwrap().iter().map(|r| (r["tenant"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap())).collect()
}

/// Waits until `check` holds, or fails with `what` after a minute.
async fn eventually(what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(state) = check() else { return };
        assert!(Instant::now() < deadline, "{what}: still {state}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_on_s3_survives_an_outage_and_recovery_reads_the_archive_back() {
    let moto = Moto::start();
    let http = reqwest::Client::new();
    // a bucket (moto accepts any credentials)
    let created = http.put(format!("http://127.0.0.1:{}/weir", moto.port)).send().await.unwrap();
    assert!(created.status().is_success(), "creating the bucket: {}", created.status());
    let outage = Outage::start(SocketAddr::from(([127, 0, 0, 1], moto.port))).await;

    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", outage.port);
    let env = [
        ("WEIR_SNAPSHOT__LOCATION", "s3://weir/lake"),
        ("WEIR_SNAPSHOT__INTERVAL", "300ms"),
        ("WEIR_SNAPSHOT__STORAGE__ENDPOINT", endpoint.as_str()),
        ("WEIR_SNAPSHOT__STORAGE__ALLOW_HTTP", "true"),
        ("WEIR_SNAPSHOT__STORAGE__ACCESS_KEY_ID", "weir"),
        ("WEIR_SNAPSHOT__STORAGE__SECRET_ACCESS_KEY", "weir"),
        ("WEIR_SNAPSHOT__STORAGE__REGION", "us-east-1"),
        ("WEIR_ARCHIVE__INTERVAL", "300ms"),
        ("WEIR_WAL__SEGMENT_BYTES", "4096"),
    ];
    let weir = Weir::start(dir.path(), &env);
    weir.create_view("CREATE VIEW per_tenant AS SELECT tenant, count(*) AS n FROM events GROUP BY tenant").await;
    for minute in 0..5 {
        let (status, _) = weir.ingest("events", &batch("acme", minute, 20)).await;
        assert_eq!(status, 200);
        weir.ingest("events", &batch("globex", minute, 10)).await;
    }
    let expected_before = BTreeMap::from([("acme".to_string(), 100), ("globex".to_string(), 50)]);
    eventually("the snapshot on S3", || {
        match read_s3(&moto, "s3://weir/lake/per_tenant") {
            Ok(t) => (totals(&t["rows"]) != expected_before).then(|| t.to_string()),
            Err(e) => Some(e),
        }
    })
    .await;
    eventually("the archive on S3", || {
        match read_s3(&moto, "s3://weir/lake/_archive/events") {
            Ok(t) => (t["rows"].as_array().unwrap().len() != 150).then(|| format!("{} rows", t["rows"].as_array().unwrap().len())),
            Err(e) => Some(e),
        }
    })
    .await;
    // Weir's SQL reads the same tables from S3
    let (status, body) = sql(&weir, "SELECT tenant, count(*) AS n FROM events GROUP BY tenant ORDER BY tenant").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(totals(&body["rows"]), expected_before);

    // the server goes away: ingest is not blocked, the views stay live
    outage.cut();
    let mut last = 0;
    for minute in 5..15 {
        let (status, receipt) = weir.ingest("events", &batch("acme", minute, 20)).await;
        assert_eq!(status, 200, "ingest during the outage: {receipt}");
        last = receipt["epoch"].as_u64().unwrap();
    }
    let live = weir.read("per_tenant", last).await;
    let expected = BTreeMap::from([("acme".to_string(), 300), ("globex".to_string(), 50)]);
    assert_eq!(totals(&live["rows"]), expected);
    let failed = weir.http.post(weir.url("/v1/snapshots")).send().await.unwrap();
    assert!(failed.status().is_server_error(), "a snapshot cannot be written while the store is down: {}", failed.status());
    // (the outage lasts several archive and snapshot intervals, each failing)
    tokio::time::sleep(Duration::from_secs(2)).await;
    // while archiving fails, the log keeps every segment the archive lacks
    let segments = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(segments > 3, "{segments} log segments");

    // back: both catch up, and nothing is lost or written twice
    outage.restore().await;
    eventually("the snapshot catching up", || {
        let t = read_s3(&moto, "s3://weir/lake/per_tenant").unwrap();
        (totals(&t["rows"]) != expected).then(|| t.to_string())
    })
    .await;
    eventually("the archive catching up", || {
        let t = read_s3(&moto, "s3://weir/lake/_archive/events").unwrap();
        (t["rows"].as_array().unwrap().len() != 350).then(|| format!("{} rows", t["rows"].as_array().unwrap().len()))
    })
    .await;
    let archived = read_s3(&moto, "s3://weir/lake/_archive/events").unwrap();
    let mut ids: Vec<&str> = archived["rows"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 350, "every event archived exactly once");

    // the server process is frozen (SIGSTOP) for a while: requests hang instead of
    // failing; ingest still goes on, and the lake catches up once it runs again
    moto.signal("STOP");
    for minute in 15..20 {
        let (status, receipt) = weir.ingest("events", &batch("globex", minute, 10)).await;
        assert_eq!(status, 200, "ingest while the store hangs: {receipt}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    moto.signal("CONT");
    let mut expected = expected;
    expected.insert("globex".into(), 100);
    eventually("the lake catching up after the freeze", || {
        let t = read_s3(&moto, "s3://weir/lake/_archive/events").unwrap();
        (t["rows"].as_array().unwrap().len() != 400).then(|| format!("{} rows", t["rows"].as_array().unwrap().len()))
    })
    .await;
    eventually("the snapshot after the freeze", || {
        let t = read_s3(&moto, "s3://weir/lake/per_tenant").unwrap();
        (totals(&t["rows"]) != expected).then(|| t.to_string())
    })
    .await;

    // once archived, the log is truncated (at the next commit)
    let (_, receipt) = weir.ingest("events", &batch("initech", 15, 1)).await;
    let segments = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(segments <= 2, "{segments} log segments after archiving");

    // a restart recovers the deleted segments' events from the archive on S3
    weir.read("per_tenant", receipt["epoch"].as_u64().unwrap()).await;
    weir.kill();
    let weir = Weir::start(dir.path(), &env);
    let after = weir.read("per_tenant", 0).await;
    expected.insert("initech".into(), 1);
    assert_eq!(totals(&after["rows"]), expected);
    // and still knows their idempotency keys
    let (_, again) = weir.ingest("events", &batch("acme", 0, 20)).await;
    assert_eq!(again["duplicates"], 20, "{again}");
}
