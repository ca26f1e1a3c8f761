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
use crate::packed::{PackedRow, SharedRow};
use crate::value::{hash_row, spread, Row};

/// A view's rows with their counts, each kept with 32 bits of its hash: growing the
/// table moves entries without hashing a row again. (A row is packed, behind a thin
/// pointer: 64 bytes for a row of 7 values instead of 112; an entry is 16 bytes, its hash
/// and count 32 bits each: with a 64-bit hash and count, 24 bytes, engine-window took 12
/// more bytes per live row: docs/benchmarks.md.) The rows are the changes' own
/// ([`SharedRow`]), with the hash the change came with: the table neither copies nor
/// hashes a row. The entries come from the system allocator, whose large blocks go
/// back to the kernel when the table outgrows them (see `aggregate::Groups::table`).
///
/// A grouping's rows are not in the hash table: each is its group's one row while the
/// group lives, and comes with the group's slot ([`Change::slot`]), where the table
/// keeps it. A slot is 8 bytes, and is found without a hash or a compare; an entry of
/// the hash table is 16 bytes, at a load between 0.44 and 0.88 (engine-window's state
/// took ~16 bytes more per live row: docs/benchmarks.md).
#[derive(Clone, Default)]
struct Table {
    entries: hashbrown::HashTable<Entry, std::alloc::System>,
    /// The counts that do not fit an entry's 32 bits, whose entries hold [`WIDE`]: none
    /// unless a row has 2^31 copies.
    wide: Vec<(SharedRow, isize)>,
    /// The rows that came with a slot, by slot, in chunks of [`SLOT_CHUNK`] (growing the
    /// table moves no row), and how many there are.
    slots: Vec<Vec<Option<SharedRow>>>,
    slotted: usize,
}

/// Slots per chunk of [`Table::slots`].
const SLOT_CHUNK: usize = 4096;

#[derive(Clone)]
struct Entry {
    hash: u32,
    count: i32,
    row: SharedRow,
}

/// The count of an entry whose count is in [`Table::wide`].
const WIDE: i32 = i32::MIN;

impl Table {
    fn len(&self) -> usize {
        self.entries.len() + self.slotted
    }

    /// Adds each change's count (`sign` = -1 subtracts them); rows that reach zero go.
    /// With `slots`, a change with a slot takes its row out of the slot (-1) or puts it
    /// there (+1): the slots' retractions first, since a slot an epoch empties (a
    /// group's old row, or a removed group's) may take another row in the same epoch.
    /// Without, every row goes to the hash table (as the changes that adjust a copy of
    /// the table to another epoch do: their counts may be anything).
    fn apply(&mut self, changes: &[Change], sign: isize, slots: bool) {
        assert!(sign == 1 || !slots, "a slot's row is added and taken away, not subtracted");
        let slotted = |c: &Change| slots && c.slot != NO_SLOT;
        // (one pass for a view without slots; a second for the slots' new rows)
        let mut fills = false;
        for c in changes {
            if slotted(c) {
                fills |= c.diff > 0;
                if c.diff < 0 {
                    let (chunk, at) = (c.slot as usize / SLOT_CHUNK, c.slot as usize % SLOT_CHUNK);
                    let held = self.slots.get_mut(chunk).and_then(|chunk| chunk[at].take());
                    assert!(c.diff == -1 && held.is_some_and(|row| row == c.row), "a slot's retraction is of the one row it holds");
                    self.slotted -= 1;
                }
                continue;
            }
            let Change { row, hash, diff, .. } = c;
            let hash = *hash;
            match self.entries.entry(spread(hash), |e| e.hash == hash && e.row == *row, |e| spread(e.hash)) {
                hashbrown::hash_table::Entry::Occupied(mut e) => {
                    let count = Table::count_in(&self.wide, e.get()) + sign * diff;
                    if count == 0 {
                        let gone = e.remove().0;
                        Table::set_wide(&mut self.wide, &gone.row, 0);
                    } else {
                        let entry = e.get_mut();
                        entry.count = Table::set_wide(&mut self.wide, &entry.row, count);
                    }
                }
                hashbrown::hash_table::Entry::Vacant(e) => {
                    let row = row.clone();
                    let count = Table::set_wide(&mut self.wide, &row, sign * diff);
                    e.insert(Entry { hash, count, row });
                }
            }
        }
        if !fills {
            return;
        }
        for c in changes.iter().filter(|c| slotted(c) && c.diff > 0) {
            let (chunk, at) = (c.slot as usize / SLOT_CHUNK, c.slot as usize % SLOT_CHUNK);
            while self.slots.len() <= chunk {
                self.slots.push((0..SLOT_CHUNK).map(|_| None).collect());
            }
            let slot = &mut self.slots[chunk][at];
            assert!(c.diff == 1 && slot.is_none(), "a slot takes one row at a time");
            *slot = Some(c.row.clone());
            self.slotted += 1;
        }
    }

