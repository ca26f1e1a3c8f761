//! Weir's lake: consistent snapshots of every view as Delta Lake tables on object
//! storage, readable by Weir's SQL and by any Delta reader.
//!
//! ```text
//!   engine.capture() ── every view as of one epoch ──▶ for each view whose rows changed:
//!        overwrite <lake>/<view>/ as a new Delta version, commit info {weir.epoch, weir.watermarks}
//! ```
//!
//! A snapshot is consistent across views: all of its tables hold their view as of the
//! same epoch. A view whose rows did not change since the last snapshot writes nothing.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use deltalake::datafusion::catalog::TableProvider;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::datafusion::prelude::{col, lit};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use serde_json::json;
use tokio::sync::Mutex;
use weir_engine::dataflow::Capture;
use weir_engine::schema::{Column, DataType};
use weir_engine::value::{Row, Value};

pub mod archive;
pub mod cloud;

pub use url::Url;

/// Errors writing or reading the lake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Delta Lake could not read or write a table.
    #[error("delta lake: {0}")]
    Delta(#[from] DeltaTableError),
    /// A view's rows could not be turned into Arrow.
    #[error("{0}")]
    Engine(#[from] weir_engine::Error),
    /// DataFusion could not read a table.
    #[error("{0}")]
    DataFusion(#[from] deltalake::datafusion::error::DataFusionError),
    /// The location is not usable.
    #[error("{0}")]
    Location(String),
}

/// The lake's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one snapshot wrote for one view.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TableWrite {
    /// The view.
    pub view: String,
    /// The table's Delta version after the snapshot (unchanged if nothing was written).
    pub version: Option<u64>,
    /// Rows in the view.
    pub rows: usize,
    /// Whether a new version was written (false: the view had not changed).
    pub written: bool,
}

/// What a snapshot did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Snapshot {
    /// The epoch every table of the snapshot holds its view as of.
    pub epoch: u64,
    /// Per view.
    pub tables: Vec<TableWrite>,
    /// How long it took.
    pub seconds: f64,
}

/// The lake: a location (`file://`, …) with one Delta table per view.
#[derive(Debug)]
pub struct Lake {
    root: Url,
    /// Storage options (credentials, endpoint, …) for every table.
    options: HashMap<String, String>,
    /// Per view: what was last written.
    written: Mutex<HashMap<String, Written>>,
}

/// What the lake last wrote of a view: a digest of its schema, of each partition's rows,
/// and the table's version.
#[derive(Debug)]
struct Written {
    schema: u64,
    partitions: HashMap<String, u64>,
    version: Option<u64>,
}

/// The partition column of windowed views: the UTC date of their first timestamp column.
pub const PARTITION: &str = "window_date";

