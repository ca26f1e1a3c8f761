//! The lake on Azure Blob Storage: snapshots and the raw archive written to Azurite
//! (Microsoft's Azure Storage emulator, a separate Node.js process speaking the Blob
//! API) at an `az://` location, read back by an independent reader, and a restart
//! recovering from the archive there.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::snapshots::read_delta_with_env;
use crate::weir::Weir;

/// Azurite's well-known development account.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Azurite {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Azurite {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        // scripts/test installs it under target/azurite
        let program = std::env::var("WEIR_TEST_AZURITE").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/azurite/node_modules/.bin/azurite-blob").to_string());
        let child = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--silent", "--skipApiVersionCheck", "--location"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting Azurite ({program}; scripts/test installs it): {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Azurite { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    /// Creates a container with the Azure SDK for Python.
    fn create_container(&self, name: &str) {
        let script = "import sys\nfrom azure.storage.blob import BlobServiceClient\nBlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])";
        let connection = format!("DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={}/{ACCOUNT};", self.url);
        let out = Command::new("python3").args(["-c", script, &connection, name]).output().expect("python3");
        assert!(out.status.success(), "creating the container: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_on_azure_blob_storage() {
    let azurite = Azurite::start();
    azurite.create_container("weir");
    let blob_url = azurite.url.clone();
    let env = [
        ("WEIR_SNAPSHOT__LOCATION", "az://weir/lake"),
        ("WEIR_SNAPSHOT__INTERVAL", "300ms"),
        ("WEIR_SNAPSHOT__STORAGE__USE_EMULATOR", "true"),
        ("WEIR_ARCHIVE__INTERVAL", "300ms"),
        ("WEIR_WAL__SEGMENT_BYTES", "4096"),
        // the emulator's address, read by the Azure store as the usual variable
        ("AZURITE_BLOB_STORAGE_URL", blob_url.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let weir = Weir::start(dir.path(), &env);
    weir.create_view("CREATE VIEW per_tenant AS SELECT tenant, count(*) AS n FROM events GROUP BY tenant").await;
    let mut last = 0;
    for minute in 0..6 {
        let batch: Vec<Value> = (0..20).map(|i| json!({"tenant": (["acme", "globex"][i % 2]), "ts": format!("2026-11-22T12:{minute:02}:{i:02}Z"), "kind": "k", "id": format!("{minute}-{i}")})).collect();
        let (status, receipt) = weir.ingest("events", &batch).await;
        assert_eq!(status, 200);
        last = receipt["epoch"].as_u64().unwrap();
    }
    let before = weir.read("per_tenant", last).await["rows"].clone();
    assert_eq!(before, json!([{"tenant": "acme", "n": 60}, {"tenant": "globex", "n": 60}]));

    let options = json!({"use_emulator": "true", "account_name": ACCOUNT, "account_key": KEY});
    // the Python reader finds the emulator through the same variable
    let reader_env = [("AZURITE_BLOB_STORAGE_URL", blob_url.as_str())];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snapshot = read_delta_with_env("az://weir/lake/per_tenant", &options, &reader_env);
        let archive = read_delta_with_env("az://weir/lake/_archive/events", &options, &reader_env);
        if let (Ok(s), Ok(a)) = (&snapshot, &archive)
            && s["rows"] == before
            && a["rows"].as_array().map(Vec::len) == Some(120)
        {
            assert_eq!(a["partitions"], json!(["tenant", "date"]));
            break;
        }
        assert!(Instant::now() < deadline, "the lake on Azure: {snapshot:?} {archive:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // SQL reads the archive from Azure; after a restart the views come back from it
    let body: Value = weir.http.post(weir.url("/v1/sql")).json(&json!({"sql": "SELECT count(*) AS n FROM archive.events"})).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["rows"], json!([{"n": 120}]), "{body}");
    let (_, receipt) = weir.ingest("events", &[json!({"tenant": "acme", "ts": "2026-11-22T12:10:00Z", "kind": "k"})]).await;
    weir.read("per_tenant", receipt["epoch"].as_u64().unwrap()).await;
    let segments = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert!(segments <= 2, "{segments} log segments after archiving");
    weir.kill();
    let weir = Weir::start(dir.path(), &env);
    assert_eq!(weir.read("per_tenant", 0).await["rows"], json!([{"tenant": "acme", "n": 61}, {"tenant": "globex", "n": 60}]));
}
