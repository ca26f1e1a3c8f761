//! Scalar expressions: compiled from DataFusion's logical expressions, evaluated per row.
//!
//! ```text
//!   DataFusion Expr (after type coercion) ──compile──▶ Scalar ──eval(row)──▶ Value
//! ```
//!
//! Compilation resolves column references to row positions once, so evaluation does
//! no name lookups. Semantics follow DataFusion's, so that a view computed
//! incrementally equals the same SQL run as a batch: three-valued logic, NULL in →
//! NULL out, wrapping integer arithmetic, truncating integer division. Where DataFusion
//! would fail a whole batch (integer division by zero, a failed cast) a view cannot
//! fail, so the result is NULL.

use std::sync::Arc;

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, Operator};

use crate::error::{Error, Result};
use crate::schema::DataType;
use crate::time::{format_rfc3339_ms, parse_rfc3339_ms};
use crate::value::{Row, Text, Value};

/// A compiled scalar expression.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)] // each variant's doc describes its fields
pub enum Scalar {
    /// The value at a row position.
    Column(usize),
    /// A constant.
    Literal(Value),
    /// A binary operation.
    Binary(Box<Scalar>, BinOp, Box<Scalar>),
    /// Logical negation.
    Not(Box<Scalar>),
    /// Arithmetic negation.
    Negate(Box<Scalar>),
    /// `IS NULL` (or `IS NOT NULL` when negated).
    IsNull(Box<Scalar>, bool),
    /// `IS TRUE`, `IS FALSE`, … : the value compared with a boolean, never NULL.
    IsBool { arg: Box<Scalar>, want: Option<bool>, negated: bool },
    /// A cast to a type.
    Cast(Box<Scalar>, DataType),
    /// `CASE [operand] WHEN … THEN … ELSE … END`.
    Case { operand: Option<Box<Scalar>>, branches: Vec<(Scalar, Scalar)>, otherwise: Option<Box<Scalar>> },
    /// `expr [NOT] IN (list)`.
    InList { arg: Box<Scalar>, list: Vec<Scalar>, negated: bool },
    /// `expr [NOT] LIKE pattern`.
    Like { arg: Box<Scalar>, pattern: Box<Scalar>, negated: bool, case_insensitive: bool },
    /// `date_bin(stride, ts[, origin])`: the start of the tumbling window holding `ts`.
    DateBin { stride_ms: i64, origin_ms: i64, arg: Box<Scalar> },
    /// `hop(slide, size, ts)`: the starts of every hopping window holding `ts`.
    Hop { slide_ms: i64, size_ms: i64, arg: Box<Scalar> },
    /// `date_trunc(unit, ts)`: the start of the calendar unit (UTC) holding `ts`.
    DateTrunc { unit: TruncUnit, arg: Box<Scalar> },
    /// A scalar function of the supported set.
    Call(Func, Vec<Scalar>),
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `+`
    Plus,
    /// `-`
    Minus,
    /// `*`
    Multiply,
    /// `/`
    Divide,
    /// `%`
    Modulo,
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `IS DISTINCT FROM`
    IsDistinctFrom,
    /// `IS NOT DISTINCT FROM`
    IsNotDistinctFrom,
    /// `||`
    Concat,
}

/// Calendar units for `date_trunc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncUnit {
    /// `second`
    Second,
    /// `minute`
    Minute,
    /// `hour`
    Hour,
    /// `day`
    Day,
    /// `week` (weeks start on Monday)
    Week,
    /// `month`
    Month,
    /// `quarter`
    Quarter,
    /// `year`
    Year,
}

impl TruncUnit {
    fn by_name(name: &str) -> Option<TruncUnit> {
        Some(match name.to_ascii_lowercase().as_str() {
            "second" => TruncUnit::Second,
            "minute" => TruncUnit::Minute,
            "hour" => TruncUnit::Hour,
            "day" => TruncUnit::Day,
            "week" => TruncUnit::Week,
            "month" => TruncUnit::Month,
            "quarter" => TruncUnit::Quarter,
            "year" => TruncUnit::Year,
            _ => return None,
        })
    }

