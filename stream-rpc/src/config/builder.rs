//! [`ConfigBuilder`]: every setting from the environment or from code,
//! checked once at [`build`](ConfigBuilder::build).

use std::env::VarError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::env::{self, ENV_HOST, ENV_KEY, ENV_MAX_CONNECTIONS_PER_IP, ENV_PORT};
use super::{Config, ConfigError, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TOKEN_TTL, Limits};
use super::{MAX_CONNECTIONS_LIMIT, Timeouts};
use crate::cipher::{Cipher, Fernet};
use crate::codec::DEFAULT_TERMINATOR;

/// The longest frame terminator.
pub const MAX_TERMINATOR_LEN: usize = 16;

/// A value and where it came from, so that an error names the environment
/// variable or the builder setting that gave it.
#[derive(Clone)]
struct Sourced<T> {
    value: T,
    /// The environment variable, or the builder method.
    from: &'static str,
}

/// The cipher, and how long its tokens live.
type Sealing = (Arc<dyn Cipher>, Option<Duration>);

/// Builds a [`Config`]; every setting can be given in code.
///
/// ```
/// use stream_rpc::{Config, Fernet, Limits};
///
/// let config = Config::builder()
///     .key(Fernet::generate_key()?)
///     .host("127.0.0.1")
///     .port(9000)
///     .limits(Limits::default().with_max_connections(100))
///     .build()?;
/// assert_eq!(config.port(), 9000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct ConfigBuilder {
    host: Option<Sourced<String>>,
    port: Option<u16>,
    terminator: Option<Vec<u8>>,
    /// Wiped when the builder is dropped.
    key: Option<Sourced<Zeroizing<String>>>,
    token_ttl: Option<Option<Duration>>,
    cipher: Option<Arc<dyn Cipher>>,
    limits: Option<Limits>,
    timeouts: Option<Timeouts>,
    replay_protection: Option<bool>,
    /// `STREAM_RPC_MAX_CONNECTIONS_PER_IP`, applied to the limits at
    /// [`build`](Self::build) unless [`limits`](Self::limits) were given.
    env_max_connections_per_ip: Option<usize>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("host", &self.host.as_ref().map(|host| &host.value))
            .field("port", &self.port)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl ConfigBuilder {
    /// A builder holding what the process environment says.
    pub fn from_env() -> Result<ConfigBuilder, ConfigError> {
        ConfigBuilder::from_lookup(|name| std::env::var(name))
    }

    /// A builder holding what `lookup` says of the environment variables;
    /// [`ConfigBuilder::from_env`] passes `std::env::var`. Useful in tests and
    /// for settings kept somewhere else than the process environment.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Result<String, VarError>,
    ) -> Result<ConfigBuilder, ConfigError> {
        let read = |name| env::read(&lookup, name);
        let mut builder = ConfigBuilder {
            key: read(ENV_KEY)?.map(|key| Sourced {
                value: Zeroizing::new(key),
                from: ENV_KEY,
            }),
            host: read(ENV_HOST)?.map(|host| Sourced {
                value: host.trim().to_owned(),
                from: ENV_HOST,
            }),
            ..ConfigBuilder::default()
        };
        if let Some(port) = read(ENV_PORT)? {
            builder.port = Some(port.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    ENV_PORT,
                    format!("expected a port number from 0 to 65535, got {port:?}"),
                )
            })?);
        }
        if let Some(cap) = read(ENV_MAX_CONNECTIONS_PER_IP)? {
            let cap = cap
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|cap| (1..=MAX_CONNECTIONS_LIMIT).contains(cap))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        ENV_MAX_CONNECTIONS_PER_IP,
                        format!(
                            "expected a number of connections from 1 to {MAX_CONNECTIONS_LIMIT}, got {cap:?}"
                        ),
                    )
                })?;
            builder.env_max_connections_per_ip = Some(cap);
        }
        Ok(builder)
    }

    /// The host to listen on or connect to (a name, or an IPv4 or IPv6
    /// address; `0.0.0.0` by default). A client connects to `127.0.0.1` for
    /// `0.0.0.0` and to `::1` for `::` (see
    /// [`env::connect_host`](crate::env::connect_host)).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(Sourced {
            value: host.into(),
            from: "host",
        });
        self
    }
    /// The port; 0 lets a server pick a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// The frame terminator (`\n` by default). It may not be empty, longer
    /// than [`MAX_TERMINATOR_LEN`] bytes, or use characters of URL-safe
    /// base64.
    pub fn terminator(mut self, terminator: impl Into<Vec<u8>>) -> Self {
        self.terminator = Some(terminator.into());
        self
    }
    /// The Fernet key, or several separated by commas, like `CRYPTO_KEY`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(Sourced {
            value: Zeroizing::new(key.into()),
            from: "key",
        });
        self
    }
    /// How old a Fernet token may be when it arrives (default 5 min);
    /// `None` accepts any age. Ignored with a [`cipher`](Self::cipher),
    /// a [`Fernet`] one included (its own time to live applies).
    pub fn token_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.token_ttl = Some(ttl);
        self
    }
    /// A custom cipher instead of Fernet; the key is then not needed. A
    /// [`Fernet`] given here is recognised: its own time to live applies
    /// (5 min from [`Fernet::new`]), and it takes Fernet's paths (tokens'
    /// times for the replay cache, sealing in batches).
    pub fn cipher(mut self, cipher: Arc<dyn Cipher>) -> Self {
        self.cipher = Some(cipher);
        self
    }
    /// The limits this builder holds so far: those given to
    /// [`limits`](Self::limits), else the defaults with what the
    /// environment set (`STREAM_RPC_MAX_CONNECTIONS_PER_IP`). Start from
    /// these to change a few limits and keep the environment's.
    pub fn current_limits(&self) -> Limits {
        self.limits.clone().unwrap_or_else(|| {
            let mut limits = Limits::default();
            if let Some(cap) = self.env_max_connections_per_ip {
                limits.max_connections_per_ip = cap;
            }
            limits
        })
    }
    /// Resource bounds, replacing all of them (the environment's
    /// `STREAM_RPC_MAX_CONNECTIONS_PER_IP` included: start from
    /// [`current_limits`](Self::current_limits) to keep it).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }
    /// Deadlines.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = Some(timeouts);
        self
    }
    /// Whether each token is accepted at most once (on by default): a token
    /// received before is refused as a replay, one this endpoint sent as a
    /// reflection, on any connection of the same
    /// [`Endpoint`](crate::Endpoint). Each endpoint has its own cache, so
    /// endpoints made from one `Config` accept each other's tokens.
    pub fn replay_protection(mut self, on: bool) -> Self {
        self.replay_protection = Some(on);
        self
    }

    /// Checks every setting and builds the [`Config`]. An error names the
    /// environment variable a bad value came from, or the builder setting
    /// when it was given in code.
    pub fn build(self) -> Result<Config, ConfigError> {
        let limits = self.current_limits();
        limits.check()?;
        let host = self.host.clone().unwrap_or(Sourced {
            value: DEFAULT_HOST.to_owned(),
            from: "host",
        });
        if host.value.is_empty() || host.value.chars().any(char::is_whitespace) {
            return Err(ConfigError::invalid(
                host.from,
                format!("expected a host name or IP address, got {:?}", host.value),
            ));
        }
        let terminator = self
            .terminator
            .clone()
            .unwrap_or_else(|| DEFAULT_TERMINATOR.to_vec());
        check_terminator(&terminator)?;
        let timeouts = self.timeouts.clone().unwrap_or_default();
        timeouts.check()?;
        let port = self.port.unwrap_or(DEFAULT_PORT);
        let replay_protection = self.replay_protection.unwrap_or(true);
        let (cipher, replay_ttl) = self.sealing()?;
        Ok(Config {
            host: host.value,
            port,
            terminator: terminator.into(),
            cipher,
            limits,
            timeouts,
            replay_protection,
            replay_ttl,
        })
    }

    /// The cipher, and how long its tokens live.
    fn sealing(self) -> Result<Sealing, ConfigError> {
        match (self.cipher, self.key) {
            // A cipher given whole tells its tokens' time to live (a
            // custom one by default none: the cache is then bounded by its
            // size alone).
            (Some(cipher), _) => {
                let ttl = cipher.time_to_live();
                Ok((cipher, ttl))
            }
            (None, Some(key)) if key.value.trim().is_empty() => Err(ConfigError::MissingKey),
            (None, Some(key)) => {
                let ttl = self.token_ttl.unwrap_or(Some(DEFAULT_TOKEN_TTL));
                let fernet = Fernet::new(&key.value)
                    .map_err(|e| ConfigError::invalid(key.from, e.to_string()))?
                    .with_ttl(ttl);
                Ok((Arc::new(fernet), ttl))
            }
            (None, None) => Err(ConfigError::MissingKey),
        }
    }
}

fn check_terminator(terminator: &[u8]) -> Result<(), ConfigError> {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=');
    if terminator.is_empty() || terminator.len() > MAX_TERMINATOR_LEN {
        return Err(ConfigError::invalid(
            "terminator",
            format!("it must be 1 to {MAX_TERMINATOR_LEN} bytes long"),
        ));
    }
    if terminator.iter().any(base64) {
        return Err(ConfigError::invalid(
            "terminator",
            "it may not contain letters, digits, `-`, `_` or `=`, which appear in tokens",
        ));
    }
    Ok(())
}
