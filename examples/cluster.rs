//! Many servers and workers on one Redis, on this machine, with failures:
//! a `redis-server` from the PATH on a free loopback port, three servers and
//! six workers, each a process of its own. During the run one server and one
//! worker are killed with SIGKILL, and Redis is killed and restarted on its
//! append-only file. At the end a summary, checked against Redis (not
//! counted by the workers): every task a server acknowledged as queued is
//! saved, still queued or a dead letter: **lost: 0**.
//!
//! ```text
//! cargo run --example cluster            # 20 s; CLUSTER_SECONDS sets it
//! ```
//!
//! It re-runs its own binary as each server (`cluster --server PORT`) and
//! each worker (`cluster --worker`), with the settings in the environment.

use stream_rpc_example_queue as queue_server;
#[path = "shared/worker.rs"]
mod worker;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stream_rpc::env::{ENV_SERVERS, parse_servers};
use stream_rpc::{Config, ConfigBuilder, Connector, Fernet, Reconnect, Timeouts, json, logging};
use stream_rpc_queue::{QueueConfig, RedisQueue, RedisSettings, TaskQueue, dedup_key};
use worker::{CheckingWorker, Worker, WorkerSettings};

const SERVERS: usize = 3;
const WORKERS: usize = 6;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.get(1).map(String::as_str) {
        Some("--server") => runtime.block_on(serve()),
        Some("--worker") => runtime.block_on(work()),
        _ => runtime.block_on(orchestrate()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One server: the example queue server on the shared queue.
async fn serve() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    logging::Settings::from_env()
        .map_err(|e| e.to_string())
        .and_then(|settings| logging::init(&settings).map_err(|e| e.to_string()))?;
    let queue_config = QueueConfig::from_env().map_err(|e| e.to_string())?;
    let queue = queue_config.open().await.map_err(|e| e.to_string())?;
    let server = queue_server::QueueServer::new(queue, queue_config.lease);
    Connector::new(config)
        .run_server(server)
        .await
        .map_err(|e| e.to_string())
}

/// One worker: the example worker, failing over between the servers.
async fn work() -> Result<(), String> {
    let settings = WorkerSettings::from_env("WORKER", WorkerSettings::default())?;
    let servers = std::env::var(ENV_SERVERS).map_err(|_| format!("{ENV_SERVERS} is not set"))?;
    let servers = parse_servers(&servers).map_err(|e| e.to_string())?;
    let timeouts = Timeouts::default().with_idle(Some(Duration::from_secs(5)));
    let config = ConfigBuilder::from_env()
        .and_then(|builder| builder.timeouts(timeouts).build())
        .map_err(|e| e.to_string())?;
    logging::Settings::from_env()
        .map_err(|e| e.to_string())
        .and_then(|settings| logging::init(&settings).map_err(|e| e.to_string()))?;
    let reconnect = Reconnect::default()
        .hello("ping", json!(null))
        .with_max_delay(Duration::from_secs(1))
        .with_servers(servers);
    let connector = Connector::new(config);
    connector
        .shutdown_handle()
        .shutdown_on(stream_rpc::shutdown_signal());
    let worker = Worker::new(settings).with_stop(connector.shutdown_handle());
    worker.count_hello();
    let stats = worker.stats.clone();
    let client = connector
        .connect_reconnecting(CheckingWorker(worker), reconnect)
        .map_err(|e| e.to_string())?;
    let end = client.join().await;
    tracing::info!("{}", stats.summary());
    end.map_err(|e| e.to_string())
}

/// A child process whose output lines are collected.
struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(name: String, command: &mut Command) -> Result<Process, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        Ok(Process { name, child, lines })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks it to stop (SIGINT, Ctrl-C) and waits, bounded.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop in time; killed", self.name);
        self.kill();
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Waits until something listens on `port` (bounded).
fn wait_listening(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not listen on port {port} within 15 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start_redis(port: u16, dir: &PathBuf) -> Result<Process, String> {
    let redis = Process::start(
        "redis-server".into(),
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]),
    )
    .map_err(|e| {
        format!(
            "{e}: the cluster needs redis-server on the PATH \
             (Debian: apt-get install redis-server; macOS: brew install redis)"
        )
    })?;
    wait_listening(port, "redis-server")?;
    Ok(redis)
}

