//! [`AnyQueue`]: the queue a setting names, memory or Redis.

use std::time::Duration;

use serde_json::Value;
use stream_rpc::Packet;

use crate::{
    Acked, DeadTask, Leased, MemoryQueue, Put, QueueError, QueueSettings, RedisQueue,
    RedisSettings, Stats, TaskQueue, TaskRef,
};

/// The environment variable naming the queue: `memory` (the default), or a
/// `redis://` URL (`rediss://`, Redis over TLS, is not built in and is
/// refused with a message that says so).
pub const ENV_QUEUE: &str = "STREAM_RPC_QUEUE";
/// The environment variable holding the lease time in seconds (30).
pub const ENV_LEASE_SECS: &str = "STREAM_RPC_QUEUE_LEASE_SECS";
/// The environment variable holding the attempts before a dead letter (5).
pub const ENV_MAX_ATTEMPTS: &str = "STREAM_RPC_QUEUE_MAX_ATTEMPTS";

/// Where the queue is and how it leases, as a server reads it from the
/// environment ([`QueueConfig::from_env`]) or a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// `memory`, or a `redis://` URL.
    pub queue: String,
    /// How long a task is leased to a worker (30 s).
    pub lease: Duration,
    /// Attempts and retention.
    pub settings: QueueSettings,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            queue: "memory".to_owned(),
            lease: Duration::from_secs(30),
            settings: QueueSettings::default(),
        }
    }
}

impl QueueConfig {
    /// Reads [`ENV_QUEUE`], [`ENV_LEASE_SECS`] and [`ENV_MAX_ATTEMPTS`];
    /// a bad value is an error naming the variable.
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
        check_queue(&config.queue)?;
        if let Some(text) = read(ENV_LEASE_SECS) {
            let secs: u64 = text
                .trim()
                .parse()
                .ok()
                .filter(|secs| (1..=86_400).contains(secs))
                .ok_or_else(|| QueueError::Invalid {
                    setting: ENV_LEASE_SECS,
                    reason: format!("expected whole seconds from 1 to 86400, got {text:?}"),
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
        Ok(config)
    }

    /// Opens the queue it names (connecting to Redis, for a URL).
    pub async fn open(&self) -> Result<AnyQueue, QueueError> {
        check_queue(&self.queue)?;
        if self.queue == "memory" {
            return Ok(AnyQueue::Memory(MemoryQueue::with_settings(
                self.settings.clone(),
            )));
        }
        let settings = RedisSettings::new(self.queue.clone()).with_queue(self.settings.clone());
        Ok(AnyQueue::Redis(RedisQueue::connect(settings).await?))
    }
}

fn check_queue(queue: &str) -> Result<(), QueueError> {
    if queue == "memory" || queue.starts_with("redis://") {
        return Ok(());
    }
    let reason = if queue.starts_with("rediss://") {
        "Redis over TLS (rediss://) is not built in: use redis:// on a trusted network, \
         or a local TLS proxy in front of Redis"
            .to_owned()
    } else {
        // The value may hold a password: show its scheme only.
        let scheme = queue.split("://").next().unwrap_or_default();
        format!("expected `memory` or a redis:// URL, got a value starting {scheme:?}")
    };
    Err(QueueError::Invalid {
        setting: ENV_QUEUE,
        reason,
    })
}

/// A queue in memory or on Redis, chosen at run time.
#[derive(Debug)]
pub enum AnyQueue {
    /// In this process.
    Memory(MemoryQueue),
    /// On Redis.
    Redis(RedisQueue),
}

impl AnyQueue {
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
    async fn put(&self, task: &Packet) -> Result<Put, QueueError> {
        both!(self, queue => queue.put(task))
    }

    async fn lease(&self, worker: &str, lease: Duration) -> Result<Option<Leased>, QueueError> {
        both!(self, queue => queue.lease(worker, lease))
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

    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        both!(self, queue => queue.result(method, payload))
    }

    async fn dead(&self) -> Result<Vec<DeadTask>, QueueError> {
        both!(self, queue => queue.dead())
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
        ]))
        .unwrap();
        assert_eq!(config.queue, "redis://10.0.0.5:6379/0");
        assert_eq!(config.lease, Duration::from_secs(45));
        assert_eq!(config.settings.max_attempts, 3);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err =
            QueueConfig::from_lookup(lookup(&[(ENV_QUEUE, "rediss://:secret@host")])).unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        for (name, value) in [
            (ENV_QUEUE, "postgres"),
            (ENV_LEASE_SECS, "0"),
            (ENV_LEASE_SECS, "soon"),
            (ENV_MAX_ATTEMPTS, "0"),
            (ENV_MAX_ATTEMPTS, "-1"),
        ] {
            let err = QueueConfig::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert!(err.to_string().starts_with(name), "{name}={value}: {err}");
            assert!(err.to_string().contains(value), "{err}");
        }
    }
}
