//! JSON input: newline-delimited JSON (one object a line) or a JSON array of objects.
//!
//! Each object is validated against the stream's schema: required columns present,
//! values of the declared types (timestamps as RFC 3339 strings or epoch
//! milliseconds), defaults filled in. Fields the schema does not name are ignored.


use serde_json::{Map, Value as Json};
use weir_engine::ingest::{Decoded, Rejection};
use weir_engine::schema::{DataType, Stream};
use weir_engine::time::parse_rfc3339_ms;
use weir_engine::value::{Interner, Row, Text, Value};

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
    let interner = RequestStrings::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = (i + 1) as u32;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(line);
        let decoded = serde::de::DeserializeSeed::deserialize(RowSeed { stream, interner: &interner }, &mut de).and_then(|row| de.end().map(|_| row));
        match decoded {
            Ok(Ok(row)) => {
                out.rows.push((line_no, row));
                out.sizes.push(line.len() as u32);
            }
            // valid JSON that breaks the schema, or not JSON at all: take the slow path
            // once, for the precise reason and the line's tenant
            _ => match serde_json::from_str::<Json>(line) {
                Ok(json) => push(stream, line_no, &json, || line.to_string(), &mut out),
                Err(e) => out.rejected.push(rejection(line_no, line.to_string(), format!("invalid JSON: {e}"), None)),
            },
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

/// Decodes one JSON object straight into a row of the stream, without building a JSON
/// tree. `Ok(Err(()))` means the object does not fit the schema (the caller then finds
/// out why on the slow path); `Err` means the text is not JSON.
struct RowSeed<'a> {
    stream: &'a Stream,
    interner: &'a RequestStrings,
}

/// One shared allocation per distinct string of a request (see [`Interner`]).
struct RequestStrings(std::cell::RefCell<Interner>);

impl Default for RequestStrings {
    fn default() -> RequestStrings {
        RequestStrings(std::cell::RefCell::new(Interner::new(4096)))
    }
}

