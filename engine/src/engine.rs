//! The engine: opens the data directory, recovers, and runs the gate and the dataflow.
//!
//! ```text
//!   Engine::open ─▶ read the catalog ─▶ replay the write-ahead log into the gate state
//!                ─▶ start the dataflow worker, feed it the recovered events
//!                ─▶ create the configured and catalogued views ─▶ start the ingest gate
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use tokio::sync::{oneshot, Mutex};

use crate::catalog::{Catalog, ViewDefinition};
use crate::dataflow::{run_worker, Batch, Command, Event, ViewTime};
use crate::error::{Error, Result};
use crate::ingest::{start_gate, Decoded, GateHandle, GateState, Receipt};
use crate::detect::{Compiled, DetectorDefinition, ANOMALIES};
use crate::plan::Planner;
use crate::quota::{Period, QuotaSettings, Quotas, QUOTA_USAGE, USAGE};
use crate::schema::{Stream, EVENTS, REJECTED};
use crate::store::{LiveView, ViewInfo, ViewStore};
use crate::time::{parse_duration_ms, Epoch};
use crate::value::Interner;
use crate::wal::{Entry, Logged, Wal};
use crate::archive::{ArchiveSource, Epochs, Progress};

/// How many recovered events go to the views in one epoch at a restart (see
/// `Engine::open`).
const RECOVERY_SLICE: usize = 100_000;

/// What the engine needs to start.
pub struct EngineConfig {
    /// Where the log and the catalog live.
    pub data_dir: PathBuf,
    /// The streams; `events` and `rejected` are added with default policies if absent.
    pub streams: Vec<Stream>,
    /// Views from the configuration file, created at every start.
    pub views: Vec<ViewDefinition>,
    /// Size at which the write-ahead log starts a new segment.
    pub segment_bytes: u64,
    /// Quota plans from the configuration (run-time overrides are kept in the data directory).
    pub quotas: QuotaSettings,
    /// Anomaly detectors from the configuration, started at every start.
    pub detectors: Vec<DetectorDefinition>,
    /// The raw archive, if there is one: recovery reads the rows of deleted log segments
    /// from it, and the log is truncated once archived (see [`crate::archive`]).
    pub archive: Option<Arc<dyn ArchiveSource>>,
    /// Dataflow worker threads (0 counts as 1); see [`crate::dataflow`].
    pub workers: usize,
}

/// A running engine.
pub struct Engine {
    streams: Arc<Vec<Stream>>,
    planner: Planner,
    store: Arc<ViewStore>,
    gate: GateHandle,
    dataflow: std::sync::Mutex<Sender<Command>>,
    /// The dataflow's thread, joined by [`Engine::close`].
    dataflow_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    catalog: Mutex<Catalog>,
    quotas: Arc<Quotas>,
    detectors: Mutex<BTreeMap<String, Running>>,
    data_dir: PathBuf,
    recovered_events: usize,
    archive_feed: std::sync::Mutex<Option<Epochs>>,
    archive_progress: Arc<Progress>,
}

/// The configured streams and the built-in ones: `events` and `rejected` (with default
/// policies, unless configured), `alerts` and `usage`.
pub fn with_builtin_streams(mut streams: Vec<Stream>) -> Vec<Stream> {
    if !streams.iter().any(|s| s.name == EVENTS) {
        streams.insert(0, Stream::events(crate::schema::TimePolicy::DEFAULT));
    }
    if !streams.iter().any(|s| s.name == REJECTED) {
        streams.push(Stream::rejected(crate::schema::TimePolicy::DEFAULT));
    }
    if !streams.iter().any(|s| s.name == crate::schema::ALERTS) {
        streams.push(Stream::alerts(crate::schema::TimePolicy { lateness_ms: 0, retention_ms: 30 * 86_400_000 }));
    }
    if !streams.iter().any(|s| s.name == USAGE) {
        streams.push(crate::quota::usage_stream(crate::quota::USAGE_RETENTION_MS));
    }
    streams
}

/// A running detector.
struct Running {
    def: DetectorDefinition,
    from_config: bool,
}

impl Engine {
    /// Opens the data directory, recovers every acknowledged event, and starts.
    pub async fn open(config: EngineConfig) -> Result<Engine> {
        let EngineConfig { data_dir, streams, views, segment_bytes, quotas, detectors, archive, workers } = config;
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(format!("creating {}", data_dir.display()), e))?;
        let streams = with_builtin_streams(streams);
        let quotas = Arc::new(Quotas::open(quotas, Some(&data_dir))?);
        let streams = Arc::new(streams);
        let catalog = Catalog::load(&data_dir)?;

