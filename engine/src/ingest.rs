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

// (foldhash, not SipHash: the gate hashes tenants and event ids for every event it admits)
use foldhash::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::dataflow::{Batch, Command, Event};
use crate::error::{Error, Result};
use crate::quota::{usage_row, Ledger, Metric, Quotas};
use crate::schema::{Stream, REJECTED};
use crate::time::{format_rfc3339_ms, now_ms, Epoch};
use crate::value::{Row, Text, Value};
use crate::wal::{Checkpoint, Logged, Record, RecordRef, Wal};

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
    /// The size in bytes of each row as received, in `rows` order (empty: unknown).
    pub sizes: Vec<u32>,
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
    pub ids: Vec<HashMap<(Text, Text), i64>>,
    /// Usage per tenant, for quotas and the `usage` stream.
    pub ledger: Ledger,
    /// Usage not yet handed to the dataflow, by (tenant, minute, metric).
    pending_usage: HashMap<(Text, i64, Metric), i64>,
    last_usage_flush: i64,
    inserts_since_prune: usize,
}

impl GateState {
    /// An empty state for these streams.
    pub fn new(streams: &[Stream]) -> GateState {
        GateState {
            last_epoch: 0,
            watermarks: vec![i64::MIN; streams.len()],
            ids: vec![HashMap::default(); streams.len()],
            ledger: Ledger::default(),
            pending_usage: HashMap::default(),
            last_usage_flush: i64::MIN,
            inserts_since_prune: 0,
        }
    }

    /// Admits an already-accepted row (from the log, or just checked): moves the
    /// watermark, remembers the idempotency key, and says how late the row was.
    pub fn admit(&mut self, streams: &[Stream], stream: usize, row: Row) -> Event {
        let s = &streams[stream];
        let ts = match row[s.time] {
            Value::Timestamp(t) => t,
            _ => unreachable!("the time column of an accepted row is a timestamp"),
        };
        let watermark = &mut self.watermarks[stream];
        let late_by = if *watermark == i64::MIN { 0 } else { watermark.saturating_sub(ts).max(0) };
        *watermark = (*watermark).max(ts);
        if let Some(key) = id_key(s, &row) {
            self.ids[stream].insert(key, ts);
            self.inserts_since_prune += 1;
        }
        Event { row, ts, late_by, weight: 1 }
    }

    /// Counts usage of a tenant at `now`: in the ledger (for quotas, at once) and for the
    /// `usage` stream (handed to the dataflow at most every [`USAGE_FLUSH_MS`]).
    fn count_usage(&mut self, tenant: &Text, now: i64, metric: Metric, n: i64) {
        if n == 0 {
            return;
        }
        self.ledger.add(tenant, now, metric, n);
        *self.pending_usage.entry((tenant.clone(), crate::quota::Period::Minute.start(now), metric)).or_default() += n;
    }

    /// Recounts the usage of a logged record of a metered stream (replay).
    pub fn count_logged_usage(&mut self, stream: &Stream, record: &Record) {
        let mut per_tenant: HashMap<&Text, (i64, i64)> = HashMap::default();
        for (i, row) in record.rows.iter().enumerate() {
            if let Some(Value::Str(tenant)) = row.get(stream.tenant) {
                let u = per_tenant.entry(tenant).or_default();
                u.0 += 1;
                u.1 += record.sizes.get(i).copied().unwrap_or(0) as i64;
            }
        }
        for (tenant, (events, bytes)) in per_tenant {
            self.ledger.add(tenant, record.epoch as i64, Metric::Events, events);
            if bytes > 0 {
                self.ledger.add(tenant, record.epoch as i64, Metric::Bytes, bytes);
            }
        }
    }

    /// The pending usage as a batch for the dataflow, if any is pending and `force` or
    /// the last one is [`USAGE_FLUSH_MS`] old.
    fn usage_batch(&mut self, stream: Option<usize>, epoch: Epoch, force: bool) -> Option<Batch> {
        let u = stream?;
        let now = epoch as i64;
        if self.pending_usage.is_empty() || (!force && now.saturating_sub(self.last_usage_flush) < USAGE_FLUSH_MS) {
            return None;
        }
        self.last_usage_flush = now;
        let events: Vec<Event> = self
            .pending_usage
            .drain()
            .map(|((tenant, minute, metric), n)| Event { row: usage_row(&tenant, minute, metric), ts: minute, late_by: 0, weight: n as isize })
            .collect();
        let max = events.iter().map(|e| e.ts).max().unwrap_or(i64::MIN);
        self.watermarks[u] = self.watermarks[u].max(max);
        Some(Batch { epoch, stream: u, events, watermark: self.watermarks[u] })
    }

