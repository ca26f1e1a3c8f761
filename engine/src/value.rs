//! Values and rows: the data that flows through the dataflow.
//!
//! A [`Row`] is a vector of [`Value`]s in the column order of its schema. Values are
//! cheap to clone (strings and maps are reference counted), totally ordered and
//! hashable, as differential dataflow requires of its data.

use std::cmp::Ordering;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One row of a stream or a view, in schema column order.
pub type Row = Vec<Value>;

/// A shared, immutable string: one pointer wide (its length lives in the allocation), so
/// that a [`Value`] is 16 bytes rather than the 24 a fat `Arc<str>` would make it.
pub type Text = arcstr::ArcStr;

/// A string-to-string map, kept sorted by key so that equal maps compare equal. (An
/// `Arc<Vec<_>>` rather than an `Arc<[_]>` for the same reason as [`Text`].)
pub type LabelMap = Arc<Vec<(Text, Text)>>;

/// A single value of one of Weir's column types.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A 64-bit float. Ordered by IEEE 754 total order so it can be a key.
    Float(f64),
    /// A UTF-8 string.
    Str(Text),
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// A string-to-string map, sorted by key.
    Map(LabelMap),
    /// A list, only inside a view's plan (e.g. the windows of `hop`, before `unnest`).
    List(Arc<Vec<Value>>),
}

/// One shared allocation per distinct string: tenants, kinds and label keys repeat
/// across events, and rows whose strings share an allocation take less memory and
/// compare faster (pointer equality) in the dataflow.
pub struct Interner {
    strings: hashbrown::HashSet<Text, foldhash::fast::RandomState>,
    /// Whole label maps, which repeat as their strings do.
    maps: hashbrown::HashSet<LabelMap, foldhash::fast::RandomState>,
    max: usize,
}

impl Interner {
    /// Remembers at most `max` strings: most distinct strings are repeated values, and
    /// unique ones (ids, URLs) would only fill the table, so it stops growing there.
    pub fn new(max: usize) -> Interner {
        Interner { strings: Default::default(), maps: Default::default(), max }
    }

    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Text {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let new = lasting(s).unwrap_or_else(|| Text::from(s));
        if self.strings.len() < self.max {
            self.strings.insert(new.clone());
        }
        new
    }

    /// Replaces the row's strings and label maps by their shared copies; a string or map
    /// seen for the first time is remembered as it is (not copied).
    pub fn share(&mut self, row: &mut Row) {
        for value in row {
            match value {
                Value::Str(s) => self.share_text(s),
                Value::Map(pairs) => match self.maps.get(pairs) {
                    Some(shared) => *pairs = shared.clone(),
                    None => {
                        for (k, v) in Arc::make_mut(pairs).iter_mut() {
                            self.share_text(k);
                            self.share_text(v);
                        }
                        if self.maps.len() < self.max {
                            self.maps.insert(pairs.clone());
                        }
                    }
                },
                _ => {}
            }
        }
    }

    fn share_text(&mut self, s: &mut Text) {
        match self.strings.get(s.as_str()) {
            Some(shared) => *s = shared.clone(),
            None => {
                if let Some(l) = lasting(s) {
                    *s = l;
                }
                if self.strings.len() < self.max {
                    self.strings.insert(s.clone());
                }
            }
        }
    }
}

/// The strings that last for the life of the process ([`lasting`]):
static LASTING: std::sync::LazyLock<std::sync::RwLock<hashbrown::HashSet<Text, foldhash::fast::FixedState>>> = std::sync::LazyLock::new(Default::default);
/// at most this many,
const LASTING_MAX: usize = 1 << 16;
/// each at most this long (in bytes): at most ~5 MiB in all.
const LASTING_LEN: usize = 64;