    /// The start of the unit holding `ms` (milliseconds since the epoch, UTC).
    pub fn truncate(self, ms: i64) -> i64 {
        use chrono::{Datelike, NaiveDate, TimeZone, Utc};
        let fixed = |unit: i64| ms.div_euclid(unit) * unit;
        match self {
            TruncUnit::Second => fixed(1_000),
            TruncUnit::Minute => fixed(60_000),
            TruncUnit::Hour => fixed(3_600_000),
            TruncUnit::Day => fixed(86_400_000),
            // 1970-01-01 was a Thursday; Monday-based weeks start 3 days before it
            TruncUnit::Week => (ms + 3 * 86_400_000).div_euclid(7 * 86_400_000) * 7 * 86_400_000 - 3 * 86_400_000,
            TruncUnit::Month | TruncUnit::Quarter | TruncUnit::Year => {
                let Some(t) = Utc.timestamp_millis_opt(ms).single() else { return ms };
                let month = match self {
                    TruncUnit::Month => t.month(),
                    TruncUnit::Quarter => (t.month() - 1) / 3 * 3 + 1,
                    _ => 1,
                };
                NaiveDate::from_ymd_opt(t.year(), month, 1)
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|d| d.and_utc().timestamp_millis())
                    .unwrap_or(ms)
            }
        }
    }
}

/// Scalar functions views support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// `lower(s)`
    Lower,
    /// `upper(s)`
    Upper,
    /// `length(s)`, `char_length(s)`, `character_length(s)`
    Length,
    /// `abs(x)`
    Abs,
    /// `floor(x)`
    Floor,
    /// `ceil(x)`
    Ceil,
    /// `coalesce(a, b, …)`
    Coalesce,
    /// `nullif(a, b)`
    NullIf,
    /// `concat(a, b, …)` (NULLs are skipped)
    ConcatFn,
    /// `map['key']`, planned by DataFusion as `get_field(map, 'key')`
    GetField,
}

impl Func {
    fn by_name(name: &str) -> Option<Func> {
        Some(match name {
            "lower" => Func::Lower,
            "upper" => Func::Upper,
            "length" | "char_length" | "character_length" => Func::Length,
            "abs" => Func::Abs,
            "floor" => Func::Floor,
            "ceil" => Func::Ceil,
            "coalesce" => Func::Coalesce,
            "nullif" => Func::NullIf,
            "concat" => Func::ConcatFn,
            "get_field" => Func::GetField,
            _ => return None,
        })
    }
}

/// Converts a DataFusion literal into a Weir value.
pub fn literal(v: &ScalarValue) -> Result<Value> {
    use ScalarValue as S;
    Ok(match v {
        S::Null => Value::Null,
        S::Boolean(b) => b.map(Value::Bool).unwrap_or(Value::Null),
        S::Int8(x) => x.map(|x| Value::Int(x.into())).unwrap_or(Value::Null),
        S::Int16(x) => x.map(|x| Value::Int(x.into())).unwrap_or(Value::Null),
        S::Int32(x) => x.map(|x| Value::Int(x.into())).unwrap_or(Value::Null),
        S::Int64(x) => x.map(Value::Int).unwrap_or(Value::Null),
        S::UInt8(x) => x.map(|x| Value::Int(x.into())).unwrap_or(Value::Null),
        S::UInt16(x) => x.map(|x| Value::Int(x.into())).unwrap_or(Value::Null),
        S::UInt32(x) => x.map(|x| Value::Int(x.into())).unwrap_or(Value::Null),
        S::Float32(x) => x.map(|x| Value::Float(x.into())).unwrap_or(Value::Null),
        S::Float64(x) => x.map(Value::Float).unwrap_or(Value::Null),
        S::Utf8(s) | S::LargeUtf8(s) | S::Utf8View(s) => s.as_deref().map(Value::str).unwrap_or(Value::Null),
        S::TimestampSecond(t, _) => t.map(|t| Value::Timestamp(t * 1000)).unwrap_or(Value::Null),
        S::TimestampMillisecond(t, _) => t.map(Value::Timestamp).unwrap_or(Value::Null),
        S::TimestampMicrosecond(t, _) => t.map(|t| Value::Timestamp(t.div_euclid(1000))).unwrap_or(Value::Null),
        S::TimestampNanosecond(t, _) => t.map(|t| Value::Timestamp(t.div_euclid(1_000_000))).unwrap_or(Value::Null),
        other => return Err(Error::Sql(format!("literal of type {} is not supported in views", other.data_type()))),
    })
}

