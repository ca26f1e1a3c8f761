//! Hopping windows: `hop(slide, size, ts)` is the list of the starts of every window of
//! length `size`, starting every `slide`, that holds `ts`. With `unnest` it assigns each
//! event to each of its windows:
//!
//! ```sql
//! SELECT window_start, tenant, count(*) AS n
//! FROM (SELECT unnest(hop(INTERVAL '1 minute', INTERVAL '5 minutes', ts)) AS window_start, tenant FROM events)
//! GROUP BY window_start, tenant
//! ```
//!
//! The function is registered with DataFusion too, so the same SQL also runs as a batch
//! query: that is how hopping views are checked against the oracle and, later, queried.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, ListBuilder, TimestampMillisecondBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, IntervalMonthDayNanoType, TimeUnit, TimestampMillisecondType};
use datafusion::common::{exec_err, plan_err, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::error::{Error, Result};
use crate::expr::{bin, interval_ms};

/// The function's SQL name.
pub const HOP: &str = "hop";

/// The most windows one event may fall in (`size / slide`), to keep plans sane.
const MAX_WINDOWS_PER_EVENT: i64 = 1_000;

/// Checks that a hopping window's slide and size make sense.
pub fn check_hop(slide_ms: i64, size_ms: i64) -> Result<()> {
    if size_ms < slide_ms {
        return Err(Error::Sql("hop: the window size must be at least the slide".into()));
    }
    if size_ms / slide_ms > MAX_WINDOWS_PER_EVENT {
        return Err(Error::Sql(format!("hop: at most {MAX_WINDOWS_PER_EVENT} windows per event (size / slide)")));
    }
    Ok(())
}

/// The starts of every window holding `ts`, oldest first.
pub fn hop_starts(ts: i64, slide_ms: i64, size_ms: i64) -> impl Iterator<Item = i64> {
    let last = bin(ts, slide_ms, 0);
    let first = bin(ts - size_ms + slide_ms, slide_ms, 0);
    // (a range of known length: a list collected from it is allocated once, at its size)
    (0..(last - first) / slide_ms + 1).map(move |k| first + k * slide_ms)
}

/// `hop` as a DataFusion scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HopFunction {
    signature: Signature,
}

fn item_type() -> ArrowType {
    ArrowType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

impl ScalarUDFImpl for HopFunction {
    fn name(&self) -> &str {
        HOP
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[ArrowType]) -> datafusion::common::Result<ArrowType> {
        match args {
            [ArrowType::Interval(_), ArrowType::Interval(_), ArrowType::Timestamp(_, _)] => {
                Ok(ArrowType::List(Arc::new(Field::new("item", item_type(), true))))
            }
            _ => plan_err!("hop takes (slide interval, size interval, timestamp), got {args:?}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::common::Result<ColumnarValue> {
        let interval = |v: &ColumnarValue| -> datafusion::common::Result<i64> {
            let scalar = match v {
                ColumnarValue::Scalar(s) => s.clone(),
                ColumnarValue::Array(a) if !a.is_empty() => ScalarValue::IntervalMonthDayNano(Some(a.as_primitive::<IntervalMonthDayNanoType>().value(0))),
                _ => return exec_err!("hop needs constant intervals"),
            };
            interval_ms(&scalar).map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))
        };
        let slide = interval(&args.args[0])?;
        let size = interval(&args.args[1])?;
        check_hop(slide, size).map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
        let ts = args.args[2].to_array(args.number_rows)?;
        let ts = cast(&ts, &ArrowType::Timestamp(TimeUnit::Millisecond, None))?;
        let ts = ts.as_primitive::<TimestampMillisecondType>();
        let mut out = ListBuilder::new(TimestampMillisecondBuilder::new().with_timezone("UTC"));
        for i in 0..ts.len() {
            if ts.is_null(i) {
                out.append(false);
            } else {
                hop_starts(ts.value(i), slide, size).for_each(|s| out.values().append_value(s));
                out.append(true);
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The `hop` function, to register with a DataFusion session.
pub fn hop_udf() -> ScalarUDF {
    ScalarUDF::from(HopFunction { signature: Signature::any(3, Volatility::Immutable) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_falls_in_size_over_slide_windows() {
        let starts: Vec<i64> = hop_starts(125_000, 60_000, 180_000).collect();
        assert_eq!(starts, vec![0, 60_000, 120_000]);
        let starts: Vec<i64> = hop_starts(120_000, 60_000, 180_000).collect();
        assert_eq!(starts, vec![0, 60_000, 120_000]);
        let starts: Vec<i64> = hop_starts(119_999, 60_000, 60_000).collect();
        assert_eq!(starts, vec![60_000]);
        assert!(check_hop(60_000, 30_000).is_err());
    }

    #[test]
    fn hopping_windows_are_every_slide_multiple_whose_window_holds_the_time() {
        for (slide, size) in [(2, 10), (3, 7), (5, 5), (4, 9)] {
            for ts in -25i64..25 {
                let expected: Vec<i64> = (-40i64..40).filter(|s| s.rem_euclid(slide) == 0 && *s <= ts && ts < s + size).collect();
                assert_eq!(hop_starts(ts, slide, size).collect::<Vec<_>>(), expected, "ts {ts}, slide {slide}, size {size}");
            }
        }
    }
}
