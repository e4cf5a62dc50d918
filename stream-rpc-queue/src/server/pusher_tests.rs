//! The pusher's tests: how each way a pushed call ends becomes an
//! outcome (`outcomes`); the pusher against a queue whose first lease the
//! test can hold (to change the subscription meanwhile), and a worker
//! that answers `busy`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use stream_rpc::{Caller, Config, Connector, Context, HandlerError, Packet, Protocol, Reply, Role};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use super::push;
use crate::server::TaskServer;
use crate::*;

/// A memory queue whose first lease waits, once it has taken its task,
/// until the test lets it answer.
#[derive(Default)]
struct HeldLease {
    inner: MemoryQueue,
    held: AtomicBool,
    /// Notified when the first lease has its task.
    leased: Notify,
    /// Lets the first lease answer.
    go: Notify,
}

impl TaskQueue for HeldLease {
    async fn put_with(&self, task: &Packet, options: &TaskOptions) -> Result<Put, QueueError> {
        self.inner.put_with(task, options).await
    }
    async fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> Result<Lease, QueueError> {
        let lease = self.inner.lease_with(worker, lease, filter).await;
        if !self.held.swap(true, Ordering::SeqCst) {
            self.leased.notify_one();
            self.go.notified().await;
        }
        lease
    }
    async fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        self.inner.extend(task, worker, lease).await
    }
    async fn ack(&self, task: TaskRef, worker: &str, result: &Value) -> Result<Acked, QueueError> {
        self.inner.ack(task, worker, result).await
    }
    async fn nack(&self, task: TaskRef, worker: &str) -> Result<Acked, QueueError> {
        self.inner.nack(task, worker).await
    }
    async fn fail(
        &self,
        task: TaskRef,
        worker: &str,
        error: &Value,
        retry: bool,
    ) -> Result<Failed, QueueError> {
        self.inner.fail(task, worker, error, retry).await
    }
    async fn cancel(&self, task: TaskRef) -> Result<Cancel, QueueError> {
        self.inner.cancel(task).await
    }
    async fn show(&self, task: TaskRef) -> Result<Option<TaskInfo>, QueueError> {
        self.inner.show(task).await
    }
    async fn list(&self, state: TaskState, limit: usize) -> Result<Vec<TaskInfo>, QueueError> {
        self.inner.list(state, limit).await
    }
    async fn set_limit(&self, method: &str, limit: MethodLimit) -> Result<(), QueueError> {
        self.inner.set_limit(method, limit).await
    }
    async fn limits(&self) -> Result<BTreeMap<String, MethodLimit>, QueueError> {
        self.inner.limits().await
    }
    async fn put_schedule(&self, schedule: &Schedule) -> Result<ScheduleInfo, QueueError> {
        self.inner.put_schedule(schedule).await
    }
    async fn remove_schedule(&self, name: &str) -> Result<bool, QueueError> {
        self.inner.remove_schedule(name).await
    }
    async fn schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        self.inner.schedules().await
    }
    async fn fire_schedules(&self) -> Result<Fired, QueueError> {
        self.inner.fire_schedules().await
    }
    async fn method_stats(&self) -> Result<BTreeMap<String, MethodStats>, QueueError> {
        self.inner.method_stats().await
    }
    fn events(&self) -> QueueEvents {
        self.inner.events()
    }
    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        self.inner.result(method, payload).await
    }
    async fn dead_letters(&self) -> Result<DeadLetters, QueueError> {
        self.inner.dead_letters().await
    }
    async fn requeue(&self, task: TaskRef) -> Result<bool, QueueError> {
        self.inner.requeue(task).await
    }
    async fn purge_dead(&self) -> Result<u64, QueueError> {
        self.inner.purge_dead().await
    }
    async fn stats(&self) -> Result<Stats, QueueError> {
        self.inner.stats().await
    }
}

/// A worker that tells each call pushed to it; a `hold` call runs until
/// its connection ends.
struct Told(mpsc::UnboundedSender<String>);

impl Protocol for Told {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        let _ = self.0.send(packet.method.clone());
        if packet.method == "hold" {
            std::future::pending::<()>().await;
        }
        Ok(Reply::message(
            format!("{}.reply", packet.method),
            json!(null),
        ))
    }
}

#[tokio::test]
async fn a_task_leased_while_the_worker_unsubscribes_is_given_back() {
    let queue = Arc::new(HeldLease::default());
    let server = TaskServer::with_settings(
        queue.clone(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    );
    let task = Packet::new(Uuid::new_v4(), 1, "m", json!(1));
    queue.put(&task).await.unwrap();

    let key = stream_rpc::Fernet::generate_key().unwrap();
    let config = || Config::builder().key(key.clone()).build().unwrap();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (told, mut pushed) = mpsc::unbounded_channel();
    let _worker = Connector::new(config()).attach(ours, Told(told), Role::Client);
    let serving = Connector::new(config()).attach(theirs, (), Role::Server);
    let connection = serving.connection().unwrap();

    let sub = Arc::new(super::Subscription::default());
    sub.set(vec!["m".into()], 1);
    let pusher = tokio::spawn(push(
        server.shared.clone(),
        sub.clone(),
        connection,
        "w".into(),
    ));
    // The task is leased; the worker unsubscribes before the lease answers.
    queue.leased.notified().await;
    let mut events = queue.events();
    sub.pause();
    queue.go.notify_one();
    // Given back at once (Ready again), not pushed.
    let given_back = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(QueueEvent::Ready { method }) = events.next().await {
                return method;
            }
        }
    })
    .await
    .expect("the task leased across the unsubscribe is given back");
    assert_eq!(given_back, "m");
    let info = queue.show(TaskRef::of(&task)).await.unwrap().unwrap();
    assert_eq!(info.state, TaskState::Queued, "{info:?}");
    assert!(
        pushed.try_recv().is_err(),
        "nothing is pushed after the unsubscribe"
    );
    pusher.abort();
}