    /// An entry's count.
    #[inline]
    fn count_in(wide: &[(SharedRow, isize)], entry: &Entry) -> isize {
        if entry.count != WIDE {
            return entry.count as isize;
        }
        wide.iter().find(|(row, _)| *row == entry.row).map_or(0, |(_, n)| *n)
    }

    /// The count an entry of `row` holds for `count`: the count itself, or [`WIDE`]
    /// with the count in `wide` (where the row's count is kept only while it is wide).
    #[inline]
    fn set_wide(wide: &mut Vec<(SharedRow, isize)>, row: &SharedRow, count: isize) -> i32 {
        let narrow = i32::try_from(count).ok().filter(|c| *c != WIDE);
        if narrow.is_none() || !wide.is_empty() {
            wide.retain(|(r, _)| r != row);
        }
        narrow.unwrap_or_else(|| {
            wide.push((row.clone(), count));
            WIDE
        })
    }

    /// Each row with its hash, if the table keeps it (not a slot's), and its count.
    fn iter(&self) -> impl Iterator<Item = (&SharedRow, Option<u32>, isize)> {
        let slotted = self.slots.iter().flatten().flatten().map(|row| (row, None, 1));
        self.entries.iter().map(|e| (&e.row, Some(e.hash), Table::count_in(&self.wide, e))).chain(slotted)
    }
}

/// How many change rows a view keeps for resuming subscribers.
const HISTORY_ROWS: usize = 100_000;
/// How many published change rows may wait for a reader to let go of the table before
/// the writer copies it (at least; more with a larger table, so that the copy costs at
/// most one row per change).
const PENDING_ROWS: usize = 1 << 16;
/// How many published epochs a subscriber may fall behind before it must resume.
const SUBSCRIBER_BUFFER: usize = 4096;

/// The changes of one view in one epoch.
#[derive(Debug)]
pub struct EpochChanges {
    /// The epoch.
    pub epoch: Epoch,
    /// The changed rows with `+n` (added) or `-n` (removed), consolidated.
    pub changes: Vec<Change>,
}

/// A change to a view's rows.
#[derive(Clone, Debug)]
pub struct Change {
    /// The row, packed and shared (the view's table and its history hold the same one).
    pub row: SharedRow,
    /// The row's hash ([`hash_row`] with seed 0, cut to 32 bits).
    pub hash: u32,
    /// Where the view's table keeps the row: [`NO_SLOT`], or its group's slot, for a
    /// grouping's row (`aggregate::group_shared`), which adds the row (+1) once and
    /// takes it away (-1) once, and no other row in that slot meanwhile.
    pub slot: u32,
    /// How many copies of it the change adds (`+n`) or removes (`-n`).
    pub diff: isize,
}

/// The [`Change::slot`] of a row kept by its hash.
pub const NO_SLOT: u32 = u32::MAX;

