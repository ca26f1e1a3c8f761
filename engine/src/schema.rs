//! Stream schemas: typed columns, with a tenant column and an event-time column.
//!
//! Every stream has a declared schema. The built-in stream `events` carries the
//! envelope most users need (`tenant`, `ts`, `kind`, `value`, `labels`, `id`); the
//! built-in stream `rejected` records every line that ingest refused. Further streams
//! come from configuration.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType as ArrowType, Field as ArrowField, Fields, Schema as ArrowSchema, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::value::Value;

/// The name of the default event stream.
pub const EVENTS: &str = "events";
/// The name of the stream that records rejected input lines.
pub const REJECTED: &str = "rejected";
/// The built-in stream of alert state changes.
pub const ALERTS: &str = "alerts";

/// A column type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// `boolean`
    Boolean,
    /// `int` (64-bit signed integer)
    Int,
    /// `float` (64-bit float)
    Float,
    /// `string`
    String,
    /// `timestamp` (millisecond precision, UTC); JSON input may be RFC 3339 or epoch milliseconds
    Timestamp,
    /// `map` (string to string)
    Map,
}

impl DataType {
    /// The Arrow type DataFusion sees for this column type.
    pub fn to_arrow(self) -> ArrowType {
        match self {
            DataType::Boolean => ArrowType::Boolean,
            DataType::Int => ArrowType::Int64,
            DataType::Float => ArrowType::Float64,
            DataType::String => ArrowType::Utf8,
            DataType::Timestamp => ArrowType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            DataType::Map => ArrowType::Map(
                Arc::new(ArrowField::new(
                    "entries",
                    ArrowType::Struct(Fields::from(vec![
                        ArrowField::new("keys", ArrowType::Utf8, false),
                        ArrowField::new("values", ArrowType::Utf8, true),
                    ])),
                    false,
                )),
                false,
            ),
        }
    }

    /// The Weir type for an Arrow type, if Weir can represent it.
    pub fn from_arrow(t: &ArrowType) -> Option<DataType> {
        Some(match t {
            ArrowType::Boolean => DataType::Boolean,
            ArrowType::Int8
            | ArrowType::Int16
            | ArrowType::Int32
            | ArrowType::Int64
            | ArrowType::UInt8
            | ArrowType::UInt16
            | ArrowType::UInt32 => DataType::Int,
            ArrowType::Float16 | ArrowType::Float32 | ArrowType::Float64 => DataType::Float,
            ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => DataType::String,
            ArrowType::Timestamp(_, _) => DataType::Timestamp,
            ArrowType::Map(_, _) => DataType::Map,
            _ => return None,
        })
    }
}

/// One column of a schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// The column name.
    pub name: String,
    /// The column type.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Whether the column may be null (absent in input).
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

impl Column {
    /// Builds a column.
    pub fn new(name: &str, data_type: DataType, nullable: bool) -> Column {
        Column { name: name.to_string(), data_type, nullable }
    }
}

/// The columns of a stream or view, in row order.
pub type Columns = Vec<Column>;

