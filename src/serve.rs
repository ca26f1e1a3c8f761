//! `weir serve`: open the engine, serve HTTP, stop cleanly on SIGINT or SIGTERM.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use weir_engine::{Engine, EngineConfig};

use crate::config::Config;
use crate::server::{router, AppState};

/// Runs until `shutdown` resolves. With `demo_rate`, also runs the demo generator.
pub async fn run(config: Config, demo_rate: Option<u32>, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let streams = config.streams()?;
    let engine = Engine::open(EngineConfig { data_dir: config.data_dir.clone(), streams, views: config.view_definitions() })
        .await
        .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?;
    let engine = Arc::new(engine);
    tracing::info!(events = engine.recovered_events(), data_dir = %config.data_dir.display(), "recovered");

    let listener = tokio::net::TcpListener::bind(&config.http).await.with_context(|| format!("listening on {}", config.http))?;
    let address = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState { engine: engine.clone(), config: Arc::new(config), shutdown: stop_rx.clone() };

    if let Some(rate) = demo_rate {
        crate::demo::start(engine.clone(), rate, stop_rx.clone()).await?;
    }
    // scripts and tests read this line to find the port
    println!("weir listening on http://{address}");
    tracing::info!(%address, "serving the HTTP API");

    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    server.await.context("serving HTTP")?;
    engine.shutdown();
    Ok(())
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
