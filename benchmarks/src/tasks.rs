//! Typed tasks under load (the `queue` benchmark's second part): how soon
//! a worker starts a task after its put, fed by push against polling; how
//! many tasks per second go through put → push → run → ack on Redis with
//! three servers and six workers; what a queued task costs Redis, and that
//! acked work leaves nothing behind.
//!
//! Every server is the example's `QueueServer` (the classic methods and
//! the `TaskServer`'s) over the queue (memory, or a Redis of
//! the benchmark's own); workers are `stream_rpc::tasks::Worker`s serving
//! the `Bench` task set; producers put through `stream_rpc::tasks::Tasks`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use stream_rpc::tasks::{TaskOptions, Tasks, Worker};
use stream_rpc::{Caller, Client, Config, Connector, Fernet, ShutdownHandle, json};
use stream_rpc_example_queue::QueueServer;
use stream_rpc_queue::{AnyQueue, QueueConfig, QueueSettings, TaskQueue};
use stream_rpc_test_support::RedisServer;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// When the benchmark started: the clock task payloads carry.
static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since [`BASE`].
fn now_ns() -> u64 {
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The task set.
#[stream_rpc::service]
pub trait Bench {
    /// Tells when it started: `sent_ns` is when it was put.
    async fn stamp(&self, sent_ns: u64) -> u64;
    /// Does nothing; the throughput runs' task.
    async fn nop(&self, n: u64) -> u64;
}

/// The workers' side of [`Bench`].
#[derive(Clone)]
struct Bencher {
    /// Put → start latencies, in ns.
    started: mpsc::UnboundedSender<u64>,
    /// `nop` tasks run.
    ran: Arc<AtomicU64>,
}

impl Bench for Bencher {
    async fn stamp(&self, sent_ns: u64) -> u64 {
        let _ = self.started.send(now_ns().saturating_sub(sent_ns));
        sent_ns
    }

    async fn nop(&self, n: u64) -> u64 {
        self.ran.fetch_add(1, Ordering::Relaxed);
        n
    }
}

/// Servers of one queue and their key.
struct Servers {
    key: String,
    ports: Vec<u16>,
    stops: Vec<ShutdownHandle>,
    /// A handle on the queue (the first server's).
    queue: Arc<AnyQueue>,
}

impl Servers {
    /// `count` task servers on the queue `url`.
    async fn start(url: &str, count: usize, settings: QueueSettings) -> Servers {
        let key = Fernet::generate_key().expect("a key");
        let mut ports = Vec::new();
        let mut stops = Vec::new();
        let mut first = None;
        for _ in 0..count {
            let queue_config = QueueConfig {
                queue: url.to_owned(),
                settings: settings.clone(),
                ..QueueConfig::default()
            };
            let queue = queue_config.open().await.expect("the queue");
            // The example's queue server: the classic methods (polling)
            // and the task methods (push) on the one queue.
            let queue_server = QueueServer::new(queue, queue_config.lease);
            first.get_or_insert_with(|| queue_server.tasks().queue().clone());
            let server = Connector::new(config(&key, 0))
                .bind()
                .await
                .expect("a port");
            ports.push(server.local_addr().port());
            stops.push(server.shutdown_handle());
            tokio::spawn(server.serve(queue_server));
        }
        Servers {
            key,
            ports,
            stops,
            queue: first.expect("a server"),
        }
    }

    fn connector(&self, n: usize) -> Connector {
        Connector::new(config(&self.key, self.ports[n % self.ports.len()]))
    }

    async fn client(&self, n: usize) -> Client {
        self.connector(n).connect(()).await.expect("a server")
    }

    fn stop(self) {
        for stop in self.stops {
            stop.shutdown();
        }
    }
}

fn config(key: &str, port: u16) -> Config {
    Config::builder()
        .key(key.to_owned())
        .host("127.0.0.1")
        .port(port)
        .build()
        .expect("a config")
}

/// `count` workers of [`Bench`], each with `concurrency` tasks in flight,
/// spread over the servers; stopped when `stop` is sent.
fn workers(
    servers: &Servers,
    count: usize,
    concurrency: u32,
    bencher: &Bencher,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = (0..count)
        .map(|n| {
            let worker = Worker::new(BenchServer::new(bencher.clone()))
                .concurrency(concurrency)
                .grace(Duration::from_secs(1));
            let connector = servers.connector(n);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let _ = worker
                    .run_until(connector, async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
            })
        })
        .collect();
    (stop, running)
}