async fn orchestrate() -> Result<(), String> {
    let seconds: u64 = match std::env::var("CLUSTER_SECONDS") {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("CLUSTER_SECONDS must be whole seconds, got {text:?}"))?,
        Err(_) => 20,
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let key = Fernet::generate_key().map_err(|e| e.to_string())?;
    let redis_port = free_port()?;
    let dir = std::env::temp_dir().join(format!("stream-rpc-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let url = format!("redis://127.0.0.1:{redis_port}/");
    let mut redis = start_redis(redis_port, &dir)?;
    println!(
        "Redis on 127.0.0.1:{redis_port}, append-only file in {}",
        dir.display()
    );

    // Set first: `env_clear` would wipe what was set before it.
    let common = |command: &mut Command| {
        command
            .env_clear()
            .env("CRYPTO_KEY", &key)
            .env("STREAM_RPC_HOST", "127.0.0.1")
            .env("STREAM_RPC_LOG_LVL", "INFO")
            .env("STREAM_RPC_LOG_PACKETS", "off")
            .env("STREAM_RPC_QUEUE", &url)
            .env("STREAM_RPC_QUEUE_LEASE_SECS", "2");
    };
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for n in 0..SERVERS {
        let port = free_port()?;
        let mut command = Command::new(&me);
        common(&mut command);
        command
            .arg("--server")
            .env("STREAM_RPC_PORT", port.to_string());
        servers.push(Process::start(format!("server {n}"), &mut command)?);
        wait_listening(port, "a server")?;
        ports.push(port);
    }
    let mut workers = Vec::new();
    for n in 0..WORKERS {
        // Each worker starts with another server, and fails over in turn.
        let list: Vec<String> = (0..SERVERS)
            .map(|i| format!("127.0.0.1:{}", ports[(n + i) % SERVERS]))
            .collect();
        let mut command = Command::new(&me);
        common(&mut command);
        command
            .arg("--worker")
            .env(ENV_SERVERS, list.join(","))
            .env("WORKER_REQUEST_DELAY_MS", "20")
            .env("WORKER_PARSE_DELAY_MS", "50");
        workers.push(Process::start(format!("worker {n}"), &mut command)?);
    }
    println!("{SERVERS} servers on ports {ports:?} and {WORKERS} workers, for {seconds} s");

    let third = Duration::from_secs(seconds) / 3;
    tokio::time::sleep(third).await;
    println!("SIGKILL: server 0 and worker 0");
    servers[0].kill();
    workers[0].kill();
    tokio::time::sleep(third).await;
    println!("SIGKILL: Redis; restarting it on its append-only file");
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis = start_redis(redis_port, &dir)?;
    tokio::time::sleep(third).await;

    // Workers first, then servers; the ones killed are already gone.
    for process in workers.iter_mut().chain(servers.iter_mut()) {
        process.stop();
    }
    summarize(&url, &workers).await?;
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The summary, checked against Redis: every article a server acknowledged
/// as queued (the workers log each answer as it comes) has its name held
/// on Redis (queued, leased, dead, or saved within the hour).
async fn summarize(url: &str, workers: &[Process]) -> Result<(), String> {
    let queue = RedisQueue::connect(RedisSettings::new(url))
        .await
        .map_err(|e| e.to_string())?;
    let stats = queue.stats().await.map_err(|e| e.to_string())?;
    let mut acknowledged = BTreeSet::new();
    let mut parsed = 0;
    for worker in workers {
        for line in worker.lines() {
            if let Some(article) = line.split("Queued article: ").nth(1) {
                acknowledged.insert(article.trim().to_owned());
            }
            if line.contains("Finished parsing article: ") {
                parsed += 1;
            }
        }
    }
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    for article in &acknowledged {
        let id: u64 = article
            .parse()
            .map_err(|_| format!("a worker logged a bad article id {article:?}"))?;
        let name = format!(
            "{{stream-rpc}}:key:{}",
            dedup_key("parse_article", &json!({ "article_id": id }))
        );
        let held: bool = redis::cmd("EXISTS")
            .arg(&name)
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        if !held {
            lost.push(id);
        }
    }
    println!("Summary, checked against Redis:");
    println!("  tasks put (acknowledged): {}", acknowledged.len());
    println!("  duplicates refused:       {}", stats.duplicates);
    println!("  redelivered:              {}", stats.redeliveries);
    println!("  parsed (workers' logs):   {parsed}");
    println!("  saved:                    {}", stats.done);
    println!(
        "  still queued or leased:   {}",
        stats.queued + stats.leased
    );
    println!("  dead-lettered:            {}", stats.dead);
    println!("  lost:                     {}", lost.len());
    if lost.is_empty() {
        Ok(())
    } else {
        Err(format!("acknowledged as queued and not on Redis: {lost:?}"))
    }
}
