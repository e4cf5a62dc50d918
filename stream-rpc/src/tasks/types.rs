//! The types a producer, a worker and a queue server share: what travels in
//! the payloads of the `task.*` and `schedule.*` methods (PROTOCOL.md,
//! "Tasks"). The queue crate (`stream-rpc-queue`) uses the same types.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::packet::Packet;

/// Names a task by its packet's own `peer` and `id`; on the wire
/// `{"peer": P, "id": N}`, shown (and typed on the command line) as
/// `P:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskRef {
    /// The task packet's `peer`.
    pub peer: Uuid,
    /// The task packet's `id`.
    pub id: u64,
}

impl TaskRef {
    /// The name of `task`.
    pub fn of(task: &Packet) -> Self {
        TaskRef {
            peer: task.peer,
            id: task.id,
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.peer, self.id)
    }
}

/// A text that is not `PEER:ID` (a UUID, a colon, a whole number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a task name: give PEER:ID, a UUID and a whole number, as `queue put` prints")]
pub struct TaskRefError(pub String);

impl FromStr for TaskRef {
    type Err = TaskRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || TaskRefError(text.chars().take(100).collect());
        let (peer, id) = text.trim().rsplit_once(':').ok_or_else(bad)?;
        Ok(TaskRef {
            peer: peer.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// The metadata key of a pushed task's name (`PEER:ID`), in the call
/// that hands it to a worker: `ctx.meta().get(TASK_ID_META)`.
pub const TASK_ID_META: &str = "task-id";

/// The metadata key of a pushed task's attempt number (`1` for the first
/// attempt), in the call that hands it to a worker.
pub const TASK_ATTEMPT_META: &str = "task-attempt";

/// How soon a task is handed out among those available: every `high` task
/// before any `normal` one, every `normal` before any `low`; oldest first
/// within a level.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Before the others.
    High,
    /// The default.
    #[default]
    Normal,
    /// After the others.
    Low,
}

impl Priority {
    /// Its wire name: `high`, `normal` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!(
                "{other:?} is not a priority: give high, normal or low"
            )),
        }
    }
}

/// How long a failed task waits before its next attempt: `initial` after
/// the first failure, doubled after each one, at most `max`. On the wire
/// `{"initial_ms": N, "max_ms": M}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// The wait after the first failed attempt.
    #[serde(rename = "initial_ms", with = "millis")]
    pub initial: Duration,
    /// The longest wait.
    #[serde(rename = "max_ms", with = "millis")]
    pub max: Duration,
}

/// The default [`Backoff`]: 1 s, doubling, at most 5 min.
pub const DEFAULT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(300),
};

impl Default for Backoff {
    fn default() -> Self {
        DEFAULT_BACKOFF
    }
}

impl Backoff {
    /// The wait before the attempt after failed attempt `attempt` (1 for
    /// the first): `initial × 2^(attempt − 1)`, at most `max`.
    pub fn after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// The most attempts a task may be given ([`TaskOptions::max_attempts`]).
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// The longest a dedupe key may be, in bytes ([`TaskOptions::dedupe`]).
pub const MAX_DEDUPE_LEN: usize = 256;

/// How a task is put: when it may run, how soon, how often it is tried,
/// what makes two puts one task. On the wire the object `options` of
/// `task.put`, every field optional:
/// `{"run_at": RFC3339, "delay_ms": N, "priority": "high", "max_attempts":
/// N, "backoff": {"initial_ms": N, "max_ms": M}, "dedupe": "key",
/// "timeout_ms": N}` (`delay_ms` is read into `run_at` by the server, from
/// its clock; giving both is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskOptions {
    /// Not handed out before this time (a delayed or scheduled task);
    /// `None`: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// How soon among the available tasks.
    #[serde(default, skip_serializing_if = "is_normal")]
    pub priority: Priority,
    /// How many times it is handed out at most (1 to
    /// [`MAX_ATTEMPTS_LIMIT`]); `None`: the queue's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The wait between a failed attempt and the next; `None`:
    /// [`DEFAULT_BACKOFF`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// What makes two puts one task (1 to [`MAX_DEDUPE_LEN`] bytes);
    /// `None`: the method and the payload as canonical JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<String>,
    /// How long one attempt may run on a worker fed by push before it is
    /// cancelled and counted as failed; `None`: the server's setting.
    #[serde(
        default,
        rename = "timeout_ms",
        with = "millis_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

fn is_normal(priority: &Priority) -> bool {
    *priority == Priority::Normal
}

impl TaskOptions {
    /// Runs no sooner than `delay` from now (the producer's clock).
    #[must_use]
    pub fn delay(self, delay: Duration) -> Self {
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|delay| Utc::now().checked_add_signed(delay));
        self.run_at(at.unwrap_or(DateTime::<Utc>::MAX_UTC))
    }

    /// Runs no sooner than `at`.
    #[must_use]
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Sets the [`Priority`].
    #[must_use]
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the most attempts.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sets the [`Backoff`].
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Sets the dedupe key.
    #[must_use]
    pub fn dedupe(mut self, key: impl Into<String>) -> Self {
        self.dedupe = Some(key.into());
        self
    }