/// The length in milliseconds of a literal interval (days and smaller units only).
pub fn interval_ms(v: &ScalarValue) -> Result<i64> {
    let ms = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000,
        ScalarValue::IntervalDayTime(Some(i)) => i.days as i64 * 86_400_000 + i.milliseconds as i64,
        ScalarValue::DurationMillisecond(Some(d)) => *d,
        ScalarValue::DurationSecond(Some(d)) => d * 1000,
        _ => return Err(Error::Sql(format!("expected an interval of days, hours, minutes or seconds, found {v}"))),
    };
    if ms <= 0 {
        return Err(Error::Sql(format!("window intervals must be positive, found {v}")));
    }
    Ok(ms)
}

/// Compiles a DataFusion expression over rows of `schema` into a [`Scalar`].
pub fn compile(expr: &Expr, schema: &DFSchema) -> Result<Scalar> {
    let c = |e: &Expr| compile(e, schema).map(Box::new);
    Ok(match expr {
        Expr::Alias(a) => return compile(&a.expr, schema),
        Expr::Column(col) => Scalar::Column(schema.index_of_column(col)?),
        Expr::Literal(v, _) => Scalar::Literal(literal(v)?),
        Expr::BinaryExpr(b) => {
            let op = match b.op {
                Operator::Eq => BinOp::Eq,
                Operator::NotEq => BinOp::NotEq,
                Operator::Lt => BinOp::Lt,
                Operator::LtEq => BinOp::LtEq,
                Operator::Gt => BinOp::Gt,
                Operator::GtEq => BinOp::GtEq,
                Operator::Plus => BinOp::Plus,
                Operator::Minus => BinOp::Minus,
                Operator::Multiply => BinOp::Multiply,
                Operator::Divide => BinOp::Divide,
                Operator::Modulo => BinOp::Modulo,
                Operator::And => BinOp::And,
                Operator::Or => BinOp::Or,
                Operator::IsDistinctFrom => BinOp::IsDistinctFrom,
                Operator::IsNotDistinctFrom => BinOp::IsNotDistinctFrom,
                Operator::StringConcat => BinOp::Concat,
                other => return Err(Error::Sql(format!("operator {other} is not supported in views"))),
            };
            Scalar::Binary(c(&b.left)?, op, c(&b.right)?)
        }
        Expr::Not(e) => Scalar::Not(c(e)?),
        Expr::Negative(e) => Scalar::Negate(c(e)?),
        Expr::IsNull(e) => Scalar::IsNull(c(e)?, false),
        Expr::IsNotNull(e) => Scalar::IsNull(c(e)?, true),
        Expr::IsTrue(e) => Scalar::IsBool { arg: c(e)?, want: Some(true), negated: false },
        Expr::IsFalse(e) => Scalar::IsBool { arg: c(e)?, want: Some(false), negated: false },
        Expr::IsUnknown(e) => Scalar::IsBool { arg: c(e)?, want: None, negated: false },
        Expr::IsNotTrue(e) => Scalar::IsBool { arg: c(e)?, want: Some(true), negated: true },
        Expr::IsNotFalse(e) => Scalar::IsBool { arg: c(e)?, want: Some(false), negated: true },
        Expr::IsNotUnknown(e) => Scalar::IsBool { arg: c(e)?, want: None, negated: true },
        Expr::Between(b) => {
            let arg = compile(&b.expr, schema)?;
            let low = Scalar::Binary(Box::new(arg.clone()), BinOp::GtEq, c(&b.low)?);
            let high = Scalar::Binary(Box::new(arg), BinOp::LtEq, c(&b.high)?);
            let both = Scalar::Binary(Box::new(low), BinOp::And, Box::new(high));
            if b.negated { Scalar::Not(Box::new(both)) } else { both }
        }
        Expr::Case(case) => Scalar::Case {
            operand: case.expr.as_deref().map(|e| c(e)).transpose()?,
            branches: case
                .when_then_expr
                .iter()
                .map(|(w, t)| Ok((compile(w, schema)?, compile(t, schema)?)))
                .collect::<Result<_>>()?,
            otherwise: case.else_expr.as_deref().map(|e| c(e)).transpose()?,
        },
        Expr::Cast(cast) => Scalar::Cast(c(&cast.expr)?, cast_target(cast.field.data_type())?),
        Expr::TryCast(cast) => Scalar::Cast(c(&cast.expr)?, cast_target(cast.field.data_type())?),
        Expr::InList(list) => Scalar::InList {
            arg: c(&list.expr)?,
            list: list.list.iter().map(|e| compile(e, schema)).collect::<Result<_>>()?,
            negated: list.negated,
        },
        Expr::Like(like) => {
            if like.escape_char.is_some() {
                return Err(Error::Sql("LIKE … ESCAPE is not supported in views".into()));
            }
            Scalar::Like { arg: c(&like.expr)?, pattern: c(&like.pattern)?, negated: like.negated, case_insensitive: like.case_insensitive }
        }
        Expr::ScalarFunction(f) => {
            let name = f.name();
            if name == "date_bin" {
                return compile_date_bin(&f.args, schema);
            }
            if name == crate::windows::HOP {
                return compile_hop(&f.args, schema);
            }
            if name == "date_trunc" {
                let [unit, arg] = f.args.as_slice() else {
                    return Err(Error::Sql("date_trunc takes (unit, timestamp)".into()));
                };
                let unit = match literal(&constant("date_trunc", unit)?)? {
                    Value::Str(u) => TruncUnit::by_name(&u).ok_or_else(|| Error::Sql(format!("date_trunc unit {u:?} is not supported (second … year)")))?,
                    other => return Err(Error::Sql(format!("date_trunc needs a unit such as 'month', found {other:?}"))),
                };
                return Ok(Scalar::DateTrunc { unit, arg: Box::new(compile(arg, schema)?) });
            }
            let func = Func::by_name(name).ok_or_else(|| Error::Sql(format!("function {name}() is not supported in views")))?;
            Scalar::Call(func, f.args.iter().map(|e| compile(e, schema)).collect::<Result<_>>()?)
        }
        Expr::AggregateFunction(_) => return Err(Error::Sql("aggregate functions are only supported in SELECT lists and HAVING of GROUP BY queries".into())),
        Expr::WindowFunction(_) => return Err(Error::Sql("window functions (OVER) are not supported in views".into())),
        Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_) | Expr::SetComparison(_) => {
            return Err(Error::Sql("subqueries in expressions are not supported in views".into()))
        }
        Expr::Placeholder(_) => return Err(Error::Sql("placeholders ($1) are not supported in views".into())),
        Expr::SimilarTo(_) => return Err(Error::Sql("SIMILAR TO is not supported in views".into())),
        other => return Err(Error::Sql(format!("expression {other} is not supported in views"))),
    })
}

