//! The whole example of the Python original in one process: a queue server and two workers
//! over loopback, for a bounded time, then a summary.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Uses `CRYPTO_KEY` when it is set and a fresh key otherwise. `DEMO_SECONDS`
//! (20) sets how long it runs; `DEMO_REQUEST_DELAY_MS` (300) and
//! `DEMO_PARSE_DELAY_MS` (700) pace the workers. It listens on a free port
//! of 127.0.0.1, whatever `STREAM_RPC_HOST` and `STREAM_RPC_PORT` say.

use stream_rpc::Caller;
use stream_rpc_example_queue as queue_server;
#[path = "shared/worker.rs"]
mod worker;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stream_rpc::{Config, Connector, Fernet, Timeouts, json, logging};
use stream_rpc_queue::TaskQueue;
use worker::{CheckingWorker, Worker, WorkerSettings, env_number};

const WORKERS: usize = 2;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let seconds = env_number("DEMO_SECONDS")?.unwrap_or(20);
    let settings = WorkerSettings::from_env(
        "DEMO",
        WorkerSettings {
            request_delay: Duration::from_millis(300),
            parse_delay: Duration::from_millis(700),
            max_requests: None,
        },
    )?;
    let (key, generated) = match std::env::var("CRYPTO_KEY") {
        Ok(key) if !key.trim().is_empty() => (key, false),
        _ => (Fernet::generate_key().map_err(|e| e.to_string())?, true),
    };
    let mut timeouts = Timeouts::default();
    timeouts.shutdown_grace = settings.parse_delay + Duration::from_secs(1);
    let config = |port: u16| {
        Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(port)
            .timeouts(timeouts.clone())
            .build()
            .map_err(|e| e.to_string())
    };

    let server_config = config(0)?;
    let log_settings = logging::Settings::from_env().map_err(|e| e.to_string())?;
    logging::init(&log_settings).map_err(|e| e.to_string())?;
    if generated {
        tracing::info!("CRYPTO_KEY is not set: generated a fresh key for this demo");
    }
    let server = Connector::new(server_config)
        .bind()
        .await
        .map_err(|e| e.to_string())?;
    let port = server.local_addr().port();
    let stop_server = server.shutdown_handle();
    let queue = Arc::new(queue_server::QueueServer::default());
    let serving = tokio::spawn(server.serve(queue.clone()));

    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let connector = Connector::new(config(port)?);
        let worker = Worker::new(settings.clone()).with_stop(connector.shutdown_handle());
        worker.count_hello();
        let stats = worker.stats.clone();
        let stop = connector.shutdown_handle();
        let client = connector
            .connect(CheckingWorker(worker))
            .await
            .map_err(|e| e.to_string())?;
        client
            .notify("ping", json!(null))
            .await
            .map_err(|e| e.to_string())?;
        workers.push((client, stop, stats));
    }

    tracing::info!(
        "Demo running for {seconds} s: a server and {WORKERS} workers on 127.0.0.1:{port}"
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;

    let mut parsed = 0;
    for (client, stop, stats) in workers {
        stop.shutdown();
        client.join().await;
        parsed += stats.tasks_parsed.load(Ordering::Relaxed);
    }
    stop_server.shutdown();
    serving
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;

    let stats = &queue.stats;
    println!("Summary after {seconds} s with {WORKERS} workers:");
    println!(
        "  requests answered: {}",
        stats.answered.load(Ordering::Relaxed)
    );
    println!(
        "  tasks put:         {}",
        stats.tasks_put.load(Ordering::Relaxed)
    );
    println!(
        "  tasks handed out:  {}",
        stats.tasks_handed_out.load(Ordering::Relaxed)
    );
    println!("  tasks parsed:      {parsed}");
    println!(
        "  tasks saved:       {}",
        stats.tasks_saved.load(Ordering::Relaxed)
    );
    // A task handed out and not saved when the workers stopped is still
    // leased: it is counted as handed out, not as queued.
    let left = queue.queue().stats().await.map_err(|e| e.to_string())?;
    println!("  tasks left queued: {}", left.queued);
    println!("  tasks leased:      {}", left.leased);
    Ok(())
}
