//! The ingest gate: the one place where accepted events are ordered, checked for
//! lateness and duplicates, given an epoch, made durable and handed to the dataflow.
//!
//! ```text
//!   HTTP handlers (parse + validate, in parallel)
//!        │ Submission { stream, rows, rejections }
//!        ▼
//!   gate thread: take every queued submission ─▶ late? duplicate? ─▶ epoch = max(now, last + 1)
//!        ─▶ WAL append … one fsync for the whole group ─▶ dataflow ─▶ reply to each submitter
//! ```
//!
//! Because the gate is a single thread, watermarks, idempotency keys and epochs follow
//! one order, the same order the log records, so recovery rebuilds the same state.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::dataflow::{Batch, Command, Event};
use crate::error::{Error, Result};
use crate::schema::{Stream, REJECTED};
use crate::time::{format_rfc3339_ms, now_ms, Epoch};
use crate::value::{Row, Value};
use crate::wal::{Checkpoint, Record, Wal};

/// A line of input that was refused, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The 1-based line (or array element) number in the request.
    pub line: u32,
    /// The line as received.
    pub raw: String,
    /// Why it was refused, for a person.
    pub error: String,
    /// The line's tenant, where it could be read.
    pub tenant: Option<String>,
}

/// A parsed request body: valid rows with their line numbers, and refused lines.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Rows that passed schema validation, with their line numbers.
    pub rows: Vec<(u32, Row)>,
    /// Lines that did not.
    pub rejected: Vec<Rejection>,
}

/// What happened to a submitted request.
#[derive(Debug)]
pub struct Receipt {
    /// Lines accepted (durable), including duplicates of events already accepted.
    pub accepted: usize,
    /// Of the accepted lines, how many repeated an already accepted `(tenant, id)`.
    pub duplicates: usize,
    /// Refused lines, by line number, with the reason.
    pub rejected: Vec<(u32, String)>,
    /// The epoch the accepted events were committed in.
    pub epoch: Epoch,
}

struct Submission {
    stream: usize,
    decoded: Decoded,
    reply: oneshot::Sender<Result<Receipt>>,
}

/// The gate's state: what it must remember between requests.
pub struct GateState {
    /// The last epoch committed.
    pub last_epoch: Epoch,
    /// Per stream, the largest event time accepted.
    pub watermarks: Vec<i64>,
    /// Per stream, accepted idempotency keys `(tenant, id)` with their event time.
    pub ids: Vec<HashMap<(Arc<str>, Arc<str>), i64>>,
    inserts_since_prune: usize,
}

impl GateState {
    /// An empty state for these streams.
    pub fn new(streams: &[Stream]) -> GateState {
        GateState { last_epoch: 0, watermarks: vec![i64::MIN; streams.len()], ids: vec![HashMap::new(); streams.len()], inserts_since_prune: 0 }
    }

    /// Admits an already-accepted row (from the log, or just checked): moves the
    /// watermark, remembers the idempotency key, and says how late the row was.
    pub fn admit(&mut self, streams: &[Stream], stream: usize, row: &Row) -> Event {
        let s = &streams[stream];
        let ts = match row[s.time] {
            Value::Timestamp(t) => t,
            _ => unreachable!("the time column of an accepted row is a timestamp"),
        };
        let watermark = &mut self.watermarks[stream];
        let late_by = if *watermark == i64::MIN { 0 } else { watermark.saturating_sub(ts).max(0) };
        *watermark = (*watermark).max(ts);
        if let Some(key) = id_key(s, row) {
            self.ids[stream].insert(key, ts);
            self.inserts_since_prune += 1;
        }
        Event { row: row.clone(), ts, late_by }
    }

    /// The state a log segment starting now would record.
    pub fn checkpoint(&self, streams: &[Stream]) -> Checkpoint {
        let watermarks = streams
            .iter()
            .zip(&self.watermarks)
            .filter(|(_, w)| **w != i64::MIN)
            .map(|(s, w)| (s.name.clone(), *w))
            .collect();
        Checkpoint { last_epoch: self.last_epoch, watermarks }
    }

    /// Starts from a log segment's checkpoint.
    pub fn restore(&mut self, streams: &[Stream], checkpoint: &Checkpoint) {
        self.last_epoch = self.last_epoch.max(checkpoint.last_epoch);
        for (name, w) in &checkpoint.watermarks {
            if let Some(i) = streams.iter().position(|s| s.name == *name) {
                self.watermarks[i] = self.watermarks[i].max(*w);
            }
        }
    }

    /// Whether every event of `stream` up to `max_ts` has left retention (or the stream
    /// is gone), so that the log no longer needs them.
    fn expired(&self, streams: &[Stream], stream: &str, max_ts: i64) -> bool {
        match streams.iter().position(|s| s.name == stream) {
            Some(i) => max_ts < self.watermarks[i].saturating_sub(streams[i].policy.retention_ms),
            None => true,
        }
    }

    /// Forgets idempotency keys of events that have left retention: a repeat of one of
    /// those would be refused as late anyway.
    fn prune(&mut self, streams: &[Stream]) {
        if self.inserts_since_prune < 100_000 {
            return;
        }
        self.inserts_since_prune = 0;
        for (i, s) in streams.iter().enumerate() {
            let cutoff = self.watermarks[i].saturating_sub(s.policy.retention_ms);
            self.ids[i].retain(|_, ts| *ts >= cutoff);
        }
    }
}

fn id_key(s: &Stream, row: &Row) -> Option<(Arc<str>, Arc<str>)> {
    match (&row[s.tenant], s.id.map(|i| &row[i])) {
        (Value::Str(t), Some(Value::Str(id))) => Some((t.clone(), id.clone())),
        _ => None,
    }
}

