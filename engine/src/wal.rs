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

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::Epoch;
use crate::value::Row;

const SEGMENT_BYTES: u64 = 64 << 20;
const MAX_RECORD: usize = 1 << 30;

/// One logged batch: rows accepted into a stream in an epoch.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The epoch the rows were committed in.
    pub epoch: Epoch,
    /// The stream's name.
    pub stream: String,
    /// The rows, in stream column order.
    pub rows: Vec<Row>,
}

/// The log, open for appending.
pub struct Wal {
    dir: PathBuf,
    file: File,
    segment: u64,
    written: u64,
    buffer: Vec<u8>,
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
    /// Opens the log in `dir`, calling `replay` with every record in order, and leaves it
    /// ready to append after the last whole record.
    pub fn open(dir: &Path, mut replay: impl FnMut(Record)) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let all = segments(dir)?;
        let last = all.last().copied();
        for &n in &all {
            let path = segment_path(dir, n);
            let valid = read_segment(&path, Some(n) == last, &mut replay)?;
            if Some(n) == last {
                let len = fs::metadata(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
                if valid < len {
                    tracing::warn!(segment = %path.display(), valid, len, "cutting a torn record from the end of the log");
                    let f = OpenOptions::new().write(true).open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                    f.set_len(valid).map_err(|e| Error::io(format!("truncating {}", path.display()), e))?;
                    f.sync_all().map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
                }
            }
        }
        let segment = last.unwrap_or(1);
        let path = segment_path(dir, segment);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let written = file.metadata().map_err(|e| Error::io(format!("reading {}", path.display()), e))?.len();
        if last.is_none() {
            sync_dir(dir)?;
        }
        Ok(Wal { dir: dir.to_path_buf(), file, segment, written, buffer: Vec::new() })
    }

    /// Adds a record to the pending group; nothing is durable until [`Wal::commit`].
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let payload = bincode::serialize(record).map_err(|e| Error::Log(format!("encoding a record: {e}")))?;
        self.buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buffer.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        self.buffer.extend_from_slice(&payload);
        Ok(())
    }

    /// Writes the pending group and syncs it to disk.
    pub fn commit(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.written > 0 && self.written + self.buffer.len() as u64 > SEGMENT_BYTES {
            self.rotate()?;
        }
        let result = self.file.write_all(&self.buffer).and_then(|_| self.file.sync_data());
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        result.map_err(|e| Error::io("appending to the write-ahead log", e))
    }

    fn rotate(&mut self) -> Result<()> {
        self.segment += 1;
        let path = segment_path(&self.dir, self.segment);
        self.file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        self.written = 0;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// Reads a segment's records; returns the byte length of its whole records. A bad
/// record ends a last segment (a torn write) but is an error anywhere else.
fn read_segment(path: &Path, is_last: bool, replay: &mut impl FnMut(Record)) -> Result<u64> {
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
        let record: Record = bincode::deserialize(&payload).map_err(|e| Error::Log(format!("{} at byte {offset}: undecodable record: {e}", path.display())))?;
        replay(record);
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
        Record { epoch, stream: "events".into(), rows: vec![vec![Value::Int(n), Value::str("x")]] }
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), |_| panic!("empty log")).unwrap();
        wal.append(&record(1, 10)).unwrap();
        wal.append(&record(2, 20)).unwrap();
        wal.commit().unwrap();
        drop(wal);
        // simulate a crash halfway through writing a third record
        let path = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let mut seen = Vec::new();
        let mut wal = Wal::open(dir.path(), |r| seen.push(r.epoch)).unwrap();
        assert_eq!(seen, vec![1, 2]);
        wal.append(&record(3, 30)).unwrap();
        wal.commit().unwrap();
        drop(wal);
        let mut seen = Vec::new();
        Wal::open(dir.path(), |r| seen.push(r.epoch)).unwrap();
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), |_| {}).unwrap();
        wal.append(&record(1, 10)).unwrap();
        wal.commit().unwrap();
        wal.rotate().unwrap();
        wal.append(&record(2, 20)).unwrap();
        wal.commit().unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(Wal::open(dir.path(), |_| {}), Err(Error::Log(_))));
    }
}
