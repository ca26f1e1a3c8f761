//! A row packed into one allocation of 8-byte words, for the rows kept for as long as
//! they are live: the view store's, and each group's (its key and last aggregates).
//!
//! ```text
//!   word 0..h: the row's length (32 bits), then a 4-bit tag per value
//!   word h..h+n: one word per value: the integer, the float's bits, the boolean, or the
//!                string's / map's / list's shared pointer (holding one reference)
//! ```
//!
//! A [`Row`] is a vector of 16-byte [`Value`]s: a view row of 7 values is 112 bytes,
//! and 16 more for the boxed slice's length beside its pointer in the store's table.
//! Packed, it is 64 bytes (one header word up to 8 values) behind a thin pointer: the
//! store's table entries are 24 bytes, not 32. (engine-window's rows: ~60 bytes less per
//! live row; docs/benchmarks.md.) Strings, maps and lists stay shared, as in a `Value`:
//! packing a row clones its values (a reference count each, none for lasting strings)
//! and reading one clones them back.
//!
//! This module and `src/allocator.rs` are the only ones that allow `unsafe` (the
//! workspace denies it): a packed value is a raw pointer only between packing
//! (`into_word`, which takes its reference with `into_raw`) and `Drop`, `set_from` or
//! `into_row` (which give it back with `from_raw`); every other read borrows it as a
//! `Value` that is never dropped. The tests below check the values and the reference
//! counts; `valgrind` runs them clean.
#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::value::{LabelMap, Row, Text, Value};

/// A packed row (see the module's documentation).
pub struct PackedRow(NonNull<u64>);

// (it owns its values, which are `Send` and `Sync`: strings, maps and lists are `Arc`s)
unsafe impl Send for PackedRow {}
unsafe impl Sync for PackedRow {}

/// The nibbles of the header's first word that hold the row's length.
const LENGTH_NIBBLES: usize = 8;

const NULL: u64 = 0;
const BOOL: u64 = 1;
const INT: u64 = 2;
const FLOAT: u64 = 3;
const TIMESTAMP: u64 = 4;
/// The tags of values that hold a reference (a pointer from `into_raw`) have this bit:
/// a row without any is copied and dropped without a look at its values.
const SHARED: u64 = 8;
const STR: u64 = SHARED;
const MAP: u64 = SHARED | 1;
const LIST: u64 = SHARED | 2;

/// Header words of a row of `n` values: 8 nibbles of length, then one per value.
#[inline]
fn header_words(n: usize) -> usize {
    (LENGTH_NIBBLES + n).div_ceil(16)
}

fn layout(n: usize) -> Layout {
    Layout::array::<u64>(header_words(n) + n).expect("a packed row's size fits in memory")
}

/// A value's tag and word: the value's reference, for a string, map or list, moves to
/// the word (see [`borrow`], which makes it a `Value` again).
#[inline]
fn into_word(v: Value) -> (u64, u64) {
    match v {
        Value::Null => (NULL, 0),
        Value::Bool(b) => (BOOL, u64::from(b)),
        Value::Int(x) => (INT, x as u64),
        Value::Float(f) => (FLOAT, f.to_bits()),
        Value::Str(s) => (STR, Text::into_raw(s).as_ptr() as u64),
        Value::Timestamp(t) => (TIMESTAMP, t as u64),
        Value::Map(m) => (MAP, Arc::into_raw(m) as u64),
        Value::List(l) => (LIST, Arc::into_raw(l) as u64),
    }
}

/// The value of a tag and a word, borrowed: for a shared value, a `Value` over the
/// reference the word holds, which must not be dropped unless the word is given up.
#[inline]
fn borrow(tag: u64, word: u64) -> ManuallyDrop<Value> {
    // SAFETY: a STR, MAP or LIST word is a pointer `into_word` took from `into_raw`, and
    // its row still holds that reference; the `Value` made of it is never dropped
    // (`ManuallyDrop`) unless the row gives the reference up with it
    ManuallyDrop::new(match tag {
        NULL => Value::Null,
        BOOL => Value::Bool(word != 0),
        INT => Value::Int(word as i64),
        FLOAT => Value::Float(f64::from_bits(word)),
        TIMESTAMP => Value::Timestamp(word as i64),
        STR => Value::Str(unsafe { Text::from_raw(NonNull::new_unchecked(word as *mut ())) }),
        MAP => Value::Map(unsafe { LabelMap::from_raw(word as *const Vec<(Text, Text)>) }),
        LIST => Value::List(unsafe { Arc::from_raw(word as *const Vec<Value>) }),
        tag => unreachable!("a packed value's tag is one `into_word` writes, not {tag}"),
    })
}