    /// Sets the time limit of one attempt.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Why these options cannot be taken: `max_attempts` out of 1 to
    /// [`MAX_ATTEMPTS_LIMIT`], an empty or too long dedupe key, a backoff
    /// whose `initial` is zero or above `max`, a zero timeout.
    pub fn check(&self) -> Result<(), String> {
        if let Some(attempts) = self.max_attempts
            && !(1..=MAX_ATTEMPTS_LIMIT).contains(&attempts)
        {
            return Err(format!(
                "max_attempts is {attempts}: give 1 to {MAX_ATTEMPTS_LIMIT}"
            ));
        }
        if let Some(key) = &self.dedupe
            && (key.is_empty() || key.len() > MAX_DEDUPE_LEN)
        {
            return Err(format!(
                "dedupe is {} bytes long: give 1 to {MAX_DEDUPE_LEN}",
                key.len()
            ));
        }
        if let Some(backoff) = &self.backoff
            && (backoff.initial.is_zero() || backoff.initial > backoff.max)
        {
            return Err("backoff: initial_ms must be above 0 and at most max_ms".into());
        }
        if self.timeout.is_some_and(|limit| limit.is_zero()) {
            return Err("timeout_ms must be above 0".into());
        }
        Ok(())
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Put with a `run_at` in the future, or waiting for its next attempt
    /// after a failure (backoff).
    Scheduled,
    /// Waiting to be handed out.
    Queued,
    /// Handed to a worker, not yet finished.
    Leased,
    /// Finished: a worker acknowledged it with its result.
    Done,
    /// Finished: it failed for good (its error was final, or it was tried
    /// `max_attempts` times); a dead letter, which may be requeued.
    Dead,
    /// Finished: cancelled before it was handed out, or cancelled while it
    /// ran.
    Cancelled,
}

impl TaskState {
    /// Its wire name (`scheduled`, `queued`, `leased`, `done`, `dead`,
    /// `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Done => "done",
            TaskState::Dead => "dead",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Whether nothing more happens to it (done, dead or cancelled); a
    /// dead task may still be requeued by hand.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Dead | TaskState::Cancelled
        )
    }
}

impl FromStr for TaskState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "scheduled" => TaskState::Scheduled,
            "queued" => TaskState::Queued,
            "leased" => TaskState::Leased,
            "done" => TaskState::Done,
            "dead" => TaskState::Dead,
            "cancelled" => TaskState::Cancelled,
            other => {
                return Err(format!(
                    "{other:?} is not a task state: give scheduled, queued, leased, done, dead or cancelled"
                ));
            }
        })
    }
}

/// What the queue knows of one task: the answer of `task.show`,
/// `task.wait` and the items of `task.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskInfo {
    /// Its name.
    pub task: TaskRef,
    /// Its method.
    pub method: String,
    /// Its payload.
    pub payload: Value,
    /// Where it is.
    pub state: TaskState,
    /// Its priority.
    pub priority: Priority,
    /// How many times it was handed out.
    pub attempts: u32,
    /// How many times it may be handed out.
    pub max_attempts: u32,
    /// When it was put.
    pub put_at: DateTime<Utc>,
    /// When it may be handed out (scheduled tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
    /// The worker it was last handed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Whether its cancellation was asked while it ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// When it finished (done, dead or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// What its worker acknowledged it with (done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error of its last failed attempt (an error packet's payload,
    /// [`ErrorPayload`](crate::ErrorPayload), as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl TaskInfo {
    /// A task just put, queued (or scheduled, with `run_at` in the
    /// future); for backends and tests.
    pub fn new(
        task: &Packet,
        options: &TaskOptions,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Self {
        let scheduled = options.run_at.is_some_and(|at| at > now);
        TaskInfo {
            task: TaskRef::of(task),
            method: task.method.clone(),
            payload: task.payload.clone(),
            state: if scheduled {
                TaskState::Scheduled
            } else {
                TaskState::Queued
            },
            priority: options.priority,
            attempts: 0,
            max_attempts: options.max_attempts.unwrap_or(max_attempts),
            put_at: now,
            run_at: options.run_at.filter(|_| scheduled),
            worker: None,
            cancel_requested: false,
            finished_at: None,
            result: None,
            error: None,
        }
    }
}

/// When a periodic task is put: every so often, or at the times of a cron
/// expression (UTC). On the wire `{"every_ms": N}` or `{"cron": "0 */5 * * * *"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Every {
    /// Every so often, from when the schedule was set (at least 1 s).
    Interval {
        /// The interval.
        #[serde(rename = "every_ms", with = "millis")]
        every: Duration,
    },
    /// At the times of a cron expression, UTC: six fields with seconds
    /// (`sec min hour day month weekday`) or the usual five.
    Cron {
        /// The expression.
        cron: String,
    },
}

