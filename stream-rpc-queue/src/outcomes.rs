//! What the queue's operations answer: [`Put`], [`Lease`], [`Acked`],
//! [`Failed`], [`Cancel`], [`Fired`], dead letters, and the
//! [`LeaseFilter`] a lease is asked with.

use chrono::{DateTime, Utc};
use stream_rpc::Packet;
use stream_rpc::tasks::{TaskOptions, TaskRef, TaskState};

/// What [`TaskQueue::put_with`](crate::TaskQueue::put_with) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Queued: it may be handed out at once.
    Queued,
    /// Queued with a `run_at` in the future: handed out from then on.
    Scheduled,
    /// Refused: the same task (the same dedupe key: method and payload,
    /// or the key given in its options) is scheduled, queued, leased,
    /// dead, or was done within the retention window. `existing` names the
    /// task that holds the key, so that a producer can await it instead;
    /// `None` when that task is no longer known (its record expired).
    Duplicate {
        /// The task that holds the dedupe key.
        existing: Option<TaskRef>,
    },
    /// Refused: another task is queued, leased or dead under the same name
    /// (`peer` and `id`); nothing changed. Put it again under a fresh id.
    NameTaken,
    /// Refused: the queue holds [`max_tasks`](crate::QueueSettings::max_tasks)
    /// tasks (scheduled, queued, leased and dead together); nothing changed.
    Full,
}

impl Put {
    /// The reason a refusal gives on the wire (`duplicate`, `name_taken`,
    /// `full`); `None` for [`Put::Queued`] and [`Put::Scheduled`].
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Put::Queued | Put::Scheduled => None,
            Put::Duplicate { .. } => Some("duplicate"),
            Put::NameTaken => Some("name_taken"),
            Put::Full => Some("full"),
        }
    }

    /// Whether the task was taken (queued or scheduled).
    pub fn is_taken(self) -> bool {
        matches!(self, Put::Queued | Put::Scheduled)
    }

    /// Whether the put was refused as a duplicate.
    pub fn is_duplicate(self) -> bool {
        matches!(self, Put::Duplicate { .. })
    }
}

/// Which tasks a lease may hand out: any method's, or those of a few
/// methods (a typed worker's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseFilter {
    /// The methods whose tasks may be handed out; `None`: any method.
    pub methods: Option<Vec<String>>,
}

impl LeaseFilter {
    /// Tasks of any method.
    pub fn any() -> Self {
        LeaseFilter { methods: None }
    }

    /// Tasks of these methods only.
    pub fn methods(methods: impl IntoIterator<Item = impl Into<String>>) -> Self {
        LeaseFilter {
            methods: Some(methods.into_iter().map(Into::into).collect()),
        }
    }

    /// Whether a task of `method` may be handed out.
    pub fn admits(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m == method))
    }
}

/// What [`TaskQueue::lease_with`](crate::TaskQueue::lease_with) found.
#[derive(Debug, Clone, PartialEq)]
// Made once per lease and moved out at once: boxing would only add an
// allocation to every lease.
#[allow(clippy::large_enum_variant)]
pub enum Lease {
    /// A task, now leased to the worker.
    Leased(Leased),
    /// No task may be handed out now.
    Empty {
        /// The earliest time one may: the next scheduled task's `run_at`
        /// (a delayed task, or a retry backing off), or when a
        /// rate-limited method may go again. `None`: nothing is pending in
        /// time (a put, a nack or a finished lease of a limited method may
        /// still make one available: see [`QueueEvent::Ready`](crate::QueueEvent::Ready)).
        next_due: Option<DateTime<Utc>>,
    },
}

impl Lease {
    /// The task leased, if any.
    pub fn leased(self) -> Option<Leased> {
        match self {
            Lease::Leased(leased) => Some(leased),
            Lease::Empty { .. } => None,
        }
    }
}

/// A task handed out by [`TaskQueue::lease_with`](crate::TaskQueue::lease_with).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Leased {
    /// The task, as it was put.
    pub task: Packet,
    /// How many times it has been handed out, this time included.
    pub attempt: u32,
    /// The options it was put with (its priority, attempts, backoff,
    /// timeout).
    pub options: TaskOptions,
    /// When it became due: its `run_at`, or when it was put (for the
    /// latency from due to start).
    pub due_at: DateTime<Utc>,
    /// When it was put (for the latency from put to done).
    pub put_at: DateTime<Utc>,
}

impl Leased {
    /// A task handed out for the `attempt`th time (for queue
    /// implementations).
    pub fn new(
        task: Packet,
        attempt: u32,
        options: TaskOptions,
        due_at: DateTime<Utc>,
        put_at: DateTime<Utc>,
    ) -> Self {
        Leased {
            task,
            attempt,
            options,
            due_at,
            put_at,
        }
    }
}

/// What [`TaskQueue::ack`](crate::TaskQueue::ack) and
/// [`TaskQueue::nack`](crate::TaskQueue::nack) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// Done (ack; cancelled, when its cancellation was asked while it ran),
    /// or given back (nack).
    Done,
    /// Refused: the worker does not hold the task (its lease expired and
    /// the task went to another worker, or it was never handed to it, or
    /// the task is unknown or already done). Nothing changed.
    Stale,
    /// Refused (ack only): the result is larger than
    /// [`max_result_bytes`](crate::QueueSettings::max_result_bytes). Nothing
    /// changed: the task is still leased to the worker.
    TooLarge,
}

/// What [`TaskQueue::fail`](crate::TaskQueue::fail) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Scheduled again: its next attempt is due `at` (after its backoff).
    Retrying {
        /// When the next attempt is due.
        at: DateTime<Utc>,
    },
    /// Failed for good (its error was final, or it was tried
    /// `max_attempts` times): a dead letter, its error kept.
    Dead,
    /// Its cancellation was asked while it ran: cancelled, not retried.
    Cancelled,
    /// Refused: the worker does not hold the task. Nothing changed.
    Stale,
}

/// What [`TaskQueue::cancel`](crate::TaskQueue::cancel) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// It was scheduled or queued: cancelled, never to be handed out.
    Cancelled,
    /// It is running: its cancellation is asked
    /// ([`QueueEvent::CancelRequested`](crate::QueueEvent::CancelRequested));
    /// the attempt's end (ack, fail, or its lease running out) makes it
    /// cancelled.
    Requested {
        /// The worker that runs it.
        worker: String,
    },
    /// It had finished already (done, dead or cancelled); nothing changed.
    Finished(TaskState),
    /// No task of that name is known (never put, or forgotten after the
    /// retention window).
    Unknown,
}

/// What [`TaskQueue::fire_schedules`](crate::TaskQueue::fire_schedules) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fired {
    /// The tasks it put (one per due tick it won).
    pub tasks: Vec<TaskRef>,
    /// The next tick of any schedule; `None`: no schedule.
    pub next_at: Option<DateTime<Utc>>,
}

/// A dead letter: a task that failed for good (handed out `max_attempts`
/// times without an ack, or failed with a final error).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadTask {
    /// The task, as it was put.
    pub task: Packet,
    /// How many times it was handed out.
    pub attempts: u32,
}

/// What [`TaskQueue::dead_letters`](crate::TaskQueue::dead_letters) found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetters {
    /// The dead letters that could be read, oldest first.
    pub tasks: Vec<DeadTask>,
    /// How many stored dead letters could not be read and were skipped
    /// (each logged with its entry id).
    pub skipped: u64,
}