/// The process's lasting copy of a short string, made on first sight while there is room:
/// a static `ArcStr` (never freed), whose clones and drops change no reference count.
///
/// A row's strings are cloned and dropped by several threads (the dataflow's workers,
/// the store's writer, the snapshot); a shared count is a cache line that moves between
/// cores at each of them. With the tenants and kinds static, engine-window ran 8–10%
/// faster on one worker and 14–20% on two (docs/benchmarks.md, 2026-12-04, third
/// session). Tenants, kinds and label keys and values are the strings that recur; once
/// the table is full (unique strings that came early, say) new strings are shared only
/// within their request or log segment, as before.
fn lasting(s: &str) -> Option<Text> {
    if s.len() > LASTING_LEN {
        return None;
    }
    {
        let set = LASTING.read().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = set.get(s) {
            return Some(l.clone());
        }
        // (once full, a new string takes only the read lock)
        if set.len() >= LASTING_MAX {
            return None;
        }
    }
    let mut set = LASTING.write().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = set.get(s) {
        return Some(l.clone());
    }
    if set.len() >= LASTING_MAX {
        return None;
    }
    let l = Text::from(s);
    l.leak();
    set.insert(l.clone());
    Some(l)
}

impl Value {
    /// Builds a string value.
    pub fn str(s: &str) -> Value {
        Value::Str(Text::from(s))
    }

    /// Builds a map value from unsorted pairs; later duplicates of a key win.
    pub fn map(mut pairs: Vec<(Text, Text)>) -> Value {
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        // keep the last occurrence of each key, as JSON object parsing does
        let mut out: Vec<(Text, Text)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Value::Map(Arc::new(out))
    }

    /// True for SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::Str(_) => 4,
            Value::Timestamp(_) => 5,
            Value::Map(_) => 6,
            Value::List(_) => 7,
        }
    }

    /// A summary of the value's place in the order, as two integers that order as the
    /// values do (`a < b` implies `a.prefix() <= b.prefix()`), and whether it is exact
    /// (equal prefixes then mean equal values): exact for every type but strings (their
    /// first 8 bytes), maps and lists. Sorting by it compares integers instead of values.
    #[inline]
    pub fn prefix(&self) -> ((u8, u64), bool) {
        let signed = |i: i64| (i as u64) ^ (1 << 63);
        match self {
            Value::Null => ((0, 0), true),
            Value::Bool(b) => ((1, u64::from(*b)), true),
            Value::Int(i) => ((2, signed(*i)), true),
            // the order of `f64::total_cmp`, as integers
            Value::Float(f) => {
                let bits = float_key(*f).to_bits() as i64;
                ((3, signed(bits ^ (((bits >> 63) as u64) >> 1) as i64)), true)
            }
            Value::Str(s) => {
                let mut first = [0u8; 8];
                let n = s.len().min(8);
                first[..n].copy_from_slice(&s.as_bytes()[..n]);
                ((4, u64::from_be_bytes(first)), false)
            }
            Value::Timestamp(t) => ((5, signed(*t)), true),
            Value::Map(_) => ((6, 0), false),
            Value::List(_) => ((7, 0), false),
        }
    }

    /// The value as a float, for numeric values.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// Normalises the float so that `-0.0 == 0.0` and all NaNs are one value, as SQL expects.
fn float_key(f: f64) -> f64 {
    if f == 0.0 {
        0.0
    } else if f.is_nan() {
        f64::NAN
    } else {
        f
    }
}

