//! The fleet under random faults: a real `redis-server` with its
//! append-only file (fsync at every write), three `server` example
//! processes on it, and eight workers (the Rust `worker` example and the
//! Python `python/examples/worker.py`, which poll, and two typed workers in
//! this process, fed by push after `task.subscribe`), every path through a
//! fault proxy (`tests/common/proxy.rs`): server↔Redis, and worker↔server.
//!
//! For `FLEET_SECONDS` (30 by default), faults chosen by a seeded random
//! generator (`FLEET_SEED`, printed at the start: the seed fixes which
//! faults come, in which order and for how long, not how the processes
//! interleave) hit it one at a time: SIGKILL of a server or a worker (then
//! a restart), SIGKILL of Redis (then a restart on its append-only file),
//! partitions in one direction, stalls, delays, discarded bytes and cuts
//! on the proxies, and a replay attacker that takes a token a worker sent
//! to server A (tapped at its proxy, once A had answered it) and plays it
//! verbatim to server B. Meanwhile a producer in the test, which holds the
//! key, puts tasks of its own: fresh ones, duplicates (the same content
//! under a new name) and name collisions (another task under a name that
//! is held).
//!
//! Then the faults stop, the workers are killed, and the test drains the
//! queue through a server (leases every task left and saves it, until
//! nothing is queued or leased), and checks against Redis and what the
//! proxies saw (the taps read every frame with the key):
//! - every task a server answered `{"queued": true}` is saved (its result
//!   is on Redis) or dead-lettered, and nothing is left queued or leased
//!   after the drain: **lost: 0**;
//! - no task was answered `{"saved": true}` twice, and none so answered
//!   lacks its result on Redis; no task was done twice however it was
//!   acked (a save, or a typed worker's reply to a push): the queue's count
//!   of acks that made a task done equals the tasks done;
//! - a duplicate is never queued; a collision is answered
//!   `{"queued": false, "reason": "name_taken"}`; a task leased to the
//!   drainer is saved (`{"saved": true}`) when it saves it at once;
//! - no replayed token is answered by the other server;
//! - no server exits by itself, no process panics.
//!
//! ```text
//! cargo test --test fleet                                  # CI: 30 s of faults
//! FLEET_SEED=42 FLEET_SECONDS=600 cargo test --test fleet -- --nocapture
//! ```
//!
//! The unit tests of the proxy are in `mod proxy_tests` below.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stream_rpc::Caller;

use common::example;
use common::proxy::{Direction, Proxy, Tapped};
use serde_json::{Value, json};
use stream_rpc::tasks::{TaskRef, TaskState};
use stream_rpc::{Config, Connector, Context, HandlerError, Packet, Protocol, Reply, Timeouts};
use stream_rpc_queue::{RedisQueue, RedisSettings, TaskQueue, dedup_key};
use stream_rpc_test_support::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

const SERVERS: usize = 3;
const RUST_WORKERS: usize = 4;
const PYTHON_WORKERS: usize = 2;
/// Typed workers fed by push (`task.subscribe`): in this process, a
/// hand-written protocol that serves `parse_article`.
const TYPED_WORKERS: usize = 2;
/// The servers' lease, in seconds.
const LEASE_SECS: u64 = 2;
/// How many times a task is handed out before it is a dead letter (the
/// servers' default).
const MAX_ATTEMPTS: u64 = 5;
/// The bound on waiting for a process's log line.
const LINE_BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A seeded random generator (SplitMix64): the same seed, the same faults.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A duration between `low` and `high` milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low + 1))
    }

    fn uuid(&mut self) -> Uuid {
        Uuid::from_u64_pair(self.next(), self.next())
    }
}

fn seed_from_env() -> u64 {
    match std::env::var("FLEET_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FLEET_SEED must be a whole number, got {text:?}")),
        Err(_) => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now()) % 1_000_000_000
        }
    }
}

fn seconds_from_env() -> u64 {
    match std::env::var("FLEET_SECONDS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FLEET_SECONDS must be whole seconds, got {text:?}")),
        Err(_) => 30,
    }
}

// ---------------------------------------------------------------------------
// Processes: output read line by line into a bounded tail, with an event
// for each line; killed (SIGKILL) when dropped, on a panic too.

/// What a process printed, for waiting on lines and for the report.
struct Output {
    state: Mutex<OutputState>,
    /// The number of lines read so far, bumped at each.
    lines: watch::Sender<u64>,
}

struct OutputState {
    tail: VecDeque<String>,
    last: std::time::Instant,
}

/// The lines of a process's output kept for the report.
const TAIL: usize = 60;

/// Lines that mean a process panicked or died of an exception, seen in any
/// process's output over the run.
type Alarms = Arc<Mutex<Vec<String>>>;

struct Process {
    name: String,
    child: Child,
    output: Arc<Output>,
}