/// p50 and p99 of `samples` (ns), in ms.
fn percentiles(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).copied().unwrap_or(0) as f64 / 1e6
    };
    (at(0.5), at(0.99))
}

/// Runs the three measures and prints their tables.
pub fn run(smoke: bool, runtime: &Runtime, redis: &RedisServer) {
    let samples = if smoke { 20 } else { 2_000 };
    println!();
    println!("typed tasks: put → start latency, {samples} tasks put one at a time");
    println!("| queue | delivery | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (queue, url) in [("memory", "memory".to_owned()), ("redis", redis.url())] {
        let (p50, p99) = runtime.block_on(push_latency(&url, samples));
        println!("| {queue} | push | {p50:.2} | {p99:.2} |");
        for every in [Duration::from_millis(100), Duration::ZERO] {
            // A tenth of the samples at 100 ms a poll: each takes a period.
            let count = if every.is_zero() {
                samples
            } else {
                samples / 10
            };
            let (p50, p99) = runtime.block_on(poll_latency(&url, count.max(5), every));
            let how = if every.is_zero() {
                "polling back to back".to_owned()
            } else {
                format!("polling every {every:?}")
            };
            println!("| {queue} | {how} | {p50:.2} | {p99:.2} |");
        }
    }

    let tasks = if smoke { 300 } else { 30_000 };
    println!();
    println!(
        "typed tasks: put → push → run → ack on Redis, {tasks} tasks, {PRODUCERS} producers \
         ({IN_FLIGHT} puts in flight each)"
    );
    println!("| servers | workers | tasks/s | Redis CPU (s per s) |");
    println!("|---|---|---|---|");
    for (servers, workers) in [(1, 2), (3, 6)] {
        let (rate, cpu) = runtime.block_on(throughput(&redis.url(), servers, workers, tasks));
        println!("| {servers} | {workers} | {rate:.0} | {cpu:.2} |");
    }

    let queued = if smoke { 100 } else { 10_000 };
    println!();
    println!("typed tasks: Redis memory, {queued} tasks queued then run");
    let memory = runtime.block_on(redis_memory(&redis.url(), queued));
    println!("| measure | value |");
    println!("|---|---|");
    println!("| bytes per queued task | {:.0} |", memory.per_task);
    println!(
        "| keys after every ack (results kept for the retention) | {} |",
        memory.keys_after_acks
    );
    println!(
        "| keys after the retention window | {} |",
        memory.keys_after_retention
    );
    println!(
        "| bytes above the empty queue after the retention window | {} |",
        memory.bytes_left
    );
    if memory.keys_after_retention != 0 {
        eprintln!(
            "error: acked work left {} keys behind",
            memory.keys_after_retention
        );
        std::process::exit(1);
    }
}

/// Push: one worker, tasks put one at a time; each latency measured by the
/// handler.
async fn push_latency(url: &str, samples: usize) -> (f64, f64) {
    let servers = Servers::start(url, 1, QueueSettings::default()).await;
    let (started, mut latencies) = mpsc::unbounded_channel();
    let bencher = Bencher {
        started,
        ran: Arc::default(),
    };
    let (stop, running) = workers(&servers, 1, 8, &bencher);
    let producer = BenchTasks::new(servers.client(0).await);
    // Warm: the worker subscribed, connections and scripts ready.
    for _ in 0..10 {
        producer.stamp(now_ns()).await.expect("put");
        latencies.recv().await.expect("a start");
    }
    let mut samples_ns = Vec::with_capacity(samples);
    for _ in 0..samples {
        producer.stamp(now_ns()).await.expect("put");
        samples_ns.push(latencies.recv().await.expect("a start"));
    }
    let _ = stop.send(true);
    for worker in running {
        let _ = worker.await;
    }
    servers.stop();
    percentiles(samples_ns)
}

