//! The queue server's task methods (PROTOCOL.md, "Tasks") over loopback,
//! as a peer in any language calls them: raw `task.*` and `schedule.*`
//! calls, and a hand-written worker (a plain `Protocol`) fed by push. The
//! server is the example's `QueueServer` on a memory queue, so the classic
//! methods are served beside them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, bounded, config, new_key};
use serde_json::{Value, json};
use stream_rpc::{
    Caller, Client, Connector, Context, ErrorCode, HandlerError, Limits, Packet, Protocol, Reply,
    Role,
};
use stream_rpc_example_queue::QueueServer;
use stream_rpc_queue::{AnyQueue, MemoryQueue, TaskServer};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// A queue server on a memory queue, leasing pushed tasks for `lease`.
async fn server(lease: Duration) -> TestServer {
    let key = new_key();
    let queue = AnyQueue::Memory(MemoryQueue::new());
    TestServer::start(QueueServer::new(queue, lease), config(&key, 0), &key).await
}

/// A client of `server` that serves `protocol` on its connection.
async fn connect<P: Protocol>(server: &TestServer, protocol: P) -> Client {
    Connector::new(config(&server.key, server.port).build().unwrap())
        .connect(protocol)
        .await
        .unwrap()
}

/// Calls `method`, expecting `<method>.reply`; answers its payload.
async fn call(client: &Client, method: &str, payload: Value) -> Value {
    let reply = client.call(method, payload).await.unwrap();
    assert_eq!(reply.method, format!("{method}.reply"), "{reply:?}");
    reply.payload
}

/// Calls `method`, expecting an error packet of `code`; answers its message.
async fn refused(client: &Client, method: &str, payload: Value, code: ErrorCode) -> String {
    match client.call(method, payload).await {
        Err(stream_rpc::CallError::Remote {
            code: got, message, ..
        }) => {
            assert_eq!(got, code, "{message}");
            message
        }
        other => panic!("{method} answered {other:?}, expected {code:?}"),
    }
}

/// A task packet of `method` with `payload`, named by a fresh peer and `id`.
fn task(method: &str, payload: Value) -> Packet {
    Packet::new(Uuid::new_v4(), 1, method, payload)
}

fn name(task: &Packet) -> Value {
    json!({ "peer": task.peer, "id": task.id })
}

async fn put(client: &Client, task: &Packet, options: Value) -> Value {
    call(
        client,
        "task.put",
        json!({ "task": task, "options": options }),
    )
    .await
}

/// Waits (long poll) until `task` is final; answers its TaskInfo.
async fn wait_final(client: &Client, task: &Packet) -> Value {
    loop {
        let info = call(
            client,
            "task.wait",
            json!({ "task": name(task), "timeout_ms": 5000 }),
        )
        .await;
        let state = info["state"].as_str().unwrap_or_default().to_owned();
        if ["done", "dead", "cancelled"].contains(&state.as_str()) {
            return info;
        }
    }
}

// ---------------------------------------------------------------------------
// A hand-written worker: what a peer in another language writes.

struct Probe {
    /// Calls running now, and the most at once.
    running: AtomicUsize,
    most: AtomicUsize,
    /// Every pushed call's metadata: (task-id, task-attempt).
    seen: std::sync::Mutex<Vec<(String, String)>>,
    /// Released by the test to let `hold` calls finish.
    release: Semaphore,
    /// A permit for each `hold` or `forever` call that started, and for
    /// each that saw its cancellation.
    started: Semaphore,
    cancelled: Semaphore,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            seen: std::sync::Mutex::default(),
            release: Semaphore::new(0),
            started: Semaphore::new(0),
            cancelled: Semaphore::new(0),
        }
    }
}

#[derive(Clone, Default)]
struct Worker {
    probe: Arc<Probe>,
}

/// Counts a call as running while it lives.
struct Running<'a>(&'a Probe);

