//! The raw archive, as the engine sees it: somewhere outside the data directory that
//! keeps every accepted row of every stream, so that the write-ahead log can be
//! truncated once its rows are archived (the binary's lake implements it; the engine has
//! no storage clients).
//!
//! ```text
//!   gate ── each committed epoch's records ──▶ feed ──▶ archive writer (binary)
//!                                                         │ appends, then reports
//!   gate ◀────────────── archived(stream) = epoch ────────┘
//!   log segment deleted once every stream in it is archived through its last epoch
//!
//!   restart: rows of epochs ≤ the oldest segment's checkpoint come from the archive,
//!            the rest from the log; log records the archive lacks are fed to it again
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;
use crate::schema::Stream;
use crate::time::Epoch;
use crate::value::Row;
use crate::wal::Logged;

/// A boxed future, as the archive's reads return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the engine needs of an archive at start.
pub trait ArchiveSource: Send + Sync {
    /// The last epoch of `stream` whose rows the archive holds (all rows of the stream up
    /// to it), or `None` if it holds none.
    fn archived_through(&self, stream: &str) -> Option<Epoch>;

    /// The archived rows of `stream` of epochs up to `through` whose event time is at or
    /// after `since` (milliseconds), in epoch order, in the stream's column order.
    fn load<'a>(&'a self, stream: &'a Stream, through: Epoch, since: i64) -> BoxFuture<'a, Result<Vec<Row>>>;
}

/// One committed epoch's records (every stream of one group commit), fed to the archive
/// writer in commit order.
pub type Epochs = tokio::sync::mpsc::UnboundedReceiver<Vec<Logged>>;

/// How far each stream is archived: written by the archive writer, read by the ingest
/// gate when it decides which log segments to delete.
#[derive(Debug)]
pub struct Progress {
    names: Vec<String>,
    through: Vec<AtomicU64>,
}

impl Progress {
    /// Nothing archived yet (or as `source` says) for these streams.
    pub fn new(streams: &[Stream], source: Option<&dyn ArchiveSource>) -> Progress {
        Progress {
            names: streams.iter().map(|s| s.name.clone()).collect(),
            through: streams.iter().map(|s| AtomicU64::new(source.and_then(|a| a.archived_through(&s.name)).unwrap_or(0))).collect(),
        }
    }

    /// Records that every row of `stream` up to `epoch` is archived.
    pub fn archived(&self, stream: &str, epoch: Epoch) {
        if let Some(i) = self.names.iter().position(|n| n == stream) {
            self.through[i].fetch_max(epoch, Ordering::AcqRel);
        }
    }

    /// The last epoch through which `stream` is archived (0: none).
    pub fn through(&self, stream: &str) -> Epoch {
        self.names.iter().position(|n| n == stream).map_or(0, |i| self.through[i].load(Ordering::Acquire))
    }
}