fn cast_target(t: &datafusion::arrow::datatypes::DataType) -> Result<DataType> {
    DataType::from_arrow(t).ok_or_else(|| Error::Sql(format!("CAST to {t} is not supported in views")))
}

/// The value of a constant argument (a literal, possibly cast), for functions whose
/// arguments shape the plan (window sizes).
fn constant(function: &str, e: &Expr) -> Result<ScalarValue> {
    let mut e = e;
    loop {
        match e {
            Expr::Literal(v, _) => return Ok(v.clone()),
            Expr::Cast(c) => e = &c.expr,
            Expr::Alias(a) => e = &a.expr,
            _ => return Err(Error::Sql(format!("{function} needs constant arguments for its unit or intervals, found {e}"))),
        }
    }
}

fn compile_hop(args: &[Expr], schema: &DFSchema) -> Result<Scalar> {
    let [slide, size, arg] = args else {
        return Err(Error::Sql("hop takes (slide interval, size interval, timestamp)".into()));
    };
    let slide_ms = interval_ms(&constant("hop", slide)?)?;
    let size_ms = interval_ms(&constant("hop", size)?)?;
    crate::windows::check_hop(slide_ms, size_ms)?;
    Ok(Scalar::Hop { slide_ms, size_ms, arg: Box::new(compile(arg, schema)?) })
}

