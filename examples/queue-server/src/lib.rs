//! [`QueueServer`]: the queue server of the article example (workers put
//! `parse_article` tasks, take them, and save the parsed articles) as a
//! service on a [`stream_rpc_queue`] task queue, in memory or on Redis so
//! that several servers can share one queue. The `server`, `demo` and
//! `cluster` examples, the `stream-rpc serve` command, the queue benchmark
//! and the loopback tests run it; it is not part of any published crate.
//!
//! Methods (PROTOCOL.md, "The example queue server", has their payloads):
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
//!   for that [`ARTICLE_METHOD`] task, or `null`;
//! - `watch_stats` (a stream: `{"every_ms": N}`, N at least 10, default
//!   1000) sends the queue's counts ([`QueueStats`]) every N ms until the
//!   client cancels it (`stream-rpc call --stream watch_stats`);
//! - the task methods of [`TaskServer`] (`task.put`, `task.wait`,
//!   `task.subscribe`, ..., `schedule.put`, ...: PROTOCOL.md, "Tasks"), on
//!   the same queue: a task put either way is handed to whichever worker
//!   asks, a classic one (`get_task_from_queue`) or a typed one fed by push.
//!
//! ```no_run
//! use std::time::Duration;
//! use stream_rpc::{Config, Connector};
//! use stream_rpc_example_queue::QueueServer;
//! use stream_rpc_queue::{AnyQueue, MemoryQueue};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = QueueServer::new(
//!     AnyQueue::Memory(MemoryQueue::new()),
//!     Duration::from_secs(30),
//! );
//! let config = Config::builder().key(std::env::var("CRYPTO_KEY")?).build()?;
//! Connector::new(config).bind().await?.serve(server).await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_rpc::{
    Context, HandlerError, Message, Packet, Protocol, Reply, Service, Services, StreamIo,
    Streaming, Value, json,
};
use stream_rpc_queue::{
    Acked, AnyQueue, DEFAULT_ATTEMPT_TIMEOUT, MemoryQueue, Put, QueueError, TaskQueue, TaskRef,
    TaskServer,
};

/// The method of the tasks whose saved articles `get_parsed_article` looks
/// up: a task `{"method": "parse_article", "payload": {"article_id": N}}`.
pub const ARTICLE_METHOD: &str = "parse_article";

/// How long a task stays leased to a worker by [`QueueServer::default`]:
/// the queue crate's default lease.
pub use stream_rpc_queue::DEFAULT_LEASE;

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

/// `{"article_id": N}`: which article.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ArticleRef {
    /// The article.
    pub article_id: u64,
}

/// Answers `ping`, queues tasks and hands them out, oldest first (as the
/// Python example's server does), each to one worker at a time for the
/// lease time; a task whose worker did not save it in time goes to
/// another. It serves the task methods of [`TaskServer`] too, on the same
/// queue (pushed tasks are leased for the same lease time).
///
/// One queue serves all connections (the connector shares the service
/// between them) and, on Redis, every server that uses it.
#[derive(Debug)]
pub struct QueueServer {
    classic: Arc<ClassicServer>,
    tasks: TaskServer<AnyQueue>,
    services: Services,
    /// What it did so far (the classic methods).
    pub stats: Arc<ServerStats>,
}

impl Default for QueueServer {
    /// A server with its queue in memory and [`DEFAULT_LEASE`] leases.
    fn default() -> Self {
        QueueServer::new(AnyQueue::Memory(MemoryQueue::new()), DEFAULT_LEASE)
    }
}