/// A copy of a value as its tag and word (a reference more, for a shared one).
#[inline]
fn copy_word(v: &Value) -> (u64, u64) {
    match v {
        Value::Null => (NULL, 0),
        Value::Int(x) => (INT, *x as u64),
        Value::Timestamp(t) => (TIMESTAMP, *t as u64),
        Value::Float(f) => (FLOAT, f.to_bits()),
        Value::Bool(b) => (BOOL, u64::from(*b)),
        v => into_word(v.clone()),
    }
}

/// Gives back the reference a shared value's word holds (the word is then given up).
#[cold]
fn give_back(tag: u64, word: u64) {
    drop(ManuallyDrop::into_inner(borrow(tag, word)));
}

/// A copy of a value (a reference more, for a shared one) by its tag and word.
#[inline]
fn copy(tag: u64, word: u64) -> Value {
    match tag {
        NULL => Value::Null,
        INT => Value::Int(word as i64),
        TIMESTAMP => Value::Timestamp(word as i64),
        _ => (*borrow(tag, word)).clone(),
    }
}

impl PackedRow {
    /// Packs a row, cloning its values.
    pub fn new(values: &[Value]) -> PackedRow {
        PackedRow::with_prefix(values, values.len())
    }

    /// A row of `n` values: copies of `values` (no more than `n`), then NULLs.
    fn with_prefix(values: &[Value], n: usize) -> PackedRow {
        PackedRow::build(values.iter().map(copy_word), n)
    }

    /// A row of `n` values: `values` (no more than `n`, moved in: no reference counts
    /// change), then NULLs.
    pub fn with_values(values: Row, n: usize) -> PackedRow {
        PackedRow::build(values.into_iter().map(into_word), n)
    }

    /// A row of `n` values: these tags and words (each holding its reference, for a
    /// shared value), then NULLs.
    #[inline]
    fn build(values: impl ExactSizeIterator<Item = (u64, u64)>, n: usize) -> PackedRow {
        let given = values.len();
        assert!(given <= n, "{given} values for a packed row of {n}");
        // (a row of 2^32 values would be 64 GiB of `Value`s before it was packed)
        let length = u32::try_from(n).expect("a row of fewer than 2^32 values");
        let h = header_words(n);
        let layout = layout(n);
        // SAFETY: the layout has a nonzero size (one header word at least)
        let words = unsafe { alloc(layout) } as *mut u64;
        let Some(words) = NonNull::new(words) else { handle_alloc_error(layout) };
        let w = words.as_ptr();
        // SAFETY: every write below is to one of the allocation's h + n words: the header
        // words after the first (zero: NULL tags), each value's word (a NULL's is 0), and
        // the first word last, its tags gathered in a register
        unsafe {
            for j in 1..h {
                w.add(j).write(0);
            }
            let mut first = u64::from(length);
            let mut written = 0;
            for (i, (tag, word)) in values.enumerate().take(given) {
                written = i + 1;
                let nibble = LENGTH_NIBBLES + i;
                if nibble < 16 {
                    first |= tag << (4 * nibble);
                } else {
                    *w.add(nibble / 16) |= tag << (4 * (nibble % 16));
                }
                w.add(h + i).write(word);
            }
            // (every word is written, whatever the iterator gave)
            for i in written..n {
                w.add(h + i).write(0);
            }
            w.write(first);
        }
        PackedRow(words)
    }

    #[inline]
    fn word(&self, j: usize) -> u64 {
        // SAFETY: callers read only the header's words and the values' (below `len`)
        unsafe { self.0.as_ptr().add(j).read() }
    }

