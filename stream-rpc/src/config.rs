//! Settings: read from the environment like the seed, overridable in code.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CRYPTO_KEY` | required | Fernet key, or several separated by commas |
//! | `STREAM_RPC_HOST` | `0.0.0.0` | address to listen on or connect to |
//! | `STREAM_RPC_PORT` | `8888` | port to listen on or connect to |
//! | `STREAM_RPC_LOG_LVL` | `INFO` | `TRACE`, `DEBUG`, `INFO`, `WARNING`/`WARN`, `ERROR`, `CRITICAL` |
//! | `STREAM_RPC_LOG_PACKETS` | `headers` | `off`, `headers` or `full`: how much of each packet the `Send:`/`Received:` lines show |
//! | `STREAM_RPC_MAX_CONNECTIONS_PER_IP` | `64` | connections a server serves at once from one remote IP address (1 to 1,048,576) |
//!
//! Everything else (terminator, cipher, log format, limits, timeouts,
//! replay protection) is set through [`ConfigBuilder`]. A `Config` is plain
//! data, cheap to clone and safe to share: the peer id and the replay cache
//! belong to the [`Endpoint`](crate::Endpoint) that runs on it.

use std::env::VarError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::cipher::{Cipher, Fernet};
use crate::codec::{DEFAULT_MAX_FRAME_LEN, DEFAULT_TERMINATOR};

/// The environment variable holding the Fernet key(s).
pub const ENV_KEY: &str = "CRYPTO_KEY";
/// The environment variable holding the host.
pub const ENV_HOST: &str = "STREAM_RPC_HOST";
/// The environment variable holding the port.
pub const ENV_PORT: &str = "STREAM_RPC_PORT";
/// The environment variable holding the log level.
pub const ENV_LOG_LEVEL: &str = "STREAM_RPC_LOG_LVL";

/// The environment variable saying how much of each packet the `Send:` and
/// `Received:` log lines show: `off`, `headers` (the default) or `full`.
pub const ENV_LOG_PACKETS: &str = "STREAM_RPC_LOG_PACKETS";

/// The environment variable holding how many connections a server serves
/// at once from one remote IP address
/// ([`Limits::max_connections_per_ip`]).
pub const ENV_MAX_CONNECTIONS_PER_IP: &str = "STREAM_RPC_MAX_CONNECTIONS_PER_IP";

/// The environment variable holding a list of servers for clients that
/// fail over between them: `host:port,host:port` (see [`parse_servers`]).
pub const ENV_SERVERS: &str = "STREAM_RPC_SERVERS";

/// The default host: every IPv4 interface, as in the seed.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// The default port, as in the seed.
pub const DEFAULT_PORT: u16 = 8888;
/// The default of [`Limits::max_connections_per_ip`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// The largest connection limits (global and per address) a configuration
/// may ask for.
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

/// The default time to live of tokens.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// A setting that could not be used. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No key was given, in the environment or in code.
    #[error(
        "CRYPTO_KEY is not set: generate a key with `cargo run --example keygen` \
         (or Python's `cryptography.fernet.Fernet.generate_key()`) and export it, \
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

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// The seed's shape:
    /// `2024-05-01 12:00:00,123 - QueueServer - INFO - [peer] Received: {...}`.
    #[default]
    Seed,
    /// One JSON object per line, for log collectors.
    Json,
    /// `tracing-subscriber`'s own compact format.
    Compact,
}

/// How much of each packet the `Send:` and `Received:` log lines show. They
/// are logged at `INFO` with the target `stream_rpc::packets`, so a
/// subscriber's own filter can also turn them off or on by themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketLog {
    /// No packet lines.
    Off,
    /// The seed's lines without the payload: method, id, peer, time and
    /// correlation. The default: payloads stay out of logs.
    #[default]
    Headers,
    /// The seed's lines in full, payload included (cut at 512 bytes).
    Full,
}

impl std::str::FromStr for PacketLog {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(PacketLog::Off),
            "headers" => Ok(PacketLog::Headers),
            "full" => Ok(PacketLog::Full),
            _ => Err(ConfigError::invalid(
                ENV_LOG_PACKETS,
                format!("expected off, headers or full, got {text:?}"),
            )),
        }
    }
}

/// A log level, parsed from the seed's names or tracing's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub tracing::Level);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(tracing::Level::INFO)
    }
}

