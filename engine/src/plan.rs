//! View planning: `CREATE VIEW … AS SELECT …` → DataFusion logical plan → [`ViewPlan`].
//!
//! ```text
//!   SQL ──DataFusion parser & planner──▶ LogicalPlan ──analyzer (type coercion)──▶ LogicalPlan
//!       ──lower──▶ ViewPlan { Scan ▸ Filter ▸ Map ▸ Aggregate ▸ Filter (HAVING) ▸ Map … }
//! ```
//!
//! The analyzed logical plan is kept beside the lowered one: executed by DataFusion as
//! a batch query over the same events it is the oracle the incremental view is tested
//! against. Any construct the lowering does not know is refused with an error naming
//! it, so a view is never silently wrong.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::logical_expr::{DdlStatement, Distinct, Expr, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::{Error, Result};
use crate::expr::{compile, Scalar};
use crate::schema::{arrow_schema, Column, Columns, DataType, Stream};

/// A view lowered to dataflow operators.
#[derive(Clone, Debug)]
pub struct ViewPlan {
    /// The view's name.
    pub name: String,
    /// The `CREATE VIEW` statement as the user wrote it.
    pub sql: String,
    /// The streams the view reads, in order of first appearance; `Node::Scan` refers
    /// to them by position.
    pub streams: Vec<String>,
    /// The operator tree.
    pub root: Node,
    /// The view's output columns.
    pub columns: Columns,
    /// The analyzed DataFusion plan of the `SELECT`, for batch execution.
    pub query: LogicalPlan,
}

/// A dataflow operator in a view plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// The rows of one of the view's streams, in stream column order.
    Scan {
        /// Position in [`ViewPlan::streams`].
        source: usize,
    },
    /// Each row becomes the values of the expressions.
    Map {
        /// The input.
        input: Box<Node>,
        /// One expression per output column.
        exprs: Vec<Scalar>,
    },
    /// Only rows for which the predicate is TRUE pass.
    Filter {
        /// The input.
        input: Box<Node>,
        /// The predicate.
        predicate: Scalar,
    },
    /// Rows grouped by the keys; each group becomes `keys ++ aggregates`.
    Aggregate {
        /// The input.
        input: Box<Node>,
        /// Group key expressions.
        keys: Vec<Scalar>,
        /// The aggregates.
        aggregates: Vec<Aggregate>,
    },
    /// Each distinct row once.
    Distinct {
        /// The input.
        input: Box<Node>,
    },
    /// Inner equi-join: each pair of rows with equal, non-NULL keys becomes `left ++ right`,
    /// kept if the residual condition holds.
    Join {
        /// The left input.
        left: Box<Node>,
        /// The right input.
        right: Box<Node>,
        /// Key expressions over left rows.
        left_keys: Vec<Scalar>,
        /// Key expressions over right rows, position by position.
        right_keys: Vec<Scalar>,
        /// The rest of the join condition, over `left ++ right`.
        residual: Option<Scalar>,
    },
    /// Each row once per element of the list in `column`, with the element in its place.
    Unnest {
        /// The input.
        input: Box<Node>,
        /// The list column.
        column: usize,
        /// Whether a NULL list gives one row with NULL (rather than none).
        preserve_nulls: bool,
    },
}

impl Node {
    /// Whether the node's changes in one epoch never mention a row twice: a grouped
    /// aggregate's (one group, one key: its old row and a different new one) and
    /// DISTINCT's, and a filter of either. Such changes need no consolidation.
    pub fn changes_are_consolidated(&self) -> bool {
        match self {
            Node::Aggregate { keys, .. } => !keys.is_empty(),
            Node::Distinct { .. } => true,
            Node::Filter { input, .. } => input.changes_are_consolidated(),
            _ => false,
        }
    }
}

