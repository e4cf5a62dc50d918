//! The queue's settings ([`QueueSettings`]), counts ([`Stats`]) and errors
//! ([`QueueError`]).

use std::time::Duration;

#[cfg(doc)]
use crate::{Acked, Put, TaskQueue};

/// Counts of a queue's tasks and events, all methods together
/// ([`TaskQueue::method_stats`] counts per method).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tasks waiting to be handed out (expired leases included; not the
    /// scheduled ones, which [`TaskQueue::method_stats`] counts).
    pub queued: u64,
    /// Tasks handed out and not yet acked.
    pub leased: u64,
    /// Tasks acked, since the queue was created.
    pub done: u64,
    /// Dead letters now.
    pub dead: u64,
    /// Puts refused as duplicates, since the queue was created.
    pub duplicates: u64,
    /// Puts refused because the name was held by another task, since the
    /// queue was created.
    pub names_taken: u64,
    /// Puts refused because the queue was full, since the queue was
    /// created.
    pub full: u64,
    /// Times a task was handed out again (after an expired lease or a
    /// nack), since the queue was created.
    pub redeliveries: u64,
}

#[cfg(feature = "metrics")]
impl Stats {
    /// Records these counts through the `metrics` facade (the `metrics`
    /// feature; `docs/METRICS.md` lists the names): the tasks in each state
    /// as gauges, the events since the queue was created as counters set to
    /// their absolute values. Read a queue's counts with
    /// [`TaskQueue::stats`] now and then and record them; on Redis they are
    /// the whole queue's, shared by every server.
    ///
    /// ```
    /// use stream_rpc_queue::{MemoryQueue, TaskQueue};
    ///
    /// # async fn run() -> Result<(), stream_rpc_queue::QueueError> {
    /// let queue = MemoryQueue::new();
    /// queue.stats().await?.record();
    /// # Ok(())
    /// # }
    /// ```
    pub fn record(&self) {
        for (state, count) in [
            ("queued", self.queued),
            ("leased", self.leased),
            ("dead", self.dead),
        ] {
            metrics::gauge!("stream_rpc_queue_tasks", "state" => state).set(count as f64);
        }
        for (name, count) in [
            ("stream_rpc_queue_done_total", self.done),
            ("stream_rpc_queue_duplicates_total", self.duplicates),
            ("stream_rpc_queue_redeliveries_total", self.redeliveries),
        ] {
            metrics::counter!(name).absolute(count);
        }
    }
}

/// Settings shared by both implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSettings {
    /// How many times a task is handed out before it is a dead letter
    /// ([`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: u32,
    /// How long a done task's content name and result are kept
    /// ([`DEFAULT_RETENTION`]).
    pub retention: Duration,
    /// How many tasks the queue holds at most, queued, leased and dead
    /// together ([`DEFAULT_MAX_TASKS`]); a put beyond is [`Put::Full`].
    pub max_tasks: u64,
    /// The largest result an ack keeps, in bytes of JSON
    /// ([`DEFAULT_MAX_RESULT_BYTES`]); a larger one is
    /// [`Acked::TooLarge`].
    pub max_result_bytes: usize,
}

/// The default [`QueueSettings::max_attempts`]: 5.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The default [`QueueSettings::retention`]: 1 h.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60 * 60);
/// The default [`QueueSettings::max_tasks`]: 100,000.
pub const DEFAULT_MAX_TASKS: u64 = 100_000;
/// The default [`QueueSettings::max_result_bytes`]: 1 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1 << 20;

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retention: DEFAULT_RETENTION,
            max_tasks: DEFAULT_MAX_TASKS,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl QueueSettings {
    /// Sets [`max_attempts`](Self::max_attempts) (at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets [`retention`](Self::retention).
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`max_tasks`](Self::max_tasks) (at least 1).
    #[must_use]
    pub fn with_max_tasks(mut self, max_tasks: u64) -> Self {
        self.max_tasks = max_tasks.max(1);
        self
    }

    /// Sets [`max_result_bytes`](Self::max_result_bytes).
    #[must_use]
    pub fn with_max_result_bytes(mut self, max_result_bytes: usize) -> Self {
        self.max_result_bytes = max_result_bytes;
        self
    }
}

/// A queue operation failed; never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue's backing service cannot be reached (down, restarting,
    /// refusing connections). Whether the operation took effect is unknown
    /// when it failed mid-command; the queue did not retry it.
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
    /// The backing service did not answer in time; whether the operation
    /// took effect is unknown.
    #[error("the queue did not answer in time: {0}")]
    Timeout(String),
    /// The backing service answered something this version cannot read (or
    /// refused the command).
    #[error("the queue's answer was not understood: {0}")]
    Protocol(String),
    /// A task could not be encoded or decoded.
    #[error("a task could not be encoded or decoded: {0}")]
    Task(String),
    /// A setting is not valid.
    #[error("{setting} is not valid: {reason}")]
    Invalid {
        /// The setting at fault.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
}
