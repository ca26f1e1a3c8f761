//! A row packed into one allocation of 8-byte words, for the rows kept for as long as
//! they are live: the view store's, and each group's (its key, and the aggregates a
//! large group keeps), which [`GroupRow`] extends with the group's inputs.
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
//! `GroupRow::into_key` (which give it back with `from_raw`); every other read borrows it as a
//! `Value` that is never dropped. A [`GroupRow`]'s entries are `Value`s in its
//! allocation, written and read there as such (moved in, moved out, dropped in place).
//! The tests below check the values and the reference counts; `valgrind` runs them
//! (and the grouping's) clean.
#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, realloc, Layout};
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

    /// A row of `n` values: these tags and words (each holding its reference, for a
    /// shared value), then NULLs.
    #[inline]
    fn build(values: impl ExactSizeIterator<Item = (u64, u64)>, n: usize) -> PackedRow {
        PackedRow::build_in(values, n, 0)
    }

    /// [`PackedRow::build`] in an allocation of `extra` words more, after the row (for a
    /// [`GroupRow`], which frees it with its size).
    #[inline]
    fn build_in(values: impl ExactSizeIterator<Item = (u64, u64)>, n: usize, extra: usize) -> PackedRow {
        let given = values.len();
        assert!(given <= n, "{given} values for a packed row of {n}");
        // (a row of 2^32 values would be 64 GiB of `Value`s before it was packed)
        let length = u32::try_from(n).expect("a row of fewer than 2^32 values");
        let h = header_words(n);
        let layout = Layout::array::<u64>(h + n + extra).expect("a packed row's size fits in memory");
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

    /// The values, each taking the row's reference: the row must then be given up
    /// without dropping its values.
    fn move_out(&self) -> Row {
        let h = header_words(self.len());
        (0..self.len()).map(|i| ManuallyDrop::into_inner(borrow(self.tag(i), self.word(h + i)))).collect()
    }

    /// Gives back the references its shared values hold: the row must then be given up
    /// without dropping its values.
    fn give_back_all(&self) {
        if self.has_shared() {
            let h = header_words(self.len());
            for i in 0..self.len() {
                let tag = self.tag(i);
                if tag & SHARED != 0 {
                    give_back(tag, self.word(h + i));
                }
            }
        }
    }

    /// How many words the row takes.
    #[inline]
    fn words(&self) -> usize {
        header_words(self.len()) + self.len()
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
        self.give_back_all();
        // SAFETY: allocated in `build` or `clone` with this layout
        unsafe { dealloc(self.0.as_ptr() as *mut u8, layout(self.len())) };
    }
}

impl std::fmt::Debug for PackedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.to_row()).finish()
    }
}

/// A group's state in one allocation (see `aggregate::Groups`): a packed row (the
/// group's key, and the aggregates a large group keeps), then its entries: their counts,
/// a word each, and their input values, `width` [`Value`]s each, unpacked so that the
/// aggregates read them as slices.
///
/// ```text
///   words 0..p          a packed row: header and values
///   words p..p+e        the entries' counts
///   words p+e..         the entries' values: e × width `Value`s of two words each
/// ```
///
/// (A group was its packed key and two small vectors, of its values and of its counts,
/// each spilling to an allocation of its own past one value and two counts: 56 bytes
/// beside the key's 32 for engine-window, and 96 more for a group of three entries:
/// docs/benchmarks.md.) The allocation grows and shrinks by an entry at a time: most
/// groups hold one or two. A group given [`SPILL_ENTRIES`] entries or more at once
/// ([`GroupRow::set_entries`], which merging a large group's changes calls) keeps them
/// apart instead, in two vectors (`Spilled`) after its packed row: they
/// move in and out whole, where copying a large group's entries into its allocation and
/// out again for each merge took engine-hop 3% and nexmark-q7 6% more instructions.
pub struct GroupRow {
    /// The allocation, read as the packed row it starts with; never dropped as one.
    row: ManuallyDrop<PackedRow>,
    /// How many entries follow the packed row, or [`SPILLED`].
    entries: u32,
    width: u32,
}

/// The entries of a large group, apart from its allocation (see [`GroupRow`]).
struct Spilled {
    counts: Vec<isize>,
    values: Vec<Value>,
}

