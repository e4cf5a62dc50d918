//! Serves the `Kv` service of `examples/kv-api` from an in-memory map. The
//! trait comes from that crate; this program holds the implementation.
//!
//! ```text
//! export CRYPTO_KEY=$(cargo run -q --example keygen)
//! cargo run --example kv_server          # terminal 1
//! cargo run --example kv_client          # terminal 2
//! ```
//!
//! Settings as for the `server` example. Stops gracefully on Ctrl-C or SIGTERM.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Mutex;

use stream_rpc::{Config, Connector, logging};
use stream_rpc_example_kv::{Kv, KvError, KvServer};

/// The values, in memory.
#[derive(Default)]
struct MemoryKv {
    values: Mutex<HashMap<String, String>>,
}

impl MemoryKv {
    fn values(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Kv for MemoryKv {
    async fn set(&self, key: String, value: String) {
        self.values().insert(key, value);
    }

    async fn get(&self, key: String) -> Option<String> {
        self.values().get(&key).cloned()
    }

    async fn take(&self, key: String) -> Result<String, KvError> {
        self.values().remove(&key).ok_or(KvError::Missing(key))
    }

    async fn count(&self) -> usize {
        self.values().len()
    }
}

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
    let server = KvServer::new(MemoryKv::default());
    match Connector::new(config).run_server(server).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