        // Replay the log: rebuild the gate's state and collect the retained events.
        let mut state = GateState::new(&streams);
        let mut recovered: Vec<Vec<Event>> = vec![Vec::new(); streams.len()];
        let mut unknown = 0usize;
        let wal_dir = data_dir.join("wal");
        let progress = Arc::new(Progress::new(&streams, archive.as_deref()));
        // Rows of epochs whose log segments were deleted come from the archive.
        if let Some(archive) = &archive
            && let Some(first) = tokio::task::block_in_place(|| Wal::first_checkpoint(&wal_dir))?
            && first.last_epoch > 0
        {
            for (i, s) in streams.iter().enumerate().filter(|(_, s)| !s.weighted) {
                let watermark = first.watermarks.iter().find(|(n, _)| *n == s.name).map(|(_, w)| *w);
                let Some(watermark) = watermark else { continue };
                let rows = archive.load(s, first.last_epoch, watermark.saturating_sub(s.policy.retention_ms)).await?;
                tracing::info!(stream = %s.name, rows = rows.len(), through_epoch = first.last_epoch, "recovering archived rows");
                for row in rows {
                    recovered[i].push(state.admit(&streams, i, row));
                }
            }
        }
        // log records the archive does not have yet, by epoch, to be fed to it again
        let mut unarchived: Vec<Vec<Logged>> = Vec::new();
        let mut unencodable: Option<Error> = None;
        let replay_streams = streams.clone();
        let mut replayed_events = false;
        // the log holds each row's strings as its own copies: shared again (by each log
        // reader, as it decodes), the retained events take a fraction of the memory (each
        // tenant and kind once per reader, not once per event)
        let share = || {
            let mut strings = Interner::new(1 << 16);
            move |entry: &mut Entry| {
                if let Entry::Events(record) = entry {
                    record.rows.iter_mut().for_each(|row| strings.share(row));
                }
            }
        };
        let wal = tokio::task::block_in_place(|| {
            Wal::open_with(&wal_dir, segment_bytes, share, |entry| match entry {
                // the oldest segment's checkpoint is the state replay starts from
                Entry::Checkpoint(checkpoint) if !replayed_events => state.restore(&replay_streams, &checkpoint),
                Entry::Checkpoint(_) => {}
                Entry::Events(mut record) => {
                    replayed_events = true;
                    state.last_epoch = state.last_epoch.max(record.epoch);
                    let Some(i) = replay_streams.iter().position(|s| s.name == record.stream) else {
                        unknown += record.rows.len();
                        return;
                    };
                    if replay_streams[i].metered {
                        state.count_logged_usage(&replay_streams[i], &record);
                    }
                    // (rows of another schema of the stream are skipped by the archive too)
                    if archive.is_some() && !replay_streams[i].weighted && record.epoch > progress.through(&record.stream) {
                        match Logged::encode(&record) {
                            Ok(logged) => match unarchived.last_mut() {
                                Some(group) if group[0].epoch == record.epoch => group.push(logged),
                                _ => unarchived.push(vec![logged]),
                            },
                            Err(e) => unencodable = Some(e),
                        }
                    }
                    if replay_streams[i].weighted {
                        record.rows.iter().for_each(|row| state.admit_usage(i, row));
                    } else {
                        let columns = replay_streams[i].columns.len();
                        unknown += record.rows.iter().filter(|row| row.len() != columns).count();
                        // the rows move into the recovered events (the archive has its own bytes)
                        recovered[i].extend(std::mem::take(&mut record.rows).into_iter().filter(|row| row.len() == columns).map(|row| state.admit(&replay_streams, i, row)));
                    }
                }
            })
        })?;
        if let Some(e) = unencodable {
            return Err(e);
        }
        if unknown > 0 {
            tracing::warn!(events = unknown, "the log holds events of streams that are no longer configured (or whose schema changed); they were skipped");
        }
        let recovered_events = recovered.iter().map(Vec::len).sum();
        // usage enters the dataflow from the ledger: the checkpoint's summary plus the replayed rows
        if let Some(u) = streams.iter().position(|s| s.weighted) {
            recovered[u] = state.ledger.rows().map(|(row, ts, n)| Event { row, ts, late_by: 0, weight: n as isize }).collect();
        }
        let last_epoch = state.last_epoch;
        // The recovered events go to the views once they are installed, a slice at a time,
        // each slice an epoch of its own after the log's last (the gate goes on after
        // them): the dataflow computes a slice while the store takes the one before, where
        // one epoch of every event had the store wait for the whole dataflow, and held
        // every intermediate of the whole log at once (measured in docs/benchmarks.md).
        let mut slices: Vec<Batch> = Vec::new();
        for (i, events) in recovered.into_iter().enumerate() {
            let mut events = events.into_iter().peekable();
            while events.peek().is_some() {
                let epoch = last_epoch + 1 + slices.len() as Epoch;
                let slice: Vec<Event> = events.by_ref().take(RECOVERY_SLICE).collect();
                slices.push(Batch { epoch, stream: i, events: slice, watermark: state.watermarks[i] });
            }
        }
        let recovered_through = last_epoch + slices.len() as Epoch;
        state.last_epoch = recovered_through;

