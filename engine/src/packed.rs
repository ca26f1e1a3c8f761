//! A row packed into one allocation of 8-byte words, for the rows the view store keeps
//! for as long as they are live.
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
//! workspace denies it): a packed value is a raw pointer only between `new` (which
//! takes a reference with `into_raw`) and `Drop` (which gives it back with
//! `from_raw`); every read borrows it as a `Value` that is never dropped. The tests
//! below check the values and the reference counts; `valgrind` runs them clean.
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
const STR: u64 = 4;
const TIMESTAMP: u64 = 5;
const MAP: u64 = 6;
const LIST: u64 = 7;

/// Header words of a row of `n` values: 8 nibbles of length, then one per value.
fn header_words(n: usize) -> usize {
    (LENGTH_NIBBLES + n).div_ceil(16)
}

fn layout(n: usize) -> Layout {
    Layout::array::<u64>(header_words(n) + n).expect("a packed row's size fits in memory")
}

impl PackedRow {
    /// Packs a row, cloning its values.
    pub fn new(values: &[Value]) -> PackedRow {
        let n = values.len();
        // (a row of 2^32 values would be 64 GiB of `Value`s before it was packed)
        let length = u32::try_from(n).expect("a row of fewer than 2^32 values");
        let h = header_words(n);
        let layout = layout(n);
        // SAFETY: the layout has a nonzero size (one header word at least)
        let words = unsafe { alloc(layout) } as *mut u64;
        let Some(words) = NonNull::new(words) else { handle_alloc_error(layout) };
        // SAFETY: the first h words are the header, within the allocation
        let header = |j: usize| unsafe { words.as_ptr().add(j) };
        for j in 0..h {
            // SAFETY: as above
            unsafe { header(j).write(0) };
        }
        // (the first word's tags are gathered here, and written once)
        let mut first = u64::from(length);
        for (i, v) in values.iter().enumerate() {
            let (tag, word) = match v {
                Value::Null => (NULL, 0),
                Value::Bool(b) => (BOOL, u64::from(*b)),
                Value::Int(x) => (INT, *x as u64),
                Value::Float(f) => (FLOAT, f.to_bits()),
                Value::Str(s) => (STR, Text::into_raw(s.clone()).as_ptr() as u64),
                Value::Timestamp(t) => (TIMESTAMP, *t as u64),
                Value::Map(m) => (MAP, Arc::into_raw(m.clone()) as u64),
                Value::List(l) => (LIST, Arc::into_raw(l.clone()) as u64),
            };
            let nibble = LENGTH_NIBBLES + i;
            if nibble < 16 {
                first |= tag << (4 * nibble);
            } else {
                // SAFETY: the header's words are zeroed above
                unsafe { *header(nibble / 16) |= tag << (4 * (nibble % 16)) };
            }
            // SAFETY: word h + i is within the allocation of h + n words
            unsafe { words.as_ptr().add(h + i).write(word) };
        }
        // SAFETY: as above
        unsafe { header(0).write(first) };
        PackedRow(words)
    }

    fn word(&self, j: usize) -> u64 {
        // SAFETY: callers read only the header's words and the values' (below `len`)
        unsafe { self.0.as_ptr().add(j).read() }
    }

    /// How many values the row holds.
    pub fn len(&self) -> usize {
        (self.word(0) & 0xffff_ffff) as usize
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tag(&self, i: usize) -> u64 {
        let nibble = LENGTH_NIBBLES + i;
        (self.word(nibble / 16) >> (4 * (nibble % 16))) & 0xf
    }

    /// The value at `i`, borrowed: a `Value` over the row's own reference, never dropped.
    fn get(&self, i: usize) -> ManuallyDrop<Value> {
        let n = self.len();
        assert!(i < n, "value {i} of a packed row of {n}");
        let word = self.word(header_words(n) + i);
        // SAFETY: a STR, MAP or LIST word is the pointer `new` took from `into_raw`, and
        // the row still holds that reference; the `Value` made of it is never dropped
        ManuallyDrop::new(match self.tag(i) {
            NULL => Value::Null,
            BOOL => Value::Bool(word != 0),
            INT => Value::Int(word as i64),
            FLOAT => Value::Float(f64::from_bits(word)),
            STR => Value::Str(unsafe { Text::from_raw(NonNull::new_unchecked(word as *mut ())) }),
            TIMESTAMP => Value::Timestamp(word as i64),
            MAP => Value::Map(unsafe { LabelMap::from_raw(word as *const Vec<(Text, Text)>) }),
            LIST => Value::List(unsafe { Arc::from_raw(word as *const Vec<Value>) }),
            tag => unreachable!("a packed value's tag is one `new` writes, not {tag}"),
        })
    }

    /// Calls `f` with each value in order.
    pub fn for_each(&self, mut f: impl FnMut(&Value)) {
        for i in 0..self.len() {
            f(&self.get(i));
        }
    }

    /// The row, unpacked (its values cloned).
    pub fn to_row(&self) -> Row {
        let mut row = Vec::with_capacity(self.len());
        self.for_each(|v| row.push(v.clone()));
        row
    }

    /// Whether the row equals `values`. (Integers, times and booleans compare as words;
    /// anything else as values, a string by its pointer first.)
    pub fn equals(&self, values: &[Value]) -> bool {
        let n = self.len();
        if n != values.len() {
            return false;
        }
        let h = header_words(n);
        values.iter().enumerate().all(|(i, v)| {
            let word = self.word(h + i);
            match (self.tag(i), v) {
                (NULL, Value::Null) => true,
                (INT, Value::Int(x)) | (TIMESTAMP, Value::Timestamp(x)) => word == *x as u64,
                (BOOL, Value::Bool(b)) => word == u64::from(*b),
                _ => *self.get(i) == *v,
            }
        })
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
        for i in 0..n {
            if matches!(self.tag(i), STR | MAP | LIST) {
                std::mem::forget((*self.get(i)).clone());
            }
        }
        PackedRow(words)
    }
}

impl Drop for PackedRow {
    fn drop(&mut self) {
        let n = self.len();
        for i in 0..n {
            if matches!(self.tag(i), STR | MAP | LIST) {
                // (gives back the row's reference)
                drop(ManuallyDrop::into_inner(self.get(i)));
            }
        }
        // SAFETY: allocated in `new` or `clone` with this layout
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
}
