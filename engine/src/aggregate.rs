//! `GROUP BY` (and `DISTINCT`, a grouping without aggregates) in the dataflow: one
//! operator that keeps each group's input values and emits the group's row whenever an
//! epoch changes it.
//!
//! ```text
//!   (key, values) updates ──exchange by key──▶ Aggregate ──(key ++ aggregates) changes──▶
//!                                              per group: its row (key, then the
//!                                              aggregates last emitted) and the
//!                                              sorted multiset of its values
//! ```
//!
//! Epochs are totally ordered and an epoch's output depends only on the updates through
//! it, so the operator buffers updates by epoch and, once the input frontier has passed
//! an epoch, applies it: each update goes to its group's sorted multiset (in place for a
//! small group; a large one merges the epoch's consolidated updates once), and then each
//! touched group recomputes its aggregates and emits a retraction of the old row and the
//! new row if they differ. This is what differential's `reduce` computes for a
//! total order, without the two arrangements (input and output, each a sorted spine
//! merged in the background with a history per key) that a partially ordered time needs:
//! see docs/architecture.md.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::{Capability, Operator};

use crate::expr::Scalar;
use crate::plan::{AggFunc, Aggregate};
use crate::schema::DataType;
use crate::time::Epoch;
use crate::value::{Row, Value};

/// Where an aggregate finds its input value for each event.
#[derive(Clone)]
pub enum Slot {
    /// At this position of the event's values.
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

/// One group: its row (its key, then the aggregates last emitted for it: none before
/// the first) and its input values (sorted, consolidated, no zero counts).
#[derive(Default)]
struct Group {
    row: Row,
    values: Vec<(Row, isize)>,
}

/// The groups of one worker: a slab of groups and a hash table of slab positions by key
/// (each key is held once, at the start of its group's row; the table keeps each key's
/// hash beside its position, so growing the table does not hash the keys again).
#[derive(Default)]
struct Groups {
    /// How many values of a group's row are its key (`None`: all of them, as in DISTINCT).
    key_len: Option<usize>,
    table: hashbrown::HashTable<(u64, usize)>,
    slab: Vec<Group>,
    /// Beside the slab: whether the epoch being applied has touched the group yet.
    touched: Vec<bool>,
    free: Vec<usize>,
    hasher: foldhash::fast::FixedState,
    /// The aggregates being computed (reused).
    scratch: Row,
}

impl Groups {
    fn new(key_len: Option<usize>) -> Groups {
        Groups { key_len, ..Groups::default() }
    }

    fn key_len(&self, row: &[Value]) -> usize {
        self.key_len.unwrap_or(row.len())
    }

    /// The slab position of the key's group (made, empty, if there was none).
    fn position(&mut self, key: Row) -> usize {
        let k = self.key_len(&key);
        let hash = self.hasher.hash_one(&key[..]);
        let slab = &mut self.slab;
        if let Some((_, i)) = self.table.find(hash, |(h, i)| *h == hash && slab[*i].row[..k] == key[..]) {
            return *i;
        }
        let i = self.free.pop().unwrap_or_else(|| {
            slab.push(Group::default());
            self.touched.push(false);
            slab.len() - 1
        });
        slab[i].row = key;
        self.table.insert_unique(hash, (hash, i), |(h, _)| *h);
        i
    }

    /// Forgets a group (its values are gone).
    fn remove(&mut self, i: usize) -> Group {
        let group = std::mem::take(&mut self.slab[i]);
        let hash = self.hasher.hash_one(&group.row[..self.key_len(&group.row)]);
        if let Ok(entry) = self.table.find_entry(hash, |(_, j)| *j == i) {
            entry.remove();
        }
        self.free.push(i);
        group
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
        let (_, slots) = inputs(aggregates);
        Grouping { groups: Groups::new(Some(key_len)), aggregates: aggregates.iter().cloned().zip(slots).collect() }
    }

    /// Applies one epoch's `(key, values)` updates (values as [`inputs`] lays them out);
    /// `emit` gets each changed group's old row (-1) and new row (+1).
    pub fn apply(&mut self, updates: Vec<((Row, Row), isize)>, emit: impl FnMut(Row, isize)) {
        apply(&mut self.groups, &self.aggregates, updates, emit)
    }
}

type Update = ((Row, Row), Epoch, isize);

/// Groups `(key, values)` updates by key; each group becomes one row, `key ++ aggregates`.
/// Every key must have `key_len` values (`None`: keys are whole rows, without aggregates).
pub fn group<'s>(input: VecCollection<'s, Epoch, (Row, Row), isize>, key_len: Option<usize>, aggregates: Vec<(Aggregate, Slot)>) -> VecCollection<'s, Epoch, Row, isize> {
    if timely::dataflow::Scope::peers(&input.inner.scope()) > 1 {
        let by_key = Exchange::new(|((key, _), _, _): &Update| key.hashed());
        operator(input, by_key, key_len, aggregates)
    } else {
        operator(input, Pipeline, key_len, aggregates)
    }
}

