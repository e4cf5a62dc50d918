//! The `server`, `worker`, `demo`, `kv_server`, `kv_client` and `cluster`
//! examples as real processes on loopback.
//!
//! The server listens on port 0 and the tests read the real port from its
//! "Serving on" log line, so tests running in parallel never collide.
//! Every wait is on an event (a log line, the end of a process's output)
//! with a time bound; a process still running when its test ends is killed.

use std::time::{Duration, Instant};
use stream_rpc::Caller;

use stream_rpc_test_support::{BOUND, Process, RedisServer, free_port, tls_file};

fn new_key() -> String {
    stream_rpc::Fernet::generate_key().unwrap()
}

/// A server on a free port; returns it and its port.
fn server(key: &str) -> (Process, String) {
    serve("server", key)
}

/// The example server `name` on a free port; returns it and its port.
fn serve(name: &'static str, key: &str) -> (Process, String) {
    let mut server = Process::example(
        name,
        &[
            ("CRYPTO_KEY", key),
            ("STREAM_RPC_HOST", "127.0.0.1"),
            ("STREAM_RPC_PORT", "0"),
        ],
    );
    let port = server.serving_port().to_string();
    (server, port)
}

fn worker(key: &str, port: &str, extra: &[(&str, &str)]) -> Process {
    let mut env = vec![
        ("CRYPTO_KEY", key),
        ("STREAM_RPC_HOST", "127.0.0.1"),
        ("STREAM_RPC_PORT", port),
        ("WORKER_REQUEST_DELAY_MS", "20"),
        ("WORKER_PARSE_DELAY_MS", "20"),
    ];
    env.extend_from_slice(extra);
    Process::example("worker", &env)
}

#[test]
fn the_kv_client_calls_the_kv_server_through_the_trait_crate() {
    let key = new_key();
    let (mut server, port) = serve("kv_server", &key);
    let mut client = Process::example(
        "kv_client",
        &[
            ("CRYPTO_KEY", &key),
            ("STREAM_RPC_HOST", "127.0.0.1"),
            ("STREAM_RPC_PORT", &port),
        ],
    );
    let status = client.wait_exit();
    let output = client.output();
    assert!(status.success(), "kv_client failed:\n{output}");
    for line in [
        "get greeting: Some(\"hello\")",
        "stored values: 1",
        "take greeting: Ok(\"hello\")",
        "take greeting again: nothing under \"greeting\"",
    ] {
        assert!(output.contains(line), "no {line:?} in:\n{output}");
    }
    assert!(server.still_running());
}

#[test]
fn a_server_on_port_0_says_where_it_listens_at_any_log_level() {
    let key = new_key();
    let mut server = Process::example(
        "server",
        &[
            ("CRYPTO_KEY", &key),
            ("STREAM_RPC_HOST", "127.0.0.1"),
            ("STREAM_RPC_PORT", "0"),
            ("STREAM_RPC_LOG_LVL", "ERROR"),
        ],
    );
    let line = server.wait_for("\"Serving on\"", |line| {
        line.contains("Serving on 127.0.0.1:")
    });
    assert!(line.contains(" - QueueServer - INFO - ["), "{line}");
}

#[test]
fn the_cluster_loses_no_acknowledged_task_through_kills_and_a_redis_restart() {
    // redis-server is found on the PATH.
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cluster = Process::example("cluster", &[("CLUSTER_SECONDS", "6"), ("PATH", &path)]);
    let status = cluster.wait_exit();
    let output = cluster.output();
    assert!(status.success(), "cluster failed:\n{output}");
    for line in [
        "SIGKILL: server 0 and worker 0",
        "SIGKILL: Redis; restarting it on its append-only file",
        "lost:                     0",
    ] {
        assert!(output.contains(line), "no {line:?} in:\n{output}");
    }
    let put: u64 = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("tasks put (acknowledged):"))
        .and_then(|n| n.trim().parse().ok())
        .expect("the summary's tasks put");
    assert!(put > 0, "{output}");
}

/// A `server` on the Redis at `url`, leasing for `lease_secs`; and its port.
fn redis_server(key: &str, url: &str, lease_secs: &str) -> (Process, String) {
    let mut server = Process::example(
        "server",
        &[
            ("CRYPTO_KEY", key),
            ("STREAM_RPC_HOST", "127.0.0.1"),
            ("STREAM_RPC_PORT", "0"),
            ("STREAM_RPC_QUEUE", url),
            ("STREAM_RPC_QUEUE_LEASE_SECS", lease_secs),
        ],
    );
    let port = server.serving_port().to_string();
    (server, port)
}

