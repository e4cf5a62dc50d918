//! [`RedisQueue`]: the queue on Redis, shared by every server that points
//! at the same Redis and prefix.
//!
//! A task is a hash; the states are sorted sets that name tasks by
//! `peer:id`. Every operation is one Lua script (`scripts/`), so it
//! happens whole or not at all, and concurrent servers never hand one task
//! to two workers at once nor queue one task twice. Times are Redis's own
//! clock (ms), so the servers' clocks need not agree, except for a
//! producer's `run_at`, which is taken as it is given.
//!
//! Keys, all under one `{prefix}` hash tag (one Redis Cluster slot; the
//! scripts are given the base `{prefix}:` as their one key and derive the
//! others from it):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:task:<peer:id>` | hash | one task: `task` (the packet's JSON), `m` method, `k` dedupe key, `s` state, `p` priority band, `a` attempts, `x` most attempts, `put`/`due`/`run`/`f` times (ms), `w` worker, `c` cancel asked, `r` result, `e` error, `o` options, `bi`/`bm` backoff, `seq`; a finished one expires after the retention window |
//! | `{prefix}:ready:<method>` | sorted set | queued tasks of a method, by priority band × 2^42 + the order they became available |
//! | `{prefix}:methods` | set | the methods with queued tasks |
//! | `{prefix}:scheduled`, `{prefix}:due:<method>` | sorted sets | scheduled tasks (delayed, or backing off) by when they are due: all, and per method |
//! | `{prefix}:leases` | sorted set | leased tasks by when their lease ends |
//! | `{prefix}:dead` | sorted set | dead letters, in the order they died |
//! | `{prefix}:finished` | sorted set | done and cancelled tasks by when they finished, trimmed to the retention window |
//! | `{prefix}:key:<dedupe key>` | string | the task holding the key, while it is scheduled, queued, leased or dead; expires a retention window after it is done; gone when it is cancelled |
//! | `{prefix}:result:<dedupe key>` | string | the result of a done task, for the retention window |
//! | `{prefix}:counts` | hash | tasks per state now (`state`, `state:method`) |
//! | `{prefix}:stats` | hash | counters since the queue was created: `done`, `duplicates`, `names_taken`, `full`, `redeliveries`; per method `done:`, `failed:`, `retried:`, `cancelled:`, `limited:` |
//! | `{prefix}:limits`, `{prefix}:buckets` | hashes | per method `concurrency\|count\|per_ms`; its token bucket (`method:t`, `method:at`) |
//! | `{prefix}:schedule:<name>`, `{prefix}:ticks` | hash, sorted set | a periodic task; the schedules by next tick |
//! | `{prefix}:seq` | string | the sequence of the order tasks became available |
//! | `{prefix}:events` | pub/sub channel | `r\nMETHOD` ready, `f\nSTATE\nREF` finished, `c\nREF` cancel asked |
//!
//! A Redis Cluster is not supported (see docs/SCALING.md): the connection
//! talks to one node.

use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionManager;

use crate::{QueueError, QueueSettings, RedisTls};

/// The arguments of a script, as text.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$(($arg).to_string()),*] as &[String]
    };
}

mod events;
mod queue;
mod records;
mod schedules;
mod scripts;

use events::EventsHub;

/// The most schedules one queue keeps (a put of one more is
/// [`QueueError::Invalid`]).
const MAX_SCHEDULES: usize = 10_000;
/// The most method limits one queue keeps (a set of one more is
/// [`QueueError::Invalid`]).
const MAX_LIMITS: usize = 10_000;

/// Where the queue is and how it behaves. Its `Debug` does not show a
/// password in the URL.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisSettings {
    /// `redis://host:port/db`, or `rediss://` for Redis over TLS (see
    /// [`tls`](Self::tls)).
    pub url: String,
    /// Whom to trust and what to show for a `rediss://` URL (the system's
    /// trust store and no client certificate by default).
    pub tls: RedisTls,
    /// The prefix of every key, inside a hash tag (`{prefix}:tasks`):
    /// queues with different prefixes share nothing.
    pub prefix: String,
    /// Attempts and retention.
    pub queue: QueueSettings,
    /// How long a command may take before it fails as
    /// [`QueueError::Timeout`] (5 s).
    pub response_timeout: Duration,
    /// How long connecting may take (5 s).
    pub connect_timeout: Duration,
    /// Not used since the queue keeps no consumer group (a task is a hash):
    /// kept so that settings written for earlier versions still build.
    pub consumer_idle: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &crate::connect::redact(&self.url))
            .field("tls", &self.tls)
            .field("prefix", &self.prefix)
            .field("queue", &self.queue)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("consumer_idle", &self.consumer_idle)
            .finish()
    }
}