impl<'a> Running<'a> {
    fn new(probe: &'a Probe) -> Self {
        let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
        probe.most.fetch_max(now, Ordering::SeqCst);
        Running(probe)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Protocol for Worker {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        let probe = &self.probe;
        let _running = Running::new(probe);
        let meta = ctx.meta();
        let attempt: u32 = meta
            .get("task-attempt")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        probe.seen.lock().unwrap().push((
            meta.get("task-id").unwrap_or_default().to_owned(),
            attempt.to_string(),
        ));
        let reply = format!("{}.reply", packet.method);
        match packet.method.as_str() {
            "double" => {
                let n = packet.payload["n"].as_i64().unwrap_or_default();
                Ok(Reply::message(reply, json!(n * 2)))
            }
            "refuse" => Err(HandlerError::permanent("this one can never work")),
            "flaky" if attempt < 2 => Err(HandlerError::failed("the first attempt fails")),
            "flaky" => Ok(Reply::message(reply, json!("second time lucky"))),
            "hold" => {
                probe.started.add_permits(1);
                let _permit = probe.release.acquire().await;
                Ok(Reply::message(reply, json!("held")))
            }
            "slow" => {
                // Work that takes longer than the lease (not a sync point).
                let ms = packet.payload["ms"].as_u64().unwrap_or_default();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Reply::message(reply, json!("slow done")))
            }
            "stuck" => {
                probe.started.add_permits(1);
                std::future::pending().await
            }
            "forever" => {
                probe.started.add_permits(1);
                ctx.cancelled().await;
                probe.cancelled.add_permits(1);
                Err(HandlerError::new(ErrorCode::Cancelled, "cancelled"))
            }
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// How long after its put a task finished, by its TaskInfo.
fn finished_after_put(info: &Value) -> chrono::Duration {
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(info[field].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{field}: {e} in {info}"))
    };
    at("finished_at") - at("put_at")
}

async fn subscribe(client: &Client, methods: &[&str], concurrency: u32) {
    let answer = call(
        client,
        "task.subscribe",
        json!({ "methods": methods, "concurrency": concurrency }),
    )
    .await;
    assert_eq!(answer, json!({ "subscribed": true }));
}

#[tokio::test]
async fn a_pushed_task_is_acked_by_its_workers_reply() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let producer = connect(&server, ()).await;
        let worker = Worker::default();
        let probe = worker.probe.clone();
        let worker = connect(&server, worker).await;
        subscribe(&worker, &["double", "flaky"], 4).await;

        let double = task("double", json!({ "n": 21 }));
        assert_eq!(
            put(&producer, &double, json!({})).await,
            json!({ "task": name(&double), "state": "queued" })
        );
        let info = wait_final(&producer, &double).await;
        assert_eq!(info["state"], "done", "{info}");
        assert_eq!(info["result"], 42);
        assert_eq!(info["attempts"], 1);
        let seen = probe.seen.lock().unwrap().clone();
        assert_eq!(
            seen[0],
            (format!("{}:{}", double.peer, double.id), "1".to_owned())
        );

        // A handler error is retried after its backoff; the second attempt's
        // reply is the result.
        let flaky = task("flaky", json!(null));
        put(
            &producer,
            &flaky,
            json!({ "backoff": { "initial_ms": 10, "max_ms": 10 } }),
        )
        .await;
        let info = wait_final(&producer, &flaky).await;
        assert_eq!(info["state"], "done", "{info}");
        assert_eq!(info["result"], "second time lucky");
        assert_eq!(info["attempts"], 2);
        // Pushed again when its backoff ends, not at the pusher's fallback
        // look a second later.
        let took = finished_after_put(&info);
        assert!(took < chrono::Duration::milliseconds(800), "{info}");

        // A delayed task is pushed when its time comes, not before.
        let later = task("double", json!({ "n": 4 }));
        let answer = call(
            &producer,
            "task.put",
            json!({ "task": later, "delay_ms": 200 }),
        )
        .await;
        assert_eq!(answer["state"], "scheduled");
        let info = wait_final(&producer, &later).await;
        assert_eq!(info["result"], 8, "{info}");
        // At its time, not at the pusher's fallback look a second later:
        // the server wakes its pushers when a task is put for later.
        let took = finished_after_put(&info);
        assert!(took >= chrono::Duration::milliseconds(200), "{info}");
        assert!(took < chrono::Duration::milliseconds(800), "{info}");

        // An error that says `"retry": false` makes it dead at once.
        subscribe(&worker, &["double", "flaky", "refuse"], 4).await;
        let refuse = task("refuse", json!(null));
        put(&producer, &refuse, json!({ "max_attempts": 5 })).await;
        let info = wait_final(&producer, &refuse).await;
        assert_eq!(info["state"], "dead", "{info}");
        assert_eq!(info["attempts"], 1, "{info}");
        assert_eq!(info["error"]["retry"], false, "{info}");
        assert_eq!(info["error"]["message"], "this one can never work");
    })
    .await;
}