impl std::str::FromStr for LogLevel {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        use tracing::Level;
        let level = match text.trim().to_ascii_uppercase().as_str() {
            "TRACE" => Level::TRACE,
            "DEBUG" => Level::DEBUG,
            "INFO" => Level::INFO,
            "WARNING" | "WARN" => Level::WARN,
            "ERROR" | "CRITICAL" | "FATAL" => Level::ERROR,
            _ => {
                return Err(ConfigError::invalid(
                    ENV_LOG_LEVEL,
                    format!(
                        "expected one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL, got {text:?}"
                    ),
                ));
            }
        };
        Ok(LogLevel(level))
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

/// Bounds on what one process and one connection may hold.
///
/// Build one from the defaults in one expression:
///
/// ```
/// use stream_rpc::Limits;
///
/// let limits = Limits::default()
///     .with_max_frame_len(64 * 1024)
///     .with_max_connections(100);
/// assert_eq!(limits.max_connections, 100);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest frame read or written, terminator excluded (default 1 MiB).
    pub max_frame_len: usize,
    /// Connections a server serves at once; more are closed at once (1024,
    /// at most 1,048,576).
    pub max_connections: usize,
    /// Connections a server serves at once from one remote IP address (an
    /// IPv4-mapped IPv6 address counts as its IPv4 address); more are closed
    /// at once (64, at most 1,048,576; from
    /// `STREAM_RPC_MAX_CONNECTIONS_PER_IP`). Keeps one host from taking
    /// every slot of [`max_connections`](Self::max_connections).
    pub max_connections_per_ip: usize,
    /// Handlers running at once on one connection; a request beyond gets a
    /// `busy` error packet (256).
    pub max_concurrent_handlers: usize,
    /// Calls awaiting a reply at once on one session; more wait for a slot (1024).
    pub max_in_flight_calls: usize,
    /// Frames in a row that fail to decrypt (or are too long) before the
    /// connection is closed (3).
    pub max_bad_frames_in_row: u32,
    /// Frames queued for the writer before senders wait (1024).
    pub outgoing_queue: usize,
    /// Bytes queued for the writer before senders wait (4 MiB): with
    /// [`outgoing_queue`](Self::outgoing_queue), bounds what a peer that
    /// stops reading makes a connection hold. A message is queued whenever
    /// the queue is empty, even one larger than this; the writer holds at
    /// most one more such batch while it writes it. With Fernet the queue
    /// holds plaintexts, counted as such: their sealed frames, made as they
    /// are written, are about a third larger.
    pub max_outbox_bytes: usize,
    /// Token fingerprints (sent and received) the default replay store
    /// holds at most (4,194,304). Its tables start small and grow with the
    /// traffic, 16 bytes per entry, so this is a memory budget (64 MiB by
    /// default; at most 16,777,216 entries): below it the store remembers
    /// every token for its whole time to live plus the clock skew (360 s),
    /// which the default covers up to about 11,600 tokens a second; above
    /// it the store fails closed, refusing tokens older than what it still
    /// remembers (see [`MemoryReplayStore`](crate::MemoryReplayStore)). A
    /// burst that fills it in under two seconds may take it to twice this
    /// for those seconds, rather than refuse the tokens of this second.
    pub replay_cache_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_connections: 1024,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_concurrent_handlers: 256,
            max_in_flight_calls: 1024,
            max_bad_frames_in_row: 3,
            outgoing_queue: 1024,
            max_outbox_bytes: 4 << 20,
            replay_cache_entries: 1 << 22,
        }
    }
}

with_setters_impl!(Limits {
    /// Sets [`max_frame_len`](Self::max_frame_len).
    with_max_frame_len => max_frame_len: usize,
    /// Sets [`max_connections`](Self::max_connections).
    with_max_connections => max_connections: usize,
    /// Sets [`max_connections_per_ip`](Self::max_connections_per_ip).
    with_max_connections_per_ip => max_connections_per_ip: usize,
    /// Sets [`max_concurrent_handlers`](Self::max_concurrent_handlers).
    with_max_concurrent_handlers => max_concurrent_handlers: usize,
    /// Sets [`max_in_flight_calls`](Self::max_in_flight_calls).
    with_max_in_flight_calls => max_in_flight_calls: usize,
    /// Sets [`max_bad_frames_in_row`](Self::max_bad_frames_in_row).
    with_max_bad_frames_in_row => max_bad_frames_in_row: u32,
    /// Sets [`outgoing_queue`](Self::outgoing_queue).
    with_outgoing_queue => outgoing_queue: usize,
    /// Sets [`max_outbox_bytes`](Self::max_outbox_bytes).
    with_max_outbox_bytes => max_outbox_bytes: usize,
    /// Sets [`replay_cache_entries`](Self::replay_cache_entries).
    with_replay_cache_entries => replay_cache_entries: usize,
});

