//! Values and rows: the data that flows through the dataflow.
//!
//! A [`Row`] is a vector of [`Value`]s in the column order of its schema. Values are
//! cheap to clone (strings and maps are reference counted), totally ordered and
//! hashable, as differential dataflow requires of its data.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One row of a stream or a view, in schema column order.
pub type Row = Vec<Value>;

/// A string-to-string map, kept sorted by key so that equal maps compare equal.
pub type LabelMap = Arc<[(Arc<str>, Arc<str>)]>;

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
    Str(Arc<str>),
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// A string-to-string map, sorted by key.
    Map(LabelMap),
    /// A list, only inside a view's plan (e.g. the windows of `hop`, before `unnest`).
    List(Arc<[Value]>),
}

impl Value {
    /// Builds a string value.
    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    /// Builds a map value from unsorted pairs; later duplicates of a key win.
    pub fn map(mut pairs: Vec<(Arc<str>, Arc<str>)>) -> Value {
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        // keep the last occurrence of each key, as JSON object parsing does
        let mut out: Vec<(Arc<str>, Arc<str>)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Value::Map(out.into())
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
            (Value::Str(a), Value::Str(b)) => Arc::ptr_eq(a, b) || a == b,
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
            // rows share their strings' allocations (one Arc per distinct tenant, kind…
            // from a batch), so equal strings are usually the same pointer
            (Value::Str(a), Value::Str(b)) if Arc::ptr_eq(a, b) => Ordering::Equal,
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
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Value::Null => state.write_u8(0),
            Value::Bool(b) => state.write_u8(1 + u8::from(*b)),
            Value::Int(i) => state.write_i64(*i),
            Value::Float(f) => state.write_u64(float_key(*f).to_bits()),
            Value::Str(s) => s.hash(state),
            Value::Timestamp(t) => state.write_i64(*t),
            Value::Map(m) => m.hash(state),
            Value::List(l) => l.hash(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Value::map(vec![(Arc::from("k"), Arc::from("v"))]),
            Value::List(Arc::from(vec![Value::Int(1)])),
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
    fn floats_compare_as_sql_expects() {
        assert_eq!(Value::Float(0.0), Value::Float(-0.0));
        assert_eq!(Value::Float(f64::NAN), Value::Float(-f64::NAN));
        assert!(Value::Float(1.0) < Value::Float(2.0));
    }

    #[test]
    fn maps_are_sorted_and_deduplicated() {
        let m = Value::map(vec![
            (Arc::from("b"), Arc::from("1")),
            (Arc::from("a"), Arc::from("2")),
            (Arc::from("b"), Arc::from("3")),
        ]);
        let Value::Map(pairs) = m else { panic!("not a map") };
        let keys: Vec<_> = pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        assert_eq!(keys, vec![("a", "2"), ("b", "3")]);
    }
}
