//! `weir`: the command-line entry point. Parses flags, loads the configuration, runs.

mod alerting;
mod allocator;
mod auth;
mod bench;
mod config;
mod csv;
mod demo;
mod detect;
mod serve;
mod server;
mod sql;

#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};

/// Weir: a stream-processing dataflow engine for multi-tenant event analytics.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine and its HTTP API (data in ./weir-data, HTTP on 127.0.0.1:7070 by default).
    Serve(ServeArgs),
    /// Like `serve`, plus a built-in multi-tenant event generator and demo views.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Events per second the generator sends.
        #[arg(long, default_value_t = 500)]
        rate: u32,
    },
    /// Run benchmark workloads on the real engine and print their figures (build with --release).
    Bench {
        /// Workloads to run (default: all): engine-window, engine-hop, engine-distinct, engine-quota, engine-anomaly, ingest-http, freshness, recovery, nexmark-q0, -q1, -q2, -q5, -q7, -q4, -q8, snapshot (also reports sql), archive.
        workloads: Vec<String>,
        /// Events per workload (generated: 1,000 tenants × 20 kinds).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Dataflow workers.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Also write the results as a JSON array to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Use the events of this NDJSON file (the `events` envelope) instead of generated ones.
        #[arg(long, value_name = "FILE.ndjson")]
        input: Option<PathBuf>,
        /// Offered load of the freshness workload, events per second.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
    },
    /// Run SQL over a running Weir's live views (tables live.<view>) and print the result.
    Sql {
        /// The query, e.g. "SELECT tenant, sum(n) FROM live.per_minute GROUP BY tenant".
        sql: String,
        /// Weir's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "WEIR_URL")]
        url: String,
        /// table, csv or json.
        #[arg(long, value_enum, default_value = "table")]
        output: sql::Output,
    },
    /// Make a new API key: prints the key and the [[auth.keys]] entry (with its hash) to configure.
    Key {
        /// A name for the key, shown in logs.
        #[arg(long)]
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: auth::Role,
        /// The only tenant it may write and see.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Score a CSV time series (columns timestamp,value) with an anomaly detector run by the real engine.
    Detect {
        /// The series: a CSV file with a header naming `timestamp` and `value` columns.
        #[arg(long, value_name = "FILE.csv")]
        input: PathBuf,
        /// Where to write `timestamp,value,anomaly_score`, one line per input row.
        #[arg(long, value_name = "SCORES.csv")]
        output: PathBuf,
        /// Window length, e.g. 5m (default: the series' median sampling interval).
        #[arg(long)]
        window: Option<String>,
        /// zscore, mad or ewma.
        #[arg(long, default_value = "zscore")]
        method: String,
        /// Windows in the baseline.
        #[arg(long, default_value_t = 30)]
        baseline: usize,
        /// Deviation at which a window is flagged (score 0.5); default: the method's.
        #[arg(long)]
        threshold: Option<f64>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML). Every key can also be set as WEIR_<KEY> (nested keys joined by __).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (write-ahead log, catalog).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address for the HTTP API, e.g. 127.0.0.1:7070 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let overrides = Overrides { file: self.config.clone(), data_dir: self.data_dir.clone(), http: self.http.clone() };
        Config::load(&overrides, std::env::vars())
    }
}

fn main() -> anyhow::Result<()> {
    allocator::tune();
    let cli = Cli::parse();
    let (config, demo_rate) = match cli.command {
        Command::Serve(args) => (args.load()?, None),
        Command::Demo { serve, rate } => (serve.load()?, Some(rate)),
        Command::Bench { workloads, events, workers, json, input, rate } => {
            return bench::run(bench::BenchArgs { workloads, events, workers, json, input, rate });
        }
        Command::Sql { sql: query, url, output } => return sql::run(&url, &query, output),
        Command::Key { name, role, tenant } => {
            print!("{}", auth::new_key(&name, role, tenant.as_deref()));
            return Ok(());
        }
        Command::Detect { input, output, window, method, baseline, threshold } => {
            return detect::run(detect::DetectArgs { input, output, window, method, baseline, threshold });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve::run(config, demo_rate, serve::shutdown_signal()))
}
