//! Settings of a server or client: read from the environment, overridable
//! in code. Logging is set apart, in [`logging`](crate::logging).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CRYPTO_KEY` | required | Fernet key, or several separated by commas |
//! | `STREAM_RPC_HOST` | `0.0.0.0` | address to listen on or connect to (a client connects to `127.0.0.1` for `0.0.0.0`) |
//! | `STREAM_RPC_PORT` | `8888` | port to listen on or connect to |
//! | `STREAM_RPC_MAX_CONNECTIONS_PER_IP` | `64` | connections a server serves at once from one remote IP address (1 to 1,048,576) |
//!
//! Everything else (terminator, cipher, limits, timeouts, replay
//! protection) is set through [`ConfigBuilder`]. A `Config` is plain data,
//! cheap to clone and safe to share: the peer id and the replay cache
//! belong to the [`Endpoint`](crate::Endpoint) that runs on it.
//!
//! The files: `env.rs` the variables and defaults, `limits.rs` and
//! `timeouts.rs` the bounds and their checks, `builder.rs` the builder,
//! `servers.rs` the reader of server lists.

mod builder;
mod env;
mod limits;
mod servers;
#[cfg(test)]
mod tests;
mod timeouts;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use builder::{ConfigBuilder, MAX_TERMINATOR_LEN};
pub(crate) use env::read as read_env;
pub use env::{
    DEFAULT_CONNECT_HOST, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TOKEN_TTL, ENV_HOST, ENV_KEY,
    ENV_LOG_LEVEL, ENV_LOG_PACKETS, ENV_MAX_CONNECTIONS_PER_IP, ENV_PORT, ENV_SERVERS,
    connect_host,
};
pub use limits::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP, Limits, MAX_CONNECTIONS_LIMIT,
    MAX_FRAME_LEN_LIMIT, MAX_OUTBOX_BYTES_LIMIT, MAX_PER_CONNECTION_LIMIT,
    MAX_REPLAY_CACHE_ENTRIES, MIN_FRAME_LEN,
};
pub use servers::parse_servers;
pub use timeouts::Timeouts;

/// Where the engine looked for the packet log setting before it moved to
/// [`logging`](crate::logging).
use crate::cipher::Cipher;

/// A setting that could not be used. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No key was given, in the environment or in code.
    #[error(
        "CRYPTO_KEY is not set: generate a key with `stream-rpc keygen` \
         (or `cargo run --example keygen`, or Python's \
         `cryptography.fernet.Fernet.generate_key()`) and export it, \
         e.g. `export CRYPTO_KEY=...`"
    )]
    MissingKey,
    /// A setting has a value that cannot be used.
    #[error("{setting} is not valid: {reason}")]
    Invalid {
        /// The environment variable or builder setting at fault.
        setting: &'static str,
        /// What is wrong and what was expected.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            reason: reason.into(),
        }
    }
}

/// Writes `with_*` builder methods for the named fields of a settings
/// struct, so that users outside the crate can build one in one expression
/// (the structs are `#[non_exhaustive]`).
macro_rules! with_setters_impl {
    ($ty:ident { $($(#[$doc:meta])* $setter:ident => $field:ident: $value:ty),* $(,)? }) => {
        impl $ty {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $setter(mut self, $field: $value) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}
pub(crate) use with_setters_impl as with_setters;

/// All settings of a server or client. Build one with [`Config::from_env`]
/// or [`Config::builder`].
///
/// Plain settings: cloning one is cheap and two [`Connector`](crate::Connector)s
/// made from clones of one `Config` are two independent endpoints, each with
/// its own peer id and replay cache. Logging is not here: see
/// [`logging::Settings`](crate::logging::Settings).
///
/// ```
/// use stream_rpc::{Config, Fernet};
///
/// let config = Config::builder().key(Fernet::generate_key()?).build()?;
/// assert_eq!((config.host(), config.port()), ("0.0.0.0", 8888));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) terminator: Box<[u8]>,
    pub(crate) cipher: Arc<dyn Cipher>,
    pub(crate) limits: Limits,
    pub(crate) timeouts: Timeouts,
    /// Whether each endpoint keeps a replay and reflection cache.
    pub(crate) replay_protection: bool,
    /// How long the replay cache must remember a token: the Fernet TTL, or
    /// `None` (bounded by size alone) for a custom cipher or no TTL.
    pub(crate) replay_ttl: Option<Duration>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("terminator", &String::from_utf8_lossy(&self.terminator))
            .field("cipher", &self.cipher)
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .field("replay_protection", &self.replay_protection)
            .finish()
    }
}

impl Config {
    /// The same configuration sealing through a recording Fernet, for the
    /// session's tests.
    #[cfg(test)]
    pub(crate) fn with_recording(mut self, recording: Arc<crate::cipher::Recording>) -> Config {
        self.cipher = recording;
        self
    }

    /// Reads the environment (see the module docs) with every other setting
    /// at its default.
    pub fn from_env() -> Result<Config, ConfigError> {
        ConfigBuilder::from_env()?.build()
    }

    /// A builder with defaults and no key; set one with
    /// [`ConfigBuilder::key`] or [`ConfigBuilder::cipher`].
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The host to listen on, or to connect to (where an unspecified
    /// address stands for this machine: see [`connect_host`]).
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The port to listen on or connect to.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The frame terminator.
    pub fn terminator(&self) -> &[u8] {
        &self.terminator
    }
    /// The cipher that seals every packet.
    pub fn cipher(&self) -> &Arc<dyn Cipher> {
        &self.cipher
    }
    /// Whether endpoints on this configuration refuse replayed and
    /// reflected tokens.
    pub fn replay_protection(&self) -> bool {
        self.replay_protection
    }
    /// How long a token lives once sealed, as this configuration opens
    /// them: the Fernet time to live ([`DEFAULT_TOKEN_TTL`] unless set);
    /// `None` when tokens never expire, or for a custom cipher, which says
    /// nothing of their age. A replay store shared by several endpoints
    /// remembers tokens this long, plus the clock skew.
    pub fn token_ttl(&self) -> Option<Duration> {
        self.replay_ttl
    }
    /// Resource bounds.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// Deadlines.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }
}