/// One aggregate of a `GROUP BY`.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The function.
    pub func: AggFunc,
    /// The argument; NULL arguments are ignored, as SQL does.
    pub arg: Scalar,
    /// `func(DISTINCT arg)`.
    pub distinct: bool,
    /// `FILTER (WHERE …)`.
    pub filter: Option<Scalar>,
    /// The result type.
    pub output: DataType,
}

/// Aggregate functions views support.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// `count`
    Count,
    /// `sum`
    Sum,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `avg`
    Avg,
}

/// Plans views against a fixed set of streams.
pub struct Planner {
    ctx: SessionContext,
    streams: Vec<String>,
}

/// A DataFusion session whose tables are the given streams (empty), for planning; the
/// oracle and the query layer register data of their own.
pub fn session() -> SessionContext {
    session_with(false)
}

/// A DataFusion session with Weir's functions, and `information_schema` if asked.
pub fn session_with(information_schema: bool) -> SessionContext {
    let config = SessionConfig::new()
        .with_information_schema(information_schema)
        // keep strings as Utf8 so that plans match the streams' declared types
        .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false);
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udf(crate::windows::hop_udf());
    ctx
}

impl Planner {
    /// A planner for views over these streams.
    pub fn new(streams: &[Stream]) -> Result<Planner> {
        let ctx = session();
        for s in streams {
            let table = MemTable::try_new(arrow_schema(&s.columns), vec![vec![]])?;
            ctx.register_table(s.name.as_str(), Arc::new(table))?;
        }
        Ok(Planner { ctx, streams: streams.iter().map(|s| s.name.clone()).collect() })
    }

    /// Plans a `CREATE VIEW name AS SELECT …` statement.
    pub async fn plan(&self, sql: &str) -> Result<ViewPlan> {
        let state = self.ctx.state();
        let plan = state.create_logical_plan(sql).await?;
        let LogicalPlan::Ddl(DdlStatement::CreateView(view)) = plan else {
            return Err(Error::Sql("expected a CREATE VIEW name AS SELECT … statement".into()));
        };
        if view.or_replace {
            return Err(Error::Sql("CREATE OR REPLACE VIEW is not supported: drop the view first".into()));
        }
        let name = view.name.table().to_string();
        check_view_name(&name)?;
        if self.streams.iter().any(|s| *s == name) {
            return Err(Error::AlreadyExists(format!("{name} is a stream; choose another view name")));
        }
        let query = state.analyzer().execute_and_check((*view.input).clone(), state.config_options(), |_, _| {})?;
        let mut streams = Vec::new();
        let root = lower(&query, &mut streams)?;
        if streams.is_empty() {
            return Err(Error::Sql("a view must read a stream (SELECT … FROM stream)".into()));
        }
        let columns = query
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let t = DataType::from_arrow(f.data_type())
                    .ok_or_else(|| Error::Sql(format!("column {} has type {}, which views cannot hold", f.name(), f.data_type())))?;
                Ok(Column::new(f.name(), t, f.is_nullable()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            if !seen.insert(c.name.as_str()) {
                return Err(Error::Sql(format!("the view has two columns named {:?}: give one an alias (AS …)", c.name)));
            }
        }
        Ok(ViewPlan { name, sql: sql.trim().to_string(), streams, root, columns, query })
    }
}

/// Refuses a step of a view wider than a packed row: a view's rows and a grouping's are
/// packed, whose length has 16 bits (`packed::MAX_VALUES`).
fn check_width(width: usize) -> Result<()> {
    if width > crate::packed::MAX_VALUES {
        return Err(Error::Sql(format!("a step of this view has {width} columns; a view's rows hold at most {}", crate::packed::MAX_VALUES)));
    }
    Ok(())
}

/// View names are lowercase SQL identifiers, so they can be used unquoted everywhere.
pub fn check_view_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(()) } else { Err(Error::Sql(format!("invalid view name {name:?}: use lowercase letters, digits and _ (at most 64)"))) }
}

fn unsupported(what: &str) -> Error {
    Error::Sql(format!("{what} is not supported in views"))
}

