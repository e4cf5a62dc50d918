//! The seed's queue server, shared by the `server` and `demo` examples.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use stream_rpc::{Message, Packet, Reply, json};

/// What the server did, for the demo's summary.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests answered, of every kind.
    pub answered: AtomicU64,
    /// Tasks stored by `put_in_queue`.
    pub tasks_put: AtomicU64,
    /// Tasks sent back by `get_task_from_queue`.
    pub tasks_handed_out: AtomicU64,
}

/// Answers `ping`, stores tasks and hands them out, first in first out.
///
/// The Python example pops the newest task; a queue that hands out the
/// oldest first is fairer to tasks and what "queue" promises, so this one
/// is FIFO. One queue serves all connections (the connector shares the
/// service between them), behind a mutex.
#[derive(Debug, Default)]
pub struct QueueServer {
    queue: Mutex<VecDeque<Packet>>,
    /// What it did so far.
    pub stats: ServerStats,
}

impl QueueServer {
    fn answered(&self) {
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// The tasks stored and not yet handed out, oldest first.
    pub fn queued_tasks(&self) -> Vec<Packet> {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.iter().cloned().collect()
    }

    fn pong() -> Message<()> {
        Message::new("pong", ())
    }
}

#[stream_rpc::service]
impl QueueServer {
    /// Answers `pong`.
    async fn ping(&self) -> Message<()> {
        self.answered();
        Self::pong()
    }

    /// Stores the task packet it carries and answers `pong`.
    async fn put_in_queue(&self, task: Packet) -> Message<()> {
        // A poisoned lock only means another handler panicked mid-push;
        // the queue itself is still whole.
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push_back(task);
        self.stats.tasks_put.fetch_add(1, Ordering::Relaxed);
        self.answered();
        Self::pong()
    }

    /// Sends the oldest stored task back unchanged (its own peer, id,
    /// created_at, method and payload), or `pong` when there is none.
    async fn get_task_from_queue(&self) -> Reply {
        let task = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        self.answered();
        match task {
            Some(task) => {
                self.stats.tasks_handed_out.fetch_add(1, Ordering::Relaxed);
                Reply::Forward(task)
            }
            None => Reply::message("pong", json!(null)),
        }
    }
}
