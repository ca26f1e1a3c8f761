//! `GROUP BY` (and `DISTINCT`, a grouping without aggregates) in the dataflow: one
//! operator that keeps each group's input values and emits the group's row whenever an
//! epoch changes it.
//!
//! ```text
//!   rows key ++ inputs ──exchange by key──▶ Aggregate ──(key ++ aggregates) changes──▶
//!                                            per group: its row as last emitted
//!                                            (shared with the view store), and the
//!                                            sorted multiset of its inputs, flat
//! ```
//!
//! The operator's input rows are the group key's values followed by one value per
//! distinct aggregate input ([`inputs`]): the map that builds them from an event runs
//! before the operator (in the view's input, where it can: see `dataflow::keyed`), so
//! that one row carries each event here and the operator moves its values into the
//! group rather than copying them.
//!
//! Epochs are totally ordered and an epoch's output depends only on the updates through
//! it, so the operator buffers updates by epoch and, once the input frontier has passed
//! an epoch, applies it: each update goes to its group's sorted multiset (in place for a
//! small group; a large one merges the epoch's consolidated updates once), and then each
//! touched group recomputes its aggregates and emits a retraction of the old row and the
//! new row if they differ. (A group keeps the row it emitted, shared with the view
//! store: see [`Held`].) This is what differential's `reduce` computes for a
//! total order, without the two arrangements (input and output, each a sorted spine
//! merged in the background with a history per key) that a partially ordered time needs:
//! see docs/architecture.md.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::hash::BuildHasher;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::{Capability, InputCapability, Operator};
use timely::dataflow::StreamVec;

use crate::expr::Scalar;
use crate::plan::{AggFunc, Aggregate};
use crate::schema::DataType;
use crate::time::Epoch;
use crate::packed::{GroupRow, PackedRow, SharedRow};
use crate::value::{cmp_values, sorted_by_prefix, spread, Row, RowHasher, Value};

/// Where an aggregate finds its input value for each event.
#[derive(Clone, Debug, PartialEq)]
pub enum Slot {
    /// At this position of the event's inputs (after its key).
    Column(usize),
    /// The same for every event (e.g. the 1 of `count(*)`).
    Constant(Value),
}

/// The distinct `(argument, filter)` inputs of the aggregates, and each aggregate's slot:
/// each event carries one value per *distinct* input, and none for a constant one
/// (`count(*)`), so that groups hold less and events whose values coincide consolidate.
pub fn inputs(aggregates: &[Aggregate]) -> (Vec<(Scalar, Option<Scalar>)>, Vec<Slot>) {
    let mut inputs: Vec<(Scalar, Option<Scalar>)> = Vec::new();
    let slots = aggregates
        .iter()
        .map(|a| match (&a.arg, &a.filter) {
            (Scalar::Literal(v), None) => Slot::Constant(v.clone()),
            (arg, filter) => {
                let input = (arg.clone(), filter.clone());
                let i = inputs.iter().position(|x| *x == input).unwrap_or_else(|| {
                    inputs.push(input);
                    inputs.len() - 1
                });
                Slot::Column(i)
            }
        })
        .collect();
    (inputs, slots)
}

/// A group's inputs, in one allocation ([`GroupRow`], without a key): the sorted
/// multiset of its inputs, flat. Each entry is `width` consecutive values of its
/// `values` (the operator's width) and its count in `counts`, never zero.
///
/// In a grouping whose aggregates are all running totals ([`Groups::summed`]), a group
/// keeps no inputs (its entries have no values): its counts are its totals, its number
/// of rows and then each aggregate's count of non-NULL inputs and integer sum (none
/// once the rows cancel, as the multiset would be).
type Group = GroupRow;

/// A group as the operator keeps it: the row it last emitted, `key ++ aggregates`,
/// which is also its key, and its inputs. The row is the one the view store holds
/// ([`SharedRow`]: one allocation between them, and the history's changes): an epoch
/// that changes the group's aggregates emits that same row as the retraction and a new
/// one. (The group kept its key packed before its inputs, and computed the aggregates
/// it had emitted from its inputs again to retract them; the store copied each row it
/// took in: docs/benchmarks.md.) A group made in this epoch holds its row alone until
/// the epoch's end, when its aggregates are written into it.
struct Held {
    row: SharedRow,
    group: Group,
}

/// Where a group's entries are in its row, when every input has a `min` or a `max` of
/// it among the aggregates: a group of one entry of count 1 (most of engine-window's:
/// one event in its (tenant, kind, minute)) then keeps no inputs ([`GroupRow::in_row`]),
/// since its row holds them: each input's min (or max) is the input itself. With one
/// input, and both its min and its max, so does a group of two entries of count 1,
/// neither NULL: they are the min and the max. (Its inputs took an allocation of 32
/// bytes, 56 for two entries, beside its 64-byte row: docs/benchmarks.md.) A change to
/// such a group takes its entries out of the row first ([`out_of_row`]).
#[derive(Debug, PartialEq)]
struct InRow {
    /// For each input, the position after the key of a min or a max of it.
    one: Vec<usize>,
    /// With one input, the positions after the key of its min and its max.
    two: Option<(usize, usize)>,
}

/// How an epoch first touched a group (see [`apply`]).
#[derive(Clone, Copy, PartialEq)]
enum Touch {
    /// A group of an earlier epoch.
    Old,
    /// A group it made.
    New,
    /// A group it made of one input, its row written then, with this hash (see [`InRow`]).
    NewInRow(u32),
}

/// A vector kept in chunks of a fixed size, so that growing it never moves what it
/// holds. (A plain vector of groups doubles by copying every group into fresh memory,
/// which the kernel zeroes as the copy first touches it: measured on the `freshness`
/// benchmark as the dataflow thread's worst stall, 10–30 ms at a few hundred thousand
/// groups, while every change waited behind it.)
struct Slab<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { chunks: Vec::new(), len: 0 }
    }
}

/// Elements per chunk of a [`Slab`].
const SLAB_CHUNK: usize = 4096;

impl<T> Slab<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, value: T) {
        if self.len % SLAB_CHUNK == 0 {
            self.chunks.push(Vec::with_capacity(SLAB_CHUNK));
        }
        self.chunks[self.len / SLAB_CHUNK].push(value);
        self.len += 1;
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / SLAB_CHUNK][i % SLAB_CHUNK]
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / SLAB_CHUNK][i % SLAB_CHUNK]
    }
}

