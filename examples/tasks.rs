//! Typed tasks end to end, in one process: a queue server with its queue in
//! memory, three typed workers fed by push, and a producer that puts a
//! small set of tasks (some delayed, some urgent, one cancelled while it
//! runs), awaits every result and checks it.
//!
//! ```text
//! cargo run --example tasks                # everything in one process
//! cargo run --example tasks -- worker      # a worker only, for a server elsewhere
//! ```
//!
//! (`TASKS_MODE=worker` asks for the worker mode too.)
//!
//! The task set is the trait `Articles`: `parse(article_id)` fails for good
//! when the id is divisible by 7 (a permanent error: no retry), fails once
//! and then succeeds when it is divisible by 5 (a retryable error), and
//! succeeds otherwise; `slow(millis)` runs until its time is up or it is
//! cancelled. The run prints
//! `put N, done D, retried R, dead X, cancelled C, results checked K` and
//! exits non-zero when any count or result is not what the task set says.
//!
//! Settings: `TASKS_COUNT` (articles to parse, 40), `TASKS_WORKERS` (3),
//! `TASKS_CONCURRENCY` (tasks in flight per worker, 4), `TASKS_TIMEOUT_MS`
//! (how long the whole run may take, 30000). The worker mode takes the
//! server's `CRYPTO_KEY`, `STREAM_RPC_HOST` and `STREAM_RPC_PORT`, or
//! `STREAM_RPC_SERVERS=host:port,host:port` to fail over, and stops
//! gracefully (drains) on Ctrl-C or SIGTERM.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_rpc::tasks::{Backoff, Priority, Retry, TaskError, Worker};
use stream_rpc::{Config, Connector, Context, Fernet};

/// An article parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parsed {
    /// The article.
    pub article_id: u64,
    /// Its words (three per id, in this example).
    pub words: u64,
}

/// Why an article could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ParseError {
    /// It cannot be read, however often it is tried.
    #[error("article {0} cannot be read")]
    Unreadable(u64),
    /// Its source did not answer this time.
    #[error("the source of article {0} did not answer")]
    SourceDown(u64),
}

impl Retry for ParseError {
    fn retry(&self) -> bool {
        matches!(self, ParseError::SourceDown(_))
    }
}

/// The task set.
#[stream_rpc::service]
pub trait Articles {
    /// Parses one article.
    async fn parse(&self, article_id: u64) -> Result<Parsed, ParseError>;

    /// Works for `millis` or until cancelled; how long it worked.
    async fn slow(&self, ctx: Context, millis: u64) -> u64;
}

/// The workers' side: what they did, shared by the workers of this
/// process.
#[derive(Default)]
struct Parser {
    /// Articles whose source was down once already.
    failed_once: Mutex<HashSet<u64>>,
    /// Retryable failures given.
    retried: AtomicU64,
    /// `slow` tasks that saw their cancellation.
    cancelled: AtomicU64,
    /// Told when a `slow` task starts.
    slow_started: tokio::sync::Notify,
}

/// The task set's implementation, as each worker serves it.
#[derive(Clone)]
struct Work(Arc<Parser>);

impl Articles for Work {
    async fn parse(&self, article_id: u64) -> Result<Parsed, ParseError> {
        if article_id.is_multiple_of(7) {
            return Err(ParseError::Unreadable(article_id));
        }
        if article_id.is_multiple_of(5) {
            let first = self
                .0
                .failed_once
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(article_id);
            if first {
                self.0.retried.fetch_add(1, Ordering::Relaxed);
                return Err(ParseError::SourceDown(article_id));
            }
        }
        Ok(expected(article_id))
    }

    async fn slow(&self, ctx: Context, millis: u64) -> u64 {
        let started = tokio::time::Instant::now();
        self.0.slow_started.notify_one();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(millis)) => {}
            () = ctx.cancelled() => {
                self.0.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What `parse` returns for an article that parses.
fn expected(article_id: u64) -> Parsed {
    Parsed {
        article_id,
        words: article_id * 3,
    }
}

/// How the run went.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    put: u64,
    done: u64,
    retried: u64,
    dead: u64,
    cancelled: u64,
    checked: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "put {}, done {}, retried {}, dead {}, cancelled {}, results checked {}",
            self.put, self.done, self.retried, self.dead, self.cancelled, self.checked
        )
    }
}

/// A numeric setting of the environment.
fn setting(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}: expected a whole number, got {text:?}")),
        _ => Ok(default),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let worker_only = std::env::args().nth(1).is_some_and(|arg| arg == "worker")
        || std::env::var("TASKS_MODE").is_ok_and(|mode| mode == "worker");
    let outcome = if worker_only {
        worker_mode().await
    } else {
        everything().await
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `tasks worker`: one worker of the task set for a queue server elsewhere,
/// until Ctrl-C or SIGTERM.
async fn worker_mode() -> Result<(), String> {
    let concurrency = setting("TASKS_CONCURRENCY", 4)?;
    let config = Config::from_env().map_err(|e| e.to_string())?;
    stream_rpc::logging::Settings::from_env()
        .map_err(|e| e.to_string())
        .and_then(|settings| stream_rpc::logging::init(&settings).map_err(|e| e.to_string()))?;
    let work = Work(Arc::new(Parser::default()));
    let report = Worker::new(ArticlesServer::new(work))
        .concurrency(u32::try_from(concurrency).unwrap_or(u32::MAX))
        .run(Connector::new(config))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "worker stopped: done {}, failed {}, cancelled {}, given back {}",
        report.done, report.failed, report.cancelled, report.given_back
    );
    Ok(())
}

