//! Typed tasks end to end over loopback: a producer puts through the
//! generated `XTasks`, a `Worker` serves the trait's implementation from
//! the queue server's pushes (`stream-rpc-queue`'s `TaskServer`, composed
//! in the example's `QueueServer`, on a memory queue), and the results
//! are awaited typed: done, a permanent typed error (dead at once, read
//! back as `E`), a retryable one (retried, then done), a running task
//! cancelled (its handler sees it), and a worker that drains on stop
//! (what finishes within the grace is acked, the rest given back, none
//! lost). Synchronised by events (channels, Notify), never by sleeping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, bounded, config, new_key};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stream_rpc::tasks::{
    Backoff, CancelOutcome, Retry, TASK_ATTEMPT_META, TaskError, TaskOptions, TaskState, Tasks,
    Worker, WorkerReport,
};
use stream_rpc::{Client, Connector, Context, HandlerError, Reconnect};
use stream_rpc_example_queue::QueueServer;
use stream_rpc_queue::{AnyQueue, MemoryQueue};
use tokio::sync::{Notify, mpsc, oneshot};

/// The lease of a pushed task (extended while it runs).
const LEASE: Duration = Duration::from_millis(300);

/// A retry's wait: short, so that a retried task runs again at once.
const QUICK: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(10),
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParseError {
    /// Trying again cannot help.
    Gone,
    /// It may work next time.
    Flaky,
}

impl Retry for ParseError {
    fn retry(&self) -> bool {
        matches!(self, ParseError::Flaky)
    }
}

#[stream_rpc::service]
pub trait Articles {
    /// Ids divisible by 7 are gone; 5 fails once, then succeeds.
    async fn parse(&self, article_id: u64) -> Result<String, ParseError>;
    /// Runs until released (or at once when the worker does not hold);
    /// stops when cancelled.
    async fn slow(&self, ctx: Context, n: u64) -> Result<u64, HandlerError>;
    /// A notification method: as a task, acknowledged with `null`.
    async fn note(&self, text: String);
}

/// What the tests see of a worker's handlers.
struct Parser {
    /// Whether `slow` waits for `release`.
    hold: bool,
    started: mpsc::UnboundedSender<u64>,
    release: Arc<Notify>,
    cancelled: mpsc::UnboundedSender<u64>,
}

impl Articles for Parser {
    async fn parse(&self, article_id: u64) -> Result<String, ParseError> {
        let attempt = Context::current()
            .and_then(|ctx| ctx.meta().get(TASK_ATTEMPT_META).map(str::to_owned))
            .unwrap_or_default();
        match article_id {
            id if id % 7 == 0 => Err(ParseError::Gone),
            5 if attempt == "1" => Err(ParseError::Flaky),
            id => Ok(format!("article {id} (attempt {attempt})")),
        }
    }

    async fn note(&self, text: String) {
        let _ = text;
    }

    async fn slow(&self, ctx: Context, n: u64) -> Result<u64, HandlerError> {
        let _ = self.started.send(n);
        if !self.hold {
            return Ok(n);
        }
        tokio::select! {
            () = self.release.notified() => Ok(n),
            () = ctx.cancelled() => {
                let _ = self.cancelled.send(n);
                Err(HandlerError::failed("cancelled"))
            }
        }
    }
}

/// A running worker and what the test sees of it.
struct RunningWorker {
    started: mpsc::UnboundedReceiver<u64>,
    cancelled: mpsc::UnboundedReceiver<u64>,
    release: Arc<Notify>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<WorkerReport>,
}

impl RunningWorker {
    /// Stops it (it drains) and gives its report.
    async fn stop(self) -> WorkerReport {
        let _ = self.stop.send(());
        self.done.await.unwrap()
    }
}

fn worker(server: &TestServer, hold: bool, concurrency: u32, grace: Duration) -> RunningWorker {
    worker_of(server, &[], hold, concurrency, grace)
}

