//! The seed's worker: says hello with `ping`, then on every answer sends its
//! next request (a task every second request, a request for a task every
//! fifth), and parses the tasks it gets.
//!
//! ```text
//! export CRYPTO_KEY=...   # the server's key
//! cargo run --example worker
//! ```
//!
//! Settings: the server's `CRYPTO_KEY`, `STREAM_RPC_HOST`, `STREAM_RPC_PORT`
//! and `STREAM_RPC_LOG_LVL`, plus `WORKER_REQUEST_DELAY_MS` (2000),
//! `WORKER_PARSE_DELAY_MS` (5000), `WORKER_MAX_REQUESTS` (unlimited) and
//! `WORKER_IDLE_TIMEOUT_MS` (30000: how long to wait for an answer).
//! Stops gracefully on Ctrl-C or SIGTERM; exits non-zero when the server is
//! unreachable, goes away, or never answers.

#[path = "shared/worker.rs"]
mod worker;

use std::process::ExitCode;
use std::time::Duration;

use stream_rpc::{ConfigBuilder, Connector, EndReason, Error, Timeouts, json, logging};
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
    let mut timeouts = Timeouts::default();
    timeouts.idle = Some(Duration::from_millis(idle.max(1)));
    let config = ConfigBuilder::from_env()
        .and_then(|builder| builder.timeouts(timeouts).build())
        .map_err(|e| e.to_string())?;
    logging::init(&config).map_err(|e| e.to_string())?;

    let worker = Worker::new(settings);
    worker.count_hello();
    let stats = worker.stats.clone();
    let end = Connector::new(config)
        .run_client(CheckingWorker(worker), "ping", json!(null))
        .await;
    let done = || {
        tracing::info!(
            "Worker stopped: {} requests, {} tasks put, {} tasks parsed",
            stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            stats.tasks_put.load(std::sync::atomic::Ordering::Relaxed),
            stats
                .tasks_parsed
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    };
    match end {
        Ok(EndReason::Closed | EndReason::Shutdown) => {
            done();
            Ok(ExitCode::SUCCESS)
        }
        Ok(EndReason::IdleTimeout) => {
            done();
            Err(format!(
                "no answer from the server for {idle} ms: is CRYPTO_KEY the same on both sides?"
            ))
        }
        Ok(other) => {
            done();
            Err(format!("the connection ended: {other}"))
        }
        Err(e @ Error::Unreachable { .. }) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}
