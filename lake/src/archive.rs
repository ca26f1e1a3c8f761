//! The raw archive: every accepted row of every stream, appended to a Delta table per
//! stream, partitioned by tenant and date.
//!
//! ```text
//!   <lake>/_archive/<stream>/   columns: the stream's, `_epoch`, `_seq`, `date` (UTC date of the event time)
//!                               partitions: tenant=…/date=…/
//!                               every commit's info: weir.epoch = the last epoch it holds
//! ```
//!
//! The writer takes the engine's feed of committed epochs, appends them every
//! `archive.interval`, and reports how far each stream is archived, which lets the
//! engine delete log segments. A commit holds both the rows and the epoch they reach,
//! so the archive never holds an epoch twice: after a failed append (whose commit may
//! or may not have landed) the table's last commit says what to write again. When the
//! store is unreachable the rows wait in memory and in the log, and are written when it
//! is back.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deltalake::datafusion::catalog::TableProvider;
use futures::StreamExt;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use serde_json::json;
use weir_engine::archive::{ArchiveSource, BoxFuture, Epochs, Progress};
use weir_engine::schema::{Column, DataType, Stream};
use weir_engine::time::Epoch;
use weir_engine::value::{Row, Value};
use weir_engine::wal::{Logged, Record};

use crate::{AsOf, Error, Lake, Result, Url};

/// The column holding the epoch a row was committed in.
pub const EPOCH: &str = "_epoch";

/// The column holding a row's position among its epoch's rows (the order the gate
/// admitted them in, which recovery repeats).
pub const SEQ: &str = "_seq";

/// The folder of the archive tables inside the lake.
pub const FOLDER: &str = "_archive";

/// The archive of a lake's streams.
#[derive(Debug)]
pub struct Archive {
    lake: Arc<Lake>,
    /// The archived streams (every stream but the weighted `usage`, which the
    /// `usage_per_*` views summarize).
    streams: Vec<Stream>,
    /// Per stream, the last epoch its table held at start.
    at_start: HashMap<String, Option<Epoch>>,
}

/// A stream's archive table columns: the stream's, then `_epoch`, `_seq` and the date.
fn archive_columns(stream: &Stream) -> Vec<Column> {
    let mut columns = stream.columns.to_vec();
    columns.push(Column::new(EPOCH, DataType::Int, false));
    columns.push(Column::new(SEQ, DataType::Int, false));
    columns.push(Column::new(date_column(stream), DataType::String, false));
    columns
}

/// The partition column holding the event date: `date`, or `event_date` if the stream
/// has a column named `date`.
pub fn date_column(stream: &Stream) -> &'static str {
    if stream.columns.iter().any(|c| c.name == "date") { "event_date" } else { "date" }
}

const DAY_MS: i64 = 86_400_000;

fn utc_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// Rows waiting to be appended, and what is known of each table.
#[derive(Default)]
struct Pending {
    /// As the log encoded them: decoded only for the append (a fraction of the rows' memory
    /// while they wait).
    by_stream: BTreeMap<String, Vec<Logged>>,
    /// The last epoch taken from the feed.
    position: Epoch,
    /// Streams whose last append failed: whether it landed is unknown until the table
    /// is read again.
    unsure: HashSet<String>,
    /// Appends per stream since its table was last compacted.
    appends: HashMap<String, usize>,
    compact_after: usize,
}

impl Archive {
    /// The archive of `streams` in `lake`, reading how far each table reaches. Fails if
    /// the store cannot be read: guessing would write epochs twice or lose them.
    pub async fn open(lake: Arc<Lake>, streams: &[Stream]) -> Result<Archive> {
        let streams: Vec<Stream> = streams.iter().filter(|s| !s.weighted).cloned().collect();
        let mut archive = Archive { lake, streams, at_start: HashMap::new() };
        for s in &archive.streams {
            if archive.lake.open(archive.table_url(&s.name)?, AsOf::Latest).await?.is_none() {
                // an empty table from the start: SQL over it answers nothing, not "no such table"
                let empty = weir_engine::columnar::rows_to_batch(&archive_columns(s), &[])?;
                archive.write(s, vec![empty], CommitProperties::default().with_metadata([("weir.stream".to_string(), json!(s.name))])).await?;
            }
            let through = archive.last_epoch(&s.name).await?;
            archive.at_start.insert(s.name.clone(), through);
        }
        Ok(archive)
    }

    /// The URL of a stream's table.
    pub fn table_url(&self, stream: &str) -> Result<Url> {
        self.lake.root.join(&format!("{FOLDER}/{stream}/")).map_err(|e| Error::Location(e.to_string()))
    }

