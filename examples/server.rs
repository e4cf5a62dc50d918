//! The seed's server: `ping` answers `pong`, `put_in_queue` stores a task,
//! `get_task_from_queue` hands the oldest task back unchanged.
//!
//! ```text
//! export CRYPTO_KEY=$(cargo run -q --example keygen)
//! cargo run --example server
//! ```
//!
//! Settings: `CRYPTO_KEY`, `STREAM_RPC_HOST` (0.0.0.0), `STREAM_RPC_PORT`
//! (8888; 0 picks a free port, shown in the log), `STREAM_RPC_LOG_LVL`
//! (INFO). Stops gracefully on Ctrl-C or SIGTERM.

#[path = "shared/queue_server.rs"]
mod queue_server;

use std::process::ExitCode;
use std::sync::Arc;

use stream_rpc::{Config, Connector, logging};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = logging::init(&config) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let queue = Arc::new(queue_server::QueueServer::default());
    match Connector::new(config).run_server(queue.clone()).await {
        Ok(()) => {
            // The queue lives in memory: say what is left when it goes.
            let left = queue.queued_tasks().len();
            if left > 0 {
                tracing::warn!("stopped with {left} tasks still queued; they are not kept");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