/// [`GroupRow::entries`] of a group whose entries are [`Spilled`]: the words after its
/// packed row hold its two vectors.
const SPILLED: u32 = u32::MAX;

/// The words of a [`Spilled`], after a spilled group's packed row.
const SPILLED_WORDS: usize = size_of::<Spilled>() / 8;
const _: () = assert!(size_of::<Spilled>().is_multiple_of(8) && align_of::<Spilled>() <= 8);

/// A group given at least this many entries at once keeps them apart (see [`GroupRow`]).
pub const SPILL_ENTRIES: usize = 8;

/// The words of a [`Value`] among a group's entries.
const VALUE_WORDS: usize = 2;
const _: () = assert!(size_of::<Value>() == 8 * VALUE_WORDS && align_of::<Value>() <= 8 && size_of::<isize>() == 8);

/// Reallocates `words` from `from` words to `to`: what it holds below both stays.
fn reallocate(words: NonNull<u64>, from: usize, to: usize) -> NonNull<u64> {
    let old = Layout::array::<u64>(from).expect("a group's size fits in memory");
    let new = Layout::array::<u64>(to).expect("a group's size fits in memory");
    // SAFETY: callers pass the allocation's size as `from` (allocated as a packed row and
    // then reallocated only here), and `to` is never zero: the packed row's header stays
    let moved = unsafe { realloc(words.as_ptr() as *mut u8, old, new.size()) } as *mut u64;
    NonNull::new(moved).unwrap_or_else(|| handle_alloc_error(new))
}

impl GroupRow {
    /// A group of a packed row of `n` values (the first `k` of `row`, moved in, then
    /// NULLs) and entries of `width` values: one for each count, their values the row's
    /// next ones, moved in (`width` for each count; any after them are dropped).
    pub fn new(mut row: Row, k: usize, n: usize, width: usize, counts: &[isize]) -> GroupRow {
        let m = counts.len() * width;
        assert!(k + m <= row.len(), "{k} key values and {width} for each of {} entries in a row of {}", counts.len(), row.len());
        let width = u32::try_from(width).expect("fewer than 2^32 inputs");
        let entries = u32::try_from(counts.len()).ok().filter(|e| *e != SPILLED).expect("fewer than 2^32 - 1 entries");
        let key = PackedRow::build_in(row[..k].iter_mut().map(|v| into_word(std::mem::replace(v, Value::Null))), n, counts.len() + VALUE_WORDS * m);
        let values = &mut row[k..k + m];
        let mut group = GroupRow { row: ManuallyDrop::new(key), entries: 0, width };
        let p = group.row.words();
        // SAFETY: the allocation has room for the counts and values after the packed row;
        // nothing between its allocation and `entries` being set can panic
        unsafe {
            let base = group.row.0.as_ptr();
            std::ptr::copy_nonoverlapping(counts.as_ptr() as *const u64, base.add(p), counts.len());
            let to = base.add(p + counts.len()) as *mut Value;
            for (j, v) in values.iter_mut().enumerate() {
                to.add(j).write(std::mem::replace(v, Value::Null));
            }
        }
        group.entries = entries;
        group
    }

    /// The packed row it starts with.
    #[inline]
    pub fn key(&self) -> &PackedRow {
        &self.row
    }

    /// [`PackedRow::set_from`] on its packed row.
    pub fn set_key_from(&mut self, from: usize, values: &[Value]) {
        self.row.set_from(from, values)
    }

    /// How many words the allocation takes.
    #[inline]
    fn words(&self) -> usize {
        match self.entries {
            SPILLED => self.row.words() + SPILLED_WORDS,
            e => self.row.words() + e as usize * (1 + VALUE_WORDS * self.width as usize),
        }
    }

    /// Its entries kept apart, if they are.
    #[inline]
    fn spilled(&self) -> Option<&Spilled> {
        // SAFETY: the words after the packed row of a spilled group hold its `Spilled`
        (self.entries == SPILLED).then(|| unsafe { &*(self.row.0.as_ptr().add(self.row.words()) as *const Spilled) })
    }

