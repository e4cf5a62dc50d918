//! [`RedisQueue`]: the queue on Redis, shared by every server that points
//! at the same Redis and prefix.
//!
//! Tasks are entries of a Redis Stream read through a consumer group: a
//! lease is an entry pending for the worker (its consumer), with its end in
//! a sorted set (by Redis's own clock, so the servers' clocks need not
//! agree); a lease that ended is claimed by the next lease (`XCLAIM`); the
//! attempt number is the entry's delivery count. Every operation is one Lua script, so it happens whole or not at
//! all, and concurrent servers never hand one task to two workers at once
//! nor queue one task twice.
//!
//! Keys, all under one `{prefix}` hash tag (so one Redis Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:tasks` | stream, group `workers` | the tasks queued and leased: `task` (the packet's JSON), `ref`, `key` |
//! | `{prefix}:refs` | hash | `peer:id` → the task's stream entry (the name is held while there or in `deadrefs`) |
//! | `{prefix}:leases` | sorted set | leased entries by when their lease ends (ms, Redis's clock) |
//! | `{prefix}:key:<dedup key>` | string | held while the task is queued, leased or dead; expires a retention window after it is done |
//! | `{prefix}:result:<dedup key>` | string | the result of a done task, for the retention window |
//! | `{prefix}:dead` | stream | the dead letters: `task`, `ref`, `key`, `attempts` |
//! | `{prefix}:deadrefs` | hash | `peer:id` → the dead letter's entry |
//! | `{prefix}:stats` | hash | counters: `done`, `duplicates`, `names_taken`, `full`, `redeliveries`; `swept`, when idle consumers were last removed (ms, Redis's clock) |
//!
//! The scripts declare the fixed keys above in `KEYS`; the per-task keys
//! (`key:` and `result:`) are derived inside the scripts from the
//! task's stored fields, in the same hash tag. A Redis Cluster is not
//! supported (see docs/SCALING.md): the connection talks to one node.
//!
//! The consumer group keeps one consumer per worker that ever asked for a
//! task; the lease script removes, at most once per
//! [`consumer_idle`](RedisSettings::consumer_idle) (and at least once a
//! minute), the consumers that hold nothing and have been idle longer
//! than that, so the group does not grow with every worker ever seen.

use std::time::Duration;

use redis::RedisError;
use redis::aio::ConnectionManager;
use serde_json::Value;
use stream_rpc::Packet;

use std::collections::BTreeMap;

use stream_rpc::tasks::{
    MethodLimit, MethodStats, Schedule, ScheduleInfo, TaskInfo, TaskOptions, TaskState,
};

use crate::{
    Acked, Cancel, DeadLetters, DeadTask, Failed, Fired, Lease, LeaseFilter, Leased, Put,
    QueueError, QueueEvents, QueueSettings, RedisTls, Stats, TaskQueue, TaskRef, dedup_key,
};

/// What the Redis queue does not do yet (the API commit; H2 replaces it).
fn not_yet() -> QueueError {
    QueueError::Protocol("not yet".into())
}

mod scripts;

use scripts::{YES, put_answer, scripts};

/// The consumer group the servers read tasks through.
const GROUP: &str = "workers";
/// The consumer a nacked task is handed to: nobody, so that the last
/// worker's ack is stale (its lease ends at once, and the next lease takes
/// it).
const NOBODY: &str = "-";

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
    /// How long a consumer of the group (a worker) that holds no task may
    /// stay idle before it is removed (10 min).
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

    /// Sets [`consumer_idle`](Self::consumer_idle).
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
/// [`QueueError::Unavailable`]) and is not retried.
#[derive(Clone)]
pub struct RedisQueue {
    connection: ConnectionManager,
    keys: Keys,
    settings: QueueSettings,
    consumer_idle: Duration,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.keys.base)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The names of the queue's keys.
