//! The live view store: each view's current contents, its recent changes, and its
//! subscribers.
//!
//! ```text
//!   dataflow worker ──publish(view, epoch, changes)──▶ LiveView { rows, history, epoch }
//!                                                          │            │
//!                          GET /v1/views/{view} ◀─snapshot─┘            └─broadcast─▶ subscribers
//! ```
//!
//! Publishing and subscribing take the same lock, so a subscriber's snapshot and the
//! first change it receives line up exactly: nothing is missed, nothing is seen twice.
//! The history of recent changes lets a subscriber that reconnects with the last epoch
//! it saw resume where it stopped; when that epoch has left the history it is told to
//! take a new snapshot.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{broadcast, watch};

use crate::schema::Columns;
use crate::time::Epoch;
use crate::value::Row;

/// A view's rows with their counts: a persistent hash map, so that a reader copies it in
/// O(1) under the lock and lists it after (in row order).
type Rows = imbl::GenericHashMap<Row, isize, foldhash::fast::FixedState, imbl::shared_ptr::DefaultSharedPtr>;

/// How many change rows a view keeps for resuming subscribers.
const HISTORY_ROWS: usize = 100_000;
/// How many published epochs a subscriber may fall behind before it must resume.
const SUBSCRIBER_BUFFER: usize = 4096;

/// The changes of one view in one epoch.
#[derive(Debug)]
pub struct EpochChanges {
    /// The epoch.
    pub epoch: Epoch,
    /// The changed rows with `+n` (added) or `-n` (removed), consolidated.
    pub changes: Vec<(Row, isize)>,
}

/// What a view is: name, definition and schema.
#[derive(Clone, Debug)]
pub struct ViewInfo {
    /// The view's name.
    pub name: String,
    /// Its `CREATE VIEW` statement.
    pub sql: String,
    /// The streams it reads.
    pub streams: Vec<String>,
    /// Its columns.
    pub columns: Columns,
    /// Allowed lateness, milliseconds.
    pub lateness_ms: i64,
    /// Retention, milliseconds.
    pub retention_ms: i64,
    /// Whether it comes from the configuration file (rather than the HTTP API).
    pub from_config: bool,
}

impl ViewInfo {
    /// The description of a planned view with its time policy.
    pub fn of(plan: &crate::plan::ViewPlan, time: crate::dataflow::ViewTime, from_config: bool) -> ViewInfo {
        ViewInfo {
            name: plan.name.clone(),
            sql: plan.sql.clone(),
            streams: plan.streams.clone(),
            columns: plan.columns.clone(),
            lateness_ms: time.lateness_ms,
            retention_ms: time.retention_ms,
            from_config,
        }
    }
}

struct LiveState {
    epoch: Epoch,
    /// The rows with their multiplicities. Ordered, so snapshots need no sort, and it
    /// grows without the whole-table rehash pauses a hash map has (they showed as
    /// freshness stalls). Persistent (nodes shared between copies): a reader copies it
    /// under the lock in O(1) and lists the rows after releasing it, so a snapshot, a
    /// capture or a new subscriber never holds up the dataflow's next publish.
    rows: Rows,
    history: VecDeque<Arc<EpochChanges>>,
    history_rows: usize,
    /// Every change after this epoch is in `history`.
    history_floor: Epoch,
    /// Whether the view's first epoch (its contents when created) has been published.
    seeded: bool,
}

/// One view's live contents.
pub struct LiveView {
    /// What the view is.
    pub info: ViewInfo,
    state: Mutex<LiveState>,
    changes: broadcast::Sender<Arc<EpochChanges>>,
    epoch: watch::Sender<Epoch>,
}

/// How a subscription starts.
pub enum Start {
    /// The view's rows as of an epoch.
    Snapshot {
        /// The epoch.
        epoch: Epoch,
        /// The rows.
        rows: Vec<Row>,
    },
    /// The changes after the epoch the subscriber asked to resume from.
    Resume(Vec<Arc<EpochChanges>>),
    /// The epoch to resume from is no longer retained: start again from this snapshot.
    Reset {
        /// The epoch the subscriber asked for.
        requested: Epoch,
        /// The epoch of the new snapshot.
        epoch: Epoch,
        /// The rows.
        rows: Vec<Row>,
    },
}