    /// The same, to change.
    #[inline]
    fn spilled_mut(&mut self) -> Option<&mut Spilled> {
        // SAFETY: as in `spilled`, borrowed mutably with the group
        (self.entries == SPILLED).then(|| unsafe { &mut *(self.row.0.as_ptr().add(self.row.words()) as *mut Spilled) })
    }

    /// The entries' counts.
    #[inline]
    pub fn counts(&self) -> &[isize] {
        if let Some(spilled) = self.spilled() {
            return &spilled.counts;
        }
        // SAFETY: `entries` counts follow the packed row, initialized
        unsafe { std::slice::from_raw_parts(self.row.0.as_ptr().add(self.row.words()) as *const isize, self.entries as usize) }
    }

    /// The entries' counts, to change in place.
    #[inline]
    pub fn counts_mut(&mut self) -> &mut [isize] {
        if self.entries == SPILLED {
            return &mut self.spilled_mut().expect("spilled").counts;
        }
        // SAFETY: as in `counts`, borrowed mutably with the group
        unsafe { std::slice::from_raw_parts_mut(self.row.0.as_ptr().add(self.row.words()) as *mut isize, self.entries as usize) }
    }

    /// The entries' values, `width` for each entry, in the entries' order.
    #[inline]
    pub fn values(&self) -> &[Value] {
        if let Some(spilled) = self.spilled() {
            return &spilled.values;
        }
        let (p, e) = (self.row.words(), self.entries as usize);
        // SAFETY: `entries × width` values follow the counts, initialized
        unsafe { std::slice::from_raw_parts(self.row.0.as_ptr().add(p + e) as *const Value, e * self.width as usize) }
    }

    /// Inserts an entry before entry `at`: its count, and its values moved out of
    /// `values` (`width` of them; NULLs are left there).
    pub fn insert_entry(&mut self, at: usize, count: isize, values: &mut [Value]) {
        let w = self.width as usize;
        let e = self.counts().len();
        assert!(at <= e && values.len() == w, "entry {at} of {e}, of {} values for {w}", values.len());
        if let Some(spilled) = self.spilled_mut() {
            spilled.counts.insert(at, count);
            spilled.values.splice(at * w..at * w, values.iter_mut().map(|v| std::mem::replace(v, Value::Null)));
            return;
        }
        let entries = self.entries.checked_add(1).filter(|e| *e != SPILLED).expect("fewer than 2^32 - 1 entries");
        let (p, vw, words) = (self.row.words(), VALUE_WORDS * w, self.words());
        self.row.0 = reallocate(self.row.0, words, words + 1 + vw);
        // SAFETY: the allocation has room for one more entry; the entries' values after
        // `at` move past the new entry's, those before it by a word (the new count's),
        // then the counts after `at` by a word: each copy within the allocation (`copy`
        // allows overlap), none onto a word still to be moved. Nothing between the
        // reallocation and `entries` being set can panic.
        unsafe {
            let base = self.row.0.as_ptr();
            std::ptr::copy(base.add(p + e + vw * at), base.add(p + e + 1 + vw * (at + 1)), vw * (e - at));
            std::ptr::copy(base.add(p + e), base.add(p + e + 1), vw * at);
            std::ptr::copy(base.add(p + at), base.add(p + at + 1), e - at);
            base.add(p + at).write(count as u64);
            let to = base.add(p + e + 1 + vw * at) as *mut Value;
            for (j, v) in values.iter_mut().enumerate() {
                to.add(j).write(std::mem::replace(v, Value::Null));
            }
        }
        self.entries = entries;
    }

