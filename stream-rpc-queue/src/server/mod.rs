//! [`TaskServer`]: the queue server's task methods (`task.*`,
//! `schedule.*`; PROTOCOL.md, "Tasks") over any [`TaskQueue`], with push
//! delivery to subscribed workers, long-polled results, and the timer that
//! puts the tasks of periodic schedules.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use stream_rpc::tasks::{Schedule, TaskRef};
use stream_rpc::{
    Context, ErrorCode, HandlerError, Packet, Protocol, REPLY_SUFFIX, Reply, Service,
};
use tokio::time::Instant;

use crate::{DEFAULT_LEASE, QueueError, TaskQueue};

mod metrics;
mod payloads;
mod pusher;
mod wait;

pub use metrics::{MAX_LABELLED_METHODS, OTHER_METHOD};
pub use payloads::{
    DEFAULT_LIST, DEFAULT_WAIT, MAX_CONCURRENCY, MAX_LIST, MAX_METHOD_LEN, MAX_SUBSCRIBED_METHODS,
    MAX_WAIT,
};

use payloads::{
    ListRequest, Nothing, PutRequest, RemoveScheduleRequest, SubscribeRequest, TaskRequest,
    WaitRequest, read,
};
use pusher::Subscription;

/// How long one attempt of a pushed task may run when its options set no
/// [`timeout`](stream_rpc::tasks::TaskOptions::timeout): 10 min.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The most `task.wait` calls one connection may have waiting at once; one
/// more is answered `busy`.
pub const MAX_WAITS_PER_CONNECTION: usize = 64;
/// The longest the schedule timer sleeps between two looks.
const TIMER_MAX: Duration = Duration::from_secs(1);
/// The shortest the schedule timer sleeps between two looks.
const TIMER_MIN: Duration = Duration::from_millis(50);

/// The error a peer gets when the queue failed: what happened is logged
/// here, the peer learns only that it may try again.
fn unavailable(error: QueueError) -> HandlerError {
    match error {
        QueueError::Invalid { setting, reason } => {
            HandlerError::new(ErrorCode::InvalidPayload, format!("{setting}: {reason}"))
        }
        error => HandlerError::failed("the task queue is unavailable; try again")
            .with_detail(error.to_string()),
    }
}

/// Serves the task methods of a queue server (PROTOCOL.md, "Tasks"):
/// `task.put`, `task.show`, `task.wait`, `task.cancel`, `task.list`,
/// `task.stats`, `task.limit`, `task.subscribe`, `task.unsubscribe`,
/// `schedule.put`, `schedule.remove` and `schedule.list`, over one queue
/// shared by every connection (and, on Redis, every server).
///
/// - A worker connection that says `task.subscribe` is **pushed** the
///   tasks of its methods as calls on that connection (method and payload
///   the task's, metadata [`TASK_ID_META`](stream_rpc::tasks::TASK_ID_META) and [`TASK_ATTEMPT_META`](stream_rpc::tasks::TASK_ATTEMPT_META), time
///   limit the attempt's), at most its concurrency at once; the call's
///   reply acks the task with the reply's payload as its result, an error
///   fails the attempt (retried unless the error says `"retry": false`),
///   a refusal that did not run (`busy`) or a lost connection gives the task
///   back at once. The lease of a running task is extended every third of
///   the lease; a task whose cancellation is asked has its call dropped
///   (the worker's handler sees `call.cancel`).
/// - `task.wait` answers when the task finishes or at its time limit;
///   every connection may have [`MAX_WAITS_PER_CONNECTION`] waiting.
/// - While it serves, a timer puts the tasks of due schedules
///   ([`TaskQueue::fire_schedules`]), at least once a second.
///
/// Compose it with other services ([`stream_rpc::Services`]) to serve
/// these methods beside others on one listener:
///
/// ```no_run
/// use std::sync::Arc;
/// use stream_rpc::{Config, Connector, Services};
/// use stream_rpc_queue::{MemoryQueue, TaskServer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tasks = TaskServer::new(Arc::new(MemoryQueue::new()));
/// let services = Services::new().add(tasks)?;
/// let config = Config::builder().key(std::env::var("CRYPTO_KEY")?).build()?;
/// Connector::new(config).bind().await?.serve(services).await?;
/// # Ok(())
/// # }
/// ```
pub struct TaskServer<Q: TaskQueue> {
    shared: Arc<Shared<Q>>,
}

