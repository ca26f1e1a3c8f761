//! Inner equi-joins in the dataflow: one operator that keeps each side's rows by join
//! key and, once both inputs have passed an epoch, joins that epoch's changes with the
//! other side's rows.
//!
//! ```text
//!   left rows  ──exchange by key──▶ Join ──(left ++ right) changes──▶
//!   right rows ──exchange by key──▶   per side: a hash table of join keys, each with
//!                                     its rows (sorted, with their counts)
//! ```
//!
//! Epochs are totally ordered and an epoch's output depends only on the updates through
//! it, so an epoch's changes `ΔL` and `ΔR` give the change of the join as
//! `ΔL ⋈ R + L' ⋈ ΔR`, with `R` the right side before the epoch and `L' = L + ΔL` the
//! left side after it: the left changes probe the right side first, then go into the
//! left side, then the right changes probe the new left side and go into the right side.
//! This is what differential's `join_core` over two arrangements computes for a total
//! order, without the arrangements (each a spine of sorted batches merged in the
//! background, with a history of times per row, that a partially ordered time needs):
//! see docs/architecture.md. Rows with a NULL in their key never match and are not kept.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use differential_dataflow::{AsCollection, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::{Capability, Operator};

use crate::aggregate::{stash, Update};
use crate::expr::{eval_all, Scalar};
use crate::time::Epoch;
use crate::value::{hash_row, sorted_by_prefix, Row, Value};

/// A key's rows on one side: sorted, each with its count (never zero).
struct Keyed {
    hash: u64,
    key: Row,
    rows: Vec<(Row, isize)>,
}

/// One side's rows by join key: a slab of keys and a hash table of slab positions.
#[derive(Default)]
struct Side {
    table: hashbrown::HashTable<usize>,
    slab: Vec<Keyed>,
    free: Vec<usize>,
}

/// A key with fewer rows than this takes each change in place as it comes (a binary
/// search and a short move); a larger one collects the epoch's changes and merges them
/// once (as the grouping operator does).
const IN_PLACE: usize = 8;

impl Side {
    /// The rows of the key, if it has any.
    fn rows(&self, hash: u64, key: &[Value]) -> &[(Row, isize)] {
        match self.table.find(hash, |i| self.slab[*i].hash == hash && self.slab[*i].key == key) {
            Some(i) => &self.slab[*i].rows,
            None => &[],
        }
    }

    /// Applies one change to the key's rows: in place for a small key, otherwise into
    /// `deferred` (slab position, row, diff) for [`Side::merge_deferred`].
    fn change(&mut self, hash: u64, key: Row, row: Row, diff: isize, deferred: &mut Vec<(usize, Row, isize)>) {
        let slab = &self.slab;
        let i = match self.table.find(hash, |i| slab[*i].hash == hash && slab[*i].key == key) {
            Some(i) => *i,
            None => {
                let keyed = Keyed { hash, key, rows: Vec::with_capacity(1) };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slab[i] = keyed;
                        i
                    }
                    None => {
                        self.slab.push(keyed);
                        self.slab.len() - 1
                    }
                };
                let slab = &self.slab;
                self.table.insert_unique(hash, i, |j| slab[*j].hash);
                i
            }
        };
        let rows = &mut self.slab[i].rows;
        if rows.len() >= IN_PLACE {
            deferred.push((i, row, diff));
            return;
        }
        match rows.binary_search_by(|(r, _)| r.cmp(&row)) {
            Ok(at) => {
                rows[at].1 += diff;
                if rows[at].1 == 0 {
                    rows.remove(at);
                    if rows.is_empty() {
                        self.remove(i);
                    }
                }
            }
            Err(at) => rows.insert(at, (row, diff)),
        }
    }

    /// Merges the changes deferred for large keys (each key's changes sorted, equal rows
    /// summed, what cancels dropped) and forgets keys left without rows.
    fn merge_deferred(&mut self, deferred: &mut Vec<(usize, Row, isize)>) {
        let order = sorted_by_prefix(deferred, |(i, row, _)| (*i, row));
        let mut changes = order
            .iter()
            .map(|n| {
                let (i, row, diff) = &mut deferred[*n as usize];
                (*i, std::mem::take(row), *diff)
            })
            .peekable();
        while let Some((i, row, diff)) = changes.next() {
            let old = std::mem::take(&mut self.slab[i].rows);
            let mut merged = Vec::with_capacity(old.len() + 1);
            let mut old = old.into_iter().peekable();
            let mut next = Some((row, diff));
            while let Some((row, mut diff)) = next.take() {
                while let Some((_, _, d)) = changes.next_if(|(j, r, _)| *j == i && *r == row) {
                    diff += d;
                }
                while let Some(entry) = old.next_if(|(r, _)| *r < row) {
                    merged.push(entry);
                }
                if let Some((_, n)) = old.next_if(|(r, _)| *r == row) {
                    diff += n;
                }
                if diff != 0 {
                    merged.push((row, diff));
                }
                next = changes.next_if(|(j, _, _)| *j == i).map(|(_, r, d)| (r, d));
            }
            merged.extend(old);
            if merged.is_empty() {
                self.remove(i);
            } else {
                self.slab[i].rows = merged;
            }
        }
        drop(changes);
        deferred.clear();
    }

    fn remove(&mut self, i: usize) {
        let hash = self.slab[i].hash;
        if let Ok(entry) = self.table.find_entry(hash, |j| *j == i) {
            entry.remove();
        }
        self.slab[i] = Keyed { hash: 0, key: Row::new(), rows: Vec::new() };
        self.free.push(i);
    }

    /// How many keys have rows.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// A join's two sides and its step.