    /// Removes entry `at` (its values are dropped).
    pub fn remove_entry(&mut self, at: usize) {
        let w = self.width as usize;
        let e = self.counts().len();
        assert!(at < e, "entry {at} of {e}");
        if let Some(spilled) = self.spilled_mut() {
            spilled.counts.remove(at);
            spilled.values.drain(at * w..(at + 1) * w);
            return;
        }
        let (p, vw, words) = (self.row.words(), VALUE_WORDS * w, self.words());
        // SAFETY: the entry's values are read out (and dropped after the move); the counts
        // after `at` move down a word, the values before the entry's down a word (the
        // count's), those after it down a word and the entry's values: each copy within
        // the allocation, none onto a word still to be moved
        let gone: Vec<Value> = unsafe {
            let base = self.row.0.as_ptr();
            let from = base.add(p + e + vw * at) as *const Value;
            let gone = (0..w).map(|j| from.add(j).read()).collect();
            std::ptr::copy(base.add(p + at + 1), base.add(p + at), e - at - 1);
            std::ptr::copy(base.add(p + e), base.add(p + e - 1), vw * at);
            std::ptr::copy(base.add(p + e + vw * (at + 1)), base.add(p + e - 1 + vw * at), vw * (e - at - 1));
            gone
        };
        self.entries -= 1;
        self.row.0 = reallocate(self.row.0, words, words - 1 - vw);
        drop(gone);
    }

    /// Takes its entries out (the group keeps none): their counts and values. (Spilled
    /// entries' vectors move out whole, leaving empty ones, ready for `set_entries`.)
    pub fn take_entries(&mut self) -> (Vec<isize>, Vec<Value>) {
        if let Some(spilled) = self.spilled_mut() {
            return (std::mem::take(&mut spilled.counts), std::mem::take(&mut spilled.values));
        }
        let (p, words) = (self.row.words(), self.words());
        let counts = self.counts().to_vec();
        let n = self.values().len();
        let mut values = Vec::with_capacity(n);
        // SAFETY: the values move to the vector (which has room for them), the group
        // then keeps no entries, and its allocation shrinks to the packed row
        unsafe {
            std::ptr::copy_nonoverlapping(self.values().as_ptr(), values.as_mut_ptr(), n);
            values.set_len(n);
        }
        self.entries = 0;
        self.row.0 = reallocate(self.row.0, words, p);
        (counts, values)
    }

    /// Replaces its entries (dropping the ones it had) with one for each count, the
    /// values moved in (`width` for each count): into its allocation, or, for
    /// [`SPILL_ENTRIES`] or more, the vectors themselves, kept apart.
    pub fn set_entries(&mut self, counts: Vec<isize>, mut values: Vec<Value>) {
        let w = self.width as usize;
        assert_eq!(values.len(), counts.len() * w, "{w} values for each of {} entries", counts.len());
        if counts.len() >= SPILL_ENTRIES
            && let Some(spilled) = self.spilled_mut()
        {
            *spilled = Spilled { counts, values };
            return;
        }
        self.clear_entries();
        let p = self.row.words();
        if counts.len() >= SPILL_ENTRIES {
            self.row.0 = reallocate(self.row.0, p, p + SPILLED_WORDS);
            // SAFETY: the allocation has room for the vectors after the packed row
            unsafe { (self.row.0.as_ptr().add(p) as *mut Spilled).write(Spilled { counts, values }) };
            self.entries = SPILLED;
            return;
        }
        let entries = u32::try_from(counts.len()).expect("fewer than 2^32 entries");
        self.row.0 = reallocate(self.row.0, p, p + counts.len() + VALUE_WORDS * values.len());
        // SAFETY: the allocation has room for the counts and values after the packed row;
        // the values move (the vector forgets them)
        unsafe {
            let base = self.row.0.as_ptr();
            std::ptr::copy_nonoverlapping(counts.as_ptr() as *const u64, base.add(p), counts.len());
            std::ptr::copy_nonoverlapping(values.as_ptr(), base.add(p + counts.len()) as *mut Value, values.len());
            values.set_len(0);
        }
        self.entries = entries;
    }

    /// Drops its entries (a spilled group's vectors too): its allocation is then its packed row.
    fn clear_entries(&mut self) {
        let (p, words) = (self.row.words(), self.words());
        if words == p {
            return;
        }
        self.drop_entries();
        self.row.0 = reallocate(self.row.0, words, p);
    }

    /// Drops its entries in place (a spilled group's vectors too), leaving none; the
    /// allocation keeps its size, which the caller frees or shrinks (`words` before).
    fn drop_entries(&mut self) {
        let p = self.row.words();
        // SAFETY: a spilled group's vectors are read out once, an unspilled one's values
        // dropped once: `entries` is set first, so that nothing reads them again
        unsafe {
            if self.entries == SPILLED {
                self.entries = 0;
                drop((self.row.0.as_ptr().add(p) as *const Spilled).read());
            } else {
                let values = self.values() as *const [Value] as *mut [Value];
                self.entries = 0;
                std::ptr::drop_in_place(values);
            }
        }
    }

