//! [`Worker`]: serves a service's implementation to the tasks a queue
//! server pushes (PROTOCOL.md, "Tasks"), and drains on stop.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::methods;
use crate::caller::{Call, Caller};
use crate::connector::{Connector, shutdown_signal};
use crate::error::{Error, HookError};
use crate::packet::{ErrorCode, Packet};
use crate::protocol::{Context, HandlerError, Protocol, Reply};
use crate::reconnect::Reconnect;
use crate::router::Service;
use crate::service::REPLY_SUFFIX;
use crate::stream::StreamIo;

/// How many tasks a worker runs at once unless told
/// ([`Worker::concurrency`]).
pub const DEFAULT_CONCURRENCY: u32 = 8;

/// The most tasks a worker may run at once.
pub const MAX_CONCURRENCY: u32 = 1024;

/// How long a stopping worker lets its running tasks finish unless told
/// ([`Worker::grace`]).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The longest a stopping worker waits for the server to answer
/// `task.unsubscribe`.
const UNSUBSCRIBE_LIMIT: Duration = Duration::from_secs(5);

/// Runs a service's implementation on the tasks a queue server pushes:
/// it connects (reconnecting and failing over as a
/// [`ReconnectingClient`](crate::ReconnectingClient) does, to the servers
/// of [`reconnect`](Self::reconnect)), serves the
/// service on the connection, and subscribes to its methods with
/// `task.subscribe` on every (re)connection. The server then calls the
/// worker once per task, at most [`concurrency`](Self::concurrency) at
/// once; the handler's reply acknowledges the task with its result, its
/// error fails the attempt (retried unless the error says
/// [`retry: false`](super::Retry)).
///
/// On stop (Ctrl-C or SIGTERM for [`run`](Self::run), the future given to
/// [`run_until`](Self::run_until)) it drains: it unsubscribes (no new
/// task comes), lets the running tasks finish within the
/// [`grace`](Self::grace) period, gives the rest back to the queue at
/// once (answered `unavailable`, which the server takes back), and closes.
/// Nothing is lost; an attempt given back still counts among the task's
/// `max_attempts` (it may have run in part), so a task allowed a single
/// attempt and given back by a drain is a dead letter, to requeue.
///
/// ```no_run
/// use std::time::Duration;
/// use stream_rpc::tasks::Worker;
/// use stream_rpc::Connector;
///
/// #[stream_rpc::service]
/// pub trait Thumbnails {
///     async fn make(&self, image: u64) -> String;
/// }
///
/// struct Maker;
///
/// impl Thumbnails for Maker {
///     async fn make(&self, image: u64) -> String {
///         format!("thumbnail of {image}")
///     }
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let report = Worker::new(ThumbnailsServer::new(Maker))
///     .concurrency(16)
///     .grace(Duration::from_secs(10))
///     .run(Connector::from_env()?)
///     .await?;
/// println!("{report:?}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Worker<P: Protocol + Service> {
    service: P,
    concurrency: u32,
    methods: Option<Vec<String>>,
    grace: Duration,
    reconnect: Reconnect,
}

/// What a worker did, when it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Tasks it answered with a result.
    pub done: u64,
    /// Tasks whose handler failed (an error or a panic).
    pub failed: u64,
    /// Tasks whose handler ended after the task was cancelled.
    pub cancelled: u64,
    /// Tasks still running at the end of the grace period, given back to
    /// the queue.
    pub given_back: u64,
}

impl<P: Protocol + Service> Worker<P> {
    /// A worker of `service`, for every method it serves.
    pub fn new(service: P) -> Self {
        Worker {
            service,
            concurrency: DEFAULT_CONCURRENCY,
            methods: None,
            grace: DEFAULT_GRACE,
            reconnect: Reconnect::default(),
        }
    }