fn compile_date_bin(args: &[Expr], schema: &DFSchema) -> Result<Scalar> {
    let constant = |e: &Expr| constant("date_bin", e);
    let (stride, arg, origin) = match args {
        [stride, arg] => (stride, arg, None),
        [stride, arg, origin] => (stride, arg, Some(origin)),
        _ => return Err(Error::Sql("date_bin takes (interval, timestamp[, origin])".into())),
    };
    let stride_ms = interval_ms(&constant(stride)?)?;
    let origin_ms = match origin {
        None => 0,
        Some(o) => match literal(&constant(o)?)? {
            Value::Timestamp(t) => t,
            Value::Str(s) => parse_rfc3339_ms(&s).ok_or_else(|| Error::Sql(format!("date_bin origin {s:?} is not an RFC 3339 timestamp")))?,
            other => return Err(Error::Sql(format!("date_bin origin must be a timestamp, found {other:?}"))),
        },
    };
    Ok(Scalar::DateBin { stride_ms, origin_ms, arg: Box::new(compile(arg, schema)?) })
}

/// The start of the window of length `stride` (aligned to `origin`) holding `ts`.
pub fn bin(ts: i64, stride: i64, origin: i64) -> i64 {
    origin + (ts - origin).div_euclid(stride) * stride
}

fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn bool_or_null(b: Option<bool>) -> Value {
    b.map(Value::Bool).unwrap_or(Value::Null)
}

impl Scalar {
    /// Evaluates the expression against a row.
    pub fn eval(&self, row: &[Value]) -> Value {
        match self {
            Scalar::Column(i) => row[*i].clone(),
            Scalar::Literal(v) => v.clone(),
            Scalar::Binary(l, op, r) => binary(l.eval(row), *op, || r.eval(row)),
            Scalar::Not(e) => bool_or_null(truth(&e.eval(row)).map(|b| !b)),
            Scalar::Negate(e) => match e.eval(row) {
                Value::Int(i) => Value::Int(i.wrapping_neg()),
                Value::Float(f) => Value::Float(-f),
                _ => Value::Null,
            },
            Scalar::IsNull(e, negated) => Value::Bool(e.eval(row).is_null() != *negated),
            Scalar::IsBool { arg, want, negated } => Value::Bool((truth(&arg.eval(row)) == *want) != *negated),
            Scalar::Cast(e, t) => cast(e.eval(row), *t),
            Scalar::Case { operand, branches, otherwise } => {
                let subject = operand.as_ref().map(|o| o.eval(row));
                for (when, then) in branches {
                    let hit = match &subject {
                        Some(s) => !s.is_null() && *s == when.eval(row),
                        None => truth(&when.eval(row)) == Some(true),
                    };
                    if hit {
                        return then.eval(row);
                    }
                }
                otherwise.as_ref().map(|e| e.eval(row)).unwrap_or(Value::Null)
            }
            Scalar::InList { arg, list, negated } => {
                let v = arg.eval(row);
                if v.is_null() {
                    return Value::Null;
                }
                let mut saw_null = false;
                for item in list {
                    let item = item.eval(row);
                    if item.is_null() {
                        saw_null = true;
                    } else if item == v {
                        return Value::Bool(!negated);
                    }
                }
                if saw_null { Value::Null } else { Value::Bool(*negated) }
            }
            Scalar::Like { arg, pattern, negated, case_insensitive } => match (arg.eval(row), pattern.eval(row)) {
                (Value::Str(s), Value::Str(p)) => {
                    let hit = if *case_insensitive { like(&s.to_lowercase(), &p.to_lowercase()) } else { like(&s, &p) };
                    Value::Bool(hit != *negated)
                }
                _ => Value::Null,
            },
            Scalar::DateBin { stride_ms, origin_ms, arg } => {
                // (a window's usual argument is the time column, which the SQL front end
                // casts to the timestamp type it already has: read in place, without two
                // nested evaluations; engine-window's worker spent 3% in them)
                let in_place = match &**arg {
                    Scalar::Column(c) => Some(&row[*c]),
                    Scalar::Cast(inner, DataType::Timestamp) => match **inner {
                        Scalar::Column(c) if matches!(row[c], Value::Timestamp(_)) => Some(&row[c]),
                        _ => None,
                    },
                    _ => None,
                };
                let t = match in_place {
                    Some(Value::Timestamp(t)) => Some(*t),
                    Some(_) => None,
                    None => match arg.eval(row) {
                        Value::Timestamp(t) => Some(t),
                        _ => None,
                    },
                };
                t.map_or(Value::Null, |t| Value::Timestamp(bin(t, *stride_ms, *origin_ms)))
            }
            Scalar::DateTrunc { unit, arg } => match arg.eval(row) {
                Value::Timestamp(t) => Value::Timestamp(unit.truncate(t)),
                _ => Value::Null,
            },
            Scalar::Hop { slide_ms, size_ms, arg } => match arg.eval(row) {
                Value::Timestamp(t) => {
                    Value::List(Arc::new(crate::windows::hop_starts(t, *slide_ms, *size_ms).map(Value::Timestamp).collect()))
                }
                _ => Value::Null,
            },
            Scalar::Call(f, args) => call(*f, args, row),
        }
    }