/// Deadlines that keep slow or silent peers from holding resources.
///
/// ```
/// use std::time::Duration;
/// use stream_rpc::Timeouts;
///
/// let timeouts = Timeouts::default()
///     .with_call(Duration::from_secs(5))
///     .with_idle(None);
/// assert_eq!(timeouts.idle, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// A new connection must send its first good frame (one that opens
    /// under the key and passes the replay check) within this (10 s);
    /// frames that do not open do not count.
    pub first_frame: Duration,
    /// A connection with no good frame received, no handler running and no
    /// call pending for this long is closed (5 min); `None` never closes
    /// it. Frames that do not open under the key do not restart it.
    pub idle: Option<Duration>,
    /// One write to the socket must finish within this (10 s).
    pub write: Duration,
    /// How long [`SessionHandle::call`](crate::SessionHandle::call) waits for a reply (30 s).
    pub call: Duration,
    /// How long a client waits for the TCP connection (10 s).
    pub connect: Duration,
    /// On shutdown, how long running handlers get to finish (10 s).
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_frame: Duration::from_secs(10),
            idle: Some(Duration::from_secs(300)),
            write: Duration::from_secs(10),
            call: Duration::from_secs(30),
            connect: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

with_setters_impl!(Timeouts {
    /// Sets [`first_frame`](Self::first_frame).
    with_first_frame => first_frame: Duration,
    /// Sets [`idle`](Self::idle); `None` never closes an idle connection.
    with_idle => idle: Option<Duration>,
    /// Sets [`write`](Self::write).
    with_write => write: Duration,
    /// Sets [`call`](Self::call).
    with_call => call: Duration,
    /// Sets [`connect`](Self::connect).
    with_connect => connect: Duration,
    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    with_shutdown_grace => shutdown_grace: Duration,
});