fn digest(value: &impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Lake {
    /// A lake at `root`, a directory URL (`file:///var/lib/weir/lake/`,
    /// `s3://bucket/weir/`, `gs://…`, `az://…`), with storage `options` (credentials,
    /// endpoint, …: see [`cloud`]).
    pub fn new(root: Url, options: HashMap<String, String>) -> Result<Lake> {
        if root.scheme() != "file" && !cloud::SCHEMES.contains(&root.scheme()) {
            return Err(Error::Location(format!("{root}: the lake's location must be a directory, a file:// URL, or an s3://, gs:// or az:// URL")));
        }
        cloud::register();
        let root = if root.path().ends_with('/') { root } else { Url::parse(&format!("{root}/")).map_err(|e| Error::Location(e.to_string()))? };
        Ok(Lake { root, options, written: Mutex::new(HashMap::new()) })
    }

    /// The lake's location.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// A table at `url` with the lake's storage options, not loaded.
    fn builder(&self, url: Url) -> Result<DeltaTableBuilder> {
        Ok(DeltaTableBuilder::from_url(url)?.with_storage_options(self.options.clone()))
    }

    /// The table at `url`, loaded (or empty if there is none yet).
    async fn open_or_new(&self, url: Url) -> Result<DeltaTable> {
        if let Ok(dir) = url.to_file_path() {
            std::fs::create_dir_all(&dir).map_err(|e| Error::Location(format!("creating {}: {e}", dir.display())))?;
        }
        let mut table = self.builder(url)?.build()?;
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
            Err(e) => Err(e.into()),
        }
    }

    /// The table at `url` as of `as_of`, `None` if there is no table there.
    async fn open(&self, url: Url, as_of: AsOf) -> Result<Option<DeltaTable>> {
        if url.to_file_path().is_ok_and(|dir| !dir.join("_delta_log").exists()) && matches!(as_of, AsOf::Latest) {
            return Ok(None);
        }
        let url_is_file = url.scheme() == "file";
        let builder = self.builder(url)?;
        let builder = match as_of {
            AsOf::Latest => builder,
            AsOf::Version(v) => builder.with_version(v as _),
            AsOf::Time(t) => builder.with_timestamp(t),
        };
        match builder.load().await {
            Ok(t) => Ok(Some(t)),
            Err(DeltaTableError::NotATable(_)) if matches!(as_of, AsOf::Latest) => Ok(None),
            Err(DeltaTableError::InvalidTableLocation(_)) if matches!(as_of, AsOf::Latest) && url_is_file => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A lake in a local directory.
    pub fn in_dir(dir: &std::path::Path) -> Result<Lake> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Location(format!("creating {}: {e}", dir.display())))?;
        let dir = dir.canonicalize().map_err(|e| Error::Location(format!("{}: {e}", dir.display())))?;
        Lake::new(Url::from_directory_path(&dir).map_err(|_| Error::Location(format!("{} is not an absolute path", dir.display())))?, HashMap::new())
    }

    /// The URL of a view's table.
    pub fn table_url(&self, view: &str) -> Result<Url> {
        self.root.join(&format!("{view}/")).map_err(|e| Error::Location(e.to_string()))
    }

    /// Writes a captured cut of every view: a new version of each table whose view
    /// changed. A windowed view (one with a timestamp column) is partitioned by the UTC
    /// date of its first timestamp column, and only the partitions whose rows changed
    /// are rewritten.
    pub async fn snapshot(&self, capture: Capture) -> Result<Snapshot> {
        let start = std::time::Instant::now();
        let mut written = self.written.lock().await;
        let mut tables = Vec::new();
        let watermarks: serde_json::Map<String, serde_json::Value> = capture.watermarks.iter().map(|(s, w)| (s.clone(), json!(w))).collect();
        for (info, rows) in capture.views {
            let window = info.columns.iter().position(|c| c.data_type == DataType::Timestamp);
            let schema = digest(&info.columns.iter().map(|c| (c.name.as_str(), c.data_type as u8)).collect::<Vec<_>>());
            // rows by partition ("" for views without a window)
            let mut by_partition: BTreeMap<String, Vec<Row>> = BTreeMap::new();
            for row in rows.iter() {
                let date = match window.map(|w| &row[w]) {
                    Some(Value::Timestamp(ms)) => chrono::DateTime::from_timestamp_millis(*ms).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default(),
                    _ => String::new(),
                };
                by_partition.entry(date).or_default().push(row.clone());
            }
            let partitions: HashMap<String, u64> = by_partition.iter().map(|(d, rows)| (d.clone(), digest(rows))).collect();
            let previous = written.get(&info.name).filter(|w| w.schema == schema);
            let changed: Vec<String> = match previous {
                Some(p) => {
                    let mut c: Vec<String> = partitions.iter().filter(|(d, h)| p.partitions.get(*d) != Some(h)).map(|(d, _)| d.clone()).collect();
                    c.extend(p.partitions.keys().filter(|d| !partitions.contains_key(*d)).cloned());
                    c
                }
                None => partitions.keys().cloned().collect(),
            };
            if previous.is_some() && changed.is_empty() {
                tables.push(TableWrite { view: info.name.clone(), version: previous.and_then(|p| p.version), rows: rows.len(), written: false });
                continue;
            }
            let url = self.table_url(&info.name)?;
            let commit = CommitProperties::default().with_metadata([
                ("weir.epoch".to_string(), json!(capture.epoch)),
                ("weir.view".to_string(), json!(info.name)),
                ("weir.watermarks".to_string(), serde_json::Value::Object(watermarks.clone())),
            ]);
            let table = self.open_or_new(url).await?;
            let to_write: Vec<Row> = changed.iter().filter_map(|d| by_partition.get(d)).flatten().cloned().collect();
            let batch = batch_of(&info.columns, window, &to_write)?;
            let mut write = table.write(vec![batch]).with_save_mode(SaveMode::Overwrite).with_commit_properties(commit);
            if window.is_some() {
                write = write.with_partition_columns([PARTITION]);
            }
            write = match (previous, window) {
                // a known table: replace the changed partitions only
                (Some(_), Some(_)) => {
                    let dates = changed.iter().map(|d| lit(d.clone())).collect();
                    write.with_replace_where(col(PARTITION).in_list(dates, false))
                }
                _ => write.with_schema_mode(SchemaMode::Overwrite),
            };
            let table = write.await?;
            let version = table.version();
            written.insert(info.name.clone(), Written { schema, partitions, version });
            tables.push(TableWrite { view: info.name, version, rows: rows.len(), written: true });
        }
        Ok(Snapshot { epoch: capture.epoch, tables, seconds: start.elapsed().as_secs_f64() })
    }

    /// The latest version of the table at `url` as a DataFusion table, if there is one.
    async fn provider(&self, url: Url) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.open(url, AsOf::Latest).await? {
            Some(table) => Ok(Some(table.table_provider().await?)),
            None => Ok(None),
        }
    }
}