    /// Evaluates a predicate: only `TRUE` passes (NULL and FALSE do not).
    pub fn passes(&self, row: &[Value]) -> bool {
        matches!(self.eval(row), Value::Bool(true))
    }
}

/// Evaluates a list of expressions into a new row.
pub fn eval_all(exprs: &[Scalar], row: &[Value]) -> Row {
    exprs.iter().map(|e| e.eval(row)).collect()
}

fn binary(l: Value, op: BinOp, r: impl FnOnce() -> Value) -> Value {
    use Value::*;
    match op {
        BinOp::And => {
            let lt = truth(&l);
            if lt == Some(false) {
                return Bool(false);
            }
            match (lt, truth(&r())) {
                (_, Some(false)) => Bool(false),
                (Some(true), Some(true)) => Bool(true),
                _ => Null,
            }
        }
        BinOp::Or => {
            let lt = truth(&l);
            if lt == Some(true) {
                return Bool(true);
            }
            match (lt, truth(&r())) {
                (_, Some(true)) => Bool(true),
                (Some(false), Some(false)) => Bool(false),
                _ => Null,
            }
        }
        BinOp::IsDistinctFrom => Bool(l != r()),
        BinOp::IsNotDistinctFrom => Bool(l == r()),
        _ => {
            let r = r();
            if l.is_null() || r.is_null() {
                return Null;
            }
            match op {
                BinOp::Eq => Bool(compare(&l, &r) == std::cmp::Ordering::Equal),
                BinOp::NotEq => Bool(compare(&l, &r) != std::cmp::Ordering::Equal),
                BinOp::Lt => Bool(compare(&l, &r).is_lt()),
                BinOp::LtEq => Bool(compare(&l, &r).is_le()),
                BinOp::Gt => Bool(compare(&l, &r).is_gt()),
                BinOp::GtEq => Bool(compare(&l, &r).is_ge()),
                BinOp::Concat => match (&l, &r) {
                    (Str(a), Str(b)) => Str(Text::from(format!("{a}{b}"))),
                    _ => Str(Text::from(format!("{}{}", to_text(&l), to_text(&r)))),
                },
                _ => arithmetic(l, op, r),
            }
        }
    }
}

/// Compares two non-null values; integers and floats compare numerically.
fn compare(l: &Value, r: &Value) -> std::cmp::Ordering {
    match (l, r) {
        (Value::Int(a), Value::Float(b)) => (*a as f64).total_cmp(b),
        (Value::Float(a), Value::Int(b)) => a.total_cmp(&(*b as f64)),
        _ => l.cmp(r),
    }
}

