//! [`PutTask`]: a typed put, its options set by builder methods, sent
//! when awaited.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::error::TaskError;
use super::handle::{Decode, TaskHandle};
use super::producer::Tasks;
use super::types::{Backoff, Priority, TaskOptions};
use crate::caller::Caller;
use crate::error::CallError;

/// A task to put, from a typed `XTasks` method that
/// `#[stream_rpc::service]` generates: set its options with the builder
/// methods, then `.await` it for the [`TaskHandle`] (its result typed as
/// the method's `Result<T, E>`).
///
/// ```no_run
/// use std::time::Duration;
/// use stream_rpc::tasks::Priority;
/// use stream_rpc::Connector;
///
/// #[stream_rpc::service]
/// pub trait Mailer {
///     async fn send(&self, to: String) -> bool;
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mailer = MailerTasks::new(Connector::from_env()?.connect(()).await?);
/// let handle = mailer
///     .send("ops@example.org".to_owned())
///     .delay(Duration::from_secs(60))
///     .priority(Priority::Low)
///     .max_attempts(5)
///     .await?;
/// let sent: bool = handle.result().await??;
/// # Ok(())
/// # }
/// ```
#[must_use = "a task is put only when its PutTask is awaited"]
pub struct PutTask<'a, C: Caller, T, E> {
    tasks: &'a Tasks<C>,
    method: &'static str,
    payload: Result<Value, CallError>,
    options: TaskOptions,
    delay: Option<Duration>,
    decode: Decode<E>,
    result: PhantomData<fn() -> T>,
}

impl<C: Caller, T, E> fmt::Debug for PutTask<'_, C, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutTask")
            .field("method", &self.method)
            .field("options", &self.options)
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl<'a, C: Caller + 'static, T, E> PutTask<'a, C, T, E> {
    /// A put of `method` with `payload` (or the error encoding its
    /// arguments gave) through `tasks`, its error read by `decode`; for
    /// the generated code.
    #[doc(hidden)]
    pub fn new(
        tasks: &'a Tasks<C>,
        method: &'static str,
        payload: Result<Value, CallError>,
        decode: Decode<E>,
    ) -> Self {
        PutTask {
            tasks,
            method,
            payload,
            options: TaskOptions::default(),
            delay: None,
            decode,
            result: PhantomData,
        }
    }

    /// Runs no sooner than `delay` from when the server takes it (its
    /// clock); replaces a [`run_at`](Self::run_at).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self.options.run_at = None;
        self
    }

    /// Runs no sooner than `at`; replaces a [`delay`](Self::delay).
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.delay = None;
        self.options.run_at = Some(at);
        self
    }

    /// Sets its [`Priority`].
    pub fn priority(mut self, priority: Priority) -> Self {
        self.options.priority = priority;
        self
    }

    /// Sets how many times it is handed out at most.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.max_attempts = Some(attempts);
        self
    }

    /// Sets the wait between a failed attempt and the next.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.options.backoff = Some(backoff);
        self
    }

    /// Sets what makes two puts one task (by default the method and the
    /// payload).
    pub fn dedupe(mut self, key: impl Into<String>) -> Self {
        self.options.dedupe = Some(key.into());
        self
    }

    /// Sets how long one attempt may run.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.options.timeout = Some(limit);
        self
    }

    /// Sets every option at once (a [`delay`](Self::delay) given before
    /// is kept unless `options` has a `run_at`).
    pub fn options(mut self, options: TaskOptions) -> Self {
        if options.run_at.is_some() {
            self.delay = None;
        }
        self.options = options;
        self
    }
}

impl<'a, C, T, E> IntoFuture for PutTask<'a, C, T, E>
where
    C: Caller + 'static,
    T: 'a,
    E: 'a,
{
    type Output = Result<TaskHandle<T, E>, TaskError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let payload = self.payload?;
            self.tasks
                .put_decoding(self.method, payload, self.options, self.delay, self.decode)
                .await
        })
    }
}