/// A periodic task: the task put at each tick, by exactly one server
/// however many share the queue. On the wire the payload of
/// `schedule.put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Schedule {
    /// Its name (1 to 128 bytes of `a-z A-Z 0-9 - _ .`); putting a schedule
    /// of a name that exists replaces it.
    pub name: String,
    /// The method of the task put at each tick.
    pub method: String,
    /// Its payload.
    #[serde(default)]
    pub payload: Value,
    /// When.
    #[serde(flatten)]
    pub every: Every,
    /// The options of each task put (its `run_at` is the tick's time).
    #[serde(default)]
    pub options: TaskOptions,
}

impl Schedule {
    /// A schedule of `name` that puts `method` with `payload` `every`.
    pub fn new(
        name: impl Into<String>,
        method: impl Into<String>,
        payload: Value,
        every: Every,
    ) -> Self {
        Schedule {
            name: name.into(),
            method: method.into(),
            payload,
            every,
            options: TaskOptions::default(),
        }
    }

    /// Sets the options of each task put.
    #[must_use]
    pub fn options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }
}

/// A schedule as the queue keeps it: the answer of `schedule.put` and the
/// items of `schedule.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Its next tick.
    pub next_at: DateTime<Utc>,
    /// Its last tick that put a task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<DateTime<Utc>>,
    /// How many ticks put a task, since it was set.
    pub fired: u64,
}

/// A fleet-wide limit of one method, kept in the queue's backend so that
/// every server and worker obeys it: at most `concurrency` tasks of the
/// method leased at once, at most `rate` handed out per period. On the wire
/// `{"method": M, "concurrency": N, "rate": {"count": C, "per_ms": P}}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MethodLimit {
    /// The most tasks of the method leased at once; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// The most tasks of the method handed out per period; `None`: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

impl MethodLimit {
    /// No limit.
    pub fn none() -> Self {
        MethodLimit::default()
    }

    /// Sets the concurrency limit.
    #[must_use]
    pub fn concurrency(mut self, most: u32) -> Self {
        self.concurrency = Some(most);
        self
    }

    /// Sets the rate limit.
    #[must_use]
    pub fn rate(mut self, count: u32, per: Duration) -> Self {
        self.rate = Some(Rate { count, per });
        self
    }
}

/// At most `count` per `per`, spread evenly (a task every `per / count`,
/// no burst above `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// Per how long.
    #[serde(rename = "per_ms", with = "millis")]
    pub per: Duration,
}

/// Counts of one method's tasks: the states now, and the events since the
/// queue was created. The items of `task.stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MethodStats {
    /// Waiting to be handed out.
    pub queued: u64,
    /// Waiting for their time (delayed, or backing off).
    pub scheduled: u64,
    /// Handed out and not finished.
    pub running: u64,
    /// Acknowledged.
    pub done: u64,
    /// Failed attempts (each one, retried or not).
    pub failed: u64,
    /// Attempts scheduled again after a failure.
    pub retried: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Dead letters (failed for good).
    pub dead: u64,
    /// Times a task of the method was ready but held back by its rate or
    /// concurrency limit.
    pub limited: u64,
}

/// Durations as whole milliseconds on the wire.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

/// Optional durations as whole milliseconds on the wire.
pub(crate) mod millis_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::millis::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_task_ref_reads_back_what_it_shows() {
        let task = TaskRef {
            peer: Uuid::from_u128(7),
            id: 42,
        };
        assert_eq!(task.to_string().parse::<TaskRef>(), Ok(task));
        assert!("nope".parse::<TaskRef>().is_err());
        assert!(format!("{}:x", task.peer).parse::<TaskRef>().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        assert_eq!(backoff.after(1), Duration::from_secs(1));
        assert_eq!(backoff.after(2), Duration::from_secs(2));
        assert_eq!(backoff.after(4), Duration::from_secs(8));
        assert_eq!(backoff.after(5), Duration::from_secs(10));
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn options_on_the_wire() {
        let options: TaskOptions = serde_json::from_value(json!({
            "priority": "high", "max_attempts": 3,
            "backoff": {"initial_ms": 10, "max_ms": 100}, "timeout_ms": 500
        }))
        .unwrap();
        assert_eq!(options.priority, Priority::High);
        assert_eq!(options.timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            serde_json::to_value(TaskOptions::default()).unwrap(),
            json!({})
        );
        assert!(TaskOptions::default().max_attempts(0).check().is_err());
        assert!(TaskOptions::default().dedupe("").check().is_err());
        assert!(TaskOptions::default().max_attempts(3).check().is_ok());
    }

    #[test]
    fn schedules_on_the_wire() {
        let every: Schedule = serde_json::from_value(json!({
            "name": "tick", "method": "m", "every_ms": 1000
        }))
        .unwrap();
        assert_eq!(
            every.every,
            Every::Interval {
                every: Duration::from_secs(1)
            }
        );
        let cron: Schedule = serde_json::from_value(json!({
            "name": "tick", "method": "m", "payload": [1], "cron": "0 * * * * *"
        }))
        .unwrap();
        assert_eq!(
            cron.every,
            Every::Cron {
                cron: "0 * * * * *".into()
            }
        );
    }
}