/// All settings of a server or client. Build one with [`Config::from_env`]
/// or [`Config::builder`].
///
/// Plain settings: cloning one is cheap and two [`Connector`](crate::Connector)s
/// made from clones of one `Config` are two independent endpoints, each with
/// its own peer id and replay cache.
#[derive(Clone)]
pub struct Config {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) terminator: Box<[u8]>,
    pub(crate) cipher: Arc<dyn Cipher>,
    pub(crate) log_level: LogLevel,
    pub(crate) log_format: LogFormat,
    pub(crate) log_packets: PacketLog,
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
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("log_packets", &self.log_packets)
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

    /// The host to listen on or connect to.
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
    /// The log level.
    pub fn log_level(&self) -> tracing::Level {
        self.log_level.0
    }
    /// The log format.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }
    /// How much of each packet the `Send:` and `Received:` lines show.
    pub fn log_packets(&self) -> PacketLog {
        self.log_packets
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

/// Builds a [`Config`]; every setting can be given in code.
#[derive(Default)]
pub struct ConfigBuilder {
    host: Option<String>,
    port: Option<u16>,
    terminator: Option<Vec<u8>>,
    /// Wiped when the builder is dropped.
    key: Option<Zeroizing<String>>,
    token_ttl: Option<Option<Duration>>,
    cipher: Option<Arc<dyn Cipher>>,
    log_level: Option<LogLevel>,
    log_format: Option<LogFormat>,
    log_packets: Option<PacketLog>,
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
            .field("host", &self.host)
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
        let read = |name: &'static str| match lookup(name) {
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Ok(Some(value)),
            Err(VarError::NotPresent) => Ok(None),
            Err(VarError::NotUnicode(_)) => {
                Err(ConfigError::invalid(name, "the value is not valid UTF-8"))
            }
        };
        let mut builder = ConfigBuilder {
            key: read(ENV_KEY)?.map(Zeroizing::new),
            host: read(ENV_HOST)?.map(|host| host.trim().to_owned()),
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
        if let Some(level) = read(ENV_LOG_LEVEL)? {
            builder.log_level = Some(level.parse()?);
        }
        if let Some(packets) = read(ENV_LOG_PACKETS)? {
            builder.log_packets = Some(packets.parse()?);
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

    /// The host to listen on or connect to (a name, or an IPv4 or IPv6 address).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
    /// The port; 0 lets a server pick a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// The frame terminator, like the seed's `STREAM_RPC_TERM`. It may not be
    /// empty, longer than 16 bytes, or use characters of URL-safe base64.
    pub fn terminator(mut self, terminator: impl Into<Vec<u8>>) -> Self {
        self.terminator = Some(terminator.into());
        self
    }
    /// The Fernet key, or several separated by commas, like `CRYPTO_KEY`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(Zeroizing::new(key.into()));
        self
    }
    /// How old a Fernet token may be when it arrives (default 5 min);
    /// `None` accepts any age. Ignored with a [`cipher`](Self::cipher),
    /// a [`Fernet`] one included (its own time to live applies).
    pub fn token_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.token_ttl = Some(ttl);
        self
    }
    /// A custom cipher instead of Fernet, like the seed's `STREAM_RPC_CYPHER`;
    /// the key is then not needed. A [`Fernet`] given here is recognised:
    /// its own time to live applies (5 min from [`Fernet::new`]), and it
    /// takes Fernet's paths (tokens' times for the replay cache, sealing in
    /// batches).
    pub fn cipher(mut self, cipher: Arc<dyn Cipher>) -> Self {
        self.cipher = Some(cipher);
        self
    }
    /// The log level.
    pub fn log_level(mut self, level: tracing::Level) -> Self {
        self.log_level = Some(LogLevel(level));
        self
    }
    /// The log format, like the seed's `STREAM_RPC_LOG_FMT`.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = Some(format);
        self
    }
    /// How much of each packet the `Send:` and `Received:` lines show, like
    /// `STREAM_RPC_LOG_PACKETS` (headers by default).
    pub fn log_packets(mut self, packets: PacketLog) -> Self {
        self.log_packets = Some(packets);
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

    /// Checks every setting and builds the [`Config`].
    pub fn build(self) -> Result<Config, ConfigError> {
        let limits = self.current_limits();
        let host = self.host.unwrap_or_else(|| DEFAULT_HOST.to_owned());
        if host.is_empty() || host.chars().any(char::is_whitespace) {
            return Err(ConfigError::invalid(
                ENV_HOST,
                format!("expected a host name or IP address, got {host:?}"),
            ));
        }
        let terminator = self
            .terminator
            .unwrap_or_else(|| DEFAULT_TERMINATOR.to_vec());
        check_terminator(&terminator)?;
        check_limits(&limits)?;
        let timeouts = self.timeouts.unwrap_or_default();
        check_timeouts(&timeouts)?;
        let (cipher, ttl): (Arc<dyn Cipher>, Option<Duration>) =
            match (self.cipher, self.key.as_deref()) {
                // A cipher given whole tells its tokens' time to live (a
                // custom one by default none: the cache is then bounded by
                // its size alone).
                (Some(cipher), _) => {
                    let ttl = cipher.time_to_live();
                    (cipher, ttl)
                }
                (None, Some(key)) => {
                    let ttl = self.token_ttl.unwrap_or(Some(DEFAULT_TOKEN_TTL));
                    let fernet = Fernet::new(key)
                        .map_err(|e| ConfigError::invalid(ENV_KEY, e.to_string()))?
                        .with_ttl(ttl);
                    (Arc::new(fernet), ttl)
                }
                (None, None) => return Err(ConfigError::MissingKey),
            };
        Ok(Config {
            host,
            port: self.port.unwrap_or(DEFAULT_PORT),
            terminator: terminator.into(),
            cipher,
            log_level: self.log_level.unwrap_or_default(),
            log_format: self.log_format.unwrap_or_default(),
            log_packets: self.log_packets.unwrap_or_default(),
            limits,
            timeouts,
            replay_protection: self.replay_protection.unwrap_or(true),
            replay_ttl: ttl,
        })
    }
}