#[tokio::test]
async fn the_classic_methods_and_the_task_methods_share_one_queue() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let producer = connect(&server, ()).await;
        // Put the classic way, run by a typed worker fed by push.
        let classic = task("double", json!({ "n": 5 }));
        let put = producer
            .call("put_in_queue", serde_json::to_value(&classic).unwrap())
            .await
            .unwrap();
        assert_eq!(put.payload, json!({ "queued": true }));
        let worker = connect(&server, Worker::default()).await;
        subscribe(&worker, &["double"], 1).await;
        let info = wait_final(&producer, &classic).await;
        assert_eq!(info["result"], 10, "{info}");

        // Put with task.put, taken by a classic worker, saved its way.
        let typed = task("parse_article", json!({ "article_id": 7 }));
        self::put(&producer, &typed, json!({ "priority": "high" })).await;
        let leased = producer
            .call("get_task_from_queue", json!(null))
            .await
            .unwrap();
        assert_eq!(leased.method, "parse_article");
        let saved = producer
            .call(
                "save_parsed_article",
                json!({ "task": name(&typed), "article": { "title": "t" } }),
            )
            .await
            .unwrap();
        assert_eq!(saved.payload, json!({ "saved": true }));
        let info = call(&producer, "task.show", json!({ "task": name(&typed) })).await;
        assert_eq!(info["state"], "done");
        assert_eq!(info["result"], json!({ "title": "t" }));
        let article = producer
            .call("get_parsed_article", json!({ "article_id": 7 }))
            .await
            .unwrap();
        assert_eq!(article.payload, json!({ "title": "t" }));
    })
    .await;
}

#[tokio::test]
async fn every_task_method_answers_raw_calls() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let client = connect(&server, ()).await;
        let first = task("resize", json!({ "image": 1 }));
        put(&client, &first, json!({})).await;
        // The same content again: refused, naming the task that holds it.
        let again = task("resize", json!({ "image": 1 }));
        assert_eq!(
            put(&client, &again, json!({})).await,
            json!({ "task": name(&again), "refused": "duplicate", "existing": name(&first) })
        );
        // Another task under a held name.
        let mut clash = task("resize", json!({ "image": 2 }));
        clash.peer = first.peer;
        assert_eq!(
            put(&client, &clash, json!({}))
                .await
                .get("refused")
                .cloned(),
            Some(json!("name_taken"))
        );
        // A delay makes it scheduled.
        let later = task("resize", json!({ "image": 3 }));
        let answer = call(
            &client,
            "task.put",
            json!({ "task": later, "delay_ms": 60_000 }),
        )
        .await;
        assert_eq!(answer["state"], "scheduled");

        let info = call(&client, "task.show", json!({ "task": name(&first) })).await;
        assert_eq!(info["state"], "queued");
        assert_eq!(info["method"], "resize");
        let unknown = json!({ "task": { "peer": Uuid::new_v4(), "id": 9 } });
        assert_eq!(call(&client, "task.show", unknown.clone()).await, json!(null));
        assert_eq!(call(&client, "task.wait", unknown.clone()).await, json!(null));

        let listed = call(&client, "task.list", json!({ "state": "scheduled" })).await;
        assert_eq!(listed["tasks"].as_array().map(Vec::len), Some(1));
        let stats = call(&client, "task.stats", json!(null)).await;
        assert_eq!(stats["methods"]["resize"]["queued"], 1, "{stats}");
        assert_eq!(stats["methods"]["resize"]["scheduled"], 1, "{stats}");

        // A queued task is cancelled at once; its key is free again.
        assert_eq!(
            call(&client, "task.cancel", json!({ "task": name(&first) })).await,
            json!({ "outcome": "cancelled", "state": "cancelled" })
        );
        assert_eq!(
            call(&client, "task.cancel", json!({ "task": name(&first) })).await,
            json!({ "outcome": "finished", "state": "cancelled" })
        );
        assert_eq!(
            call(&client, "task.cancel", unknown).await,
            json!({ "outcome": "unknown", "state": null })
        );
        let info = call(&client, "task.wait", json!({ "task": name(&first) })).await;
        assert_eq!(info["state"], "cancelled");

        let limits = call(
            &client,
            "task.limit",
            json!({ "method": "resize", "concurrency": 2, "rate": { "count": 5, "per_ms": 1000 } }),
        )
        .await;
        assert_eq!(
            limits,
            json!({ "limits": { "resize": { "concurrency": 2, "rate": { "count": 5, "per_ms": 1000 } } } })
        );

        let schedule = call(
            &client,
            "schedule.put",
            json!({ "name": "nightly", "method": "resize", "payload": [1], "cron": "0 0 3 * * *" }),
        )
        .await;
        assert_eq!(schedule["name"], "nightly");
        assert!(schedule["next_at"].is_string(), "{schedule}");
        let schedules = call(&client, "schedule.list", json!(null)).await;
        assert_eq!(schedules["schedules"][0]["name"], "nightly");
        assert_eq!(
            call(&client, "schedule.remove", json!({ "name": "nightly" })).await,
            json!({ "removed": true })
        );
        assert_eq!(
            call(&client, "schedule.remove", json!({ "name": "nightly" })).await,
            json!({ "removed": false })
        );
        assert_eq!(
            call(&client, "task.unsubscribe", json!(null)).await,
            json!({ "running": 0 })
        );
    })
    .await;
}