/// A handle for submitting decoded requests to the gate.
#[derive(Clone)]
pub struct GateHandle {
    tx: Sender<Submission>,
}

impl GateHandle {
    /// Submits a decoded request for stream number `stream`; resolves once the accepted
    /// events are durable.
    pub async fn submit(&self, stream: usize, decoded: Decoded) -> Result<Receipt> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Submission { stream, decoded, reply }).map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

/// Starts the gate thread.
pub fn start_gate(streams: Arc<Vec<Stream>>, state: GateState, wal: Wal, dataflow: Sender<Command>) -> (GateHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("weir-ingest-gate".into())
        .spawn(move || run_gate(streams, state, wal, rx, dataflow))
        .expect("spawning the ingest gate thread");
    (GateHandle { tx }, thread)
}

fn run_gate(streams: Arc<Vec<Stream>>, mut state: GateState, mut wal: Wal, rx: Receiver<Submission>, dataflow: Sender<Command>) {
    let rejected_stream = streams.iter().position(|s| s.name == REJECTED).expect("the rejected stream exists");
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < 4096 {
            match rx.try_recv() {
                Ok(s) => group.push(s),
                Err(_) => break,
            }
        }
        let epoch = (now_ms().max(0) as Epoch).max(state.last_epoch + 1);
        let before = state.checkpoint(&streams);
        let mut receipts = Vec::with_capacity(group.len());
        let mut accepted: Vec<Vec<Event>> = vec![Vec::new(); streams.len()];
        let mut failed: Option<String> = None;
        for sub in &group {
            let s = &streams[sub.stream];
            let mut receipt = Receipt { accepted: 0, duplicates: 0, rejected: Vec::new(), epoch };
            let mut refused: Vec<Rejection> = sub.decoded.rejected.clone();
            for (line, row) in &sub.decoded.rows {
                let ts = match row.get(s.time) {
                    Some(Value::Timestamp(t)) if row.len() == s.columns.len() => *t,
                    _ => {
                        // formats validate rows; this guards in-process callers that build their own
                        refused.push(Rejection {
                            line: *line,
                            raw: format!("{row:?}"),
                            error: format!("a row of {} needs {} values with a timestamp in {:?}", s.name, s.columns.len(), s.columns[s.time].name),
                            tenant: None,
                        });
                        continue;
                    }
                };
                let watermark = state.watermarks[sub.stream];
                if s.checks_lateness() && watermark != i64::MIN && watermark.saturating_sub(ts) > s.policy.lateness_ms {
                    refused.push(Rejection {
                        line: *line,
                        raw: crate::json::row_to_json(&s.columns, row).to_string(),
                        error: format!(
                            "late: event time {} is more than the allowed lateness ({} ms) behind the watermark {}",
                            format_rfc3339_ms(ts),
                            s.policy.lateness_ms,
                            format_rfc3339_ms(watermark)
                        ),
                        tenant: match &row[s.tenant] {
                            Value::Str(t) => Some(t.to_string()),
                            _ => None,
                        },
                    });
                    continue;
                }
                if let Some(key) = id_key(s, row) {
                    if state.ids[sub.stream].contains_key(&key) {
                        receipt.accepted += 1;
                        receipt.duplicates += 1;
                        continue;
                    }
                }
                accepted[sub.stream].push(state.admit(&streams, sub.stream, row));
                receipt.accepted += 1;
            }
            refused.sort_by_key(|r| r.line);
            for r in refused {
                receipt.rejected.push((r.line, r.error.clone()));
                let row = rejected_row(s, &r, epoch as i64);
                accepted[rejected_stream].push(state.admit(&streams, rejected_stream, &row));
            }
            receipts.push(receipt);
        }
        let mut batches = Vec::new();
        for (i, events) in accepted.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let max_ts = events.iter().map(|e| e.ts).max().unwrap_or(i64::MIN);
            let record = Record { epoch, stream: streams[i].name.clone(), max_ts, rows: events.iter().map(|e| e.row.clone()).collect() };
            if let Err(e) = wal.append(&record) {
                failed = Some(e.to_string());
            }
            batches.push(Batch { epoch, stream: i, events, watermark: state.watermarks[i] });
        }
        if failed.is_none() {
            if let Err(e) = wal.commit(|| before) {
                failed = Some(e.to_string());
            }
        }
        if let Some(error) = failed {
            // Nothing of this group was acknowledged; the log may hold part of it, which
            // recovery would replay, so stop taking writes rather than diverge from it.
            tracing::error!(%error, "the write-ahead log failed; ingest stops");
            for sub in group {
                let _ = sub.reply.send(Err(Error::Log(error.clone())));
            }
            return;
        }
        state.last_epoch = epoch;
        state.prune(&streams);
        if let Err(e) = wal.truncate(|stream, max_ts| state.expired(&streams, stream, max_ts)) {
            // the segments stay; the next commit tries again
            tracing::warn!(error = %e, "could not delete expired log segments");
        }
        if dataflow.send(Command::Ingest { epoch, batches }).is_err() {
            return;
        }
        for (sub, receipt) in group.into_iter().zip(receipts) {
            let _ = sub.reply.send(Ok(receipt));
        }
    }
}

/// The row recorded in the `rejected` stream for a refused line.
fn rejected_row(stream: &Stream, r: &Rejection, now: i64) -> Row {
    vec![
        r.tenant.as_deref().map(Value::str).unwrap_or(Value::Null),
        Value::Timestamp(now),
        Value::str(&stream.name),
        Value::Int(r.line.into()),
        Value::str(&r.raw),
        Value::str(&r.error),
    ]
}
