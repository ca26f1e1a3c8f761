//! The JSON form of rows, as the HTTP API and the `rejected` stream show them.
//!
//! Timestamps are RFC 3339 strings in UTC with milliseconds, maps are objects,
//! non-finite floats are `null` (JSON has no NaN or infinity).

use serde_json::{Map, Value as Json};

use crate::schema::Column;
use crate::time::format_rfc3339_ms;
use crate::value::Value;

/// The JSON form of one value.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Value::Str(s) => Json::String(s.to_string()),
        Value::Timestamp(t) => Json::String(format_rfc3339_ms(*t)),
        Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.to_string(), Json::String(v.to_string()))).collect()),
        Value::List(l) => Json::Array(l.iter().map(value_to_json).collect()),
    }
}

/// The JSON object of a row, keyed by column name.
pub fn row_to_json(columns: &[Column], row: &[Value]) -> Json {
    let mut object = Map::with_capacity(columns.len());
    for (c, v) in columns.iter().zip(row) {
        object.insert(c.name.clone(), value_to_json(v));
    }
    Json::Object(object)
}
