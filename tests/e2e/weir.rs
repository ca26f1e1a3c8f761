//! Helpers: start the real `weir` binary, talk to it over HTTP and SSE.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

/// A running `weir serve`, killed when dropped.
pub struct Weir {
    child: Child,
    pub url: String,
    pub http: reqwest::Client,
}

impl Weir {
    /// Starts `weir serve` on a free port with this data directory and extra environment.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Weir {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["serve", "--http", "127.0.0.1:0", "--data-dir"]).arg(data_dir).stdout(Stdio::piped()).stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting weir");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("weir exited before listening").expect("reading weir's output");
            if let Some(url) = line.strip_prefix("weir listening on ") {
                break url.trim().to_string();
            }
        };
        // keep draining stdout so the child never blocks on a full pipe
        std::thread::spawn(move || for _ in lines {});
        Weir { child, url, http: reqwest::Client::new() }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        self.child.kill().expect("killing weir");
        self.child.wait().expect("reaping weir");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub async fn create_view(&self, sql: &str) -> Value {
        let resp = self.http.post(self.url("/v1/views")).json(&serde_json::json!({ "sql": sql })).send().await.unwrap();
        assert_eq!(resp.status(), 201, "creating a view: {}", resp.text().await.unwrap());
        resp.json().await.unwrap()
    }

    /// Posts NDJSON lines; returns (status, body).
    pub async fn ingest(&self, stream: &str, lines: &[Value]) -> (u16, Value) {
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let resp = self
            .http
            .post(self.url(&format!("/v1/streams/{stream}/events")))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// Reads a view once it reflects `epoch`.
    pub async fn read(&self, view: &str, epoch: u64) -> Value {
        let resp = self.http.get(self.url(&format!("/v1/views/{view}?min_epoch={epoch}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// Reads Server-Sent Events from a response.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    pub async fn open(weir: &Weir, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut req = weir.http.get(weir.url(path)).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        SseReader { body: resp.bytes_stream().boxed(), buffer: String::new() }
    }

    /// Opens a subscription with an API key.
    pub async fn open_with_key(weir: &Weir, path: &str, key: &str) -> SseReader {
        let resp = weir.http.get(weir.url(path)).header("accept", "text/event-stream").bearer_auth(key).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        SseReader { body: resp.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next event (comments and keep-alives skipped), waiting at most 10 s.
    pub async fn next(&mut self) -> Sse {
        tokio::time::timeout(Duration::from_secs(10), self.next_inner()).await.expect("no SSE event within 10 s")
    }

    async fn next_inner(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("message".to_string(), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Sse { event, id, data: serde_json::from_str(&data).expect("SSE data is JSON") };
            }
            let chunk = self.body.next().await.expect("the SSE stream ended").expect("reading the SSE stream");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
