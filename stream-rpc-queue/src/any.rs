//! [`AnyQueue`]: the queue a setting names, memory or Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc::tasks::{
    MethodLimit, MethodStats, Schedule, ScheduleInfo, TaskInfo, TaskOptions, TaskState,
};

use crate::connect::check_url;
use crate::{
    Acked, Cancel, DeadLetters, Failed, Fired, Lease, LeaseFilter, MemoryQueue, Put, QueueError,
    QueueEvents, QueueSettings, RedisQueue, RedisSettings, RedisTls, Stats, TaskQueue, TaskRef,
};

/// The environment variable naming the queue: `memory` (the default), a
/// `redis://` URL, or a `rediss://` URL for Redis over TLS (see
/// [`RedisTls`] for its settings).
pub const ENV_QUEUE: &str = "STREAM_RPC_QUEUE";
/// The environment variable holding the lease time in seconds (30).
pub const ENV_LEASE_SECS: &str = "STREAM_RPC_QUEUE_LEASE_SECS";
/// The environment variable holding the attempts before a dead letter (5).
pub const ENV_MAX_ATTEMPTS: &str = "STREAM_RPC_QUEUE_MAX_ATTEMPTS";
/// The environment variable holding the most tasks the queue holds,
/// queued, leased and dead together (100000; from 1 to 1,000,000,000).
pub const ENV_MAX_TASKS: &str = "STREAM_RPC_QUEUE_MAX_TASKS";
/// The environment variable holding the largest result a save keeps, in
/// bytes of JSON (1048576, 1 MiB; from 1 to 536870912, Redis's largest
/// string).
pub const ENV_MAX_RESULT_BYTES: &str = "STREAM_RPC_QUEUE_MAX_RESULT_BYTES";

/// How long a task stays leased to a worker when nothing else is set: the
/// lease of [`QueueConfig::default`] and of a server that sets none (30 s).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The longest lease [`ENV_LEASE_SECS`] may set, in seconds: a day.
const MAX_LEASE_SECS: u64 = 24 * 60 * 60;
/// The most [`ENV_MAX_TASKS`] may set.
const MAX_MAX_TASKS: u64 = 1_000_000_000;
/// The most [`ENV_MAX_RESULT_BYTES`] may set: 512 MiB, Redis's largest
/// string.
const MAX_MAX_RESULT_BYTES: u64 = 512 << 20;

/// Where the queue is and how it leases, as a server reads it from the
/// environment ([`QueueConfig::from_env`]) or a command line. Its `Debug`
/// does not show a password in the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// `memory`, or a `redis://` or `rediss://` URL.
    pub queue: String,
    /// TLS for a `rediss://` URL ([`RedisTls::from_lookup`]'s variables).
    pub tls: RedisTls,
    /// How long a task is leased to a worker (30 s).
    pub lease: Duration,
    /// Attempts and retention.
    pub settings: QueueSettings,
}

impl std::fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConfig")
            .field("queue", &crate::connect::redact(&self.queue))
            .field("tls", &self.tls)
            .field("lease", &self.lease)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            queue: "memory".to_owned(),
            tls: RedisTls::default(),
            lease: DEFAULT_LEASE,
            settings: QueueSettings::default(),
        }
    }
}