#[tokio::test]
async fn bad_payloads_are_refused_with_the_reason() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let client = connect(&server, ()).await;
        let bad = ErrorCode::InvalidPayload;
        let one = task("m", json!(null));
        for (method, payload, says) in [
            ("task.put", json!({ "task": 3 }), "task.put"),
            (
                "task.put",
                json!({ "task": one, "options": { "max_attempts": 0 } }),
                "max_attempts",
            ),
            (
                "task.put",
                json!({ "task": one, "delay_ms": 5, "options": { "run_at": "2030-01-01T00:00:00Z" } }),
                "not both",
            ),
            ("task.wait", json!({ "task": name(&one), "timeout_ms": 0 }), "timeout_ms"),
            ("task.wait", json!({ "task": name(&one), "timeout_ms": 60_001 }), "timeout_ms"),
            ("task.list", json!({ "state": "lost" }), "not a task state"),
            ("task.list", json!({ "state": "queued", "limit": 1001 }), "limit"),
            ("task.show", json!({ "task": name(&one), "extra": 1 }), "extra"),
            ("task.stats", json!({ "x": 1 }), "x"),
            ("task.subscribe", json!({ "methods": [], "concurrency": 1 }), "methods"),
            ("task.subscribe", json!({ "methods": ["m"], "concurrency": 1025 }), "concurrency"),
            (
                "schedule.put",
                json!({ "name": "fast", "method": "m", "every_ms": 10 }),
                "",
            ),
        ] {
            let message = refused(&client, method, payload, bad).await;
            assert!(message.contains(says), "{method}: {message}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_worker_is_pushed_at_most_its_concurrency() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let producer = connect(&server, ()).await;
        let worker = Worker::default();
        let probe = worker.probe.clone();
        let worker = connect(&server, worker).await;
        subscribe(&worker, &["hold"], 2).await;
        let tasks: Vec<Packet> = (0..5).map(|n| task("hold", json!({ "n": n }))).collect();
        for task in &tasks {
            put(&producer, task, json!({})).await;
        }
        // Two start; the others wait for a free slot.
        probe.started.acquire_many(2).await.unwrap().forget();
        let running = call(&producer, "task.list", json!({ "state": "leased" })).await;
        assert_eq!(running["tasks"].as_array().map(Vec::len), Some(2));
        probe.release.add_permits(5);
        for task in &tasks {
            assert_eq!(wait_final(&producer, task).await["state"], "done");
        }
        assert_eq!(probe.most.load(Ordering::SeqCst), 2);
        // Unsubscribed, it is pushed nothing more.
        assert_eq!(
            call(&worker, "task.unsubscribe", json!(null)).await,
            json!({ "running": 0 })
        );
        let after = task("hold", json!("after"));
        put(&producer, &after, json!({})).await;
        let info = call(
            &producer,
            "task.wait",
            json!({ "task": name(&after), "timeout_ms": 300 }),
        )
        .await;
        assert_eq!(info["state"], "queued");
    })
    .await;
}