impl PartialEq for Value {
    /// The same as `cmp(other) == Equal`, without ordering what differs (strings of
    /// different lengths, say, differ without a byte compared).
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => float_key(*a).total_cmp(&float_key(*b)) == Ordering::Equal,
            (Value::Str(a), Value::Str(b)) => Text::ptr_eq(a, b) || a == b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => float_key(*a).total_cmp(&float_key(*b)),
            // rows share their strings' allocations (one per distinct tenant, kind…
            // from a batch), so equal strings are usually the same pointer
            (Value::Str(a), Value::Str(b)) if Text::ptr_eq(a, b) => Ordering::Equal,
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (Value::Map(a), Value::Map(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl Hash for Value {
    /// Equal values hash equally; values of different types may collide (a column holds
    /// one type), so scalars are one write each, without a type tag.
    #[inline(always)]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Value::Null => state.write_u8(0),
            Value::Bool(b) => state.write_u8(1 + u8::from(*b)),
            Value::Int(i) => state.write_i64(*i),
            Value::Float(f) => state.write_u64(float_key(*f).to_bits()),
            Value::Str(s) => hash_str(s, state),
            Value::Timestamp(t) => state.write_i64(*t),
            Value::Map(m) => m.hash(state),
            Value::List(l) => l.hash(state),
        }
    }
}

/// A string's hash, out of line: inlined, its byte loop made `Value::hash` too large to
/// inline into the row hashes, and every value paid a call (measured in docs/benchmarks.md).
#[inline(never)]
fn hash_str<H: Hasher>(s: &str, state: &mut H) {
    s.hash(state)
}

/// A row's (or a slice of one's) hash for the engine's own hash tables (groups, join
/// sides, a view's rows, consolidation), which never leave the process: one folded
/// multiply per value, with a short string read as two overlapping words, instead of
/// `Hash` through a `Hasher` (a length prefix, a call per string and its bytes and
/// terminator as separate writes: 160 instructions for engine-window's three-value
/// key, 290 for its seven-value row; docs/benchmarks.md). Equal values hash equally
/// as `Hash` has them (`0.0` and `-0.0`, NaNs); `seed` picks one of many such hashes.
#[inline]
pub fn hash_row(values: &[Value], seed: u64) -> u64 {
    let mut h = RowHasher::new(seed);
    for v in values {
        h.add(v);
    }
    h.finish()
}

/// [`hash_row`] a value at a time (for rows that are not one slice: a packed row's, or a
/// key's values and then the aggregates').
#[derive(Clone, Copy)]
pub struct RowHasher {
    h: u64,
    seed: u64,
}

impl RowHasher {
    /// The hash of no values yet, with `seed`.
    #[inline]
    pub fn new(seed: u64) -> RowHasher {
        RowHasher { h: seed ^ ROW_HASH_K0, seed }
    }

    /// Adds the next value.
    #[inline]
    pub fn add(&mut self, v: &Value) {
        let x = match v {
            Value::Null => 0,
            Value::Bool(b) => 1 + u64::from(*b),
            Value::Int(i) | Value::Timestamp(i) => *i as u64,
            Value::Float(f) => float_key(*f).to_bits(),
            Value::Str(s) => hash_text(s.as_bytes()),
            Value::Map(_) | Value::List(_) => foldhash::fast::FixedState::with_seed(self.seed).hash_one(v),
        };
        self.h = folded_multiply(self.h ^ x, ROW_HASH_K1);
    }

    /// The hash of the values added.
    #[inline]
    pub fn finish(self) -> u64 {
        folded_multiply(self.h, ROW_HASH_K2)
    }
}

/// A row's hash cut to 32 bits, as a hash table of entries that keep those 32 takes it:
/// hashbrown picks a bucket by the low bits and tags it with the top seven, so both come
/// from the 32. (The groups' table keeps a hash and a slab position in 32 bits each, 8
/// bytes, not 16: the table of engine-window's 1M events, 705k groups, is 8 MiB instead of
/// 16, and the probe that finds a group, most of it cache misses, the worker's largest
/// cost; the view store's entries are 16 bytes, not 24: docs/benchmarks.md.)
#[inline]
pub fn spread(h: u32) -> u64 {
    (h as u64) << 32 | h as u64
}

const ROW_HASH_K0: u64 = 0x243f_6a88_85a3_08d3;
const ROW_HASH_K1: u64 = 0x9e37_79b9_7f4a_7c15;
const ROW_HASH_K2: u64 = 0xa076_1d64_78bd_642f;

#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// A string's bytes as one word for [`hash_row`]: up to 16 bytes from two overlapping
/// loads (all of them: equal loads mean equal bytes for equal lengths), then the length;
/// longer ones through foldhash.
#[inline]
fn hash_text(b: &[u8]) -> u64 {
    let n = b.len();
    let (lo, hi) = if n >= 8 {
        if n > 16 {
            return std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::with_seed(ROW_HASH_K2), b);
        }
        (u64::from_le_bytes(b[..8].try_into().expect("8 bytes")), u64::from_le_bytes(b[n - 8..].try_into().expect("8 bytes")))
    } else if n >= 4 {
        (u64::from(u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))), u64::from(u32::from_le_bytes(b[n - 4..].try_into().expect("4 bytes"))))
    } else if n > 0 {
        (u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16, 0)
    } else {
        (0, 0)
    };
    // (the length apart from the bytes: strings of different lengths can load equal words)
    folded_multiply(lo ^ ROW_HASH_K2, hi ^ ROW_HASH_K0) ^ n as u64
}