#[test]
fn the_server_reaches_redis_over_tls() {
    let redis = RedisServer::start_tls(false);
    let key = new_key();
    let ca = tls_file("ca.pem");
    let ca = ca.to_str().unwrap();
    // Without the CA, Redis's certificate is not trusted: a clear error at
    // startup, not a server that fails every call.
    let mut untrusting = Process::example(
        "server",
        &[
            ("CRYPTO_KEY", &key),
            ("STREAM_RPC_PORT", "0"),
            ("STREAM_RPC_QUEUE", &redis.tls_url()),
        ],
    );
    assert!(!untrusting.wait_exit().success());
    assert!(
        untrusting.has("invalid peer certificate"),
        "{}",
        untrusting.output()
    );
    // With it, the seed's worker works through the server on that Redis.
    let mut server = Process::example(
        "server",
        &[
            ("CRYPTO_KEY", &key),
            ("STREAM_RPC_HOST", "127.0.0.1"),
            ("STREAM_RPC_PORT", "0"),
            ("STREAM_RPC_QUEUE", &redis.tls_url()),
            ("STREAM_RPC_QUEUE_TLS_CA", ca),
        ],
    );
    let port = server.serving_port().to_string();
    let mut worker = worker(&key, &port, &[("WORKER_MAX_REQUESTS", "12")]);
    assert!(worker.wait_exit().success(), "{}", worker.output());
    // A task went into the queue on Redis and came back out of it.
    assert!(worker.has("came back unchanged"), "{}", worker.output());
    assert!(
        worker.has("Finished parsing article: "),
        "{}",
        worker.output()
    );
    server.signal("-TERM");
    assert!(server.wait_exit().success(), "{}", server.output());
}

#[test]
fn a_server_killed_holding_a_lease_loses_no_task() {
    let redis = RedisServer::start();
    let key = new_key();
    let (mut first, first_port) = redis_server(&key, &redis.url(), "1");
    let (_second, second_port) = redis_server(&key, &redis.url(), "1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let connect = |port: &str| {
            let config = stream_rpc::Config::builder()
                .key(key.clone())
                .host("127.0.0.1")
                .port(port.parse().unwrap())
                .build()
                .unwrap();
            let connector = stream_rpc::Connector::new(config);
            async move { connector.connect(()).await }
        };
        let call = |session: stream_rpc::Connection, method: &'static str, payload| async move {
            tokio::time::timeout(BOUND, session.call(method, payload))
                .await
                .expect("an answer in time")
                .unwrap()
        };
        // A worker puts a task and takes it through the first server...
        let doomed = connect(&first_port).await.unwrap();
        let task = doomed
            .connection()
            .expect("connected")
            .packet("parse_article", stream_rpc::json!({"article_id": 4242}));
        let put = call(
            doomed.connection().expect("connected"),
            "put_in_queue",
            stream_rpc::json!(task),
        )
        .await;
        assert_eq!(put.payload, stream_rpc::json!({"queued": true}));
        let leased = call(
            doomed.connection().expect("connected"),
            "get_task_from_queue",
            stream_rpc::json!(null),
        )
        .await;
        assert_eq!((leased.peer, leased.id), (task.peer, task.id));
        // ...and the server dies with SIGKILL, holding the lease.
        first.signal("-KILL");
        first.wait_exit();
        // Another worker, through the other server: nothing while the lease
        // lasts, then the task, and its save is kept.
        let other = connect(&second_port).await.unwrap();
        let early = call(
            other.connection().expect("connected"),
            "get_task_from_queue",
            stream_rpc::json!(null),
        )
        .await;
        assert_eq!(early.method, "pong");
        let deadline = Instant::now() + Duration::from_secs(10);
        let again = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let reply = call(
                other.connection().expect("connected"),
                "get_task_from_queue",
                stream_rpc::json!(null),
            )
            .await;
            if reply.method == "parse_article" {
                break reply;
            }
            assert!(Instant::now() < deadline, "the task never came back");
        };
        assert_eq!((again.peer, again.id), (task.peer, task.id));
        let saved = call(
            other.connection().expect("connected"),
            "save_parsed_article",
            stream_rpc::json!({"task": {"peer": task.peer, "id": task.id}, "article": "parsed"}),
        )
        .await;
        assert_eq!(saved.payload, stream_rpc::json!({"saved": true}));
        let article = call(
            other.connection().expect("connected"),
            "get_parsed_article",
            stream_rpc::json!({"article_id": 4242}),
        )
        .await;
        assert_eq!(article.payload, stream_rpc::json!("parsed"));
    });
}