    /// The names of the archived streams.
    pub fn streams(&self) -> Vec<String> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }

    /// The last epoch a stream's table holds, from its latest append (compactions, by
    /// Weir or other tools, add commits without one).
    async fn last_epoch(&self, stream: &str) -> Result<Option<Epoch>> {
        let Some(table) = self.lake.open(self.table_url(stream)?, AsOf::Latest).await? else { return Ok(None) };
        // the latest commits first (one of the last two, unless another tool wrote)
        for limit in [Some(16), None] {
            let mut history = table.history(limit);
            while let Some(commit) = history.next().await {
                if let Some(epoch) = commit?.info.get("weir.epoch").and_then(|e| e.as_u64()) {
                    return Ok(Some(epoch));
                }
            }
        }
        Ok(None)
    }

    /// Compacts a stream's table: the small files of each partition are rewritten as
    /// few large ones (Delta's `OPTIMIZE`); readers and time travel are unaffected.
    /// Returns the files removed and added.
    pub async fn compact(&self, stream: &str) -> Result<(u64, u64)> {
        let Some(table) = self.lake.open(self.table_url(stream)?, AsOf::Latest).await? else { return Ok((0, 0)) };
        let (_, metrics) = table.optimize().await?;
        Ok((metrics.num_files_removed, metrics.num_files_added))
    }

    /// A stream's archive as a DataFusion table, if anything was archived.
    pub async fn table(&self, stream: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.lake.provider(self.table_url(stream)?).await
    }

    /// Appends the engine's feed every `interval` until `stopping`, reporting progress;
    /// compacts a stream's table after every `compact_after` appends to it (0: never).
    pub async fn run(self: Arc<Self>, mut feed: Epochs, progress: Arc<Progress>, interval: Duration, compact_after: usize, mut stopping: tokio::sync::watch::Receiver<bool>) {
        let mut pending = Pending { compact_after, ..Pending::default() };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stopping.wait_for(|s| *s) => true,
            };
            while let Ok(group) = feed.try_recv() {
                for record in group {
                    pending.position = pending.position.max(record.epoch);
                    pending.by_stream.entry(record.stream.clone()).or_default().push(record);
                }
            }
            self.flush(&mut pending, &progress).await;
            if last {
                return;
            }
        }
    }

    /// Appends what is pending, stream by stream; a stream that fails keeps its rows
    /// for the next round.
    async fn flush(&self, pending: &mut Pending, progress: &Progress) {
        for s in &self.streams {
            let Some(records) = pending.by_stream.get_mut(&s.name) else { continue };
            if records.is_empty() {
                continue;
            }
            if pending.unsure.contains(&s.name) {
                match self.last_epoch(&s.name).await {
                    Ok(through) => {
                        let through = through.unwrap_or(0);
                        records.retain(|r| r.epoch > through);
                        pending.unsure.remove(&s.name);
                    }
                    Err(e) => {
                        tracing::warn!(stream = %s.name, error = %e, "archive unreachable; retrying at the next interval");
                        continue;
                    }
                }
            }
            if records.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let epoch = records.last().map_or(0, |r| r.epoch);
            // (decoded one record at a time, as the append takes them)
            match self.append_rows(s, epoch, records.iter().map(|r| r.decode().map_err(Error::from))).await {
                Ok(rows) => {
                    tracing::debug!(stream = %s.name, rows, seconds = started.elapsed().as_secs_f64(), "archived");
                    records.clear();
                    let appends = pending.appends.entry(s.name.clone()).or_default();
                    *appends += 1;
                    if pending.compact_after > 0 && *appends >= pending.compact_after {
                        let started = std::time::Instant::now();
                        match self.compact(&s.name).await {
                            Ok((removed, added)) => {
                                *appends = 0;
                                tracing::info!(stream = %s.name, removed, added, seconds = started.elapsed().as_secs_f64(), "compacted the archive");
                            }
                            // the next append tries again; reads are correct either way
                            Err(e) => tracing::warn!(stream = %s.name, error = %e, "compacting the archive failed"),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %s.name, error = %e, "archiving failed; retrying at the next interval");
                    pending.unsure.insert(s.name.clone());
                }
            }
        }
        for s in &self.streams {
            let through = match pending.by_stream.get(&s.name).and_then(|r| r.first()) {
                Some(first) => first.epoch - 1,
                None => pending.position,
            };
            progress.archived(&s.name, through);
        }
    }

    /// Appends records of one stream (in epoch order, none already archived) as one
    /// commit recording the last epoch.
    pub async fn append(&self, stream: &Stream, records: &[Record]) -> Result<()> {
        let epoch = records.last().map_or(0, |r| r.epoch);
        self.append_rows(stream, epoch, records.iter().map(Ok)).await.map(drop)
    }

    /// [`Archive::append`] of records as they come (borrowed, or decoded one at a time),
    /// the last of epoch `epoch`; returns how many rows were written.
    async fn append_rows<R: Borrow<Record> + Send>(&self, stream: &Stream, epoch: Epoch, records: impl Iterator<Item = Result<R>> + Send) -> Result<usize> {
        let columns = archive_columns(stream);
        let mut batches = Vec::new();
        let mut rows: Vec<Row> = Vec::new();
        let mut written = 0usize;
        let mut misfits = 0usize;
        // (the date column of the last row's day: consecutive rows mostly share a day)
        let mut day: Option<(i64, Value)> = None;
        for record in records {
            let record = record?;
            let record = record.borrow();
            for (seq, row) in record.rows.iter().enumerate() {
                // rows logged under an earlier schema of the stream (another column count)
                // cannot be archived as this one; replay skips them too
                if row.len() != stream.columns.len() {
                    misfits += 1;
                    continue;
                }
                let ts = match row.get(stream.time) {
                    Some(Value::Timestamp(t)) => *t,
                    _ => 0,
                };
                let d = ts.div_euclid(DAY_MS);
                let date = match &day {
                    Some((at, date)) if *at == d => date.clone(),
                    _ => day.insert((d, Value::str(&utc_date(ts)))).1.clone(),
                };
                rows.push(row.iter().cloned().chain([Value::Int(record.epoch as i64), Value::Int(seq as i64), date]).collect());
                written += 1;
                if rows.len() == 65_536 {
                    batches.push(weir_engine::columnar::rows_to_batch(&columns, &std::mem::take(&mut rows))?);
                }
            }
        }
        if !rows.is_empty() {
            batches.push(weir_engine::columnar::rows_to_batch(&columns, &rows)?);
        }
        if misfits > 0 {
            tracing::warn!(stream = %stream.name, rows = misfits, "rows logged under another schema of the stream were not archived");
        }
        if batches.is_empty() {
            // nothing to write (the log keeps such records until its segment goes)
            return Ok(0);
        }
        // One attempt per commit: if a commit's put lands but its answer is lost, a retry
        // would commit the same rows again as the next version; instead the append
        // fails, and the next round reads the table's position before writing.
        let commit = CommitProperties::default()
            .with_metadata([("weir.epoch".to_string(), json!(epoch)), ("weir.stream".to_string(), json!(stream.name))])
            .with_max_retries(0);
        self.write(stream, batches, commit).await.map(|()| written)
    }

    /// Appends batches (of [`archive_columns`]) to a stream's table, creating it if need be.
    async fn write(&self, stream: &Stream, batches: Vec<deltalake::arrow::record_batch::RecordBatch>, commit: CommitProperties) -> Result<()> {
        let table = self.lake.open_or_new(self.table_url(&stream.name)?).await?;
        let tenant = stream.columns[stream.tenant].name.clone();
        let date = date_column(stream);
        table
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_partition_columns([tenant, date.to_string()])
            // a column added to the stream is added to the table
            .with_schema_mode(SchemaMode::Merge)
            // appends are frequent and each adds a file per tenant and date: a checkpoint
            // every 10 commits (Delta's default is 100) keeps opening the table cheap
            .with_configuration([("delta.checkpointInterval", Some("10"))])
            .with_commit_properties(commit)
            .await?;
        Ok(())
    }

    async fn load_rows(&self, stream: &Stream, through: Epoch, since: i64) -> Result<Vec<Row>> {
        let Some(provider) = self.table(&stream.name).await? else { return Ok(Vec::new()) };
        let schema = provider.schema();
        let ctx = SessionContext::new();
        ctx.register_table("archived", provider)?;
        let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        // a column the stream has gained since rows were archived reads as its default
        // (or NULL) in those rows, whether the table has it yet or not
        let columns: Vec<String> = stream
            .columns
            .iter()
            .zip(&stream.defaults)
            .map(|(c, default)| {
                let name = quote(&c.name);
                let default = match default {
                    Some(Value::Str(s)) => Some(format!("'{}'", s.replace('\'', "''"))),
                    Some(Value::Int(i)) => Some(i.to_string()),
                    Some(Value::Float(f)) => Some(format!("{f:?}")),
                    Some(Value::Bool(b)) => Some(b.to_string()),
                    _ => None,
                };
                match (schema.field_with_name(&c.name).is_ok(), default) {
                    (true, None) => name,
                    (true, Some(d)) => format!("coalesce({name}, {d}) AS {name}"),
                    (false, Some(d)) => format!("{d} AS {name}"),
                    (false, None) => format!("NULL AS {name}"),
                }
            })
            .collect();
        let mut sql = format!("SELECT {} FROM archived WHERE {} <= {through}", columns.join(", "), quote(EPOCH));
        if since > 0 {
            sql.push_str(&format!(" AND {} >= '{}' AND {} >= to_timestamp_millis({since})", quote(date_column(stream)), utc_date(since), quote(&stream.columns[stream.time].name)));
        }
        // in the order the gate admitted them (tables written before `_seq` have none)
        let order = if schema.field_with_name(SEQ).is_ok() { format!("{}, {}", quote(EPOCH), quote(SEQ)) } else { quote(EPOCH) };
        sql.push_str(&format!(" ORDER BY {order}"));
        let batches = ctx.sql(&sql).await?.collect().await?;
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(weir_engine::columnar::batch_to_rows(batch)?);
        }
        Ok(rows)
    }
}