/// Everything in one process; an error when anything is not as expected.
async fn everything() -> Result<(), String> {
    let count = setting("TASKS_COUNT", 40)?;
    let workers = setting("TASKS_WORKERS", 3)?.max(1);
    let concurrency = u32::try_from(setting("TASKS_CONCURRENCY", 4)?.clamp(1, 1024)).unwrap_or(4);
    let limit = Duration::from_millis(setting("TASKS_TIMEOUT_MS", 30_000)?);

    let key = Fernet::generate_key().map_err(|e| e.to_string())?;
    let config = |port: u16| {
        Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(port)
            .build()
            .map_err(|e| e.to_string())
    };
    // The queue server, its queue in memory, on a free loopback port.
    let queue = stream_rpc_queue::QueueConfig::default()
        .open()
        .await
        .map_err(|e| e.to_string())?;
    let server = Connector::new(config(0)?)
        .bind()
        .await
        .map_err(|e| e.to_string())?;
    let port = server.local_addr().port();
    let server_stop = server.shutdown_handle();
    let serving = tokio::spawn(server.serve(stream_rpc_queue::TaskServer::new(Arc::new(queue))));

    // The workers.
    let parser = Arc::new(Parser::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut running = Vec::new();
    for _ in 0..workers {
        let worker = Worker::new(ArticlesServer::new(Work(parser.clone())))
            .concurrency(concurrency)
            .grace(Duration::from_secs(1));
        let connector = Connector::new(config(port)?);
        let mut stopped = stopped.clone();
        running.push(tokio::spawn(async move {
            worker
                .run_until(connector, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        }));
    }

    let producer = Connector::new(config(port)?)
        .connect(())
        .await
        .map_err(|e| e.to_string())?;
    let outcome =
        tokio::time::timeout(limit, produce(ArticlesTasks::new(producer), &parser, count))
            .await
            .map_err(|_| format!("the run took longer than {limit:?} (TASKS_TIMEOUT_MS)"))
            .and_then(|outcome| outcome);

    let _ = stop.send(true);
    for worker in running {
        let report = worker
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        tracing::debug!(?report, "a worker stopped");
    }
    server_stop.shutdown();
    let _ = serving.await;

    let mut summary = outcome?;
    summary.retried = parser.retried.load(Ordering::Relaxed);
    println!("{summary}");
    let want = Summary {
        put: count + 1,
        done: (1..=count).filter(|id| !id.is_multiple_of(7)).count() as u64,
        retried: (1..=count)
            .filter(|id| id.is_multiple_of(5) && !id.is_multiple_of(7))
            .count() as u64,
        dead: (1..=count).filter(|id| id.is_multiple_of(7)).count() as u64,
        cancelled: 1,
        checked: count + 1,
    };
    if summary != want {
        return Err(format!("expected {want}"));
    }
    if parser.cancelled.load(Ordering::Relaxed) != 1 {
        return Err("the cancelled task's handler never saw its cancellation".into());
    }
    Ok(())
}

/// Puts the task set, cancels the slow task once it runs, awaits every
/// result and checks it.
async fn produce(
    tasks: ArticlesTasks<stream_rpc::Client>,
    parser: &Parser,
    count: u64,
) -> Result<Summary, String> {
    let mut summary = Summary::default();
    // Quick retries, so that the run takes a second, not a minute.
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let mut handles = Vec::new();
    for id in 1..=count {
        let mut put = tasks.parse(id).backoff(backoff).max_attempts(3);
        if id.is_multiple_of(4) {
            put = put.delay(Duration::from_millis(100));
        }
        if id.is_multiple_of(3) {
            put = put.priority(Priority::High);
        }
        handles.push((id, put.await.map_err(|e| format!("put parse({id}): {e}"))?));
        summary.put += 1;
    }
    let slow = tasks
        .slow(60_000)
        .await
        .map_err(|e| format!("put slow: {e}"))?;
    summary.put += 1;
    // Cancelled while it runs: its worker's handler sees it and stops.
    parser.slow_started.notified().await;
    slow.cancel().await.map_err(|e| format!("cancel: {e}"))?;
    match slow.result().await {
        Err(TaskError::Cancelled) => {
            summary.cancelled += 1;
            summary.checked += 1;
        }
        other => return Err(format!("the slow task ended with {other:?}, not cancelled")),
    }
    for (id, handle) in handles {
        match handle.result().await {
            Ok(Ok(parsed)) if parsed == expected(id) && !id.is_multiple_of(7) => {
                summary.done += 1;
                summary.checked += 1;
            }
            Ok(Err(ParseError::Unreadable(failed))) if failed == id && id.is_multiple_of(7) => {
                summary.dead += 1;
                summary.checked += 1;
            }
            other => return Err(format!("parse({id}) ended with {other:?}")),
        }
    }
    Ok(summary)
}
