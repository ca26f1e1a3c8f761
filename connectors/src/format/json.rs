//! JSON input: newline-delimited JSON (one object a line) or a JSON array of objects.
//!
//! Each object is validated against the stream's schema: required columns present,
//! values of the declared types (timestamps as RFC 3339 strings or epoch
//! milliseconds), defaults filled in. Fields the schema does not name are ignored.

use std::sync::Arc;

use serde_json::{Map, Value as Json};
use weir_engine::ingest::{Decoded, Rejection};
use weir_engine::schema::{DataType, Stream};
use weir_engine::time::parse_rfc3339_ms;
use weir_engine::value::{Row, Value};

/// The most of a refused line that is kept in the `rejected` stream.
const MAX_RAW: usize = 4096;

/// A body that is not even a sequence of lines or elements.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is not a JSON array (for `application/json`).
    #[error("the body is not a JSON array of events: {0}")]
    NotAnArray(String),
    /// The body is not UTF-8.
    #[error("the body is not UTF-8 text")]
    NotUtf8,
}

/// Decodes newline-delimited JSON: one event per non-blank line, numbered from 1.
pub fn decode_ndjson(stream: &Stream, body: &[u8]) -> Result<Decoded, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let mut out = Decoded::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = (i + 1) as u32;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Json>(line) {
            Ok(json) => push(stream, line_no, &json, || line.to_string(), &mut out),
            Err(e) => out.rejected.push(rejection(line_no, line.to_string(), format!("invalid JSON: {e}"), None)),
        }
    }
    Ok(out)
}

/// Decodes a JSON array of events, numbered from 1.
pub fn decode_json_array(stream: &Stream, body: &[u8]) -> Result<Decoded, BodyError> {
    let items: Vec<Json> = serde_json::from_slice(body).map_err(|e| BodyError::NotAnArray(e.to_string()))?;
    let mut out = Decoded::default();
    for (i, json) in items.iter().enumerate() {
        push(stream, (i + 1) as u32, json, || json.to_string(), &mut out);
    }
    Ok(out)
}

fn push(stream: &Stream, line: u32, json: &Json, raw: impl Fn() -> String, out: &mut Decoded) {
    let Json::Object(object) = json else {
        out.rejected.push(rejection(line, raw(), "expected a JSON object".into(), None));
        return;
    };
    match row_from_object(stream, object) {
        Ok(row) => out.rows.push((line, row)),
        Err(error) => {
            let tenant = object.get(&stream.columns[stream.tenant].name).and_then(Json::as_str).map(str::to_string);
            out.rejected.push(rejection(line, raw(), error, tenant));
        }
    }
}

fn rejection(line: u32, mut raw: String, error: String, tenant: Option<String>) -> Rejection {
    if raw.len() > MAX_RAW {
        let mut cut = MAX_RAW;
        while !raw.is_char_boundary(cut) {
            cut -= 1;
        }
        raw.truncate(cut);
    }
    Rejection { line, raw, error, tenant }
}

/// Validates one JSON object against the stream's schema and builds its row.
pub fn row_from_object(stream: &Stream, object: &Map<String, Json>) -> Result<Row, String> {
    let mut row = Vec::with_capacity(stream.columns.len());
    for (i, column) in stream.columns.iter().enumerate() {
        let value = match object.get(&column.name) {
            None | Some(Json::Null) => match &stream.defaults[i] {
                Some(default) => default.clone(),
                None if column.nullable => Value::Null,
                None => return Err(format!("missing required field {:?}", column.name)),
            },
            Some(json) => convert(json, column.data_type).map_err(|e| format!("field {:?}: {e}", column.name))?,
        };
        row.push(value);
    }
    if let Value::Str(tenant) = &row[stream.tenant] {
        if tenant.is_empty() {
            return Err(format!("field {:?} must not be empty", stream.columns[stream.tenant].name));
        }
    }
    Ok(row)
}

fn convert(json: &Json, t: DataType) -> Result<Value, String> {
    match (t, json) {
        (DataType::String, Json::String(s)) => Ok(Value::str(s)),
        (DataType::Boolean, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (DataType::Int, Json::Number(n)) => n.as_i64().map(Value::Int).ok_or_else(|| format!("expected a 64-bit integer, found {n}")),
        (DataType::Float, Json::Number(n)) => n.as_f64().map(Value::Float).ok_or_else(|| format!("expected a number, found {n}")),
        (DataType::Timestamp, Json::String(s)) => {
            parse_rfc3339_ms(s).map(Value::Timestamp).ok_or_else(|| format!("expected an RFC 3339 timestamp, found {s:?}"))
        }
        (DataType::Timestamp, Json::Number(n)) => {
            n.as_i64().map(Value::Timestamp).ok_or_else(|| format!("expected epoch milliseconds as an integer, found {n}"))
        }
        (DataType::Map, Json::Object(m)) => {
            let mut pairs = Vec::with_capacity(m.len());
            for (k, v) in m {
                let v: Arc<str> = match v {
                    Json::String(s) => Arc::from(s.as_str()),
                    Json::Number(n) => Arc::from(n.to_string()),
                    Json::Bool(b) => Arc::from(b.to_string()),
                    _ => return Err(format!("label {k:?} must be a string, number or boolean")),
                };
                pairs.push((Arc::from(k.as_str()), v));
            }
            Ok(Value::map(pairs))
        }
        (t, json) => Err(format!("expected {}, found {}", type_name(t), json_kind(json))),
    }
}

fn type_name(t: DataType) -> &'static str {
    match t {
        DataType::Boolean => "a boolean",
        DataType::Int => "an integer",
        DataType::Float => "a number",
        DataType::String => "a string",
        DataType::Timestamp => "an RFC 3339 timestamp or epoch milliseconds",
        DataType::Map => "an object of string values",
    }
}

fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::schema::TimePolicy;

    #[test]
    fn good_lines_pass_and_bad_lines_are_rejected_with_their_number() {
        let s = Stream::events(TimePolicy::DEFAULT);
        let body = br#"{"tenant":"a","ts":"2026-11-22T10:00:00Z","kind":"click","value":2,"labels":{"region":"eu","n":3}}
{"tenant":"a","ts":1763805600000,"kind":"view"}
not json

{"tenant":"b","kind":"view"}
{"tenant":"b","ts":"yesterday","kind":"view"}
{"tenant":"","ts":1,"kind":"view"}
[1,2]
"#;
        let d = decode_ndjson(&s, body).unwrap();
        assert_eq!(d.rows.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(d.rows[1].1[3], Value::Float(0.0), "value defaults to 0");
        assert_eq!(d.rows[1].1[0], Value::str("a"));
        let lines: Vec<u32> = d.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 5, 6, 7, 8]);
        assert!(d.rejected[1].error.contains("missing required field \"ts\""), "{}", d.rejected[1].error);
        assert_eq!(d.rejected[1].tenant.as_deref(), Some("b"));
        assert!(d.rejected[2].error.contains("RFC 3339"));
    }

    #[test]
    fn arrays_are_numbered_by_element() {
        let s = Stream::events(TimePolicy::DEFAULT);
        let d = decode_json_array(&s, br#"[{"tenant":"a","ts":5,"kind":"k"},{"tenant":"a"}]"#).unwrap();
        assert_eq!(d.rows.len(), 1);
        assert_eq!(d.rejected[0].line, 2);
        assert!(decode_json_array(&s, b"{}").is_err());
    }
}