#[derive(Debug, Clone)]
struct Keys {
    /// `{prefix}:`
    base: String,
    tasks: String,
    refs: String,
    leases: String,
    dead: String,
    dead_refs: String,
    stats: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let base = format!("{{{prefix}}}:");
        Keys {
            tasks: format!("{base}tasks"),
            refs: format!("{base}refs"),
            leases: format!("{base}leases"),
            dead: format!("{base}dead"),
            dead_refs: format!("{base}deadrefs"),
            stats: format!("{base}stats"),
            base,
        }
    }

    fn key(&self, dedup: &str) -> String {
        format!("{}key:{dedup}", self.base)
    }

    fn result(&self, dedup: &str) -> String {
        format!("{}result:{dedup}", self.base)
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
        Ok(RedisQueue {
            connection,
            keys: Keys::new(&settings.prefix),
            settings: settings.queue,
            consumer_idle: settings.consumer_idle,
        })
    }

    /// Its queue settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// One run of the lease script: the task's JSON, its attempt and its
    /// entry id.
    async fn lease_once(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<(Vec<u8>, u32, String)>, QueueError> {
        self.run(
            scripts()
                .lease
                .key(&self.keys.tasks)
                .key(&self.keys.refs)
                .key(&self.keys.dead)
                .key(&self.keys.dead_refs)
                .key(&self.keys.stats)
                .key(&self.keys.leases)
                .arg(GROUP)
                .arg(worker)
                .arg(millis(lease))
                .arg(self.settings.max_attempts)
                .arg(millis(self.consumer_idle)),
        )
        .await
    }

    /// A connection for one command (the manager is shared; cloning it is
    /// cheap).
    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Runs a script, its error typed.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, QueueError> {
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

/// One entry of the dead letters stream (`[id, [field, value, ...]]`),
/// or its id (as far as it can be read) and what is wrong with it.
fn dead_letter(entry: &redis::Value) -> Result<DeadTask, (String, String)> {
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let redis::Value::Array(parts) = entry else {
        return Err(("?".into(), "not a stream entry".into()));
    };
    let id = parts.first().and_then(text).unwrap_or_else(|| "?".into());
    let Some(redis::Value::Array(fields)) = parts.get(1) else {
        return Err((id, "an entry without fields".into()));
    };
    let get = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| text(&pair[0]).as_deref() == Some(name))
            .and_then(|pair| pair.get(1))
    };
    let task = match get("task") {
        Some(redis::Value::BulkString(bytes)) => bytes,
        _ => return Err((id, "a dead letter without its task".into())),
    };
    let task = match Packet::from_json(task) {
        Ok(task) => task,
        Err(e) => return Err((id, format!("its task cannot be decoded ({})", describe(&e)))),
    };
    let attempts = get("attempts")
        .and_then(text)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(DeadTask { task, attempts })
}

fn flag(value: i64) -> Acked {
    if value == YES {
        Acked::Done
    } else {
        Acked::Stale
    }
}

/// How many stored tasks that cannot be decoded one [`TaskQueue::lease`]
/// moves to the dead letters before it gives up for this call.
const MAX_UNDECODABLE_PER_LEASE: usize = 16;

impl TaskQueue for RedisQueue {
    async fn put_with(&self, task: &Packet, options: &TaskOptions) -> Result<Put, QueueError> {
        if *options != TaskOptions::default() {
            return Err(not_yet());
        }
        let json = task
            .to_json()
            .map_err(|e| QueueError::Task(e.to_string()))?;
        let json = String::from_utf8(json).map_err(|e| QueueError::Task(e.to_string()))?;
        let dedup = dedup_key(&task.method, &task.payload);
        let queued: i64 = self
            .run(
                scripts()
                    .put
                    .key(&self.keys.tasks)
                    .key(&self.keys.refs)
                    .key(self.keys.key(&dedup))
                    .key(&self.keys.stats)
                    .key(&self.keys.dead_refs)
                    .key(&self.keys.dead)
                    .arg(GROUP)
                    .arg(json)
                    .arg(TaskRef::of(task).to_string())
                    .arg(&dedup)
                    .arg(self.settings.max_tasks),
            )
            .await?;
        match queued {
            put_answer::QUEUED => Ok(Put::Queued),
            put_answer::DUPLICATE => Ok(Put::Duplicate { existing: None }),
            put_answer::NAME_TAKEN => Ok(Put::NameTaken),
            put_answer::FULL => Ok(Put::Full),
            other => Err(QueueError::Protocol(format!(
                "put: unexpected answer {other}"
            ))),
        }
    }