/// Builds the Arrow schema DataFusion sees for the columns.
pub fn arrow_schema(columns: &[Column]) -> Arc<ArrowSchema> {
    Arc::new(ArrowSchema::new(
        columns
            .iter()
            .map(|c| ArrowField::new(&c.name, c.data_type.to_arrow(), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// A stream: a typed schema with a tenant column, an event-time column, an optional
/// idempotency-key column, and its time policy.
#[derive(Clone, Debug)]
pub struct Stream {
    /// The stream's name, as used in SQL and in `/v1/streams/{stream}/events`.
    pub name: String,
    /// The columns, in row order.
    pub columns: Columns,
    /// Index of the tenant column (a non-null string).
    pub tenant: usize,
    /// Index of the event-time column (a non-null timestamp).
    pub time: usize,
    /// Index of the idempotency-key column, if any.
    pub id: Option<usize>,
    /// Default values for columns absent from input.
    pub defaults: Vec<Option<Value>>,
    /// The time policy.
    pub policy: TimePolicy,
    /// Whether rows carry a weight (a multiplicity) besides their values: logged rows
    /// have it as one extra last value. The built-in `usage` stream is weighted.
    pub weighted: bool,
    /// Whether events count towards tenant quotas; false for the streams Weir writes
    /// itself (`rejected`, `usage`, `alerts`), which clients cannot post to.
    pub metered: bool,
}

/// How late an event may be, and how long events are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimePolicy {
    /// Events whose time is more than this many milliseconds behind the stream's
    /// watermark (the largest event time seen) are rejected as `late`.
    pub lateness_ms: i64,
    /// Events whose time is more than this many milliseconds behind the watermark are
    /// retracted from every view, so that state stays bounded.
    pub retention_ms: i64,
}

impl TimePolicy {
    /// One hour of lateness, one day of retention.
    pub const DEFAULT: TimePolicy = TimePolicy { lateness_ms: 3_600_000, retention_ms: 86_400_000 };
}

impl Stream {
    /// Builds a stream from its columns, naming the tenant, time and id columns.
    pub fn new(name: &str, columns: Columns, tenant: &str, time: &str, id: Option<&str>, policy: TimePolicy) -> Result<Stream> {
        let find = |col: &str, want: DataType, role: &str| -> Result<usize> {
            let i = columns
                .iter()
                .position(|c| c.name == col)
                .ok_or_else(|| Error::Config(format!("stream {name}: {role} column {col:?} is not among its columns")))?;
            if columns[i].data_type != want {
                return Err(Error::Config(format!(
                    "stream {name}: {role} column {col:?} must have type {want:?}, not {:?}",
                    columns[i].data_type
                )));
            }
            Ok(i)
        };
        if policy.lateness_ms < 0 || policy.retention_ms <= 0 {
            return Err(Error::Config(format!("stream {name}: lateness must be ≥ 0 and retention > 0")));
        }
        if policy.lateness_ms > policy.retention_ms {
            return Err(Error::Config(format!("stream {name}: lateness must not exceed retention")));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            if !seen.insert(c.name.as_str()) {
                return Err(Error::Config(format!("stream {name}: column {:?} is declared twice", c.name)));
            }
        }
        let tenant = find(tenant, DataType::String, "tenant")?;
        let time = find(time, DataType::Timestamp, "time")?;
        let id = id.map(|id| find(id, DataType::String, "id")).transpose()?;
        let defaults = vec![None; columns.len()];
        // every event has a tenant and an event time
        let mut columns = columns;
        columns[tenant].nullable = false;
        columns[time].nullable = false;
        Ok(Stream { name: name.to_string(), columns, tenant, time, id, defaults, policy, weighted: false, metered: true })
    }

    /// The default stream `events`: `tenant`, `ts`, `kind`, `value` (default 0),
    /// `labels`, `id`.
    pub fn events(policy: TimePolicy) -> Stream {
        let columns = vec![
            Column::new("tenant", DataType::String, false),
            Column::new("ts", DataType::Timestamp, false),
            Column::new("kind", DataType::String, false),
            Column::new("value", DataType::Float, false),
            Column::new("labels", DataType::Map, true),
            Column::new("id", DataType::String, true),
        ];
        let mut s = Stream::new(EVENTS, columns, "tenant", "ts", Some("id"), policy).expect("the events schema is valid");
        s.defaults[3] = Some(Value::Float(0.0));
        s
    }

    /// The stream `rejected`: every input line that ingest refused, with the reason.
    /// `tenant` is the line's tenant where it could be read; `ts` is when it was refused.
    pub fn rejected(policy: TimePolicy) -> Stream {
        let columns = vec![
            Column::new("tenant", DataType::String, true),
            Column::new("ts", DataType::Timestamp, false),
            Column::new("stream", DataType::String, false),
            Column::new("line", DataType::Int, false),
            Column::new("raw", DataType::String, false),
            Column::new("error", DataType::String, false),
        ];
        let mut s = Stream::new(REJECTED, columns, "tenant", "ts", None, policy).expect("the rejected schema is valid");
        // an unreadable line may have no tenant: the tenant column is nullable here only
        s.columns[0].nullable = true;
        s.metered = false;
        s
    }

    /// The stream `alerts`: every alert state change (firing, resolved). `tenant` is
    /// null for alerts about no tenant; `ts` is when the change happened.
    pub fn alerts(policy: TimePolicy) -> Stream {
        let columns = vec![
            Column::new("tenant", DataType::String, true),
            Column::new("ts", DataType::Timestamp, false),
            Column::new("fingerprint", DataType::String, false),
            Column::new("alertname", DataType::String, false),
            Column::new("status", DataType::String, false),
            Column::new("severity", DataType::String, true),
            Column::new("series", DataType::String, true),
            Column::new("summary", DataType::String, true),
            Column::new("starts_at", DataType::Timestamp, false),
            Column::new("ends_at", DataType::Timestamp, true),
        ];
        let mut s = Stream::new(ALERTS, columns, "tenant", "ts", None, policy).expect("the alerts schema is valid");
        s.columns[0].nullable = true;
        s.metered = false;
        s
    }

    /// The index of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Whether late events are checked against this stream's watermark; `rejected` is
    /// stamped with ingest time and never late.
    pub fn checks_lateness(&self) -> bool {
        self.metered
    }
}
