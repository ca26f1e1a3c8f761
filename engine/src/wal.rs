//! The write-ahead log: every accepted event is here, fsync'd, before it is acknowledged.
//!
//! ```text
//!   <data-dir>/wal/00000001.log, 00000002.log, …     (a new segment every 64 MiB)
//!   record = [len: u32 LE][crc32 of payload: u32 LE][payload: bincode(Record)]
//! ```
//!
//! Appends are group-committed by the ingest gate: many requests' records are written
//! and then synced once. A crash can leave a torn record at the end of the last segment;
//! it was never acknowledged, so recovery cuts the segment back to the last whole
//! record. Damage anywhere else is reported, never skipped silently.
//!
//! Every segment opens with a [`Checkpoint`]: the last epoch and every stream's
//! watermark at that point. Replay can therefore start at any segment and rebuild
//! exactly the state the original run had, which is what lets sealed segments whose
//! events have all left retention be deleted ([`Wal::truncate`]): disk use and restart
//! time stay bounded by retention, however long Weir runs.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::Epoch;
use crate::value::Row;

/// The default size at which a new segment is started.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Threads that read and decode the log's segments at start ([`Wal::open_with`]).
pub const READERS: usize = 2;
const MAX_RECORD: usize = 1 << 30;

/// One logged batch: rows accepted into a stream in an epoch.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The epoch the rows were committed in.
    pub epoch: Epoch,
    /// The stream's name.
    pub stream: String,
    /// The largest event time among the rows.
    pub max_ts: i64,
    /// The rows, in stream column order.
    pub rows: Vec<Row>,
    /// Each row's size in bytes as received (for quotas; empty where not counted).
    pub sizes: Vec<u32>,
}

/// A [`Record`] to append, with its rows borrowed from wherever they are going next (the
/// gate's events for the dataflow) instead of copied: `rows` is anything that serializes
/// as a sequence of rows, and the bytes are those of a `Record`.
#[derive(Serialize)]
pub struct RecordRef<'a, R: Serialize> {
    /// As in [`Record`].
    pub epoch: Epoch,
    /// As in [`Record`].
    pub stream: &'a str,
    /// As in [`Record`].
    pub max_ts: i64,
    /// A sequence of rows.
    pub rows: R,
    /// As in [`Record`].
    pub sizes: &'a [u32],
}

/// A committed record as the log encoded it, for a reader that takes it later (the
/// archive writer): the encoded bytes are a fraction of the rows' memory, and the gate
/// hands them on without copying a row; the reader decodes.
#[derive(Debug)]
pub struct Logged {
    /// The record's epoch.
    pub epoch: Epoch,
    /// The record's stream.
    pub stream: String,
    /// `bincode` of the [`Entry::Events`] holding the record.
    payload: Vec<u8>,
}

impl Logged {
    /// Encodes a record (where there is no log entry to take it from: recovery).
    pub fn encode(record: &Record) -> Result<Logged> {
        let payload = encode(&EntryRef::Events(RecordRef { epoch: record.epoch, stream: &record.stream, max_ts: record.max_ts, rows: &record.rows, sizes: &record.sizes }))?;
        Ok(Logged { epoch: record.epoch, stream: record.stream.clone(), payload })
    }

    /// The record.
    pub fn decode(&self) -> Result<Record> {
        match bincode::deserialize(&self.payload) {
            Ok(Entry::Events(record)) => Ok(record),
            Ok(Entry::Checkpoint(_)) => Err(Error::Log("a logged record decoded as a checkpoint".into())),
            Err(e) => Err(Error::Log(format!("decoding a logged record: {e}"))),
        }
    }
}

fn encode<R: Serialize>(entry: &EntryRef<'_, R>) -> Result<Vec<u8>> {
    bincode::serialize(entry).map_err(|e| Error::Log(format!("encoding a record: {e}")))
}

/// The state at the start of a segment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last epoch committed before the segment.
    pub last_epoch: Epoch,
    /// Each stream's watermark before the segment (streams without events are absent).
    pub watermarks: Vec<(String, i64)>,
    /// The usage ledger before the segment (tenant, time, metric, amount), so that
    /// segments holding usage rows can be deleted with their events.
    pub usage: Vec<(String, i64, crate::quota::Metric, i64)>,
}