fn operator<'s, P>(input: VecCollection<'s, Epoch, (Row, Row), isize>, pact: P, key_len: Option<usize>, aggregates: Vec<(Aggregate, Slot)>) -> VecCollection<'s, Epoch, Row, isize>
where
    P: ParallelizationContract<Epoch, Vec<Update>>,
{
    input
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(Row, Epoch, isize)>>, _, _, _>(pact, "Aggregate", move |_, _| {
            // each epoch's updates, in the containers they came in
            let mut pending: BTreeMap<Epoch, (Capability<Epoch>, Vec<Vec<Update>>)> = BTreeMap::new();
            let mut groups = Groups::new(key_len);
            move |(input, frontier), output| {
                input.for_each(|cap, updates| {
                    let Some(t) = updates.first().map(|(_, t, _)| *t) else { return };
                    if updates.iter().all(|(_, u, _)| *u == t) {
                        // (the usual case: the container is one epoch's, and is kept whole)
                        pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new())).1.push(std::mem::take(updates));
                        return;
                    }
                    for update in updates.drain(..) {
                        let t = update.1;
                        let (_, containers) = pending.entry(t).or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                        match containers.last_mut() {
                            Some(last) => last.push(update),
                            None => containers.push(vec![update]),
                        }
                    }
                });
                // apply every epoch the frontier has passed, in order
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (t, (cap, updates)) = entry.remove_entry();
                    let mut session = output.session(&cap);
                    let updates = updates.into_iter().flatten().map(|(kv, _, diff)| (kv, diff));
                    apply(&mut groups, &aggregates, updates, |row, diff| session.give((row, t, diff)));
                }
            }
        })
        .as_collection()
}

/// A group with fewer values than this takes each change in place as it comes (a binary
/// search and a short move); a larger one collects the epoch's changes and merges them
/// into its values once. (64 measured 50% more CPU time than sorting every update on
/// `engine-hop`, whose groups hold tens of values, though callgrind counted fewer
/// instructions: each probe of a binary search is a row elsewhere in memory.)
const IN_PLACE: usize = 8;

/// Applies one epoch's updates; `emit` gets each changed group's old row (-1) and new row (+1).
fn apply(groups: &mut Groups, aggregates: &[(Aggregate, Slot)], updates: impl IntoIterator<Item = ((Row, Row), isize)>, mut emit: impl FnMut(Row, isize)) {
    // the groups the epoch touches, in the order it first does, and whether each was empty
    let mut touched: Vec<(usize, bool)> = Vec::new();
    // changes to large groups, merged below
    let mut deferred: Vec<((usize, Row), isize)> = Vec::new();
    for ((key, vals), diff) in updates {
        let i = groups.position(key);
        let values = &mut groups.slab[i].values;
        if !groups.touched[i] {
            groups.touched[i] = true;
            touched.push((i, values.is_empty()));
        }
        if values.len() < IN_PLACE {
            change(values, vals, diff);
        } else {
            deferred.push(((i, vals), diff));
        }
    }
    if !deferred.is_empty() {
        // sorted by position and value: each group's changes come out sorted and consolidated
        differential_dataflow::consolidation::consolidate(&mut deferred);
        for run in deferred.chunk_by_mut(|((i, _), _), ((j, _), _)| i == j) {
            let values = &mut groups.slab[run[0].0 .0].values;
            *values = merge(std::mem::take(values), run.iter_mut().map(|((_, v), d)| (std::mem::take(v), *d)));
        }
    }
    for (i, was_empty) in touched {
        groups.touched[i] = false;
        let k = groups.key_len;
        let group = &mut groups.slab[i];
        let k = k.unwrap_or(group.row.len());
        if group.values.is_empty() {
            // (a group made for updates that all cancel is forgotten without a word)
            let group = groups.remove(i);
            if !was_empty {
                emit(group.row, -1);
            }
            continue;
        }
        let now = &mut groups.scratch;
        now.clear();
        now.extend(aggregates.iter().map(|(a, slot)| aggregate(a, slot, &group.values)));
        if was_empty {
            group.row.extend_from_slice(now);
            emit(group.row.clone(), 1);
        } else if group.row[k..] != now[..] {
            emit(group.row.clone(), -1);
            group.row.truncate(k);
            group.row.extend_from_slice(now);
            emit(group.row.clone(), 1);
        }
    }
}