    /// Admits a logged row of the weighted `usage` stream (its weight is the last
    /// value) into the ledger, which seeds the dataflow once replay is done.
    pub fn admit_usage(&mut self, stream: usize, row: &Row) {
        let (Some(Value::Str(tenant)), Some(Value::Timestamp(ts)), Some(metric), Some(Value::Int(n))) =
            (row.first(), row.get(1), crate::quota::metric_of(row), row.get(3))
        else {
            tracing::warn!("skipped a malformed usage row in the log");
            return;
        };
        self.ledger.add(tenant, *ts, metric, *n);
        self.watermarks[stream] = self.watermarks[stream].max(*ts);
    }

    /// The state a log segment starting now would record.
    pub fn checkpoint(&self, streams: &[Stream]) -> Checkpoint {
        let watermarks = streams
            .iter()
            .zip(&self.watermarks)
            .filter(|(_, w)| **w != i64::MIN)
            .map(|(s, w)| (s.name.clone(), *w))
            .collect();
        Checkpoint { last_epoch: self.last_epoch, watermarks, usage: self.ledger.compacted(self.last_epoch as i64) }
    }

    /// Starts from a log segment's checkpoint.
    pub fn restore(&mut self, streams: &[Stream], checkpoint: &Checkpoint) {
        self.last_epoch = self.last_epoch.max(checkpoint.last_epoch);
        for (name, w) in &checkpoint.watermarks {
            if let Some(i) = streams.iter().position(|s| s.name == *name) {
                self.watermarks[i] = self.watermarks[i].max(*w);
            }
        }
        self.ledger.restore(&checkpoint.usage);
    }

    /// Whether every event of `stream` up to `max_ts` has left retention (or the stream
    /// is gone), so that the log no longer needs them.
    fn expired(&self, streams: &[Stream], stream: &str, max_ts: i64) -> bool {
        match streams.iter().position(|s| s.name == stream) {
            // usage lives on in every later segment's checkpoint
            Some(i) if streams[i].weighted => true,
            Some(i) => max_ts < self.watermarks[i].saturating_sub(streams[i].policy.retention_ms),
            None => true,
        }
    }

