//! `weir serve`: open the engine, serve HTTP, stop cleanly on SIGINT or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_engine::{Engine, EngineConfig};

use crate::config::Config;
use crate::server::{router, AppState};

/// A running server.
pub struct Running {
    pub address: SocketAddr,
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    archiver: Option<JoinHandle<()>>,
    _background: Background,
}

/// The runtime of the lake's writers (the raw archive, periodic snapshots): Arrow and
/// parquet encoding take seconds of CPU at a time, which on the HTTP runtime's threads
/// would stall requests and subscribers queued behind them.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    fn start() -> anyhow::Result<Background> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // one (two measured worse freshness); at shutdown the archive's last append may
            // wait behind a snapshot being written, within `stop`'s 10 s
            .worker_threads(1)
            .thread_name("weir-lake")
            // below the threads that ingest, compute and serve (nice 9): when the cores are
            // all busy, the writers yield most of their share but are never starved (they
            // must keep up, or the log is not truncated; SCHED_IDLE, tried, starved them
            // whenever the machine was busy: tests waiting on the archive timed out)
            .on_thread_start(|| {
                if let Ok(low) = thread_priority::ThreadPriorityValue::try_from(25u8) {
                    if let Err(e) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Crossplatform(low)) {
                        tracing::debug!(error = ?e, "the lake writers keep the normal priority");
                    }
                }
            })
            .enable_all()
            .build()
            .context("starting the lake writers' runtime")?;
        Ok(Background(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("the runtime runs until dropped").handle()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // (dropping a runtime from async code would panic; this does not wait)
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Writes every view to the lake as of one epoch.
pub async fn snapshot(engine: &Engine, lake: &weir_lake::Lake) -> anyhow::Result<weir_lake::Snapshot> {
    let capture = engine.capture().await?;
    let snapshot = lake.snapshot(capture).await?;
    let written = snapshot.tables.iter().filter(|t| t.written).count();
    if written > 0 {
        tracing::info!(epoch = snapshot.epoch, written, unchanged = snapshot.tables.len() - written, seconds = snapshot.seconds, "snapshot");
    } else {
        tracing::debug!(epoch = snapshot.epoch, "snapshot: no view changed");
    }
    Ok(snapshot)
}

/// Opens the engine (recovering from the log) and starts serving HTTP.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let streams = weir_engine::engine::with_builtin_streams(config.streams()?);
    let lake = Arc::new(match &config.snapshot.location {
        Some(l) if l.contains("://") => weir_lake::Lake::new(weir_lake::Url::parse(l).with_context(|| format!("snapshot.location {l}"))?, config.snapshot.storage_options())?,
        Some(l) => weir_lake::Lake::in_dir(std::path::Path::new(l))?,
        None => weir_lake::Lake::in_dir(&config.data_dir.join("lake"))?,
    });
    let archive = match config.archive.enabled {
        true => Some(Arc::new(weir_lake::archive::Archive::open(lake.clone(), &streams).await.with_context(|| format!("reading the archive in {}", lake.root()))?)),
        false => None,
    };
    let engine = Engine::open(EngineConfig {
        data_dir: config.data_dir.clone(),
        streams,
        views: config.view_definitions(),
        segment_bytes: config.wal.segment_bytes,
        quotas: config.quotas.settings(),
        detectors: config.anomalies.clone(),
        archive: archive.clone().map(|a| a as Arc<dyn weir_engine::archive::ArchiveSource>),
        workers: config.workers,
    })
    .await
    .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?;
    let engine = Arc::new(engine);
    tracing::info!(events = engine.recovered_events(), data_dir = %config.data_dir.display(), "recovered");

    let listener = tokio::net::TcpListener::bind(&config.http).await.with_context(|| format!("listening on {}", config.http))?;
    let address = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let alerting = crate::alerting::Alerting::start(engine.clone(), &config.alerting)?;
    let keys = crate::auth::Keys::new(&config.auth, &address)?;
    let background = Background::start()?;
    let archiver = match (&archive, engine.take_archive_feed()) {
        (Some(archive), Some(feed)) => {
            let every = weir_engine::time::parse_duration_ms(config.archive.interval.as_deref().unwrap_or("5s"))?.max(10);
            let run = archive.clone().run(feed, engine.archive_progress().clone(), std::time::Duration::from_millis(every as u64), config.archive.compact_after, stop_rx.clone());
            let writer = background.handle().spawn(run);
            Some(tokio::spawn(async move {
                if let Err(e) = writer.await
                    && !e.is_cancelled()
                {
                    tracing::error!(error = %e, "the archive writer stopped: nothing more is archived and the log is no longer truncated until Weir restarts");
                }
            }))
        }
        _ => None,
    };
    let interval = weir_engine::time::parse_duration_ms(config.snapshot.interval.as_deref().unwrap_or("10s"))?;
    if interval > 0 {
        let (engine, lake, mut stopping) = (engine.clone(), lake.clone(), stop_rx.clone());
        background.handle().spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval as u64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.wait_for(|s| *s) => return,
                }
                // a failed snapshot is retried at the next tick; ingest never waits for it
                if let Err(e) = snapshot(&engine, &lake).await {
                    tracing::warn!(error = %format!("{e:#}"), "snapshot failed; retrying at the next interval");
                }
            }
        });
    }
    let state = AppState { engine: engine.clone(), alerting, lake, archive, config: Arc::new(config), shutdown: stop_rx.clone() };
    let mut stopping = stop_rx;
    let server = tokio::spawn(
        axum::serve(listener, router(state, keys))
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    tracing::info!(%address, "serving the HTTP API");
    Ok(Running { address, engine, stop, server, archiver, _background: background })
}

impl Running {
    /// A receiver that turns true when the server starts shutting down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops accepting, ends open streams, waits for requests in flight, stops the engine.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await.context("the HTTP server task failed")?.context("serving HTTP")?;
        self.engine.shutdown();
        if let Some(archiver) = self.archiver {
            // a last append of what is pending; what does not make it stays in the log
            if tokio::time::timeout(std::time::Duration::from_secs(10), archiver).await.is_err() {
                tracing::warn!("the archive's last append did not finish; the log keeps those events");
            }
        }
        Ok(())
    }
}

/// Runs until `shutdown` resolves. With `demo_rate`, also runs the demo generator.
pub async fn run(config: Config, demo_rate: Option<u32>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    if let Some(rate) = demo_rate {
        crate::demo::start(running.engine.clone(), rate, running.stopping()).await?;
    }
    // scripts and tests read this line to find the port
    println!("weir listening on http://{}", running.address);
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