    async fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> Result<Lease, QueueError> {
        if filter.methods.is_some() {
            return Err(not_yet());
        }
        let now = chrono::Utc::now();
        // A stored task that cannot be decoded (an older version's, or one
        // written by hand) is made a dead letter at once, and the next one
        // is leased instead; a bounded number of times per call.
        for _ in 0..MAX_UNDECODABLE_PER_LEASE {
            let Some((task, attempt, id)) = self.lease_once(worker, lease).await? else {
                return Ok(Lease::Empty { next_due: None });
            };
            match Packet::from_json(&task) {
                Ok(task) => {
                    return Ok(Lease::Leased(Leased::new(
                        task,
                        attempt,
                        TaskOptions::default(),
                        now,
                        now,
                    )));
                }
                Err(e) => {
                    tracing::warn!(
                        "redis queue: task {id:?} cannot be decoded ({}): moved to the dead letters",
                        describe(&e)
                    );
                    let _: i64 = self
                        .run(
                            scripts()
                                .bury
                                .key(&self.keys.tasks)
                                .key(&self.keys.refs)
                                .key(&self.keys.dead)
                                .key(&self.keys.dead_refs)
                                .key(&self.keys.leases)
                                .arg(GROUP)
                                .arg(worker)
                                .arg(&id),
                        )
                        .await?;
                }
            }
        }
        tracing::warn!(
            "redis queue: {MAX_UNDECODABLE_PER_LEASE} tasks in a row could not be decoded; \
             none leased this time"
        );
        Ok(Lease::Empty { next_due: None })
    }

    async fn fail(
        &self,
        _task: TaskRef,
        _worker: &str,
        _error: &Value,
        _retry: bool,
    ) -> Result<Failed, QueueError> {
        Err(not_yet())
    }

    async fn cancel(&self, _task: TaskRef) -> Result<Cancel, QueueError> {
        Err(not_yet())
    }

    async fn show(&self, _task: TaskRef) -> Result<Option<TaskInfo>, QueueError> {
        Err(not_yet())
    }

    async fn list(&self, _state: TaskState, _limit: usize) -> Result<Vec<TaskInfo>, QueueError> {
        Err(not_yet())
    }

    async fn set_limit(&self, _method: &str, _limit: MethodLimit) -> Result<(), QueueError> {
        Err(not_yet())
    }

    async fn limits(&self) -> Result<BTreeMap<String, MethodLimit>, QueueError> {
        Err(not_yet())
    }

    async fn put_schedule(&self, _schedule: &Schedule) -> Result<ScheduleInfo, QueueError> {
        Err(not_yet())
    }

    async fn remove_schedule(&self, _name: &str) -> Result<bool, QueueError> {
        Err(not_yet())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        Err(not_yet())
    }

    async fn fire_schedules(&self) -> Result<Fired, QueueError> {
        Err(not_yet())
    }

    async fn method_stats(&self) -> Result<BTreeMap<String, MethodStats>, QueueError> {
        Err(not_yet())
    }

    fn events(&self) -> QueueEvents {
        // Never sends: closed at once (H2 replaces this).
        QueueEvents::new(tokio::sync::broadcast::channel(1).1)
    }

