//! `#[stream_rpc::service]` end to end over loopback: a macro-built server
//! with a macro-built worker, and with the generated typed client.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use stream_rpc::Caller;

use common::{bounded, config, new_key};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stream_rpc::{
    CallError, Connection, Connector, Context, ErrorCode, ErrorPayload, HandlerError, Message,
    Packet, Reply,
};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Article {
    pub article_id: u32,
}

/// The seed's queue server.
#[derive(Default)]
pub struct QueueServer {
    queue: Mutex<VecDeque<Packet>>,
    notes: AtomicU64,
    noted: Notify,
}

#[derive(Debug, thiserror::Error)]
#[error("the queue is full")]
pub struct QueueFull;

#[stream_rpc::service]
impl QueueServer {
    /// Answers `ping` with `pong`, as the seed does.
    async fn ping(&self) -> Message<()> {
        Message::new("pong", ())
    }

    /// Stores a task packet.
    async fn put_in_queue(&self, task: Packet) -> Result<Message<()>, QueueFull> {
        let mut queue = self.queue.lock().unwrap();
        if queue.len() >= 3 {
            return Err(QueueFull);
        }
        queue.push_back(task);
        Ok(Message::new("pong", ()))
    }

    /// Sends a stored task back unchanged, or `pong` when there is none.
    async fn get_task_from_queue(&self) -> Reply {
        match self.queue.lock().unwrap().pop_front() {
            Some(task) => Reply::Forward(task),
            None => Reply::message("pong", json!(null)),
        }
    }

    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    #[stream_rpc(rename = "math.negate")]
    async fn negate(&self, value: i64) -> i64 {
        -value
    }

    async fn divide(&self, a: i64, b: i64) -> Result<i64, HandlerError> {
        if b == 0 {
            return Err(HandlerError::new(
                ErrorCode::InvalidPayload,
                "division by zero",
            ));
        }
        a.checked_div(b)
            .ok_or_else(|| HandlerError::failed("overflow"))
    }

    async fn note(&self, text: String) {
        assert!(!text.is_empty());
        self.notes.fetch_add(1, Ordering::SeqCst);
        self.noted.notify_one();
    }

    /// Calls back into the worker that called it, during the handler.
    async fn echo_via_worker(&self, ctx: Context, text: String) -> Result<String, CallError> {
        WorkerClient::new(ctx.connection()).shout(text).await
    }

    async fn who_am_i(&self, ctx: Context) -> String {
        ctx.peer().to_string()
    }