/// The groups of one worker: a slab of groups and a hash table of slab positions by key
/// (each key is held once, at the start of its group's row; the table keeps each key's
/// hash beside its position, so growing the table does not hash the keys again).
#[derive(Default)]
struct Groups {
    /// How many values of an input row are its key (`None`: all of them, as in DISTINCT).
    key_len: Option<usize>,
    /// How many input values follow the key in each input row.
    width: usize,
    /// Whether every aggregate is a `count` or an integer `sum` (not DISTINCT): each group
    /// then keeps running totals instead of its inputs. A change is an addition to the
    /// totals instead of a search and a move in the group's sorted inputs (or a merge:
    /// `engine-hop`'s groups hold tens of values each), the aggregates are the totals
    /// instead of a walk over the inputs, and a group holds a few integers whatever
    /// its number of rows. (Integer sums are exact whatever the order of the changes;
    /// float sums are not, nor are min and max without the inputs once one is retracted.)
    summed: bool,
    /// Where a group's entries are in its row, if they can be (see [`InRow`]).
    in_row: Option<InRow>,
    /// The groups' positions by key hash. It comes from the system allocator (glibc's
    /// `malloc`, which maps a block this large on its own and unmaps it when freed):
    /// each time the table doubles, the one it outgrew goes back to the kernel, where
    /// the process's allocator (mimalloc, purging off: `src/allocator.rs`) kept it, and
    /// the rows' smaller allocations reused that memory only in part. The same for the
    /// view store's table: engine-window's state took 24 bytes less per live row.
    table: hashbrown::HashTable<(u32, u32), std::alloc::System>,
    /// The groups; `None` where one was removed (see `free`).
    slab: Slab<Option<Held>>,
    /// Beside the slab: whether the epoch being applied has touched the group yet.
    touched: Vec<bool>,
    free: Vec<usize>,
    /// The aggregates being computed, and an epoch's touched groups (see [`apply`]): kept
    /// between epochs for their room, up to [`KEEP_ROOM`] entries. (Grown from empty, the
    /// list was reallocated a dozen times an epoch, doubling to 10,000 entries and more.)
    scratch: Row,
    touched_list: Vec<(u32, Touch, RowHasher)>,
    /// A new summed group's totals, as its first update makes them (see `summed`).
    totals: Vec<isize>,
}

impl Groups {
    fn new(key_len: Option<usize>, width: usize, aggregates: &[(Aggregate, Slot)]) -> Groups {
        let summed = !aggregates.is_empty() && aggregates.iter().all(|(a, _)| !a.distinct && (a.func == AggFunc::Count || (a.func == AggFunc::Sum && a.output == DataType::Int)));
        let totals = if summed { vec![0; 1 + 2 * aggregates.len()] } else { Vec::new() };
        let of = |c: usize, func: AggFunc| aggregates.iter().position(|(a, slot)| a.func == func && *slot == Slot::Column(c));
        let in_row = match (key_len, summed, width) {
            (Some(_), false, 1..) => (0..width).map(|c| of(c, AggFunc::Min).or_else(|| of(c, AggFunc::Max))).collect::<Option<Vec<_>>>().map(|one| InRow {
                one,
                two: if width == 1 { of(0, AggFunc::Min).zip(of(0, AggFunc::Max)) } else { None },
            }),
            _ => None,
        };
        Groups { key_len, width, summed, in_row, totals, ..Groups::default() }
    }

    fn key_len(&self, row: &[Value]) -> usize {
        self.key_len.unwrap_or(row.len())
    }

    /// A key's hash in the table: 32 bits, spread over the 64 the table takes (see
    /// [`spread`]), so that an entry keeps the whole of it in half the room; and the
    /// hasher of the key's values, to go on with a row's aggregates (see [`apply`]).
    #[inline]
    fn hash(&self, key: &[Value]) -> (u64, RowHasher) {
        let mut h = RowHasher::new(0);
        for v in key {
            h.add(v);
        }
        (spread(h.finish() as u32), h)
    }

    /// The slab position of the key's group, if it has one.
    #[inline]
    fn find(&self, hash: u64, key: &[Value]) -> Option<usize> {
        self.table.find(hash, |(h, i)| *h == hash as u32 && self.slab[*i as usize].as_ref().is_some_and(|g| g.row.equals_at(0, key))).map(|(_, i)| *i as usize)
    }

    /// Makes a group of the update's row: its key moves to the group's row (its
    /// aggregates NULL until the epoch's end), its inputs become the group's one entry
    /// (and any values after them are dropped). Or, if its row can hold that entry (see
    /// [`InRow`]), the row has its aggregates at once, and the hash the key's `hasher`
    /// goes on to with them: [`Touch::NewInRow`].
    fn insert(&mut self, hash: u64, hasher: RowHasher, mut row: Row, k: usize, diff: isize, aggregates: &[(Aggregate, Slot)]) -> (u32, Touch) {
        let i = self.free.pop().unwrap_or_else(|| {
            self.slab.push(None);
            self.touched.push(false);
            self.slab.len() - 1
        });
        // (the update's row is freed here, on this thread, and its memory is the next
        // update's: kept until the epoch's end to become the group's first row out, a
        // restart of 10M events took 9.4 s instead of 7.0: docs/benchmarks.md)
        if self.summed {
            self.totals.fill(0);
            add(&mut self.totals, aggregates, &row[k..], diff);
        }
        let n = k + aggregates.len();
        let (key, group, touch) = if self.in_row.is_some() && diff == 1 {
            self.scratch.clear();
            one_entry_aggregates(aggregates, &row[k..], 1, &mut self.scratch);
            let mut h = hasher;
            self.scratch.iter().for_each(|v| h.add(v));
            let mut key = SharedRow::build(row.drain(..k), n);
            key.get_mut().expect("a new row").set_from(k, &self.scratch);
            (key, GroupRow::in_row(1), Touch::NewInRow(h.finish() as u32))
        } else {
            let key = SharedRow::build(row.drain(..k), n);
            (key, if self.summed { GroupRow::new(row, 0, &self.totals) } else { GroupRow::new(row, self.width, &[diff]) }, Touch::New)
        };
        self.slab[i] = Some(Held { row: key, group });
        let at = u32::try_from(i).expect("fewer than 2^32 groups on a worker");
        self.table.insert_unique(hash, (hash as u32, at), |(h, _)| spread(*h));
        (at, touch)
    }

    /// Forgets a group (its values are gone) of the key `hasher` hashed: its row.
    fn remove(&mut self, i: usize, hasher: RowHasher) -> SharedRow {
        let held = self.slab[i].take().expect("a group in the table is in the slab");
        let hash = spread(hasher.finish() as u32);
        if let Ok(entry) = self.table.find_entry(hash, |(_, j)| *j as usize == i) {
            entry.remove();
        }
        self.free.push(i);
        held.row
    }
}

/// A `GROUP BY`'s state and step, outside the dataflow (for benchmarks).
pub struct Grouping {
    groups: Groups,
    aggregates: Vec<(Aggregate, Slot)>,
}

impl Grouping {
    /// Groups of keys of `key_len` values, computing these aggregates.
    pub fn new(key_len: usize, aggregates: &[Aggregate]) -> Grouping {
        let (inputs, slots) = inputs(aggregates);
        let aggregates: Vec<(Aggregate, Slot)> = aggregates.iter().cloned().zip(slots).collect();
        Grouping { groups: Groups::new(Some(key_len), inputs.len(), &aggregates), aggregates }
    }