/// Compares two rows (or slices of them) as `Ord` does, with the common one-value case
/// compared directly (the slice comparison is a loop that is not inlined). (Always
/// inlined: a group's merge and search, its hot callers, had it out of line as their
/// function grew, and engine-hop took 14% of its instructions in the calls.)
#[inline(always)]
pub fn cmp_values(a: &[Value], b: &[Value]) -> Ordering {
    match (a, b) {
        ([x], [y]) => x.cmp(y),
        _ => a.cmp(b),
    }
}

/// The order of `items` by `(group, values)` as `key` gives them (positions into
/// `items`, equal keys in no particular order): sorted by each first value's
/// [`Value::prefix`] as integers, and only runs whose prefixes tie (strings that share
/// 8 bytes, equal first values of longer slices) by comparing values. (The operators
/// sort an epoch's changes to their large groups this way before merging them in: with
/// whole values compared, the sort was a quarter of Nexmark q7's dataflow thread.)
pub fn sorted_by_prefix<T>(items: &[T], key: impl Fn(&T) -> (usize, &[Value])) -> Vec<u32> {
    let mut order: Vec<(u64, u64, u32)> = items
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let (group, values) = key(item);
            let ((rank, bits), _) = values.first().map_or(((0, 0), true), Value::prefix);
            (((group as u64) << 3) | u64::from(rank), bits, n as u32)
        })
        .collect();
    radix_sort(&mut order);
    let exact = |n: u32| {
        let values = key(&items[n as usize]).1;
        values.len() <= 1 && values.first().is_none_or(|v| v.prefix().1)
    };
    for run in order.chunk_by_mut(|a, b| a.0 == b.0 && a.1 == b.1) {
        if run.len() > 1 && !exact(run[0].2) {
            run.sort_unstable_by(|a, b| cmp_values(key(&items[a.2 as usize]).1, key(&items[b.2 as usize]).1));
        }
    }
    order.into_iter().map(|(_, _, n)| n).collect()
}