/// The key prefix of [`RedisSettings::new`].
const DEFAULT_PREFIX: &str = "stream-rpc";
/// The [`RedisSettings::response_timeout`] of [`RedisSettings::new`].
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The [`RedisSettings::connect_timeout`] of [`RedisSettings::new`].
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The [`RedisSettings::consumer_idle`] of [`RedisSettings::new`]: 10 min.
const DEFAULT_CONSUMER_IDLE: Duration = Duration::from_secs(10 * 60);

impl RedisSettings {
    /// Settings for the Redis at `url`, with the prefix `stream-rpc` and
    /// the default queue settings.
    pub fn new(url: impl Into<String>) -> Self {
        RedisSettings {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            tls: RedisTls::default(),
            queue: QueueSettings::default(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            consumer_idle: DEFAULT_CONSUMER_IDLE,
        }
    }

    /// Sets [`consumer_idle`](Self::consumer_idle) (not used).
    #[must_use]
    pub fn with_consumer_idle(mut self, idle: Duration) -> Self {
        self.consumer_idle = idle;
        self
    }

    /// Sets [`prefix`](Self::prefix).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`tls`](Self::tls).
    #[must_use]
    pub fn with_tls(mut self, tls: RedisTls) -> Self {
        self.tls = tls;
        self
    }

    /// Sets [`queue`](Self::queue).
    #[must_use]
    pub fn with_queue(mut self, queue: QueueSettings) -> Self {
        self.queue = queue;
        self
    }

    /// Sets [`response_timeout`](Self::response_timeout).
    #[must_use]
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }
}

/// The queue on Redis (see the module docs for its keys). Cloning it is
/// cheap and shares the connection, which reconnects by itself after Redis
/// went away; the command that found it gone fails (as
/// [`QueueError::Unavailable`]) and is not retried. Its
/// [`events`](crate::TaskQueue::events) come through one more connection
/// (pub/sub), subscribed when it connects and shared by the clones, which
/// ends when the last clone is dropped.
#[derive(Clone)]
pub struct RedisQueue {
    connection: ConnectionManager,
    /// `{prefix}:`, the key base every script is given.
    base: String,
    settings: QueueSettings,
    events: Arc<EventsHub>,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.base)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisQueue {
    /// Connects to the Redis of `settings`. Fails when the URL is not
    /// valid or Redis cannot be reached now; once connected, the queue
    /// reconnects by itself.
    pub async fn connect(settings: RedisSettings) -> Result<Self, QueueError> {
        let connection = crate::connect::connect(
            &settings.url,
            &settings.tls,
            settings.response_timeout,
            settings.connect_timeout,
            2,
        )
        .await?;
        let client = crate::connect::client(&settings.url, &settings.tls)?;
        let base = format!("{{{}}}:", settings.prefix);
        let channel = format!("{base}events");
        let events = EventsHub::start(client, channel, settings.connect_timeout).await;
        Ok(RedisQueue {
            connection,
            events: Arc::new(events),
            base,
            settings: settings.queue,
        })
    }

    /// Its queue settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// A connection for one command (the manager is shared; cloning it is
    /// cheap).
    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Runs `script` with the key base as its one key and `args`, its
    /// error typed.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: &[String],
    ) -> Result<T, QueueError> {
        let mut invocation = script.key(&self.base);
        for arg in args {
            invocation.arg(arg);
        }
        invocation
            .invoke_async(&mut self.connection())
            .await
            .map_err(error)
    }
}

/// The typed error of a Redis error: unreachable, too slow, or not
/// understood. Logged where it happens.
fn error(e: RedisError) -> QueueError {
    let text = e.to_string();
    let typed = if e.is_timeout() {
        QueueError::Timeout(text)
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        QueueError::Unavailable(text)
    } else {
        QueueError::Protocol(text)
    };
    tracing::warn!("redis queue: {typed}");
    typed
}

/// A duration in whole ms, at least 1.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What kind of error and where, without the error's text (which may quote
/// the task's content).
fn describe(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {}, column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}