    /// Replaces its packed row with one of `n` values (`key`, moved in, then NULLs);
    /// the entries stay.
    pub fn set_key(&mut self, key: Row, n: usize) {
        let (old_p, words) = (self.row.words(), self.words());
        let tail = words - old_p;
        let new = ManuallyDrop::new(PackedRow::build_in(key.into_iter().map(into_word), n, tail));
        let (new_p, moved) = (new.words(), new.0);
        // SAFETY: the entries' words (or the spilled entries' vectors) move to the new
        // allocation, after its packed row; the old packed row's values are given back
        // and its allocation, of `words`, freed without its entries (which moved)
        unsafe {
            std::ptr::copy_nonoverlapping(self.row.0.as_ptr().add(old_p), moved.as_ptr().add(new_p), tail);
            self.row.give_back_all();
            dealloc(self.row.0.as_ptr() as *mut u8, Layout::array::<u64>(words).expect("a group's size fits in memory"));
        }
        self.row.0 = moved;
    }

    /// The packed row's values, moved out; its entries are dropped.
    pub fn into_key(mut self) -> Row {
        self.clear_entries();
        let this = ManuallyDrop::new(self);
        let key = this.row.move_out();
        // SAFETY: without entries the allocation is the packed row's; its values moved
        // out, and the group is not dropped
        unsafe { dealloc(this.row.0.as_ptr() as *mut u8, layout(this.row.len())) };
        key
    }
}