impl QueueServer {
    /// A server on `queue`, leasing tasks for `lease` (handed out by
    /// `get_task_from_queue` or pushed to a subscribed worker).
    pub fn new(queue: AnyQueue, lease: Duration) -> Self {
        let queue = Arc::new(queue);
        let stats = Arc::new(ServerStats::default());
        let classic = Arc::new(ClassicServer {
            queue: queue.clone(),
            lease,
            stats: stats.clone(),
        });
        let tasks = TaskServer::with_settings(queue, lease, DEFAULT_ATTEMPT_TIMEOUT);
        let services = Services::new()
            .add(classic.clone())
            .and_then(|services| services.add(tasks.clone()))
            // The classic names have no dot; every task method's has one.
            .expect("the classic and the task methods are disjoint");
        QueueServer {
            classic,
            tasks,
            services,
            stats,
        }
    }

    /// The queue it serves.
    pub fn queue(&self) -> &AnyQueue {
        &self.classic.queue
    }

    /// The task methods' server.
    pub fn tasks(&self) -> &TaskServer<AnyQueue> {
        &self.tasks
    }

    /// Reads the queue's [`Stats`](stream_rpc_queue::Stats) and its counts
    /// per method and records them through the `metrics` facade
    /// ([`Stats::record`](stream_rpc_queue::Stats::record),
    /// [`TaskServer::record_stats`]; `docs/METRICS.md` lists the names):
    /// call it now and then (`stream-rpc serve --metrics` does every 5 s).
    /// On Redis the numbers are the whole queue's, shared by every server.
    pub async fn record_stats(&self) -> Result<(), QueueError> {
        self.classic.queue.stats().await?.record();
        self.tasks.record_stats().await
    }
}

/// Serves the classic and the task methods: routes each packet to the
/// service that declares its method. Logs as `QueueServer`.
impl Protocol for QueueServer {
    fn name(&self) -> &str {
        "QueueServer"
    }

    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        self.services.process_message(ctx, packet).await
    }

    async fn process_stream(
        &self,
        ctx: Context,
        packet: Packet,
        io: StreamIo,
    ) -> Result<Value, HandlerError> {
        self.services.process_stream(ctx, packet, io).await
    }
}

impl Service for QueueServer {
    fn methods(&self) -> &[&'static str] {
        self.services.methods()
    }
}

/// The classic methods alone (`ping`, `put_in_queue`,
/// `get_task_from_queue`, `save_parsed_article`, `get_parsed_article`,
/// `watch_stats`): what [`QueueServer`] serves beside the task methods.
#[derive(Debug)]
pub struct ClassicServer {
    // Shared with the producers of `watch_stats`, which outlive a call.
    queue: Arc<AnyQueue>,
    lease: Duration,
    stats: Arc<ServerStats>,
}

impl ClassicServer {
    fn answered(&self) {
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
    }

    fn pong(payload: Value) -> Message<Value> {
        Message::new("pong", payload)
    }
}

/// `watch_stats`'s default interval between two items, when its payload
/// is `null` or has no `every_ms`.
pub const WATCH_EVERY: Duration = Duration::from_millis(1000);

/// `watch_stats`'s shortest interval: a smaller `every_ms` is refused
/// (`invalid_payload`), so that no watcher makes the queue count its tasks
/// more than a hundred times a second.
pub const WATCH_EVERY_MIN: Duration = Duration::from_millis(10);

/// `watch_stats`'s longest interval (a day): a larger `every_ms` is
/// refused too.
pub const WATCH_EVERY_MAX: Duration = Duration::from_secs(86_400);

/// `watch_stats`'s payload: `{"every_ms": N}`, N from 10 to 86,400,000
/// (a day; default 1000); `null` or `{}` takes the default. Any other
/// field is refused (a misspelt `every_ms` is not silently the default).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// Milliseconds between two items.
    #[serde(default)]
    pub every_ms: Option<u64>,
}

impl Watch {
    /// The interval it asks for, or why it is refused.
    pub fn interval(self) -> Result<Duration, HandlerError> {
        let Some(ms) = self.every_ms else {
            return Ok(WATCH_EVERY);
        };
        let every = Duration::from_millis(ms);
        if !(WATCH_EVERY_MIN..=WATCH_EVERY_MAX).contains(&every) {
            return Err(HandlerError::invalid_payload(
                "watch_stats",
                format!(
                    "every_ms is {ms}: give {} to {} (milliseconds between two items)",
                    WATCH_EVERY_MIN.as_millis(),
                    WATCH_EVERY_MAX.as_millis()
                ),
            ));
        }
        Ok(every)
    }
}