    /// How many values the row holds.
    #[inline]
    pub fn len(&self) -> usize {
        (self.word(0) & 0xffff_ffff) as usize
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn tag(&self, i: usize) -> u64 {
        let nibble = LENGTH_NIBBLES + i;
        (self.word(nibble / 16) >> (4 * (nibble % 16))) & 0xf
    }

    /// Whether any value holds a reference (see [`SHARED`]).
    #[inline]
    fn has_shared(&self) -> bool {
        let h = header_words(self.len());
        (0..h).any(|j| self.word(j) & if j == 0 { 0x8888_8888_0000_0000 } else { 0x8888_8888_8888_8888 } != 0)
    }

    /// The value at `i`, borrowed (see [`borrow`]).
    #[inline]
    fn get(&self, i: usize) -> ManuallyDrop<Value> {
        let n = self.len();
        assert!(i < n, "value {i} of a packed row of {n}");
        borrow(self.tag(i), self.word(header_words(n) + i))
    }

    /// The row, unpacked (its values cloned).
    pub fn to_row(&self) -> Row {
        let mut row = Vec::with_capacity(self.len());
        self.extend_into(0..self.len(), &mut row);
        row
    }

    /// The values at `range`, unpacked (cloned), appended to `out`.
    #[inline]
    pub fn extend_into(&self, range: std::ops::Range<usize>, out: &mut Row) {
        let n = self.len();
        assert!(range.end <= n, "values {range:?} of a packed row of {n}");
        let h = header_words(n);
        out.extend(range.map(|i| copy(self.tag(i), self.word(h + i))));
    }

    /// Replaces the values from `from` on with copies of `values`, as many as there
    /// are, dropping the ones they replace.
    pub fn set_from(&mut self, from: usize, values: &[Value]) {
        let n = self.len();
        let h = header_words(n);
        for (j, (tag, word)) in values.iter().map(copy_word).enumerate() {
            let i = from + j;
            assert!(i < n, "value {i} of a packed row of {n}");
            let nibble = LENGTH_NIBBLES + i;
            let shift = 4 * (nibble % 16);
            // SAFETY: i < n: header word nibble / 16 and value word h + i are within the
            // allocation, and distinct
            let (header, slot) = unsafe { (&mut *self.0.as_ptr().add(nibble / 16), &mut *self.0.as_ptr().add(h + i)) };
            let old = (*header >> shift) & 0xf;
            if old & SHARED != 0 {
                give_back(old, *slot);
            }
            *header = (*header & !(0xf << shift)) | tag << shift;
            *slot = word;
        }
    }

    /// The row, unpacked: its values move out (no reference counts change).
    pub fn into_row(self) -> Row {
        let this = ManuallyDrop::new(self);
        let n = this.len();
        let h = header_words(n);
        // (each value takes the row's reference, which the row then gives up)
        let row = (0..n).map(|i| ManuallyDrop::into_inner(borrow(this.tag(i), this.word(h + i)))).collect();
        // SAFETY: allocated with this layout; its values are moved out, and it is not dropped
        unsafe { dealloc(this.0.as_ptr() as *mut u8, layout(n)) };
        row
    }

    /// Whether the row equals `values`.
    pub fn equals(&self, values: &[Value]) -> bool {
        self.len() == values.len() && self.equals_at(0, values)
    }

    /// Whether the row's values from `from` on equal `values`, as many as there are (a
    /// row shorter than that is not). (Integers, times and booleans compare as words;
    /// anything else as values, a string by its pointer first.)
    #[inline(always)]
    pub fn equals_at(&self, from: usize, values: &[Value]) -> bool {
        let n = self.len();
        if from + values.len() > n {
            return false;
        }
        let h = header_words(n);
        // (a loop, not `all`: its closure was left out of line in the groups' lookup)
        for (j, v) in values.iter().enumerate() {
            let i = from + j;
            let (tag, word) = (self.tag(i), self.word(h + i));
            let equal = match (tag, v) {
                (NULL, Value::Null) => true,
                (INT, Value::Int(x)) | (TIMESTAMP, Value::Timestamp(x)) => word == *x as u64,
                (BOOL, Value::Bool(b)) => word == u64::from(*b),
                _ => *borrow(tag, word) == *v,
            };
            if !equal {
                return false;
            }
        }
        true
    }
}

impl PartialEq for PackedRow {
    fn eq(&self, other: &PackedRow) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| *self.get(i) == *other.get(i))
    }
}

impl Clone for PackedRow {
    fn clone(&self) -> PackedRow {
        let n = self.len();
        let layout = layout(n);
        // SAFETY: a nonzero size, as in `new`
        let words = unsafe { alloc(layout) } as *mut u64;
        let Some(words) = NonNull::new(words) else { handle_alloc_error(layout) };
        // SAFETY: both allocations are `header_words(n) + n` words and do not overlap
        unsafe { std::ptr::copy_nonoverlapping(self.0.as_ptr(), words.as_ptr(), header_words(n) + n) };
        // the copy's pointers each take a reference of their own
        if self.has_shared() {
            for i in 0..n {
                if self.tag(i) & SHARED != 0 {
                    std::mem::forget((*self.get(i)).clone());
                }
            }
        }
        PackedRow(words)
    }
}

impl Drop for PackedRow {
    fn drop(&mut self) {
        let n = self.len();
        if self.has_shared() {
            let h = header_words(n);
            for i in 0..n {
                let tag = self.tag(i);
                if tag & SHARED != 0 {
                    give_back(tag, self.word(h + i));
                }
            }
        }
        // SAFETY: allocated in `build` or `clone` with this layout
        unsafe { dealloc(self.0.as_ptr() as *mut u8, layout(n)) };
    }
}