struct Joining<F> {
    left_keys: Vec<Scalar>,
    right_keys: Vec<Scalar>,
    combine: F,
    left: Side,
    right: Side,
    deferred: Vec<(usize, Row, isize)>,
}

impl<F: Fn(&Row, &Row) -> Option<Row>> Joining<F> {
    fn new(left_keys: Vec<Scalar>, right_keys: Vec<Scalar>, combine: F) -> Joining<F> {
        Joining { left_keys, right_keys, combine, left: Side::default(), right: Side::default(), deferred: Vec::new() }
    }

    /// The row's join key and its hash, unless the key has a NULL.
    fn key(&self, keys: &[Scalar], row: &Row) -> Option<(u64, Row)> {
        let key = eval_all(keys, row);
        (!key.iter().any(Value::is_null)).then(|| (hash_row(&key, 0), key))
    }

    /// Applies one epoch's changes to both sides; `emit` gets the join's changes.
    fn apply(&mut self, left: impl IntoIterator<Item = (Row, isize)>, right: impl IntoIterator<Item = (Row, isize)>, mut emit: impl FnMut(Row, isize)) {
        // ΔL ⋈ R, then L' = L + ΔL
        for (row, diff) in left {
            if diff == 0 {
                continue;
            }
            let Some((hash, key)) = self.key(&self.left_keys, &row) else { continue };
            for (r, n) in self.right.rows(hash, &key) {
                if let Some(out) = (self.combine)(&row, r) {
                    emit(out, diff * n);
                }
            }
            self.left.change(hash, key, row, diff, &mut self.deferred);
        }
        self.left.merge_deferred(&mut self.deferred);
        // L' ⋈ ΔR, then R' = R + ΔR
        for (row, diff) in right {
            if diff == 0 {
                continue;
            }
            let Some((hash, key)) = self.key(&self.right_keys, &row) else { continue };
            for (l, n) in self.left.rows(hash, &key) {
                if let Some(out) = (self.combine)(l, &row) {
                    emit(out, n * diff);
                }
            }
            self.right.change(hash, key, row, diff, &mut self.deferred);
        }
        self.right.merge_deferred(&mut self.deferred);
    }
}

/// Joins `left` and `right` where `left_keys` evaluated on a left row equal
/// `right_keys` on a right row (no NULL ever equal); `combine` makes the output row of a
/// matching pair, or `None` to drop it (a residual condition).
pub fn join<'s, F>(left: VecCollection<'s, Epoch, Row, isize>, right: VecCollection<'s, Epoch, Row, isize>, left_keys: Vec<Scalar>, right_keys: Vec<Scalar>, combine: F) -> VecCollection<'s, Epoch, Row, isize>
where
    F: Fn(&Row, &Row) -> Option<Row> + 'static,
{
    if timely::dataflow::Scope::peers(&left.inner.scope()) > 1 {
        // (seeded apart from the sides' tables, as the grouping's exchange is)
        let by_key = |keys: Vec<Scalar>| {
            let hasher = foldhash::fast::FixedState::with_seed(0x5eed_0f_301e);
            Exchange::new(move |(row, _, _): &Update| hasher.hash_one(eval_all(&keys, row)))
        };
        let (l, r) = (by_key(left_keys.clone()), by_key(right_keys.clone()));
        operator(left, right, l, r, Joining::new(left_keys, right_keys, combine))
    } else {
        operator(left, right, Pipeline, Pipeline, Joining::new(left_keys, right_keys, combine))
    }
}

/// One epoch's changes on each side, in the containers they came in.
struct Pending {
    capability: Capability<Epoch>,
    left: Vec<Vec<Update>>,
    right: Vec<Vec<Update>>,
}

