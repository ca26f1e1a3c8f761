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

/// Writes the JSON object of a row, keyed by column name in the columns' order, to
/// `out`: the same values as [`row_to_json`], written directly instead of through a
/// `serde_json::Value` (a subscriber's stream writes every change of every epoch).
pub fn write_row_json(out: &mut Vec<u8>, columns: &[Column], row: &[Value]) {
    out.push(b'{');
    for (i, (c, v)) in columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, c.name.as_str());
        out.push(b':');
        write_value_json(out, v);
    }
    out.push(b'}');
}

/// Writes the JSON form of one value (as [`value_to_json`] gives it) to `out`.
pub fn write_value_json(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => write_json(out, i),
        Value::Float(f) if f.is_finite() => write_json(out, f),
        Value::Float(_) => out.extend_from_slice(b"null"),
        Value::Str(s) => write_json(out, &**s),
        Value::Timestamp(t) => write_json(out, &format_rfc3339_ms(*t)),
        Value::Map(_) | Value::List(_) => write_json(out, &value_to_json(v)),
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // (writing a string, a number or a `serde_json::Value` into memory cannot fail)
    serde_json::to_writer(out, v).expect("JSON into memory");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::DataType;

    #[test]
    fn writing_a_row_gives_the_json_of_building_it() {
        let columns: Vec<Column> = ["t", "s", "i", "f", "nan", "b", "n", "m", "l"].iter().map(|n| Column::new(n, DataType::String, true)).collect();
        let row = vec![
            Value::Timestamp(1_795_341_615_123),
            Value::str("a \"quoted\"\n\u{1F600}"),
            Value::Int(-42),
            Value::Float(0.1),
            Value::Float(f64::NAN),
            Value::Bool(true),
            Value::Null,
            Value::map(vec![(crate::value::Text::from("k"), crate::value::Text::from("v"))]),
            Value::List(std::sync::Arc::new(vec![Value::Int(1), Value::str("x")])),
        ];
        let mut out = Vec::new();
        write_row_json(&mut out, &columns, &row);
        let written: Json = serde_json::from_slice(&out).unwrap();
        assert_eq!(written, row_to_json(&columns, &row));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("{\"t\":\"2026-") && text.find("\"s\":") < text.find("\"i\":"), "in the columns' order: {text}");
    }
}