fn lower(plan: &LogicalPlan, streams: &mut Vec<String>) -> Result<Node> {
    check_width(plan.schema().fields().len())?;
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            let name = scan.table_name.table().to_string();
            let source = streams.iter().position(|s| *s == name).unwrap_or_else(|| {
                streams.push(name);
                streams.len() - 1
            });
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err(unsupported("a pushed-down scan"));
            }
            match &scan.projection {
                None => Node::Scan { source },
                Some(cols) => Node::Map { input: Box::new(Node::Scan { source }), exprs: cols.iter().map(|i| Scalar::Column(*i)).collect() },
            }
        }
        LogicalPlan::SubqueryAlias(alias) => lower(&alias.input, streams)?,
        LogicalPlan::Projection(p) => {
            let schema = p.input.schema();
            let exprs: Vec<Scalar> = p.expr.iter().map(|e| compile(e, schema)).collect::<Result<_>>()?;
            let input = lower(&p.input, streams)?;
            // a projection that keeps every column in place (naming them, say) is no step:
            // an aggregate's output rows go to the view as they are
            if exprs.len() == schema.fields().len() && exprs.iter().enumerate().all(|(i, e)| *e == Scalar::Column(i)) {
                input
            } else {
                Node::Map { input: Box::new(input), exprs }
            }
        }
        LogicalPlan::Filter(f) => Node::Filter { input: Box::new(lower(&f.input, streams)?), predicate: compile(&f.predicate, f.input.schema())? },
        LogicalPlan::Aggregate(a) => {
            let schema = a.input.schema();
            let keys = a
                .group_expr
                .iter()
                .map(|e| match e {
                    Expr::GroupingSet(_) => Err(unsupported("GROUPING SETS, ROLLUP and CUBE")),
                    e => compile(e, schema),
                })
                .collect::<Result<Vec<_>>>()?;
            let out_fields = a.schema.fields();
            let aggregates = a
                .aggr_expr
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let output = DataType::from_arrow(out_fields[keys.len() + i].data_type())
                        .ok_or_else(|| Error::Sql(format!("aggregate {e} has a result type views cannot hold")))?;
                    lower_aggregate(e, schema, output)
                })
                .collect::<Result<Vec<_>>>()?;
            Node::Aggregate { input: Box::new(lower(&a.input, streams)?), keys, aggregates }
        }
        LogicalPlan::Distinct(Distinct::All(input)) => Node::Distinct { input: Box::new(lower(input, streams)?) },
        LogicalPlan::Distinct(Distinct::On(_)) => return Err(unsupported("DISTINCT ON")),
        LogicalPlan::Join(j) => lower_join(j, streams)?,
        LogicalPlan::Sort(_) => return Err(unsupported("ORDER BY (a view is an unordered set; order when you read it)")),
        LogicalPlan::Limit(_) => return Err(unsupported("LIMIT/OFFSET")),
        LogicalPlan::Window(_) => return Err(unsupported("window functions (OVER)")),
        LogicalPlan::Union(_) => return Err(unsupported("UNION")),
        LogicalPlan::Values(_) => return Err(unsupported("VALUES")),
        LogicalPlan::EmptyRelation(_) => return Err(unsupported("SELECT without FROM")),
        LogicalPlan::Unnest(u) => {
            let identity = u.dependency_indices.iter().enumerate().all(|(i, d)| i == *d);
            match (u.list_type_columns.as_slice(), u.struct_type_columns.is_empty(), identity) {
                ([(column, list)], true, true) if list.depth == 1 && u.schema.fields().len() == u.input.schema().fields().len() => Node::Unnest {
                    input: Box::new(lower(&u.input, streams)?),
                    column: *column,
                    preserve_nulls: u.options.preserve_nulls(),
                },
                _ => return Err(unsupported("UNNEST of more than one list, of structs, or nested")),
            }
        }
        LogicalPlan::Subquery(_) => return Err(unsupported("a subquery")),
        LogicalPlan::RecursiveQuery(_) => return Err(unsupported("WITH RECURSIVE")),
        other => return Err(unsupported(&format!("the plan node {}", other.display()))),
    })
}

