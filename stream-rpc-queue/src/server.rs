//! [`QueueServer`]: the seed's queue server as a service, on a task queue in
//! memory or on Redis, so that several servers can share one queue. The
//! `server`, `demo` and `cluster` examples and the `stream-rpc serve`
//! command run it.
//!
//! Methods (PROTOCOL.md, typed services, has their payloads):
//! - `ping` answers `pong`;
//! - `put_in_queue` (a task packet) answers `pong` with `{"queued": true}`,
//!   or `{"queued": false, "reason": R}` where R is `duplicate` (the same
//!   task is held), `name_taken` (another task is held under its `peer`
//!   and `id`) or `full` (the queue holds its maximum of tasks);
//! - `get_task_from_queue` answers a leased task packet, forwarded as it
//!   was put, or `pong` when none is available;
//! - `save_parsed_article` (`{"task": {"peer": P, "id": N}, "article": ...}`)
//!   acknowledges the task and keeps the article: `pong` with
//!   `{"saved": true}`, or `{"saved": false, "reason": "stale"}` for a
//!   stale lease or an unknown task, or `{"saved": false, "reason":
//!   "too_large", "max_bytes": N}` for an article longer than the queue's
//!   maximum result size (the task stays leased);
//! - `get_parsed_article` (`{"article_id": N}`) answers the article saved
//!   for that `parse_article` task, or `null`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Acked, AnyQueue, MemoryQueue, Put, QueueError, TaskQueue, TaskRef};
use serde::{Deserialize, Serialize};
use stream_rpc::{Context, HandlerError, Message, Packet, Reply, Value, json};
use uuid::Uuid;

/// What the server did, for the demo's summary.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests answered, of every kind.
    pub answered: AtomicU64,
    /// Tasks queued by `put_in_queue`.
    pub tasks_put: AtomicU64,
    /// Tasks refused by `put_in_queue` as duplicates.
    pub duplicates: AtomicU64,
    /// Tasks refused by `put_in_queue` because their name was held by
    /// another task.
    pub names_taken: AtomicU64,
    /// Tasks refused by `put_in_queue` because the queue was full.
    pub full: AtomicU64,
    /// Saves refused because the article was too large.
    pub too_large: AtomicU64,
    /// Tasks sent out by `get_task_from_queue`.
    pub tasks_handed_out: AtomicU64,
    /// Tasks acknowledged by `save_parsed_article`.
    pub tasks_saved: AtomicU64,
}

/// A task named by its packet's own `peer` and `id`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TaskName {
    /// The task packet's `peer`.
    pub peer: Uuid,
    /// The task packet's `id`.
    pub id: u64,
}

/// `{"article_id": N}`: which article.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ArticleRef {
    /// The article.
    pub article_id: u64,
}

/// Answers `ping`, queues tasks and hands them out, oldest first, each to
/// one worker at a time for the lease time; a task whose worker did not
/// save it in time goes to another.
///
/// The Python example pops the newest task; a queue that hands out the
/// oldest first is fairer to tasks and what "queue" promises, so this one
/// is FIFO. One queue serves all connections (the connector shares the
/// service between them) and, on Redis, every server that uses it.
#[derive(Debug)]
pub struct QueueServer {
    queue: AnyQueue,
    lease: Duration,
    /// What it did so far.
    pub stats: ServerStats,
}

impl Default for QueueServer {
    /// A server with its queue in memory and 30 s leases.
    fn default() -> Self {
        QueueServer::new(
            AnyQueue::Memory(MemoryQueue::new()),
            Duration::from_secs(30),
        )
    }
}

impl QueueServer {
    /// A server on `queue`, leasing tasks for `lease`.
    pub fn new(queue: AnyQueue, lease: Duration) -> Self {
        QueueServer {
            queue,
            lease,
            stats: ServerStats::default(),
        }
    }

    /// The queue it serves.
    pub fn queue(&self) -> &AnyQueue {
        &self.queue
    }