/// Sorts keys `(major, minor, position)`, positions in increasing order among equal keys
/// (as `sort_unstable` orders these triples): a least-significant-digit radix sort, a
/// byte at a time, that skips the bytes every key shares (a sort's keys usually differ in
/// a few low bytes: group positions, prices, times). Below a few hundred keys, a
/// comparison sort. (Measured on Nexmark q7, whose epochs each sort ~9,000 keys: the
/// comparison sort cost ~400 instructions a key.)
fn radix_sort(keys: &mut Vec<(u64, u64, u32)>) {
    if keys.len() < 512 {
        keys.sort_unstable();
        return;
    }
    let (mut any, mut all) = ((0u64, 0u64), (u64::MAX, u64::MAX));
    for (major, minor, _) in keys.iter() {
        (any.0, any.1, all.0, all.1) = (any.0 | major, any.1 | minor, all.0 & major, all.1 & minor);
    }
    let varying = (any.0 ^ all.0, any.1 ^ all.1);
    let mut from = std::mem::take(keys);
    let mut to = from.clone();
    // bytes of the minor word first, least significant first, then the major word's
    for (word, shift) in (0..8).map(|b| (1, 8 * b)).chain((0..8).map(|b| (0, 8 * b))) {
        let varies = if word == 0 { varying.0 } else { varying.1 };
        if (varies >> shift) & 0xff == 0 {
            continue;
        }
        let digit = |k: &(u64, u64, u32)| ((if word == 0 { k.0 } else { k.1 } >> shift) & 0xff) as usize;
        let mut offsets = [0usize; 256];
        for k in &from {
            offsets[digit(k)] += 1;
        }
        let mut start = 0;
        for offset in offsets.iter_mut() {
            (*offset, start) = (start, start + *offset);
        }
        for k in &from {
            let d = digit(k);
            to[offsets[d]] = *k;
            offsets[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
    }
    *keys = from;
}

#[cfg(test)]
mod tests {

    #[test]
    fn equal_rows_hash_equally_and_the_row_hash_separates_what_differs() {
        use super::hash_row;
        // equal strings in different allocations, and strings of every short length
        let (a, b) = (Value::Str(Text::from("tenant-0042")), Value::Str(Text::from(String::from("tenant-") + "0042")));
        assert!(!matches!((&a, &b), (Value::Str(x), Value::Str(y)) if Text::ptr_eq(x, y)));
        assert_eq!(hash_row(&[a.clone(), Value::Int(7)], 0), hash_row(&[b, Value::Int(7)], 0));
        assert_eq!(hash_row(&[Value::Float(0.0)], 0), hash_row(&[Value::Float(-0.0)], 0));
        assert_eq!(hash_row(&[Value::Float(f64::NAN)], 0), hash_row(&[Value::Float(-f64::NAN)], 0));
        let strings: Vec<String> = (0..40).map(|n| "abcdefghijklmnopqrstuvwxyz0123456789ABCD"[..n].to_string()).collect();
        let mut hashes: Vec<u64> = strings.iter().map(|s| hash_row(&[Value::str(s)], 0)).collect();
        hashes.extend(strings.iter().map(|s| hash_row(&[Value::str(&s.to_uppercase()), Value::Null], 0)));
        hashes.extend((0..1000).map(|i| hash_row(&[Value::Int(i), Value::str("k")], 0)));
        hashes.extend((0..1000).map(|i| hash_row(&[Value::str("k"), Value::Int(i)], 0)));
        hashes.extend((0..1000).map(|i| hash_row(&[Value::Int(i)], 1)));
        let n = hashes.len();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), n, "no two of these rows share a hash");
        // a table's buckets come from the low bits and its tags from the top seven
        let low: std::collections::HashSet<u64> = (0..1000).map(|i| hash_row(&[Value::Timestamp(i * 60_000)], 0) & 1023).collect();
        assert!(low.len() > 550, "{} of 1024 low-bit buckets for 1000 minutes", low.len());
    }
    use super::*;

    #[test]
    fn the_interner_shares_strings_and_maps_up_to_its_limit() {
        let mut strings = Interner::new(2);
        let row = || vec![Value::str("acme"), Value::map(vec![(Text::from("region"), Text::from("eu"))]), Value::Int(1)];
        let (mut a, mut b) = (row(), row());
        strings.share(&mut a);
        strings.share(&mut b);
        assert_eq!(a, row());
        let (Value::Str(x), Value::Str(y)) = (&a[0], &b[0]) else { panic!("strings") };
        assert!(Text::ptr_eq(x, y));
        let (Value::Map(x), Value::Map(y)) = (&a[1], &b[1]) else { panic!("maps") };
        assert!(Arc::ptr_eq(x, y));
        // a string seen first in a row is remembered as that row's own allocation
        let mut roomy = Interner::new(8);
        let mut c = vec![Value::str("globex")];
        roomy.share(&mut c);
        let Value::Str(own) = &c[0] else { panic!("a string") };
        assert!(Text::ptr_eq(own, &roomy.get("globex")));
        // full: a new string is still returned, just not remembered (unless it is short
        // enough to last: then every interner returns the one lasting copy)
        let long = "a string longer than the longest that lasts for the process's life, 64 bytes";
        let (first, again) = (strings.get(long), strings.get(long));
        assert_eq!(first, again);
        assert!(!Text::ptr_eq(&first, &again));
        let (first, again) = (strings.get("new"), Interner::new(0).get("new"));
        assert!(Text::ptr_eq(&first, &again));
        let lasting = first.clone();
        assert!(Text::is_static(&lasting), "a lasting string changes no reference count");
    }

    #[test]
    fn a_value_is_two_words() {
        // every row is a vector of these: a third more per value would be a third more per row
        assert_eq!(std::mem::size_of::<Value>(), 16);
    }

    #[test]
    fn equality_agrees_with_the_order_and_the_hash() {
        let values = [
            Value::Null,
            Value::Bool(true),
            Value::Int(3),
            Value::Float(-0.0),
            Value::Float(0.0),
            Value::Float(f64::NAN),
            Value::str("ab"),
            Value::str("abc"),
            Value::Timestamp(3),
            Value::map(vec![(Text::from("k"), Text::from("v"))]),
            Value::List(Arc::new(vec![Value::Int(1)])),
        ];
        for a in &values {
            for b in &values {
                assert_eq!(a == b, a.cmp(b) == Ordering::Equal, "{a:?} vs {b:?}");
                if a == b {
                    let hash = |v: &Value| std::hash::BuildHasher::hash_one(&std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(), v);
                    assert_eq!(hash(a), hash(b), "{a:?} and {b:?} are equal but hash differently");
                }
                assert_eq!(a.clone() == *b, a == b);
            }
        }
    }

    #[test]
    fn sorting_by_prefix_agrees_with_sorting_by_the_order() {
        // in increasing order
        let values = [
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::Int(-1),
            Value::Int(0),
            Value::Int(7),
            Value::Int(i64::MAX),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(-2.5),
            Value::Float(-0.0),
            Value::Float(0.0),
            Value::Float(1e-300),
            Value::Float(3.0),
            Value::Float(f64::NAN),
            Value::str(""),
            Value::str("abcdefgh"),
            Value::str("abcdefgh\0"),
            Value::str("abcdefghij"),
            Value::str("abcdefgz"),
            Value::str("b"),
            Value::Timestamp(-5),
            Value::Timestamp(5),
            Value::List(Arc::new(vec![Value::Int(1), Value::Int(9)])),
            Value::List(Arc::new(vec![Value::Int(2)])),
        ];
        // (group, inputs) of one and of two values, each several times, in a scrambled order
        let mut items: Vec<(usize, Vec<Value>)> = Vec::new();
        for (n, v) in values.iter().enumerate().cycle().take(values.len() * 3) {
            let group = (n * 7) % 3;
            items.push((group, vec![v.clone()]));
            items.push((group + 3, vec![v.clone(), values[(n * 5) % values.len()].clone()]));
        }
        items.rotate_left(17);
        items.swap(3, 40);
        let order = sorted_by_prefix(&items, |(group, values)| (*group, values.as_slice()));
        let sorted: Vec<&(usize, Vec<Value>)> = order.iter().map(|n| &items[*n as usize]).collect();
        let mut expected: Vec<&(usize, Vec<Value>)> = items.iter().collect();
        expected.sort();
        assert_eq!(sorted, expected);
        for (a, b) in values.iter().zip(values.iter().skip(1)) {
            assert!(a.prefix().0 <= b.prefix().0, "{a:?} ≤ {b:?} but its prefix is not");
        }
    }

    #[test]
    fn the_radix_sort_orders_as_the_comparison_sort() {
        let mut seed = 5u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 11
        };
        for (n, spread) in [(100, u64::MAX), (3000, u64::MAX), (3000, 1000), (5000, 3)] {
            let mut keys: Vec<(u64, u64, u32)> = (0..n).map(|i| (next() % 4 << 3 | 2, next() % spread, i)).collect();
            keys[7].1 = u64::MAX;
            let mut expected = keys.clone();
            expected.sort_unstable();
            radix_sort(&mut keys);
            assert_eq!(keys, expected, "{n} keys spread over {spread}");
        }
    }

    #[test]
    fn floats_compare_as_sql_expects() {
        assert_eq!(Value::Float(0.0), Value::Float(-0.0));
        assert_eq!(Value::Float(f64::NAN), Value::Float(-f64::NAN));
        assert!(Value::Float(1.0) < Value::Float(2.0));
    }

    #[test]
    fn maps_are_sorted_and_deduplicated() {
        let m = Value::map(vec![
            (Text::from("b"), Text::from("1")),
            (Text::from("a"), Text::from("2")),
            (Text::from("b"), Text::from("3")),
        ]);
        let Value::Map(pairs) = m else { panic!("not a map") };
        let keys: Vec<_> = pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        assert_eq!(keys, vec![("a", "2"), ("b", "3")]);
    }
}
