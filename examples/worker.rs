//! The example worker (the Python original's): says hello with `ping`, then on every answer sends its
//! next request (a task every second request, a request for a task every
//! fifth), parses the tasks it gets and saves each parsed article with the
//! server (`save_parsed_article`), which acknowledges the task.
//!
//! ```text
//! export CRYPTO_KEY=...   # the server's key
//! cargo run --example worker
//! ```
//!
//! Settings: the server's `CRYPTO_KEY`, `STREAM_RPC_HOST`, `STREAM_RPC_PORT`
//! and `STREAM_RPC_LOG_LVL`; `STREAM_RPC_SERVERS=host:port,host:port` to
//! fail over between several servers (in turn, with backoff, resuming the
//! conversation with a new hello); plus `WORKER_REQUEST_DELAY_MS` (2000),
//! `WORKER_PARSE_DELAY_MS` (5000), `WORKER_MAX_REQUESTS` (unlimited),
//! `WORKER_IDLE_TIMEOUT_MS` (30000: how long to wait for an answer) and
//! `WORKER_CONNECT_ATTEMPTS` (3: failed connections in a row before it gives
//! up). Stops gracefully on Ctrl-C or SIGTERM; exits non-zero when no
//! server is reachable or none ever answers.

#[path = "shared/worker.rs"]
mod worker;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stream_rpc::env::{ENV_SERVERS, parse_servers};
use stream_rpc::{ConfigBuilder, Connector, Error, Reconnect, Timeouts, json, logging};
use worker::{CheckingWorker, Worker, WorkerSettings, env_number};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, String> {
    let settings = WorkerSettings::from_env("WORKER", WorkerSettings::default())?;
    let idle = env_number("WORKER_IDLE_TIMEOUT_MS")?.unwrap_or(30_000);
    let attempts = env_number("WORKER_CONNECT_ATTEMPTS")?.unwrap_or(3).max(1);
    let servers = match std::env::var(ENV_SERVERS) {
        Ok(list) if !list.trim().is_empty() => parse_servers(&list).map_err(|e| e.to_string())?,
        _ => Vec::new(),
    };
    let timeouts = Timeouts::default().with_idle(Some(Duration::from_millis(idle.max(1))));
    let config = ConfigBuilder::from_env()
        .and_then(|builder| builder.timeouts(timeouts).build())
        .map_err(|e| e.to_string())?;
    logging::Settings::from_env()
        .map_err(|e| e.to_string())
        .and_then(|settings| logging::init(&settings).map_err(|e| e.to_string()))?;

    let connector = Connector::new(config);
    let worker = Worker::new(settings).with_stop(connector.shutdown_handle());
    worker.count_hello();
    let stats = worker.stats.clone();
    // Every new connection says hello, so the conversation goes on with
    // whichever server it reaches.
    let reconnect = Reconnect::default()
        .hello("ping", json!(null))
        .with_max_delay(Duration::from_secs(5))
        .with_max_attempts(Some(u32::try_from(attempts).unwrap_or(u32::MAX)))
        .with_servers(servers);
    connector
        .shutdown_handle()
        .shutdown_on(stream_rpc::shutdown_signal());
    let client = connector
        .connect_reconnecting(CheckingWorker(worker), reconnect)
        .map_err(|e| e.to_string())?;
    let end = client.join().await;
    tracing::info!("{}", stats.summary());
    match end {
        // Done (its request limit) or stopped by a signal.
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ Error::Unreachable { .. }) => Err(e.to_string()),
        Err(_) if stats.answers.load(Ordering::Relaxed) == 0 => Err(format!(
            "no answer from the server for {idle} ms: is CRYPTO_KEY the same on both sides?"
        )),
        Err(e) => Err(format!(
            "gave up after {attempts} failed connections in a row: {e}"
        )),
    }
}