impl<Q: TaskQueue> Clone for TaskServer<Q> {
    fn clone(&self) -> Self {
        TaskServer {
            shared: self.shared.clone(),
        }
    }
}

impl<Q: TaskQueue> std::fmt::Debug for TaskServer<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskServer")
            .field("lease", &self.shared.lease)
            .field("attempt_timeout", &self.shared.attempt_timeout)
            .finish_non_exhaustive()
    }
}

/// What the handlers, the pushers and the timer share.
pub(crate) struct Shared<Q: TaskQueue> {
    pub(crate) queue: Arc<Q>,
    pub(crate) lease: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) metrics: metrics::TaskMetrics,
    /// The state of each connection that subscribed or waits.
    connections: Mutex<HashMap<ConnectionKey, PerConnection>>,
    /// Whether the schedule timer runs.
    timer: AtomicBool,
}

/// Names a connection: its [`Connection::id`](stream_rpc::Connection::id),
/// not its peer and address (two connections of one peer, or two without
/// an address, are two).
type ConnectionKey = u64;

#[derive(Default)]
struct PerConnection {
    waits: usize,
    subscription: Option<Arc<Subscription>>,
}

impl<Q: TaskQueue> Shared<Q> {
    fn connections(&self) -> MutexGuard<'_, HashMap<ConnectionKey, PerConnection>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes this server's pushers of `method`, so that they ask the queue
    /// when its next task is due: the queue tells no event for a task put
    /// for later (a pusher of another server learns it at its next look,
    /// within a second).
    pub(crate) fn due_later(&self, method: &str) {
        for entry in self.connections().values() {
            if let Some(subscription) = &entry.subscription {
                subscription.wake_for(method);
            }
        }
    }
}

/// Forgets a connection's entry once it holds nothing.
fn tidy(map: &mut HashMap<ConnectionKey, PerConnection>, key: &ConnectionKey) {
    if let Some(entry) = map.get(key)
        && entry.waits == 0
        && entry.subscription.is_none()
    {
        map.remove(key);
    }
}

/// The wire names of the task methods, in the order PROTOCOL.md lists them.
pub const TASK_METHODS: &[&str] = &[
    "task.put",
    "task.show",
    "task.wait",
    "task.cancel",
    "task.list",
    "task.stats",
    "task.limit",
    "task.subscribe",
    "task.unsubscribe",
    "schedule.put",
    "schedule.remove",
    "schedule.list",
];

impl<Q: TaskQueue> TaskServer<Q> {
    /// A server of the task methods on `queue`, leasing pushed tasks for
    /// [`DEFAULT_LEASE`] and giving each attempt
    /// [`DEFAULT_ATTEMPT_TIMEOUT`] unless its options say otherwise. Inside
    /// a Tokio runtime its schedule timer starts at once; otherwise with
    /// the first call it serves.
    pub fn new(queue: Arc<Q>) -> Self {
        TaskServer::with_settings(queue, DEFAULT_LEASE, DEFAULT_ATTEMPT_TIMEOUT)
    }

    /// [`new`](Self::new) with the lease of pushed tasks (extended every
    /// third of it while the task runs; at least 30 ms) and the time limit
    /// of an attempt whose options set none.
    pub fn with_settings(queue: Arc<Q>, lease: Duration, attempt_timeout: Duration) -> Self {
        let server = TaskServer {
            shared: Arc::new(Shared {
                queue,
                lease: lease.max(Duration::from_millis(30)),
                attempt_timeout: attempt_timeout.max(Duration::from_millis(1)),
                metrics: metrics::TaskMetrics::default(),
                connections: Mutex::default(),
                timer: AtomicBool::new(false),
            }),
        };
        server.start_timer();
        server
    }

    /// The queue it serves.
    pub fn queue(&self) -> &Arc<Q> {
        &self.shared.queue
    }