        let store = Arc::new(ViewStore::default());
        let (dataflow_tx, dataflow_rx) = std::sync::mpsc::channel();
        let dataflow_thread = {
            let streams = streams.clone();
            let store = store.clone();
            std::thread::Builder::new()
                .name("weir-dataflow".into())
                .spawn(move || run_worker(workers, streams, store, dataflow_rx, last_epoch))
                .map_err(|e| Error::io("starting the dataflow thread", e))?
        };

        let (archive_tx, archive_rx) = tokio::sync::mpsc::unbounded_channel();
        let archive_feed = match archive {
            Some(_) => {
                for group in unarchived {
                    let _ = archive_tx.send(group);
                }
                Some(archive_rx)
            }
            None => None,
        };
        let archiving = archive_feed.as_ref().map(|_| (archive_tx, progress.clone()));
        let (gate, _thread) = start_gate(streams.clone(), state, wal, quotas.clone(), dataflow_tx.clone(), archiving);
        let engine = Engine {
            planner: Planner::new(&streams)?,
            streams,
            store,
            gate,
            dataflow: std::sync::Mutex::new(dataflow_tx),
            dataflow_thread: std::sync::Mutex::new(Some(dataflow_thread)),
            catalog: Mutex::new(catalog),
            quotas,
            detectors: Mutex::new(BTreeMap::new()),
            data_dir: data_dir.clone(),
            recovered_events,
            archive_feed: std::sync::Mutex::new(archive_feed),
            archive_progress: progress,
        };
        engine.install_usage_views().await?;
        for def in views {
            engine.install(def, true).await.map_err(|e| Error::Config(format!("a view in the configuration: {e}")))?;
        }
        let stored: Vec<ViewDefinition> = engine.catalog.lock().await.views().iter().map(|(_, d)| d.clone()).collect();
        for def in stored {
            engine.install(def, false).await?;
        }
        for slice in slices {
            engine.send(Command::Ingest { epoch: slice.epoch, batches: vec![slice] })?;
        }
        engine.store.insert(ViewInfo {
            name: ANOMALIES.into(),
            sql: "-- built in: the scores of every anomaly detector".into(),
            streams: vec![],
            columns: crate::detect::anomalies_columns(),
            lateness_ms: 0,
            retention_ms: i64::MAX,
            from_config: true,
        })
        .publish_changes(recovered_through, Vec::new());
        // Be complete before serving: every view reflects everything recovered (and the
        // detectors start from complete views, as they would have before the restart).
        for view in engine.store.list() {
            while !view.wait_for(recovered_through, std::time::Duration::from_secs(60)).await {
                tracing::info!(view = %view.info.name, "still replaying the log into the view");
            }
            view.seal_initial_contents(recovered_through);
        }
        for def in detectors {
            engine.start_detector(def, true).await.map_err(|e| Error::Config(format!("a detector in the configuration: {e}")))?;
        }
        for def in load_detectors(&data_dir)? {
            engine.start_detector(def, false).await?;
        }
        Ok(engine)
    }

    /// The records of every committed epoch, in order, for the archive writer (once;
    /// `None` without an archive). Records the log held but the archive lacked at start
    /// come first.
    pub fn take_archive_feed(&self) -> Option<Epochs> {
        self.archive_feed.lock().expect("the archive feed lock").take()
    }

    /// Where the archive writer reports how far each stream is archived.
    pub fn archive_progress(&self) -> &Arc<Progress> {
        &self.archive_progress
    }

    /// The built-in views of tenant usage: `usage_per_{minute,hour,day,month}` in the
    /// dataflow, and `quota_usage`, which joins them with the plans.
    async fn install_usage_views(&self) -> Result<()> {
        let retention = self.stream(USAGE).map(|(_, s)| s.policy.retention_ms).unwrap_or(crate::quota::USAGE_RETENTION_MS);
        for period in Period::ALL {
            let ms = period.view_retention_ms().min(retention);
            let def = ViewDefinition { sql: period.view_sql(), lateness: None, retention: Some(format!("{ms}ms")) };
            self.install(def, true).await?;
        }
        let info = ViewInfo {
            name: QUOTA_USAGE.into(),
            sql: "-- built in: the usage_per_* views joined with the tenants' quota plans".into(),
            streams: vec![USAGE.into()],
            columns: crate::quota::quota_usage_columns(),
            lateness_ms: 0,
            retention_ms: retention,
            from_config: true,
        };
        self.store.insert(info);
        let store = Arc::downgrade(&self.store);
        let quotas = self.quotas.clone();
        std::thread::Builder::new()
            .name("weir-quota-usage".into())
            .spawn(move || crate::quota::maintain_quota_usage(store, quotas))
            .map_err(|e| Error::io("starting the quota usage thread", e))?;
        Ok(())
    }

    /// Starts an anomaly detector over a view; a detector declared over HTTP is kept
    /// across restarts.
    pub async fn create_detector(&self, def: DetectorDefinition) -> Result<DetectorDefinition> {
        self.start_detector(def.clone(), false).await?;
        let saved = self.save_detectors().await;
        if let Err(e) = saved {
            let _ = self.drop_detector(&def.name).await;
            return Err(e);
        }
        Ok(def)
    }

    async fn start_detector(&self, def: DetectorDefinition, from_config: bool) -> Result<()> {
        let mut running = self.detectors.lock().await;
        if running.contains_key(&def.name) {
            return Err(Error::AlreadyExists(format!("a detector named {} exists", def.name)));
        }
        let source = self.store.get(&def.view).ok_or_else(|| Error::NotFound(format!("detector {}: no view named {}", def.name, def.view)))?;
        let compiled = Compiled::new(def.clone(), &source.info.columns, source.info.retention_ms)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::CreateDetector { detector: Box::new(compiled), reply })?;
        rx.await.map_err(|_| Error::ShuttingDown)??;
        running.insert(def.name.clone(), Running { def, from_config });
        Ok(())
    }

    /// Stops a detector and removes its rows from `anomalies`.
    pub async fn drop_detector(&self, name: &str) -> Result<()> {
        let mut running = self.detectors.lock().await;
        if !running.contains_key(name) {
            return Err(Error::NotFound(format!("no detector named {name}")));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::DropDetector { name: name.to_string(), reply })?;
        rx.await.map_err(|_| Error::ShuttingDown)??;
        running.remove(name);
        drop(running);
        self.save_detectors().await
    }

    /// The detectors running, with whether each comes from the configuration.
    pub async fn detectors(&self) -> Vec<(DetectorDefinition, bool)> {
        self.detectors.lock().await.values().map(|r| (r.def.clone(), r.from_config)).collect()
    }

    async fn save_detectors(&self) -> Result<()> {
        let defs: Vec<DetectorDefinition> = self.detectors.lock().await.values().filter(|r| !r.from_config).map(|r| r.def.clone()).collect();
        let path = self.data_dir.join("detectors.json");
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(&defs).expect("definitions serialize");
        std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Every view's rows as of one epoch (the latest all views have completed): what a
    /// consistent snapshot writes.
    pub async fn capture(&self) -> Result<crate::dataflow::Capture> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Capture { reply })?;
        let copies = rx.await.map_err(|_| Error::ShuttingDown)?;
        // listing a large view's rows takes a while: not on the async threads
        tokio::task::spawn_blocking(move || copies.rows()).await.map_err(|_| Error::ShuttingDown)
    }

    /// The quota plans in force.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// How many events were recovered from the log at start.
    pub fn recovered_events(&self) -> usize {
        self.recovered_events
    }

    /// The streams, in order.
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }

    /// A stream's number and definition, by name.
    pub fn stream(&self, name: &str) -> Option<(usize, &Stream)> {
        self.streams.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// Submits a decoded request to a stream; resolves once the accepted events are durable.
    pub async fn ingest(&self, stream: usize, decoded: Decoded) -> Result<Receipt> {
        if stream >= self.streams.len() {
            return Err(Error::NotFound(format!("no stream number {stream}")));
        }
        self.gate.submit(stream, decoded).await
    }

    /// Every view.
    pub fn views(&self) -> Vec<Arc<LiveView>> {
        self.store.list()
    }

    /// A view by name.
    pub fn view(&self, name: &str) -> Option<Arc<LiveView>> {
        self.store.get(name)
    }

    /// Creates a view from a `CREATE VIEW` statement and keeps it across restarts.
    pub async fn create_view(&self, def: ViewDefinition) -> Result<ViewInfo> {
        let mut catalog = self.catalog.lock().await;
        let info = self.install_locked(def.clone(), false).await?;
        if let Err(e) = catalog.add(&info.name, def) {
            let _ = self.uninstall(&info.name).await;
            return Err(e);
        }
        Ok(info)
    }

    /// Drops a view. A view from the configuration file comes back at the next start.
    pub async fn drop_view(&self, name: &str) -> Result<()> {
        if let Some(d) = self.detectors.lock().await.values().find(|r| r.def.view == name) {
            return Err(Error::AlreadyExists(format!("the detector {} watches the view {name}; delete the detector first", d.def.name)));
        }
        let mut catalog = self.catalog.lock().await;
        if self.store.get(name).is_none() {
            return Err(Error::NotFound(format!("no view named {name}")));
        }
        catalog.remove(name)?;
        self.uninstall(name).await
    }

    async fn install(&self, def: ViewDefinition, from_config: bool) -> Result<ViewInfo> {
        let _catalog = self.catalog.lock().await;
        self.install_locked(def, from_config).await
    }

    /// Plans a view and starts its dataflow; the caller holds the catalog lock, so that
    /// DDL is serialized.
    async fn install_locked(&self, def: ViewDefinition, from_config: bool) -> Result<ViewInfo> {
        let plan = self.planner.plan(&def.sql).await?;
        if self.store.get(&plan.name).is_some() {
            return Err(Error::AlreadyExists(format!("a view named {} exists", plan.name)));
        }
        // a view over several streams may keep and accept no more than the tightest allows
        let mut policy = crate::schema::TimePolicy { lateness_ms: i64::MAX, retention_ms: i64::MAX };
        for name in &plan.streams {
            let (_, stream) = self.stream(name).ok_or_else(|| Error::NotFound(format!("no stream named {name}")))?;
            policy.lateness_ms = policy.lateness_ms.min(stream.policy.lateness_ms);
            policy.retention_ms = policy.retention_ms.min(stream.policy.retention_ms);
        }
        let bounded = |value: &Option<String>, default: i64, what: &str| -> Result<i64> {
            let Some(text) = value else { return Ok(default) };
            let ms = parse_duration_ms(text).map_err(|e| Error::Sql(e.to_string()))?;
            if ms > default {
                return Err(Error::Sql(format!("the view's {what} ({text}) exceeds its stream's ({default} ms)")));
            }
            Ok(ms)
        };
        let time = ViewTime {
            lateness_ms: bounded(&def.lateness, policy.lateness_ms, "lateness")?,
            retention_ms: bounded(&def.retention, policy.retention_ms, "retention")?,
        };
        if time.retention_ms <= 0 {
            return Err(Error::Sql("a view's retention must be positive".into()));
        }
        let info = ViewInfo::of(&plan, time, from_config);
        self.store.insert(info.clone());
        let (reply, rx) = oneshot::channel();
        self.send(Command::CreateView { plan, time, reply })?;
        match rx.await.map_err(|_| Error::ShuttingDown)? {
            Ok(()) => Ok(info),
            Err(e) => {
                self.store.remove(&info.name);
                Err(e)
            }
        }
    }

    async fn uninstall(&self, name: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::DropView { name: name.to_string(), reply })?;
        let result = rx.await.map_err(|_| Error::ShuttingDown)?;
        self.store.remove(name);
        result
    }

    fn send(&self, command: Command) -> Result<()> {
        self.dataflow.lock().unwrap_or_else(|e| e.into_inner()).send(command).map_err(|_| Error::ShuttingDown)
    }

    /// The latest epoch any view has published.
    pub fn epoch(&self) -> Epoch {
        self.store.list().iter().map(|v| v.epoch()).max().unwrap_or(0)
    }

    /// Stops the dataflow worker. Everything acknowledged is already in the log.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
    }

    /// Stops the dataflow worker and waits for its threads to end: it takes the commands
    /// sent before (without computing what they leave pending) and lets go of its state,
    /// so nothing of this engine's dataflow runs after. Everything acknowledged is
    /// already in the log.
    pub fn close(&self) {
        self.shutdown();
        let thread = self.dataflow_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn load_detectors(data_dir: &std::path::Path) -> Result<Vec<DetectorDefinition>> {
    let path = data_dir.join("detectors.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}
