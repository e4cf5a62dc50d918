//! The task queue under load: put + lease + ack round trips per second
//! through the example queue server, with the queue in memory and on Redis,
//! through one server and through three sharing the Redis.
//!
//! ```text
//! cargo run --release -p stream-rpc-benchmarks --bin queue            # the full run
//! cargo run -p stream-rpc-benchmarks --bin queue -- --smoke           # a quick check
//! cargo run --release -p stream-rpc-benchmarks --bin queue -- --replay  # the replay store's cost
//! cargo run --release -p stream-rpc-benchmarks --bin queue -- --tasks   # typed tasks only
//! ```
//!
//! After the round trips, the typed tasks' measures (`tasks.rs`): put →
//! start latency fed by push against polling, tasks per second through
//! put → push → run → ack on Redis with three servers and six workers, and
//! Redis's memory per queued task.
//!
//! `--replay` measures what the shared replay store costs one client
//! making one call at a time: sequential calls (`ping`, then a
//! `get_task_from_queue` on an empty queue) through one queue server on
//! Redis, with the in-process replay store and with the Redis one
//! (`RedisReplayStore`, what a server on a Redis queue uses by default).
//!
//! Each of 12 workers (a connection each, spread over the servers) loops:
//! `put_in_queue` a new task, `get_task_from_queue`, `save_parsed_article`
//! the task it got: one round trip of the queue is those three calls. Redis
//! is a `redis-server` from the PATH on a free loopback port (append-only
//! file, fsync at every write, as the docs recommend). Servers on Redis
//! share replay protection through it, as they do by default. Medians of 3.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stream_rpc::Caller;

use stream_rpc::{Config, Connector, Endpoint, Fernet, ShutdownHandle, json};
use stream_rpc_example_queue::QueueServer;
use stream_rpc_queue::{
    QueueConfig, RedisReplayStore, RedisSettings, ReplaySharing, replay_store_for,
};
use stream_rpc_test_support::RedisServer;

mod tasks;

const WORKERS: usize = 12;

/// The next article id, unique over the whole benchmark.
static NEXT_ARTICLE: AtomicU64 = AtomicU64::new(0);

fn main() {
    let smoke = std::env::args().any(|arg| arg == "--smoke");
    if std::env::args().any(|arg| arg == "--replay") {
        replay_cost(smoke);
        return;
    }
    let (reps, duration) = if smoke {
        (1, Duration::from_millis(500))
    } else {
        (3, Duration::from_secs(4))
    };
    let (runtime, redis) = runtime_and_redis();
    if std::env::args().any(|arg| arg == "--tasks") {
        tasks::run(smoke, &runtime, &redis);
        return;
    }
    println!(
        "queue benchmark: {WORKERS} workers, {reps} run(s) of {duration:?} each; one round trip = put + lease + save"
    );
    println!("| queue | servers | round trips/s (median) | runs |");
    println!("|---|---|---|---|");
    for (queue, url) in [("memory", "memory".to_owned()), ("redis", redis.url())] {
        for servers in [1, 3] {
            if queue == "memory" && servers > 1 {
                // Servers with their own memory share no queue.
                continue;
            }
            let mut runs: Vec<f64> = (0..reps)
                .map(|_| runtime.block_on(run(&url, servers, duration)))
                .collect();
            runs.sort_by(f64::total_cmp);
            let median = runs[runs.len() / 2];
            let all: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
            println!("| {queue} | {servers} | {median:.0} | {} |", all.join(", "));
        }
    }
    tasks::run(smoke, &runtime, &redis);
}