/// Reads a list of servers, `host:port` separated by commas (an IPv6
/// address in brackets: `[::1]:8888`), as [`ENV_SERVERS`] holds it, for
/// [`Reconnect::with_servers`](crate::Reconnect::with_servers). Blanks
/// around entries are ignored; an empty list, an empty entry, a missing or
/// bad port is an error naming [`ENV_SERVERS`].
///
/// ```
/// let servers = stream_rpc::env::parse_servers("a.example:8888, [::1]:9000").unwrap();
/// assert_eq!(servers, [("a.example".to_owned(), 8888), ("::1".to_owned(), 9000)]);
/// ```
pub fn parse_servers(text: &str) -> Result<Vec<(String, u16)>, ConfigError> {
    let invalid = |reason: String| ConfigError::invalid(ENV_SERVERS, reason);
    let mut servers = Vec::new();
    for entry in text.split(',').map(str::trim) {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(invalid(format!("expected host:port, got {entry:?}")));
        };
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.chars().any(char::is_whitespace) || host.contains(['[', ']']) {
            return Err(invalid(format!(
                "expected a host name or IP address in {entry:?}"
            )));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| invalid(format!("expected a port from 1 to 65535 in {entry:?}")))?;
        servers.push((host.to_owned(), port));
    }
    Ok(servers)
}

