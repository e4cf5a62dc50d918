//! Tasks: work put in a queue server's queue by a producer and run by
//! workers that the server feeds by push (PROTOCOL.md, "Tasks").
//!
//! - A **producer** puts tasks through any [`Caller`](trait@crate::Caller)
//!   connected to a queue server: [`Tasks`] by method name and JSON, or
//!   the typed `XTasks` that `#[stream_rpc::service]` generates beside
//!   `XClient` ([`PutTask`] per method). A put gives a [`TaskHandle`]:
//!   its id, its typed [`result`](TaskHandle::result), its state, its
//!   [`cancel`](TaskHandle::cancel).
//! - A **worker** ([`Worker`]) serves a service's implementation on a
//!   connection to the queue server and subscribes to its methods: the
//!   server pushes each task to it as a call (the handler gets a real
//!   [`Context`](crate::Context): deadline, metadata `task-id` and
//!   `task-attempt`, [`cancelled`](crate::Context::cancelled) when the
//!   task is cancelled while it runs), and its reply acknowledges the
//!   task with the result.
//! - A typed error says whether trying again may succeed ([`Retry`]);
//!   [`HandlerError::permanent`](crate::HandlerError::permanent) and
//!   [`HandlerError::with_retry`](crate::HandlerError::with_retry) say it
//!   by hand.
//!
//! ```no_run
//! use stream_rpc::tasks::{Retry, Worker};
//! use stream_rpc::{Connector, Reconnect};
//!
//! #[derive(Debug, serde::Serialize, serde::Deserialize)]
//! pub enum ParseError {
//!     Gone,
//!     Busy,
//! }
//!
//! impl Retry for ParseError {
//!     fn retry(&self) -> bool {
//!         matches!(self, ParseError::Busy)
//!     }
//! }
//!
//! #[stream_rpc::service]
//! pub trait Articles {
//!     async fn parse(&self, article_id: u64) -> Result<String, ParseError>;
//! }
//!
//! struct Parser;
//!
//! impl Articles for Parser {
//!     async fn parse(&self, article_id: u64) -> Result<String, ParseError> {
//!         Ok(format!("article {article_id}"))
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // A producer: put a task, await its typed result.
//! let client = Connector::from_env()?.connect_reconnecting((), Reconnect::default())?;
//! let articles = ArticlesTasks::new(client);
//! let handle = articles.parse(7).priority(stream_rpc::tasks::Priority::High).await?;
//! match handle.result().await? {
//!     Ok(text) => println!("{text}"),
//!     Err(error) => println!("failed: {error:?}"),
//! }
//!
//! // A worker (another program): serve the implementation from the queue.
//! let report = Worker::new(ArticlesServer::new(Parser))
//!     .concurrency(4)
//!     .run(Connector::from_env()?)
//!     .await?;
//! println!("done {}", report.done);
//! # Ok(())
//! # }
//! ```

mod error;
mod handle;
mod producer;
mod put;
mod types;
mod worker;

use std::future::Future;
use std::pin::Pin;

pub use error::{CancelOutcome, TaskError};
pub use handle::{TaskFailure, TaskHandle};
pub use producer::{MAX_LIST, Tasks};
pub use put::PutTask;
pub use types::{
    Backoff, DEFAULT_BACKOFF, Every, MAX_ATTEMPTS_LIMIT, MAX_DEDUPE_LEN, MethodLimit, MethodStats,
    Priority, Rate, Schedule, ScheduleInfo, TASK_ATTEMPT_META, TASK_ID_META, TaskInfo, TaskOptions,
    TaskRef, TaskRefError, TaskState,
};
pub use worker::{DEFAULT_CONCURRENCY, DEFAULT_GRACE, MAX_CONCURRENCY, Worker, WorkerReport};

use crate::caller::{Call, Caller};
use crate::error::CallError;
use crate::packet::Packet;

/// Whether an error is worth trying again: a task whose handler fails
/// with an error that says `false` goes dead at once, without its
/// remaining attempts; `true` lets the queue retry it by the task's
/// policy ([`TaskOptions::max_attempts`], [`TaskOptions::backoff`]).
///
/// When the error type `E` of a `#[stream_rpc::service]` method returning
/// `Result<T, E>` implements it, the generated server sends what it says as
/// the error packet's `retry` ([`ErrorPayload::retry`](crate::ErrorPayload::retry));
/// an error type that does not implement it says nothing (retried).
///
/// ```
/// use stream_rpc::tasks::Retry;
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// enum FetchError {
///     NotFound,
///     Throttled,
/// }
///
/// impl Retry for FetchError {
///     fn retry(&self) -> bool {
///         matches!(self, FetchError::Throttled)
///     }
/// }
///
/// assert!(!FetchError::NotFound.retry());
/// ```
pub trait Retry {
    /// Whether trying again may succeed.
    fn retry(&self) -> bool;
}

/// A [`HandlerError`](crate::HandlerError) says what its
/// [`retry`](crate::HandlerError::retry) says; nothing said is `true`.
impl Retry for crate::protocol::HandlerError {
    fn retry(&self) -> bool {
        crate::protocol::HandlerError::retry(self) != Some(false)
    }
}

/// The wire names of the queue server's task methods (PROTOCOL.md,
/// "Tasks"); each is answered by `<method>.reply`.
pub mod methods {
    /// Puts a task.
    pub const PUT: &str = "task.put";
    /// Shows a task.
    pub const SHOW: &str = "task.show";
    /// Waits for a task to finish, up to a time limit.
    pub const WAIT: &str = "task.wait";
    /// Cancels a task.
    pub const CANCEL: &str = "task.cancel";
    /// Lists the tasks in a state.
    pub const LIST: &str = "task.list";
    /// Counts of each method's tasks.
    pub const STATS: &str = "task.stats";
    /// Sets a method's fleet-wide limit.
    pub const LIMIT: &str = "task.limit";
    /// A worker asks for tasks to be pushed to it.
    pub const SUBSCRIBE: &str = "task.subscribe";
    /// A worker asks for no more tasks.
    pub const UNSUBSCRIBE: &str = "task.unsubscribe";
    /// Sets a periodic task.
    pub const SCHEDULE_PUT: &str = "schedule.put";
    /// Removes a periodic task.
    pub const SCHEDULE_REMOVE: &str = "schedule.remove";
    /// Lists the periodic tasks.
    pub const SCHEDULE_LIST: &str = "schedule.list";
}

/// A boxed call future, for [`DynCaller`].
type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Packet, CallError>> + Send + 'a>>;

/// A [`Caller`] behind a pointer: what a [`TaskHandle`] keeps, whatever
/// caller its producer had.
trait DynCaller: Send + Sync {
    fn call_boxed(&self, call: Call) -> CallFuture<'_>;
}

impl<C: Caller> DynCaller for C {
    fn call_boxed(&self, call: Call) -> CallFuture<'_> {
        Box::pin(Caller::call_with(self, call))
    }
}