fn operator<'s, P1, P2, F>(left: VecCollection<'s, Epoch, Row, isize>, right: VecCollection<'s, Epoch, Row, isize>, pact1: P1, pact2: P2, mut joining: Joining<F>) -> VecCollection<'s, Epoch, Row, isize>
where
    P1: ParallelizationContract<Epoch, Vec<Update>>,
    P2: ParallelizationContract<Epoch, Vec<Update>>,
    F: Fn(&Row, &Row) -> Option<Row> + 'static,
{
    left.inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<Update>>, _, _, _, _>(right.inner, pact1, pact2, "Join", move |_, _| {
            let mut pending: BTreeMap<Epoch, Pending> = BTreeMap::new();
            move |(input1, frontier1), (input2, frontier2), output| {
                let new = |capability| Pending { capability, left: Vec::new(), right: Vec::new() };
                input1.for_each(|cap, updates| stash(&mut pending, &cap, updates, new, |p| &mut p.left));
                input2.for_each(|cap, updates| stash(&mut pending, &cap, updates, new, |p| &mut p.right));
                // apply every epoch both inputs have passed, in order
                while let Some(entry) = pending.first_entry() {
                    if frontier1.less_equal(entry.key()) || frontier2.less_equal(entry.key()) {
                        break;
                    }
                    let (t, Pending { capability, left, right }) = entry.remove_entry();
                    let mut session = output.session(&capability);
                    let (left, right) = (left.into_iter().flatten().map(|(row, _, diff)| (row, diff)), right.into_iter().flatten().map(|(row, _, diff)| (row, diff)));
                    joining.apply(left, right, |row, diff| session.give((row, t, diff)));
                }
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn row(values: &[i64]) -> Row {
        values.iter().map(|v| Value::Int(*v)).collect()
    }

    fn concat(l: &Row, r: &Row) -> Option<Row> {
        Some(l.iter().chain(r).cloned().collect())
    }

    /// The join of two multisets, recomputed.
    fn recomputed(left: &BTreeMap<Row, isize>, right: &BTreeMap<Row, isize>) -> BTreeMap<Row, isize> {
        let mut out = BTreeMap::new();
        for (l, n) in left {
            for (r, m) in right {
                if l[0] == r[0] {
                    *out.entry(concat(l, r).unwrap()).or_default() += n * m;
                }
            }
        }
        out.retain(|_, n| *n != 0);
        out
    }

    #[test]
    fn epochs_of_changes_on_both_sides_agree_with_recomputing_the_join() {
        let mut joining = Joining::new(vec![Scalar::Column(0)], vec![Scalar::Column(0)], concat);
        let (mut left, mut right, mut view): (BTreeMap<Row, isize>, BTreeMap<Row, isize>, BTreeMap<Row, isize>) = Default::default();
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        for epoch in 0..16 {
            // a few keys, some with many rows (merged) and some with few (in place)
            let mut changes = |side: &mut BTreeMap<Row, isize>, n: usize| {
                let mut out = Vec::new();
                for _ in 0..n {
                    let r = row(&[next() % 5, next() % 40]);
                    let present = side.get(&r).copied().unwrap_or(0);
                    let diff = if present > 0 && next() % 3 == 0 { -1 } else { 1 };
                    *side.entry(r.clone()).or_default() += diff;
                    out.push((r, diff));
                }
                side.retain(|_, n| *n != 0);
                out
            };
            let dl = changes(&mut left, if epoch % 4 == 0 { 120 } else { 10 });
            let dr = changes(&mut right, if epoch % 3 == 0 { 60 } else { 5 });
            joining.apply(dl, dr, |r, d| *view.entry(r).or_default() += d);
            view.retain(|_, n| *n != 0);
            assert_eq!(view, recomputed(&left, &right), "after epoch {epoch}");
            assert_eq!(joining.left.len(), left.keys().map(|r| &r[0]).collect::<std::collections::BTreeSet<_>>().len());
        }
        // everything retracted leaves no key behind
        let dl: Vec<_> = left.iter().map(|(r, n)| (r.clone(), -n)).collect();
        let dr: Vec<_> = right.iter().map(|(r, n)| (r.clone(), -n)).collect();
        joining.apply(dl, dr, |r, d| *view.entry(r).or_default() += d);
        view.retain(|_, n| *n != 0);
        assert!(view.is_empty());
        assert_eq!((joining.left.len(), joining.right.len()), (0, 0));
        assert_eq!(joining.left.free.len(), joining.left.slab.len());
    }

    #[test]
    fn null_keys_never_match_and_a_residual_drops_pairs() {
        let mut joining = Joining::new(vec![Scalar::Column(0)], vec![Scalar::Column(0)], |l: &Row, r: &Row| (l[1] >= r[1]).then(|| concat(l, r).unwrap()));
        let null_key = vec![Value::Null, Value::Int(1)];
        let mut out = Vec::new();
        joining.apply(vec![(row(&[1, 5]), 1), (row(&[1, 2]), 1), (null_key.clone(), 1)], vec![(row(&[1, 3]), 1), (null_key, 1)], |r, d| out.push((r, d)));
        assert_eq!(out, vec![(row(&[1, 5, 1, 3]), 1)]);
        assert_eq!((joining.left.len(), joining.right.len()), (1, 1));
    }
}
