//! A task queue for stream-rpc servers, shared by many servers when it lives
//! on Redis.
//!
//! A queue kept in one process's memory cannot be shared by a second
//! server, and a crash loses it all. [`TaskQueue`] is a queue of task
//! packets with the guarantees a fleet of servers and workers needs, in two
//! implementations with the same semantics, checked by one conformance
//! suite: [`MemoryQueue`] (embedded, the default) and [`RedisQueue`] (on
//! Redis, shared by every server that points at it). Every operation is
//! atomic: on Redis, one Lua script.
//!
//! - **At least once.** [`lease`](TaskQueue::lease) hands out an
//!   available task to one worker for a while; a task not
//!   [`ack`](TaskQueue::ack)ed in time is handed out again. A worker may
//!   [`extend`](TaskQueue::extend) its lease, or [`nack`](TaskQueue::nack) it
//!   to give the task back at once.
//! - **Priorities, then age.** Among the available tasks a lease admits
//!   ([`LeaseFilter`]: any method, or a worker's methods), every `high`
//!   one goes before any `normal` one, every `normal` before any `low`
//!   ([`Priority`]), and the oldest first within a level (the order they
//!   became available: put, due, given back).
//! - **Delays.** A task put with a `run_at` in the future
//!   ([`TaskOptions`]) is [`Put::Scheduled`] and is not handed out before
//!   then; when a lease finds nothing, [`Lease::Empty`] says when the next
//!   task is due, so a server waits for that time rather than polling.
//! - **Retries with backoff.** A worker that fails an attempt
//!   ([`fail`](TaskQueue::fail)) with a retryable error has the task
//!   scheduled again after its [`Backoff`] (1 s doubling to 5 min unless
//!   the task says otherwise), until its `max_attempts` (the task's, else
//!   the queue's, 5 by default); then, or at once for a final error, it is
//!   a dead letter with its error kept.
//! - **Duplicates refused.** A task's content is its `method` and its
//!   payload as canonical JSON ([`dedup_key`]), or the `dedupe` key of its
//!   options ([`dedupe_key`]; such keys never meet content keys): two
//!   `parse_article` tasks for article 3249 are one task. The key is held
//!   while the task is scheduled, queued, leased or dead, and for a
//!   retention window (1 h by default) after it is done; a put of a held
//!   key is refused as [`Put::Duplicate`], which names the task that holds
//!   it, so that a producer may await that one. Concurrent puts of one
//!   task queue it once. A cancelled task releases its key at once.
//! - **Names never collide silently.** A task is named in acks by its
//!   packet's own `peer` and `id` ([`TaskRef`]). The name is held while the
//!   task is scheduled, queued, leased or dead, and released when it is
//!   done, cancelled or purged; a put of a *different* task under a held
//!   name is refused as [`Put::NameTaken`] (the same task again is a
//!   [`Put::Duplicate`]), so one name never stands for two tasks, and ack,
//!   nack, extend, fail, requeue and dead-lettering only touch a name while
//!   it names that very task. A done task's name is free at once, so a
//!   peer that starts counting again (a restart with a fixed peer id) can
//!   reuse it.
//! - **Cancellation.** [`cancel`](TaskQueue::cancel) of a scheduled or
//!   queued task cancels it at once: it is never handed out. Of a running
//!   one, it asks its worker to stop ([`QueueEvent::CancelRequested`], told
//!   to every server): the attempt's end (an ack, a failure, a nack, or its
//!   lease running out) makes it cancelled, never retried.
//! - **Fleet limits.** [`set_limit`](TaskQueue::set_limit) bounds a method
//!   across every server on the backend: at most `concurrency` of its
//!   tasks leased at once, and at most `count` handed out per period (a
//!   token bucket of `count` tokens refilled `count` per period: a burst of
//!   `count`, then one every `period / count`). A task held back waits
//!   (counted as `limited` in [`method_stats`](TaskQueue::method_stats));
//!   [`Lease::Empty`] says when the rate lets the next one go, and the end
//!   of a lease of a method held back by its concurrency is told as
//!   [`QueueEvent::Ready`].
//! - **Periodic tasks.** A [`Schedule`] (an interval, or a cron expression
//!   in UTC with five or six fields) is kept in the backend;
//!   [`fire_schedules`](TaskQueue::fire_schedules), called by every server
//!   now and then, puts each tick's task exactly once however many servers
//!   call it at once (the tick's task is named and deduplicated by the
//!   schedule's name and the tick's time). Ticks missed while no server
//!   called fire once, not once per tick missed.
//! - **What it knows of a task.** [`show`](TaskQueue::show) tells a task's
//!   state, attempts, worker, result or error ([`TaskInfo`]) while it is
//!   held and for the retention window after it is done or cancelled;
//!   [`list`](TaskQueue::list) the tasks in a state;
//!   [`method_stats`](TaskQueue::method_stats) counts per method.
//! - **Events.** [`events`](TaskQueue::events) tells what a server waits
//!   for instead of polling: a task ready, a task finished, a cancellation
//!   asked (on Redis, from every server on it). Events are not kept: a
//!   subscriber that falls behind is told it lagged and re-checks.
//! - **Bounded.** At most [`max_tasks`](QueueSettings::max_tasks) tasks
//!   scheduled, queued, leased or dead together (100,000 by default): a put
//!   beyond is refused as [`Put::Full`]. A result larger than
//!   [`max_result_bytes`](QueueSettings::max_result_bytes) (1 MiB) is
//!   refused as [`Acked::TooLarge`], and the task stays leased. At most
//!   [`MAX_LIMITS`] limits and [`MAX_SCHEDULES`] schedules.
//! - **Results kept.** `ack` stores the worker's result (any JSON) for the
//!   retention window: in the task's record ([`show`](TaskQueue::show)) and
//!   under its content ([`result`](TaskQueue::result)).
//! - **Stale acks refused.** An ack (or a failure) from a worker whose
//!   lease expired and was handed to another is [`Acked::Stale`]
//!   ([`Failed::Stale`]) and changes nothing.
//! - **Dead letters.** A task handed out `max_attempts` times without an
//!   ack, or failed for good, is moved to the dead letters instead of being
//!   handed out again; [`dead`](TaskQueue::dead) lists them,
//!   [`requeue`](TaskQueue::requeue) puts one back.
//! - **Nothing grows.** Finished tasks leave nothing behind but their
//!   record, result and key, which expire after the retention window; the
//!   tasks held are bounded by `max_tasks`, and so are the finished
//!   records the memory queue keeps (past that many, the oldest are
//!   forgotten before their window ends); each result by
//!   `max_result_bytes`. The counts per method are kept for as many
//!   methods as a service has, up to 10,000 methods: when a peer's task
//!   brings one more, those of the methods that hold no task are
//!   forgotten, in memory as on Redis (where the check runs only when a
//!   method not counted yet comes, in the script that counts it).
//!
//! [`RedisReplayStore`] shares replay and reflection protection between
//! the servers on one Redis, so that a token accepted by one is refused by
//! all; a server whose queue is on Redis uses it by default
//! ([`replay_store_for`], [`ENV_REPLAY`]).
//!
//! Both reach Redis at a `redis://` URL, or at a `rediss://` URL over TLS
//! ([`RedisTls`]: the system's trust store or a CA file, and a client
//! certificate when Redis asks; the `tls` feature, on by default).
//!
//! Tasks are stream-rpc [`Packet`]s (the article example's task is a packet
//! carried as the payload of `put_in_queue`) and are named in acks by their
//! own `peer` and `id` ([`TaskRef`]); a worker is named by a string of the
//! caller's choosing (the example queue server uses the worker's peer id).
//! The queue knows no method of any service: a server built on it (like the
//! `stream-rpc serve` command's) decides what its peers call.
//!
//! ```
//! use std::time::Duration;
//!
//! use serde_json::json;
//! use stream_rpc::Packet;
//! use stream_rpc_queue::{
//!     Failed, Lease, LeaseFilter, MemoryQueue, Priority, TaskOptions, TaskQueue, TaskRef,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stream_rpc_queue::QueueError> {
//! let queue = MemoryQueue::new();
//! let task = Packet::new(uuid::Uuid::nil(), 1, "resize", json!({"image": 7}));
//! let options = TaskOptions::default().priority(Priority::High).max_attempts(3);
//! queue.put_with(&task, &options).await?;
//! let filter = LeaseFilter::methods(["resize"]);
//! let Lease::Leased(leased) = queue.lease_with("worker-1", Duration::from_secs(30), &filter).await? else {
//!     unreachable!("the task is queued");
//! };
//! // The attempt failed, but may be retried: scheduled again after its backoff.
//! let error = json!({"code": "handler_error", "message": "the disk is full"});
//! let failed = queue.fail(TaskRef::of(&leased.task), "worker-1", &error, true).await?;
//! assert!(matches!(failed, Failed::Retrying { .. }));
//! # Ok(())
//! # }
//! ```
//!
//! With the `testing` feature, `stream_rpc_queue::testing` is the
//! conformance suite both queues pass, for a queue of your own to run as
//! well (`conformance_tests!`).

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use stream_rpc::Packet;