impl RequestStrings {
    fn get(&self, s: &str) -> Text {
        self.0.borrow_mut().get(s)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Result<Row, ()>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = Result<Row, ()>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let stream = self.stream;
        let mut row: Vec<Option<Value>> = vec![None; stream.columns.len()];
        let mut fits = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match stream.columns.iter().position(|c| c.name == *key) {
                Some(i) => match map.next_value_seed(ValueSeed { data_type: stream.columns[i].data_type, interner: self.interner })? {
                    Some(v) => row[i] = Some(v),
                    None => fits = false,
                },
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        if !fits {
            return Ok(Err(()));
        }
        let mut out = Vec::with_capacity(row.len());
        for (i, v) in row.into_iter().enumerate() {
            match v {
                Some(Value::Null) | None => match &stream.defaults[i] {
                    Some(default) => out.push(default.clone()),
                    None if stream.columns[i].nullable => out.push(Value::Null),
                    None => return Ok(Err(())),
                },
                Some(v) => out.push(v),
            }
        }
        if matches!(&out[stream.tenant], Value::Str(t) if t.is_empty()) {
            return Ok(Err(()));
        }
        Ok(Ok(out))
    }
}

/// One field's value, of the column's type; `None` when it has another type.
struct ValueSeed<'a> {
    data_type: DataType,
    interner: &'a RequestStrings,
}

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueSeed<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(type_name(self.data_type))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok((self.data_type == DataType::Boolean).then_some(Value::Bool(b)))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(match self.data_type {
            DataType::Int => Some(Value::Int(n)),
            DataType::Float => Some(Value::Float(n as f64)),
            DataType::Timestamp => Some(Value::Timestamp(n)),
            _ => None,
        })
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
        match i64::try_from(n) {
            Ok(n) => self.visit_i64(n),
            Err(_) => Ok((self.data_type == DataType::Float).then_some(Value::Float(n as f64))),
        }
    }

    fn visit_f64<E>(self, x: f64) -> Result<Self::Value, E> {
        Ok((self.data_type == DataType::Float).then_some(Value::Float(x)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(match self.data_type {
            DataType::String => Some(Value::Str(self.interner.get(s))),
            DataType::Timestamp => parse_rfc3339_ms(s).map(Value::Timestamp),
            _ => None,
        })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if self.data_type != DataType::Map {
            while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
            return Ok(None);
        }
        let mut pairs = Vec::new();
        let mut fits = true;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match map.next_value::<Json>()? {
                Json::String(v) => pairs.push((self.interner.get(&k), self.interner.get(&v))),
                Json::Number(n) => pairs.push((self.interner.get(&k), self.interner.get(&n.to_string()))),
                Json::Bool(b) => pairs.push((self.interner.get(&k), self.interner.get(&b.to_string()))),
                _ => fits = false,
            }
        }
        Ok(fits.then(|| Value::map(pairs)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

fn push(stream: &Stream, line: u32, json: &Json, raw: impl Fn() -> String, out: &mut Decoded) {
    let Json::Object(object) = json else {
        out.rejected.push(rejection(line, raw(), "expected a JSON object".into(), None));
        return;
    };
    match row_from_object(stream, object) {
        Ok(row) => {
            out.rows.push((line, row));
            out.sizes.push(raw().len() as u32);
        }
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
                let v: Text = match v {
                    Json::String(s) => Text::from(s.as_str()),
                    Json::Number(n) => Text::from(n.to_string()),
                    Json::Bool(b) => Text::from(b.to_string()),
                    _ => return Err(format!("label {k:?} must be a string, number or boolean")),
                };
                pairs.push((Text::from(k.as_str()), v));
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
    use proptest::prelude::*;
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

    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("\"\"".to_string()),
            Just("\"acme\"".to_string()),
            Just("\"2026-11-22T10:00:05Z\"".to_string()),
            Just("\"2026-11-22 10:00\"".to_string()),
            Just("-17".to_string()),
            Just("1795341600000".to_string()),
            Just("18446744073709551615".to_string()),
            Just("2.5".to_string()),
            Just("1e3".to_string()),
            Just("[1, \"a\"]".to_string()),
            Just("{\"region\": \"eu\", \"n\": 3, \"ok\": false}".to_string()),
            Just("{\"nested\": {\"a\": 1}}".to_string()),
        ]
    }

    /// A valid event with some fields dropped or replaced by values of any JSON kind,
    /// and sometimes extra fields: mostly near-misses, which is where decoders differ.
    fn json_object() -> impl Strategy<Value = String> {
        let valid = [
            ("tenant", "\"acme\""),
            ("ts", "\"2026-11-22T10:00:05Z\""),
            ("kind", "\"click\""),
            ("value", "2.5"),
            ("labels", "{\"region\": \"eu\"}"),
            ("id", "\"e-1\""),
        ];
        let field = |(name, good): (&'static str, &'static str)| {
            prop_oneof![
                6 => Just(Some(good.to_string())),
                1 => Just(None),
                3 => json_value().prop_map(Some),
            ]
            .prop_map(move |v| v.map(|v| format!("\"{name}\": {v}")))
        };
        let fields: Vec<_> = valid.into_iter().map(field).collect();
        (fields, prop::option::of(json_value())).prop_map(|(fields, extra)| {
            let mut inner: Vec<String> = fields.into_iter().flatten().collect();
            if let Some(extra) = extra {
                inner.push(format!("\"other\": {extra}"));
            }
            format!("{{{}}}", inner.join(", "))
        })
    }

    proptest! {
        /// The fast decoder (straight into rows) and the validating one (through a JSON
        /// tree) accept exactly the same lines and build the same rows.
        #[test]
        fn fast_and_validating_decoders_agree(line in json_object()) {
            let s = Stream::events(TimePolicy::DEFAULT);
            let fast = decode_ndjson(&s, line.as_bytes()).unwrap();
            let object: Map<String, Json> = serde_json::from_str(&line).unwrap();
            match row_from_object(&s, &object) {
                Ok(row) => prop_assert_eq!(fast.rows, vec![(1, row)]),
                Err(e) => {
                    prop_assert!(fast.rows.is_empty());
                    prop_assert_eq!(&fast.rejected[0].error, &e);
                }
            }
        }
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