impl QueueConfig {
    /// Reads [`ENV_QUEUE`], [`ENV_LEASE_SECS`], [`ENV_MAX_ATTEMPTS`],
    /// [`ENV_MAX_TASKS`], [`ENV_MAX_RESULT_BYTES`] and the
    /// TLS variables ([`ENV_TLS_CA`](crate::ENV_TLS_CA), [`ENV_TLS_CERT`](crate::ENV_TLS_CERT), [`ENV_TLS_KEY`](crate::ENV_TLS_KEY)); a
    /// bad value is an error naming the variable.
    pub fn from_env() -> Result<Self, QueueError> {
        QueueConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup of variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, QueueError> {
        let mut config = QueueConfig::default();
        let read = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        if let Some(queue) = read(ENV_QUEUE) {
            config.queue = queue.trim().to_owned();
        }
        config.tls = RedisTls::from_lookup(&lookup)?;
        check_queue(&config.queue, &config.tls)?;
        if let Some(text) = read(ENV_LEASE_SECS) {
            let secs: u64 = text
                .trim()
                .parse()
                .ok()
                .filter(|secs| (1..=MAX_LEASE_SECS).contains(secs))
                .ok_or_else(|| QueueError::Invalid {
                    setting: ENV_LEASE_SECS,
                    reason: format!(
                        "expected whole seconds from 1 to {MAX_LEASE_SECS}, got {text:?}"
                    ),
                })?;
            config.lease = Duration::from_secs(secs);
        }
        if let Some(text) = read(ENV_MAX_ATTEMPTS) {
            let attempts: u32 = text
                .trim()
                .parse()
                .ok()
                .filter(|attempts| *attempts >= 1)
                .ok_or_else(|| QueueError::Invalid {
                    setting: ENV_MAX_ATTEMPTS,
                    reason: format!("expected a whole number of at least 1, got {text:?}"),
                })?;
            config.settings = config.settings.with_max_attempts(attempts);
        }
        let whole = |name: &'static str, max: u64| -> Result<Option<u64>, QueueError> {
            read(name)
                .map(|text| {
                    text.trim()
                        .replace('_', "")
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (1..=max).contains(n))
                        .ok_or_else(|| QueueError::Invalid {
                            setting: name,
                            reason: format!(
                                "expected a whole number from 1 to {max}, got {text:?}"
                            ),
                        })
                })
                .transpose()
        };
        if let Some(max_tasks) = whole(ENV_MAX_TASKS, MAX_MAX_TASKS)? {
            config.settings = config.settings.with_max_tasks(max_tasks);
        }
        if let Some(bytes) = whole(ENV_MAX_RESULT_BYTES, MAX_MAX_RESULT_BYTES)? {
            config.settings = config
                .settings
                .with_max_result_bytes(usize::try_from(bytes).unwrap_or(usize::MAX));
        }
        Ok(config)
    }

    /// Opens the queue it names (connecting to Redis, for a URL).
    pub async fn open(&self) -> Result<AnyQueue, QueueError> {
        check_queue(&self.queue, &self.tls)?;
        if self.queue == "memory" {
            return Ok(AnyQueue::Memory(MemoryQueue::with_settings(
                self.settings.clone(),
            )));
        }
        let settings = RedisSettings::new(self.queue.clone())
            .with_queue(self.settings.clone())
            .with_tls(self.tls.clone());
        Ok(AnyQueue::Redis(RedisQueue::connect(settings).await?))
    }
}

fn check_queue(queue: &str, tls: &RedisTls) -> Result<(), QueueError> {
    if queue == "memory" {
        if tls.is_set() {
            return Err(QueueError::Invalid {
                setting: ENV_QUEUE,
                reason: "TLS files are set but the queue is in memory: they are for a \
                         rediss:// URL"
                    .to_owned(),
            });
        }
        return Ok(());
    }
    check_url(queue, tls, ENV_QUEUE).map_err(|e| match e {
        QueueError::Invalid { setting, reason } => QueueError::Invalid {
            setting,
            reason: format!("expected `memory` or a Redis URL: {reason}"),
        },
        other => other,
    })
}

/// A queue in memory or on Redis, chosen at run time.
#[derive(Debug)]
// One per server, made once: the size of the Redis handle costs nothing
// worth a box (a memory queue is a shared handle, much smaller).
#[allow(clippy::large_enum_variant)]
pub enum AnyQueue {
    /// In this process.
    Memory(MemoryQueue),
    /// On Redis.
    Redis(RedisQueue),
}

impl AnyQueue {
    /// Its settings.
    pub fn settings(&self) -> &QueueSettings {
        match self {
            AnyQueue::Memory(queue) => queue.settings(),
            AnyQueue::Redis(queue) => queue.settings(),
        }
    }

    /// Whether the tasks outlive this process (on Redis).
    pub fn is_shared(&self) -> bool {
        matches!(self, AnyQueue::Redis(_))
    }
}

/// Calls the same method on whichever queue it is.
macro_rules! both {
    ($self:ident, $queue:ident => $call:expr) => {
        match $self {
            AnyQueue::Memory($queue) => $call.await,
            AnyQueue::Redis($queue) => $call.await,
        }
    };
}

impl TaskQueue for AnyQueue {
    async fn put_with(&self, task: &Packet, options: &TaskOptions) -> Result<Put, QueueError> {
        both!(self, queue => queue.put_with(task, options))
    }

    async fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> Result<Lease, QueueError> {
        both!(self, queue => queue.lease_with(worker, lease, filter))
    }