    /// Applies one epoch's updates, rows `key ++ inputs` (inputs as [`inputs`] lays them
    /// out); `emit` gets each changed group's old row (-1) and new row (+1).
    pub fn apply(&mut self, updates: Vec<(Row, isize)>, mut emit: impl FnMut(Row, isize)) {
        apply(&mut self.groups, &self.aggregates, updates, |row, _, _, diff| emit(row.to_row(), diff))
    }
}

pub(crate) type Update = (Row, Epoch, isize);

/// Groups rows `key ++ inputs` by their first `key_len` values (`None`: whole rows are
/// keys, without aggregates); each group becomes one row, `key ++ aggregates`, the
/// aggregates reading the inputs through their slots (`Column(i)`: the row's value at
/// `key_len + i`; values after the last one a slot reads are ignored).
pub fn group<'s>(input: VecCollection<'s, Epoch, Row, isize>, key_len: Option<usize>, aggregates: Vec<(Aggregate, Slot)>) -> VecCollection<'s, Epoch, Row, isize> {
    grouped(input, key_len, aggregates, |row, _, _| row.to_row()).as_collection()
}

/// [`group`], its rows the groups' own, with their hashes and slots: for a view's last
/// operator, whose rows go to the view store as they are (see [`Held`]). A row's slot
/// is its group's, unique among the groups of every worker while the group lives: the
/// store keeps the row there rather than in its hash table (see `store::Table`).
pub fn group_shared<'s>(input: VecCollection<'s, Epoch, Row, isize>, key_len: Option<usize>, aggregates: Vec<(Aggregate, Slot)>) -> StreamVec<'s, Epoch, ((SharedRow, u32, u32), Epoch, isize)> {
    grouped(input, key_len, aggregates, |row, hash, slot| (row, hash, slot))
}

fn grouped<'s, D: Clone + 'static>(input: VecCollection<'s, Epoch, Row, isize>, key_len: Option<usize>, aggregates: Vec<(Aggregate, Slot)>, out: fn(SharedRow, u32, u32) -> D) -> StreamVec<'s, Epoch, (D, Epoch, isize)> {
    let width = aggregates.iter().filter_map(|(_, slot)| if let Slot::Column(c) = slot { Some(c + 1) } else { None }).max().unwrap_or(0);
    if timely::dataflow::Scope::peers(&input.inner.scope()) > 1 {
        // (seeded apart from the groups' table, whose hashes would otherwise all share
        // the bits that chose the worker)
        let hasher = foldhash::fast::FixedState::with_seed(0x5eed_0f_9a7e);
        let by_key = Exchange::new(move |(row, _, _): &Update| hasher.hash_one(&row[..key_len.unwrap_or(row.len())]));
        operator(input, by_key, key_len, width, aggregates, out)
    } else {
        operator(input, Pipeline, key_len, width, aggregates, out)
    }
}

fn operator<'s, P, D: Clone + 'static>(input: VecCollection<'s, Epoch, Row, isize>, pact: P, key_len: Option<usize>, width: usize, aggregates: Vec<(Aggregate, Slot)>, out: fn(SharedRow, u32, u32) -> D) -> StreamVec<'s, Epoch, (D, Epoch, isize)>
where
    P: ParallelizationContract<Epoch, Vec<Update>>,
{
    let (index, peers) = (timely::dataflow::Scope::index(&input.inner.scope()), timely::dataflow::Scope::peers(&input.inner.scope()));
    // a group's slot: its position among this worker's groups, interleaved with the other
    // workers' (none past 2^32 - 1, which is `store::NO_SLOT`, no slot)
    let slot = move |i: usize| i.checked_mul(peers).and_then(|s| u32::try_from(s + index).ok()).filter(|s| *s != u32::MAX).unwrap_or(u32::MAX);
    input.inner.unary_frontier::<CapacityContainerBuilder<Vec<(D, Epoch, isize)>>, _, _, _>(pact, "Aggregate", move |_, _| {
        // each epoch's updates, in the containers they came in
        let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<Vec<Update>>)> = BTreeMap::new();
        let mut groups = Groups::new(key_len, width, &aggregates);
        move |(input, frontier), output| {
            input.for_each(|cap, updates| stash(&mut pending, &cap, updates, |c| (c, Vec::new()), |(_, containers)| containers));
            // apply every epoch the frontier has passed, in order
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                let (t, (cap, updates)) = entry.remove_entry();
                let mut session = output.session(&cap);
                let updates = updates.into_iter().flatten().map(|(row, _, diff)| (row, diff));
                apply(&mut groups, &aggregates, updates, |row, hash, i, diff| session.give((out(row, hash, slot(i)), t, diff)));
            }
        }
    })
}

/// Files a container of updates under its epoch (or epochs) in `pending`, whose entry
/// for an epoch `new` makes from a capability for it and `containers` gives the
/// containers of (an operator that applies whole epochs once its frontier passes them:
/// this one and the join's).
pub(crate) fn stash<E>(pending: &mut BTreeMap<Epoch, E>, cap: &InputCapability<Epoch>, updates: &mut Vec<Update>, new: impl Fn(Capability<Epoch>) -> E, containers: impl Fn(&mut E) -> &mut Vec<Vec<Update>>) {
    let Some(t) = updates.first().map(|(_, t, _)| *t) else { return };
    if updates.iter().all(|(_, u, _)| *u == t) {
        // (the usual case: the container is one epoch's, and is kept whole)
        containers(pending.entry(t).or_insert_with(|| new(cap.delayed(&t, 0)))).push(std::mem::take(updates));
        return;
    }
    for update in updates.drain(..) {
        let t = update.1;
        let epoch = containers(pending.entry(t).or_insert_with(|| new(cap.delayed(&t, 0))));
        match epoch.last_mut() {
            Some(last) => last.push(update),
            None => epoch.push(vec![update]),
        }
    }
}

/// A group with fewer entries than this takes each change in place as it comes (a binary
/// search and a short move); a larger one collects the epoch's changes and merges them
/// into its entries once. (64 measured 50% more CPU time than sorting every update on
/// `engine-hop`, whose groups hold tens of values, though callgrind counted fewer
/// instructions: each probe of a binary search is a row elsewhere in memory.)
const IN_PLACE: usize = 8;