/// A live subscription: where to start, then every later epoch's changes in order.
pub struct Subscription {
    /// Where to start.
    pub start: Start,
    /// Later changes. A receiver that lags is closed off; the client resumes.
    pub changes: broadcast::Receiver<Arc<EpochChanges>>,
}

impl LiveView {
    fn new(info: ViewInfo) -> LiveView {
        let (changes, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let (epoch_tx, _) = watch::channel(0);
        LiveView {
            info,
            state: Mutex::new(LiveState { epoch: 0, rows: Rows::default(), history: VecDeque::new(), history_rows: 0, history_floor: 0, seeded: false }),
            changes,
            epoch: epoch_tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveState> {
        // a panic while holding the lock leaves consistent data (updates are applied whole)
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view's rows (with duplicates repeated) and the epoch they are as of.
    pub fn snapshot(&self) -> (Epoch, Vec<Row>) {
        let (epoch, rows) = {
            let state = self.lock();
            (state.epoch, state.rows.clone())
        };
        (epoch, expand(&rows))
    }

    /// The view's rows as of `epoch` (at most its current epoch), undoing later changes
    /// from its history; `None` if those are no longer kept.
    pub fn rows_at(&self, epoch: Epoch) -> Option<Vec<Row>> {
        self.copy_at(epoch).map(RowsAt::rows)
    }

    /// The same, copied in O(1): listing the rows (and undoing the later changes) is
    /// left to [`RowsAt::rows`], which can run on another thread.
    pub fn copy_at(&self, epoch: Epoch) -> Option<RowsAt> {
        let state = self.lock();
        if epoch < state.epoch.min(state.history_floor) {
            return None;
        }
        let later = state.history.iter().rev().take_while(|c| c.epoch > epoch).cloned().collect();
        Some(RowsAt { rows: state.rows.clone(), later })
    }

    /// The epoch the view's contents are complete through.
    pub fn epoch(&self) -> Epoch {
        *self.epoch.borrow()
    }

    /// Waits until the view has caught up with `epoch`, or `timeout` passes; returns
    /// whether it has.
    pub async fn wait_for(&self, epoch: Epoch, timeout: std::time::Duration) -> bool {
        let mut rx = self.epoch.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|e| *e >= epoch)).await.is_ok_and(|r| r.is_ok())
    }

    /// Subscribes: from a snapshot, or resuming after `last_epoch`.
    pub fn subscribe(&self, last_epoch: Option<Epoch>) -> Subscription {
        // (the rows are listed after the lock is released; the copy is consistent with
        // the changes subscribed to under it)
        let (start, rows, changes) = {
            let state = self.lock();
            let changes = self.changes.subscribe();
            match last_epoch {
                None => (Start::Snapshot { epoch: state.epoch, rows: Vec::new() }, Some(state.rows.clone()), changes),
                Some(l) if l >= state.history_floor && l <= state.epoch => {
                    (Start::Resume(state.history.iter().filter(|c| c.epoch > l).cloned().collect()), None, changes)
                }
                Some(l) => (Start::Reset { requested: l, epoch: state.epoch, rows: Vec::new() }, Some(state.rows.clone()), changes),
            }
        };
        let start = match (start, rows) {
            (Start::Snapshot { epoch, .. }, Some(rows)) => Start::Snapshot { epoch, rows: expand(&rows) },
            (Start::Reset { requested, epoch, .. }, Some(rows)) => Start::Reset { requested, epoch, rows: expand(&rows) },
            (start, _) => start,
        };
        Subscription { start, changes }
    }

    /// Makes everything published through `epoch` the view's initial contents: no
    /// subscriber resumes from an epoch before it, and the changes that built it are not
    /// kept to resume with. (A restart publishes the recovered events in several epochs
    /// after the log's last: they are not changes that a subscriber from before the
    /// restart, which already has their rows, could apply.)
    pub fn seal_initial_contents(&self, epoch: Epoch) {
        let mut state = self.lock();
        state.history.clear();
        state.history_rows = 0;
        state.history_floor = state.history_floor.max(epoch.min(state.epoch));
    }

    /// Applies one epoch's changes (for views maintained outside the dataflow).
    pub fn publish_changes(&self, epoch: Epoch, changes: Vec<(Row, isize)>) {
        self.publish(epoch, changes)
    }

    fn publish(&self, epoch: Epoch, changes: Vec<(Row, isize)>) {
        let mut state = self.lock();
        if epoch < state.epoch || (epoch == state.epoch && changes.is_empty()) {
            return;
        }
        state.epoch = epoch;
        if !changes.is_empty() {
            for (row, diff) in &changes {
                // one lookup in the usual cases: a retraction removes a row that was
                // there once, an addition inserts a row that was not there
                if *diff < 0 {
                    match state.rows.remove(row) {
                        Some(count) if count + diff == 0 => {}
                        Some(count) => {
                            state.rows.insert(row.clone(), count + diff);
                        }
                        None => {
                            state.rows.insert(row.clone(), *diff);
                        }
                    }
                } else if let Some(count) = state.rows.insert(row.clone(), *diff) {
                    // it was there already
                    if count + diff == 0 {
                        state.rows.remove(row);
                    } else {
                        state.rows.insert(row.clone(), count + diff);
                    }
                }
            }
            let changes = Arc::new(EpochChanges { epoch, changes });
            if state.seeded {
                state.history_rows += changes.changes.len();
                state.history.push_back(changes.clone());
            }
            while state.history_rows > HISTORY_ROWS && state.history.len() > 1 {
                let old = state.history.pop_front().expect("history is not empty");
                state.history_rows -= old.changes.len();
                state.history_floor = old.epoch;
            }
            let _ = self.changes.send(changes);
        }
        if !state.seeded {
            // the first epoch holds the view's initial contents, which are not changes a
            // subscriber from before (another process, say) could resume across
            state.seeded = true;
            state.history_floor = epoch;
        }
        self.epoch.send_replace(epoch);
    }
}

/// A view's rows as of an epoch: a copy of its current rows and the changes after the epoch.
pub struct RowsAt {
    rows: Rows,
    later: Vec<Arc<EpochChanges>>,
}

impl RowsAt {
    /// The rows (with duplicates repeated).
    pub fn rows(self) -> Vec<Row> {
        let RowsAt { mut rows, later } = self;
        for c in later {
            for (row, diff) in &c.changes {
                let count = rows.entry(row.clone()).or_insert(0);
                *count -= diff;
                if *count == 0 {
                    rows.remove(row);
                }
            }
        }
        expand(&rows)
    }
}

/// The rows, each as many times as it counts, in row order.
fn expand(rows: &Rows) -> Vec<Row> {
    let mut out = Vec::with_capacity(rows.len());
    for (row, n) in rows {
        for _ in 0..(*n).max(0) {
            out.push(row.clone());
        }
    }
    out.sort_unstable();
    out
}

/// Every live view, by name.
#[derive(Default)]
pub struct ViewStore {
    views: RwLock<std::collections::HashMap<String, Arc<LiveView>>>,
}

impl ViewStore {
    /// Adds an empty view, to be filled by the dataflow.
    pub fn insert(&self, info: ViewInfo) -> Arc<LiveView> {
        let view = Arc::new(LiveView::new(info.clone()));
        self.views.write().unwrap_or_else(|e| e.into_inner()).insert(info.name, view.clone());
        view
    }

    /// Removes a view; its subscribers' streams end.
    pub fn remove(&self, name: &str) -> Option<Arc<LiveView>> {
        self.views.write().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    /// A view by name.
    pub fn get(&self, name: &str) -> Option<Arc<LiveView>> {
        self.views.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Every view, sorted by name.
    pub fn list(&self) -> Vec<Arc<LiveView>> {
        let mut all: Vec<_> = self.views.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        all
    }

    /// Applies one epoch's changes to a view (called by the dataflow worker).
    pub fn publish(&self, name: &str, epoch: Epoch, changes: Vec<(Row, isize)>) {
        if let Some(view) = self.get(name) {
            view.publish(epoch, changes);
        }
    }
}