fn lower_join(j: &datafusion::logical_expr::Join, streams: &mut Vec<String>) -> Result<Node> {
    use datafusion::common::NullEquality;
    use datafusion::logical_expr::{JoinType, Operator};
    if j.join_type != JoinType::Inner {
        return Err(Error::Sql(format!("{} JOIN is not supported in views (inner joins are)", j.join_type.to_string().to_uppercase())));
    }
    if j.null_equality != NullEquality::NullEqualsNothing || j.null_aware {
        return Err(unsupported("a join on IS NOT DISTINCT FROM"));
    }
    let (ls, rs) = (j.left.schema(), j.right.schema());
    let mut left_keys = Vec::new();
    let mut right_keys = Vec::new();
    for (l, r) in &j.on {
        left_keys.push(compile(l, ls)?);
        right_keys.push(compile(r, rs)?);
    }
    // Equalities between the two sides in ON become keys too; the rest is checked on
    // each joined row.
    let mut residual: Option<Scalar> = None;
    if let Some(filter) = &j.filter {
        for part in datafusion::logical_expr::utils::split_conjunction(filter) {
            if let Expr::BinaryExpr(b) = part {
                if b.op == Operator::Eq {
                    let straight = compile(&b.left, ls).and_then(|l| Ok((l, compile(&b.right, rs)?)));
                    let swapped = || compile(&b.right, ls).and_then(|l| Ok((l, compile(&b.left, rs)?)));
                    if let Ok((l, r)) = straight.or_else(|_| swapped()) {
                        left_keys.push(l);
                        right_keys.push(r);
                        continue;
                    }
                }
            }
            let condition = compile(part, &j.schema)?;
            residual = Some(match residual {
                None => condition,
                Some(before) => Scalar::Binary(Box::new(before), crate::expr::BinOp::And, Box::new(condition)),
            });
        }
    }
    if left_keys.is_empty() {
        return Err(unsupported("a JOIN without an equality between its two sides (a cross join)"));
    }
    Ok(Node::Join { left: Box::new(lower(&j.left, streams)?), right: Box::new(lower(&j.right, streams)?), left_keys, right_keys, residual })
}

fn lower_aggregate(e: &Expr, schema: &datafusion::common::DFSchema, output: DataType) -> Result<Aggregate> {
    let e = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(f) = e else {
        return Err(Error::Sql(format!("expected an aggregate function, found {e}")));
    };
    let name = f.func.name();
    let func = match name {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        "avg" | "mean" => AggFunc::Avg,
        other => return Err(Error::Sql(format!("aggregate {other}() is not supported in views (count, sum, min, max, avg are)"))),
    };
    let p = &f.params;
    if !p.order_by.is_empty() {
        return Err(unsupported("ORDER BY inside an aggregate"));
    }
    let arg = match p.args.as_slice() {
        [] => Scalar::Literal(crate::value::Value::Int(1)),
        [arg] => compile(arg, schema)?,
        _ => return Err(Error::Sql(format!("{name}() with several arguments is not supported in views"))),
    };
    let filter = p.filter.as_deref().map(|f| compile(f, schema)).transpose()?;
    Ok(Aggregate { func, arg, distinct: p.distinct, filter, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_wider_than_a_packed_row_is_refused() {
        // (`lower` checks every step's schema with it; a view of 65,536 columns planned
        // end to end passes too, but DataFusion takes minutes over it in a debug build)
        assert!(check_width(crate::packed::MAX_VALUES).is_ok());
        assert!(matches!(check_width(crate::packed::MAX_VALUES + 1), Err(Error::Sql(m)) if m.contains("65536 columns") && m.contains("at most 65535")));
    }
}