/// What the log holds, in order.
#[derive(Debug, Serialize, Deserialize)]
pub enum Entry {
    /// The first entry of every segment.
    Checkpoint(Checkpoint),
    /// Accepted rows.
    Events(Record),
}

/// A segment that is no longer written to, with the largest event time per stream and
/// its last epoch.
struct Sealed {
    number: u64,
    max_ts: Vec<(String, i64)>,
    max_epoch: Epoch,
}

fn note_max(max_ts: &mut Vec<(String, i64)>, stream: &str, ts: i64) {
    match max_ts.iter_mut().find(|(s, _)| s == stream) {
        Some((_, m)) => *m = (*m).max(ts),
        None => max_ts.push((stream.to_string(), ts)),
    }
}

/// The log, open for appending.
pub struct Wal {
    dir: PathBuf,
    file: File,
    segment: u64,
    written: u64,
    buffer: Vec<u8>,
    sealed: Vec<Sealed>,
    active_max_ts: Vec<(String, i64)>,
    active_max_epoch: Epoch,
    segment_bytes: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}.log"))
}

fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok()) {
            found.push(n);
        }
    }
    found.sort();
    Ok(found)
}

impl Wal {
    /// Opens the log in `dir`, calling `replay` with every entry in order, and leaves it
    /// ready to append after the last whole record.
    pub fn open(dir: &Path, segment_bytes: u64, replay: impl FnMut(Entry)) -> Result<Wal> {
        Wal::open_with(dir, segment_bytes, || |_: &mut Entry| {}, replay)
    }

    /// The same, reading and decoding the segments ahead of `replay` on [`READERS`]
    /// threads, each of which runs an entry through `prepare` (made once per thread by
    /// `prepared`) as it decodes it; `replay` still sees every entry in order. (Decoding
    /// is most of a restart's reading: a reader per core halves it.)
    pub fn open_with<P: FnMut(&mut Entry)>(dir: &Path, segment_bytes: u64, prepared: impl Fn() -> P + Sync, mut replay: impl FnMut(Entry)) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let all = segments(dir)?;
        let last = all.last().copied();
        let mut sealed = Vec::new();
        let mut active_max_ts = Vec::new();
        let mut active_max_epoch = 0;
        std::thread::scope(|scope| -> Result<()> {
            // reader r decodes the segments r, r + READERS, …, each whole, one ahead at most
            let readers: Vec<mpsc::Receiver<Result<(Vec<Entry>, u64)>>> = (0..READERS.min(all.len()))
                .map(|r| {
                    let (tx, rx) = mpsc::sync_channel(1);
                    let (all, prepared) = (&all, &prepared);
                    let spawned = std::thread::Builder::new().name(format!("weir-log-read-{r}")).spawn_scoped(scope, move || {
                        let mut prepare = prepared();
                        for &n in all.iter().skip(r).step_by(READERS) {
                            let mut entries = Vec::new();
                            let read = read_segment(&segment_path(dir, n), Some(n) == last, &mut |mut entry| {
                                prepare(&mut entry);
                                entries.push(entry);
                            });
                            let failed = read.is_err();
                            if tx.send(read.map(|valid| (entries, valid))).is_err() || failed {
                                return;
                            }
                        }
                    });
                    spawned.map(|_| rx).map_err(|e| Error::io("starting a log reader", e))
                })
                .collect::<Result<_>>()?;
            for (k, &n) in all.iter().enumerate() {
                let path = segment_path(dir, n);
                let (entries, valid) = readers[k % READERS].recv().map_err(|_| Error::Log(format!("the reader of {} stopped", path.display())))??;
                let mut max_ts = Vec::new();
                let mut max_epoch = 0;
                for entry in entries {
                    if let Entry::Events(r) = &entry {
                        note_max(&mut max_ts, &r.stream, r.max_ts);
                        max_epoch = max_epoch.max(r.epoch);
                    }
                    replay(entry);
                }
                if Some(n) == last {
                    active_max_ts = max_ts;
                    active_max_epoch = max_epoch;
                    let len = fs::metadata(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
                    if valid < len {
                        tracing::warn!(segment = %path.display(), valid, len, "cutting a torn record from the end of the log");
                        let f = OpenOptions::new().write(true).open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                        f.set_len(valid).map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
                        f.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
                    }
                } else {
                    sealed.push(Sealed { number: n, max_ts, max_epoch });
                }
            }
            Ok(())
        })?;
        let segment = last.unwrap_or(1);
        let path = segment_path(dir, segment);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let written = file.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
        let mut wal = Wal { dir: dir.to_path_buf(), file, segment, written, buffer: Vec::new(), sealed, active_max_ts, active_max_epoch, segment_bytes };
        if written == 0 {
            // a new (or emptied) log starts with the empty state
            wal.write_checkpoint(&Checkpoint::default())?;
            sync_dir(dir)?;
        }
        Ok(wal)
    }

