//! A row packed into one allocation of 8-byte words, for the rows kept for as long as
//! they are live: a view's rows, each shared ([`SharedRow`]) by the group that computed
//! it, the view store's table and the changes kept as its history; and [`GroupRow`], a
//! group's inputs.
//!
//! ```text
//!   word 0..h: the row's length (16 bits), its holders (16 bits: see [`SharedRow`]),
//!              then a 4-bit tag per value
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
//! (`into_word`, which takes its reference with `into_raw`) and `Drop` or `set_from`
//! (which give it back with `from_raw`); every other read borrows it as a `Value` that is
//! never dropped. The first header word is read and written atomically (a shared row's
//! holders change in it while other threads read the row). A [`GroupRow`]'s entries are
//! `Value`s in its allocation, written and read there as such (moved in, moved out,
//! dropped in place). The tests below check the values and the reference counts;
//! `valgrind` runs them (and the grouping's) clean.
#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, realloc, Layout};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use crate::value::{LabelMap, Row, RowHasher, Text, Value};

/// A packed row (see the module's documentation).
pub struct PackedRow(NonNull<u64>);

// (it owns its values, which are `Send` and `Sync`: strings, maps and lists are `Arc`s)
unsafe impl Send for PackedRow {}
unsafe impl Sync for PackedRow {}

/// The nibbles of the header's first word before the first value's tag: the row's length
/// (16 bits) and its holders (16 bits: see [`SharedRow`]).
const LENGTH_NIBBLES: usize = 8;

/// The most values a packed row holds (its length has 16 bits). The planner refuses a
/// view with a step of more columns (`plan::lower`), so that no row of a view or a
/// grouping is wider.
pub const MAX_VALUES: usize = u16::MAX as usize;

/// The first header word's bits of the row's holders (see [`SharedRow`]): 1 for a row
/// that is not shared, as every row is built.
const HOLDERS_SHIFT: u32 = 16;
const ONE_HOLDER: u64 = 1 << HOLDERS_SHIFT;