    /// Reads the queue's [`Stats`](crate::Stats) and records them through the
    /// `metrics` facade (the `metrics` feature; `docs/METRICS.md` lists the
    /// names): call it now and then (`stream-rpc serve --metrics` does every
    /// 5 s). On Redis the numbers are the whole queue's, shared by every
    /// server.
    pub async fn record_stats(&self) -> Result<(), QueueError> {
        let stats = self.queue.stats().await?;
        #[cfg(feature = "metrics")]
        {
            for (state, count) in [
                ("queued", stats.queued),
                ("leased", stats.leased),
                ("dead", stats.dead),
            ] {
                metrics::gauge!("stream_rpc_queue_tasks", "state" => state).set(count as f64);
            }
            for (name, count) in [
                ("stream_rpc_queue_done_total", stats.done),
                ("stream_rpc_queue_duplicates_total", stats.duplicates),
                ("stream_rpc_queue_redeliveries_total", stats.redeliveries),
            ] {
                metrics::counter!(name).absolute(count);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = stats;
        Ok(())
    }

    fn answered(&self) {
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
    }

    fn pong(payload: Value) -> Message<Value> {
        Message::new("pong", payload)
    }
}

/// The error a peer gets when the queue failed: what happened is logged
/// here, the peer learns only that it may try again.
fn unavailable(error: QueueError) -> HandlerError {
    HandlerError::failed("the task queue is unavailable; try again").with_detail(error.to_string())
}

#[stream_rpc::service]
impl QueueServer {
    /// Answers `pong`.
    async fn ping(&self) -> Message<()> {
        self.answered();
        Message::new("pong", ())
    }

    /// Queues the task packet it carries: `pong` with `{"queued": true}`,
    /// or `{"queued": false, "reason": R}`: `duplicate` when the same task
    /// (method and payload) is queued, being worked on, dead, or was done
    /// within the hour; `name_taken` when another task is queued, being
    /// worked on or dead under the same `peer` and `id`; `full` when the
    /// queue holds its maximum of tasks.
    async fn put_in_queue(&self, task: Packet) -> Result<Message<Value>, HandlerError> {
        let put = self.queue.put(&task).await.map_err(unavailable)?;
        self.answered();
        let counter = match put {
            Put::Queued => &self.stats.tasks_put,
            Put::Duplicate => &self.stats.duplicates,
            Put::NameTaken => &self.stats.names_taken,
            Put::Full => &self.stats.full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Self::pong(match put.reason() {
            None => json!({ "queued": true }),
            Some(reason) => json!({ "queued": false, "reason": reason }),
        }))
    }

    /// Leases the oldest available task to the asking worker (the packet's
    /// peer) and sends it as it was put (its own peer, id, created_at,
    /// method and payload), or `pong` when there is none.
    async fn get_task_from_queue(&self, ctx: Context) -> Result<Reply, HandlerError> {
        let worker = ctx.sender().to_string();
        let leased = self
            .queue
            .lease(&worker, self.lease)
            .await
            .map_err(unavailable)?;
        self.answered();
        Ok(match leased {
            Some(leased) => {
                self.stats.tasks_handed_out.fetch_add(1, Ordering::Relaxed);
                Reply::Forward(leased.task)
            }
            None => Reply::message("pong", json!(null)),
        })
    }

    /// Acknowledges a task the asking worker parsed and keeps its article:
    /// `pong` with `{"saved": true}`; `{"saved": false, "reason": "stale"}`
    /// when the worker's lease ran out and the task went to another, or
    /// the task is unknown or already saved; `{"saved": false, "reason":
    /// "too_large", "max_bytes": N}` when the article as JSON is longer
    /// than the queue keeps (nothing changed: the task is still leased).
    async fn save_parsed_article(
        &self,
        ctx: Context,
        task: TaskName,
        article: Value,
    ) -> Result<Message<Value>, HandlerError> {
        let worker = ctx.sender().to_string();
        let name = TaskRef {
            peer: task.peer,
            id: task.id,
        };
        let acked = self
            .queue
            .ack(name, &worker, &article)
            .await
            .map_err(unavailable)?;
        self.answered();
        Ok(Self::pong(match acked {
            Acked::Done => {
                self.stats.tasks_saved.fetch_add(1, Ordering::Relaxed);
                json!({ "saved": true })
            }
            Acked::Stale => json!({ "saved": false, "reason": "stale" }),
            Acked::TooLarge => {
                self.stats.too_large.fetch_add(1, Ordering::Relaxed);
                json!({
                    "saved": false,
                    "reason": "too_large",
                    "max_bytes": self.queue.settings().max_result_bytes,
                })
            }
        }))
    }

    /// The article saved for the `parse_article` task of `article_id`, or
    /// `null`.
    async fn get_parsed_article(&self, article: ArticleRef) -> Result<Option<Value>, HandlerError> {
        let saved = self
            .queue
            .result(
                "parse_article",
                &json!({ "article_id": article.article_id }),
            )
            .await
            .map_err(unavailable)?;
        self.answered();
        Ok(saved)
    }
}
