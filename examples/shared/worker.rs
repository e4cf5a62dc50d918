//! The example worker (the Python original's), shared by the `worker` and
//! `demo` examples.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_rpc::{Context, ErrorPayload, Packet, Reply, ShutdownHandle, Value, json};

/// The task's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Article {
    /// Which article to parse.
    pub article_id: u32,
}

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Sleep between requests (the original's 2 s).
    pub request_delay: Duration,
    /// Simulated work per article (the original's 5 s).
    pub parse_delay: Duration,
    /// Stop after this many requests; `None` runs until stopped.
    pub max_requests: Option<u64>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            request_delay: Duration::from_secs(2),
            parse_delay: Duration::from_secs(5),
            max_requests: None,
        }
    }
}

impl WorkerSettings {
    /// Reads `{prefix}_REQUEST_DELAY_MS`, `{prefix}_PARSE_DELAY_MS` and
    /// `{prefix}_MAX_REQUESTS`, keeping `defaults` for those not set.
    pub fn from_env(prefix: &str, defaults: WorkerSettings) -> Result<Self, String> {
        let mut settings = defaults;
        if let Some(ms) = env_number(&format!("{prefix}_REQUEST_DELAY_MS"))? {
            settings.request_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = env_number(&format!("{prefix}_PARSE_DELAY_MS"))? {
            settings.parse_delay = Duration::from_millis(ms);
        }
        if let Some(max) = env_number(&format!("{prefix}_MAX_REQUESTS"))? {
            settings.max_requests = Some(max);
        }
        Ok(settings)
    }
}

/// A whole number from the environment, or a message naming the variable.
pub fn env_number(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} must be a whole number, got {text:?}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// What the worker did, for the demo's summary.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Requests sent, the hello included.
    pub requests: AtomicU64,
    /// Requests answered: packets received from a server (answers, error
    /// packets and tasks handed out); none means no server ever answered.
    pub answers: AtomicU64,
    /// Tasks put in the queue.
    pub tasks_put: AtomicU64,
    /// Tasks parsed.
    pub tasks_parsed: AtomicU64,
    /// Parsed tasks the server confirmed saved (`{"saved": true}`).
    pub tasks_saved: AtomicU64,
}

impl WorkerStats {
    /// The summary line a worker ends with: what was answered and done.
    #[allow(
        dead_code,
        reason = "the demo sums up from the server's counts instead"
    )]
    pub fn summary(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "Worker stopped: {} requests answered (of {} sent), {} tasks put, {} tasks parsed, {} saved",
            load(&self.answers),
            load(&self.requests),
            load(&self.tasks_put),
            load(&self.tasks_parsed),
            load(&self.tasks_saved),
        )
    }
}

/// The most tasks a worker remembers to check when they come back.
const REMEMBERED: usize = 1024;

/// Says hello with `ping`; then on every answer sends its next request:
/// every second request puts a `parse_article` task, every fifth asks for a
/// task, the others are `ping`s. Parses the tasks it gets.
#[derive(Debug)]
pub struct Worker {
    settings: WorkerSettings,
    /// What it did so far.
    pub stats: std::sync::Arc<WorkerStats>,
    /// Tasks it put, to check that they come back unchanged.
    sent: Mutex<HashMap<u64, Packet>>,
    /// The article of the last task put, until the server's answer says
    /// whether it was queued.
    last_put: Mutex<Option<u32>>,
    /// Once this is shutting down, no new request is sent.
    stop: Option<ShutdownHandle>,
}

impl Worker {
    /// A worker with these settings.
    pub fn new(settings: WorkerSettings) -> Self {
        Worker {
            settings,
            stats: Default::default(),
            sent: Mutex::new(HashMap::new()),
            last_put: Mutex::new(None),
            stop: None,
        }
    }

    /// Sends no new request once `stop` is shutting down (work in hand,
    /// a parsed article to save, is still finished).
    pub fn with_stop(mut self, stop: ShutdownHandle) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Counts the hello, which the connector sends.
    pub fn count_hello(&self) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Sleeps between requests, then builds the next one, unless a
    /// shutdown was asked for meanwhile.
    async fn next_request(&self, ctx: &Context) -> Reply {
        tokio::time::sleep(self.settings.request_delay).await;
        if self
            .stop
            .as_ref()
            .is_some_and(ShutdownHandle::is_shutting_down)
        {
            tracing::info!(protocol = "Worker", peer = %ctx.local_id(), "Shutting down: no new request");
            return Reply::Nothing;
        }
        let n = self.stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.settings.max_requests.is_some_and(|max| n > max) {
            tracing::info!(protocol = "Worker", peer = %ctx.local_id(), "Done: {} requests made", n - 1);
            ctx.connection().close();
            return Reply::Nothing;
        }
        if n.is_multiple_of(5) {
            Reply::message("get_task_from_queue", json!(null))
        } else if n.is_multiple_of(2) {
            let article = Article {
                article_id: random_article_id(),
            };
            let task = ctx.packet("parse_article", json!(article));
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.len() >= REMEMBERED {
                sent.clear();
            }
            sent.insert(task.id, task.clone());
            *self.last_put.lock().unwrap_or_else(|e| e.into_inner()) = Some(article.article_id);
            self.stats.tasks_put.fetch_add(1, Ordering::Relaxed);
            Reply::message("put_in_queue", json!(task))
        } else {
            Reply::message("ping", json!(null))
        }
    }

