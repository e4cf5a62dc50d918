//! The definition of a small key-value service, and nothing else: the
//! `#[stream_rpc::service]` trait generates the typed client
//! ([`KvClient`]), the server that serves any implementation
//! ([`KvServer`]) and the wire names, so a client program links this crate
//! and never the server's code.

use serde::{Deserialize, Serialize};

/// Why `take` failed; it travels to the caller as itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// No value is stored under the key.
    #[error("no value under `{0}`")]
    Missing(String),
}

/// A key-value store.
#[stream_rpc::service]
pub trait Kv {
    /// Stores `value` under `key`; a notification, nothing comes back.
    async fn set(&self, key: String, value: String);

    /// The value under `key`, if any.
    async fn get(&self, key: String) -> Option<String>;

    /// Removes the value under `key` and returns it.
    async fn take(&self, key: String) -> Result<String, KvError>;

    /// How many values are stored.
    #[stream_rpc(rename = "kv.count")]
    async fn count(&self) -> usize;
}