/// Applies one epoch's updates; `emit` gets each changed group's old row (-1) and new row
/// (+1), each with its hash and the group's position in the slab.
fn apply(groups: &mut Groups, aggregates: &[(Aggregate, Slot)], updates: impl IntoIterator<Item = (Row, isize)>, mut emit: impl FnMut(SharedRow, u32, usize, isize)) {
    // the groups the epoch touches, in the order it first does, whether each is new, and
    // the hasher of its key's values (each row out is hashed as `hash_row` has it, which
    // goes on with the aggregates' values: a hash of the packed row took engine-window's
    // dataflow thread 186 instructions per event)
    let mut touched = std::mem::take(&mut groups.touched_list);
    // changes to large groups (whole rows: their inputs follow the key), merged below
    let mut deferred: Vec<(usize, Row, isize)> = Vec::new();
    let width = groups.width;
    for (row, diff) in updates {
        let k = groups.key_len(&row);
        let (hash, hasher) = groups.hash(&row[..k]);
        let Some(i) = groups.find(hash, &row[..k]) else {
            let (i, touch) = groups.insert(hash, hasher, row, k, diff, aggregates);
            groups.touched[i as usize] = true;
            touched.push((i, touch, hasher));
            continue;
        };
        if !groups.touched[i] {
            groups.touched[i] = true;
            // (a group from an earlier epoch has entries: one left without is removed)
            touched.push((i as u32, Touch::Old, hasher));
        }
        let held = groups.slab[i].as_mut().expect("a group in the table is in the slab");
        if let Some(in_row) = &groups.in_row
            && held.group.in_row_entries() > 0
        {
            held.group = out_of_row(&held.row, k, in_row, held.group.in_row_entries());
        }
        let group = &mut held.group;
        if groups.summed {
            if group.counts().is_empty() {
                group.set_entries(vec![0; groups.totals.len()], Vec::new(), 0);
            }
            add(group.counts_mut(), aggregates, &row[k..], diff);
            if group.counts()[0] == 0 {
                group.set_entries(Vec::new(), Vec::new(), 0);
            }
        } else if group.counts().len() < IN_PLACE {
            change(group, width, row, k, diff);
        } else {
            deferred.push((i, row, diff));
        }
    }
    if !deferred.is_empty() {
        // by group, then by inputs: each group's changes come out sorted, then consolidated
        // (without a key length, as in DISTINCT, there are no inputs: any empty slice will do)
        let inputs = groups.key_len.map_or(0..0, |k| k..k + width);
        let order = sorted_by_prefix(&deferred, |(i, row, _)| (*i, &row[inputs.clone()]));
        for run in order.chunk_by(|a, b| deferred[*a as usize].0 == deferred[*b as usize].0) {
            let group = &mut groups.slab[deferred[run[0] as usize].0].as_mut().expect("a group in the table is in the slab").group;
            merge(group, width, run.iter().map(|n| {
                let (_, row, diff) = &deferred[*n as usize];
                (&row[inputs.clone()], *diff)
            }));
        }
    }
    // the hash of a row of the key and these aggregates
    let row_hash = |mut h: RowHasher, aggregates: &[Value]| {
        aggregates.iter().for_each(|v| h.add(v));
        h.finish() as u32
    };
    for (i, touch, hasher) in touched.drain(..) {
        let (i, new) = (i as usize, touch != Touch::Old);
        groups.touched[i] = false;
        let held = groups.slab[i].as_ref().expect("a touched group is in the slab");
        if let Touch::NewInRow(hash) = touch
            && held.group.in_row_entries() > 0
        {
            // (a group made of one input, its row written; any other touched group's
            // entries are out of its row, as this one's are if the epoch changed it again)
            emit(held.row.clone(), hash, i, 1);
            continue;
        }
        if held.group.counts().is_empty() {
            // (a group made for updates that all cancel is forgotten without a word)
            let row = groups.remove(i, hasher);
            if !new {
                let hash = row.hash_on(hasher, groups.key_len.unwrap_or(row.len())) as u32;
                emit(row, hash, i, -1);
            }
            continue;
        }
        let held = groups.slab[i].as_mut().expect("a group in the table is in the slab");
        let now = &mut groups.scratch;
        now.clear();
        compute(&held.group, groups.summed, width, aggregates, now);
        let k = groups.key_len.unwrap_or(held.row.len());
        if new {
            let hash = row_hash(hasher, now);
            held.row.get_mut().expect("a new group's row is not emitted yet").set_from(k, now);
            emit(held.row.clone(), hash, i, 1);
        } else if !held.row.equals_at(k, now) {
            let old_hash = held.row.hash_on(hasher, k) as u32;
            let hash = row_hash(hasher, now);
            let row = SharedRow::with_prefix(&held.row, k, now);
            emit(std::mem::replace(&mut held.row, row), old_hash, i, -1);
            emit(held.row.clone(), hash, i, 1);
        }
        if let Some(in_row) = &groups.in_row {
            // (if its row holds its entries now)
            let entries = match (held.group.counts(), held.group.values()) {
                ([1], _) => 1,
                ([1, 1], [lo, hi]) if in_row.two.is_some() && !lo.is_null() && !hi.is_null() => 2,
                _ => 0,
            };
            if entries > 0 {
                held.group = GroupRow::in_row(entries);
            }
        }
    }
    // (a view's first epoch holds every retained event: millions of groups)
    touched.shrink_to(KEEP_ROOM);
    groups.touched_list = touched;
}

/// How many entries the list of an epoch's touched groups keeps room for between epochs.
const KEEP_ROOM: usize = 1 << 17;

/// Appends a group's aggregates, as its inputs (or totals) now are, to `out`. (Out of
/// line since [`apply`] also called it in its loop over updates, for a group's first
/// touch, which was the part to keep small; it is called once now, and was not measured
/// inlined.)
#[inline(never)]
fn compute(group: &Group, summed: bool, width: usize, aggregates: &[(Aggregate, Slot)], out: &mut Row) {
    let counts = group.counts();
    if summed {
        out.extend(aggregates.iter().enumerate().map(|(j, (a, _))| summed_value(a, counts[1 + 2 * j], counts[2 + 2 * j])));
    } else if let [n] = *counts
        && n > 0
    {
        // (a group of one entry, the usual one: each aggregate of its value, inline)
        one_entry_aggregates(aggregates, group.values(), n, out);
    } else {
        out.extend(aggregates.iter().map(|(a, slot)| aggregate(a, slot, width, group.values(), counts)));
    }
}

/// Appends the aggregates of one entry, `n` times `inputs`, to `out`.
#[inline]
fn one_entry_aggregates(aggregates: &[(Aggregate, Slot)], inputs: &[Value], n: isize, out: &mut Row) {
    out.extend(aggregates.iter().map(|(a, slot)| {
        let v = match slot {
            Slot::Column(c) => &inputs[*c],
            Slot::Constant(v) => v,
        };
        one_entry(a, v, if a.distinct { 1 } else { n as i64 })
    }));
}

/// The `entries` entries (one or two) of a group whose row holds them (see [`InRow`]),
/// each of count 1: its values at these positions after its key of `k`.
fn out_of_row(row: &PackedRow, k: usize, in_row: &InRow, entries: usize) -> Group {
    match (entries, in_row.two) {
        (2, Some((lo, hi))) => GroupRow::of([row.value(k + lo), row.value(k + hi)], 1, &[1, 1]),
        _ => GroupRow::of(in_row.one.iter().map(|j| row.value(k + j)), in_row.one.len(), &[1]),
    }
}