    /// Reads the queue's counts per method ([`TaskQueue::method_stats`])
    /// and records them through the `metrics` facade (`docs/METRICS.md`
    /// lists the names): call it now and then (`stream-rpc serve
    /// --metrics` does every 5 s). On Redis the numbers are the whole
    /// queue's.
    pub async fn record_stats(&self) -> Result<(), QueueError> {
        let stats = self.shared.queue.method_stats().await?;
        self.shared.metrics.record(&stats);
        Ok(())
    }

    /// Starts the schedule timer unless it runs (it stops when the last
    /// clone of the server is dropped, or its runtime ends).
    fn start_timer(&self) {
        if self.shared.timer.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(run_timer(Arc::downgrade(&self.shared)));
            }
            Err(_) => self.shared.timer.store(false, Ordering::Release),
        }
    }

    async fn handle(&self, ctx: Context, packet: Packet) -> Result<Value, HandlerError> {
        let method = packet.method.as_str();
        let queue = &*self.shared.queue;
        Ok(match method {
            "task.put" => self.put(read(method, packet.payload)?).await?,
            "task.show" => {
                let request: TaskRequest = read(method, packet.payload)?;
                json!(queue.show(request.task).await.map_err(unavailable)?)
            }
            "task.wait" => self.wait(&ctx, read(method, packet.payload)?).await?,
            "task.cancel" => {
                let request: TaskRequest = read(method, packet.payload)?;
                let cancel = queue.cancel(request.task).await.map_err(unavailable)?;
                payloads::cancel_reply(&cancel)
            }
            "task.list" => {
                let request: ListRequest = read(method, packet.payload)?;
                let (state, limit) = request
                    .read()
                    .map_err(|e| HandlerError::invalid_payload(method, e))?;
                json!({ "tasks": queue.list(state, limit).await.map_err(unavailable)? })
            }
            "task.stats" => {
                let Nothing {} = read(method, packet.payload)?;
                json!({ "methods": queue.method_stats().await.map_err(unavailable)? })
            }
            "task.limit" => {
                let request: payloads::LimitRequest = read(method, packet.payload)?;
                queue
                    .set_limit(&request.method, request.limit())
                    .await
                    .map_err(unavailable)?;
                json!({ "limits": queue.limits().await.map_err(unavailable)? })
            }
            "task.subscribe" => self.subscribe(&ctx, read(method, packet.payload)?)?,
            "task.unsubscribe" => {
                let Nothing {} = read(method, packet.payload)?;
                json!({ "running": self.unsubscribe(&ctx) })
            }
            "schedule.put" => {
                let schedule: Schedule = read(method, packet.payload)?;
                json!(queue.put_schedule(&schedule).await.map_err(unavailable)?)
            }
            "schedule.remove" => {
                let request: RemoveScheduleRequest = read(method, packet.payload)?;
                json!({ "removed": queue.remove_schedule(&request.name).await.map_err(unavailable)? })
            }
            "schedule.list" => {
                let Nothing {} = read(method, packet.payload)?;
                json!({ "schedules": queue.schedules().await.map_err(unavailable)? })
            }
            other => return Err(HandlerError::unknown_method(other)),
        })
    }

    async fn put(&self, request: PutRequest) -> Result<Value, HandlerError> {
        let options = request
            .options(Utc::now())
            .map_err(|e| HandlerError::invalid_payload("task.put", e))?;
        let put = self
            .shared
            .queue
            .put_with(&request.task, &options)
            .await
            .map_err(unavailable)?;
        if put == crate::Put::Scheduled {
            self.shared.due_later(&request.task.method);
        }
        Ok(payloads::put_reply(TaskRef::of(&request.task), put))
    }

    async fn wait(&self, ctx: &Context, request: WaitRequest) -> Result<Value, HandlerError> {
        let limit = request
            .limit()
            .map_err(|e| HandlerError::invalid_payload("task.wait", e))?;
        let key = ctx.connection().id();
        {
            let mut connections = self.shared.connections();
            let entry = connections.entry(key).or_default();
            if entry.waits >= MAX_WAITS_PER_CONNECTION {
                return Err(HandlerError::new(
                    ErrorCode::Busy,
                    format!(
                        "this connection has {MAX_WAITS_PER_CONNECTION} task.wait calls waiting already: wait for one to be answered"
                    ),
                ));
            }
            entry.waits += 1;
        }
        let _counted = Waiting {
            shared: &self.shared,
            key,
        };
        let info = wait::wait(&*self.shared.queue, ctx, request.task, limit)
            .await
            .map_err(unavailable)?;
        Ok(json!(info))
    }

    fn subscribe(&self, ctx: &Context, request: SubscribeRequest) -> Result<Value, HandlerError> {
        request
            .check()
            .map_err(|e| HandlerError::invalid_payload("task.subscribe", e))?;
        let key = ctx.connection().id();
        let (subscription, new) = {
            let mut connections = self.shared.connections();
            let entry = connections.entry(key).or_default();
            match &entry.subscription {
                Some(subscription) => (subscription.clone(), false),
                None => {
                    let subscription = Arc::new(Subscription::default());
                    entry.subscription = Some(subscription.clone());
                    (subscription, true)
                }
            }
        };
        subscription.set(request.methods, request.concurrency);
        if new {
            let shared = self.shared.clone();
            let connection = ctx.connection().clone();
            let worker = ctx.peer().to_string();
            tokio::spawn(async move {
                pusher::push(shared.clone(), subscription.clone(), connection, worker).await;
                let mut connections = shared.connections();
                if let Some(entry) = connections.get_mut(&key)
                    && entry
                        .subscription
                        .as_ref()
                        .is_some_and(|s| Arc::ptr_eq(s, &subscription))
                {
                    entry.subscription = None;
                }
                tidy(&mut connections, &key);
            });
        }
        Ok(json!({ "subscribed": true }))
    }

    fn unsubscribe(&self, ctx: &Context) -> usize {
        let key = ctx.connection().id();
        let subscription = self
            .shared
            .connections()
            .get(&key)
            .and_then(|entry| entry.subscription.clone());
        subscription.map_or(0, |subscription| subscription.pause())
    }
}

