//! [`QueueEvent`]s: what a queue server waits on instead of polling.

use stream_rpc::tasks::{TaskRef, TaskState};
use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it misses some
/// ([`QueueEvent::Lagged`]).
pub const EVENT_CAPACITY: usize = 1024;

/// Something that happened in a queue, as
/// [`TaskQueue::events`](crate::TaskQueue::events) tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueEvent {
    /// A task of `method` became available at once: put (not scheduled),
    /// given back (nack), requeued, or a lease of a method whose limit
    /// held others back ended. A retry or a delayed task becoming due is
    /// not told: [`Lease::Empty`](crate::Lease::Empty)'s `next_due` names
    /// that time.
    Ready {
        /// The task's method.
        method: String,
    },
    /// A task finished: done, dead, or cancelled.
    Finished {
        /// The task.
        task: TaskRef,
        /// How it ended.
        state: TaskState,
    },
    /// The cancellation of a running task was asked: whoever runs it
    /// should stop it.
    CancelRequested {
        /// The task.
        task: TaskRef,
    },
    /// This subscriber fell behind (or, on Redis, its subscription was
    /// re-established) and missed some events: re-check what it waits for.
    Lagged {
        /// How many were missed (0 when unknown).
        missed: u64,
    },
}

/// A subscription to a queue's events
/// ([`TaskQueue::events`](crate::TaskQueue::events)). Events are not
/// kept: a subscriber sees those that happen after it subscribed. One
/// that falls more than [`EVENT_CAPACITY`] events behind gets
/// [`QueueEvent::Lagged`] and should re-check what it waits for (a lease,
/// a task's state).
#[derive(Debug)]
pub struct QueueEvents {
    receiver: broadcast::Receiver<QueueEvent>,
}

impl QueueEvents {
    /// A subscription reading `receiver` (for queue implementations: keep
    /// the [`broadcast::Sender`], send every event, subscribe here).
    pub fn new(receiver: broadcast::Receiver<QueueEvent>) -> Self {
        QueueEvents { receiver }
    }

    /// The next event; `None` when the queue is gone (no more events will
    /// come).
    pub async fn next(&mut self) -> Option<QueueEvent> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(QueueEvent::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