/// Applies one change to a sorted multiset in place, dropping the value if it cancels.
fn change(values: &mut Vec<(Row, isize)>, row: Row, diff: isize) {
    match values.binary_search_by(|(v, _)| v.cmp(&row)) {
        Ok(at) => {
            values[at].1 += diff;
            if values[at].1 == 0 {
                values.remove(at);
            }
        }
        Err(at) => values.insert(at, (row, diff)),
    }
}

/// Merges sorted, consolidated changes into a sorted multiset, dropping what cancels.
fn merge(values: Vec<(Row, isize)>, changes: impl Iterator<Item = (Row, isize)>) -> Vec<(Row, isize)> {
    let mut changes = changes.peekable();
    if values.is_empty() {
        return changes.collect();
    }
    let mut out = Vec::with_capacity(values.len() + changes.size_hint().0);
    let mut values = values.into_iter().peekable();
    loop {
        let order = match (values.peek(), changes.peek()) {
            (Some(a), Some(b)) => a.0.cmp(&b.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        match order {
            std::cmp::Ordering::Less => out.push(values.next().expect("peeked")),
            std::cmp::Ordering::Greater => out.push(changes.next().expect("peeked")),
            std::cmp::Ordering::Equal => {
                let (row, n) = values.next().expect("peeked");
                let (_, m) = changes.next().expect("peeked");
                if n + m != 0 {
                    out.push((row, n + m));
                }
            }
        }
    }
    out
}

/// Computes aggregate `a` over a group's values (those with a positive count).
fn aggregate(a: &Aggregate, slot: &Slot, vals: &[(Row, isize)]) -> Value {
    if a.distinct {
        return aggregate_distinct(a, slot, vals);
    }
    let mut totals = Totals::default();
    match slot {
        Slot::Column(i) => {
            for (row, n) in vals {
                if *n > 0 && !row[*i].is_null() {
                    totals.add(a.func, &row[*i], *n);
                }
            }
        }
        Slot::Constant(Value::Null) => {}
        Slot::Constant(v) => {
            for (_, n) in vals {
                if *n > 0 {
                    totals.add(a.func, v, *n);
                }
            }
        }
    }
    totals.result(a)
}

/// `func(DISTINCT …)`: each distinct non-NULL value once.
fn aggregate_distinct(a: &Aggregate, slot: &Slot, vals: &[(Row, isize)]) -> Value {
    let present = vals.iter().filter(|(_, n)| *n > 0);
    let mut distinct: Vec<&Value> = match slot {
        Slot::Column(i) => present.map(|(row, _)| &row[*i]).filter(|v| !v.is_null()).collect(),
        Slot::Constant(Value::Null) => Vec::new(),
        Slot::Constant(v) => present.map(|_| v).take(1).collect(),
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

    #[test]
    fn merging_keeps_the_multiset_sorted_and_drops_what_cancels() {
        let values = vec![(row(&[1]), 2), (row(&[3]), 1), (row(&[5]), 1)];
        let changes = vec![(row(&[0]), 1), (row(&[3]), -1), (row(&[4]), 2), (row(&[5]), 1), (row(&[9]), -1)];
        let merged = merge(values, changes.into_iter());
        assert_eq!(merged, vec![(row(&[0]), 1), (row(&[1]), 2), (row(&[4]), 2), (row(&[5]), 2), (row(&[9]), -1)]);
        assert!(merge(vec![(row(&[1]), 1)], vec![(row(&[1]), -1)].into_iter()).is_empty());
    }

    #[test]
    fn changing_in_place_agrees_with_merging() {
        for (n, k) in [(0, 1), (3, 2), (10, 30), (100, 2), (100, 40), (1000, 3)] {
            let values: Vec<(Row, isize)> = (0..n).map(|i| (row(&[2 * i]), 1)).collect();
            let changes: Vec<(Row, isize)> = (0..k).map(|j| (row(&[3 * j]), if j % 2 == 0 { -1 } else { 2 })).collect();
            let mut expected: std::collections::BTreeMap<Row, isize> = values.iter().cloned().collect();
            for (r, d) in &changes {
                *expected.entry(r.clone()).or_default() += d;
            }
            expected.retain(|_, d| *d != 0);
            let expected: Vec<(Row, isize)> = expected.into_iter().collect();
            let mut in_place = values.clone();
            for (r, d) in changes.clone() {
                change(&mut in_place, r, d);
            }
            assert_eq!(in_place, expected, "{n} values, {k} changes in place");
            assert_eq!(merge(values, changes.into_iter()), expected, "{n} values, {k} changes merged");
        }
    }

    #[test]
    fn groups_small_and_large_agree_with_recomputing() {
        // a few keys, each receiving many updates per epoch (so that groups cross from
        // changing in place to merging within an epoch), some retracted in later epochs;
        // after every epoch the emitted rows add up to count and max recomputed from scratch
        let aggregates = count_and_max();
        let mut groups = Groups::new(Some(1));
        let mut view: std::collections::BTreeMap<Row, isize> = Default::default();
        let mut all: std::collections::BTreeMap<(i64, i64), isize> = Default::default();
        let mut seed = 17u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        for epoch in 0..12 {
            let mut updates = Vec::new();
            for _ in 0..(if epoch % 3 == 0 { 400 } else { 30 }) {
                let (key, value) = (next() % 4, next() % 150);
                let present = all.get(&(key, value)).copied().unwrap_or(0);
                let diff = if present > 0 && next() % 3 == 0 { -1 } else { 1 };
                *all.entry((key, value)).or_default() += diff;
                updates.push(((row(&[key]), row(&[value])), diff));
            }
            apply(&mut groups, &aggregates, updates, |r, d| *view.entry(r).or_default() += d);
            view.retain(|_, d| *d != 0);
            let mut expected: std::collections::BTreeMap<Row, isize> = Default::default();
            for key in 0..4 {
                let values: Vec<(i64, isize)> = all.iter().filter(|((k, _), n)| *k == key && **n > 0).map(|((_, v), n)| (*v, *n)).collect();
                if let Some(hi) = values.iter().map(|(v, _)| *v).max() {
                    expected.insert(row(&[key, values.iter().map(|(_, n)| *n as i64).sum(), hi]), 1);
                }
            }
            assert_eq!(view, expected, "after epoch {epoch}");
            assert!(groups.touched.iter().all(|t| !t));
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
                let (input, updates) = scope.new_collection::<(Row, Row), isize>();
                let seen = seen.clone();
                let grouped = group(updates, Some(1), aggregates.clone());
                let (probe, _) = grouped.inner.inspect(move |change| seen.borrow_mut().push(change.clone())).probe();
                (input, probe)
            });
            for (epoch, key, value, diff) in &updates {
                input.advance_to(*epoch);
                input.update((row(&[*key]), row(&[*value])), *diff);
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
    fn a_group_emits_its_old_row_and_its_new_one_and_leaves_when_emptied() {
        let aggregates = count_and_max();
        let mut groups = Groups::new(Some(1));
        let mut out = Vec::new();
        let k = || row(&[7]);
        apply(&mut groups, &aggregates, vec![((k(), row(&[4])), 1), ((k(), row(&[2])), 1), ((row(&[8]), row(&[1])), 1)], |r, d| out.push((r, d)));
        out.sort();
        assert_eq!(out, vec![(row(&[7, 2, 4]), 1), (row(&[8, 1, 1]), 1)]);
        out.clear();
        // an update that changes nothing visible emits nothing
        apply(&mut groups, &aggregates, vec![((k(), row(&[2])), 1), ((k(), row(&[3])), 1), ((k(), row(&[2])), -1), ((k(), row(&[3])), -1)], |r, d| out.push((r, d)));
        assert!(out.is_empty());
        apply(&mut groups, &aggregates, vec![((k(), row(&[9])), 1)], |r, d| out.push((r, d)));
        assert_eq!(out, vec![(row(&[7, 2, 4]), -1), (row(&[7, 3, 9]), 1)]);
        out.clear();
        apply(&mut groups, &aggregates, vec![((k(), row(&[9])), -1), ((k(), row(&[4])), -1), ((k(), row(&[2])), -1)], |r, d| out.push((r, d)));
        assert_eq!(out, vec![(row(&[7, 3, 9]), -1)]);
        // the emptied group's place is reused
        assert_eq!(groups.free.len(), 1);
        apply(&mut groups, &aggregates, vec![((k(), row(&[5])), 1)], |r, d| out.push((r, d)));
        assert_eq!(out.last(), Some(&(row(&[7, 1, 5]), 1)));
        assert!(groups.free.is_empty());
        assert_eq!(groups.table.len(), 2);
        // updates to a new key that cancel within the epoch leave no group behind
        out.clear();
        apply(&mut groups, &aggregates, vec![((row(&[9]), row(&[1])), 1), ((row(&[9]), row(&[1])), -1)], |r, d| out.push((r, d)));
        assert!(out.is_empty());
        assert_eq!(groups.table.len(), 2);
        assert_eq!(groups.free.len(), 1);
    }
}