fn arithmetic(l: Value, op: BinOp, r: Value) -> Value {
    use Value::*;
    match (l, r) {
        (Int(a), Int(b)) => match op {
            BinOp::Plus => Int(a.wrapping_add(b)),
            BinOp::Minus => Int(a.wrapping_sub(b)),
            BinOp::Multiply => Int(a.wrapping_mul(b)),
            BinOp::Divide => a.checked_div(b).map(Int).unwrap_or(Null),
            BinOp::Modulo => a.checked_rem(b).map(Int).unwrap_or(Null),
            _ => Null,
        },
        (Timestamp(t), Int(ms)) if op == BinOp::Plus => Timestamp(t + ms),
        (Timestamp(t), Int(ms)) if op == BinOp::Minus => Timestamp(t - ms),
        (Timestamp(a), Timestamp(b)) if op == BinOp::Minus => Int(a - b),
        (l, r) => match (l.as_f64(), r.as_f64()) {
            (Some(a), Some(b)) => Float(match op {
                BinOp::Plus => a + b,
                BinOp::Minus => a - b,
                BinOp::Multiply => a * b,
                BinOp::Divide => a / b,
                BinOp::Modulo => a % b,
                _ => return Null,
            }),
            _ => Null,
        },
    }
}

/// The text form of a value, as a cast to string gives it.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Str(s) => s.to_string(),
        Value::Timestamp(t) => format_rfc3339_ms(*t),
        Value::Map(m) => {
            let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", inner.join(", "))
        }
        Value::List(l) => format!("[{}]", l.iter().map(to_text).collect::<Vec<_>>().join(", ")),
    }
}

fn cast(v: Value, t: DataType) -> Value {
    use Value::*;
    match (v, t) {
        (Null, _) => Null,
        (v @ Bool(_), DataType::Boolean) => v,
        (v @ Int(_), DataType::Int) => v,
        (v @ Float(_), DataType::Float) => v,
        (v @ Str(_), DataType::String) => v,
        (v @ Timestamp(_), DataType::Timestamp) => v,
        (v @ Map(_), DataType::Map) => v,
        (Int(i), DataType::Float) => Float(i as f64),
        (Int(i), DataType::Boolean) => Bool(i != 0),
        (Int(i), DataType::Timestamp) => Timestamp(i),
        (Float(f), DataType::Int) => {
            if f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64 { Int(f.trunc() as i64) } else { Null }
        }
        (Bool(b), DataType::Int) => Int(b as i64),
        (Bool(b), DataType::Float) => Float(b as i64 as f64),
        (Timestamp(t), DataType::Int) => Int(t),
        (Str(s), DataType::Int) => s.trim().parse().map(Int).unwrap_or(Null),
        (Str(s), DataType::Float) => s.trim().parse().map(Float).unwrap_or(Null),
        (Str(s), DataType::Boolean) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "1" => Bool(true),
            "false" | "f" | "no" | "0" => Bool(false),
            _ => Null,
        },
        (Str(s), DataType::Timestamp) => parse_rfc3339_ms(s.trim())
            .or_else(|| chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis()))
            .or_else(|| chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok().map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis()))
            .map(Timestamp)
            .unwrap_or(Null),
        (v, DataType::String) => Str(Text::from(to_text(&v))),
        _ => Null,
    }
}