    /// Forgets idempotency keys of events that have left retention: a repeat of one of
    /// those would be refused as late anyway.
    fn prune(&mut self, streams: &[Stream]) {
        if let Some(u) = streams.iter().position(|s| s.weighted) {
            self.ledger.expire(self.watermarks[u].saturating_sub(streams[u].policy.retention_ms));
        }
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

fn id_key(s: &Stream, row: &Row) -> Option<(Text, Text)> {
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
pub fn start_gate(
    streams: Arc<Vec<Stream>>,
    state: GateState,
    wal: Wal,
    quotas: Arc<Quotas>,
    dataflow: Sender<Command>,
    archive: Option<Archiving>,
) -> (GateHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("weir-ingest-gate".into())
        .spawn(move || run_gate(streams, state, wal, quotas, rx, dataflow, archive))
        .expect("spawning the ingest gate thread");
    (GateHandle { tx }, thread)
}

/// Where the gate hands committed records for archiving, and how far they are archived.
pub type Archiving = (tokio::sync::mpsc::UnboundedSender<Vec<Logged>>, Arc<crate::archive::Progress>);

/// How often, at most, counted usage is handed to the dataflow's `usage` stream (the
/// gate's own counts, which enforce quotas, are always current).
pub const USAGE_FLUSH_MS: i64 = 500;

/// A submission's rows that passed the lateness and duplicate checks (their places in
/// `Decoded::rows`), with their sizes, and what it would add to each tenant's usage.
struct Checked {
    fresh: Vec<(usize, u32)>,
    duplicates: usize,
    refused: Vec<Rejection>,
    /// Per tenant: (events, bytes).
    usage: Vec<(Text, u64, u64)>,
}

fn check(s: &Stream, stream: usize, state: &GateState, decoded: &Decoded) -> Checked {
    let mut out = Checked { fresh: Vec::with_capacity(decoded.rows.len()), duplicates: 0, refused: decoded.rejected.clone(), usage: Vec::new() };
    let mut seen = HashSet::default();
    let mut usage: HashMap<&Text, (u64, u64)> = HashMap::default();
    // rows are checked in order, each against the watermark the rows before it moved
    let mut watermark = state.watermarks[stream];
    for (i, (line, row)) in decoded.rows.iter().enumerate() {
        let ts = match row.get(s.time) {
            Some(Value::Timestamp(t)) if row.len() == s.columns.len() => *t,
            _ => {
                // formats validate rows; this guards in-process callers that build their own
                out.refused.push(Rejection {
                    line: *line,
                    raw: format!("{row:?}"),
                    error: format!("a row of {} needs {} values with a timestamp in {:?}", s.name, s.columns.len(), s.columns[s.time].name),
                    tenant: None,
                });
                continue;
            }
        };
        if s.checks_lateness() && watermark != i64::MIN && watermark.saturating_sub(ts) > s.policy.lateness_ms {
            out.refused.push(Rejection {
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
        if let Some(key) = id_key(s, row)
            && (state.ids[stream].contains_key(&key) || !seen.insert(key))
        {
            out.duplicates += 1;
            continue;
        }
        let size = decoded.sizes.get(i).copied().unwrap_or(0);
        if let (true, Value::Str(tenant)) = (s.metered, &row[s.tenant]) {
            let u = usage.entry(tenant).or_default();
            u.0 += 1;
            u.1 += size as u64;
        }
        watermark = watermark.max(ts);
        out.fresh.push((i, size));
    }
    out.usage = usage.into_iter().map(|(t, (events, bytes))| (t.clone(), events, bytes)).collect();
    out
}

fn run_gate(streams: Arc<Vec<Stream>>, mut state: GateState, mut wal: Wal, quotas: Arc<Quotas>, rx: Receiver<Submission>, dataflow: Sender<Command>, archive: Option<Archiving>) {
    let rejected_stream = streams.iter().position(|s| s.name == REJECTED).expect("the rejected stream exists");
    let usage_stream = streams.iter().position(|s| s.weighted);
    loop {
        let first = match rx.recv_timeout(std::time::Duration::from_millis(USAGE_FLUSH_MS as u64)) {
            Ok(first) => first,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // idle: hand the last usage to the dataflow in an epoch of its own
                let epoch = (now_ms().max(0) as Epoch).max(state.last_epoch + 1);
                if let Some(batch) = state.usage_batch(usage_stream, epoch, true) {
                    state.last_epoch = epoch;
                    if dataflow.send(Command::Ingest { epoch, batches: vec![batch] }).is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut group = vec![first];
        while group.len() < 4096 {
            match rx.try_recv() {
                Ok(s) => group.push(s),
                Err(_) => break,
            }
        }
        let epoch = (now_ms().max(0) as Epoch).max(state.last_epoch + 1);
        let now = epoch as i64;
        // a new segment starts with the state before this group
        if let Err(e) = wal.rotate_if_full(|| state.checkpoint(&streams)) {
            tracing::error!(error = %e, "the write-ahead log failed; ingest stops");
            for sub in group {
                let _ = sub.reply.send(Err(Error::Log(e.to_string())));
            }
            return;
        }
        let mut receipts: Vec<Result<Receipt>> = Vec::with_capacity(group.len());
        let mut accepted: Vec<Vec<Event>> = vec![Vec::new(); streams.len()];
        // sizes of the accepted rows of metered streams, for the log
        let mut sizes: Vec<Vec<u32>> = vec![Vec::new(); streams.len()];
        // refused events per tenant, logged (rare; accepted usage is recounted from the records)
        let mut refused_usage: HashMap<Text, i64> = HashMap::default();
        let mut failed: Option<String> = None;
        for sub in &mut group {
            let s = &streams[sub.stream];
            let checked = check(s, sub.stream, &state, &sub.decoded);
            let refusal = checked.usage.iter().find_map(|(tenant, events, bytes)| state.ledger.check(tenant, &quotas.plan(tenant), now, *events, *bytes));
            if let Some(refusal) = refusal {
                // the whole request is refused; its events count as refused for their tenants
                for (tenant, events, _) in &checked.usage {
                    state.count_usage(tenant, now, Metric::Refused, *events as i64);
                    *refused_usage.entry(tenant.clone()).or_default() += *events as i64;
                }
                receipts.push(Err(Error::QuotaExceeded(Box::new(refusal))));
                continue;
            }
            let mut receipt = Receipt { accepted: checked.fresh.len() + checked.duplicates, duplicates: checked.duplicates, rejected: Vec::new(), epoch };
            // the rows move on (into the events, whose rows the log borrows): not copied
            let mut rows = std::mem::take(&mut sub.decoded.rows);
            for (i, size) in checked.fresh {
                accepted[sub.stream].push(state.admit(&streams, sub.stream, std::mem::take(&mut rows[i].1)));
                if s.metered {
                    sizes[sub.stream].push(size);
                }
            }
            for (tenant, events, bytes) in &checked.usage {
                state.count_usage(tenant, now, Metric::Events, *events as i64);
                state.count_usage(tenant, now, Metric::Bytes, *bytes as i64);
            }
            let mut refused = checked.refused;
            refused.sort_by_key(|r| r.line);
            for r in refused {
                receipt.rejected.push((r.line, r.error.clone()));
                let row = rejected_row(s, &r, now);
                accepted[rejected_stream].push(state.admit(&streams, rejected_stream, row));
            }
            receipts.push(Ok(receipt));
        }
        let mut batches = Vec::new();
        let mut to_archive = Vec::new();
        for (i, events) in accepted.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let max_ts = events.iter().map(|e| e.ts).max().unwrap_or(i64::MIN);
            let sizes = std::mem::take(&mut sizes[i]);
            match wal.append_ref(RecordRef { epoch, stream: &streams[i].name, max_ts, rows: EventRows(&events), sizes: &sizes }) {
                // the archive takes the record as logged: its bytes, not a copy of its rows
                Ok(logged) if archive.is_some() && !streams[i].weighted => to_archive.push(logged),
                Ok(_) => {}
                Err(e) => failed = Some(e.to_string()),
            }
            batches.push(Batch { epoch, stream: i, events, watermark: state.watermarks[i] });
        }
        if let (Some(u), false) = (usage_stream, refused_usage.is_empty()) {
            let minute = crate::quota::Period::Minute.start(now);
            let rows = refused_usage.iter().map(|(tenant, n)| usage_row(tenant, minute, Metric::Refused).into_iter().chain([Value::Int(*n)]).collect()).collect();
            if let Err(e) = wal.append(&Record { epoch, stream: streams[u].name.clone(), max_ts: minute, rows, sizes: Vec::new() }) {
                failed = Some(e.to_string());
            }
        }
        batches.extend(state.usage_batch(usage_stream, epoch, false));
        if failed.is_none()
            && let Err(e) = wal.commit()
        {
            failed = Some(e.to_string());
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
        if let Some((feed, _)) = &archive
            && !to_archive.is_empty()
        {
            // the archive writer may be gone at shutdown; the log keeps the records
            let _ = feed.send(to_archive);
        }
        // With an archive, a segment goes once archived (the archive is the history);
        // without, once its events have left retention.
        let truncated = match &archive {
            Some((_, progress)) => wal.truncate(|stream, _, max_epoch| match streams.iter().find(|s| s.name == stream) {
                Some(s) if !s.weighted => max_epoch <= progress.through(stream),
                _ => true,
            }),
            None => wal.truncate(|stream, max_ts, _| state.expired(&streams, stream, max_ts)),
        };
        if let Err(e) = truncated {
            // the segments stay; the next commit tries again
            tracing::warn!(error = %e, "could not delete expired log segments");
        }
        if dataflow.send(Command::Ingest { epoch, batches }).is_err() {
            return;
        }
        for (sub, receipt) in group.into_iter().zip(receipts) {
            let _ = sub.reply.send(receipt);
        }
    }
}

/// Events' rows as the log's sequence of rows.
struct EventRows<'a>(&'a [Event]);

impl serde::Serialize for EventRows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|e| &e.row))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_logged_by_reference_are_the_bytes_of_a_record() {
        let rows: Vec<Row> = vec![vec![Value::str("acme"), Value::Timestamp(7)], vec![Value::str("globex"), Value::Timestamp(9)]];
        let events: Vec<Event> = rows.iter().map(|row| Event { row: row.clone(), ts: 0, late_by: 0, weight: 1 }).collect();
        let sizes = vec![10, 12];
        let owned = Record { epoch: 3, stream: "events".into(), max_ts: 9, rows, sizes: sizes.clone() };
        let borrowed = RecordRef { epoch: 3, stream: "events", max_ts: 9, rows: EventRows(&events), sizes: &sizes };
        assert_eq!(bincode::serialize(&borrowed).unwrap(), bincode::serialize(&owned).unwrap());
    }
}