/// A worker connecting to `server`, failing over to `others`.
fn worker_of(
    server: &TestServer,
    others: &[&TestServer],
    hold: bool,
    concurrency: u32,
    grace: Duration,
) -> RunningWorker {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let parser = Parser {
        hold,
        started: started_tx,
        release: release.clone(),
        cancelled: cancelled_tx,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let connector = Connector::new(config(&server.key, server.port).build().unwrap());
    let servers = std::iter::once(server)
        .chain(others.iter().copied())
        .map(|server| ("127.0.0.1", server.port))
        .collect::<Vec<_>>();
    let reconnect = Reconnect::default()
        .with_initial_delay(Duration::from_millis(10))
        .with_servers(servers);
    let done = tokio::spawn(async move {
        Worker::new(ArticlesServer::new(parser))
            .concurrency(concurrency)
            .grace(grace)
            .reconnect(reconnect)
            .run_until(connector, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    RunningWorker {
        started,
        cancelled,
        release,
        stop,
        done,
    }
}

async fn server() -> TestServer {
    server_with(&new_key()).await
}

/// A queue server with its own memory queue, under `key`.
async fn server_with(key: &str) -> TestServer {
    let queue = AnyQueue::Memory(MemoryQueue::new());
    TestServer::start(QueueServer::new(queue, LEASE), config(key, 0), key).await
}

async fn producer(server: &TestServer) -> ArticlesTasks<Client> {
    let client = Connector::new(config(&server.key, server.port).build().unwrap())
        .connect(())
        .await
        .unwrap();
    ArticlesTasks::new(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_results_errors_and_retries() {
    bounded(async {
        let server = server().await;
        let articles = producer(&server).await;
        let running = worker(&server, false, 4, Duration::from_secs(5));
        // Done.
        let one = articles.parse(1).await.unwrap();
        assert!(!one.deduplicated());
        assert_eq!(
            one.result().await.unwrap(),
            Ok("article 1 (attempt 1)".into())
        );
        // A permanent typed error: dead at its first attempt, read as E.
        let gone = articles
            .parse(7)
            .max_attempts(5)
            .backoff(QUICK)
            .await
            .unwrap();
        assert_eq!(gone.result().await.unwrap(), Err(ParseError::Gone));
        let info = gone.state().await.unwrap();
        assert_eq!((info.state, info.attempts), (TaskState::Dead, 1));
        assert_eq!(info.error.unwrap()["retry"], false);
        // A retryable one: tried again, then done.
        let flaky = articles
            .parse(5)
            .max_attempts(3)
            .backoff(QUICK)
            .await
            .unwrap();
        assert_eq!(
            flaky.result_within(Duration::from_secs(10)).await.unwrap(),
            Ok("article 5 (attempt 2)".into())
        );
        assert_eq!(flaky.state().await.unwrap().attempts, 2);
        // A method without a reply: done, with nothing.
        let note = articles.note("hello".into()).await.unwrap();
        assert_eq!(note.result().await.unwrap(), Ok(()));
        // The same put again: the same task, already done.
        let again = articles.parse(1).await.unwrap();
        assert!(again.deduplicated());
        assert_eq!(again.id(), one.id());
        // The untyped producer on the same queue: JSON in, JSON out, a
        // typed error as a HandlerError with its data.
        let tasks: &Tasks<Client> = articles.tasks();
        let raw = tasks
            .put("parse", json!(2), TaskOptions::default())
            .await
            .unwrap();
        assert_eq!(
            raw.result().await.unwrap(),
            Ok(json!("article 2 (attempt 1)"))
        );
        // A payload the worker refuses: dead at once, not a method's error.
        let refused = tasks
            .put("parse", json!({"article_id": 2}), TaskOptions::default())
            .await
            .unwrap();
        match refused.result().await {
            Err(TaskError::Dead {
                attempts: 1,
                error: Some(error),
            }) => assert_eq!(error.code, stream_rpc::ErrorCode::InvalidPayload),
            other => panic!("{other:?}"),
        }
        let raw_gone = tasks
            .put("parse", json!(14), TaskOptions::default())
            .await
            .unwrap();
        let error = raw_gone.result().await.unwrap().unwrap_err();
        assert_eq!(
            (error.retry(), error.data),
            (Some(false), Some(json!("Gone")))
        );
        // Attached by name, read typed.
        let attached = tasks.handle::<String, ParseError>(gone.id());
        assert_eq!(attached.result().await.unwrap(), Err(ParseError::Gone));
        // A task the queue does not know.
        let unknown = tasks.handle::<String, ParseError>(stream_rpc::tasks::TaskRef {
            peer: uuid::Uuid::new_v4(),
            id: 1,
        });
        assert!(matches!(
            unknown.result().await,
            Err(TaskError::Unknown { .. })
        ));
        let report = running.stop().await;
        assert_eq!(
            (report.done, report.failed, report.given_back),
            (4, 4, 0),
            "{report:?}"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_cancelled_reaches_its_handler() {
    bounded(async {
        let server = server().await;
        let articles = producer(&server).await;
        let mut running = worker(&server, true, 2, Duration::from_secs(5));
        let handle = articles.slow(1).await.unwrap();
        assert_eq!(running.started.recv().await, Some(1));
        assert_eq!(handle.state().await.unwrap().state, TaskState::Leased);
        assert_eq!(handle.cancel().await.unwrap(), CancelOutcome::Requested);
        assert_eq!(running.cancelled.recv().await, Some(1));
        assert!(matches!(handle.result().await, Err(TaskError::Cancelled)));
        assert_eq!(
            handle.cancel().await.unwrap(),
            CancelOutcome::Finished(TaskState::Cancelled)
        );
        // A queued task cancelled never runs: the worker is busy with
        // none, yet it is not pushed once cancelled.
        let later = articles
            .slow(2)
            .delay(Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(later.cancel().await.unwrap(), CancelOutcome::Cancelled);
        assert!(matches!(later.result().await, Err(TaskError::Cancelled)));
        let report = running.stop().await;
        assert_eq!(report.cancelled, 1);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_finishes_what_it_can_and_gives_back_the_rest() {
    bounded(async {
        let server = server().await;
        let articles = producer(&server).await;
        // Two tasks run; the worker is told to stop with a short grace.
        let mut running = worker(&server, true, 2, Duration::from_millis(200));
        let first = articles.slow(10).await.unwrap();
        let second = articles.slow(11).await.unwrap();
        let mut started = [
            running.started.recv().await.unwrap(),
            running.started.recv().await.unwrap(),
        ];
        started.sort_unstable();
        assert_eq!(started, [10, 11]);
        let report = running.stop().await;
        assert_eq!((report.done, report.given_back), (0, 2), "{report:?}");
        // Given back at once, not lost: queued again (not dead, not
        // waiting for a lease to expire).
        for handle in [&first, &second] {
            let info = handle.state().await.unwrap();
            assert_eq!(info.state, TaskState::Queued, "{info:?}");
        }
        // Another worker runs them.
        let mut next = worker(&server, false, 2, Duration::from_secs(5));
        assert_eq!(first.result().await.unwrap(), Ok(10));
        assert_eq!(second.result().await.unwrap(), Ok(11));
        assert!(next.started.recv().await.is_some());
        assert_eq!(next.stop().await.done, 2);
        // A task that finishes within the grace is acked by its reply.
        let mut holding = worker(&server, true, 1, Duration::from_secs(10));
        let third = articles.slow(12).await.unwrap();
        assert_eq!(holding.started.recv().await, Some(12));
        let release = holding.release.clone();
        let stopping = tokio::spawn(holding.stop());
        release.notify_one();
        let report = stopping.await.unwrap();
        assert_eq!((report.done, report.given_back), (1, 0), "{report:?}");
        assert_eq!(third.result().await.unwrap(), Ok(12));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fails_over_and_subscribes_again() {
    bounded(async {
        let first = server().await;
        let second = server_with(&first.key).await;
        let mut running = worker_of(&first, &[&second], false, 2, Duration::from_secs(5));
        let on_first = producer(&first).await;
        assert_eq!(
            on_first.slow(1).await.unwrap().result().await.unwrap(),
            Ok(1)
        );
        assert_eq!(running.started.recv().await, Some(1));
        // The first server goes away: the worker moves to the second,
        // subscribes there, and runs its tasks.
        first.stop().await;
        let on_second = producer(&second).await;
        assert_eq!(
            on_second.slow(2).await.unwrap().result().await.unwrap(),
            Ok(2)
        );
        assert_eq!(running.started.recv().await, Some(2));
        assert_eq!(running.stop().await.done, 2);
        second.stop().await;
    })
    .await;
}

/// A queue server that only records the concurrency of each
/// `task.subscribe`.
struct Subscriptions(mpsc::UnboundedSender<u64>);

impl stream_rpc::Protocol for Subscriptions {
    async fn process_message(
        &self,
        _ctx: Context,
        packet: stream_rpc::Packet,
    ) -> Result<stream_rpc::Reply, HandlerError> {
        if let Some(n) = packet.payload["concurrency"].as_u64() {
            let _ = self.0.send(n);
        }
        Ok(stream_rpc::Reply::message(
            format!("{}.reply", packet.method),
            json!({ "subscribed": true }),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_asks_for_no_more_tasks_than_its_connection_runs() {
    bounded(async {
        let key = new_key();
        let (sender, mut subscribed) = mpsc::unbounded_channel();
        let server = TestServer::start(Subscriptions(sender), config(&key, 0), &key).await;
        let (parser, _started, _cancelled) = {
            let (started_tx, started) = mpsc::unbounded_channel();
            let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
            let parser = Parser {
                hold: false,
                started: started_tx,
                release: Arc::new(Notify::new()),
                cancelled: cancelled_tx,
            };
            (parser, started, cancelled)
        };
        let limits = stream_rpc::Limits::default().with_max_concurrent_handlers(3);
        let connector = Connector::new(config(&key, server.port).limits(limits).build().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(
            Worker::new(ArticlesServer::new(parser))
                .concurrency(8)
                .grace(Duration::from_millis(100))
                .run_until(connector, async move {
                    let _ = stopped.await;
                }),
        );
        // Eight asked, three handlers: it subscribes for three.
        assert_eq!(subscribed.recv().await, Some(3));
        let _ = stop.send(());
        running.await.unwrap().unwrap();
        server.stop().await;
    })
    .await;
}