mod any;
mod connect;
mod events;
mod memory;
mod outcomes;
mod redis_queue;
mod replay;
mod schedule;
pub mod server;
mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use stream_rpc::tasks::{
    Backoff, DEFAULT_BACKOFF, Every, MethodLimit, MethodStats, Priority, Rate, Schedule,
    ScheduleInfo, TaskInfo, TaskOptions, TaskRef, TaskState,
};

pub use any::{
    AnyQueue, DEFAULT_LEASE, ENV_LEASE_SECS, ENV_MAX_ATTEMPTS, ENV_MAX_RESULT_BYTES, ENV_MAX_TASKS,
    ENV_QUEUE, QueueConfig,
};
pub use connect::{ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, RedisTls};
pub use events::{EVENT_CAPACITY, QueueEvent, QueueEvents};
pub use memory::MemoryQueue;
pub use outcomes::{
    Acked, Cancel, DeadLetters, DeadTask, Failed, Fired, Lease, LeaseFilter, Leased, Put,
};
pub use redis_queue::{RedisQueue, RedisSettings};
pub use replay::{ENV_REPLAY, RedisReplayStore, ReplaySharing, WhenUnreachable, replay_store_for};
pub use server::{DEFAULT_ATTEMPT_TIMEOUT, TaskServer};
pub use settings::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_TASKS, DEFAULT_RETENTION,
    QueueError, QueueSettings, Stats,
};