impl ArchiveSource for Archive {
    fn archived_through(&self, stream: &str) -> Option<Epoch> {
        self.at_start.get(stream).copied().flatten()
    }

    fn load<'a>(&'a self, stream: &'a Stream, through: Epoch, since: i64) -> BoxFuture<'a, weir_engine::Result<Vec<Row>>> {
        Box::pin(async move { self.load_rows(stream, through, since).await.map_err(|e| weir_engine::Error::Log(format!("reading the archive of {}: {e}", stream.name))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::schema::TimePolicy;

    fn orders(extra: bool) -> Stream {
        let mut columns = vec![Column::new("tenant", DataType::String, false), Column::new("ts", DataType::Timestamp, false), Column::new("amount", DataType::Int, false)];
        if extra {
            columns.push(Column::new("currency", DataType::String, false));
        }
        let mut s = Stream::new("orders", columns, "tenant", "ts", None, TimePolicy::DEFAULT).unwrap();
        if extra {
            s.defaults[3] = Some(Value::str("EUR"));
        }
        s
    }

    fn record(epoch: Epoch, rows: Vec<Row>) -> Record {
        Record { epoch, stream: "orders".into(), max_ts: 0, rows, sizes: vec![] }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_record_their_epoch_recovery_reads_rows_in_admission_order_and_a_new_column_reads_as_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Arc::new(Lake::in_dir(dir.path()).unwrap());
        let v1 = orders(false);
        let archive = Archive::open(lake.clone(), std::slice::from_ref(&v1)).await.unwrap();
        assert_eq!(archive.archived_through("orders"), None);
        // within an epoch, a later row may have an earlier time: the order is kept
        let row = |t: &str, ts: i64, amount: i64| vec![Value::str(t), Value::Timestamp(ts), Value::Int(amount)];
        archive.append(&v1, &[record(5, vec![row("a", 2_000, 1), row("b", 1_000, 2), row("a", 1_500, 3)])]).await.unwrap();
        archive.append(&v1, &[record(7, vec![row("a", 3_000, 4)]), record(9, vec![row("b", 4_000, 5)])]).await.unwrap();
        archive.compact("orders").await.unwrap();

        // a compaction does not hide the position; the stream then gains a column
        let v2 = orders(true);
        let archive = Archive::open(lake.clone(), std::slice::from_ref(&v2)).await.unwrap();
        assert_eq!(archive.archived_through("orders"), Some(9));
        archive.append(&v2, &[record(11, vec![vec![Value::str("c"), Value::Timestamp(5_000), Value::Int(6), Value::str("USD")]])]).await.unwrap();
        let amounts = |rows: &[Row]| rows.iter().map(|r| (r[2].clone(), r[3].clone())).collect::<Vec<_>>();
        let through_9 = archive.load(&v2, 9, i64::MIN).await.unwrap();
        let eur = Value::str("EUR");
        assert_eq!(amounts(&through_9), vec![(Value::Int(1), eur.clone()), (Value::Int(2), eur.clone()), (Value::Int(3), eur.clone()), (Value::Int(4), eur.clone()), (Value::Int(5), eur)]);
        assert_eq!(archive.load(&v2, 11, i64::MIN).await.unwrap()[5][3], Value::str("USD"));
        // the retention bound: rows older than `since` stay in the archive
        assert_eq!(archive.load(&v2, 11, 3_000).await.unwrap().len(), 3);
        // rows of the old schema in the log are skipped, not archived wrongly
        archive.append(&v2, &[record(12, vec![row("d", 6_000, 7)])]).await.unwrap();
        assert_eq!(archive.load(&v2, 12, i64::MIN).await.unwrap().len(), 6);
        assert_eq!(Archive::open(lake, std::slice::from_ref(&v2)).await.unwrap().archived_through("orders"), Some(11));
    }
}