impl Change {
    /// A change of `row`, packed (its values moved) and hashed.
    pub fn new(row: Row, diff: isize) -> Change {
        let hash = hash_row(&row, 0) as u32;
        Change { row: SharedRow::new(row), hash, slot: NO_SLOT, diff }
    }
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
    /// The rows with their multiplicities as of `applied`: a plain hash table, shared.
    /// A reader (a snapshot, a capture, a new subscriber) takes a reference under the
    /// lock with the changes not yet applied, and lists the rows after releasing it, so
    /// none of them holds up the dataflow's next publish. While a reader holds it, the
    /// writer leaves new changes in `pending` rather than copying the table.
    rows: Arc<Table>,
    /// The epoch `rows` is complete through.
    applied: Epoch,
    /// Changes published after `applied`, in order.
    pending: Vec<Arc<EpochChanges>>,
    pending_rows: usize,
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
            state: Mutex::new(LiveState { epoch: 0, rows: Arc::default(), applied: 0, pending: Vec::new(), pending_rows: 0, history: VecDeque::new(), history_rows: 0, history_floor: 0, seeded: false }),
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
            (state.epoch, state.copy())
        };
        (epoch, rows.rows())
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
        // the table plus the pending changes through `epoch`, less the applied ones after it
        let later = state.history.iter().rev().skip_while(|c| c.epoch > state.applied).take_while(|c| c.epoch > epoch).cloned().collect();
        let forward = state.pending.iter().take_while(|c| c.epoch <= epoch).cloned().collect();
        Some(RowsAt { rows: state.rows.clone(), forward, later })
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
                None => (Start::Snapshot { epoch: state.epoch, rows: Vec::new() }, Some(state.copy()), changes),
                Some(l) if l >= state.history_floor && l <= state.epoch => {
                    (Start::Resume(state.history.iter().filter(|c| c.epoch > l).cloned().collect()), None, changes)
                }
                Some(l) => (Start::Reset { requested: l, epoch: state.epoch, rows: Vec::new() }, Some(state.copy()), changes),
            }
        };
        let start = match (start, rows) {
            (Start::Snapshot { epoch, .. }, Some(rows)) => Start::Snapshot { epoch, rows: rows.rows() },
            (Start::Reset { requested, epoch, .. }, Some(rows)) => Start::Reset { requested, epoch, rows: rows.rows() },
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
        self.publish(epoch, changes.into_iter().map(|(row, diff)| Change::new(row, diff)).collect())
    }

    /// Applies one epoch's changes, packed and hashed.
    pub(crate) fn publish(&self, epoch: Epoch, changes: Vec<Change>) {
        let mut state = self.lock();
        if epoch < state.epoch || (epoch == state.epoch && changes.is_empty()) {
            return;
        }
        state.epoch = epoch;
        if !changes.is_empty() {
            let changes = Arc::new(EpochChanges { epoch, changes });
            state.pending_rows += changes.changes.len();
            state.pending.push(changes.clone());
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
        state.catch_up();
        if !state.seeded {
            // the first epoch holds the view's initial contents, which are not changes a
            // subscriber from before (another process, say) could resume across
            state.seeded = true;
            state.history_floor = epoch;
        }
        self.epoch.send_replace(epoch);
    }
}

impl LiveState {
    /// Applies the pending changes, in place if no reader holds the table; if one does,
    /// they wait, unless they have grown past the table's size (or [`PENDING_ROWS`]), when
    /// the table is copied.
    fn catch_up(&mut self) {
        let Some(last) = self.pending.last() else { return };
        let last = last.epoch;
        let table = if self.pending_rows > self.rows.len().max(PENDING_ROWS) { Some(Arc::make_mut(&mut self.rows)) } else { Arc::get_mut(&mut self.rows) };
        if let Some(table) = table {
            for c in self.pending.drain(..) {
                table.apply(&c.changes, 1, true);
            }
            self.pending_rows = 0;
            self.applied = last;
        }
    }

    /// A copy of the current rows, to list outside the lock.
    fn copy(&self) -> RowsAt {
        RowsAt { rows: self.rows.clone(), forward: self.pending.clone(), later: Vec::new() }
    }
}

/// A view's rows as of an epoch: a reference to its table, the changes through the epoch
/// not yet applied to it, and the ones after the epoch that are.
pub struct RowsAt {
    rows: Arc<Table>,
    forward: Vec<Arc<EpochChanges>>,
    later: Vec<Arc<EpochChanges>>,
}