    /// Appends one framed entry to the pending buffer.
    fn frame<R: Serialize>(&mut self, entry: &EntryRef<'_, R>) -> Result<Vec<u8>> {
        let payload = encode(entry)?;
        self.buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buffer.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        self.buffer.extend_from_slice(&payload);
        Ok(payload)
    }

    fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let pending = std::mem::take(&mut self.buffer);
        self.frame(&EntryRef::<()>::Checkpoint(checkpoint))?;
        let result = self.file.write_all(&self.buffer).and_then(|_| self.file.sync_data());
        self.written += self.buffer.len() as u64;
        self.buffer = pending;
        result.map_err(|e| Error::io("writing a checkpoint to the write-ahead log", e))
    }

    /// Adds a record to the pending group; nothing is durable until [`Wal::commit`].
    pub fn append(&mut self, record: &Record) -> Result<()> {
        self.append_ref(RecordRef { epoch: record.epoch, stream: &record.stream, max_ts: record.max_ts, rows: &record.rows, sizes: &record.sizes }).map(drop)
    }

    /// [`Wal::append`] of rows held elsewhere; returns the record as logged.
    pub fn append_ref<R: Serialize>(&mut self, record: RecordRef<'_, R>) -> Result<Logged> {
        note_max(&mut self.active_max_ts, record.stream, record.max_ts);
        self.active_max_epoch = self.active_max_epoch.max(record.epoch);
        let (epoch, stream) = (record.epoch, record.stream.to_string());
        let payload = self.frame(&EntryRef::Events(record))?;
        Ok(Logged { epoch, stream, payload })
    }

    /// Writes the pending group and syncs it to disk. `before` is the state before the
    /// group: if the group starts a new segment, it is that segment's checkpoint.
    /// Starts a new segment, opening with `checkpoint` (the state before the next
    /// appends), if the active one has reached the segment size.
    pub fn rotate_if_full(&mut self, checkpoint: impl FnOnce() -> Checkpoint) -> Result<()> {
        if self.written > 0 && self.written >= self.segment_bytes {
            self.rotate(&checkpoint())?;
        }
        Ok(())
    }

    /// Writes the appended records and syncs them to disk.
    pub fn commit(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self.file.write_all(&self.buffer).and_then(|_| self.file.sync_data());
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        result.map_err(|e| Error::io("appending to the write-ahead log", e))
    }

    fn rotate(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let max_ts = std::mem::take(&mut self.active_max_ts);
        let max_epoch = std::mem::take(&mut self.active_max_epoch);
        self.sealed.push(Sealed { number: self.segment, max_ts, max_epoch });
        self.segment += 1;
        let path = segment_path(&self.dir, self.segment);
        self.file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        self.written = 0;
        self.write_checkpoint(checkpoint)?;
        sync_dir(&self.dir)
    }

    /// Deletes the oldest sealed segments that are no longer needed: those whose every
    /// stream's events `done(stream, max_ts, max_epoch)` says are (expired, or archived,
    /// given their largest event time and the segment's last epoch); returns how many
    /// were deleted.
    pub fn truncate(&mut self, done: impl Fn(&str, i64, Epoch) -> bool) -> Result<usize> {
        let deletable = self.sealed.iter().take_while(|s| s.max_ts.iter().all(|(stream, ts)| done(stream, *ts, s.max_epoch))).count();
        for s in self.sealed.drain(..deletable) {
            let path = segment_path(&self.dir, s.number);
            fs::remove_file(&path).map_err(|e| Error::io(format!("deleting {}", path.display()), e))?;
            tracing::info!(segment = %path.display(), "deleted a log segment that is no longer needed");
        }
        if deletable > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deletable)
    }

    /// The checkpoint the log in `dir` starts from (the first entry of its oldest
    /// segment), if there is a log: every epoch up to its `last_epoch` was in segments
    /// that have been deleted.
    pub fn first_checkpoint(dir: &Path) -> Result<Option<Checkpoint>> {
        if !dir.exists() {
            return Ok(None);
        }
        let Some(&first) = segments(dir)?.first() else { return Ok(None) };
        let path = segment_path(dir, first);
        let file = File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut reader = BufReader::new(file);
        let mut header = [0u8; 8];
        if read_full(&mut reader, &mut header).map_err(|e| Error::io(format!("reading {}", path.display()), e))? < 8 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD {
            return Ok(None);
        }
        let mut payload = vec![0; len];
        if read_full(&mut reader, &mut payload).map_err(|e| Error::io(format!("reading {}", path.display()), e))? < len || crc32fast::hash(&payload) != u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) {
            return Ok(None);
        }
        match bincode::deserialize(&payload) {
            Ok(Entry::Checkpoint(c)) => Ok(Some(c)),
            _ => Ok(None),
        }
    }

    /// How many segment files the log has.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }
}