/// A task queue: in memory ([`MemoryQueue`]) or on Redis ([`RedisQueue`]),
/// with the same semantics (see the crate docs).
///
/// Every method is one round trip at most, and atomic; none is retried by
/// the queue after an error whose outcome is unknown (a connection that
/// broke mid-command): the error goes to the caller, who decides (a `put`
/// may be repeated safely, since a duplicate is refused).
pub trait TaskQueue: Send + Sync + 'static {
    /// Queues `task` with `options`: [`Put::Queued`], or [`Put::Scheduled`]
    /// when its `run_at` is in the future (it becomes queued then, lazily:
    /// at the next lease, list or count). Refuses it as a duplicate of a
    /// task that holds its dedupe key (scheduled, queued, leased, dead, or
    /// done within the retention window: [`Put::Duplicate`], naming that
    /// task), as a different task under a name held by another
    /// ([`Put::NameTaken`]), or because the queue holds `max_tasks` tasks
    /// ([`Put::Full`]), checked in that order. The options are not checked
    /// here ([`TaskOptions::check`] is the server's); a `max_attempts` above
    /// [`MAX_ATTEMPTS_LIMIT`](stream_rpc::tasks::MAX_ATTEMPTS_LIMIT) is
    /// taken as that limit.
    fn put_with(
        &self,
        task: &Packet,
        options: &TaskOptions,
    ) -> impl Future<Output = Result<Put, QueueError>> + Send;

    /// [`put_with`](Self::put_with) with the default options: queued at
    /// once, normal priority, deduplicated by method and payload.
    fn put(&self, task: &Packet) -> impl Future<Output = Result<Put, QueueError>> + Send {
        async move { self.put_with(task, &TaskOptions::default()).await }
    }

    /// Hands the first available task that `filter` admits to `worker` for
    /// `lease`, with its attempt number (1 the first time): high priority
    /// before normal before low, oldest first within a level (oldest: the
    /// order it became available). A task of a method whose
    /// [`MethodLimit`] is reached (its concurrency, or its rate) is held
    /// back. [`Lease::Empty`] when none may be handed out, with when one may.
    /// A task handed out `max_attempts` times already is a dead letter
    /// instead. On Redis, a stored task that cannot be decoded is moved to
    /// the dead letters (and logged) and the next one is leased.
    fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> impl Future<Output = Result<Lease, QueueError>> + Send;

    /// [`lease_with`](Self::lease_with) of any method's task; `None` when
    /// none is available.
    fn lease(
        &self,
        worker: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<Leased>, QueueError>> + Send {
        async move {
            Ok(self
                .lease_with(worker, lease, &LeaseFilter::any())
                .await?
                .leased())
        }
    }

    /// Renews `worker`'s lease of `task` for `lease` from now; `false` when
    /// `worker` does not hold it.
    fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Marks `task` done and keeps `result` (under its name, for
    /// [`show`](Self::show), and under its content's, for
    /// [`result`](Self::result)) for the retention window; a task whose
    /// cancellation was asked while it ran ends cancelled instead (its
    /// result kept), and the answer is [`Acked::Done`] too. [`Acked::Stale`]
    /// (and nothing changes) when `worker` is not the last worker it was
    /// handed to, or it is unknown; [`Acked::TooLarge`] (checked first;
    /// nothing changes, a leased task stays leased) when `result` as
    /// compact JSON is longer than
    /// [`max_result_bytes`](QueueSettings::max_result_bytes).
    fn ack(
        &self,
        task: TaskRef,
        worker: &str,
        result: &Value,
    ) -> impl Future<Output = Result<Acked, QueueError>> + Send;

    /// Gives `task` back at once, to be handed out again (the attempt
    /// counts); [`Acked::Stale`] when `worker` does not hold it.
    fn nack(
        &self,
        task: TaskRef,
        worker: &str,
    ) -> impl Future<Output = Result<Acked, QueueError>> + Send;

    /// Ends `worker`'s attempt at `task` as failed with `error` (an error
    /// packet's payload, kept in the task's record): with `retry` and
    /// attempts left, it is scheduled again after its backoff
    /// ([`Failed::Retrying`]); otherwise it is a dead letter
    /// ([`Failed::Dead`]); a task whose cancellation was asked is cancelled
    /// ([`Failed::Cancelled`]). [`Failed::Stale`] (nothing changes) when
    /// `worker` does not hold it.
    fn fail(
        &self,
        task: TaskRef,
        worker: &str,
        error: &Value,
        retry: bool,
    ) -> impl Future<Output = Result<Failed, QueueError>> + Send;

    /// Cancels `task`: at once if it is scheduled or queued (its dedupe key
    /// is released, so that it may be put again; its record is kept for
    /// the retention window); if it is leased, asks its worker to stop
    /// ([`Cancel::Requested`], [`QueueEvent::CancelRequested`]).
    fn cancel(&self, task: TaskRef) -> impl Future<Output = Result<Cancel, QueueError>> + Send;

    /// What the queue knows of `task`: while it is scheduled, queued,
    /// leased or dead, and for the retention window after it is done or
    /// cancelled; `None` after, or if it was never put.
    fn show(
        &self,
        task: TaskRef,
    ) -> impl Future<Output = Result<Option<TaskInfo>, QueueError>> + Send;

    /// The tasks in `state`, at most `limit` (itself at most
    /// [`MAX_LIST`]): scheduled, queued, leased and dead ones oldest first;
    /// done and cancelled ones (those kept) newest first.
    fn list(
        &self,
        state: TaskState,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TaskInfo>, QueueError>> + Send;

    /// Sets the fleet-wide limit of `method` (every server on the backend
    /// obeys it); [`MethodLimit::none`] removes it. [`QueueError::Invalid`]
    /// for a zero concurrency or rate, or beyond [`MAX_LIMITS`] methods.
    fn set_limit(
        &self,
        method: &str,
        limit: MethodLimit,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The limits set, by method.
    fn limits(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, MethodLimit>, QueueError>> + Send;

    /// Sets a periodic task, replacing the schedule of that name; its first
    /// tick is one interval from now, or the cron expression's next time.
    /// [`QueueError::Invalid`] for a bad name, cron expression or options,
    /// an interval under [`MIN_INTERVAL`], or beyond [`MAX_SCHEDULES`].
    fn put_schedule(
        &self,
        schedule: &Schedule,
    ) -> impl Future<Output = Result<ScheduleInfo, QueueError>> + Send;

    /// Removes the schedule `name`; `false` when there was none.
    fn remove_schedule(&self, name: &str) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// The schedules, by name.
    fn schedules(&self) -> impl Future<Output = Result<Vec<ScheduleInfo>, QueueError>> + Send;

    /// Puts the task of every due tick of every schedule, each tick by
    /// exactly one caller however many servers share the backend (the
    /// tick's task is named and deduplicated by the schedule's name and
    /// the tick's time). Ticks missed while no server called (all down)
    /// fire once, not once per missed tick. Returns what this call put and
    /// the next tick of any schedule.
    fn fire_schedules(&self) -> impl Future<Output = Result<Fired, QueueError>> + Send;

    /// Counts per method: its tasks in each state now, and its events
    /// since the queue was created.
    fn method_stats(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, MethodStats>, QueueError>> + Send;

    /// A subscription to this queue's events (on Redis: of every server
    /// on it): what a server waits on instead of polling.
    fn events(&self) -> QueueEvents;

    /// The result stored by the ack of the task named by `method` and
    /// `payload` (deduplicated by its content, not a key of its own),
    /// while it is kept.
    fn result(
        &self,
        method: &str,
        payload: &Value,
    ) -> impl Future<Output = Result<Option<Value>, QueueError>> + Send;

    /// The dead letters, oldest first, and how many stored ones could not
    /// be decoded (written by another version, or by hand): those are
    /// skipped and logged with their entry id, not an error for the whole
    /// list. [`purge_dead`](Self::purge_dead) drops them too.
    fn dead_letters(&self) -> impl Future<Output = Result<DeadLetters, QueueError>> + Send;

    /// The dead letters, oldest first: [`dead_letters`](Self::dead_letters)
    /// without the count of those skipped.
    fn dead(&self) -> impl Future<Output = Result<Vec<DeadTask>, QueueError>> + Send {
        async move { Ok(self.dead_letters().await?.tasks) }
    }

    /// Puts a dead task back in the queue, with its attempts counted from
    /// zero; `false` when no dead task has that name.
    fn requeue(&self, task: TaskRef) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Forgets every dead task (and releases their names); returns how many.
    fn purge_dead(&self) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Counts of the queue's tasks and events.
    fn stats(&self) -> impl Future<Output = Result<Stats, QueueError>> + Send;
}

/// The most tasks [`TaskQueue::list`] returns at once.
pub const MAX_LIST: usize = 1000;
/// The most methods with a limit ([`TaskQueue::set_limit`]).
pub const MAX_LIMITS: usize = 10_000;
/// The most schedules ([`TaskQueue::put_schedule`]).
pub const MAX_SCHEDULES: usize = 10_000;
/// The shortest interval of a schedule.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest name of a schedule, in bytes.
pub const MAX_SCHEDULE_NAME: usize = 128;

/// The name a task is deduplicated by: its method and its payload as
/// canonical JSON (object keys sorted, no spaces), hashed with SHA-256 (hex)
/// so that it makes a short key.
pub fn dedup_key(method: &str, payload: &Value) -> String {
    let mut text = String::with_capacity(method.len() + 64);
    text.push_str(method);
    text.push('\n');
    write_canonical(payload, &mut text);
    sha256_hex("", text.as_bytes())
}

/// `prefix`, then the SHA-256 of `bytes` in lower-case hex.
fn sha256_hex(prefix: &str, bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let mut hex = String::with_capacity(prefix.len() + 64);
    hex.push_str(prefix);
    for byte in Sha256::digest(bytes) {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The key a task is deduplicated by: the key of its options, when it has
/// one, hashed under a prefix of its own (`d:` and SHA-256 hex) so that it
/// never meets a content key; else its content's ([`dedup_key`]).
pub fn dedupe_key(task: &Packet, options: &TaskOptions) -> String {
    match &options.dedupe {
        Some(key) => sha256_hex("d:", key.as_bytes()),
        None => dedup_key(&task.method, &task.payload),
    }
}

/// JSON with object keys sorted at every level, whatever order the map
/// keeps them in.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sha256_in_lower_case_hex_after_their_prefix() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex("d:", b"abc"), format!("d:{abc}"));
        let mut options = TaskOptions::default();
        options.dedupe = Some("abc".into());
        let task = Packet::new(uuid::Uuid::nil(), 1, "m", json!(null));
        assert_eq!(dedupe_key(&task, &options), format!("d:{abc}"));
    }

    #[test]
    fn a_task_is_named_by_its_method_and_canonical_payload() {
        let a = dedup_key("parse_article", &json!({"article_id": 3249, "lang": "en"}));
        let b = dedup_key("parse_article", &json!({"lang": "en", "article_id": 3249}));
        assert_eq!(a, b, "key order does not matter");
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            dedup_key("parse_article", &json!({"article_id": 3250, "lang": "en"}))
        );
        assert_ne!(
            a,
            dedup_key("fetch_article", &json!({"article_id": 3249, "lang": "en"}))
        );
        // Nested objects are sorted too; arrays keep their order.
        assert_eq!(
            dedup_key("m", &json!({"x": {"b": 1, "a": [2, 1]}})),
            dedup_key("m", &json!({"x": {"a": [2, 1], "b": 1}}))
        );
        assert_ne!(
            dedup_key("m", &json!([1, 2])),
            dedup_key("m", &json!([2, 1]))
        );
        // The method cannot run into the payload.
        assert_ne!(dedup_key("a", &json!("b")), dedup_key("a\"b", &json!(null)));
    }
}
