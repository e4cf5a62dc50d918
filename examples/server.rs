//! The example server (the Python original's): `ping` answers `pong`, `put_in_queue` stores a task,
//! `get_task_from_queue` hands the oldest task back unchanged.
//!
//! ```text
//! export CRYPTO_KEY=$(cargo run -q --example keygen)
//! cargo run --example server
//! ```
//!
//! Settings: `CRYPTO_KEY`, `STREAM_RPC_HOST` (0.0.0.0), `STREAM_RPC_PORT`
//! (8888; 0 picks a free port, shown in the log), `STREAM_RPC_LOG_LVL`
//! (INFO); the queue: `STREAM_RPC_QUEUE` (`memory`, or `redis://host:port`
//! to share one queue between servers), `STREAM_RPC_QUEUE_LEASE_SECS` (30),
//! `STREAM_RPC_QUEUE_MAX_ATTEMPTS` (5), `STREAM_RPC_QUEUE_MAX_TASKS`
//! (100000), `STREAM_RPC_QUEUE_MAX_RESULT_BYTES` (1 MiB); replay protection:
//! `STREAM_RPC_REPLAY` (`auto`: shared through the queue's Redis when the
//! queue is on Redis, so that a token accepted by one server is refused by
//! all; `local` keeps it in this server, with a warning). Stops gracefully
//! on Ctrl-C or SIGTERM.

use stream_rpc_example_queue as queue_server;

use std::process::ExitCode;
use std::sync::Arc;

use stream_rpc::{Config, Connector, Endpoint, logging};
use stream_rpc_queue::{QueueConfig, ReplaySharing, TaskQueue, replay_store_for};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logs = logging::Settings::from_env()
        .map_err(|e| e.to_string())
        .and_then(|settings| logging::init(&settings).map_err(|e| e.to_string()));
    if let Err(e) = logs {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let (queue_config, sharing) =
        match QueueConfig::from_env().and_then(|queue| Ok((queue, ReplaySharing::from_env()?))) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
    let queue = match queue_config.open().await {
        Ok(queue) => queue,
        Err(e) => {
            tracing::error!("the task queue: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut endpoint = Endpoint::builder(config.clone());
    match replay_store_for(&queue_config, sharing, &config).await {
        Ok(Some(store)) => endpoint = endpoint.replay_store(Arc::new(store)),
        Ok(None) => {}
        Err(e) => {
            tracing::error!("the replay store: {e}");
            return ExitCode::FAILURE;
        }
    }
    let server = Arc::new(queue_server::QueueServer::new(queue, queue_config.lease));
    let connector = Connector::with_endpoint(endpoint.build());
    match connector.run_server(server.clone()).await {
        Ok(()) => {
            // A queue in memory goes with the process: say what is lost.
            if !server.queue().is_shared()
                && let Ok(stats) = server.queue().stats().await
                && stats.queued + stats.leased > 0
            {
                tracing::warn!(
                    "stopped with {} tasks still queued or being worked on; they are not kept (set STREAM_RPC_QUEUE to a Redis URL to keep them)",
                    stats.queued + stats.leased
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