/// Adds a change (`diff` times the row's inputs, after its key) to a group's running
/// totals (see [`Group`]), with [`Totals`]' arithmetic: integer sums wrap, and an input
/// that is not an integer counts without adding to the sum.
#[inline]
fn add(totals: &mut [isize], aggregates: &[(Aggregate, Slot)], inputs: &[Value], diff: isize) {
    totals[0] += diff;
    for (j, (_, slot)) in aggregates.iter().enumerate() {
        let v = match slot {
            Slot::Column(c) => &inputs[*c],
            Slot::Constant(v) => v,
        };
        if !v.is_null() {
            totals[1 + 2 * j] += diff;
            if let Value::Int(x) = v {
                totals[2 + 2 * j] = (totals[2 + 2 * j] as i64).wrapping_add(x.wrapping_mul(diff as i64)) as isize;
            }
        }
    }
}

/// An aggregate of a grouping kept as running totals: a `count` is its count of
/// non-NULL inputs; an integer `sum` is its sum, NULL without inputs.
fn summed_value(a: &Aggregate, count: isize, sum: isize) -> Value {
    match a.func {
        AggFunc::Count => Value::Int(count as i64),
        _ if count == 0 => Value::Null,
        _ => Value::Int(sum as i64),
    }
}

/// The position of `inputs` among a group's sorted entries, or where it would go. (With
/// no inputs, as in DISTINCT, the one entry there can be is empty and equal to them.)
fn search(values: &[Value], counts: &[isize], width: usize, inputs: &[Value]) -> Result<usize, usize> {
    let (mut lo, mut hi) = (0, counts.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match cmp_values(&values[mid * width..(mid + 1) * width], inputs) {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// Applies one change (the `width` inputs after the row's key) to a group's entries in
/// place, dropping the entry if its count cancels.
fn change(group: &mut Group, width: usize, mut row: Row, k: usize, diff: isize) {
    match search(group.values(), group.counts(), width, &row[k..k + width]) {
        Ok(at) => {
            group.counts_mut()[at] += diff;
            if group.counts()[at] == 0 {
                group.remove_entry(at);
            }
        }
        Err(at) => group.insert_entry(at, diff, &mut row[k..k + width]),
    }
}

/// Merges sorted changes (equal inputs may repeat) into a group's sorted entries,
/// dropping what cancels. The entries' values move to the merged entries; only a new
/// entry's values are copied from its change.
fn merge<'a>(group: &mut Group, width: usize, changes: impl Iterator<Item = (&'a [Value], isize)>) {
    // (the entries move out to vectors and back: a vector's iterator is lean)
    let (counts, old) = group.take_entries();
    let mut old = old.into_iter();
    let mut changes = changes.peekable();
    let room = counts.len() + changes.size_hint().0;
    let mut values: Vec<Value> = Vec::with_capacity(room * width);
    let mut merged: Vec<isize> = Vec::with_capacity(room);
    // the sum of the next change and every change equal to it
    let next_change = |changes: &mut std::iter::Peekable<_>| {
        let (inputs, mut n): (&'a [Value], isize) = changes.next()?;
        while let Some((_, m)) = changes.next_if(|(next, _): &(&[Value], isize)| *next == inputs) {
            n += m;
        }
        Some((inputs, n))
    };
    for n in counts {
        let entry = &old.as_slice()[..width];
        // the changes before this entry are new entries
        while changes.peek().is_some_and(|(inputs, _)| cmp_values(inputs, entry) == Ordering::Less) {
            if let Some((inputs, m)) = next_change(&mut changes)
                && m != 0
            {
                values.extend_from_slice(inputs);
                merged.push(m);
            }
        }
        let n = match changes.peek() {
            Some((inputs, _)) if cmp_values(inputs, entry) == Ordering::Equal => n + next_change(&mut changes).map_or(0, |(_, m)| m),
            _ => n,
        };
        if n != 0 {
            values.extend(old.by_ref().take(width));
            merged.push(n);
        } else {
            old.by_ref().take(width).for_each(drop);
        }
    }
    while let Some((inputs, m)) = next_change(&mut changes) {
        if m != 0 {
            values.extend_from_slice(inputs);
            merged.push(m);
        }
    }
    group.set_entries(merged, values, width);
}

/// Calls `f` with the value of slot `Column(c)` of each entry with a positive count, and the count.
#[inline]
fn each_in_column<'a>(c: usize, width: usize, values: &'a [Value], counts: &[isize], mut f: impl FnMut(&'a Value, isize)) {
    if width == 1 {
        // (the usual case: one input, so the entries are the values)
        for (v, n) in values.iter().zip(counts) {
            if *n > 0 {
                f(v, *n);
            }
        }
    } else {
        for (entry, n) in values.chunks_exact(width.max(1)).zip(counts) {
            if *n > 0 {
                f(&entry[c], *n);
            }
        }
    }
}

/// Computes aggregate `a` over a group's entries (those with a positive count).
fn aggregate(a: &Aggregate, slot: &Slot, width: usize, values: &[Value], counts: &[isize]) -> Value {
    if a.distinct {
        return aggregate_distinct(a, slot, width, values, counts);
    }
    if let (AggFunc::Min | AggFunc::Max, Slot::Column(0)) = (a.func, slot) {
        // The entries are sorted by their first input (NULL first): the first (last) one
        // present with a value is the least (greatest), without a walk over the others.
        // (Nexmark q7's max over every bid of a 10 s window walked them all each epoch.)
        let mut present = values.chunks_exact(width.max(1)).zip(counts).filter(|(entry, n)| **n > 0 && !entry[0].is_null()).map(|(entry, _)| &entry[0]);
        let found = if a.func == AggFunc::Min { present.next() } else { present.next_back() };
        return found.cloned().unwrap_or(Value::Null);
    }
    let mut totals = Totals::default();
    match slot {
        Slot::Column(c) => each_in_column(*c, width, values, counts, |v, n| {
            if !v.is_null() {
                totals.add(a.func, v, n);
            }
        }),
        Slot::Constant(Value::Null) => {}
        Slot::Constant(v) => {
            for n in counts {
                if *n > 0 {
                    totals.add(a.func, v, *n);
                }
            }
        }
    }
    totals.result(a)
}

/// Aggregate `a` over one value `m` times: what [`Totals`] computes for it, without
/// its accumulators. Most groups hold one entry (a group of engine-window's averages 1.4
/// events): [`apply`] computes their aggregates with this, inline, instead of calling
/// [`aggregate`] for each (73 instructions a call with the walk's iterators skipped, 92
/// with them; the four aggregates of each changed group were a tenth of engine-window's
/// worker: docs/benchmarks.md).
#[inline]
fn one_entry(a: &Aggregate, v: &Value, m: i64) -> Value {
    if v.is_null() {
        return if a.func == AggFunc::Count { Value::Int(0) } else { Value::Null };
    }
    match a.func {
        AggFunc::Count => Value::Int(m),
        AggFunc::Min | AggFunc::Max => v.clone(),
        AggFunc::Sum if a.output == DataType::Int => Value::Int(match v {
            Value::Int(x) => x.wrapping_mul(m),
            _ => 0,
        }),
        AggFunc::Sum | AggFunc::Avg => {
            // (`0.0 +`, as the accumulator starts: so that a sum of -0.0 is 0.0 there too)
            let sum = 0.0
                + match v {
                    Value::Int(x) => *x as f64 * m as f64,
                    Value::Float(x) => x * m as f64,
                    _ => 0.0,
                };
            Value::Float(if a.func == AggFunc::Avg { sum / m as f64 } else { sum })
        }
    }
}

/// `func(DISTINCT …)`: each distinct non-NULL value once.
fn aggregate_distinct(a: &Aggregate, slot: &Slot, width: usize, values: &[Value], counts: &[isize]) -> Value {
    let mut distinct: Vec<&Value> = match slot {
        Slot::Column(c) => {
            let mut present = Vec::with_capacity(counts.len());
            each_in_column(*c, width, values, counts, |v, _| {
                if !v.is_null() {
                    present.push(v);
                }
            });
            present
        }
        Slot::Constant(Value::Null) => Vec::new(),
        Slot::Constant(v) => counts.iter().filter(|n| **n > 0).map(|_| v).take(1).collect(),
    };
    distinct.sort();
    distinct.dedup();
    let mut totals = Totals::default();
    for v in distinct {
        totals.add(a.func, v, 1);
    }
    totals.result(a)
}

/// What an aggregate accumulates over its (non-NULL) values; only what its function needs.
#[derive(Default)]
struct Totals<'a> {
    count: i64,
    int_sum: i64,
    float_sum: f64,
    min: Option<&'a Value>,
    max: Option<&'a Value>,
}

impl<'a> Totals<'a> {
    #[inline]
    fn add(&mut self, func: AggFunc, v: &'a Value, n: isize) {
        self.count += n as i64;
        match func {
            AggFunc::Count => {}
            AggFunc::Sum | AggFunc::Avg => match v {
                Value::Int(x) => {
                    self.int_sum = self.int_sum.wrapping_add(x.wrapping_mul(n as i64));
                    self.float_sum += *x as f64 * n as f64;
                }
                Value::Float(x) => self.float_sum += x * n as f64,
                _ => {}
            },
            AggFunc::Min => {
                if self.min.is_none_or(|m| v < m) {
                    self.min = Some(v);
                }
            }
            AggFunc::Max => {
                if self.max.is_none_or(|m| v > m) {
                    self.max = Some(v);
                }
            }
        }
    }

    fn result(self, a: &Aggregate) -> Value {
        if a.func == AggFunc::Count {
            return Value::Int(self.count);
        }
        if self.count == 0 {
            return Value::Null;
        }
        match a.func {
            AggFunc::Count => Value::Int(self.count),
            AggFunc::Sum if a.output == DataType::Int => Value::Int(self.int_sum),
            AggFunc::Sum => Value::Float(self.float_sum),
            AggFunc::Avg => Value::Float(self.float_sum / self.count as f64),
            AggFunc::Min => self.min.cloned().unwrap_or(Value::Null),
            AggFunc::Max => self.max.cloned().unwrap_or(Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[i64]) -> Row {
        values.iter().map(|v| Value::Int(*v)).collect()
    }

    /// `count(*), max(value)` over values of one column.
    fn count_and_max() -> Vec<(Aggregate, Slot)> {
        let count = Aggregate { func: AggFunc::Count, arg: Scalar::Literal(Value::Int(1)), distinct: false, filter: None, output: DataType::Int };
        let max = Aggregate { func: AggFunc::Max, arg: Scalar::Column(0), distinct: false, filter: None, output: DataType::Int };
        vec![(count, Slot::Constant(Value::Int(1))), (max, Slot::Column(0))]
    }

    /// A group holding these entries (each `width` values).
    /// A group without a key holding these entries (each `width` values).
    fn group_of(width: usize, entries: &[(Row, isize)]) -> Group {
        let counts: Vec<isize> = entries.iter().map(|(_, n)| *n).collect();
        GroupRow::new(entries.iter().flat_map(|(r, _)| r.iter().cloned()).collect(), width, &counts)
    }

    fn entries_of(group: &Group, width: usize) -> Vec<(Row, isize)> {
        group.counts().iter().enumerate().map(|(j, n)| (group.values()[j * width..(j + 1) * width].to_vec(), *n)).collect()
    }

    #[test]
    fn one_entry_computes_what_the_accumulators_do() {
        let values = [Value::Null, Value::Int(0), Value::Int(-7), Value::Int(i64::MAX), Value::Float(-0.0), Value::Float(2.5), Value::Float(f64::NAN), Value::str("s")];
        for func in [AggFunc::Count, AggFunc::Sum, AggFunc::Avg, AggFunc::Min, AggFunc::Max] {
            for output in [DataType::Int, DataType::Float] {
                for distinct in [false, true] {
                    let a = Aggregate { func, arg: Scalar::Column(0), distinct, filter: None, output };
                    for v in &values {
                        for n in [1isize, 2, 3, 1000] {
                            let mut totals = Totals::default();
                            if !v.is_null() {
                                totals.add(func, v, if distinct { 1 } else { n });
                            }
                            let (want, got) = (totals.result(&a), one_entry(&a, v, if distinct { 1 } else { n as i64 }));
                            assert!(want == got && format!("{want:?}") == format!("{got:?}"), "{func:?} {output:?} {distinct} {v:?} x{n}: {want:?} against {got:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn merging_keeps_the_multiset_sorted_and_drops_what_cancels() {
        let mut group = group_of(2, &[(row(&[1, 0]), 2), (row(&[3, 0]), 1), (row(&[5, 0]), 1)]);
        let changes = [(row(&[0, 0]), 1), (row(&[3, 0]), -1), (row(&[4, 0]), 1), (row(&[4, 0]), 1), (row(&[5, 0]), 1), (row(&[9, 0]), -1)];
        merge(&mut group, 2, changes.iter().map(|(r, d)| (&r[..], *d)));
        assert_eq!(entries_of(&group, 2), vec![(row(&[0, 0]), 1), (row(&[1, 0]), 2), (row(&[4, 0]), 2), (row(&[5, 0]), 2), (row(&[9, 0]), -1)]);
        let mut group = group_of(2, &[(row(&[1, 0]), 1)]);
        merge(&mut group, 2, [(&row(&[1, 0])[..], -1)].into_iter());
        assert!(group.counts().is_empty() && group.values().is_empty());
    }

    #[test]
    fn changing_in_place_agrees_with_merging() {
        for (n, k) in [(0, 1), (3, 2), (10, 30), (100, 2), (100, 40), (1000, 3)] {
            // entries of two values; the changes' rows carry a key of one value first
            let values: Vec<(Row, isize)> = (0..n).map(|i| (row(&[2 * i, i % 3]), 1)).collect();
            let changes: Vec<(Row, isize)> = (0..k).map(|j| (row(&[7, 3 * j, j % 3]), if j % 2 == 0 { -1 } else { 2 })).collect();
            let mut expected: std::collections::BTreeMap<Row, isize> = values.iter().cloned().collect();
            for (r, d) in &changes {
                *expected.entry(r[1..].to_vec()).or_default() += d;
            }
            expected.retain(|_, d| *d != 0);
            let expected: Vec<(Row, isize)> = expected.into_iter().collect();
            let mut in_place = group_of(2, &values);
            for (r, d) in changes.clone() {
                change(&mut in_place, 2, r, 1, d);
            }
            assert_eq!(entries_of(&in_place, 2), expected, "{n} values, {k} changes in place");
            let mut sorted = changes.clone();
            sorted.sort();
            let mut merged = group_of(2, &values);
            merge(&mut merged, 2, sorted.iter().map(|(r, d)| (&r[1..], *d)));
            assert_eq!(entries_of(&merged, 2), expected, "{n} values, {k} changes merged");
        }
    }

    #[test]
    fn min_and_max_of_the_first_input_read_the_ends_of_the_sorted_entries() {
        let agg = |func, c| (Aggregate { func, arg: Scalar::Column(c), distinct: false, filter: None, output: DataType::Int }, Slot::Column(c));
        // entries (first, second), sorted: NULL first; a retracted entry (negative count) at either end
        let (null, int) = (Value::Null, Value::Int);
        let values = vec![null.clone(), int(9), int(1), int(5), int(2), null, int(7), int(0), int(8), int(3)];
        let counts = vec![2, -1, 1, 3, -2];
        let of = |func, c| {
            let (a, slot) = agg(func, c);
            aggregate(&a, &slot, 2, &values, &counts)
        };
        assert_eq!((of(AggFunc::Min, 0), of(AggFunc::Max, 0)), (int(2), int(7)));
        assert_eq!((of(AggFunc::Min, 1), of(AggFunc::Max, 1)), (int(0), int(9)));
        // nothing present: NULL
        let (a, slot) = agg(AggFunc::Max, 0);
        assert_eq!(aggregate(&a, &slot, 2, &values[..4], &[2, -1]), Value::Null);
    }

    #[test]
    fn a_group_without_inputs_counts_its_rows() {
        // DISTINCT: the whole row is the key, and each group has one entry, of no values
        let mut groups = Groups::new(None, 0, &[]);
        let mut out = Vec::new();
        apply(&mut groups, &[], vec![(row(&[1, 2]), 1), (row(&[1, 2]), 1), (row(&[3]), 1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        out.sort();
        assert_eq!(out, vec![(row(&[1, 2]), 1), (row(&[3]), 1)]);
        out.clear();
        apply(&mut groups, &[], vec![(row(&[1, 2]), -1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        assert!(out.is_empty());
        apply(&mut groups, &[], vec![(row(&[1, 2]), -1), (row(&[3]), -1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        out.sort();
        assert_eq!(out, vec![(row(&[1, 2]), -1), (row(&[3]), -1)]);
        assert_eq!(groups.table.len(), 0);
    }

    #[test]
    fn groups_small_and_large_agree_with_recomputing() {
        // a few keys, each receiving many updates per epoch (so that groups cross from
        // changing in place to merging within an epoch), some retracted in later epochs;
        // after every epoch the emitted rows add up to the aggregates recomputed from
        // scratch. With many keys, most groups hold one or two entries: with max (and
        // min), their rows hold them; and without.
        for keys in [4, 400] {
            for with_min in [false, true] {
                for in_row in [true, false] {
                    recompute(keys, with_min, in_row);
                }
            }
        }
    }

    /// `count(*), max(value)` (and `min(value)`) by key, against a recomputation.
    fn recompute(keys: i64, with_min: bool, in_row: bool) {
        let mut aggregates = count_and_max();
        if with_min {
            let min = Aggregate { func: AggFunc::Min, arg: Scalar::Column(0), distinct: false, filter: None, output: DataType::Int };
            aggregates.push((min, Slot::Column(0)));
        }
        let mut groups = Groups::new(Some(1), 1, &aggregates);
        assert_eq!(groups.in_row, Some(InRow { one: vec![if with_min { 2 } else { 1 }], two: with_min.then_some((2, 1)) }));
        if !in_row {
            groups.in_row = None;
        }
        let mut view: std::collections::BTreeMap<Row, isize> = Default::default();
        let mut all: std::collections::BTreeMap<(i64, i64), isize> = Default::default();
        let mut seed = 17u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        let mut seen = [0; 3];
        for epoch in 0..12 {
            let mut updates = Vec::new();
            for _ in 0..(if epoch % 3 == 0 { 400 } else { 30 }) {
                let (key, value) = (next() % keys, next() % 150);
                let present = all.get(&(key, value)).copied().unwrap_or(0);
                let diff = if present > 0 && next() % 3 == 0 { -1 } else { 1 };
                *all.entry((key, value)).or_default() += diff;
                updates.push((row(&[key, value]), diff));
            }
            apply(&mut groups, &aggregates, updates, |r, h, _, d| {
                assert_eq!(h, r.hash() as u32);
                *view.entry(r.to_row()).or_default() += d
            });
            view.retain(|_, d| *d != 0);
            let mut expected: std::collections::BTreeMap<Row, isize> = Default::default();
            for key in 0..keys {
                let values: Vec<(i64, isize)> = all.iter().filter(|((k, _), n)| *k == key && **n > 0).map(|((_, v), n)| (*v, *n)).collect();
                if let (Some(lo), Some(hi)) = (values.iter().map(|(v, _)| *v).min(), values.iter().map(|(v, _)| *v).max()) {
                    let count = values.iter().map(|(_, n)| *n as i64).sum();
                    expected.insert(row(&if with_min { vec![key, count, hi, lo] } else { vec![key, count, hi] }), 1);
                }
            }
            assert_eq!(view, expected, "after epoch {epoch}");
            assert!(groups.touched.iter().all(|t| !t));
            // (a group of one entry of count 1, or two with min and max, keeps them in its
            // row, if it can)
            for g in (0..groups.slab.len()).filter_map(|i| groups.slab[i].as_ref()) {
                let entries = g.group.in_row_entries();
                seen[entries] += 1;
                let could = match g.group.counts() {
                    [1] => in_row,
                    [1, 1] => in_row && with_min,
                    _ => false,
                };
                assert!(!could, "after epoch {epoch}: {:?} could be in its row", g.group.counts());
                assert!(entries < 2 || with_min);
            }
            // (every group's row is its key and the aggregates it last emitted)
            assert!((0..groups.slab.len()).all(|i| groups.slab[i].as_ref().is_none_or(|g| view.contains_key(&g.row.to_row()))));
        }
        if keys > 4 {
            assert_eq!((seen[1] > 0, seen[2] > 0), (in_row, in_row && with_min), "{seen:?}");
        }
    }

    #[test]
    fn the_operator_applies_each_epoch_in_order_when_one_container_holds_several() {
        use std::cell::RefCell;
        use std::rc::Rc;
        use differential_dataflow::input::Input;
        use timely::dataflow::operators::{Inspect, Probe};
        let aggregates = count_and_max();
        // (epoch, key, value, diff): several epochs go into the session before it is flushed,
        // as the dataflow worker does with queued batches, so containers mix epochs
        let updates: Vec<(Epoch, i64, i64, isize)> = vec![(1, 1, 5, 1), (1, 2, 7, 1), (2, 1, 9, 1), (2, 1, 5, -1), (3, 2, 7, -1), (3, 2, 3, 1), (4, 1, 9, -1)];
        let mut changes = timely::execute_directly(move |worker| {
            let out: Rc<RefCell<Vec<(Row, Epoch, isize)>>> = Rc::default();
            let seen = out.clone();
            let (mut input, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, updates) = scope.new_collection::<Row, isize>();
                let seen = seen.clone();
                let grouped = group(updates, Some(1), aggregates.clone());
                let (probe, _) = grouped.inner.inspect(move |change| seen.borrow_mut().push(change.clone())).probe();
                (input, probe)
            });
            for (epoch, key, value, diff) in &updates {
                input.advance_to(*epoch);
                input.update(row(&[*key, *value]), *diff);
            }
            input.advance_to(5);
            input.flush();
            while probe.less_than(&5) {
                worker.step();
            }
            let changes = out.borrow().clone();
            changes
        });
        changes.sort_by(|a, b| (a.1, &a.0, a.2).cmp(&(b.1, &b.0, b.2)));
        assert_eq!(
            changes,
            vec![
                (row(&[1, 1, 5]), 1, 1),
                (row(&[2, 1, 7]), 1, 1),
                (row(&[1, 1, 5]), 2, -1),
                (row(&[1, 1, 9]), 2, 1),
                (row(&[2, 1, 3]), 3, 1),
                (row(&[2, 1, 7]), 3, -1),
                (row(&[1, 1, 9]), 4, -1),
            ]
        );
    }

    #[test]
    fn running_totals_agree_with_recomputing() {
        // count(*), count(x), sum(x) by key, x sometimes NULL: kept as running totals; after
        // every epoch (some retracting earlier rows) the emitted rows add up to the
        // aggregates recomputed from scratch, and a group whose rows all cancel leaves
        let aggregate = |func, arg, output| Aggregate { func, arg, distinct: false, filter: None, output };
        let aggregates = vec![
            (aggregate(AggFunc::Count, Scalar::Literal(Value::Int(1)), DataType::Int), Slot::Constant(Value::Int(1))),
            (aggregate(AggFunc::Count, Scalar::Column(1), DataType::Int), Slot::Column(0)),
            (aggregate(AggFunc::Sum, Scalar::Column(1), DataType::Int), Slot::Column(0)),
        ];
        let mut groups = Groups::new(Some(1), 1, &aggregates);
        assert!(groups.summed);
        let mut view: std::collections::BTreeMap<Row, isize> = Default::default();
        let mut all: Vec<(i64, Option<i64>)> = Vec::new();
        let mut seed = 23u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        let input = |key: i64, x: Option<i64>| vec![Value::Int(key), x.map_or(Value::Null, Value::Int)];
        for epoch in 0..12 {
            let mut updates = Vec::new();
            for _ in 0..(if epoch % 3 == 0 { 300 } else { 40 }) {
                if !all.is_empty() && next() % 3 == 0 {
                    let (key, x) = all.swap_remove(next() as usize % all.len());
                    updates.push((input(key, x), -1));
                } else {
                    let (key, x) = (next() % 5, Some(next() % 100 - 50).filter(|x| x % 7 != 0));
                    all.push((key, x));
                    updates.push((input(key, x), 1));
                }
            }
            // and a key whose rows come and go within the epoch
            updates.push((input(9, Some(1)), 1));
            updates.push((input(9, Some(1)), -1));
            apply(&mut groups, &aggregates, updates, |r, h, _, d| {
                assert_eq!(h, r.hash() as u32);
                *view.entry(r.to_row()).or_default() += d
            });
            view.retain(|_, d| *d != 0);
            let mut expected: std::collections::BTreeMap<Row, isize> = Default::default();
            for key in 0..5 {
                let rows: Vec<Option<i64>> = all.iter().filter(|(k, _)| *k == key).map(|(_, x)| *x).collect();
                if !rows.is_empty() {
                    let present: Vec<i64> = rows.iter().flatten().copied().collect();
                    let sum = if present.is_empty() { Value::Null } else { Value::Int(present.iter().sum()) };
                    expected.insert(vec![Value::Int(key), Value::Int(rows.len() as i64), Value::Int(present.len() as i64), sum], 1);
                }
            }
            assert_eq!(view, expected, "after epoch {epoch}");
            assert_eq!(groups.table.len(), expected.len());
        }
    }

    #[test]
    fn a_group_emits_its_old_row_and_its_new_one_and_leaves_when_emptied() {
        let aggregates = count_and_max();
        let mut groups = Groups::new(Some(1), 1, &aggregates);
        let mut out = Vec::new();
        apply(&mut groups, &aggregates, vec![(row(&[7, 4]), 1), (row(&[7, 2]), 1), (row(&[8, 1]), 1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        out.sort();
        assert_eq!(out, vec![(row(&[7, 2, 4]), 1), (row(&[8, 1, 1]), 1)]);
        out.clear();
        // an update that changes nothing visible emits nothing
        apply(&mut groups, &aggregates, vec![(row(&[7, 2]), 1), (row(&[7, 3]), 1), (row(&[7, 2]), -1), (row(&[7, 3]), -1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        assert!(out.is_empty());
        let mut slots = Vec::new();
        apply(&mut groups, &aggregates, vec![(row(&[7, 9]), 1)], |r, h, i, d| {
            assert_eq!(h, r.hash() as u32);
            slots.push(i);
            out.push((r.to_row(), d))
        });
        assert_eq!(out, vec![(row(&[7, 2, 4]), -1), (row(&[7, 3, 9]), 1)]);
        assert_eq!(slots, vec![0, 0], "a group's rows come with its slot");
        out.clear();
        apply(&mut groups, &aggregates, vec![(row(&[7, 9]), -1), (row(&[7, 4]), -1), (row(&[7, 2]), -1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        assert_eq!(out, vec![(row(&[7, 3, 9]), -1)]);
        // the emptied group's place is reused
        assert_eq!(groups.free.len(), 1);
        apply(&mut groups, &aggregates, vec![(row(&[7, 5]), 1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        assert_eq!(out.last(), Some(&(row(&[7, 1, 5]), 1)));
        assert!(groups.free.is_empty());
        assert_eq!(groups.table.len(), 2);
        // updates to a new key that cancel within the epoch leave no group behind
        out.clear();
        apply(&mut groups, &aggregates, vec![(row(&[9, 1]), 1), (row(&[9, 1]), -1)], |r, h, _, d| {
            assert_eq!(h, r.hash() as u32);
            out.push((r.to_row(), d))
        });
        assert!(out.is_empty());
        assert_eq!(groups.table.len(), 2);
        assert_eq!(groups.free.len(), 1);
    }
}