/// Polling, as the example worker does today: `get_task_from_queue`, and
/// when nothing is there, again after `every`; then `save_parsed_article`.
/// The producer puts one task at a time, each at a pseudo-random moment of
/// the poller's period (so that the wait covers the period evenly), the
/// next once the poller has taken the last.
async fn poll_latency(url: &str, samples: usize, every: Duration) -> (f64, f64) {
    let servers = Servers::start(url, 1, QueueSettings::default()).await;
    let producer = Tasks::new(servers.client(0).await);
    let worker = servers.client(0).await;
    let (started, mut latencies) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            let Ok(leased) = worker.call("get_task_from_queue", json!(null)).await else {
                return;
            };
            if leased.method == "pong" {
                if !every.is_zero() {
                    tokio::time::sleep(every).await;
                }
                continue;
            }
            let sent = leased.payload["sent_ns"].as_u64().unwrap_or(0);
            if started.send(now_ns().saturating_sub(sent)).is_err() {
                return;
            }
            let task = json!({"peer": leased.peer, "id": leased.id});
            let _ = worker
                .call(
                    "save_parsed_article",
                    json!({"task": task, "article": sent}),
                )
                .await;
        }
    });
    // The period the puts spread over: the poller's, or a millisecond when
    // it polls back to back.
    let period = u64::try_from(every.as_micros())
        .unwrap_or(u64::MAX)
        .max(1_000);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut samples_ns = Vec::with_capacity(samples);
    for n in 0..samples + POLL_WARMUP {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_micros(seed % period)).await;
        producer
            .put(
                "stamp",
                json!({ "sent_ns": now_ns() }),
                TaskOptions::default(),
            )
            .await
            .expect("put");
        let latency = latencies.recv().await.expect("a start");
        if n >= POLL_WARMUP {
            samples_ns.push(latency);
        }
    }
    poller.abort();
    servers.stop();
    percentiles(samples_ns)
}

/// Tasks put before the polling run's samples.
const POLL_WARMUP: usize = 5;

/// Producer connections of the throughput runs.
const PRODUCERS: usize = 6;
/// Puts in flight on each producer connection.
const IN_FLIGHT: usize = 64;
/// Tasks in flight on each worker.
const WORKER_CONCURRENCY: u32 = 64;

/// `tasks` nop tasks through `servers` servers on Redis and `workers`
/// workers: tasks acked per second, and Redis's CPU seconds per second.
async fn throughput(url: &str, servers: usize, workers_count: usize, tasks: u64) -> (f64, f64) {
    flush(url);
    let servers = Servers::start(url, servers, QueueSettings::default()).await;
    let (started, _latencies) = mpsc::unbounded_channel();
    let bencher = Bencher {
        started,
        ran: Arc::default(),
    };
    let (stop, running) = workers(&servers, workers_count, WORKER_CONCURRENCY, &bencher);
    let mut producers = Vec::new();
    for n in 0..PRODUCERS {
        producers.push(BenchTasks::new(servers.client(n).await));
    }
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = redis_cpu(url);
    let began = Instant::now();
    let puts: Vec<_> = producers
        .into_iter()
        .map(|producer| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut in_flight = FuturesUnordered::new();
                loop {
                    while in_flight.len() < IN_FLIGHT {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= tasks {
                            break;
                        }
                        let put = producer.nop(n);
                        in_flight.push(async move { put.await.expect("put") });
                    }
                    if in_flight.next().await.is_none() {
                        break;
                    }
                }
            })
        })
        .collect();
    for put in puts {
        put.await.expect("a producer");
    }
    // Done when the queue has every ack (the handlers ran before).
    loop {
        let stats = servers.queue.method_stats().await.expect("stats");
        if stats.get("nop").is_some_and(|nop| nop.done >= tasks) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let cpu = (redis_cpu(url) - cpu_before) / elapsed;
    let _ = stop.send(true);
    for worker in running {
        let _ = worker.await;
    }
    servers.stop();
    (tasks as f64 / elapsed, cpu)
}