    async fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        let extended: i64 = self
            .run(
                scripts()
                    .extend
                    .key(&self.keys.tasks)
                    .key(&self.keys.refs)
                    .key(&self.keys.leases)
                    .arg(GROUP)
                    .arg(worker)
                    .arg(task.to_string())
                    .arg(millis(lease)),
            )
            .await?;
        Ok(extended == YES)
    }

    async fn ack(&self, task: TaskRef, worker: &str, result: &Value) -> Result<Acked, QueueError> {
        let result = result.to_string();
        if result.len() > self.settings.max_result_bytes {
            return Ok(Acked::TooLarge);
        }
        let acked: i64 = self
            .run(
                scripts()
                    .ack
                    .key(&self.keys.tasks)
                    .key(&self.keys.refs)
                    .key(&self.keys.stats)
                    .key(&self.keys.leases)
                    .arg(GROUP)
                    .arg(worker)
                    .arg(task.to_string())
                    .arg(result)
                    .arg(millis(self.settings.retention))
                    .arg(&self.keys.base),
            )
            .await?;
        Ok(flag(acked))
    }

    async fn nack(&self, task: TaskRef, worker: &str) -> Result<Acked, QueueError> {
        let given_back: i64 = self
            .run(
                scripts()
                    .nack
                    .key(&self.keys.tasks)
                    .key(&self.keys.refs)
                    .key(&self.keys.leases)
                    .arg(GROUP)
                    .arg(worker)
                    .arg(task.to_string())
                    .arg(NOBODY),
            )
            .await?;
        Ok(flag(given_back))
    }

    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        let key = self.keys.result(&dedup_key(method, payload));
        let text: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.connection())
            .await
            .map_err(error)?;
        text.map(|text| serde_json::from_str(&text).map_err(|e| QueueError::Task(e.to_string())))
            .transpose()
    }

    async fn dead_letters(&self) -> Result<DeadLetters, QueueError> {
        let entries: redis::Value = redis::cmd("XRANGE")
            .arg(&self.keys.dead)
            .arg("-")
            .arg("+")
            .query_async(&mut self.connection())
            .await
            .map_err(error)?;
        let redis::Value::Array(entries) = entries else {
            return Err(QueueError::Protocol(
                "dead: XRANGE did not answer a list".into(),
            ));
        };
        let mut dead = Vec::with_capacity(entries.len());
        let mut skipped = 0u64;
        for entry in &entries {
            match dead_letter(entry) {
                Ok(letter) => dead.push(letter),
                Err((id, e)) => {
                    skipped += 1;
                    tracing::warn!("redis queue: dead letter {id:?} skipped: {e}");
                }
            }
        }
        if skipped > 0 {
            tracing::warn!(
                "redis queue: {skipped} of {} dead letters could not be read and were skipped",
                entries.len()
            );
        }
        Ok(DeadLetters {
            tasks: dead,
            skipped,
        })
    }

    async fn requeue(&self, task: TaskRef) -> Result<bool, QueueError> {
        let requeued: i64 = self
            .run(
                scripts()
                    .requeue
                    .key(&self.keys.tasks)
                    .key(&self.keys.refs)
                    .key(&self.keys.dead)
                    .key(&self.keys.dead_refs)
                    .arg(task.to_string())
                    .arg(&self.keys.base),
            )
            .await?;
        Ok(requeued == YES)
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        let purged: u64 = self
            .run(
                scripts()
                    .purge_dead
                    .key(&self.keys.dead)
                    .key(&self.keys.dead_refs)
                    .arg(&self.keys.base),
            )
            .await?;
        Ok(purged)
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let counts: Vec<i64> = self
            .run(
                scripts()
                    .stats
                    .key(&self.keys.tasks)
                    .key(&self.keys.dead)
                    .key(&self.keys.stats)
                    .arg(GROUP)
                    .arg(NOBODY),
            )
            .await?;
        let count = |index: usize| {
            counts
                .get(index)
                .copied()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        // queued, leased, done, dead, duplicates, redeliveries, names
        // taken, full: the fields of `Stats`, in the script's order.
        const COUNTS: usize = 8;
        if counts.len() != COUNTS {
            return Err(QueueError::Protocol(format!(
                "stats: expected {COUNTS} counts, got {counts:?}"
            )));
        }
        Ok(Stats {
            queued: count(0),
            leased: count(1),
            done: count(2),
            dead: count(3),
            duplicates: count(4),
            redeliveries: count(5),
            names_taken: count(6),
            full: count(7),
        })
    }
}