impl RowsAt {
    /// The rows (with duplicates repeated), in row order.
    pub fn rows(self) -> Vec<Row> {
        let RowsAt { rows, forward, later } = self;
        let mut adjust = Table::default();
        for c in &forward {
            adjust.apply(&c.changes, 1, false);
        }
        for c in &later {
            adjust.apply(&c.changes, -1, false);
        }
        let mut out = Vec::with_capacity(rows.len() + adjust.len());
        let mut push = |row: &PackedRow, n: isize| {
            for _ in 0..n.max(0) {
                out.push(row.to_row());
            }
        };
        if adjust.entries.is_empty() {
            for (row, _, n) in rows.iter() {
                push(row, n);
            }
        } else {
            for (row, hash, n) in rows.iter() {
                let hash = hash.unwrap_or_else(|| row.hash() as u32);
                let d = adjust.entries.find_entry(spread(hash), |a| a.hash == hash && a.row == *row).map_or(0, |a| Table::count_in(&adjust.wide, &a.remove().0));
                push(row, n + d);
            }
            for (row, _, n) in adjust.iter() {
                push(row, n);
            }
        }
        out.sort_unstable();
        out
    }
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
            view.publish_changes(epoch, changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    fn view() -> LiveView {
        LiveView::new(ViewInfo { name: "v".into(), sql: String::new(), streams: Vec::new(), columns: Default::default(), lateness_ms: 0, retention_ms: 0, from_config: false })
    }

    fn row(i: i64) -> Row {
        vec![Value::str("acme"), Value::Int(i)]
    }

    fn changes(rows: Vec<(Row, isize)>) -> Vec<Change> {
        rows.into_iter().map(|(row, diff)| Change::new(row, diff)).collect()
    }

    fn rows(ids: &[i64]) -> Vec<Row> {
        ids.iter().map(|i| row(*i)).collect()
    }

    #[test]
    fn counts_past_32_bits_are_kept_whole() {
        let count = |t: &Table, r: &Row| t.iter().find(|(row, _, _)| row.equals(r)).map(|(_, _, n)| n);
        let big = i32::MAX as isize;
        let mut t = Table::default();
        t.apply(&changes(vec![(row(1), big), (row(2), 1)]), 1, false);
        t.apply(&changes(vec![(row(1), 3)]), 1, false);
        assert_eq!((count(&t, &row(1)), count(&t, &row(2)), t.wide.len()), (Some(big + 3), Some(1), 1));
        let copy = t.clone();
        t.apply(&changes(vec![(row(1), 4)]), -1, false);
        assert_eq!((count(&t, &row(1)), t.wide.len()), (Some(big - 1), 0));
        assert_eq!(count(&copy, &row(1)), Some(big + 3));
        t.apply(&changes(vec![(row(1), big - 1)]), -1, false);
        assert_eq!(count(&t, &row(1)), None);
        // (the entries' marker of a wide count is itself a count that goes there)
        t.apply(&changes(vec![(row(3), i32::MIN as isize), (row(4), -(big + 2))]), 1, false);
        assert_eq!((count(&t, &row(3)), count(&t, &row(4)), t.wide.len()), (Some(i32::MIN as isize), Some(-(big + 2)), 2));
        t.apply(&changes(vec![(row(3), i32::MIN as isize), (row(4), -(big + 2))]), -1, false);
        assert_eq!((count(&t, &row(3)), count(&t, &row(4)), t.wide.len(), t.len()), (None, None, 0, 1));
    }

    #[test]
    fn a_groupings_rows_are_kept_in_their_slots_and_listed_with_the_rest() {
        let slotted = |r: Row, slot: u32, diff: isize| Change { slot, ..Change::new(r, diff) };
        let v = view();
        let (one, two) = (slotted(row(1), 0, 1), slotted(row(2), 5000, 1));
        v.publish(1, vec![one.clone(), two, Change::new(row(9), 2)]);
        // slot 0's row goes and another takes the slot, listed first; a new row in slot 1
        v.publish(2, vec![slotted(row(3), 0, 1), Change { diff: -1, ..one }, slotted(row(4), 1, 1)]);
        let state = v.lock();
        assert_eq!((state.rows.slotted, state.rows.entries.len(), state.rows.slots.len()), (3, 1, 2));
        drop(state);
        assert_eq!(v.snapshot(), (2, rows(&[2, 3, 4, 9, 9])));
        assert_eq!(v.rows_at(1), Some(rows(&[1, 2, 9, 9])), "later changes undone, slots or not");
        let held = v.copy_at(2).expect("epoch 2 is kept");
        v.publish(3, vec![slotted(row(3), 0, -1), slotted(row(5), 7, 1)]);
        assert_eq!(v.rows_at(2), Some(rows(&[2, 3, 4, 9, 9])));
        drop(held);
        v.publish(4, vec![]);
        assert_eq!(v.snapshot(), (4, rows(&[2, 4, 5, 9, 9])));
        assert_eq!(v.lock().rows.slotted, 3);
    }

    #[test]
    fn counts_add_up_and_rows_at_zero_go() {
        let v = view();
        v.publish_changes(1, vec![(row(1), 1), (row(2), 2)]);
        v.publish_changes(2, vec![(row(1), -1), (row(3), 1), (row(2), -1)]);
        assert_eq!(v.snapshot(), (2, rows(&[2, 3])));
        assert_eq!(v.rows_at(1), Some(rows(&[1, 2, 2])), "later changes undone");
    }

    #[test]
    fn a_reader_holding_the_table_sees_its_epoch_and_later_readers_see_theirs() {
        let v = view();
        v.publish_changes(1, vec![(row(1), 1)]);
        v.publish_changes(2, vec![(row(2), 1)]);
        let held = v.copy_at(2).expect("epoch 2 is kept");
        // these wait for the reader instead of copying the table
        v.publish_changes(3, vec![(row(1), -1), (row(3), 1)]);
        v.publish_changes(4, vec![(row(4), 1)]);
        assert!(!v.lock().pending.is_empty(), "the changes wait while the table is held");
        assert_eq!(v.rows_at(3), Some(rows(&[2, 3])));
        assert_eq!(v.rows_at(2), Some(rows(&[1, 2])));
        assert_eq!(v.snapshot().1, rows(&[2, 3, 4]));
        assert_eq!(held.rows(), rows(&[1, 2]));
        // once the reader lets go, the next publish applies everything in place
        v.publish_changes(5, vec![(row(5), 1)]);
        let state = v.lock();
        assert!(state.pending.is_empty());
        assert_eq!(state.applied, 5);
        drop(state);
        assert_eq!(v.snapshot().1, rows(&[2, 3, 4, 5]));
        assert_eq!(v.rows_at(3), Some(rows(&[2, 3])));
    }

    #[test]
    fn a_reader_that_holds_the_table_too_long_costs_a_copy_not_unbounded_pending_changes() {
        let v = view();
        v.publish_changes(1, vec![(row(0), 1)]);
        let held = v.copy_at(1).expect("epoch 1 is kept");
        let many: Vec<(Row, isize)> = (1..=PENDING_ROWS as i64 + 1).map(|i| (row(i), 1)).collect();
        v.publish_changes(2, many);
        assert!(v.lock().pending.is_empty(), "the writer copied the table");
        assert_eq!(held.rows(), rows(&[0]));
        assert_eq!(v.snapshot().1.len(), PENDING_ROWS + 2);
    }

    #[test]
    fn a_subscriber_starts_from_the_rows_its_changes_follow() {
        let v = view();
        v.publish_changes(1, vec![(row(1), 1)]);
        let held = v.copy_at(1).expect("epoch 1 is kept");
        v.publish_changes(2, vec![(row(2), 1)]);
        let mut sub = v.subscribe(None);
        v.publish_changes(3, vec![(row(2), -1)]);
        drop(held);
        match sub.start {
            Start::Snapshot { epoch, rows: r } => assert_eq!((epoch, r), (2, rows(&[1, 2]))),
            _ => panic!("expected a snapshot"),
        }
        let next = sub.changes.try_recv().expect("epoch 3's changes");
        assert_eq!((next.epoch, next.changes.iter().map(|c| (c.row.to_row(), c.diff)).collect::<Vec<_>>()), (3, vec![(row(2), -1)]));
    }
}