/// The next `Ready` event, if one comes within `limit`.
async fn next_ready(events: &mut QueueEvents, limit: Duration) -> Option<String> {
    tokio::time::timeout(limit, async {
        loop {
            match events.next().await {
                Some(QueueEvent::Ready { method }) => return method,
                Some(_) => {}
                None => std::future::pending().await,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_worker_busy_with_other_calls_is_not_pushed_to_in_a_loop() {
    let queue = Arc::new(HeldLease {
        held: AtomicBool::new(true),
        ..HeldLease::default()
    });
    let server = TaskServer::with_settings(
        queue.clone(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    );
    let task = Packet::new(Uuid::new_v4(), 1, "m", json!(1));
    queue.put(&task).await.unwrap();

    // The worker's connection runs one handler, taken by another call.
    let key = stream_rpc::Fernet::generate_key().unwrap();
    let config = |limits| {
        Config::builder()
            .key(key.clone())
            .limits(limits)
            .build()
            .unwrap()
    };
    let one = stream_rpc::Limits::default().with_max_concurrent_handlers(1);
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (told, mut pushed) = mpsc::unbounded_channel();
    let _worker = Connector::new(config(one)).attach(ours, Told(told), Role::Client);
    let serving =
        Connector::new(config(stream_rpc::Limits::default())).attach(theirs, (), Role::Server);
    let connection = serving.connection().unwrap();
    let holding = tokio::spawn({
        let connection = connection.clone();
        async move { connection.call("hold", json!(null)).await }
    });
    assert_eq!(pushed.recv().await.as_deref(), Some("hold"));

    let mut events = queue.events();
    let sub = Arc::new(super::Subscription::default());
    sub.set(vec!["m".into()], 4);
    let pusher = tokio::spawn(push(server.shared.clone(), sub, connection, "w".into()));
    // Pushed, answered `busy`, given back once...
    let first = next_ready(&mut events, Duration::from_secs(2)).await;
    assert_eq!(first.as_deref(), Some("m"));
    // ...and not leased again at once, over and over.
    let again = next_ready(&mut events, Duration::from_millis(300)).await;
    assert_eq!(again, None, "pushed again at once to a busy worker");
    let info = queue.show(TaskRef::of(&task)).await.unwrap().unwrap();
    assert_eq!(info.state, TaskState::Queued, "{info:?}");
    pusher.abort();
    holding.abort();
}

/// How each way a pushed call ends becomes the task's outcome.
mod outcomes {
    use super::super::*;

    fn remote(code: ErrorCode, retry: Option<bool>) -> CallError {
        CallError::Remote {
            method: "m".into(),
            code,
            message: "no".into(),
            data: None,
            retry,
        }
    }

    fn fails(verdict: Verdict) -> Option<bool> {
        match verdict {
            Verdict::Fail { retry, .. } => Some(retry),
            Verdict::GiveBack => None,
        }
    }

    #[test]
    fn every_way_a_pushed_call_ends_has_its_outcome() {
        let limit = Duration::from_secs(10);
        let soon = Duration::from_secs(1);
        let judged = |error: CallError| fails(judge(&error, limit, soon));
        assert_eq!(judged(remote(ErrorCode::HandlerError, None)), Some(true));
        assert_eq!(judged(remote(ErrorCode::HandlerPanicked, None)), Some(true));
        assert_eq!(
            judged(remote(ErrorCode::HandlerError, Some(false))),
            Some(false)
        );
        for final_code in [
            ErrorCode::UnknownMethod,
            ErrorCode::InvalidPayload,
            ErrorCode::InvalidPacket,
        ] {
            assert_eq!(judged(remote(final_code, Some(true))), Some(false));
        }
        for back in [
            ErrorCode::Busy,
            ErrorCode::Unavailable,
            ErrorCode::Cancelled,
        ] {
            assert_eq!(judged(remote(back, None)), None, "{back:?}");
        }
        let lost = CallError::ConnectionLost { method: "m".into() };
        assert_eq!(judged(lost), None);
        let timeout = CallError::Timeout {
            method: "m".into(),
            after: limit,
        };
        assert_eq!(judged(timeout), Some(true));
        // `cancelled` at the end of the limit: the handler ran out of time.
        let late = judge(&remote(ErrorCode::Cancelled, None), limit, limit);
        assert_eq!(fails(late), Some(true));
        // The kept error says why, in an error packet's payload.
        let Verdict::Fail { error, .. } =
            judge(&remote(ErrorCode::HandlerError, Some(false)), limit, soon)
        else {
            panic!("a handler error fails");
        };
        assert_eq!(
            error,
            json!({"code": "handler_error", "message": "no", "method": "m", "retry": false})
        );
    }
}