/// One run: `servers` servers on the queue `url`, the workers for
/// `duration`; the round trips per second.
async fn run(url: &str, servers: usize, duration: Duration) -> f64 {
    let key = Fernet::generate_key().expect("a key");
    let config = |port| {
        Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(port)
            .build()
            .expect("a config")
    };
    let mut ports = Vec::new();
    let mut stops: Vec<ShutdownHandle> = Vec::new();
    for _ in 0..servers {
        let queue_config = QueueConfig {
            queue: url.to_owned(),
            ..QueueConfig::default()
        };
        let queue = queue_config.open().await.expect("the queue");
        // As the example server and `stream-rpc serve` do: replay
        // protection shared through the queue's Redis when it is on Redis.
        let mut endpoint = Endpoint::builder(config(0));
        if let Some(store) = replay_store_for(&queue_config, ReplaySharing::Auto, &config(0))
            .await
            .expect("the replay store")
        {
            endpoint = endpoint.replay_store(Arc::new(store));
        }
        let server = Connector::with_endpoint(endpoint.build())
            .bind()
            .await
            .expect("a port");
        ports.push(server.local_addr().port());
        stops.push(server.shutdown_handle());
        tokio::spawn(server.serve(QueueServer::new(queue, queue_config.lease)));
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let port = ports[n % ports.len()];
            let connector = Connector::new(config(port));
            let done = done.clone();
            tokio::spawn(async move {
                let client = connector.connect(()).await.expect("a server");
                let session = client.connection().expect("connected");
                while started.elapsed() < duration {
                    // Unique articles, over all runs: no duplicate is refused.
                    let id = NEXT_ARTICLE.fetch_add(1, Ordering::Relaxed);
                    let task = session.packet("parse_article", json!({ "article_id": id }));
                    session
                        .call("put_in_queue", serde_json::to_value(&task).expect("json"))
                        .await
                        .expect("put");
                    let leased = session
                        .call("get_task_from_queue", json!(null))
                        .await
                        .expect("lease");
                    if leased.method == "pong" {
                        continue;
                    }
                    let saved = session
                        .call(
                            "save_parsed_article",
                            json!({"task": {"peer": leased.peer, "id": leased.id}, "article": {"n": id}}),
                        )
                        .await
                        .expect("save");
                    if saved.payload["saved"] == json!(true) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker");
    }
    let elapsed = started.elapsed();
    for stop in stops {
        stop.shutdown();
    }
    done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// A multi-threaded runtime and a Redis of the benchmark's own; exits with
/// the reason when Redis cannot be started.
fn runtime_and_redis() -> (tokio::runtime::Runtime, RedisServer) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match RedisServer::try_start() {
        Ok(redis) => (runtime, redis),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// `--replay`: sequential calls through one queue server on Redis, with the
/// in-process replay store and with the shared one; medians of 3 runs.
fn replay_cost(smoke: bool) {
    let (reps, calls) = if smoke { (1, 500) } else { (3, 5_000) };
    let (runtime, redis) = runtime_and_redis();
    println!(
        "replay store cost: one client, {calls} sequential calls per run, {reps} run(s); µs per call"
    );
    println!("| method | replay store | µs per call (median) | runs | ratio |");
    println!("|---|---|---|---|---|");
    for fsync in ["always", "everysec"] {
        set_fsync(&redis.url(), fsync);
        for method in ["ping", "get_task_from_queue"] {
            let mut memory = 0.0;
            for shared in [false, true] {
                let mut runs: Vec<f64> = (0..reps)
                    .map(|_| runtime.block_on(sequential(&redis.url(), shared, method, calls)))
                    .collect();
                runs.sort_by(f64::total_cmp);
                let median = runs[runs.len() / 2];
                let all: Vec<String> = runs.iter().map(|r| format!("{r:.1}")).collect();
                let (store, ratio) = if shared {
                    (
                        format!("Redis (appendfsync {fsync})"),
                        format!("{:.2}×", median / memory),
                    )
                } else {
                    memory = median;
                    ("in-process".to_owned(), String::new())
                };
                println!(
                    "| {method} | {store} | {median:.1} | {} | {ratio} |",
                    all.join(", ")
                );
            }
        }
    }
}

/// Sets the benchmark Redis's `appendfsync` policy (with `redis-cli`).
fn set_fsync(url: &str, policy: &str) {
    let status = std::process::Command::new("redis-cli")
        .args(["-u", url, "CONFIG", "SET", "appendfsync", policy])
        .stdout(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|status| status.success()) {
        eprintln!("error: redis-cli could not set appendfsync {policy}");
        std::process::exit(2);
    }
}

/// One run of `calls` sequential calls of `method` through a queue server
/// on the Redis at `url`; µs per call.
async fn sequential(url: &str, shared: bool, method: &str, calls: u32) -> f64 {
    let key = Fernet::generate_key().expect("a key");
    let config = |port| {
        Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(port)
            .build()
            .expect("a config")
    };
    let queue_config = QueueConfig {
        queue: url.to_owned(),
        ..QueueConfig::default()
    };
    let queue = queue_config.open().await.expect("the queue");
    let mut endpoint = Endpoint::builder(config(0));
    if shared {
        let store = RedisReplayStore::connect(
            &RedisSettings::new(url),
            stream_rpc::env::DEFAULT_TOKEN_TTL,
            1 << 22,
        )
        .await
        .expect("the replay store");
        endpoint = endpoint.replay_store(Arc::new(store));
    }
    let server = Connector::with_endpoint(endpoint.build())
        .bind()
        .await
        .expect("a port");
    let port = server.local_addr().port();
    let stop = server.shutdown_handle();
    tokio::spawn(server.serve(QueueServer::new(queue, queue_config.lease)));
    let client = Connector::new(config(port))
        .connect(())
        .await
        .expect("the server");
    let session = client.connection().expect("connected");
    // A few calls first: connections warm, the Lua scripts loaded.
    for _ in 0..50 {
        session.call(method, json!(null)).await.expect("a call");
    }
    let started = Instant::now();
    for _ in 0..calls {
        session.call(method, json!(null)).await.expect("a call");
    }
    let elapsed = started.elapsed();
    stop.shutdown();
    elapsed.as_secs_f64() * 1e6 / f64::from(calls)
}