/// Counts a `task.wait` out of its connection however it ends.
struct Waiting<'a, Q: TaskQueue> {
    shared: &'a Shared<Q>,
    key: ConnectionKey,
}

impl<Q: TaskQueue> Drop for Waiting<'_, Q> {
    fn drop(&mut self) {
        let mut connections = self.shared.connections();
        if let Entry::Occupied(mut entry) = connections.entry(self.key) {
            entry.get_mut().waits = entry.get().waits.saturating_sub(1);
        }
        tidy(&mut connections, &self.key);
    }
}

/// Puts the tasks of due schedules, at the next tick the queue names (at
/// most [`TIMER_MAX`], at least [`TIMER_MIN`] apart), until the server is
/// dropped.
async fn run_timer<Q: TaskQueue>(shared: Weak<Shared<Q>>) {
    /// Marks the timer stopped however it ends (its runtime shutting down
    /// drops it).
    struct Stopped<Q: TaskQueue>(Weak<Shared<Q>>);
    impl<Q: TaskQueue> Drop for Stopped<Q> {
        fn drop(&mut self) {
            if let Some(shared) = self.0.upgrade() {
                shared.timer.store(false, Ordering::Release);
            }
        }
    }
    let _stopped = Stopped(shared.clone());
    let mut failing = false;
    loop {
        let Some(server) = shared.upgrade() else {
            return;
        };
        let wait = match server.queue.fire_schedules().await {
            Ok(fired) => {
                failing = false;
                for task in &fired.tasks {
                    tracing::debug!(%task, "a schedule's tick put a task");
                }
                fired
                    .next_at
                    .and_then(|at| (at - Utc::now()).to_std().ok())
                    .unwrap_or(TIMER_MAX)
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "putting the tasks of schedules: {e}; trying again every second"
                    );
                }
                failing = true;
                TIMER_MAX
            }
        };
        drop(server);
        tokio::time::sleep_until(Instant::now() + wait.clamp(TIMER_MIN, TIMER_MAX)).await;
    }
}

impl<Q: TaskQueue> Protocol for TaskServer<Q> {
    fn name(&self) -> &str {
        "TaskServer"
    }

    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        self.start_timer();
        let reply = format!("{}{REPLY_SUFFIX}", packet.method);
        let payload = self.handle(ctx, packet).await?;
        Ok(Reply::message(reply, payload))
    }
}

impl<Q: TaskQueue> Service for TaskServer<Q> {
    fn methods(&self) -> &[&'static str] {
        TASK_METHODS
    }
}