/// Rows as an Arrow batch, with the partition column for windowed views.
fn batch_of(columns: &[Column], window: Option<usize>, rows: &[Row]) -> Result<deltalake::arrow::record_batch::RecordBatch> {
    let Some(w) = window else { return Ok(weir_engine::columnar::rows_to_batch(columns, rows)?) };
    let mut columns = columns.to_vec();
    columns.push(Column::new(PARTITION, DataType::String, false));
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let date = match &r[w] {
                Value::Timestamp(ms) => chrono::DateTime::from_timestamp_millis(*ms).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default(),
                _ => String::new(),
            };
            r.iter().cloned().chain([Value::str(&date)]).collect()
        })
        .collect();
    Ok(weir_engine::columnar::rows_to_batch(&columns, &rows)?)
}

/// Tables of the lake by name (opened when a query names them): the latest snapshot
/// of every view, named after the view, and the streams' archives.
pub struct SnapshotSchema {
    lake: Arc<Lake>,
    tables: Vec<(String, Url)>,
    tenant: Option<String>,
}

impl SnapshotSchema {
    /// The snapshots of `views`; with `tenant`, each holds that tenant's rows only.
    pub fn new(lake: Arc<Lake>, views: Vec<String>, tenant: Option<String>) -> Result<SnapshotSchema> {
        let tables = views.into_iter().map(|v| lake.table_url(&v).map(|url| (v, url))).collect::<Result<_>>()?;
        Ok(SnapshotSchema { lake, tables, tenant })
    }

    /// Adds the archives of `streams` under their stream's name, except where a view
    /// has that name.
    pub fn with_archives(mut self, archive: &archive::Archive, streams: Vec<String>) -> Result<SnapshotSchema> {
        for stream in streams {
            if !self.tables.iter().any(|(n, _)| *n == stream) {
                let url = archive.table_url(&stream)?;
                self.tables.push((stream, url));
            }
        }
        Ok(self)
    }
}

/// A table limited to one tenant's rows: the filter sits under everything the query
/// does with the table, as a view's plan (`None` if the table has no `tenant` column).
fn scoped(name: &str, provider: Arc<dyn TableProvider>, tenant: Option<&str>) -> deltalake::datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
    use deltalake::datafusion::catalog::view::ViewTable;
    use deltalake::datafusion::datasource::provider_as_source;
    use deltalake::datafusion::logical_expr::LogicalPlanBuilder;
    let Some(tenant) = tenant else { return Ok(Some(provider)) };
    if provider.schema().field_with_name("tenant").is_err() {
        return Ok(None);
    }
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?.filter(col("tenant").eq(lit(tenant.to_string())))?.build()?;
    Ok(Some(Arc::new(ViewTable::new(plan, None))))
}

impl std::fmt::Debug for SnapshotSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSchema").field("tables", &self.tables).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl deltalake::datafusion::catalog::SchemaProvider for SnapshotSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.iter().map(|(n, _)| n.clone()).collect()
    }

    async fn table(&self, name: &str) -> deltalake::datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let Some((_, url)) = self.tables.iter().find(|(n, _)| n == name) else { return Ok(None) };
        let table = self.lake.provider(url.clone()).await.map_err(|e| deltalake::datafusion::error::DataFusionError::External(Box::new(e)))?;
        match table {
            Some(t) => scoped(name, t, self.tenant.as_deref()),
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.iter().any(|(n, _)| n == name)
    }
}