#[inline]
fn holders(first: u64) -> u64 {
    (first >> HOLDERS_SHIFT) & 0xffff
}

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
        PackedRow::build_given(values, given, n, extra)
    }

    /// [`PackedRow::build_in`] of the first `given` tags and words `values` gives.
    #[inline]
    fn build_given(values: impl Iterator<Item = (u64, u64)>, given: usize, n: usize, extra: usize) -> PackedRow {
        assert!(given <= n, "{given} values for a packed row of {n}");
        // (the planner refuses wider rows: see `MAX_VALUES`)
        let length = u16::try_from(n).expect("a packed row of at most MAX_VALUES values");
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
            let mut first = u64::from(length) | ONE_HOLDER;
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
        if j == 0 {
            return self.first();
        }
        // SAFETY: callers read only the header's words and the values' (below `len`)
        unsafe { self.0.as_ptr().add(j).read() }
    }

    /// The first header word, read as an atomic: a [`SharedRow`]'s holders change in it
    /// while other threads read it. (A relaxed load is a plain load on x86-64.)
    #[inline]
    fn first(&self) -> u64 {
        // SAFETY: the first word of a live allocation of 8-byte-aligned words, written
        // by other threads only atomically (a shared row's holders)
        unsafe { AtomicU64::from_ptr(self.0.as_ptr()).load(Ordering::Relaxed) }
    }

    /// How many values the row holds.
    #[inline]
    pub fn len(&self) -> usize {
        (self.first() & 0xffff) as usize
    }

    /// The row's hash, as [`crate::value::hash_row`] (seed 0) has its values'.
    pub fn hash(&self) -> u64 {
        self.hash_on(RowHasher::new(0), 0)
    }

    /// The hash `h` (of values before these) goes on to with its values from `from` on.
    pub fn hash_on(&self, mut h: RowHasher, from: usize) -> u64 {
        for i in from..self.len() {
            h.add(&self.get(i));
        }
        h.finish()
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

    /// The value at `i`, cloned.
    #[inline]
    pub fn value(&self, i: usize) -> Value {
        let n = self.len();
        assert!(i < n, "value {i} of a packed row of {n}");
        copy(self.tag(i), self.word(header_words(n) + i))
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
        // SAFETY: both allocations are `header_words(n) + n` words and do not overlap; the
        // first word is read atomically (see `first`), and the copy has one holder
        unsafe {
            words.as_ptr().write((self.first() & !(0xffff << HOLDERS_SHIFT)) | ONE_HOLDER);
            std::ptr::copy_nonoverlapping(self.0.as_ptr().add(1), words.as_ptr().add(1), header_words(n) + n - 1);
        }
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

/// A packed row with several holders, one allocation among them: the view store's table,
/// the changes that keep it as history (and hand it to subscribers), and a worker's
/// output on its way there. Cloning one counts a holder more, in the 16 bits of the
/// header's first word beside the length, rather than copying the row; the last holder
/// to let go frees it. (The store copied each row it took in, and the changes that
/// carried it were rows of `Value`s, 24 bytes each and a vector, held as history apart
/// from the store's copy: docs/benchmarks.md.) It is never changed while shared: it
/// gives its row only to read.
#[repr(transparent)]
pub struct SharedRow(ManuallyDrop<PackedRow>);

impl SharedRow {
    /// Packs a row, its values moved in.
    pub fn new(row: Row) -> SharedRow {
        let n = row.len();
        SharedRow::build(row.into_iter(), n)
    }

    /// A row of `n` values: `values` (moved in; no more than `n`), then NULLs.
    pub fn build(values: impl ExactSizeIterator<Item = Value>, n: usize) -> SharedRow {
        SharedRow(ManuallyDrop::new(PackedRow::build(values.map(into_word), n)))
    }

    /// A row of `prefix`'s first `k` values (copied) and then `rest`'s (moved out,
    /// leaving NULLs).
    pub fn with_prefix(prefix: &PackedRow, k: usize, rest: &mut [Value]) -> SharedRow {
        let n = k + rest.len();
        let copied = (0..k).map(|i| copy_word(&prefix.get(i)));
        let moved = rest.iter_mut().map(|v| into_word(std::mem::replace(v, Value::Null)));
        SharedRow(ManuallyDrop::new(PackedRow::build_given(copied.chain(moved), n, n, 0)))
    }

    /// The row, to change, if this is its only holder (as `Arc::get_mut`).
    #[inline]
    pub fn get_mut(&mut self) -> Option<&mut PackedRow> {
        // (acquire: the other holders' reads happen before the change)
        (holders(self.first_word().load(Ordering::Acquire)) == 1).then_some(&mut self.0)
    }

    /// Whether both are the same allocation.
    #[inline]
    pub fn ptr_eq(&self, other: &SharedRow) -> bool {
        self.0 .0 == other.0 .0
    }

    #[inline]
    fn first_word(&self) -> &AtomicU64 {
        // SAFETY: as in `PackedRow::first`; the row outlives the borrow
        unsafe { AtomicU64::from_ptr(self.0 .0.as_ptr()) }
    }
}

impl std::ops::Deref for SharedRow {
    type Target = PackedRow;
    #[inline]
    fn deref(&self) -> &PackedRow {
        &self.0
    }
}

/// A row's holders at most: a clone of a row with this many is a copy of its own
/// (no row is held that often: a table, its history and a reader or two hold each).
const MOST_HOLDERS: u64 = 0x7fff;

impl Clone for SharedRow {
    #[inline]
    fn clone(&self) -> SharedRow {
        // (relaxed, as `Arc`'s: the clone is made of a holder the caller already has)
        let first = self.first_word().fetch_add(ONE_HOLDER, Ordering::Relaxed);
        if holders(first) >= MOST_HOLDERS {
            self.first_word().fetch_sub(ONE_HOLDER, Ordering::Relaxed);
            return SharedRow(ManuallyDrop::new((*self.0).clone()));
        }
        SharedRow(ManuallyDrop::new(PackedRow(self.0 .0)))
    }
}

impl Drop for SharedRow {
    #[inline]
    fn drop(&mut self) {
        // (as `Arc`'s: every holder's reads happen before the last one frees the row)
        if holders(self.first_word().fetch_sub(ONE_HOLDER, Ordering::Release)) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: the last holder; the row is not used again
        unsafe { ManuallyDrop::drop(&mut self.0) }
    }
}

impl PartialEq for SharedRow {
    #[inline]
    fn eq(&self, other: &SharedRow) -> bool {
        self.ptr_eq(other) || *self.0 == *other.0
    }
}

impl std::fmt::Debug for SharedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// (Across processes as a row: `Row`'s encoding.)
impl serde::Serialize for SharedRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_row().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for SharedRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SharedRow, D::Error> {
        Row::deserialize(deserializer).map(SharedRow::new)
    }
}

/// A group's inputs in one allocation (see `aggregate::Groups`, which keeps the group's
/// key in its row, a [`SharedRow`]): a word of how many entries and how many values
/// each, then the entries' counts, a word each, and their input values, `width`
/// [`Value`]s each, unpacked so that the aggregates read them as slices. The handle is
/// the allocation's pointer alone.
///
/// ```text
///   word 0              entries (32 bits) and width (32 bits)
///   words 1..1+e        the entries' counts
///   words 1+e..         the entries' values: e × width `Value`s of two words each
/// ```
///
/// (A group was its packed key and two small vectors, of its values and of its counts,
/// each spilling to an allocation of its own past one value and two counts: 56 bytes
/// beside the key's 32 for engine-window, and 96 more for a group of three entries:
/// docs/benchmarks.md.) The allocation grows and shrinks by an entry at a time: most
/// groups hold one or two. A group given [`SPILL_ENTRIES`] entries or more at once
/// ([`GroupRow::set_entries`], which merging a large group's changes calls) keeps them
/// apart instead, in two vectors (`Spilled`) after the first word: they
/// move in and out whole, where copying a large group's entries into its allocation and
/// out again for each merge took engine-hop 3% and nexmark-q7 6% more instructions.
/// A group without entries has no allocation (its pointer dangles), nor has a group
/// whose one entry is in its row ([`GroupRow::in_row`]).
pub struct GroupRow {
    words: NonNull<u64>,
}

// (it owns its values, which are `Send` and `Sync`, as a `PackedRow` does)
unsafe impl Send for GroupRow {}
unsafe impl Sync for GroupRow {}

/// The entries of a large group, apart from its allocation (see [`GroupRow`]).
struct Spilled {
    counts: Vec<isize>,
    values: Vec<Value>,
}

/// The entries of a group whose entries are [`Spilled`]: its first word is followed by
/// its two vectors.
const SPILLED: u32 = u32::MAX;

/// The words of a [`Spilled`].
const SPILLED_WORDS: usize = size_of::<Spilled>() / 8;
const _: () = assert!(size_of::<Spilled>().is_multiple_of(8) && align_of::<Spilled>() <= 8);

/// A group given at least this many entries at once keeps them apart (see [`GroupRow`]).
pub const SPILL_ENTRIES: usize = 8;

/// The words of a [`Value`] among a group's entries.
const VALUE_WORDS: usize = 2;
const _: () = assert!(size_of::<Value>() == 8 * VALUE_WORDS && align_of::<Value>() <= 8 && size_of::<isize>() == 8);

/// Reallocates `words` from `from` words to `to`: what it holds below both stays. No
/// words are no allocation (a dangling pointer).
fn reallocate(words: NonNull<u64>, from: usize, to: usize) -> NonNull<u64> {
    let old = Layout::array::<u64>(from).expect("a group's size fits in memory");
    let new = Layout::array::<u64>(to).expect("a group's size fits in memory");
    // SAFETY: callers pass the allocation's size as `from` (allocated only here), and a
    // pointer of no words is dangling, never allocated nor freed
    let moved = unsafe {
        match (from, to) {
            (0, 0) => return NonNull::dangling(),
            (0, _) => alloc(new),
            (_, 0) => {
                dealloc(words.as_ptr() as *mut u8, old);
                return NonNull::dangling();
            }
            _ => realloc(words.as_ptr() as *mut u8, old, new.size()),
        }
    } as *mut u64;
    NonNull::new(moved).unwrap_or_else(|| handle_alloc_error(new))
}

/// A group's first word: its entries (or [`SPILLED`]) and their width.
#[inline]
fn head(entries: u32, width: usize) -> u64 {
    u64::from(entries) | (u64::try_from(width).ok().filter(|w| *w < 1 << 32).expect("fewer than 2^32 inputs") << 32)
}

/// The address of the handle of [`GroupRow::in_row`]`(n)`: `n` times this, never
/// [`NonNull::dangling`]'s (8), and in the first page, which no allocation has.
const IN_ROW: usize = 16;
const _: () = assert!(align_of::<u64>() < IN_ROW);

impl GroupRow {
    /// A group whose `entries` entries (one or two, each of count 1) the grouping keeps
    /// in the group's row, not here: it has no allocation and, here, no entries
    /// (`aggregate::Groups::in_row`).
    pub fn in_row(entries: usize) -> GroupRow {
        assert!(matches!(entries, 1 | 2), "one or two entries in a row, not {entries}");
        GroupRow { words: NonNull::new(std::ptr::without_provenance_mut(IN_ROW * entries)).expect("not null") }
    }

    /// How many entries the group's row holds (see [`GroupRow::in_row`]): none but for
    /// such a group.
    #[inline]
    pub fn in_row_entries(&self) -> usize {
        match self.words.as_ptr().addr() {
            IN_ROW => 1,
            a if a == 2 * IN_ROW => 2,
            _ => 0,
        }
    }

    /// A group of entries of `width` values: one for each count, their values the row's
    /// first ones, moved in (`width` for each count; any after them are dropped).
    pub fn new(mut row: Row, width: usize, counts: &[isize]) -> GroupRow {
        // (values moved out in place, not drained: a drain moves the values after them)
        let m = counts.len() * width;
        assert!(m <= row.len(), "{width} values for each of {} entries in a row of {}", counts.len(), row.len());
        GroupRow::of(row[..m].iter_mut().map(|v| std::mem::replace(v, Value::Null)), width, counts)
    }

    /// A group of entries of `width` values: one for each count, their values the ones
    /// `values` gives, `width` for each count (moved in).
    pub fn of(values: impl IntoIterator<Item = Value>, width: usize, counts: &[isize]) -> GroupRow {
        let mut group = GroupRow { words: NonNull::dangling() };
        if counts.is_empty() {
            return group;
        }
        let m = counts.len() * width;
        let entries = u32::try_from(counts.len()).ok().filter(|e| *e != SPILLED).expect("fewer than 2^32 - 1 entries");
        let head = head(entries, width);
        group.words = reallocate(group.words, 0, 1 + counts.len() + VALUE_WORDS * m);
        let mut given = 0;
        // SAFETY: the allocation has room for the first word, the counts and the `m`
        // values, every one of them written (NULLs for any the iterator does not give)
        unsafe {
            let base = group.words.as_ptr();
            base.write(head);
            std::ptr::copy_nonoverlapping(counts.as_ptr() as *const u64, base.add(1), counts.len());
            let to = base.add(1 + counts.len()) as *mut Value;
            for v in values.into_iter().take(m) {
                to.add(given).write(v);
                given += 1;
            }
            for j in given..m {
                to.add(j).write(Value::Null);
            }
        }
        assert_eq!(given, m, "{width} values for each of {} entries", counts.len());
        group
    }

    /// Its entries (or [`SPILLED`]) and their width: none without an allocation.
    #[inline]
    fn head(&self) -> (u32, usize) {
        // (one compare for no allocation: a dangling handle, 8, or one in a row, 16 or 32)
        if self.words.as_ptr().addr() <= 2 * IN_ROW {
            return (0, 0);
        }
        // SAFETY: an allocation's first word is its head
        let head = unsafe { self.words.as_ptr().read() };
        (head as u32, (head >> 32) as usize)
    }

    /// How many words the allocation takes.
    #[inline]
    fn words(&self) -> usize {
        match self.head() {
            (0, _) => 0,
            (SPILLED, _) => 1 + SPILLED_WORDS,
            (e, w) => 1 + e as usize * (1 + VALUE_WORDS * w),
        }
    }

    /// Its entries kept apart, if they are.
    #[inline]
    fn spilled(&self) -> Option<&Spilled> {
        // SAFETY: the first word of a spilled group is followed by its `Spilled`
        (self.head().0 == SPILLED).then(|| unsafe { &*(self.words.as_ptr().add(1) as *const Spilled) })
    }

    /// The same, to change.
    #[inline]
    fn spilled_mut(&mut self) -> Option<&mut Spilled> {
        // SAFETY: as in `spilled`, borrowed mutably with the group
        (self.head().0 == SPILLED).then(|| unsafe { &mut *(self.words.as_ptr().add(1) as *mut Spilled) })
    }

    /// The entries' counts.
    #[inline]
    pub fn counts(&self) -> &[isize] {
        match self.head() {
            (0, _) => &[],
            (SPILLED, _) => &self.spilled().expect("spilled").counts,
            // SAFETY: `e` counts follow the first word, initialized
            (e, _) => unsafe { std::slice::from_raw_parts(self.words.as_ptr().add(1) as *const isize, e as usize) },
        }
    }

    /// The entries' counts, to change in place.
    #[inline]
    pub fn counts_mut(&mut self) -> &mut [isize] {
        match self.head() {
            (0, _) => &mut [],
            (SPILLED, _) => &mut self.spilled_mut().expect("spilled").counts,
            // SAFETY: as in `counts`, borrowed mutably with the group
            (e, _) => unsafe { std::slice::from_raw_parts_mut(self.words.as_ptr().add(1) as *mut isize, e as usize) },
        }
    }

    /// The entries' values, `width` for each entry, in the entries' order.
    #[inline]
    pub fn values(&self) -> &[Value] {
        match self.head() {
            (0, _) => &[],
            (SPILLED, _) => &self.spilled().expect("spilled").values,
            // SAFETY: `e × w` values follow the counts, initialized
            (e, w) => unsafe { std::slice::from_raw_parts(self.words.as_ptr().add(1 + e as usize) as *const Value, e as usize * w) },
        }
    }

    /// Inserts an entry before entry `at`: its count, and its values moved out of
    /// `values` (as many as the group's entries have; NULLs are left there).
    pub fn insert_entry(&mut self, at: usize, count: isize, values: &mut [Value]) {
        let (entries, width) = self.head();
        let e = self.counts().len();
        assert!(at <= e && (e == 0 || values.len() == width), "entry {at} of {e}, of {} values for {width}", values.len());
        if let Some(spilled) = self.spilled_mut() {
            spilled.counts.insert(at, count);
            spilled.values.splice(at * width..at * width, values.iter_mut().map(|v| std::mem::replace(v, Value::Null)));
            return;
        }
        let entries = entries.checked_add(1).filter(|e| *e != SPILLED).expect("fewer than 2^32 - 1 entries");
        let w = values.len();
        let (vw, words) = (VALUE_WORDS * w, self.words());
        let head = head(entries, w);
        self.words = reallocate(self.words, words, 1 + (e + 1) * (1 + vw));
        // SAFETY: the allocation has room for one more entry; the entries' values after
        // `at` move past the new entry's, those before it by a word (the new count's),
        // then the counts after `at` by a word: each copy within the allocation (`copy`
        // allows overlap), none onto a word still to be moved. The first word is
        // written last (a new allocation's, too).
        unsafe {
            let base = self.words.as_ptr().add(1);
            std::ptr::copy(base.add(e + vw * at), base.add(e + 1 + vw * (at + 1)), vw * (e - at));
            std::ptr::copy(base.add(e), base.add(e + 1), vw * at);
            std::ptr::copy(base.add(at), base.add(at + 1), e - at);
            base.add(at).write(count as u64);
            let to = base.add(e + 1 + vw * at) as *mut Value;
            for (j, v) in values.iter_mut().enumerate() {
                to.add(j).write(std::mem::replace(v, Value::Null));
            }
            self.words.as_ptr().write(head);
        }
    }

    /// Removes entry `at` (its values are dropped).
    pub fn remove_entry(&mut self, at: usize) {
        let (_, w) = self.head();
        let e = self.counts().len();
        assert!(at < e, "entry {at} of {e}");
        if let Some(spilled) = self.spilled_mut() {
            spilled.counts.remove(at);
            spilled.values.drain(at * w..(at + 1) * w);
            return;
        }
        let (vw, words) = (VALUE_WORDS * w, self.words());
        // SAFETY: the entry's values are read out (and dropped after the move); the counts
        // after `at` move down a word, the values before the entry's down a word (the
        // count's), those after it down a word and the entry's values: each copy within
        // the allocation, none onto a word still to be moved; then the first word
        let gone: Vec<Value> = unsafe {
            let base = self.words.as_ptr().add(1);
            let from = base.add(e + vw * at) as *const Value;
            let gone = (0..w).map(|j| from.add(j).read()).collect();
            std::ptr::copy(base.add(at + 1), base.add(at), e - at - 1);
            std::ptr::copy(base.add(e), base.add(e - 1), vw * at);
            std::ptr::copy(base.add(e + vw * (at + 1)), base.add(e - 1 + vw * at), vw * (e - at - 1));
            self.words.as_ptr().write(head(e as u32 - 1, w));
            gone
        };
        self.words = reallocate(self.words, words, if e == 1 { 0 } else { words - 1 - vw });
        drop(gone);
    }

    /// Takes its entries out (the group keeps none): their counts and values. (Spilled
    /// entries' vectors move out whole, leaving empty ones, ready for `set_entries`.)
    pub fn take_entries(&mut self) -> (Vec<isize>, Vec<Value>) {
        if let Some(spilled) = self.spilled_mut() {
            return (std::mem::take(&mut spilled.counts), std::mem::take(&mut spilled.values));
        }
        let words = self.words();
        let counts = self.counts().to_vec();
        let n = self.values().len();
        let mut values = Vec::with_capacity(n);
        // SAFETY: the values move to the vector (which has room for them), and the
        // allocation goes with the counts: the group keeps no entries
        unsafe {
            std::ptr::copy_nonoverlapping(self.values().as_ptr(), values.as_mut_ptr(), n);
            values.set_len(n);
        }
        self.words = reallocate(self.words, words, 0);
        (counts, values)
    }

    /// Replaces its entries (dropping the ones it had) with one for each count, the
    /// values moved in (`width` for each count): into its allocation, or, for
    /// [`SPILL_ENTRIES`] or more, the vectors themselves, kept apart.
    pub fn set_entries(&mut self, counts: Vec<isize>, mut values: Vec<Value>, width: usize) {
        assert_eq!(values.len(), counts.len() * width, "{width} values for each of {} entries", counts.len());
        if counts.len() >= SPILL_ENTRIES
            && let Some(spilled) = self.spilled_mut()
        {
            *spilled = Spilled { counts, values };
            return;
        }
        self.clear_entries();
        if counts.is_empty() {
            return;
        }
        if counts.len() >= SPILL_ENTRIES {
            self.words = reallocate(self.words, 0, 1 + SPILLED_WORDS);
            // SAFETY: the allocation has room for the first word and the vectors
            unsafe {
                self.words.as_ptr().write(head(SPILLED, width));
                (self.words.as_ptr().add(1) as *mut Spilled).write(Spilled { counts, values });
            }
            return;
        }
        let entries = u32::try_from(counts.len()).expect("fewer than 2^32 entries");
        self.words = reallocate(self.words, 0, 1 + counts.len() + VALUE_WORDS * values.len());
        // SAFETY: the allocation has room for the first word, the counts and the values;
        // the values move (the vector forgets them)
        unsafe {
            let base = self.words.as_ptr();
            base.write(head(entries, width));
            std::ptr::copy_nonoverlapping(counts.as_ptr() as *const u64, base.add(1), counts.len());
            std::ptr::copy_nonoverlapping(values.as_ptr(), base.add(1 + counts.len()) as *mut Value, values.len());
            values.set_len(0);
        }
    }

    /// Drops its entries (a spilled group's vectors too) and its allocation.
    fn clear_entries(&mut self) {
        let words = self.words();
        // SAFETY: a spilled group's vectors are read out once, an unspilled one's values
        // dropped once; then the allocation, of `words`, goes
        unsafe {
            match self.head() {
                (0, _) => {
                    self.words = NonNull::dangling();
                    return;
                }
                (SPILLED, _) => drop((self.words.as_ptr().add(1) as *const Spilled).read()),
                _ => std::ptr::drop_in_place(self.values() as *const [Value] as *mut [Value]),
            }
        }
        self.words = reallocate(self.words, words, 0);
    }
}

impl Drop for GroupRow {
    fn drop(&mut self) {
        self.clear_entries();
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
            assert!(row.iter().enumerate().all(|(i, v)| packed.value(i) == *v));
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
            // (a shared row, the values moved in)
            let mut shared = SharedRow::build(moved.into_iter(), n);
            let packed: &PackedRow = &shared;
            assert!(packed.equals_at(0, &row[..n - 1]) && (n < 2 || packed.equals_at(1, &row[1..n - 1])));
            assert!(!packed.equals_at(1, &row) && !packed.equals_at(n, &[Value::Null]));
            let mut unpacked = vec![Value::Int(7)];
            packed.extend_into(0..n, &mut unpacked);
            assert_eq!((&unpacked[0], &unpacked[1..n]), (&Value::Int(7), &row[..n - 1]));
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
            assert_eq!(unpacked.pop(), Some(Value::Str(s.clone())));
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
            for (i, v) in every_kind().into_iter().cycle().take(n - 1).enumerate() {
                shared.get_mut().expect("the only holder").set_from(i, &[Value::Str(s.clone())]);
                assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
                shared.get_mut().expect("the only holder").set_from(i, &[v]);
            }
            assert!(shared.equals_at(0, &row[..n - 1]));
            let mut tail = Vec::new();
            shared.extend_into(n / 2..n - 1, &mut tail);
            assert_eq!(tail, row[n / 2..n - 1]);
            assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
            drop(shared);
            assert_eq!(Text::strong_count(&s), strings);
        }
        // values moved in keep their references: one, given back on drop
        let moved = SharedRow::build(vec![Value::Int(1), Value::Str(s.clone())].into_iter(), 3);
        assert!(moved.equals(&[Value::Int(1), Value::Str(s.clone()), Value::Null]));
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
        drop(moved);
        assert_eq!(Text::strong_count(&s), strings);
    }

    #[test]
    fn a_group_row_keeps_its_entries_in_order_through_inserts_removals_and_spills() {
        let s = Text::from(String::from("counted ") + &"z".repeat(80));
        let strings = Text::strong_count(&s);
        for width in [0, 1, 3] {
            for round in 0..2 {
                // each entry's values: an integer, then the counted string
                let entry = |i: i64| -> Row { (0..width).map(|j| if j == 0 { Value::Int(i) } else { Value::Str(s.clone()) }).collect() };
                let mut model: Vec<(isize, Row)> = vec![(5, entry(5))];
                // (a value after the entry's is dropped)
                let mut group = GroupRow::new([entry(5), vec![Value::Str(s.clone())]].concat(), width, &[5]);
                let check = |group: &GroupRow, model: &[(isize, Row)]| {
                    assert_eq!(group.counts(), model.iter().map(|(c, _)| *c).collect::<Vec<_>>());
                    assert_eq!(group.values(), model.iter().flat_map(|(_, r)| r.clone()).collect::<Vec<_>>());
                    let held: isize = model.iter().map(|(_, r)| r.iter().filter(|v| matches!(v, Value::Str(_))).count() as isize).sum();
                    assert_eq!(Text::strong_count(&s), strings.map(|c| c + held as usize * 2));
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
                let (counts, values) = group.take_entries();
                assert!(group.counts().is_empty() && group.values().is_empty());
                assert_eq!(counts, model.iter().map(|(c, _)| *c).collect::<Vec<_>>());
                group.set_entries(counts, values, width);
                check(&group, &model);
                // as many entries as spill, kept apart: changed, then taken back in
                let many: Vec<(isize, Row)> = (20..20 + SPILL_ENTRIES as i64).map(|i| (i as isize, entry(i))).collect();
                group.set_entries(many.iter().map(|(c, _)| *c).collect(), many.iter().flat_map(|(_, r)| r.clone()).collect(), width);
                model = many;
                check(&group, &model);
                group.insert_entry(3, 99, &mut entry(99));
                model.insert(3, (99, entry(99)));
                group.remove_entry(0);
                model.remove(0);
                group.counts_mut()[2] = 7;
                model[2].0 = 7;
                check(&group, &model);
                let (mut counts, mut values) = group.take_entries();
                counts.truncate(2);
                values.truncate(2 * width);
                group.set_entries(counts, values, width);
                model.truncate(2);
                check(&group, &model);
                if round == 1 {
                    // (a group whose entry is in its row has none here, and none to free)
                    group = GroupRow::in_row(1);
                    assert!(group.in_row_entries() == 1 && group.counts().is_empty() && group.values().is_empty());
                    model.clear();
                    check(&group, &model);
                    group.insert_entry(0, 1, &mut entry(1));
                    model.push((1, entry(1)));
                    assert_eq!(group.in_row_entries(), 0);
                    check(&group, &model);
                    group = GroupRow::in_row(2);
                    assert!(group.in_row_entries() == 2 && group.counts().is_empty());
                    let (counts, values) = group.take_entries();
                    assert!(counts.is_empty() && values.is_empty() && group.in_row_entries() == 0, "no entries, and not in a row");
                    model.clear();
                }
                if round == 0 {
                    // to no entries and back
                    while !model.is_empty() {
                        group.remove_entry(0);
                        model.remove(0);
                        check(&group, &model);
                    }
                    group.insert_entry(0, 1, &mut entry(1));
                    model.push((1, entry(1)));
                    check(&group, &model);
                }
                drop(group);
                drop(model);
                assert_eq!(Text::strong_count(&s), strings, "width {width}, round {round}");
            }
        }
    }

    #[test]
    fn a_group_row_of_values_from_an_iterator_takes_as_many_as_its_entries_have() {
        let group = GroupRow::of([Value::Int(1), Value::str("two"), Value::Int(3)], 1, &[1, 2]);
        assert_eq!((group.counts(), group.values()), (&[1, 2][..], &[Value::Int(1), Value::str("two")][..]));
        // (too few values: every one is written, NULLs for the missing, then it panics)
        let short = std::panic::catch_unwind(|| GroupRow::of([Value::str("one")], 2, &[1]));
        assert!(short.is_err());
    }

    #[test]
    fn a_shared_row_is_one_allocation_among_its_holders_and_freed_by_the_last() {
        let s = Text::from(String::from("counted ") + &"y".repeat(80));
        let strings = Text::strong_count(&s);
        let row = vec![Value::Int(3), Value::Str(s.clone()), Value::Float(0.5)];
        let hash = crate::value::hash_row(&row, 0);
        let mut shared = SharedRow::new(row.clone());
        assert!(shared.equals(&row) && shared.len() == 3 && shared.hash() == hash);
        drop(row);
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
        assert!(shared.get_mut().is_some());
        // holders share it, across threads, up to the most it counts
        let mut held: Vec<SharedRow> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| (0..8000).map(|_| shared.clone()).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().expect("a holder thread")).collect()
        });
        held.extend((held.len() as u64 + 1..MOST_HOLDERS).map(|_| shared.clone()));
        assert!(held.iter().all(|h| h.ptr_eq(&shared) && *h == shared));
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 1));
        // past them, a clone is a copy
        let mut copied = shared.clone();
        assert!(!copied.ptr_eq(&shared) && copied == shared && copied.get_mut().is_some());
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
        drop(copied);
        let copy = SharedRow::with_prefix(&shared, 2, &mut [Value::Int(9)]);
        assert!(copy.equals(&[Value::Int(3), Value::Str(s.clone()), Value::Int(9)]) && copy != shared);
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
        assert!(shared.get_mut().is_none());
        std::thread::scope(|scope| {
            for chunk in held.chunks(1000) {
                let chunk = chunk.to_vec();
                scope.spawn(move || drop(chunk));
            }
        });
        drop(held);
        assert!(shared.get_mut().is_some());
        shared.get_mut().expect("the only holder").set_from(2, &[Value::Null]);
        assert!(shared.equals(&[Value::Int(3), Value::Str(s.clone()), Value::Null]));
        let other = shared.clone();
        drop(shared);
        assert_eq!(Text::strong_count(&s), strings.map(|c| c + 2));
        drop(other);
        drop(copy);
        assert_eq!(Text::strong_count(&s), strings);
    }
}