    async fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        both!(self, queue => queue.extend(task, worker, lease))
    }

    async fn ack(&self, task: TaskRef, worker: &str, result: &Value) -> Result<Acked, QueueError> {
        both!(self, queue => queue.ack(task, worker, result))
    }

    async fn nack(&self, task: TaskRef, worker: &str) -> Result<Acked, QueueError> {
        both!(self, queue => queue.nack(task, worker))
    }

    async fn fail(
        &self,
        task: TaskRef,
        worker: &str,
        error: &Value,
        retry: bool,
    ) -> Result<Failed, QueueError> {
        both!(self, queue => queue.fail(task, worker, error, retry))
    }

    async fn cancel(&self, task: TaskRef) -> Result<Cancel, QueueError> {
        both!(self, queue => queue.cancel(task))
    }

    async fn show(&self, task: TaskRef) -> Result<Option<TaskInfo>, QueueError> {
        both!(self, queue => queue.show(task))
    }

    async fn list(&self, state: TaskState, limit: usize) -> Result<Vec<TaskInfo>, QueueError> {
        both!(self, queue => queue.list(state, limit))
    }

    async fn set_limit(&self, method: &str, limit: MethodLimit) -> Result<(), QueueError> {
        both!(self, queue => queue.set_limit(method, limit))
    }

    async fn limits(&self) -> Result<BTreeMap<String, MethodLimit>, QueueError> {
        both!(self, queue => queue.limits())
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<ScheduleInfo, QueueError> {
        both!(self, queue => queue.put_schedule(schedule))
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, QueueError> {
        both!(self, queue => queue.remove_schedule(name))
    }

    async fn schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        both!(self, queue => queue.schedules())
    }

    async fn fire_schedules(&self) -> Result<Fired, QueueError> {
        both!(self, queue => queue.fire_schedules())
    }

    async fn method_stats(&self) -> Result<BTreeMap<String, MethodStats>, QueueError> {
        both!(self, queue => queue.method_stats())
    }

    fn events(&self) -> QueueEvents {
        match self {
            AnyQueue::Memory(queue) => queue.events(),
            AnyQueue::Redis(queue) => queue.events(),
        }
    }

    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        both!(self, queue => queue.result(method, payload))
    }

    async fn dead_letters(&self) -> Result<DeadLetters, QueueError> {
        both!(self, queue => queue.dead_letters())
    }

    async fn requeue(&self, task: TaskRef) -> Result<bool, QueueError> {
        both!(self, queue => queue.requeue(task))
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        both!(self, queue => queue.purge_dead())
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        both!(self, queue => queue.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ENV_TLS_CA;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn settings_come_from_the_environment_with_their_defaults() {
        let config = QueueConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(config, QueueConfig::default());
        let config = QueueConfig::from_lookup(lookup(&[
            (ENV_QUEUE, "redis://10.0.0.5:6379/0"),
            (ENV_LEASE_SECS, "45"),
            (ENV_MAX_ATTEMPTS, "3"),
            (ENV_MAX_TASKS, "250_000"),
            (ENV_MAX_RESULT_BYTES, " 65536 "),
        ]))
        .unwrap();
        assert_eq!(config.settings.max_tasks, 250_000);
        assert_eq!(config.settings.max_result_bytes, 65_536);
        assert_eq!(config.queue, "redis://10.0.0.5:6379/0");
        assert_eq!(config.lease, Duration::from_secs(45));
        assert_eq!(config.settings.max_attempts, 3);
        assert_eq!(config.tls, RedisTls::new());
        let config = QueueConfig::from_lookup(lookup(&[
            (ENV_QUEUE, "rediss://redis.internal:6380/0"),
            (ENV_TLS_CA, "/etc/stream-rpc/redis-ca.pem"),
        ]))
        .unwrap();
        assert_eq!(
            config.tls,
            RedisTls::new().with_ca_file("/etc/stream-rpc/redis-ca.pem")
        );
    }

    #[test]
    fn debug_does_not_show_a_password() {
        for url in [
            "redis://:secret@10.0.0.5:6379/0",
            "rediss://user:secret@host/",
        ] {
            let config = QueueConfig {
                queue: url.to_owned(),
                ..QueueConfig::default()
            };
            let shown = format!("{config:?}");
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("***@"), "{shown}");
            let settings = RedisSettings::new(url);
            let shown = format!("{settings:?} {settings:#?}");
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("***@"), "{shown}");
        }
    }

    #[test]
    fn the_defaults_bound_the_queue() {
        let config = QueueConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(config.settings.max_tasks, 100_000);
        assert_eq!(config.settings.max_result_bytes, 1 << 20);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for queue in ["rediss://:secret@host/#insecure", "mysql://:secret@host"] {
            let err = QueueConfig::from_lookup(lookup(&[(ENV_QUEUE, queue)])).unwrap_err();
            assert!(err.to_string().starts_with(ENV_QUEUE), "{err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let err = QueueConfig::from_lookup(lookup(&[(ENV_TLS_CA, "/etc/ca.pem")])).unwrap_err();
        assert!(err.to_string().contains("in memory"), "{err}");
        for (name, value) in [
            (ENV_QUEUE, "postgres"),
            (ENV_LEASE_SECS, "0"),
            (ENV_LEASE_SECS, "soon"),
            (ENV_MAX_ATTEMPTS, "0"),
            (ENV_MAX_ATTEMPTS, "-1"),
            (ENV_MAX_TASKS, "0"),
            (ENV_MAX_TASKS, "lots"),
            (ENV_MAX_TASKS, "-5"),
            (ENV_MAX_TASKS, "2000000000"),
            (ENV_MAX_RESULT_BYTES, "0"),
            (ENV_MAX_RESULT_BYTES, "1MiB"),
            (ENV_MAX_RESULT_BYTES, "1000000000"),
        ] {
            let err = QueueConfig::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert!(err.to_string().starts_with(name), "{name}={value}: {err}");
            assert!(err.to_string().contains(value), "{err}");
        }
    }
}