impl Drop for GroupRow {
    fn drop(&mut self) {
        let words = self.words();
        self.drop_entries();
        // SAFETY: the entries are dropped; the packed row's references are given back,
        // then the allocation, still of `words`, freed
        unsafe {
            self.row.give_back_all();
            dealloc(self.row.0.as_ptr() as *mut u8, Layout::array::<u64>(words).expect("a group's size fits in memory"));
        }
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
            // (a group without entries: its packed row, the values moved in)
            let mut group = GroupRow::new(moved, n, n, 0, &[]);
            let packed = group.key();
            assert!(packed.equals_at(0, &row[..n - 1]) && (n < 2 || packed.equals_at(1, &row[1..n - 1])));
            assert!(!packed.equals_at(1, &row) && !packed.equals_at(n, &[Value::Null]));
            let mut unpacked = vec![Value::Int(7)];
            packed.extend_into(0..n, &mut unpacked);
            assert_eq!((&unpacked[0], &unpacked[1..n]), (&Value::Int(7), &row[..n - 1]));
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
            assert_eq!(unpacked.pop(), Some(Value::Str(s.clone())));
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
            for (i, v) in every_kind().into_iter().cycle().take(n - 1).enumerate() {
                group.set_key_from(i, &[Value::Str(s.clone())]);
                assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
                group.set_key_from(i, &[v]);
            }
            assert!(group.key().equals_at(0, &row[..n - 1]));
            let mut tail = Vec::new();
            group.key().extend_into(n / 2..n - 1, &mut tail);
            assert_eq!(tail, row[n / 2..n - 1]);
            let back = group.into_key();
            assert_eq!(back[..n - 1], row[..n - 1]);
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
            drop(back);
            assert_eq!(Text::strong_count(&s), strings);
        }
        // values moved in keep their references: one, given back on drop
        let moved = GroupRow::new(vec![Value::Int(1), Value::Str(s.clone())], 2, 3, 0, &[]);
        assert!(moved.key().equals(&[Value::Int(1), Value::Str(s.clone()), Value::Null]));
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
        drop(moved);
        assert_eq!(Text::strong_count(&s), strings);
    }

    #[test]
    fn a_group_row_keeps_its_entries_in_order_through_inserts_removals_and_a_new_key() {
        let s = Text::from(String::from("counted ") + &"z".repeat(80));
        let strings = Text::strong_count(&s);
        for width in [0, 1, 3] {
            for n in [0, 3, 9, 25] {
                let key: Row = every_kind().into_iter().cycle().take(n).collect();
                // each entry's values: an integer, then the counted string
                let entry = |i: i64| -> Row { (0..width).map(|j| if j == 0 { Value::Int(i) } else { Value::Str(s.clone()) }).collect() };
                let mut model: Vec<(isize, Row)> = vec![(5, entry(5))];
                let mut group = GroupRow::new([key.clone(), entry(5), vec![Value::Str(s.clone())]].concat(), n, n + 1, width, &[5]);
                let check = |group: &GroupRow, model: &[(isize, Row)]| {
                    assert_eq!(group.counts(), model.iter().map(|(c, _)| *c).collect::<Vec<_>>());
                    assert_eq!(group.values(), model.iter().flat_map(|(_, r)| r.clone()).collect::<Vec<_>>());
                    assert!(group.key().equals_at(0, &key) && group.key().len() == n + 1);
                    let held: isize = model.iter().map(|(_, r)| r.iter().filter(|v| matches!(v, Value::Str(_))).count() as isize).sum();
                    assert_eq!(Text::strong_count(&s), strings.map(|c| c + held as usize * 2));
                };
                let check_entries = |group: &GroupRow, model: &[(isize, Row)]| {
                    assert_eq!(group.counts(), model.iter().map(|(c, _)| *c).collect::<Vec<_>>());
                    assert_eq!(group.values(), model.iter().flat_map(|(_, r)| r.clone()).collect::<Vec<_>>());
                };
                check(&group, &model);
                for (at, i) in [(0, 1), (2, 9), (1, 3), (2, 4), (0, 0)] {
                    let mut values = entry(i);
                    group.insert_entry(at, i as isize + 10, &mut values);
                    model.insert(at, (i as isize + 10, entry(i)));
                    check(&group, &model);
                }
                group.counts_mut()[1] = -7;
                model[1].0 = -7;
                check(&group, &model);
                for at in [5, 0, 2] {
                    group.remove_entry(at);
                    model.remove(at);
                    check(&group, &model);
                }
                group.set_key_from(n, &[Value::Int(42)]);
                assert!(group.key().equals_at(n, &[Value::Int(42)]));
                let mut longer = key.clone();
                longer.push(Value::Str(s.clone()));
                group.set_key(longer, n + 2);
                assert!(group.key().equals_at(0, &key) && group.key().len() == n + 2 && group.key().equals_at(n, &[Value::Str(s.clone()), Value::Null]));
                let (counts, values) = group.take_entries();
                assert!(group.counts().is_empty() && group.values().is_empty());
                assert_eq!(counts, model.iter().map(|(c, _)| *c).collect::<Vec<_>>());
                group.set_entries(counts, values);
                check_entries(&group, &model);
                // as many entries as spill, kept apart: changed, rekeyed, taken back in
                let many: Vec<(isize, Row)> = (20..20 + SPILL_ENTRIES as i64).map(|i| (i as isize, entry(i))).collect();
                group.set_entries(many.iter().map(|(c, _)| *c).collect(), many.iter().flat_map(|(_, r)| r.clone()).collect());
                model = many;
                check_entries(&group, &model);
                group.insert_entry(3, 99, &mut entry(99));
                model.insert(3, (99, entry(99)));
                group.remove_entry(0);
                model.remove(0);
                group.counts_mut()[2] = 7;
                model[2].0 = 7;
                check_entries(&group, &model);
                let mut again = key.clone();
                again.push(Value::Str(s.clone()));
                group.set_key(again, n + 2);
                check_entries(&group, &model);
                if n == 3 {
                    let (counts, values) = group.take_entries();
                    group.set_entries(counts[..2].to_vec(), values[..2 * width].to_vec());
                    model.truncate(2);
                    check_entries(&group, &model);
                }
                if n % 2 == 0 {
                    let back = group.into_key();
                    assert_eq!(back.len(), n + 2);
                    assert!(back[..n] == key[..]);
                    drop(back);
                } else {
                    drop(group);
                }
                drop(model);
                assert_eq!(Text::strong_count(&s), strings, "width {width}, {n} key values");
            }
        }
    }
}