#[tokio::test]
async fn a_long_task_keeps_its_lease_while_it_runs() {
    bounded(async {
        // Leases of 150 ms; the task runs 600 ms: without extensions it
        // would be handed out again (attempt 2) while it runs.
        let server = server(Duration::from_millis(150)).await;
        let producer = connect(&server, ()).await;
        let worker = Worker::default();
        let probe = worker.probe.clone();
        let worker = connect(&server, worker).await;
        subscribe(&worker, &["slow"], 4).await;
        let slow = task("slow", json!({ "ms": 600 }));
        put(&producer, &slow, json!({})).await;
        // Well past its first lease, while it runs, it is still leased: a
        // classic worker asking for any task gets none.
        let info = call(
            &producer,
            "task.wait",
            json!({ "task": name(&slow), "timeout_ms": 400 }),
        )
        .await;
        assert_eq!(info["state"], "leased", "{info}");
        let other = producer
            .call("get_task_from_queue", json!(null))
            .await
            .unwrap();
        assert_eq!(other.method, "pong", "handed out again: {other:?}");
        let info = wait_final(&producer, &slow).await;
        assert_eq!(info["state"], "done", "{info}");
        assert_eq!(info["attempts"], 1, "{info}");
        assert_eq!(probe.seen.lock().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails_and_a_lost_worker_gives_its_task_back() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let producer = connect(&server, ()).await;
        let worker = Worker::default();
        let probe = worker.probe.clone();
        let first = connect(&server, worker.clone()).await;
        // Its attempt is limited to 100 ms, and it has one attempt: a
        // handler that never answers (the call times out), and one that
        // answers `cancelled` when told to wrap up before its deadline.
        subscribe(&first, &["forever", "stuck"], 2).await;
        for method in ["stuck", "forever"] {
            let late = task(method, json!(1));
            put(
                &producer,
                &late,
                json!({ "timeout_ms": 100, "max_attempts": 1 }),
            )
            .await;
            let info = wait_final(&producer, &late).await;
            assert_eq!(info["state"], "dead", "{info}");
            let message = info["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("longer than its timeout of 100 ms"),
                "{info}"
            );
        }
        probe.started.acquire_many(2).await.unwrap().forget();

        // A task running on a worker whose connection closes is given back
        // at once, and done by another worker.
        let lost = task("forever", json!(2));
        put(&producer, &lost, json!({ "max_attempts": 3 })).await;
        probe.started.acquire().await.unwrap().forget();
        drop(first);
        let second = connect(&server, Worker::default()).await;
        subscribe(&second, &["double"], 1).await;
        let info = loop {
            let info = call(&producer, "task.show", json!({ "task": name(&lost) })).await;
            if info["state"] == "queued" {
                break info;
            }
            call(
                &producer,
                "task.wait",
                json!({ "task": name(&lost), "timeout_ms": 50 }),
            )
            .await;
        };
        assert_eq!(info["attempts"], 1, "{info}");
        // Given back, not failed: no error kept, no backoff.
        assert!(info.get("error").is_none(), "{info}");
    })
    .await;
}

#[tokio::test]
async fn cancelling_a_running_task_cancels_its_call() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let producer = connect(&server, ()).await;
        let worker = Worker::default();
        let probe = worker.probe.clone();
        let worker = connect(&server, worker).await;
        subscribe(&worker, &["forever"], 1).await;
        let running = task("forever", json!(null));
        put(&producer, &running, json!({})).await;
        probe.started.acquire().await.unwrap().forget();
        assert_eq!(
            call(&producer, "task.cancel", json!({ "task": name(&running) })).await,
            json!({ "outcome": "requested", "state": "leased" })
        );
        // The server gave up its call: the worker's handler was told.
        probe.cancelled.acquire().await.unwrap().forget();
        let info = wait_final(&producer, &running).await;
        assert_eq!(info["state"], "cancelled", "{info}");
        assert_eq!(info["attempts"], 1, "{info}");
    })
    .await;
}

#[tokio::test]
async fn a_connection_has_a_bounded_number_of_waits() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let client = Arc::new(connect(&server, ()).await);
        let never = task("nobody", json!(null));
        put(&client, &never, json!({})).await;
        let waits: Vec<_> = (0..stream_rpc_queue::server::MAX_WAITS_PER_CONNECTION)
            .map(|_| {
                let client = client.clone();
                let name = name(&never);
                tokio::spawn(async move {
                    client
                        .call("task.wait", json!({ "task": name, "timeout_ms": 300 }))
                        .await
                })
            })
            .collect();
        // Every wait is running once a later call was answered (a
        // connection starts its requests in order).
        let mut busy = false;
        for _ in 0..50 {
            match client
                .call(
                    "task.wait",
                    json!({ "task": name(&never), "timeout_ms": 1 }),
                )
                .await
            {
                Err(stream_rpc::CallError::Remote {
                    code: ErrorCode::Busy,
                    ..
                }) => {
                    busy = true;
                    break;
                }
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(busy, "the wait beyond the bound was not refused busy");
        for wait in waits {
            let info = wait.await.unwrap().unwrap();
            assert_eq!(info.payload["state"], "queued");
        }
        // Once answered, they count no more.
        let info = call(
            &client,
            "task.wait",
            json!({ "task": name(&never), "timeout_ms": 1 }),
        )
        .await;
        assert_eq!(info["state"], "queued");
    })
    .await;
}