    #[stream_rpc(skip)]
    fn depth(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

/// What a worker did, shared with the test.
#[derive(Default)]
pub struct WorkerStats {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Error packets other than the one the test expects: the test checks
    /// this is empty (an assertion in a handler would only become an error
    /// packet, and the test would hang until its time bound).
    unexpected: Mutex<Vec<ErrorPayload>>,
    parsed: Mutex<Vec<Article>>,
}

/// The seed's worker, conversation style: every answer leads to the next
/// request, until `rounds` requests are made.
pub struct Worker {
    rounds: u64,
    stats: Arc<WorkerStats>,
}

impl Worker {
    fn new(rounds: u64) -> Self {
        Worker {
            rounds,
            stats: Arc::default(),
        }
    }

    fn next(&self, ctx: &Context) -> Reply {
        let n = self.stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if n > self.rounds {
            ctx.connection().close();
            return Reply::Nothing;
        }
        if n.is_multiple_of(5) {
            Reply::message("get_task_from_queue", json!(null))
        } else if n.is_multiple_of(2) {
            let task = ctx.packet("parse_article", json!({"article_id": 1000 + n}));
            Reply::message("put_in_queue", serde_json::to_value(task).unwrap())
        } else {
            Reply::message("ping", json!(null))
        }
    }
}

#[stream_rpc::service]
impl Worker {
    async fn pong(&self, ctx: Context) -> Reply {
        self.next(&ctx)
    }

    async fn parse_article(&self, ctx: Context, article: Article) -> Reply {
        self.stats.parsed.lock().unwrap().push(article);
        self.next(&ctx)
    }

    /// Error packets that answer no call (the queue was full): go on. Any
    /// other error ends the conversation at once, for the test to report.
    async fn error(&self, ctx: Context, error: ErrorPayload) -> Reply {
        let full = (error.code, error.message.as_str(), error.method.as_deref())
            == (
                ErrorCode::HandlerError,
                "`put_in_queue` failed",
                Some("put_in_queue"),
            );
        if !full {
            self.stats.unexpected.lock().unwrap().push(error);
            ctx.connection().close();
            return Reply::Nothing;
        }
        self.stats.errors.fetch_add(1, Ordering::SeqCst);
        self.next(&ctx)
    }

    async fn shout(&self, text: String) -> String {
        text.to_uppercase()
    }
}

async fn serve() -> (u16, String, stream_rpc::ShutdownHandle) {
    let key = new_key();
    let server = Connector::new(config(&key, 0).build().unwrap())
        .bind()
        .await
        .unwrap();
    let port = server.local_addr().port();
    let stop = server.shutdown_handle();
    tokio::spawn(server.serve(QueueServer::default()));
    (port, key, stop)
}

async fn client_of(port: u16, key: &str) -> (stream_rpc::Client, Connection) {
    let client = Connector::new(config(key, port).build().unwrap())
        .connect(Worker::new(0))
        .await
        .unwrap();
    let session = client.connection().expect("connected");
    (client, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_conversation_between_macro_built_peers() {
    bounded(async {
        let (port, key, stop) = serve().await;
        let worker = Worker::new(40);
        let stats = worker.stats.clone();
        let connector = Connector::new(config(&key, port).build().unwrap());
        let end = connector
            .run_client(worker, "ping", json!(null))
            .await
            .unwrap();
        assert_eq!(end, stream_rpc::EndReason::Closed);
        assert_eq!(*stats.unexpected.lock().unwrap(), []);
        assert_eq!(stats.requests.load(Ordering::SeqCst), 41);
        // Every fifth request fetched a task (8 of them); the queue holds 3,
        // so some puts were refused with errors the worker went on from.
        let parsed = stats.parsed.lock().unwrap().clone();
        assert_eq!(parsed.len(), 8, "{parsed:?}");
        assert!(parsed.iter().all(|a| a.article_id > 1000), "{parsed:?}");
        assert!(stats.errors.load(Ordering::SeqCst) > 0);
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_back_the_task_it_put_unchanged_and_parses_it() {
    bounded(async {
        let (port, key, stop) = serve().await;
        let (_client, session) = client_of(port, &key).await;
        let server = QueueServerClient::new(session.clone());
        let task = session.packet("parse_article", json!({"article_id": 4242}));
        server.put_in_queue(task.clone()).await.unwrap().unwrap();
        let back = server.get_task_from_queue().await.unwrap();
        assert_eq!(
            (
                back.peer,
                back.id,
                back.created_at,
                &back.method,
                &back.payload
            ),
            (
                task.peer,
                task.id,
                task.created_at,
                &task.method,
                &task.payload
            )
        );
        let article: Article = back.payload_as().unwrap();
        assert_eq!(article, Article { article_id: 4242 });
        // Empty queue: `pong`.
        assert_eq!(server.get_task_from_queue().await.unwrap().method, "pong");
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_round_trip() {
    bounded(async {
        let (port, key, stop) = serve().await;
        let (_client, session) = client_of(port, &key).await;
        let server = QueueServerClient::new(session.clone());
        assert_eq!(server.add(2, 40).await.unwrap(), 42);
        assert_eq!(server.negate(5).await.unwrap(), -5);
        assert_eq!(server.divide(9, 3).await.unwrap(), Ok(3));
        server.ping().await.unwrap();
        let me = server.who_am_i().await.unwrap();
        assert_eq!(me, session.local_id().to_string());
        // What went over the wire: the renamed method and the typed reply's method.
        let raw = session.call("math.negate", json!(7)).await.unwrap();
        assert_eq!(
            (raw.method.as_str(), raw.payload),
            ("math.negate.reply", json!(-7))
        );
        let raw = session.call("add", json!({"a": 1, "b": 2})).await.unwrap();
        assert_eq!(raw.payload, json!(3));
        assert!(QueueServer::METHODS.contains(&"math.negate"));
        assert!(!QueueServer::METHODS.contains(&"depth"));
        assert_eq!(Worker::METHODS, ["pong", "parse_article", "error", "shout"]);
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_as_error_packets() {
    bounded(async {
        let (port, key, stop) = serve().await;
        let (_client, session) = client_of(port, &key).await;
        let server = QueueServerClient::new(session.clone());

        // A `HandlerError` with the code `handler_error` comes back as the
        // method's own error.
        let err = server.divide(i64::MIN, -1).await.unwrap().unwrap_err();
        assert_eq!(err, HandlerError::failed("overflow"));
        // One with a code that says the request was not run (here the
        // handler's own `invalid_payload`) is the call's error, never the
        // method's: `Ok(Err(..))` is only ever an error the method returned.
        let err = server.divide(1, 0).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Remote { code: ErrorCode::InvalidPayload, message, .. }
                if message == "division by zero"),
            "{err}"
        );
        for n in 0..3 {
            let task = session.packet("parse_article", json!({"article_id": n}));
            server.put_in_queue(task).await.unwrap().unwrap();
        }
        // A `Display`-only error: its text stays on the server.
        let task = session.packet("parse_article", json!({"article_id": 9}));
        let err = server.put_in_queue(task).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Remote { code: ErrorCode::HandlerError, message, data: None, .. } if message == "`put_in_queue` failed"),
            "{err}"
        );
        let unknown = session.call("nope", json!(null)).await.unwrap_err();
        assert!(matches!(unknown, CallError::Remote { code: ErrorCode::UnknownMethod, .. }));
        let bad = session.call("add", json!({"a": "x", "b": 1})).await.unwrap_err();
        assert!(
            matches!(&bad, CallError::Remote { code: ErrorCode::InvalidPayload, message, .. }
                if message.contains("`add`") && message.contains("argument `a`")),
            "{bad}"
        );
        let bad = session.call("add", json!([1, 2])).await.unwrap_err();
        assert!(
            matches!(&bad, CallError::Remote { code: ErrorCode::InvalidPayload, message, .. }
                if message.contains("`a`, `b`")),
            "{bad}"
        );
        let bad = session.call("put_in_queue", json!("not a packet")).await.unwrap_err();
        assert!(matches!(bad, CallError::Remote { code: ErrorCode::InvalidPayload, .. }));
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_sent_without_waiting() {
    bounded(async {
        let key = new_key();
        let service = Arc::new(QueueServer::default());
        let server = Connector::new(config(&key, 0).build().unwrap())
            .bind()
            .await
            .unwrap();
        let port = server.local_addr().port();
        let stop = server.shutdown_handle();
        // Serve a shared service so the test can watch its state.
        tokio::spawn(server.serve(Shared(service.clone())));
        let (_client, session) = client_of(port, &key).await;
        let noted = service.noted.notified();
        QueueServerClient::new(session.clone())
            .note("hello".into())
            .await
            .unwrap();
        noted.await;
        assert_eq!(service.notes.load(Ordering::SeqCst), 1);
        assert_eq!(service.depth(), 0);
        stop.shutdown();
    })
    .await;
}

/// Serves a service held in an `Arc`, so a test keeps a view of its state.
struct Shared(Arc<QueueServer>);

impl stream_rpc::Protocol for Shared {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        stream_rpc::Protocol::process_message(&*self.0, ctx, packet).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_handler_calls_back_into_the_worker() {
    bounded(async {
        let (port, key, stop) = serve().await;
        let (_client, session) = client_of(port, &key).await;
        let echoed = QueueServerClient::new(session.clone())
            .echo_via_worker("quiet".into())
            .await
            .unwrap();
        assert_eq!(echoed, Ok("QUIET".to_owned()));
        stop.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_typed_calls_on_one_connection() {
    bounded(async {
        let (port, key, stop) = serve().await;
        let (_client, session) = client_of(port, &key).await;
        let server = QueueServerClient::new(session.clone());
        let calls = (0..64i64).map(|n| {
            let server = server.clone();
            tokio::spawn(async move { (n, server.add(n, n).await) })
        });
        for call in calls {
            let (n, sum) = call.await.unwrap();
            assert_eq!(sum.unwrap(), 2 * n);
        }
        stop.shutdown();
    })
    .await;
}