#[test]
fn server_and_worker_hold_the_seed_conversation() {
    let key = new_key();
    let (mut server, port) = server(&key);
    let mut worker = worker(&key, &port, &[("WORKER_MAX_REQUESTS", "12")]);
    let status = worker.wait_exit();
    assert!(status.success(), "worker failed:\n{}", worker.output());

    // The hello `ping` (request 0) got its `pong`.
    assert!(
        worker.has("Send: {method: \"ping\", id: 0,"),
        "{}",
        worker.output()
    );
    worker.wait_for("the pong to the hello", |line| {
        line.contains("Received: {method: \"pong\"") && line.contains("#0}")
    });
    // Tasks were put, and the server received them.
    assert!(
        worker.has("Send: {method: \"put_in_queue\""),
        "{}",
        worker.output()
    );
    server.wait_for("a put task", |line| {
        line.contains("Received: {method: \"put_in_queue\"")
    });
    // A task came back unchanged and was parsed.
    assert!(worker.has("came back unchanged"), "{}", worker.output());
    assert!(!worker.has("came back changed"), "{}", worker.output());
    assert!(worker.has("Start parsing article: "), "{}", worker.output());
    assert!(
        worker.has("Finished parsing article: "),
        "{}",
        worker.output()
    );
    assert!(worker.has("Done: 12 requests made"), "{}", worker.output());
    // The seed's log shape on both sides.
    assert!(worker.has(" - Worker - INFO - ["), "{}", worker.output());
    assert!(
        server.has(" - QueueServer - INFO - ["),
        "{}",
        server.output()
    );
    assert!(server.still_running());
}

#[test]
fn a_worker_with_the_wrong_key_gets_no_service_and_others_do() {
    let key = new_key();
    let (mut server, port) = server(&key);
    let wrong = new_key();
    let mut intruder = worker(&wrong, &port, &[("WORKER_IDLE_TIMEOUT_MS", "1500")]);
    let mut good = worker(&key, &port, &[("WORKER_MAX_REQUESTS", "6")]);

    let status = intruder.wait_exit();
    assert!(!status.success(), "{}", intruder.output());
    assert!(
        intruder.has("no answer from the server"),
        "{}",
        intruder.output()
    );
    assert!(!intruder.has("Received:"), "{}", intruder.output());

    assert!(good.wait_exit().success(), "{}", good.output());
    assert!(good.has("Done: 6 requests made"), "{}", good.output());
    server.wait_for("the failed token", |line| {
        line.contains("failed to decrypt")
    });
    assert!(server.still_running());
}

#[test]
fn the_worker_says_when_the_server_is_unreachable() {
    let port = free_port().to_string();
    let mut worker = worker(&new_key(), &port, &[]);
    let status = worker.wait_exit();
    assert!(!status.success());
    assert!(worker.has("server is unreachable"), "{}", worker.output());
    // Nothing was answered, and the summary says so.
    assert!(
        worker.has("Worker stopped: 0 requests answered (of 1 sent)"),
        "{}",
        worker.output()
    );
}

#[test]
fn a_worker_with_no_host_set_looks_for_its_server_on_this_machine() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port().to_string()
    };
    // STREAM_RPC_HOST unset: the listening default, 0.0.0.0, is no address
    // to connect to; the worker tries 127.0.0.1.
    let mut worker = Process::example(
        "worker",
        &[
            ("CRYPTO_KEY", new_key().as_str()),
            ("STREAM_RPC_PORT", &port),
        ],
    );
    assert!(!worker.wait_exit().success());
    let expected = format!("server is unreachable at 127.0.0.1:{port}");
    assert!(worker.has(&expected), "{}", worker.output());
    assert!(!worker.has("0.0.0.0"), "{}", worker.output());
}

#[test]
fn ctrl_c_and_sigterm_stop_worker_and_server_cleanly() {
    let key = new_key();
    let (mut server, port) = server(&key);
    // A second between requests: the signal comes while the worker waits
    // to send its next one.
    let mut worker = worker(&key, &port, &[("WORKER_REQUEST_DELAY_MS", "1000")]);
    worker.wait_for("a pong", |line| {
        line.contains("Received: {method: \"pong\"")
    });
    worker.signal("-INT");
    assert!(worker.wait_exit().success(), "{}", worker.output());
    assert!(worker.has("Worker stopped"), "{}", worker.output());
    // Once the signal is received, no new request is sent.
    let lines = worker.seen();
    let signal = lines
        .iter()
        .position(|line| line.contains("shutdown signal received"))
        .unwrap_or_else(|| panic!("no signal line in:\n{}", worker.output()));
    let sent_after: Vec<&String> = lines[signal..]
        .iter()
        .filter(|line| line.contains("Send: "))
        .collect();
    assert!(
        sent_after.is_empty(),
        "{sent_after:?} in:\n{}",
        worker.output()
    );
    server.signal("-TERM");
    assert!(server.wait_exit().success(), "{}", server.output());
    assert!(server.has("shutting down"), "{}", server.output());
}