#[tokio::test]
async fn a_schedule_puts_its_task_at_each_tick() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let producer = connect(&server, ()).await;
        let worker = Worker::default();
        let probe = worker.probe.clone();
        let worker = connect(&server, worker).await;
        subscribe(&worker, &["double"], 1).await;
        call(
            &producer,
            "schedule.put",
            json!({ "name": "tick", "method": "double", "payload": { "n": 1 }, "every_ms": 1000 }),
        )
        .await;
        // The first tick is a second away; the timer puts it, the worker
        // is pushed it. Between two looks, a bounded long poll on a task
        // nobody runs.
        let idle = task("nobody", json!(null));
        put(&producer, &idle, json!({})).await;
        loop {
            let done = call(&producer, "task.list", json!({ "state": "done" })).await;
            if let Some(first) = done["tasks"].as_array().and_then(|t| t.first()) {
                assert_eq!(first["result"], 2);
                assert_eq!(first["method"], "double");
                break;
            }
            call(
                &producer,
                "task.wait",
                json!({ "task": name(&idle), "timeout_ms": 100 }),
            )
            .await;
        }
        assert!(!probe.seen.lock().unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_worker_that_answers_busy_is_pushed_no_more_than_it_runs() {
    bounded(async {
        let server = server(Duration::from_secs(5)).await;
        let producer = connect(&server, ()).await;
        let worker = Worker::default();
        let probe = worker.probe.clone();
        // Its connection runs two handlers at once, though it asks for four
        // tasks: the third call pushed is answered `busy`.
        let limits = Limits::default().with_max_concurrent_handlers(2);
        let config = config(&server.key, server.port).limits(limits);
        let worker = Connector::new(config.build().unwrap())
            .connect(worker)
            .await
            .unwrap();
        subscribe(&worker, &["hold"], 4).await;
        let tasks: Vec<Packet> = (0..3).map(|n| task("hold", json!({ "n": n }))).collect();
        for task in &tasks {
            put(&producer, task, json!({})).await;
        }
        probe.started.acquire_many(2).await.unwrap().forget();
        // The third waits for a free handler, queued: not pushed again and
        // again (lease, busy, nack) until it is a dead letter.
        let third = call(
            &producer,
            "task.wait",
            json!({ "task": name(&tasks[2]), "timeout_ms": 300 }),
        )
        .await;
        assert_eq!(third["state"], "queued", "{third}");
        probe.release.add_permits(3);
        for task in &tasks {
            let info = wait_final(&producer, task).await;
            assert_eq!(info["state"], "done", "{info}");
        }
        assert_eq!(probe.most.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn two_connections_of_one_peer_are_two_workers() {
    bounded(async {
        // Over in-memory pipes: no address tells the connections apart,
        // and one connector gives both the same peer id.
        let key = new_key();
        let tasks = TaskServer::new(Arc::new(MemoryQueue::new()));
        let server_side = Connector::new(config(&key, 0).build().unwrap());
        let worker_side = Connector::new(config(&key, 0).build().unwrap());
        let (mut servers, mut workers) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            servers.push(server_side.attach(theirs, tasks.clone(), Role::Server));
            let worker = Worker::default();
            let probe = worker.probe.clone();
            let client = worker_side.attach(ours, worker, Role::Client);
            subscribe(&client, &["hold"], 1).await;
            workers.push((client, probe));
        }
        let producer = &workers[0].0;
        let held: Vec<Packet> = (0..2).map(|n| task("hold", json!({ "n": n }))).collect();
        for task in &held {
            put(producer, task, json!({})).await;
        }
        // Each connection runs one: both are pushed to.
        for (_, probe) in &workers {
            tokio::time::timeout(Duration::from_secs(2), probe.started.acquire())
                .await
                .expect("each connection of the peer is pushed its own task")
                .unwrap()
                .forget();
            probe.release.add_permits(1);
        }
        for task in &held {
            assert_eq!(wait_final(producer, task).await["state"], "done");
        }
    })
    .await;
}
