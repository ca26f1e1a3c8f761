//! Weir's query layer: SQL over Weir's data with DataFusion.
//!
//! ```text
//!   rows of streams or views ──columnar──▶ Arrow batches ──▶ DataFusion session (with Weir's functions) ──▶ rows
//! ```
//!
//! Today this runs batch SQL over rows held in memory: it is the oracle every live view
//! is tested against (the same `SELECT`, run from scratch). The snapshot catalog,
//! tenant-scoped sessions and time travel build on it.
#![warn(missing_docs)]

pub mod live;

use std::sync::Arc;

use datafusion::datasource::MemTable;
use weir_engine::columnar::{batch_to_rows, rows_to_batch};
use weir_engine::schema::Column;
use weir_engine::value::Row;

/// Errors from running a query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DataFusion could not plan or run the query.
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Rows could not be converted to or from Arrow.
    #[error("{0}")]
    Engine(#[from] weir_engine::Error),
}

/// The query layer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A named table of rows.
pub struct Table<'a> {
    /// The name SQL uses.
    pub name: &'a str,
    /// Its columns.
    pub columns: &'a [Column],
    /// Its rows.
    pub rows: &'a [Row],
}

/// Runs `sql` as a batch query over the tables and returns its rows.
pub async fn query_rows(tables: &[Table<'_>], sql: &str) -> Result<Vec<Row>> {
    let ctx = weir_engine::plan::session();
    for t in tables {
        let batch = rows_to_batch(t.columns, t.rows)?;
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        ctx.register_table(t.name, Arc::new(table))?;
    }
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut rows = Vec::new();
    for b in &batches {
        rows.extend(batch_to_rows(b)?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::schema::{Stream, TimePolicy};
    use weir_engine::value::Value;

    #[tokio::test]
    async fn batch_sql_over_rows_with_weirs_functions() {
        let s = Stream::events(TimePolicy::DEFAULT);
        let row = |t: &str, ts: i64| vec![Value::str(t), Value::Timestamp(ts), Value::str("k"), Value::Float(1.0), Value::Null, Value::Null];
        let rows = vec![row("a", 60_000), row("a", 119_999), row("b", 120_000)];
        let out = query_rows(
            &[Table { name: "events", columns: &s.columns, rows: &rows }],
            "SELECT w, count(*) AS n FROM (SELECT unnest(hop(INTERVAL '1 minute', INTERVAL '2 minutes', ts)) AS w FROM events) GROUP BY w ORDER BY w",
        )
        .await
        .unwrap();
        let counts: Vec<(Value, Value)> = out.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        assert_eq!(
            counts,
            vec![
                (Value::Timestamp(0), Value::Int(2)),
                (Value::Timestamp(60_000), Value::Int(3)),
                (Value::Timestamp(120_000), Value::Int(1)),
            ]
        );
    }
}