fn call(f: Func, args: &[Scalar], row: &[Value]) -> Value {
    let arg = |i: usize| args.get(i).map(|a| a.eval(row)).unwrap_or(Value::Null);
    match f {
        Func::Lower | Func::Upper | Func::Length => match arg(0) {
            Value::Str(s) => match f {
                Func::Lower => Value::Str(Text::from(s.to_lowercase())),
                Func::Upper => Value::Str(Text::from(s.to_uppercase())),
                _ => Value::Int(s.chars().count() as i64),
            },
            _ => Value::Null,
        },
        Func::Abs => match arg(0) {
            Value::Int(i) => Value::Int(i.wrapping_abs()),
            Value::Float(x) => Value::Float(x.abs()),
            _ => Value::Null,
        },
        Func::Floor | Func::Ceil => match arg(0) {
            v @ Value::Int(_) => v,
            Value::Float(x) => Value::Float(if f == Func::Floor { x.floor() } else { x.ceil() }),
            _ => Value::Null,
        },
        Func::Coalesce => args.iter().map(|a| a.eval(row)).find(|v| !v.is_null()).unwrap_or(Value::Null),
        Func::NullIf => {
            let (a, b) = (arg(0), arg(1));
            if !b.is_null() && a == b { Value::Null } else { a }
        }
        Func::ConcatFn => {
            let mut s = String::new();
            for a in args {
                s.push_str(&to_text(&a.eval(row)));
            }
            Value::Str(Text::from(s))
        }
        Func::GetField => match (arg(0), arg(1)) {
            (Value::Map(m), Value::Str(k)) => m
                .binary_search_by(|(key, _)| key.as_str().cmp(&k))
                .map(|i| Value::Str(m[i].1.clone()))
                .unwrap_or(Value::Null),
            _ => Value::Null,
        },
    }
}

/// SQL `LIKE` matching: `%` matches any run of characters, `_` any one character.
fn like(s: &str, p: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = p.chars().collect();
    // classic two-pointer wildcard match with backtracking to the last `%`
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if j < p.len() && (p[j] == '_' || p[j] == s[i]) && p[j] != '%' {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '%' {
            star = Some((j, i));
            j += 1;
        } else if let Some((sj, si)) = star {
            j = sj + 1;
            i = si + 1;
            star = Some((sj, si + 1));
        } else {
            return false;
        }
    }
    while j < p.len() && p[j] == '%' {
        j += 1;
    }
    j == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_matches_sql_wildcards() {
        assert!(like("checkout", "check%"));
        assert!(like("checkout", "%out"));
        assert!(like("checkout", "c_eck%t"));
        assert!(!like("checkout", "check"));
        assert!(like("", "%"));
        assert!(!like("abc", "a_"));
    }

    #[test]
    fn three_valued_logic() {
        let t = || Value::Bool(true);
        let f = || Value::Bool(false);
        assert_eq!(binary(Value::Null, BinOp::And, f), Value::Bool(false));
        assert_eq!(binary(Value::Null, BinOp::And, t), Value::Null);
        assert_eq!(binary(Value::Null, BinOp::Or, t), Value::Bool(true));
        assert_eq!(binary(Value::Int(1), BinOp::Eq, || Value::Null), Value::Null);
    }

    #[test]
    fn windows_floor_toward_negative_infinity() {
        assert_eq!(bin(125_000, 60_000, 0), 120_000);
        assert_eq!(bin(-1, 60_000, 0), -60_000);
        assert_eq!(bin(61_000, 60_000, 1_000), 61_000);
    }

    #[test]
    fn date_trunc_follows_the_calendar() {
        let at = |s: &str| crate::time::parse_rfc3339_ms(s).unwrap();
        let t = at("2026-11-22T10:37:12.345Z");
        assert_eq!(TruncUnit::Month.truncate(t), at("2026-11-01T00:00:00Z"));
        assert_eq!(TruncUnit::Quarter.truncate(t), at("2026-10-01T00:00:00Z"));
        assert_eq!(TruncUnit::Year.truncate(t), at("2026-01-01T00:00:00Z"));
        assert_eq!(TruncUnit::Week.truncate(t), at("2026-11-16T00:00:00Z"), "2026-11-16 is a Monday");
        assert_eq!(TruncUnit::Day.truncate(t), at("2026-11-22T00:00:00Z"));
        assert_eq!(TruncUnit::Hour.truncate(t), at("2026-11-22T10:00:00Z"));
        assert_eq!(TruncUnit::Week.truncate(at("1969-12-29T05:00:00Z")), at("1969-12-29T00:00:00Z"));
    }

    #[test]
    fn integer_division_by_zero_is_null() {
        assert_eq!(arithmetic(Value::Int(1), BinOp::Divide, Value::Int(0)), Value::Null);
        assert_eq!(arithmetic(Value::Int(7), BinOp::Divide, Value::Int(2)), Value::Int(3));
    }
}