/// [`Entry`] with borrowed rows, so that appending does not copy them: serializes to
/// the same bytes as `Entry`.
#[derive(Serialize)]
enum EntryRef<'a, R: Serialize> {
    Checkpoint(&'a Checkpoint),
    Events(RecordRef<'a, R>),
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// Reads a segment's records; returns the byte length of its whole records. A bad
/// record ends a last segment (a torn write) but is an error anywhere else.
fn read_segment(path: &Path, is_last: bool, replay: &mut impl FnMut(Entry)) -> Result<u64> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset: u64 = 0;
    let mut header = [0u8; 8];
    let mut payload = Vec::new();
    loop {
        match read_full(&mut reader, &mut header) {
            Ok(0) => return Ok(offset),
            Ok(8) => {}
            Ok(_) => return torn(path, is_last, offset, "a partial record header"),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return torn(path, is_last, offset, "an impossible record length");
        }
        payload.resize(len, 0);
        match read_full(&mut reader, &mut payload) {
            Ok(n) if n == len => {}
            Ok(_) => return torn(path, is_last, offset, "a partial record"),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        if crc32fast::hash(&payload) != crc {
            return torn(path, is_last, offset, "a record whose checksum does not match");
        }
        let entry: Entry = bincode::deserialize(&payload).map_err(|e| Error::Log(format!("{} at byte {offset}: undecodable record: {e}", path.display())))?;
        replay(entry);
        offset += 8 + len as u64;
    }
}

fn torn(path: &Path, is_last: bool, offset: u64, what: &str) -> Result<u64> {
    if is_last {
        Ok(offset)
    } else {
        Err(Error::Log(format!("{} has {what} at byte {offset}, and it is not the last segment", path.display())))
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn record(epoch: Epoch, n: i64) -> Record {
        Record { epoch, stream: "events".into(), max_ts: n, rows: vec![vec![Value::Int(n), Value::str("x")]], sizes: vec![] }
    }

    fn epochs(dir: &Path) -> Vec<Epoch> {
        let mut seen = Vec::new();
        Wal::open(dir, SEGMENT_BYTES, |e| {
            if let Entry::Events(r) = e {
                seen.push(r.epoch)
            }
        })
        .unwrap();
        seen
    }

    #[test]
    fn a_record_as_logged_decodes_to_the_record_appended() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        let appended = record(4, 7);
        let logged = wal.append_ref(RecordRef { epoch: 4, stream: "events", max_ts: 7, rows: &appended.rows, sizes: &appended.sizes }).unwrap();
        assert_eq!((logged.epoch, logged.stream.as_str()), (4, "events"));
        let decoded = logged.decode().unwrap();
        assert_eq!((decoded.epoch, decoded.max_ts, &decoded.rows), (4, 7, &appended.rows));
        let encoded = Logged::encode(&appended).unwrap().decode().unwrap();
        assert_eq!((encoded.epoch, encoded.stream, encoded.rows), (4, "events".to_string(), appended.rows));
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |e| assert!(matches!(e, Entry::Checkpoint(_)), "empty log")).unwrap();
        wal.append(&record(1, 10)).unwrap();
        wal.append(&record(2, 20)).unwrap();
        wal.commit().unwrap();
        drop(wal);
        // simulate a crash halfway through writing a third record
        let path = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        assert_eq!(epochs(dir.path()), vec![1, 2]);
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        wal.append(&record(3, 30)).unwrap();
        wal.commit().unwrap();
        drop(wal);
        assert_eq!(epochs(dir.path()), vec![1, 2, 3]);
    }

    #[test]
    fn archived_segments_are_deleted_by_their_last_epoch_and_the_first_checkpoint_says_where_the_log_starts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Wal::first_checkpoint(dir.path()).unwrap(), None);
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        for epoch in [10, 20, 30] {
            wal.append(&record(epoch, 0)).unwrap();
            wal.append(&record(epoch, 1)).unwrap();
            wal.commit().unwrap();
            wal.rotate(&Checkpoint { last_epoch: epoch, watermarks: vec![], usage: vec![] }).unwrap();
        }
        assert_eq!(Wal::first_checkpoint(dir.path()).unwrap().map(|c| c.last_epoch), Some(0));
        // archived through epoch 20: the segments ending at 10 and 20 go, the one at 30 stays
        assert_eq!(wal.truncate(|_, _, max_epoch| max_epoch <= 20).unwrap(), 2);
        assert_eq!(Wal::first_checkpoint(dir.path()).unwrap().map(|c| c.last_epoch), Some(20));
        drop(wal);
        // the segment epochs are known again after a reopen
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        assert_eq!(wal.truncate(|_, _, max_epoch| max_epoch <= 29).unwrap(), 0);
        assert_eq!(wal.truncate(|_, _, max_epoch| max_epoch <= 30).unwrap(), 1);
        assert_eq!(epochs(dir.path()), Vec::<Epoch>::new());
    }

    #[test]
    fn segments_read_ahead_on_several_threads_replay_in_order_each_entry_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        for epoch in 1..=7 {
            wal.append(&record(epoch, epoch as i64)).unwrap();
            wal.commit().unwrap();
            wal.rotate(&Checkpoint { last_epoch: epoch, watermarks: vec![], usage: vec![] }).unwrap();
        }
        drop(wal);
        let threads = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let prepared = || {
            threads.lock().unwrap().insert(std::thread::current().name().map(str::to_string));
            |entry: &mut Entry| {
                if let Entry::Events(r) = entry {
                    r.max_ts *= 10;
                }
            }
        };
        let mut seen = Vec::new();
        Wal::open_with(dir.path(), SEGMENT_BYTES, prepared, |e| {
            if let Entry::Events(r) = e {
                seen.push((r.epoch, r.max_ts));
            }
        })
        .unwrap();
        assert_eq!(seen, (1..=7).map(|e| (e, e as i64 * 10)).collect::<Vec<_>>());
        assert_eq!(threads.into_inner().unwrap().len(), READERS, "one preparation per reader thread");
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        wal.append(&record(1, 10)).unwrap();
        wal.commit().unwrap();
        wal.rotate(&Checkpoint::default()).unwrap();
        wal.append(&record(2, 20)).unwrap();
        wal.commit().unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(Wal::open(dir.path(), SEGMENT_BYTES, |_| {}), Err(Error::Log(_))));
    }

    #[test]
    fn expired_segments_are_deleted_oldest_first_and_replay_starts_at_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), SEGMENT_BYTES, |_| {}).unwrap();
        for (epoch, ts) in [(1, 100), (2, 500), (3, 200)] {
            wal.append(&record(epoch, ts)).unwrap();
            wal.commit().unwrap();
            let state = Checkpoint { last_epoch: epoch, watermarks: vec![("events".into(), ts)], usage: vec![] };
            wal.rotate(&state).unwrap();
        }
        assert_eq!(wal.segments(), 4);
        // segment 2 (max 500) is not expired: only segment 1 may go, though 3 could
        assert_eq!(wal.truncate(|_, ts, _| ts < 300).unwrap(), 1);
        assert_eq!(wal.segments(), 3);
        drop(wal);
        let mut entries = Vec::new();
        Wal::open(dir.path(), SEGMENT_BYTES, |e| entries.push(e)).unwrap();
        let Entry::Checkpoint(first) = &entries[0] else { panic!("replay starts at a checkpoint") };
        assert_eq!(first, &Checkpoint { last_epoch: 1, watermarks: vec![("events".into(), 100)], usage: vec![] });
        let replayed: Vec<Epoch> = entries.iter().filter_map(|e| if let Entry::Events(r) = e { Some(r.epoch) } else { None }).collect();
        assert_eq!(replayed, vec![2, 3]);
    }
}