/// `snapshot('view', 'version', 3)` or `snapshot('view', 'timestamp', '2026-11-22T10:00:00Z')`
/// (written `snapshot('view', version => 3)` in Weir's SQL, see [`named_arguments`]): an
/// earlier snapshot of a view.
#[derive(Debug)]
pub struct SnapshotFunction {
    lake: Arc<Lake>,
    tenant: Option<String>,
}

impl SnapshotFunction {
    /// The function over this lake; with `tenant`, snapshots hold that tenant's rows only.
    pub fn new(lake: Arc<Lake>, tenant: Option<String>) -> SnapshotFunction {
        SnapshotFunction { lake, tenant }
    }
}

#[derive(Clone, Copy)]
enum AsOf {
    Latest,
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

impl deltalake::datafusion::catalog::TableFunctionImpl for SnapshotFunction {
    fn call_with_args(&self, args: deltalake::datafusion::catalog::TableFunctionArgs<'_, '_>) -> deltalake::datafusion::error::Result<Arc<dyn TableProvider>> {
        use deltalake::datafusion::common::ScalarValue;
        use deltalake::datafusion::error::DataFusionError;
        use deltalake::datafusion::logical_expr::Expr;
        let usage = || DataFusionError::Plan("use snapshot('view'), snapshot('view', version => 3) or snapshot('view', timestamp => '2026-11-22T10:00:00Z')".into());
        let text = |e: &Expr| match e {
            Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => Some(s.clone()),
            _ => None,
        };
        let exprs = args.exprs();
        let view = exprs.first().and_then(text).ok_or_else(usage)?;
        let as_of = match exprs.get(1..).unwrap_or_default() {
            [] => AsOf::Latest,
            [key, Expr::Literal(value, _)] if text(key).as_deref() == Some("version") => {
                let v = value.to_string().parse::<u64>().map_err(|_| usage())?;
                AsOf::Version(v)
            }
            [key, value] if text(key).as_deref() == Some("timestamp") => {
                let t = text(value).and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).ok_or_else(usage)?;
                AsOf::Time(t.with_timezone(&chrono::Utc))
            }
            _ => return Err(usage()),
        };
        let url = self.lake.table_url(&view).map_err(|e| DataFusionError::External(Box::new(e)))?;
        // planning is synchronous here; opening a table is not
        let tenant = self.tenant.clone();
        let lake = self.lake.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let table = lake
                    .open(url, as_of)
                    .await
                    .map_err(|e| DataFusionError::Plan(format!("snapshot of {view}: {e}")))?
                    .ok_or_else(|| DataFusionError::Plan(format!("snapshot of {view}: no snapshot has been written")))?;
                let provider = table.table_provider().await?;
                // DataFusion names every table function's scan `snapshot()`: two calls in one
                // query would look alike to the optimizer, so each is planned as a view over a
                // scan named after its table and version
                let name = format!("{view}@{}", table.version().map_or(String::from("empty"), |v| v.to_string()));
                let scoped = scoped(&name, provider.clone(), tenant.as_deref())?
                    .ok_or_else(|| DataFusionError::Plan(format!("the view {view} has no tenant column, so a tenant-scoped key cannot read it")))?;
                if tenant.is_some() {
                    return Ok(scoped);
                }
                let plan = deltalake::datafusion::logical_expr::LogicalPlanBuilder::scan(name, deltalake::datafusion::datasource::provider_as_source(provider), None)?.build()?;
                Ok(Arc::new(deltalake::datafusion::catalog::view::ViewTable::new(plan, None)) as Arc<dyn TableProvider>)
            })
        })
    }
}

/// Rewrites `name => value` arguments (which DataFusion does not take in table
/// functions) to `'name', value`, outside string literals and quoted identifiers.
pub fn named_arguments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '=' && chars.get(i + 1) == Some(&'>') => {
                // the identifier just before, possibly followed by spaces
                let trimmed = out.trim_end().len();
                let start = out[..trimmed].rfind(|ch: char| !(ch.is_alphanumeric() || ch == '_')).map_or(0, |p| p + 1);
                let name = out[start..trimmed].to_string();
                out.truncate(start);
                out.push_str(&format!("'{name}',"));
                i += 2;
                continue;
            }
            None => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn named_arguments_become_positional() {
        assert_eq!(super::named_arguments("SELECT * FROM snapshot('v', version => 3)"), "SELECT * FROM snapshot('v', 'version', 3)");
        assert_eq!(super::named_arguments("SELECT 'a => b' FROM snapshot('v', timestamp=>'x')"), "SELECT 'a => b' FROM snapshot('v', 'timestamp','x')");
    }
}