/// One item of `watch_stats`: the queue's counts
/// ([`Stats`](stream_rpc_queue::Stats)) as JSON. On Redis they are the
/// whole queue's, shared by every server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Tasks waiting to be handed out (expired leases included).
    pub queued: u64,
    /// Tasks handed out and not yet acked.
    pub leased: u64,
    /// Tasks acked, since the queue was created.
    pub done: u64,
    /// Dead letters now.
    pub dead: u64,
    /// Puts refused as duplicates, since the queue was created.
    pub duplicates: u64,
    /// Puts refused because the name was held by another task.
    pub names_taken: u64,
    /// Puts refused because the queue was full.
    pub full: u64,
    /// Times a task was handed out again (an expired lease or a nack).
    pub redeliveries: u64,
}

impl From<stream_rpc_queue::Stats> for QueueStats {
    fn from(stats: stream_rpc_queue::Stats) -> Self {
        QueueStats {
            queued: stats.queued,
            leased: stats.leased,
            done: stats.done,
            dead: stats.dead,
            duplicates: stats.duplicates,
            names_taken: stats.names_taken,
            full: stats.full,
            redeliveries: stats.redeliveries,
        }
    }
}

/// The error a peer gets when the queue failed: what happened is logged
/// here, the peer learns only that it may try again.
fn unavailable(error: QueueError) -> HandlerError {
    HandlerError::failed("the task queue is unavailable; try again").with_detail(error.to_string())
}

#[stream_rpc::service]
impl ClassicServer {
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
            Put::Queued | Put::Scheduled => &self.stats.tasks_put,
            Put::Duplicate { .. } => &self.stats.duplicates,
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
        let worker = ctx.peer().to_string();
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
        task: TaskRef,
        article: Value,
    ) -> Result<Message<Value>, HandlerError> {
        let worker = ctx.peer().to_string();
        let acked = self
            .queue
            .ack(task, &worker, &article)
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

    /// A stream of the queue's counts ([`QueueStats`]), one item every
    /// `every_ms` milliseconds (payload `{"every_ms": N}`, N at least 10;
    /// `null` or `{}`: every second), the first at once, until the client
    /// cancels it or goes away. A payload below the minimum is refused
    /// (`invalid_payload`) before the first item; a queue that fails ends
    /// the stream with `handler_error` ("the task queue is unavailable").
    /// The client's credit paces it: a client that stops reading holds the
    /// producer at its window, nothing piles up.
    async fn watch_stats(
        &self,
        watch: Option<Watch>,
    ) -> Result<Streaming<QueueStats, HandlerError>, HandlerError> {
        let every = watch.unwrap_or_default().interval()?;
        self.answered();
        let queue = self.queue.clone();
        Ok(Streaming::from_fn(move |mut sink| async move {
            let mut ticks = tokio::time::interval(every);
            // A slow consumer gets the counts as they are when it reads
            // again, not a burst of the ticks it missed.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let stats = queue.stats().await.map_err(unavailable)?;
                if sink.send(stats.into()).await.is_err() {
                    // Cancelled, or the connection closed.
                    return Ok(());
                }
            }
        }))
    }

    /// The article saved for the [`ARTICLE_METHOD`] task of `article_id`,
    /// or `null`.
    async fn get_parsed_article(&self, article: ArticleRef) -> Result<Option<Value>, HandlerError> {
        let saved = self
            .queue
            .result(ARTICLE_METHOD, &json!({ "article_id": article.article_id }))
            .await
            .map_err(unavailable)?;
        self.answered();
        Ok(saved)
    }
}