#[test]
fn a_missing_key_is_a_clear_startup_error() {
    let mut server = Process::example("server", &[]);
    assert!(!server.wait_exit().success());
    assert!(server.has("CRYPTO_KEY is not set"), "{}", server.output());
    assert!(server.has("keygen"), "{}", server.output());
}

#[test]
fn keygen_prints_a_usable_key() {
    let mut keygen = Process::example("keygen", &[]);
    assert!(keygen.wait_exit().success());
    let key = keygen.seen().first().cloned().unwrap_or_default();
    assert_eq!(key.len(), 44, "{key}");
    stream_rpc::Fernet::new(&key).expect("the printed key is a valid Fernet key");
}

#[test]
fn the_demo_runs_and_summarizes() {
    let mut demo = Process::example(
        "demo",
        &[
            ("DEMO_SECONDS", "2"),
            ("DEMO_REQUEST_DELAY_MS", "30"),
            ("DEMO_PARSE_DELAY_MS", "30"),
        ],
    );
    assert!(demo.wait_exit().success(), "{}", demo.output());
    assert!(demo.has("generated a fresh key"), "{}", demo.output());
    assert!(
        demo.has("Summary after 2 s with 2 workers:"),
        "{}",
        demo.output()
    );
    let count = |label: &str| -> u64 {
        let line = demo
            .seen()
            .iter()
            .find(|line| line.contains(label))
            .unwrap_or_else(|| panic!("no {label} in:\n{}", demo.output()));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    for label in [
        "requests answered:",
        "tasks put:",
        "tasks handed out:",
        "tasks parsed:",
    ] {
        assert!(count(label) > 0, "{label} 0 in:\n{}", demo.output());
    }
    // Every task stored was handed out (once: a lease outlives the run)
    // or is still queued; of those handed out, each was saved or is still
    // leased (its worker stopped mid-task).
    assert_eq!(
        count("tasks put:"),
        count("tasks handed out:") + count("tasks left queued:"),
        "{}",
        demo.output()
    );
    assert_eq!(
        count("tasks handed out:"),
        count("tasks saved:") + count("tasks leased:"),
        "{}",
        demo.output()
    );
}

#[test]
fn the_tasks_example_runs_its_task_set_end_to_end() {
    let mut tasks = Process::example(
        "tasks",
        &[("TASKS_COUNT", "20"), ("TASKS_TIMEOUT_MS", "20000")],
    );
    let status = tasks.wait_exit();
    assert!(status.success(), "{}", tasks.output());
    // Of articles 1 to 20: 7 and 14 fail for good, 5, 10, 15 and 20 fail
    // once; the slow task is cancelled while it runs.
    assert!(
        tasks.has("put 21, done 18, retried 4, dead 2, cancelled 1, results checked 21"),
        "{}",
        tasks.output()
    );
}

#[test]
fn the_tasks_example_worker_serves_a_server_elsewhere_and_drains_on_sigterm() {
    let key = new_key();
    let (_server, port) = server(&key);
    let mut worker = Process::example(
        "tasks",
        &[
            ("CRYPTO_KEY", &key),
            ("STREAM_RPC_HOST", "127.0.0.1"),
            ("STREAM_RPC_PORT", &port),
            // As `tasks worker` (the example is run without arguments here).
            ("TASKS_MODE", "worker"),
        ],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = stream_rpc::Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(port.parse().unwrap())
            .build()
            .unwrap();
        let client = stream_rpc::Connector::new(config)
            .connect(())
            .await
            .unwrap();
        let tasks = stream_rpc::tasks::Tasks::new(client);
        let parsed = tasks
            .put("parse", serde_json::json!(4), Default::default())
            .await
            .unwrap()
            .result_within(BOUND)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(parsed, serde_json::json!({"article_id": 4, "words": 12}));
        let failed = tasks
            .put("parse", serde_json::json!(7), Default::default())
            .await
            .unwrap()
            .result_within(BOUND)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(failed.retry(), Some(false), "{failed:?}");
    });
    worker.signal("-TERM");
    assert!(worker.wait_exit().success(), "{}", worker.output());
    assert!(
        worker.has("worker stopped: done 1, failed 1"),
        "{}",
        worker.output()
    );
}