impl Process {
    fn start(name: String, command: &mut Command, alarms: &Alarms) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (lines, _) = watch::channel(0);
        let output = Arc::new(Output {
            state: Mutex::new(OutputState {
                tail: VecDeque::new(),
                last: std::time::Instant::now(),
            }),
            lines,
        });
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let output = output.clone();
            let alarms = alarms.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("panicked at") {
                        lock(&alarms).push(format!("{name}: {line}"));
                    }
                    {
                        let mut state = lock(&output.state);
                        if state.tail.len() == TAIL {
                            state.tail.pop_front();
                        }
                        state.tail.push_back(line);
                        state.last = std::time::Instant::now();
                    }
                    output.lines.send_modify(|n| *n += 1);
                }
            });
        }
        Process {
            name,
            child,
            output,
        }
    }

    /// Waits (bounded) for a line that has `needle`, and returns it.
    async fn wait_line(&mut self, needle: &str) -> Result<String, String> {
        let mut changed = self.output.lines.subscribe();
        let deadline = Instant::now() + LINE_BOUND;
        loop {
            if let Some(line) = lock(&self.output.state)
                .tail
                .iter()
                .find(|line| line.contains(needle))
            {
                return Ok(line.clone());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) without a line with {needle:?}; its output:\n{}",
                    self.name,
                    self.tail()
                ));
            }
            // Each line is an event; the exit is seen at the next line or
            // within the poll (a dead process closes its output at once).
            let poll = Duration::from_millis(250).min(deadline - Instant::now());
            let _ = tokio::time::timeout(poll, changed.changed()).await;
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no line with {needle:?} within {LINE_BOUND:?}; its output:\n{}",
                    self.name,
                    self.tail()
                ));
            }
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Since when it printed nothing.
    fn silent_for(&self) -> Duration {
        lock(&self.output.state).last.elapsed()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn tail(&self) -> String {
        let state = lock(&self.output.state);
        let mut text = String::new();
        for line in &state.tail {
            let _ = writeln!(text, "    {line}");
        }
        text
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The project's Python (`target/python-venv`, made by `scripts/test`).
fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/python-venv/bin/python");
    assert!(
        python.exists(),
        "the fleet test runs Python workers with {}, which is missing: run \
         scripts/test (it makes the venv before cargo test), or make it with\n  \
         python3 -m venv target/python-venv && \
         target/python-venv/bin/python -m pip install -e 'python[test]'",
        python.display()
    );
    python
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------
// What the proxies saw, read with the key: the ledger of the run.

/// A task: its name (`peer:id`) and its content (the queue's dedup key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TaskKey {
    name: String,
    dedup: String,
}

impl TaskKey {
    fn of(task: &Packet) -> TaskKey {
        TaskKey {
            name: format!("{}:{}", task.peer, task.id),
            dedup: dedup_key(&task.method, &task.payload),
        }
    }
}

/// A request a proxy saw go to a server, until its answer comes.
struct Request {
    method: String,
    /// The task it puts.
    put: Option<Packet>,
    /// The task it saves.
    saves: Option<TaskKey>,
    token: Vec<u8>,
}

/// A token a server answered: what the replay attacker plays elsewhere.
#[derive(Clone)]
struct Captured {
    tag: usize,
    method: String,
    token: Vec<u8>,
    /// The packet it carried (`peer:id`), to recognise an answer to it.
    peer: Uuid,
    id: u64,
    answered: Instant,
}

#[derive(Default)]
struct Ledger {
    /// Tasks a server answered `{"queued": true}`, with who put them.
    acked: BTreeMap<TaskKey, String>,
    /// The task packets, by content, to read results and name them.
    tasks: HashMap<String, Packet>,
    /// When each task was answered `{"saved": true}`.
    saved: HashMap<TaskKey, Vec<Instant>>,
    saved_false: u64,
    /// `{"saved": true}` answers to saves of tasks the ledger cannot name.
    saved_unknown: u64,
    /// Puts answered `{"queued": false}`, by reason (`-` without one).
    refused: BTreeMap<String, u64>,
    leases: u64,
    errors: u64,
    frames: u64,
    unreadable: u64,
    /// Requests waiting for their answer, by proxy, connection and packet.
    requests: HashMap<(usize, u64, Uuid, u64), Request>,
    /// Tasks handed out, by proxy, connection and name; and by name alone.
    handed: HashMap<(usize, u64, Uuid, u64), TaskKey>,
    handed_any: HashMap<(Uuid, u64), TaskKey>,
    captured: VecDeque<Captured>,
    /// Requests answered, by proxy.
    answered: HashMap<usize, u64>,
    /// Tasks pushed to typed workers (the `task-id` of each push), and the
    /// workers' replies to pushes.
    pushed: HashSet<(Uuid, u64)>,
    pushes: u64,
    push_replies: u64,
}

/// Requests remembered at most (a soak loses answers to cuts).
const MAX_REQUESTS: usize = 100_000;

impl Ledger {
    fn put_answered(&mut self, task: &Packet, answer: &Value, who: &str) {
        match answer.get("queued") {
            Some(Value::Bool(true)) => {
                let key = TaskKey::of(task);
                self.tasks.insert(key.dedup.clone(), task.clone());
                self.acked.entry(key).or_insert_with(|| who.to_owned());
            }
            Some(Value::Bool(false)) => {
                let reason = answer
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned();
                *self.refused.entry(reason).or_default() += 1;
            }
            _ => {}
        }
    }

    fn saved_answered(&mut self, task: Option<TaskKey>, answer: &Value) {
        match (answer.get("saved"), task) {
            (Some(Value::Bool(true)), Some(task)) => {
                self.saved.entry(task).or_default().push(Instant::now())
            }
            (Some(Value::Bool(true)), None) => self.saved_unknown += 1,
            (Some(Value::Bool(false)), _) => self.saved_false += 1,
            _ => {}
        }
    }

    /// Reads one tapped line with the key.
    fn see(&mut self, fernet: &fernet::Fernet, tapped: Tapped, who: &str) {
        self.frames += 1;
        let Some(packet) = std::str::from_utf8(&tapped.line)
            .ok()
            .and_then(|token| fernet.decrypt(token).ok())
            .and_then(|plain| Packet::from_json(&plain).ok())
        else {
            self.unreadable += 1;
            return;
        };
        let (tag, connection) = (tapped.tag, tapped.connection);
        match (tapped.direction, packet.reply_to) {
            // A server's push of a task to a typed worker, and its reply.
            (Direction::ToClient, None) if packet.method == "parse_article" => {
                self.pushes += 1;
                let named = packet
                    .meta
                    .as_ref()
                    .and_then(|meta| meta.get("task-id"))
                    .and_then(|id| id.parse::<stream_rpc::tasks::TaskRef>().ok());
                if let Some(task) = named
                    && self.pushed.len() < MAX_REQUESTS
                {
                    self.pushed.insert((task.peer, task.id));
                }
            }
            (Direction::ToServer, Some(_)) if packet.method == "parse_article.reply" => {
                self.push_replies += 1;
            }
            (Direction::ToServer, None) => {
                let put = match packet.method.as_str() {
                    "put_in_queue" => serde_json::from_value::<Packet>(packet.payload.clone()).ok(),
                    _ => None,
                };
                let saves = match packet.method.as_str() {
                    "save_parsed_article" => {
                        let named = packet.payload.get("task").and_then(|task| {
                            let peer = task.get("peer")?.as_str()?.parse::<Uuid>().ok()?;
                            Some((peer, task.get("id")?.as_u64()?))
                        });
                        named.and_then(|(peer, id)| {
                            self.handed
                                .get(&(tag, connection, peer, id))
                                .or_else(|| self.handed_any.get(&(peer, id)))
                                .cloned()
                        })
                    }
                    _ => None,
                };
                if self.requests.len() >= MAX_REQUESTS {
                    self.requests.clear();
                }
                self.requests.insert(
                    (tag, connection, packet.peer, packet.id),
                    Request {
                        method: packet.method,
                        put,
                        saves,
                        token: tapped.line,
                    },
                );
            }
            (Direction::ToClient, Some(to)) => {
                let Some(request) = self.requests.remove(&(tag, connection, to.peer, to.id)) else {
                    return;
                };
                *self.answered.entry(tag).or_default() += 1;
                if packet.method == "error" {
                    self.errors += 1;
                }
                match request.method.as_str() {
                    "put_in_queue" => {
                        if let Some(task) = &request.put {
                            self.put_answered(task, &packet.payload, who);
                        }
                    }
                    "get_task_from_queue" if packet.method == "parse_article" => {
                        self.leases += 1;
                        let key = TaskKey::of(&packet);
                        self.tasks
                            .entry(key.dedup.clone())
                            .or_insert_with(|| Packet {
                                reply_to: None,
                                ..packet.clone()
                            });
                        if self.handed.len() >= MAX_REQUESTS {
                            self.handed.clear();
                            self.handed_any.clear();
                        }
                        self.handed
                            .insert((tag, connection, packet.peer, packet.id), key.clone());
                        self.handed_any.insert((packet.peer, packet.id), key);
                    }
                    "save_parsed_article" => {
                        self.saved_answered(request.saves.clone(), &packet.payload);
                    }
                    _ => {}
                }
                if matches!(
                    request.method.as_str(),
                    "put_in_queue" | "get_task_from_queue"
                ) && packet.method != "error"
                {
                    if self.captured.len() == 64 {
                        self.captured.pop_front();
                    }
                    self.captured.push_back(Captured {
                        tag,
                        method: request.method,
                        token: request.token,
                        peer: to.peer,
                        id: to.id,
                        answered: tapped.at,
                    });
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The fleet.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rust,
    Python,
    Typed,
}

struct Worker {
    kind: Kind,
    process: Option<Process>,
    /// A typed worker's task (aborted to kill it).
    typed: Option<tokio::task::JoinHandle<()>>,
    /// Its proxies, with the server each is in front of.
    proxies: Vec<(usize, usize)>,
    restarts: u32,
}

/// A proxy in front of a server for a worker (its index is the tap tag).
struct WorkerProxy {
    proxy: Proxy,
    worker: usize,
    server: usize,
}

struct Fleet {
    key: String,
    alarms: Alarms,
    redis: RedisServer,
    /// One per server, in front of Redis.
    redis_proxies: Vec<Proxy>,
    servers: Vec<Option<Process>>,
    /// The servers' ports, as the producer and the attacker reach them.
    ports: Arc<Mutex<Vec<u16>>>,
    workers: Vec<Worker>,
    proxies: Vec<WorkerProxy>,
    ledger: Arc<Mutex<Ledger>>,
    /// Notes of the run: faults, restarts, what the attacker saw.
    log: Vec<String>,
    started: Instant,
    /// Servers that exited without being killed, with their output.
    server_exits: Vec<String>,
    worker_exits: u32,
    stuck_restarts: u32,
}

impl Fleet {
    fn note(&mut self, text: String) {
        let line = format!("{:6.1}s {text}", self.started.elapsed().as_secs_f64());
        println!("fleet: {line}");
        self.log.push(line);
    }

    async fn start_server(&mut self, n: usize) -> Result<(), String> {
        let url = format!("redis://127.0.0.1:{}/", self.redis_proxies[n].port());
        let mut command = Command::new(example("server"));
        command
            .env_clear()
            .env("CRYPTO_KEY", &self.key)
            .env("STREAM_RPC_HOST", "127.0.0.1")
            .env("STREAM_RPC_PORT", "0")
            .env("STREAM_RPC_LOG_LVL", "INFO")
            .env("STREAM_RPC_LOG_PACKETS", "off")
            .env("STREAM_RPC_QUEUE", &url)
            .env("STREAM_RPC_QUEUE_LEASE_SECS", LEASE_SECS.to_string())
            .env("STREAM_RPC_QUEUE_MAX_ATTEMPTS", MAX_ATTEMPTS.to_string());
        let mut process = Process::start(format!("server {n}"), &mut command, &self.alarms);
        let line = process.wait_line("Serving on 127.0.0.1:").await?;
        let port: u16 = line
            .rsplit(':')
            .next()
            .and_then(|port| port.trim().parse().ok())
            .ok_or_else(|| format!("server {n}: no port in {line:?}"))?;
        for proxy in self.proxies.iter().filter(|p| p.server == n) {
            proxy.proxy.set_target(local(port));
        }
        lock(&self.ports)[n] = port;
        self.servers[n] = Some(process);
        Ok(())
    }

    fn start_worker(&mut self, n: usize) {
        let worker = &self.workers[n];
        let ports: Vec<u16> = worker
            .proxies
            .iter()
            .map(|&(proxy, _)| self.proxies[proxy].proxy.port())
            .collect();
        if worker.kind == Kind::Typed {
            let task = tokio::spawn(typed_worker(self.key.clone(), ports));
            if let Some(old) = self.workers[n].typed.replace(task) {
                old.abort();
            }
            return;
        }
        let mut command;
        match worker.kind {
            Kind::Typed => unreachable!("started above"),
            Kind::Rust => {
                command = Command::new(example("worker"));
                let servers: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
                command
                    .env_clear()
                    .env("CRYPTO_KEY", &self.key)
                    .env("STREAM_RPC_HOST", "127.0.0.1")
                    .env("STREAM_RPC_PORT", ports[0].to_string())
                    .env("STREAM_RPC_SERVERS", servers.join(","))
                    .env("STREAM_RPC_LOG_LVL", "INFO")
                    .env("STREAM_RPC_LOG_PACKETS", "off")
                    .env("WORKER_REQUEST_DELAY_MS", "20")
                    .env("WORKER_PARSE_DELAY_MS", "50")
                    .env("WORKER_IDLE_TIMEOUT_MS", "3000")
                    .env("WORKER_CONNECT_ATTEMPTS", "1000000");
            }
            Kind::Python => {
                let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                command = Command::new(python());
                command
                    .arg(root.join("python/examples/worker.py"))
                    .env_clear()
                    .env("CRYPTO_KEY", &self.key)
                    .env("STREAM_RPC_HOST", "127.0.0.1")
                    .env("STREAM_RPC_PORT", ports[0].to_string())
                    .env("STREAM_RPC_LOG_LVL", "INFO")
                    .env("PYTHONUNBUFFERED", "1")
                    .env("WORKER_REQUEST_DELAY_MS", "20");
            }
        }
        let name = match worker.kind {
            Kind::Rust => format!("rust worker {n}"),
            Kind::Python => format!("python worker {n}"),
            Kind::Typed => format!("typed worker {n}"),
        };
        self.workers[n].process = Some(Process::start(name, &mut command, &self.alarms));
    }

    /// Restarts workers that ended by themselves (a Python worker ends with
    /// its connection) or went silent (waiting for an answer that a fault
    /// took), and servers that ended by themselves (a finding).
    async fn supervise(&mut self) -> Result<(), String> {
        for n in 0..self.workers.len() {
            if self.workers[n]
                .typed
                .as_ref()
                .is_some_and(|t| t.is_finished())
            {
                self.worker_exits += 1;
                self.workers[n].restarts += 1;
                self.start_worker(n);
            }
            let Some(process) = self.workers[n].process.as_mut() else {
                continue;
            };
            let ended = !process.alive();
            let stuck = process.silent_for() > Duration::from_secs(15);
            if ended || stuck {
                if stuck && !ended {
                    process.kill();
                    self.stuck_restarts += 1;
                } else {
                    self.worker_exits += 1;
                }
                self.workers[n].restarts += 1;
                self.start_worker(n);
            }
        }
        for n in 0..SERVERS {
            let Some(process) = self.servers[n].as_mut() else {
                continue;
            };
            if !process.alive() {
                let text = format!(
                    "server {n} exited by itself ({:?}); its last lines:\n{}",
                    process.child.try_wait().ok().flatten(),
                    process.tail()
                );
                self.note(format!("server {n} exited by itself; restarting it"));
                self.server_exits.push(text);
                self.start_server(n).await?;
            }
        }
        Ok(())
    }

    fn heal_all(&self) {
        for proxy in &self.redis_proxies {
            proxy.heal();
        }
        for proxy in &self.proxies {
            proxy.proxy.heal();
        }
    }

    /// The proxies a network fault hits, chosen at random, with their
    /// name; a server's link to Redis only `with_redis`.
    fn pick_paths(&self, rng: &mut Rng, with_redis: bool) -> (Vec<&Proxy>, String) {
        let pick = if with_redis {
            rng.below(3)
        } else {
            1 + rng.below(2)
        };
        match pick {
            0 => {
                let n = rng.below(SERVERS);
                (vec![&self.redis_proxies[n]], format!("server {n} ↔ Redis"))
            }
            1 => {
                let n = rng.below(SERVERS);
                (
                    self.proxies
                        .iter()
                        .filter(|p| p.server == n)
                        .map(|p| &p.proxy)
                        .collect(),
                    format!("every worker ↔ server {n}"),
                )
            }
            _ => {
                let n = rng.below(self.workers.len());
                (
                    self.proxies
                        .iter()
                        .filter(|p| p.worker == n)
                        .map(|p| &p.proxy)
                        .collect(),
                    format!("worker {n} ↔ every server"),
                )
            }
        }
    }
}

/// The producer's tally: its own puts, duplicates and collisions.
#[derive(Default)]
struct Produced {
    fresh: u64,
    /// Duplicates put, and those queued (wrongly) with their names.
    duplicates: u64,
    duplicates_queued: Vec<String>,
    /// Collisions: the first task, when its answer came, the second's
    /// answer, and when the second was sent.
    collisions: Vec<Collision>,
    failed_calls: u64,
}

struct Collision {
    first: TaskKey,
    second: TaskKey,
    second_sent: Instant,
    answer: Value,
}

/// Puts tasks through the servers (directly, not through a proxy) until
/// `stop`: fresh ones, duplicates of its own and name collisions.
async fn produce(
    key: String,
    ports: Arc<Mutex<Vec<u16>>>,
    ledger: Arc<Mutex<Ledger>>,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> Produced {
    let mut produced = Produced::default();
    let peer = rng.uuid();
    let mut next_id = 0u64;
    let mut next_article = 2_000_000u64;
    let mut mine: Vec<Packet> = Vec::new();
    let mut client: Option<stream_rpc::Client> = None;
    let limit = Duration::from_secs(5);
    while !*stop.borrow() {
        // A connection that closed is made again.
        if client.as_ref().is_some_and(|c| !c.is_connected()) {
            client = None;
        }
        if client.is_none() {
            let port = {
                let ports = lock(&ports);
                ports[rng.below(ports.len())]
            };
            let config = Config::builder()
                .key(key.clone())
                .host("127.0.0.1")
                .port(port)
                .timeouts(Timeouts::default().with_idle(None))
                .build()
                .expect("the producer's config");
            client = Connector::new(config).connect(()).await.ok();
        }
        if let Some(session) = client.as_ref().and_then(|c| c.connection()) {
            let put = |task: Packet| {
                let session = session.clone();
                async move {
                    session
                        .call_with_timeout("put_in_queue", json!(task), limit)
                        .await
                        .ok()
                        .filter(|answer| answer.method == "pong")
                        .map(|answer| answer.payload)
                }
            };
            let fresh = |next_id: &mut u64, next_article: &mut u64| {
                *next_id += 1;
                *next_article += 1;
                Packet::new(
                    peer,
                    *next_id,
                    "parse_article",
                    json!({ "article_id": *next_article }),
                )
            };
            let choice = rng.below(4);
            let ok = if choice == 0 && !mine.is_empty() {
                // A duplicate: the content of one of its tasks, a new name.
                let original = &mine[rng.below(mine.len())];
                next_id += 1;
                let task = Packet::new(peer, next_id, "parse_article", original.payload.clone());
                produced.duplicates += 1;
                match put(task.clone()).await {
                    Some(answer) => {
                        if answer.get("queued") == Some(&Value::Bool(true)) {
                            produced.duplicates_queued.push(format!(
                                "{} (copy of {})",
                                task_name(&task),
                                task_name(original)
                            ));
                        }
                        lock(&ledger).put_answered(&task, &answer, "the producer");
                        true
                    }
                    None => false,
                }
            } else {
                let first = fresh(&mut next_id, &mut next_article);
                match put(first.clone()).await {
                    Some(answer) => {
                        lock(&ledger).put_answered(&first, &answer, "the producer");
                        let queued = answer.get("queued") == Some(&Value::Bool(true));
                        if queued {
                            produced.fresh += 1;
                            mine.push(first.clone());
                        }
                        if queued && choice == 1 {
                            // A collision: another task under the name the
                            // first holds, at once (the first is queued or
                            // being worked on).
                            next_article += 1;
                            let second = Packet::new(
                                peer,
                                first.id,
                                "parse_article",
                                json!({ "article_id": next_article + 1_000_000 }),
                            );
                            let sent = Instant::now();
                            match put(second.clone()).await {
                                Some(answer) => {
                                    // Named in the report either way.
                                    lock(&ledger)
                                        .tasks
                                        .entry(TaskKey::of(&second).dedup)
                                        .or_insert_with(|| second.clone());
                                    lock(&ledger).put_answered(
                                        &second,
                                        &answer,
                                        "the producer (collision)",
                                    );
                                    produced.collisions.push(Collision {
                                        first: TaskKey::of(&first),
                                        second: TaskKey::of(&second),
                                        second_sent: sent,
                                        answer,
                                    });
                                    true
                                }
                                None => false,
                            }
                        } else {
                            true
                        }
                    }
                    None => false,
                }
            };
            if !ok {
                produced.failed_calls += 1;
                client = None;
            }
        }
        let pause = rng.millis(30, 150);
        let _ = tokio::time::timeout(pause, stop.changed()).await;
    }
    produced
}

fn task_name(task: &Packet) -> String {
    format!("{}:{} {}", task.peer, task.id, task.payload)
}

/// What a replay attempt came to.
enum ReplayOutcome {
    /// Not answered; the fresh ping after it was.
    Refused,
    /// Answered: what came back.
    Answered(String),
    /// Nothing to conclude (the other server did not answer a fresh ping,
    /// or could not check tokens then: its Redis was away).
    Inconclusive(String),
}

/// Plays `captured` (answered by server `from`) verbatim to the server on
/// `port`, then a fresh ping of its own; the replay must get no answer.
async fn replay(key: &str, captured: &Captured, port: u16) -> ReplayOutcome {
    let fernet = fernet::Fernet::new(key).expect("the key");
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(local(port))).await
    else {
        return ReplayOutcome::Inconclusive("cannot connect".into());
    };
    let (reader, mut writer) = stream.into_split();
    let mut reader = AsyncBufReader::new(reader);
    let mut frame = captured.token.clone();
    frame.push(b'\n');
    if writer.write_all(&frame).await.is_err() {
        return ReplayOutcome::Inconclusive("the connection closed at the replay".into());
    }
    let me = Uuid::new_v4();
    let ping = Packet::new(me, 1, "ping", json!("after the replay"));
    let token = fernet.encrypt(&ping.to_json().expect("a ping"));
    if writer
        .write_all(format!("{token}\n").as_bytes())
        .await
        .is_err()
    {
        return ReplayOutcome::Inconclusive("the connection closed after the replay".into());
    }
    // Read until the ping is answered (the replay is answered first, or
    // soon after if its handler waits on Redis), then for a quiet window.
    let mut answered_ping = false;
    let mut quiet_until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout_at(quiet_until, reader.read_line(&mut line)).await;
        match read {
            Err(_) if answered_ping => return ReplayOutcome::Refused,
            Err(_) => {
                return ReplayOutcome::Inconclusive("no answer to a fresh ping within 10 s".into());
            }
            Ok(Ok(0)) | Ok(Err(_)) if answered_ping => return ReplayOutcome::Refused,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return ReplayOutcome::Inconclusive("closed before answering a fresh ping".into());
            }
            Ok(Ok(_)) => {}
        }
        let packet = fernet
            .decrypt(line.trim_end())
            .ok()
            .and_then(|plain| Packet::from_json(&plain).ok());
        let Some(packet) = packet else {
            return ReplayOutcome::Answered(format!("a frame that does not open: {line:?}"));
        };
        // A server whose replay store cannot reach Redis runs nothing and
        // answers every request `unavailable`: a refusal, but not one that
        // shows the shared store at work (the top-up after the faults
        // replays again with everything healed).
        if packet.is_error() && packet.payload["code"] == "unavailable" {
            return ReplayOutcome::Inconclusive(
                "the server could not check tokens then (answered `unavailable`, nothing run)"
                    .into(),
            );
        }
        match packet.reply_to {
            Some(to) if to.peer == me && to.id == 1 => {
                answered_ping = true;
                quiet_until = Instant::now() + Duration::from_millis(1500);
            }
            Some(to) if to.peer == captured.peer && to.id == captured.id => {
                return ReplayOutcome::Answered(format!(
                    "{} {}",
                    packet.method,
                    truncate(&packet.payload.to_string(), 160)
                ));
            }
            _ => {
                return ReplayOutcome::Answered(format!(
                    "another packet: {} {}",
                    packet.method,
                    truncate(&packet.payload.to_string(), 160)
                ));
            }
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

struct ReplayRecord {
    method: String,
    from: usize,
    to: usize,
    age: Duration,
    outcome: ReplayOutcome,
}

/// Takes the newest answered token of `method` (any other when there is
/// none), answered within the last 30 s, and plays it to another server.
async fn attack(fleet: &mut Fleet, rng: &mut Rng, method: &str) -> Option<ReplayRecord> {
    let captured = {
        let ledger = lock(&fleet.ledger);
        let fresh = |c: &&Captured| c.answered.elapsed() < Duration::from_secs(30);
        ledger
            .captured
            .iter()
            .rev()
            .filter(fresh)
            .find(|c| c.method == method)
            .or_else(|| ledger.captured.iter().rev().find(fresh))
            .cloned()
    }?;
    let from = fleet.proxies[captured.tag].server;
    let to = (from + 1 + rng.below(SERVERS - 1)) % SERVERS;
    let port = lock(&fleet.ports)[to];
    let outcome = replay(&fleet.key, &captured, port).await;
    let record = ReplayRecord {
        method: captured.method.clone(),
        from,
        to,
        age: captured.answered.elapsed(),
        outcome,
    };
    let said = match &record.outcome {
        ReplayOutcome::Refused => "not answered".to_owned(),
        ReplayOutcome::Answered(what) => format!("ANSWERED with {what}"),
        ReplayOutcome::Inconclusive(why) => format!("inconclusive: {why}"),
    };
    fleet.note(format!(
        "replay: a {} token worker {} sent to server {from} ({:.1} s ago), played to server {to}: {said}",
        record.method,
        fleet.proxies[captured.tag].worker,
        record.age.as_secs_f64()
    ));
    Some(record)
}

/// The faults, one at a time, until `until`.
async fn inject_faults(
    fleet: &mut Fleet,
    rng: &mut Rng,
    until: Instant,
    counts: &mut BTreeMap<&'static str, u32>,
    replays: &mut Vec<ReplayRecord>,
) -> Result<(), String> {
    while Instant::now() < until {
        fleet.supervise().await?;
        let roll = rng.below(100);
        let fault = match roll {
            0..10 => "kill a server",
            10..20 => "kill a worker",
            20..26 => "kill redis",
            26..40 => "partition",
            40..48 => "delay",
            48..58 => "stall",
            58..66 => "cut",
            66..72 => "discard",
            72..87 => "replay",
            _ => "calm",
        };
        *counts.entry(fault).or_default() += 1;
        match fault {
            "kill a server" => {
                let n = rng.below(SERVERS);
                let down = rng.millis(200, 2000);
                fleet.note(format!("SIGKILL server {n}, restarting it in {down:?}"));
                if let Some(mut process) = fleet.servers[n].take() {
                    process.kill();
                }
                tokio::time::sleep(down).await;
                fleet.start_server(n).await?;
            }
            "kill a worker" => {
                let n = rng.below(fleet.workers.len());
                let down = rng.millis(200, 1000);
                fleet.note(format!("SIGKILL worker {n}, restarting it in {down:?}"));
                if let Some(mut process) = fleet.workers[n].process.take() {
                    process.kill();
                }
                if let Some(task) = fleet.workers[n].typed.take() {
                    task.abort();
                }
                tokio::time::sleep(down).await;
                fleet.workers[n].restarts += 1;
                fleet.start_worker(n);
            }
            "kill redis" => {
                let down = rng.millis(200, 1500);
                fleet.note(format!(
                    "SIGKILL Redis, restarting it on its append-only file in {down:?}"
                ));
                fleet.redis.kill();
                tokio::time::sleep(down).await;
                // It waits (bounded) until Redis answers PING.
                tokio::task::block_in_place(|| fleet.redis.restart());
            }
            "partition" | "stall" | "delay" | "discard" | "cut" => {
                let hold = rng.millis(300, 6000);
                let direction = if rng.below(2) == 0 {
                    Direction::ToServer
                } else {
                    Direction::ToClient
                };
                let delay = rng.millis(20, 300);
                // Bytes thrown away inside a live connection are not a
                // fault TCP makes; the workers' line framing recovers from
                // it (a frame that does not open is skipped), Redis's
                // protocol has no such resynchronisation: worker paths only.
                let (proxies, what) = fleet.pick_paths(rng, fault != "discard");
                let said = match fault {
                    "partition" => format!("partition {direction:?} on {what} for {hold:?}"),
                    "stall" => format!("stall {what} for {hold:?}"),
                    "delay" => format!("delay {delay:?} per chunk on {what} for {hold:?}"),
                    "discard" => format!("discard {direction:?} on {what} for {hold:?}"),
                    _ => format!("cut every connection of {what}"),
                };
                for proxy in &proxies {
                    match fault {
                        "partition" => proxy.partition(direction),
                        "stall" => proxy.stall(),
                        "delay" => proxy.delay(delay),
                        "discard" => proxy.discard(direction),
                        _ => proxy.cut(),
                    }
                }
                drop(proxies);
                fleet.note(said);
                if fault == "cut" {
                    tokio::time::sleep(rng.millis(100, 800)).await;
                } else {
                    tokio::time::sleep(hold).await;
                    fleet.heal_all();
                }
            }
            "replay" => {
                let method = if rng.below(2) == 0 {
                    "get_task_from_queue"
                } else {
                    "put_in_queue"
                };
                if let Some(record) = attack(fleet, rng, method).await {
                    replays.push(record);
                }
            }
            _ => tokio::time::sleep(rng.millis(300, 1500)).await,
        }
    }
    fleet.heal_all();
    Ok(())
}

/// What the drainers saw.
#[derive(Default)]
struct Drained {
    saved: u64,
    /// Tasks leased to a drainer whose save, made at once, was refused.
    refused: BTreeMap<TaskKey, u32>,
    /// Calls that failed or were answered with an error (retried).
    failed_calls: u64,
    seconds: f64,
}

/// How many drainers lease and save at once (spread over the servers).
const DRAINERS: usize = 6;

/// Leases and saves every task left, through the servers, until nothing is
/// queued or leased (bounded: the leases of the killed workers end, and a
/// task that cannot be saved dies after its attempts).
async fn drain(fleet: &Fleet, queue: &RedisQueue) -> Drained {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(LEASE_SECS * MAX_ATTEMPTS + 40);
    let drained = Arc::new(Mutex::new(Drained::default()));
    let mut drainers = Vec::new();
    for n in 0..DRAINERS {
        let port = lock(&fleet.ports)[n % SERVERS];
        let config = Config::builder()
            .key(fleet.key.clone())
            .host("127.0.0.1")
            .port(port)
            .build()
            .expect("the drainer's config");
        drainers.push(tokio::spawn(drainer(
            Connector::new(config),
            queue.clone(),
            fleet.ledger.clone(),
            drained.clone(),
            deadline,
        )));
    }
    for drainer in drainers {
        let _ = drainer.await;
    }
    let mut drained = std::mem::take(&mut *lock(&drained));
    drained.seconds = started.elapsed().as_secs_f64();
    drained
}

/// One drainer: leases a task, saves it at once, again, until the queue
/// holds nothing queued or leased or the deadline passes. A failed call
/// (a server that just got Redis back, say) is counted and retried.
async fn drainer(
    connector: Connector,
    queue: RedisQueue,
    ledger: Arc<Mutex<Ledger>>,
    drained: Arc<Mutex<Drained>>,
    deadline: Instant,
) {
    let limit = Duration::from_secs(5);
    let mut client: Option<stream_rpc::Client> = None;
    while Instant::now() < deadline {
        // A connection that closed is made again.
        if client.as_ref().is_some_and(|c| !c.is_connected()) {
            client = None;
        }
        if client.is_none() {
            client = connector.connect(()).await.ok();
        }
        let Some(session) = client.as_ref().and_then(|c| c.connection()) else {
            lock(&drained).failed_calls += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let answer = match session
            .call_with_timeout("get_task_from_queue", json!(null), limit)
            .await
        {
            Ok(answer) => answer,
            Err(_) => {
                lock(&drained).failed_calls += 1;
                client = None;
                continue;
            }
        };
        if answer.method == "parse_article" {
            let key = TaskKey::of(&answer);
            let saved = session
                .call_with_timeout(
                    "save_parsed_article",
                    json!({
                        "task": {"peer": answer.peer, "id": answer.id},
                        "article": {"article_id": answer.payload.get("article_id"), "by": "a drainer"},
                    }),
                    limit,
                )
                .await;
            let Ok(saved) = saved else {
                // Its lease runs out and it comes back.
                lock(&drained).failed_calls += 1;
                client = None;
                continue;
            };
            {
                let mut ledger = lock(&ledger);
                ledger
                    .tasks
                    .entry(key.dedup.clone())
                    .or_insert_with(|| Packet {
                        reply_to: None,
                        ..answer.clone()
                    });
                ledger.saved_answered(Some(key.clone()), &saved.payload);
            }
            let mut drained = lock(&drained);
            if saved.payload.get("saved") == Some(&Value::Bool(true)) {
                drained.saved += 1;
            } else {
                *drained.refused.entry(key).or_default() += 1;
            }
            continue;
        }
        if answer.method != "pong" {
            lock(&drained).failed_calls += 1;
        }
        match queue.stats().await {
            Ok(stats) if stats.queued + stats.leased == 0 => return,
            _ => {}
        }
        // Leases of killed workers run out by Redis's clock: look again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------
// A typed worker fed by push: what a peer writes without the runtime's
// `Worker` (a plain protocol and `task.subscribe`).

/// How long a typed worker takes to parse an article: longer than the
/// Rust workers' `WORKER_PARSE_DELAY_MS`, one at a time, so that push
/// (which hands a task out the moment it is put) leaves the polling
/// workers their share.
const TYPED_PARSE: Duration = Duration::from_millis(200);
/// How often a typed worker checks that its server answers (a partition
/// or a stall holds a connection open without traffic).
const TYPED_CHECK_EVERY: Duration = Duration::from_secs(3);

struct Typed;

impl Protocol for Typed {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "parse_article" => {
                tokio::time::sleep(TYPED_PARSE).await;
                Ok(Reply::message(
                    "parse_article.reply",
                    json!({"article_id": packet.payload.get("article_id"), "by": "a typed worker"}),
                ))
            }
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// Connects through its proxies in turn, subscribes to `parse_article`
/// and serves the pushes, until its connection ends or stops answering;
/// then the next proxy. Runs until aborted (its "SIGKILL").
async fn typed_worker(key: String, ports: Vec<u16>) {
    let limit = Duration::from_secs(2);
    for port in ports.iter().cycle() {
        let config = Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(*port)
            .build()
            .expect("the typed worker's config");
        let Ok(client) = Connector::new(config).connect(Typed).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let subscribe = json!({"methods": ["parse_article"], "concurrency": 1});
        if client
            .call_with_timeout("task.subscribe", subscribe, limit)
            .await
            .is_err()
        {
            continue;
        }
        let Some(connection) = client.connection() else {
            continue;
        };
        loop {
            tokio::select! {
                () = connection.closed() => break,
                () = tokio::time::sleep(TYPED_CHECK_EVERY) => {
                    if client.call_with_timeout("ping", json!(null), limit).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

#[test]
fn a_fleet_under_random_faults_loses_nothing_and_answers_no_replay() {
    let seed = seed_from_env();
    let seconds = seconds_from_env();
    // Fails at once, saying how to make it, when the venv is missing.
    python();
    println!("fleet: FLEET_SEED={seed} FLEET_SECONDS={seconds} to rerun");
    eprintln!("fleet: FLEET_SEED={seed} FLEET_SECONDS={seconds} to rerun");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let bound = Duration::from_secs(seconds + 180);
    let outcome = runtime.block_on(async {
        tokio::time::timeout(bound, run(seed, seconds))
            .await
            .unwrap_or_else(|_| Err(format!("the fleet test exceeded its bound of {bound:?}")))
    });
    // Whatever is left (proxies, taps) goes with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(report) = outcome {
        panic!("FLEET_SEED={seed} FLEET_SECONDS={seconds}: {report}");
    }
}

async fn run(seed: u64, seconds: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let started = Instant::now();
    let key = stream_rpc::Fernet::generate_key().map_err(|e| e.to_string())?;
    let alarms: Alarms = Arc::default();
    let redis = tokio::task::block_in_place(RedisServer::try_start)?;
    let redis_url = redis.url();
    let mut redis_proxies = Vec::new();
    for _ in 0..SERVERS {
        redis_proxies.push(
            Proxy::to_port(redis.port)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (tap, mut tapped) = mpsc::unbounded_channel::<Tapped>();

    // Workers: the Rust ones have a proxy to each server (they fail over in
    // turn, each starting with another); a Python one, to its own server.
    let mut workers = Vec::new();
    let mut proxies = Vec::new();
    for n in 0..RUST_WORKERS + PYTHON_WORKERS + TYPED_WORKERS {
        let kind = if n < RUST_WORKERS {
            Kind::Rust
        } else if n < RUST_WORKERS + PYTHON_WORKERS {
            Kind::Python
        } else {
            Kind::Typed
        };
        let servers: Vec<usize> = match kind {
            Kind::Rust | Kind::Typed => (0..SERVERS).map(|i| (n + i) % SERVERS).collect(),
            Kind::Python => vec![n % SERVERS],
        };
        let mut mine = Vec::new();
        for server in servers {
            // A placeholder target until the server says its port.
            let proxy = Proxy::to_port(1).await.map_err(|e| e.to_string())?;
            proxy.tap(proxies.len(), tap.clone());
            mine.push((proxies.len(), server));
            proxies.push(WorkerProxy {
                proxy,
                worker: n,
                server,
            });
        }
        workers.push(Worker {
            kind,
            process: None,
            typed: None,
            proxies: mine,
            restarts: 0,
        });
    }
    // Who is behind each tap tag, for the ledger.
    let who: Vec<String> = proxies
        .iter()
        .map(|p| format!("worker {} via server {}", p.worker, p.server))
        .collect();
    let fernet = fernet::Fernet::new(&key).ok_or("the key does not make a Fernet")?;
    let reader_ledger = ledger.clone();
    let reader = tokio::spawn(async move {
        while let Some(line) = tapped.recv().await {
            let who = &who[line.tag];
            lock(&reader_ledger).see(&fernet, line, who);
        }
    });

    let mut fleet = Fleet {
        key: key.clone(),
        alarms,
        redis,
        redis_proxies,
        servers: (0..SERVERS).map(|_| None).collect(),
        ports: Arc::new(Mutex::new(vec![0; SERVERS])),
        workers,
        proxies,
        ledger: ledger.clone(),
        log: Vec::new(),
        started,
        server_exits: Vec::new(),
        worker_exits: 0,
        stuck_restarts: 0,
    };
    fleet.note(format!(
        "Redis on 127.0.0.1:{} (append-only, fsync always)",
        fleet.redis.port
    ));
    for n in 0..SERVERS {
        fleet.start_server(n).await?;
    }
    fleet.note(format!("servers on ports {:?}", lock(&fleet.ports)));
    for n in 0..fleet.workers.len() {
        fleet.start_worker(n);
    }
    fleet.note(format!(
        "{RUST_WORKERS} Rust, {PYTHON_WORKERS} Python and {TYPED_WORKERS} typed workers started; faults for {seconds} s"
    ));

    let (stop_producer, stopped) = watch::channel(false);
    let producer = tokio::spawn(produce(
        key.clone(),
        fleet.ports.clone(),
        ledger.clone(),
        Rng(rng.next()),
        stopped,
    ));

    let mut counts = BTreeMap::new();
    let mut replays = Vec::new();
    let faults_started = Instant::now();
    inject_faults(
        &mut fleet,
        &mut rng,
        faults_started + Duration::from_secs(seconds),
        &mut counts,
        &mut replays,
    )
    .await?;
    let fault_seconds = faults_started.elapsed().as_secs_f64();
    fleet.supervise().await?;
    // A replay of each kind, with everything healed, if the random ones
    // came to nothing conclusive.
    for method in ["get_task_from_queue", "put_in_queue"] {
        let conclusive = replays
            .iter()
            .any(|r| r.method == method && !matches!(r.outcome, ReplayOutcome::Inconclusive(_)));
        if !conclusive {
            // Let the workers be answered again after the last fault.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(record) = attack(&mut fleet, &mut rng, method).await
                    && record.method == method
                    && !matches!(record.outcome, ReplayOutcome::Inconclusive(_))
                {
                    replays.push(record);
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    // The end: no new work; the workers go (their leases run out); the
    // taps are read to their end.
    let _ = stop_producer.send(true);
    let produced = producer.await.map_err(|e| e.to_string())?;
    for worker in &mut fleet.workers {
        if let Some(mut process) = worker.process.take() {
            process.kill();
        }
        if let Some(task) = worker.typed.take() {
            task.abort();
        }
    }
    for proxy in &fleet.proxies {
        proxy.proxy.untap();
    }
    drop(tap);
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .map_err(|_| "the taps were not read to their end within 20 s".to_owned())?
        .map_err(|e| e.to_string())?;

    let queue = RedisQueue::connect(RedisSettings::new(&redis_url))
        .await
        .map_err(|e| format!("the checker cannot reach Redis: {e}"))?;
    let drained = drain(&fleet, &queue).await;
    fleet.supervise().await?;
    // Nothing writes to the ledger any more: the taps and the drainers
    // are done.
    let ledger = std::mem::take(&mut *lock(&ledger));
    let check = check(&fleet, &ledger, &queue, &produced, &drained, &replays).await?;
    let total = started.elapsed().as_secs_f64();

    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "Fleet summary (FLEET_SEED={seed}, {fault_seconds:.0} s of faults, {total:.0} s in all):"
    );
    let _ = writeln!(
        summary,
        "  faults: {}",
        counts
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        summary,
        "  restarts: workers killed by faults or ended by themselves {}, stuck {}",
        fleet.worker_exits, fleet.stuck_restarts
    );
    let _ = writeln!(
        summary,
        "  frames read at the proxies: {} ({} that did not open with the key)",
        ledger.frames, ledger.unreadable
    );
    let _ = writeln!(
        summary,
        "  tasks answered queued: {} (the producer's fresh ones: {})",
        ledger.acked.len(),
        produced.fresh
    );
    let _ = writeln!(summary, "  puts refused: {:?}", ledger.refused);
    let _ = writeln!(
        summary,
        "  duplicates put by the producer: {}; collisions: {}; its failed calls: {}",
        produced.duplicates,
        produced.collisions.len(),
        produced.failed_calls
    );
    let _ = writeln!(
        summary,
        "  leases seen: {}; saved: true answers: {}; saved: false: {}; error answers: {}",
        ledger.leases,
        ledger.saved.values().map(Vec::len).sum::<usize>(),
        ledger.saved_false,
        ledger.errors
    );
    let _ = writeln!(
        summary,
        "  pushed to typed workers: {} (to {} distinct tasks); their replies: {}",
        ledger.pushes,
        ledger.pushed.len(),
        ledger.push_replies
    );
    let _ = writeln!(
        summary,
        "  drained: {} saved by {DRAINERS} drainers in {:.1} s ({} calls failed and were retried)",
        drained.saved, drained.seconds, drained.failed_calls
    );
    let _ = writeln!(summary, "  replays: {}", replays.len());
    summary.push_str(&check.summary);
    println!("{summary}");
    if check.failures.is_empty() {
        return Ok(());
    }
    let mut report = String::from("the fleet check failed:\n");
    for failure in &check.failures {
        let _ = writeln!(report, "- {failure}");
    }
    let _ = writeln!(report, "\n{summary}\nThe run:");
    for line in &fleet.log {
        let _ = writeln!(report, "  {line}");
    }
    Err(report)
}

struct Check {
    failures: Vec<String>,
    summary: String,
}

/// Lists at most a few names.
fn some<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    let shown = items.iter().take(8).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > 8 {
        format!("{shown}; … ({} more)", items.len() - 8)
    } else {
        shown
    }
}

async fn check(
    fleet: &Fleet,
    ledger: &Ledger,
    queue: &RedisQueue,
    produced: &Produced,
    drained: &Drained,
    replays: &[ReplayRecord],
) -> Result<Check, String> {
    let mut failures = Vec::new();
    let stats = queue.stats().await.map_err(|e| e.to_string())?;
    let dead: BTreeSet<TaskKey> = queue
        .dead()
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|dead| TaskKey::of(&dead.task))
        .collect();
    let describe = |key: &TaskKey| {
        let payload = ledger
            .tasks
            .get(&key.dedup)
            .map(|t| t.payload.to_string())
            .unwrap_or_default();
        format!("{} {payload}", key.name)
    };
    let mut saved = 0;
    let mut saved_unanswered = 0;
    let mut dead_count = 0;
    let mut lost = Vec::new();
    let mut twice = Vec::new();
    let mut answered_not_kept = Vec::new();
    let mut both = Vec::new();
    for (key, who) in &ledger.acked {
        let Some(task) = ledger.tasks.get(&key.dedup) else {
            continue;
        };
        let result = queue
            .result(&task.method, &task.payload)
            .await
            .map_err(|e| e.to_string())?;
        let answers = ledger.saved.get(key).map_or(0, Vec::len);
        let is_dead = dead.contains(key);
        if answers > 1 {
            twice.push(format!("{} ({answers} times; put by {who})", describe(key)));
        }
        if answers > 0 && result.is_none() {
            answered_not_kept.push(describe(key));
        }
        match (result.is_some(), is_dead) {
            (true, true) => both.push(describe(key)),
            (true, false) => {
                saved += 1;
                if answers == 0 {
                    saved_unanswered += 1;
                }
            }
            (false, true) => dead_count += 1,
            (false, false) => lost.push(format!("{} (put by {who})", describe(key))),
        }
    }
    let left = stats.queued + stats.leased;
    if left > 0 {
        failures.push(format!(
            "not drained: {} queued and {} leased after the drain ({:.0} s, bounded); the acknowledged tasks neither saved nor dead below may be among them",
            stats.queued, stats.leased, drained.seconds
        ));
    }
    if !lost.is_empty() {
        failures.push(format!(
            "lost: {} of {} tasks answered {{\"queued\": true}} are neither saved nor dead-lettered: {}",
            lost.len(),
            ledger.acked.len(),
            some(&lost)
        ));
    }
    if !twice.is_empty() {
        failures.push(format!(
            "saved twice: {} tasks answered {{\"saved\": true}} more than once: {}",
            twice.len(),
            some(&twice)
        ));
    }
    // No task done twice after an ack, however it was acked (a classic
    // save or a typed worker's reply to a push): the queue's count of acks
    // that made a task done equals the tasks done, read one by one. Every
    // task done was handed out where the ledger saw it: leased or pushed
    // through a proxy, or drained.
    let mut names: BTreeSet<TaskRef> = ledger.tasks.values().map(TaskRef::of).collect();
    names.extend(ledger.pushed.iter().map(|&(peer, id)| TaskRef { peer, id }));
    let mut done_tasks = 0u64;
    for &name in &names {
        let info = queue.show(name).await.map_err(|e| e.to_string())?;
        if info.is_some_and(|info| info.state == TaskState::Done) {
            done_tasks += 1;
        }
    }
    let done_acks: u64 = queue
        .method_stats()
        .await
        .map_err(|e| e.to_string())?
        .values()
        .map(|stats| stats.done)
        .sum();
    if done_acks != done_tasks {
        failures.push(format!(
            "done twice: the queue counted {done_acks} acks that made a task done, but {done_tasks} distinct tasks are done"
        ));
    }
    if !answered_not_kept.is_empty() {
        failures.push(format!(
            "{} tasks answered {{\"saved\": true}} have no result on Redis: {}",
            answered_not_kept.len(),
            some(&answered_not_kept)
        ));
    }
    if !both.is_empty() {
        failures.push(format!(
            "{} tasks are both saved and dead-lettered: {}",
            both.len(),
            some(&both)
        ));
    }
    if !produced.duplicates_queued.is_empty() {
        failures.push(format!(
            "duplicates queued: {} of {} puts of a task's content under a new name were answered {{\"queued\": true}}: {}",
            produced.duplicates_queued.len(),
            produced.duplicates,
            some(&produced.duplicates_queued)
        ));
    }
    // A collision whose first task was saved before the second was sent is
    // not one: the name was free again.
    let mut collisions = 0;
    let mut not_refused = Vec::new();
    for collision in &produced.collisions {
        let first_saved = ledger
            .saved
            .get(&collision.first)
            .and_then(|times| times.first())
            .is_some_and(|&at| at < collision.second_sent);
        if first_saved {
            continue;
        }
        collisions += 1;
        let refused = collision.answer.get("queued") == Some(&Value::Bool(false))
            && collision.answer.get("reason") == Some(&json!("name_taken"));
        if !refused {
            not_refused.push(format!(
                "{} answered {} while {} held the name",
                describe(&collision.second),
                collision.answer,
                describe(&collision.first)
            ));
        }
    }
    if !not_refused.is_empty() {
        failures.push(format!(
            "name collisions: {} of {} puts of another task under a held name were not answered {{\"queued\": false, \"reason\": \"name_taken\"}}: {}",
            not_refused.len(),
            collisions,
            some(&not_refused)
        ));
    }
    if !drained.refused.is_empty() {
        failures.push(format!(
            "unsavable: {} tasks leased to a drainer were answered {{\"saved\": false}} when it saved them at once (does its name point at another task?): {}",
            drained.refused.len(),
            some(drained.refused.iter().map(|(key, n)| format!("{} ({n} times)", describe(key))))
        ));
    }
    let answered: Vec<String> = replays
        .iter()
        .filter_map(|r| match &r.outcome {
            ReplayOutcome::Answered(what) => Some(format!(
                "a {} token sent to server {} ({:.1} s before) was answered by server {}: {what}",
                r.method,
                r.from,
                r.age.as_secs_f64(),
                r.to
            )),
            _ => None,
        })
        .collect();
    if !answered.is_empty() {
        failures.push(format!(
            "replays answered: {} of {} tokens played to another server were answered: {}",
            answered.len(),
            replays.len(),
            some(&answered)
        ));
    }
    for method in ["get_task_from_queue", "put_in_queue"] {
        if !replays
            .iter()
            .any(|r| r.method == method && !matches!(r.outcome, ReplayOutcome::Inconclusive(_)))
        {
            failures.push(format!(
                "no conclusive replay of a {method} token (the other server never answered a fresh ping after it, or no such token was captured)"
            ));
        }
    }
    if !fleet.server_exits.is_empty() {
        failures.push(format!(
            "servers exited by themselves: {}",
            fleet.server_exits.join("\n")
        ));
    }
    let alarms = lock(&fleet.alarms);
    if !alarms.is_empty() {
        failures.push(format!("panics: {}", some(alarms.iter())));
    }
    // The run did work, with both kinds of worker: otherwise the checks
    // above prove little.
    let mut by_kind = [0u64; 2];
    for (&tag, &count) in &ledger.answered {
        match fleet.workers[fleet.proxies[tag].worker].kind {
            Kind::Rust => by_kind[0] += count,
            Kind::Python => by_kind[1] += count,
            Kind::Typed => {}
        }
    }
    if by_kind.contains(&0) || ledger.push_replies == 0 {
        failures.push(format!(
            "a kind of worker got no answer: Rust workers {}, Python workers {}, typed workers answered {} pushes",
            by_kind[0], by_kind[1], ledger.push_replies
        ));
    }
    let saved_answers: usize = ledger.saved.values().map(Vec::len).sum();
    if ledger.acked.len() < 20 || saved_answers < 10 {
        failures.push(format!(
            "too little work to judge: {} tasks answered queued, {saved_answers} saved answers (the workers did not get through?)",
            ledger.acked.len()
        ));
    }
    let mut summary = String::new();
    let _ = writeln!(summary, "Checked against Redis:");
    let _ = writeln!(
        summary,
        "  requests answered:          Rust workers {}, Python workers {}",
        by_kind[0], by_kind[1]
    );
    let _ = writeln!(
        summary,
        "  acknowledged tasks:         {}",
        ledger.acked.len()
    );
    let _ = writeln!(
        summary,
        "  saved:                      {saved} ({saved_unanswered} whose answer no one saw)"
    );
    let _ = writeln!(summary, "  dead-lettered:              {dead_count}");
    let _ = writeln!(summary, "  saved twice:                {}", twice.len());
    let _ = writeln!(
        summary,
        "  collisions refused:         {} of {collisions}",
        collisions - not_refused.len()
    );
    let _ = writeln!(
        summary,
        "  replays answered:           {} of {}",
        answered.len(),
        replays.len()
    );
    let _ = writeln!(summary, "  still queued or leased:     {left}");
    let _ = writeln!(summary, "  lost:                       {}", lost.len());
    let _ = writeln!(summary, "  queue stats: {stats:?}");
    Ok(Check { failures, summary })
}

// ---------------------------------------------------------------------------
// The proxy's own tests: each fault, seen through a plain TCP echo.

mod proxy_tests {
    use super::common::proxy::{Direction, Fault, Proxy, Tapped};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// Every proxy test is bounded by this.
    const BOUND: Duration = Duration::from_secs(10);
    /// How long "nothing arrives" is watched.
    const QUIET: Duration = Duration::from_millis(300);

    /// An echo server on a free loopback port, which also reports each
    /// line it received (with `prefix`, to tell two of them apart).
    async fn echo(prefix: &'static str) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    let mut line = String::new();
                    while let Ok(n) = read.read_line(&mut line).await {
                        if n == 0 {
                            break;
                        }
                        let _ = seen.send(line.trim_end().to_owned());
                        if write
                            .write_all(format!("{prefix}{line}").as_bytes())
                            .await
                            .is_err()
                        {
                            break;
                        }
                        line.clear();
                    }
                });
            }
        });
        (addr, lines)
    }

    async fn connect(proxy: &Proxy) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
        let stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let (read, write) = stream.into_split();
        (BufReader::new(read), write)
    }

    async fn line(read: &mut BufReader<OwnedReadHalf>) -> Option<String> {
        let mut line = String::new();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    /// Nothing arrives within [`QUIET`].
    async fn quiet(read: &mut BufReader<OwnedReadHalf>) {
        let mut byte = [0u8; 1];
        let got = tokio::time::timeout(QUIET, read.read(&mut byte)).await;
        assert!(got.is_err(), "something arrived: {got:?}");
    }

    async fn bounded<F: std::future::Future>(body: F) -> F::Output {
        tokio::time::timeout(BOUND, body)
            .await
            .expect("the proxy test exceeded its bound")
    }

    #[tokio::test]
    async fn it_forwards_both_ways_and_retargets_new_connections() {
        bounded(async {
            let (first, _) = echo("a:").await;
            let (second, _) = echo("b:").await;
            let proxy = Proxy::start(first).await.unwrap();
            let (mut read, mut write) = connect(&proxy).await;
            write.write_all(b"hello\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("a:hello"));
            proxy.set_target(second);
            // The current connection keeps its target; a new one goes to
            // the new one.
            write.write_all(b"again\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("a:again"));
            let (mut read, mut write) = connect(&proxy).await;
            write.write_all(b"hello\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("b:hello"));
            assert_eq!(proxy.accepted(), 2);
        })
        .await;
    }

    #[tokio::test]
    async fn a_delay_is_added_to_each_chunk_as_latency() {
        bounded(async {
            let (target, _) = echo("").await;
            let proxy = Proxy::start(target).await.unwrap();
            let (mut read, mut write) = connect(&proxy).await;
            let delay = Duration::from_millis(400);
            proxy.set(Direction::ToServer, Fault::Delay(delay));
            let start = Instant::now();
            write.write_all(b"one\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("one"));
            let one_way = start.elapsed();
            assert!(one_way >= delay, "{one_way:?}");
            proxy.delay(delay);
            let start = Instant::now();
            // Five chunks sent at once arrive about one round trip later,
            // not five: latency, not a throughput limit.
            for n in 0..5 {
                write.write_all(format!("{n}\n").as_bytes()).await.unwrap();
                tokio::task::yield_now().await;
            }
            for n in 0..5 {
                assert_eq!(line(&mut read).await, Some(n.to_string()));
            }
            let round_trip = start.elapsed();
            assert!(round_trip >= delay * 2, "{round_trip:?}");
            assert!(round_trip < delay * 5, "pipelined: {round_trip:?}");
            proxy.heal();
            let start = Instant::now();
            write.write_all(b"fast\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("fast"));
            assert!(start.elapsed() < delay, "{:?}", start.elapsed());
        })
        .await;
    }

    #[tokio::test]
    async fn discarded_bytes_never_arrive_and_later_ones_do() {
        bounded(async {
            let (target, mut received) = echo("").await;
            let proxy = Proxy::start(target).await.unwrap();
            let (tap, mut tapped) = mpsc::unbounded_channel::<Tapped>();
            proxy.tap(0, tap);
            let (mut read, mut write) = connect(&proxy).await;
            proxy.discard(Direction::ToServer);
            write.write_all(b"lost\n").await.unwrap();
            // The tap sees it once its fate is decided.
            assert_eq!(tapped.recv().await.unwrap().line, b"lost");
            proxy.heal();
            write.write_all(b"kept\n").await.unwrap();
            // In order: had "lost" gone through, it would come first.
            assert_eq!(line(&mut read).await.as_deref(), Some("kept"));
            assert_eq!(received.recv().await.as_deref(), Some("kept"));
            // The other way: the server gets it, the client does not.
            proxy.discard(Direction::ToClient);
            write.write_all(b"one way\n").await.unwrap();
            assert_eq!(received.recv().await.as_deref(), Some("one way"));
            // The echo read back from the server, then thrown away.
            loop {
                let seen = tapped.recv().await.unwrap();
                if seen.direction == Direction::ToClient && seen.line == b"one way" {
                    break;
                }
            }
            proxy.heal();
            write.write_all(b"back\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("back"));
        })
        .await;
    }

    #[tokio::test]
    async fn a_stall_holds_the_bytes_keeps_the_connection_and_delivers_on_heal() {
        bounded(async {
            let (target, mut received) = echo("").await;
            let proxy = Proxy::start(target).await.unwrap();
            let (mut read, mut write) = connect(&proxy).await;
            write.write_all(b"before\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("before"));
            assert_eq!(received.recv().await.as_deref(), Some("before"));
            proxy.stall();
            write.write_all(b"held\n").await.unwrap();
            quiet(&mut read).await;
            assert!(received.try_recv().is_err(), "the server got it in a stall");
            proxy.heal();
            assert_eq!(line(&mut read).await.as_deref(), Some("held"));
            assert_eq!(received.recv().await.as_deref(), Some("held"));
        })
        .await;
    }

    #[tokio::test]
    async fn a_partition_stops_one_direction_only() {
        bounded(async {
            let (target, mut received) = echo("").await;
            let proxy = Proxy::start(target).await.unwrap();
            let (mut read, mut write) = connect(&proxy).await;
            // Server → client stops: the server gets the line, the echo is
            // held.
            proxy.partition(Direction::ToClient);
            write.write_all(b"up\n").await.unwrap();
            assert_eq!(received.recv().await.as_deref(), Some("up"));
            quiet(&mut read).await;
            proxy.heal();
            assert_eq!(line(&mut read).await.as_deref(), Some("up"));
            // Client → server stops: nothing reaches the server.
            proxy.partition(Direction::ToServer);
            assert_eq!(proxy.fault(Direction::ToClient), Fault::Pass);
            write.write_all(b"down\n").await.unwrap();
            quiet(&mut read).await;
            assert!(received.try_recv().is_err(), "the server got it");
            proxy.heal();
            assert_eq!(received.recv().await.as_deref(), Some("down"));
            assert_eq!(line(&mut read).await.as_deref(), Some("down"));
        })
        .await;
    }

    #[tokio::test]
    async fn a_cut_closes_current_connections_and_new_ones_work() {
        bounded(async {
            let (target, _) = echo("").await;
            let proxy = Proxy::start(target).await.unwrap();
            let (mut read, mut write) = connect(&proxy).await;
            let (mut other, _other_write) = connect(&proxy).await;
            write.write_all(b"x\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("x"));
            // Even a stalled connection is cut.
            proxy.stall();
            proxy.cut();
            assert_eq!(line(&mut read).await, None);
            assert_eq!(line(&mut other).await, None);
            proxy.heal();
            let (mut read, mut write) = connect(&proxy).await;
            write.write_all(b"y\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("y"));
        })
        .await;
    }

    #[tokio::test]
    async fn the_tap_gives_each_line_with_its_connection_and_direction() {
        bounded(async {
            let (target, _) = echo("e:").await;
            let proxy = Proxy::start(target).await.unwrap();
            let (tap, mut tapped) = mpsc::unbounded_channel::<Tapped>();
            proxy.tap(7, tap);
            let (mut read, mut write) = connect(&proxy).await;
            // A line in pieces, and two lines in one chunk, with \r\n.
            write.write_all(b"to").await.unwrap();
            tokio::task::yield_now().await;
            write.write_all(b"ken\r\nsecond\nthird\n").await.unwrap();
            for expected in ["e:token", "e:second", "e:third"] {
                assert_eq!(line(&mut read).await.as_deref(), Some(expected));
            }
            let mut up = Vec::new();
            let mut down = Vec::new();
            while up.len() < 3 || down.len() < 3 {
                let seen = tapped.recv().await.unwrap();
                assert_eq!((seen.tag, seen.connection), (7, 1));
                let text = String::from_utf8(seen.line).unwrap();
                match seen.direction {
                    Direction::ToServer => up.push(text),
                    Direction::ToClient => down.push(text),
                }
            }
            assert_eq!(up, ["token", "second", "third"]);
            assert_eq!(down, ["e:token", "e:second", "e:third"]);
            // A second connection has its own number; untapped, nothing.
            let (mut read2, mut write2) = connect(&proxy).await;
            write2.write_all(b"two\n").await.unwrap();
            assert_eq!(line(&mut read2).await.as_deref(), Some("e:two"));
            let seen = tapped.recv().await.unwrap();
            assert_eq!((seen.connection, seen.line.as_slice()), (2, &b"two"[..]));
            proxy.untap();
            write.write_all(b"unseen\n").await.unwrap();
            assert_eq!(line(&mut read).await.as_deref(), Some("e:unseen"));
            // The tap's senders are gone: the channel ends, with nothing in
            // it but the echo of "two".
            let mut rest = Vec::new();
            while let Some(seen) = tapped.recv().await {
                rest.push(String::from_utf8(seen.line).unwrap());
            }
            assert_eq!(rest, ["e:two"]);
        })
        .await;
    }
}