    /// How it reconnects, and to which servers it fails over
    /// ([`Reconnect::servers`]; by default the connector's host and port
    /// only, as `Reconnect::default()`). It subscribes again on every
    /// connection.
    ///
    /// ```
    /// use stream_rpc::Reconnect;
    /// use stream_rpc::tasks::Worker;
    ///
    /// # struct Nothing;
    /// # impl stream_rpc::Protocol for Nothing {
    /// #     async fn process_message(&self, _: stream_rpc::Context, p: stream_rpc::Packet) -> Result<stream_rpc::Reply, stream_rpc::HandlerError> {
    /// #         Err(stream_rpc::HandlerError::unknown_method(&p.method))
    /// #     }
    /// # }
    /// # impl stream_rpc::Service for Nothing {
    /// #     fn methods(&self) -> &[&'static str] { &[] }
    /// # }
    /// let worker = Worker::new(Nothing)
    ///     .reconnect(Reconnect::default().with_servers([("10.0.0.1", 8888), ("10.0.0.2", 8888)]));
    /// ```
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// How many tasks it runs at once (1 to [`MAX_CONCURRENCY`]; the
    /// nearest bound when out of it). At most the connector's
    /// [`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers)
    /// too: a higher number is lowered to it when the worker runs (logged
    /// at WARN).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.clamp(1, MAX_CONCURRENCY);
        self
    }

    /// Takes the tasks of these methods only (a subset of the service's).
    pub fn methods(mut self, methods: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.methods = Some(methods.into_iter().map(Into::into).collect());
        self
    }

    /// How long a stopping worker lets its running tasks finish.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Runs until Ctrl-C or SIGTERM ([`shutdown_signal`]), then drains.
    /// `connector` names the servers (failover as a reconnecting client);
    /// its on-connect hook is replaced by the worker's subscription.
    pub async fn run(self, connector: Connector) -> Result<WorkerReport, Error> {
        self.run_until(connector, shutdown_signal()).await
    }

    /// Runs until `stop` resolves, then drains.
    pub async fn run_until(
        self,
        connector: Connector,
        stop: impl Future<Output = ()>,
    ) -> Result<WorkerReport, Error> {
        let methods: Vec<String> = match self.methods {
            Some(methods) => methods,
            None => self
                .service
                .methods()
                .iter()
                .map(|method| (*method).to_owned())
                .collect(),
        };
        let counts = Arc::new(Counts::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let concurrency = clamp_to_handlers(
            self.concurrency,
            connector.config().limits().max_concurrent_handlers,
        );
        let subscribe = json!({"methods": methods, "concurrency": concurrency});
        let hook = {
            let stopping = stopping.clone();
            move |connection: crate::Connection| {
                let stopping = stopping.clone();
                let subscribe = subscribe.clone();
                async move {
                    if stopping.load(Ordering::Acquire) {
                        return Err::<(), HookError>("the worker is stopping".into());
                    }
                    let reply = connection
                        .call_with(Call::new(methods::SUBSCRIBE, subscribe))
                        .await?;
                    match reply.payload.get("subscribed") {
                        Some(Value::Bool(true)) => Ok(()),
                        _ => Err(format!(
                            "the queue server answered task.subscribe with {}",
                            reply.payload
                        )
                        .into()),
                    }
                }
            }
        };
        let counted = Counted {
            inner: self.service,
            counts: counts.clone(),
        };
        let client = connector
            .on_connect(hook)
            .connect_reconnecting(counted, self.reconnect)?;
        stop.await;
        stopping.store(true, Ordering::Release);
        if let Some(connection) = client.connection() {
            let unsubscribe = Call::new(methods::UNSUBSCRIBE, Value::Null)
                .timeout(UNSUBSCRIBE_LIMIT.min(self.grace.max(Duration::from_millis(1))));
            if let Err(e) = connection.call_with(unsubscribe).await {
                tracing::info!("the worker could not unsubscribe ({e}); closing");
            }
        }
        let drained = tokio::time::timeout(self.grace, counts.idle())
            .await
            .is_ok();
        if !drained {
            counts.give_back.cancel();
            // Each running handler answers `unavailable` at once.
            counts.idle().await;
        }
        client.close();
        let _ = client.join().await;
        Ok(counts.report())
    }
}

/// The concurrency a worker subscribes with: at most the handlers its
/// connection runs at once
/// ([`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers)),
/// since the server would push more and each one over would be answered
/// `busy`, an attempt lost.
fn clamp_to_handlers(concurrency: u32, max_handlers: usize) -> u32 {
    let limit = u32::try_from(max_handlers).unwrap_or(u32::MAX).max(1);
    if concurrency > limit {
        tracing::warn!(
            "the worker's concurrency {concurrency} is above its connection's handler limit \
             (Limits::max_concurrent_handlers = {max_handlers}): it runs {limit} tasks at once"
        );
        limit
    } else {
        concurrency
    }
}

/// The outcomes counted by a worker's protocol.
#[derive(Default)]
struct Counts {
    done: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    given_back: AtomicU64,
    running: AtomicU64,
    /// Notified when `running` falls to zero.
    idle: Notify,
    /// Cancelled at the end of the grace period: running handlers give
    /// their task back.
    give_back: CancellationToken,
}

impl Counts {
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn report(&self) -> WorkerReport {
        WorkerReport {
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            given_back: self.given_back.load(Ordering::Relaxed),
        }
    }
}

/// Counts a handler as running while it lives.
struct Running<'a>(&'a Counts);

impl<'a> Running<'a> {
    fn start(counts: &'a Counts) -> Self {
        counts.running.fetch_add(1, Ordering::AcqRel);
        Running(counts)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The worker's protocol: the service, its outcomes counted; a method
/// without a reply (a notification method) answers a pushed task with
/// `<method>.reply` and `null`, so that the task is acknowledged.
struct Counted<P> {
    inner: P,
    counts: Arc<Counts>,
}

impl<P: Protocol> Protocol for Counted<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        let counts = &*self.counts;
        let _running = Running::start(counts);
        let is_call = !packet.is_reply() && !packet.is_error() && packet.timeout_ms.is_some();
        let method = packet.method.clone();
        let work = AssertUnwindSafe(self.inner.process_message(ctx.clone(), packet)).catch_unwind();
        let outcome = tokio::select! {
            outcome = work => match outcome {
                Ok(outcome) => outcome,
                Err(panic) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    std::panic::resume_unwind(panic);
                }
            },
            () = counts.give_back.cancelled() => {
                counts.given_back.fetch_add(1, Ordering::Relaxed);
                return Err(HandlerError::new(
                    ErrorCode::Unavailable,
                    "the worker is stopping: the task is given back",
                ));
            }
        };
        let counter = match &outcome {
            _ if ctx.cancelled_by_caller() => &counts.cancelled,
            Ok(_) => &counts.done,
            Err(_) => &counts.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(Reply::Nothing) if is_call => Ok(Reply::message(
                format!("{method}{REPLY_SUFFIX}"),
                Value::Null,
            )),
            other => other,
        }
    }

    fn process_stream(
        &self,
        ctx: Context,
        packet: Packet,
        io: StreamIo,
    ) -> impl Future<Output = Result<Value, HandlerError>> + Send {
        self.inner.process_stream(ctx, packet, io)
    }
}