fn check_terminator(terminator: &[u8]) -> Result<(), ConfigError> {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=');
    if terminator.is_empty() || terminator.len() > 16 {
        return Err(ConfigError::invalid(
            "terminator",
            "it must be 1 to 16 bytes long",
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

/// The largest replay cache a configuration may ask for (256 MiB of tables).
const MAX_REPLAY_CACHE_ENTRIES: usize = 1 << 24;

fn check_limits(limits: &Limits) -> Result<(), ConfigError> {
    let minimums: [(&'static str, usize, usize); 8] = [
        ("replay_cache_entries", limits.replay_cache_entries, 1),
        ("max_frame_len", limits.max_frame_len, 128),
        ("max_connections", limits.max_connections, 1),
        ("max_connections_per_ip", limits.max_connections_per_ip, 1),
        ("max_outbox_bytes", limits.max_outbox_bytes, 1),
        ("max_concurrent_handlers", limits.max_concurrent_handlers, 1),
        ("max_in_flight_calls", limits.max_in_flight_calls, 1),
        ("outgoing_queue", limits.outgoing_queue, 1),
    ];
    for (setting, value, least) in minimums {
        if value < least {
            return Err(ConfigError::invalid(
                setting,
                format!("it must be at least {least}, not {value}"),
            ));
        }
    }
    if limits.max_bad_frames_in_row == 0 {
        return Err(ConfigError::invalid(
            "max_bad_frames_in_row",
            "it must be at least 1",
        ));
    }
    // Semaphores cap their permits; stay far below that.
    for (setting, value) in [
        ("max_connections", limits.max_connections),
        ("max_connections_per_ip", limits.max_connections_per_ip),
    ] {
        if value > MAX_CONNECTIONS_LIMIT {
            return Err(ConfigError::invalid(
                setting,
                format!("it may be at most {MAX_CONNECTIONS_LIMIT}, not {value}"),
            ));
        }
    }
    if limits.max_concurrent_handlers > 1 << 20 || limits.max_in_flight_calls > 1 << 20 {
        return Err(ConfigError::invalid(
            "max_concurrent_handlers",
            "handler and call limits may be at most 1048576",
        ));
    }
    // A budget of 16 bytes per entry, reached only under that much traffic.
    if limits.replay_cache_entries > MAX_REPLAY_CACHE_ENTRIES {
        return Err(ConfigError::invalid(
            "replay_cache_entries",
            format!(
                "it may be at most {MAX_REPLAY_CACHE_ENTRIES}, not {}",
                limits.replay_cache_entries
            ),
        ));
    }
    Ok(())
}

fn check_timeouts(timeouts: &Timeouts) -> Result<(), ConfigError> {
    let positive = [
        ("first_frame", timeouts.first_frame),
        ("write", timeouts.write),
        ("call", timeouts.call),
        ("connect", timeouts.connect),
    ];
    for (setting, value) in positive {
        if value.is_zero() {
            return Err(ConfigError::invalid(
                setting,
                "a timeout must be above zero",
            ));
        }
    }
    if timeouts.idle.is_some_and(|idle| idle.is_zero()) {
        return Err(ConfigError::invalid(
            "idle",
            "a timeout must be above zero (use None to disable it)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned().ok_or(VarError::NotPresent)
    }

    fn key() -> String {
        Fernet::generate_key().unwrap()
    }

    #[test]
    fn defaults_match_the_seed() {
        let config = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key())]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.host(), "0.0.0.0");
        assert_eq!(config.port(), 8888);
        assert_eq!(config.log_level(), tracing::Level::INFO);
        assert_eq!(config.terminator(), b"\n");
        assert_eq!(config.log_format(), LogFormat::Seed);
        assert_eq!(config.log_packets(), PacketLog::Headers);
    }

    #[test]
    fn the_packet_lines_are_set_by_their_own_variable() {
        for (text, expected) in [
            ("off", PacketLog::Off),
            ("Headers", PacketLog::Headers),
            (" FULL ", PacketLog::Full),
        ] {
            let config =
                ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key()), (ENV_LOG_PACKETS, text)]))
                    .unwrap()
                    .build()
                    .unwrap();
            assert_eq!(config.log_packets(), expected, "{text}");
        }
    }

    #[test]
    fn the_port_variable_sets_the_port() {
        let config = ConfigBuilder::from_lookup(lookup(&[
            (ENV_KEY, &key()),
            (ENV_HOST, "127.0.0.1"),
            (ENV_PORT, "9999"),
            (ENV_LOG_LEVEL, "warning"),
        ]))
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(config.host(), "127.0.0.1");
        assert_eq!(config.port(), 9999);
        assert_eq!(config.log_level(), tracing::Level::WARN);
    }

    #[test]
    fn seed_and_tracing_level_names() {
        use tracing::Level;
        for (name, level) in [
            ("DEBUG", Level::DEBUG),
            ("INFO", Level::INFO),
            ("WARNING", Level::WARN),
            ("warn", Level::WARN),
            ("ERROR", Level::ERROR),
            ("CRITICAL", Level::ERROR),
            ("trace", Level::TRACE),
        ] {
            assert_eq!(name.parse::<LogLevel>().unwrap().0, level, "{name}");
        }
    }

    #[test]
    fn a_missing_key_says_how_to_make_one() {
        let err = ConfigBuilder::from_lookup(lookup(&[]))
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(err, ConfigError::MissingKey);
        assert!(err.to_string().contains("keygen"));
        let err = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, "  ")]))
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(err, ConfigError::MissingKey);
    }

    #[test]
    fn bad_values_name_the_variable_and_never_the_key() {
        let secret = "not-a-real-key-but-secret";
        let err = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, secret)]))
            .unwrap()
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("CRYPTO_KEY is not valid"), "{text}");
        assert!(!text.contains(secret), "{text}");

        for (var, value) in [
            (ENV_PORT, "80000"),
            (ENV_PORT, "http"),
            (ENV_LOG_LEVEL, "LOUD"),
            (ENV_LOG_PACKETS, "some"),
        ] {
            let err =
                ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key()), (var, value)])).unwrap_err();
            assert!(err.to_string().starts_with(var), "{err}");
            assert!(err.to_string().contains(value), "{err}");
        }

        let not_unicode = |name: &str| {
            if name == ENV_HOST {
                Err(VarError::NotUnicode("\u{fffd}".into()))
            } else {
                Err(VarError::NotPresent)
            }
        };
        let err = ConfigBuilder::from_lookup(not_unicode).unwrap_err();
        assert!(err.to_string().starts_with(ENV_HOST), "{err}");
    }

    #[test]
    fn builder_checks_terminator_limits_and_timeouts() {
        let base = || Config::builder().key(key());
        assert!(base().terminator("\r\n").build().is_ok());
        assert!(base().terminator("").build().is_err());
        assert!(base().terminator("X").build().is_err());
        assert!(base().terminator("=").build().is_err());
        let limits = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert!(base().limits(limits).build().is_err());
        for (entries, ok) in [
            (0, false),
            (1, true),
            (1 << 24, true),
            ((1 << 24) + 1, false),
        ] {
            let limits = Limits {
                replay_cache_entries: entries,
                ..Limits::default()
            };
            assert_eq!(base().limits(limits).build().is_ok(), ok, "{entries}");
        }
        let timeouts = Timeouts {
            idle: Some(Duration::ZERO),
            ..Timeouts::default()
        };
        assert!(base().timeouts(timeouts).build().is_err());
        assert!(base().host("").build().is_err());
        assert!(base().host("::1").build().is_ok());
    }

    #[test]
    fn the_per_address_cap_is_read_and_checked_with_the_variable_named() {
        let build = |value: &str| {
            ConfigBuilder::from_lookup(lookup(&[
                (ENV_KEY, &key()),
                (ENV_MAX_CONNECTIONS_PER_IP, value),
            ]))
            .and_then(ConfigBuilder::build)
        };
        let config = ConfigBuilder::from_lookup(lookup(&[(ENV_KEY, &key())]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.limits().max_connections_per_ip, 64);
        assert_eq!(build(" 5 ").unwrap().limits().max_connections_per_ip, 5);
        // Kept by a program that changes other limits from the current ones.
        let builder = ConfigBuilder::from_lookup(lookup(&[
            (ENV_KEY, &key()),
            (ENV_MAX_CONNECTIONS_PER_IP, "7"),
        ]))
        .unwrap();
        let limits = builder.current_limits().with_max_connections(100);
        let config = builder.limits(limits).build().unwrap();
        assert_eq!(config.limits().max_connections_per_ip, 7);
        assert_eq!(config.limits().max_connections, 100);
        assert_eq!(
            build("1048576").unwrap().limits().max_connections_per_ip,
            1 << 20
        );
        for bad in ["0", "-1", "many", "1048577", "18446744073709551615", "1e9"] {
            let err = build(bad).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(ENV_MAX_CONNECTIONS_PER_IP),
                "{bad}: {text}"
            );
            assert!(text.contains(bad), "{bad}: {text}");
        }
        // In code, extreme values are refused with the setting named (and
        // never reach a semaphore).
        let base = || Config::builder().key(key());
        for (limits, setting) in [
            (
                Limits::default().with_max_connections_per_ip(0),
                "max_connections_per_ip",
            ),
            (
                Limits::default().with_max_connections_per_ip(usize::MAX),
                "max_connections_per_ip",
            ),
            (
                Limits::default().with_max_connections(usize::MAX),
                "max_connections",
            ),
            (
                Limits::default().with_max_outbox_bytes(0),
                "max_outbox_bytes",
            ),
        ] {
            let err = base().limits(limits).build().unwrap_err();
            assert!(err.to_string().starts_with(setting), "{err}");
        }
    }

    #[test]
    fn server_lists_are_read_or_refused_with_the_variable_named() {
        assert_eq!(
            parse_servers("a:1,b:2 , [::1]:3").unwrap(),
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 2),
                ("::1".to_owned(), 3)
            ]
        );
        for bad in [
            "", "a", "a:", ":1", "a:0", "a:70000", "a:1,,b:2", "a b:1", "[::1:2",
        ] {
            let err = parse_servers(bad).unwrap_err();
            assert!(err.to_string().starts_with(ENV_SERVERS), "{bad:?}: {err}");
        }
    }

    #[test]
    fn settings_build_in_one_expression() {
        let limits = Limits::default()
            .with_max_frame_len(4096)
            .with_max_connections(7)
            .with_max_concurrent_handlers(3)
            .with_max_in_flight_calls(5)
            .with_max_bad_frames_in_row(2)
            .with_outgoing_queue(9)
            .with_replay_cache_entries(64)
            .with_max_connections_per_ip(2)
            .with_max_outbox_bytes(1000);
        let expected = Limits {
            max_frame_len: 4096,
            max_connections: 7,
            max_connections_per_ip: 2,
            max_outbox_bytes: 1000,
            max_concurrent_handlers: 3,
            max_in_flight_calls: 5,
            max_bad_frames_in_row: 2,
            outgoing_queue: 9,
            replay_cache_entries: 64,
        };
        assert_eq!(limits, expected);
        let second = Duration::from_secs(1);
        let timeouts = Timeouts::default()
            .with_first_frame(second)
            .with_idle(None)
            .with_write(2 * second)
            .with_call(3 * second)
            .with_connect(4 * second)
            .with_shutdown_grace(5 * second);
        let expected = Timeouts {
            first_frame: second,
            idle: None,
            write: 2 * second,
            call: 3 * second,
            connect: 4 * second,
            shutdown_grace: 5 * second,
        };
        assert_eq!(timeouts, expected);
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let key = key();
        let builder = Config::builder().key(key.clone());
        assert!(!format!("{builder:?}").contains(&key));
        let config = builder.build().unwrap();
        assert!(!format!("{config:?}").contains(&key));
    }
}
