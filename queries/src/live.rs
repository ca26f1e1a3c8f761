//! SQL over the live views: the schema `live` resolves `live.<view>` to the view's rows
//! as of the moment the query is planned.
//!
//! ```text
//!   POST /v1/sql ─▶ DataFusion session (Weir's functions) ─▶ live.<view> ─▶ the view store's snapshot
//!                                                                            (Arrow, in batches)
//! ```
//!
//! Queries read; DDL, DML and statements that change the session are refused.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableFunctionImpl, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SQLOptions;
use weir_engine::Engine;

use crate::Result;

/// The schema of every live view, by name.
pub struct LiveSchema {
    engine: Arc<Engine>,
    /// With a tenant, every table holds that tenant's rows only, and views without a
    /// `tenant` column are not readable.
    tenant: Option<String>,
}

impl std::fmt::Debug for LiveSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSchema").finish_non_exhaustive()
    }
}

/// Rows per batch handed to DataFusion (and so, at most, per chunk of a streamed result).
const BATCH_ROWS: usize = 8192;

#[async_trait]
impl SchemaProvider for LiveSchema {
    fn table_names(&self) -> Vec<String> {
        self.engine.views().iter().filter(|v| self.readable(v)).map(|v| v.info.name.clone()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(view) = self.engine.view(name).filter(|v| self.readable(v)) else { return Ok(None) };
        let (_, mut rows) = view.snapshot();
        if let Some(tenant) = &self.tenant {
            // the tenant predicate is applied here, in the scan: nothing else of the query can see other rows
            let column = view.info.columns.iter().position(|c| c.name == "tenant").expect("readable views have a tenant column");
            rows.retain(|r| matches!(&r[column], weir_engine::value::Value::Str(t) if **t == **tenant));
        }
        let batches = rows
            .chunks(BATCH_ROWS)
            .map(|chunk| weir_engine::columnar::rows_to_batch(&view.info.columns, chunk))
            .collect::<weir_engine::Result<Vec<_>>>()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => weir_engine::columnar::rows_to_batch(&view.info.columns, &[]).map_err(|e| DataFusionError::External(Box::new(e)))?.schema(),
        };
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![batches])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine.view(name).is_some_and(|v| self.readable(&v))
    }
}

impl LiveSchema {
    /// Whether the view is a table here: with a tenant, only views with a `tenant` column are.
    fn readable(&self, view: &weir_engine::store::LiveView) -> bool {
        self.tenant.is_none() || view.info.columns.iter().any(|c| c.name == "tenant")
    }
}

/// The lake's tables for a query: the default schema (`public`: snapshots by view
/// name, archives by stream name), the `archive` schema, and `snapshot(…)`.
pub struct LakeTables {
    /// The default schema.
    pub public: Arc<dyn SchemaProvider>,
    /// `archive.<stream>`, if there is an archive.
    pub archive: Option<Arc<dyn SchemaProvider>>,
    /// The time-travel table function.
    pub snapshot: Arc<dyn TableFunctionImpl>,
}

/// Plans `sql` over the live views and starts it; the result arrives in batches.
/// With `tenant`, the query sees that tenant's rows only, and views without a `tenant`
/// column do not exist for it. `lake`, if given, adds the lake's tables (snapshots,
/// archives) and the `snapshot(…)` table function.
pub async fn query(
    engine: Arc<Engine>,
    sql: &str,
    tenant: Option<String>,
    lake: Option<LakeTables>,
) -> Result<SendableRecordBatchStream> {
    let ctx = weir_engine::plan::session_with(true);
    let catalog = ctx.catalog("datafusion").ok_or_else(|| DataFusionError::Internal("the default catalog is missing".into()))?;
    catalog.register_schema("live", Arc::new(LiveSchema { engine, tenant }))?;
    if let Some(lake) = lake {
        catalog.register_schema("public", lake.public)?;
        if let Some(archive) = lake.archive {
            catalog.register_schema("archive", archive)?;
        }
        ctx.register_udtf("snapshot", lake.snapshot);
    }
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let frame = ctx.sql_with_options(sql, options).await?;
    Ok(frame.execute_stream().await?)
}