/// What the Redis memory run found.
struct Memory {
    per_task: f64,
    keys_after_acks: u64,
    keys_after_retention: u64,
    bytes_left: i64,
}

/// How long finished tasks are kept in the memory run.
const SHORT_RETENTION: Duration = Duration::from_millis(300);

/// `queued` tasks put with no worker, Redis's memory measured; then run by
/// a worker, and the keys left counted after the acks and after the
/// retention window.
async fn redis_memory(url: &str, queued: u64) -> Memory {
    flush(url);
    let settings = QueueSettings::default().with_retention(SHORT_RETENTION);
    let servers = Servers::start(url, 1, settings).await;
    let producer = BenchTasks::new(servers.client(0).await);
    // The queue's own keys (scripts loaded, counters) before any task.
    producer.nop(u64::MAX).await.expect("put");
    let (started, _latencies) = mpsc::unbounded_channel();
    let bencher = Bencher {
        started,
        ran: Arc::default(),
    };
    let (stop, running) = workers(&servers, 1, WORKER_CONCURRENCY, &bencher);
    wait_done(&servers.queue, 1).await;
    let _ = stop.send(true);
    for worker in running {
        let _ = worker.await;
    }
    tokio::time::sleep(SHORT_RETENTION * 2).await;
    let empty_bytes = redis_info(url, "used_memory");
    let empty_keys = dbsize(url);
    for n in 0..queued {
        producer.nop(n).await.expect("put");
    }
    let per_task = (redis_info(url, "used_memory") - empty_bytes) as f64 / queued as f64;
    let (stop, running) = workers(&servers, 2, WORKER_CONCURRENCY, &bencher);
    wait_done(&servers.queue, queued + 1).await;
    let keys_after_acks = dbsize(url).saturating_sub(empty_keys);
    let _ = stop.send(true);
    for worker in running {
        let _ = worker.await;
    }
    // Past the retention window, and one more operation (finished records
    // are also dropped lazily).
    tokio::time::sleep(SHORT_RETENTION * 2).await;
    let _ = servers.queue.method_stats().await;
    let _ = servers
        .queue
        .list(stream_rpc::tasks::TaskState::Done, 1)
        .await;
    let keys_after_retention = dbsize(url).saturating_sub(empty_keys);
    let bytes_left = redis_info(url, "used_memory") - empty_bytes;
    servers.stop();
    Memory {
        per_task,
        keys_after_acks,
        keys_after_retention,
        bytes_left,
    }
}

/// Waits until `done` tasks of `nop` are done.
async fn wait_done(queue: &AnyQueue, done: u64) {
    loop {
        let stats = queue.method_stats().await.expect("stats");
        if stats.get("nop").is_some_and(|nop| nop.done >= done) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `redis-cli` on the benchmark's Redis; its output.
fn redis_cli(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-u", url])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Empties the benchmark's Redis.
fn flush(url: &str) {
    redis_cli(url, &["FLUSHALL"]);
}

fn dbsize(url: &str) -> u64 {
    redis_cli(url, &["DBSIZE"]).trim().parse().unwrap_or(0)
}

/// A field of `INFO`.
fn info_field(url: &str, section: &str, field: &str) -> Option<String> {
    redis_cli(url, &["INFO", section]).lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    })
}

fn redis_info(url: &str, field: &str) -> i64 {
    info_field(url, "memory", field)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Redis's CPU seconds so far (user and system).
fn redis_cpu(url: &str) -> f64 {
    ["used_cpu_user", "used_cpu_sys"]
        .iter()
        .filter_map(|field| info_field(url, "cpu", field)?.parse::<f64>().ok())
        .sum()
}