impl std::fmt::Debug for PackedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.to_row()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Row {
        vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-42),
            Value::Float(-0.5),
            Value::Float(f64::NAN),
            Value::str("a string longer than the lasting strings' sixty-four bytes, so it is counted"),
            Value::Timestamp(1_700_000_000_000),
            Value::map(vec![(Text::from("region"), Text::from("eu"))]),
            Value::List(Arc::new(vec![Value::Int(1), Value::str("x")])),
        ]
    }

    #[test]
    fn a_packed_row_gives_back_its_values_and_compares_with_rows() {
        for n in [0, 1, 7, 8, 9, 24, 25, 40] {
            let row: Row = every_kind().into_iter().cycle().take(n).collect();
            let packed = PackedRow::new(&row);
            assert_eq!(packed.len(), n);
            let back = packed.to_row();
            assert_eq!(back.len(), n);
            for (a, b) in back.iter().zip(&row) {
                // (NaN equals NaN as a value: values are totally ordered)
                assert_eq!(a, b);
            }
            assert!(packed.equals(&row));
            assert_eq!(packed, packed.clone());
            let mut other = row.clone();
            if let Some(last) = other.last_mut() {
                *last = Value::Int(7);
                assert!(!packed.equals(&other));
                assert_ne!(packed, PackedRow::new(&other));
            }
        }
        // equal strings in other allocations are equal values
        assert!(PackedRow::new(&[Value::Str(Text::from(String::from("ab") + "c"))]).equals(&[Value::str("abc")]));
    }

    #[test]
    fn a_packed_row_holds_one_reference_to_each_shared_value_and_gives_it_back() {
        let s = Text::from(String::from("counted ") + &"x".repeat(80));
        let map: LabelMap = Arc::new(vec![(Text::from("k"), Text::from("v"))]);
        let row = vec![Value::Str(s.clone()), Value::Map(map.clone()), Value::Int(1)];
        let (strings, maps) = (Text::strong_count(&s), Arc::strong_count(&map));
        let packed = PackedRow::new(&row);
        assert_eq!((Text::strong_count(&s), Arc::strong_count(&map)), (strings.map(|c| c + 1), maps + 1));
        let copy = packed.clone();
        let unpacked = copy.to_row();
        assert_eq!((Text::strong_count(&s), Arc::strong_count(&map)), (strings.map(|c| c + 3), maps + 3));
        drop((packed, copy, unpacked));
        assert_eq!((Text::strong_count(&s), Arc::strong_count(&map)), (strings, maps));
    }

    #[test]
    fn values_move_in_and_out_without_copies_and_set_in_place_replace_the_old_ones() {
        let s = Text::from(String::from("counted ") + &"y".repeat(80));
        let strings = Text::strong_count(&s);
        for n in [1, 3, 8, 9, 24, 25] {
            assert!(PackedRow::with_prefix(&[], n).equals(&vec![Value::Null; n]));
            let row: Row = every_kind().into_iter().cycle().take(n).collect();
            let mut moved = row.clone();
            moved[n - 1] = Value::Str(s.clone());
            let packed = PackedRow::with_values(moved, n);
            assert!(packed.equals_at(0, &row[..n - 1]) && (n < 2 || packed.equals_at(1, &row[1..n - 1])));
            assert!(!packed.equals_at(1, &row) && !packed.equals_at(n, &[Value::Null]));
            let mut unpacked = vec![Value::Int(7)];
            packed.extend_into(0..n, &mut unpacked);
            assert_eq!((&unpacked[0], &unpacked[1..n]), (&Value::Int(7), &row[..n - 1]));
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
            assert_eq!(unpacked.pop(), Some(Value::Str(s.clone())));
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
            let mut packed = packed;
            for (i, v) in every_kind().into_iter().cycle().take(n - 1).enumerate() {
                packed.set_from(i, &[Value::Str(s.clone())]);
                assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
                packed.set_from(i, &[v]);
            }
            assert!(packed.equals_at(0, &row[..n - 1]));
            let mut tail = Vec::new();
            packed.extend_into(n / 2..n - 1, &mut tail);
            assert_eq!(tail, row[n / 2..n - 1]);
            let back = packed.into_row();
            assert_eq!(back[..n - 1], row[..n - 1]);
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
            drop(back);
            assert_eq!(Text::strong_count(&s), strings);
        }
        // values moved in keep their references: one, given back on drop
        let moved = PackedRow::with_values(vec![Value::Int(1), Value::Str(s.clone())], 3);
        assert!(moved.equals(&[Value::Int(1), Value::Str(s.clone()), Value::Null]));
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
        drop(moved);
        assert_eq!(Text::strong_count(&s), strings);
    }
}