    /// Checks a task this worker put against what came back.
    fn check_own_task(&self, ctx: &Context, task: &Packet) {
        if task.peer != ctx.local_id() {
            return;
        }
        let sent = self
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task.id);
        let Some(sent) = sent else { return };
        let mut back = task.clone();
        back.reply_to = None;
        if back == sent {
            tracing::info!(protocol = "Worker", peer = %ctx.local_id(), "Task #{} came back unchanged", task.id);
        } else {
            tracing::error!(protocol = "Worker", peer = %ctx.local_id(), "Task #{} came back changed: sent {sent}, got {back}", task.id);
        }
    }
}

#[stream_rpc::service]
impl Worker {
    /// Any answer from the server (`{"saved": true}` confirms a parsed
    /// task was kept): on to the next request.
    async fn pong(&self, ctx: Context, answer: Value) -> Reply {
        self.stats.answers.fetch_add(1, Ordering::Relaxed);
        if answer.get("saved") == Some(&Value::Bool(true)) {
            self.stats.tasks_saved.fetch_add(1, Ordering::Relaxed);
        }
        // The answer to a put says whether the task was queued: logged, so
        // that what the servers acknowledged can be checked afterwards.
        if let Some(queued) = answer.get("queued")
            && let Some(article) = self
                .last_put
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        {
            let peer = ctx.local_id();
            if queued == &Value::Bool(true) {
                tracing::info!(protocol = "Worker", peer = %peer, "Queued article: {article}");
            } else {
                tracing::info!(protocol = "Worker", peer = %peer, "Duplicate article: {article}");
            }
        }
        self.next_request(&ctx).await
    }

    /// A task: parse it (simulated), then save the parsed article with the
    /// server, naming the task by its own peer and id: that acknowledges
    /// it, so it is not handed to another worker.
    async fn parse_article(&self, ctx: Context, article: Article) -> Reply {
        self.stats.answers.fetch_add(1, Ordering::Relaxed);
        let peer = ctx.local_id();
        tracing::info!(protocol = "Worker", peer = %peer, "Start parsing article: {}", article.article_id);
        tokio::time::sleep(self.settings.parse_delay).await;
        self.stats.tasks_parsed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(protocol = "Worker", peer = %peer, "Finished parsing article: {}", article.article_id);
        let parsed = json!({
            "article_id": article.article_id,
            "title": format!("Article {}", article.article_id),
            "parsed_by": peer,
        });
        Reply::message(
            "save_parsed_article",
            json!({
                "task": {"peer": ctx.peer(), "id": ctx.request_id()},
                "article": parsed,
            }),
        )
    }

    /// An error packet from the server: log it and go on.
    async fn error(&self, ctx: Context, error: ErrorPayload) -> Reply {
        self.stats.answers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(protocol = "Worker", peer = %ctx.local_id(), "The server refused a request: {}", error.message);
        self.next_request(&ctx).await
    }
}

/// A worker that also checks its own tasks when they come back: wraps the
/// generated protocol to look at `parse_article` packets first.
#[derive(Debug)]
pub struct CheckingWorker(pub Worker);

impl stream_rpc::Protocol for CheckingWorker {
    fn name(&self) -> &str {
        "Worker"
    }

    async fn process_message(
        &self,
        ctx: Context,
        packet: Packet,
    ) -> Result<Reply, stream_rpc::HandlerError> {
        if packet.method == "parse_article" {
            self.0.check_own_task(&ctx, &packet);
        }
        stream_rpc::Protocol::process_message(&self.0, ctx, packet).await
    }
}

/// A random article id in 1000..10000, from the standard library's
/// randomly seeded hasher (no random number crate needed for a demo).
fn random_article_id() -> u32 {
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    1000 + u32::try_from(random % 9000).unwrap_or(0)
}
