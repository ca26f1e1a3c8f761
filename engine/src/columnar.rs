//! Rows ⇄ Arrow record batches, so that DataFusion can run SQL over Weir's data (the
//! oracle in tests; the query layer over live state).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{self as arrow_types, DataType as ArrowType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::schema::{Column, DataType};
use crate::value::{Row, Value};

/// Builds a record batch of `rows` with `columns`.
pub fn rows_to_batch(columns: &[Column], rows: &[Row]) -> Result<RecordBatch> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let values = rows.iter().map(|r| &r[i]);
        let array: ArrayRef = match c.data_type {
            DataType::Boolean => {
                let mut b = BooleanBuilder::new();
                values.for_each(|v| b.append_option(if let Value::Bool(x) = v { Some(*x) } else { None }));
                Arc::new(b.finish())
            }
            DataType::Int => {
                let mut b = Int64Builder::new();
                values.for_each(|v| b.append_option(if let Value::Int(x) = v { Some(*x) } else { None }));
                Arc::new(b.finish())
            }
            DataType::Float => {
                let mut b = Float64Builder::new();
                values.for_each(|v| b.append_option(v.as_f64()));
                Arc::new(b.finish())
            }
            DataType::String => {
                let mut b = StringBuilder::new();
                values.for_each(|v| b.append_option(if let Value::Str(s) = v { Some(s.as_str()) } else { None }));
                Arc::new(b.finish())
            }
            DataType::Timestamp => {
                let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
                values.for_each(|v| b.append_option(if let Value::Timestamp(t) = v { Some(*t) } else { None }));
                Arc::new(b.finish())
            }
            DataType::Map => {
                let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
                for v in values {
                    if let Value::Map(m) = v {
                        for (k, val) in m.iter() {
                            b.keys().append_value(k);
                            b.values().append_value(val);
                        }
                        b.append(true).map_err(|e| Error::Sql(e.to_string()))?;
                    } else {
                        b.append(false).map_err(|e| Error::Sql(e.to_string()))?;
                    }
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    let fields: Vec<Field> = columns.iter().zip(&arrays).map(|(c, a)| Field::new(&c.name, a.data_type().clone(), true)).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| Error::Sql(e.to_string()))
}

/// Encodes rows as an Arrow IPC stream (schema, then one record batch).
pub fn rows_to_ipc(columns: &[Column], rows: &[Row]) -> Result<Vec<u8>> {
    let batch = rows_to_batch(columns, rows)?;
    let mut out = Vec::new();
    let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).map_err(|e| Error::Sql(e.to_string()))?;
    writer.write(&batch).map_err(|e| Error::Sql(e.to_string()))?;
    writer.finish().map_err(|e| Error::Sql(e.to_string()))?;
    drop(writer);
    Ok(out)
}

/// Decodes an Arrow IPC stream into rows (with Arrow's own reader).
pub fn ipc_to_rows(bytes: &[u8]) -> Result<Vec<Row>> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| Error::Sql(e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(batch_to_rows(&batch.map_err(|e| Error::Sql(e.to_string()))?)?);
    }
    Ok(rows)
}

/// Reads a record batch back into rows.
pub fn batch_to_rows(batch: &RecordBatch) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = (0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())).collect();
    for array in batch.columns() {
        // dictionary-encoded columns (Delta's partition columns, for one) are read as their values
        let decoded;
        let array = match array.data_type() {
            ArrowType::Dictionary(_, values) => {
                decoded = datafusion::arrow::compute::cast(array, values).map_err(|e| Error::Sql(e.to_string()))?;
                &decoded
            }
            _ => array,
        };
        for (i, row) in rows.iter_mut().enumerate() {
            row.push(value_at(array.as_ref(), i)?);
        }
    }
    Ok(rows)
}

fn value_at(array: &dyn Array, i: usize) -> Result<Value> {
    use arrow_types::*;
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        ArrowType::Boolean => Value::Bool(array.as_boolean().value(i)),
        ArrowType::Int8 => Value::Int(array.as_primitive::<Int8Type>().value(i).into()),
        ArrowType::Int16 => Value::Int(array.as_primitive::<Int16Type>().value(i).into()),
        ArrowType::Int32 => Value::Int(array.as_primitive::<Int32Type>().value(i).into()),
        ArrowType::Int64 => Value::Int(array.as_primitive::<Int64Type>().value(i)),
        ArrowType::UInt8 => Value::Int(array.as_primitive::<UInt8Type>().value(i).into()),
        ArrowType::UInt16 => Value::Int(array.as_primitive::<UInt16Type>().value(i).into()),
        ArrowType::UInt32 => Value::Int(array.as_primitive::<UInt32Type>().value(i).into()),
        ArrowType::UInt64 => Value::Int(array.as_primitive::<UInt64Type>().value(i) as i64),
        ArrowType::Float32 => Value::Float(array.as_primitive::<Float32Type>().value(i).into()),
        ArrowType::Float64 => Value::Float(array.as_primitive::<Float64Type>().value(i)),
        ArrowType::Utf8 => Value::str(array.as_string::<i32>().value(i)),
        ArrowType::LargeUtf8 => Value::str(array.as_string::<i64>().value(i)),
        ArrowType::Utf8View => Value::str(array.as_string_view().value(i)),
        ArrowType::Timestamp(unit, _) => Value::Timestamp(match unit {
            TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(i) * 1000,
            TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(i),
            TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(i).div_euclid(1000),
            TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(i).div_euclid(1_000_000),
        }),
        ArrowType::Map(_, _) => {
            let entries = array.as_map().value(i);
            let keys = entries.column(0);
            let vals = entries.column(1);
            let mut pairs = Vec::with_capacity(entries.len());
            for j in 0..entries.len() {
                let (Value::Str(k), Value::Str(v)) = (value_at(keys.as_ref(), j)?, value_at(vals.as_ref(), j)?) else {
                    return Err(Error::Sql("maps must have string keys and values".into()));
                };
                pairs.push((k, v));
            }
            Value::map(pairs)
        }
        other => return Err(Error::Sql(format!("values of type {other} cannot be read into rows"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Stream, TimePolicy};

    #[test]
    fn rows_round_trip_through_arrow() {
        let s = Stream::events(TimePolicy::DEFAULT);
        let rows = vec![
            vec![Value::str("a"), Value::Timestamp(5), Value::str("k"), Value::Float(1.5), Value::map(vec![("r".into(), "eu".into())]), Value::Null],
            vec![Value::str("b"), Value::Timestamp(-5), Value::str("k"), Value::Float(0.0), Value::Null, Value::str("id")],
        ];
        let batch = rows_to_batch(&s.columns, &rows).unwrap();
        assert_eq!(batch_to_rows(&batch).unwrap(), rows);

        assert_eq!(ipc_to_rows(&rows_to_ipc(&s.columns, &rows).unwrap()).unwrap(), rows);
    }
}
