//! [`TaskHandle`]: one task put, its result awaited, its state, its
//! cancel.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize as _;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::DynCaller;
use super::error::{CancelOutcome, TaskError};
use super::methods;
use super::producer::{ask, cancel_through};
use super::types::{TaskInfo, TaskRef, TaskState};
use crate::caller::Call;
use crate::error::CallError;
use crate::packet::{ErrorCode, ErrorPayload};
use crate::protocol::HandlerError;

/// How long one `task.wait` asks the server to wait, at most (the
/// server's own cap).
pub(super) const WAIT_STEP: Duration = Duration::from_secs(30);

/// What a `task.wait` call may take beyond the wait it asks for (the
/// round trip, a busy server) before it counts as timed out.
const WAIT_SLACK: Duration = Duration::from_secs(10);

/// Reads a task's error as the method's error type `E`, or gives it
/// back: the typed client's rules ([`CallError::Remote`] with the error's
/// code, message and data).
pub(crate) type Decode<E> = fn(CallError) -> Result<E, CallError>;

/// An error type a [`TaskHandle`] can read a dead task's error as: a
/// [`HandlerError`] (every `handler_error`), or any `Deserialize` type
/// (from the error's `data`), as the typed client reads a method's error.
pub trait TaskFailure: Sized {
    /// The method's own error, or the error given back.
    fn decode_failure(error: CallError) -> Result<Self, CallError>;
}

impl TaskFailure for HandlerError {
    fn decode_failure(error: CallError) -> Result<Self, CallError> {
        decode_handler_error(error)
    }
}

impl<E: DeserializeOwned> TaskFailure for E {
    fn decode_failure(error: CallError) -> Result<Self, CallError> {
        if let CallError::Remote {
            code: ErrorCode::HandlerError,
            data: Some(data),
            ..
        } = &error
            && let Ok(decoded) = E::deserialize(data)
        {
            return Ok(decoded);
        }
        Err(error)
    }
}

/// A `handler_error` as the [`HandlerError`] it was.
pub(super) fn decode_handler_error(error: CallError) -> Result<HandlerError, CallError> {
    match error {
        CallError::Remote {
            code: ErrorCode::HandlerError,
            message,
            data,
            retry,
            ..
        } => {
            let mut decoded = HandlerError::failed(message);
            decoded.data = data;
            if let Some(retry) = retry {
                decoded = decoded.with_retry(retry);
            }
            Ok(decoded)
        }
        other => Err(other),
    }
}

/// One task in a queue: its [`id`](Self::id), its
/// [`result`](Self::result) (the method's `Result<T, E>`), its
/// [`state`](Self::state), its [`cancel`](Self::cancel). Given by a put
/// ([`Tasks::put`](super::Tasks::put), a typed `XTasks` method) or by
/// [`Tasks::handle`](super::Tasks::handle) for a task put elsewhere.
///
/// ```no_run
/// use std::time::Duration;
/// use stream_rpc::tasks::{TaskError, TaskOptions, Tasks};
/// use stream_rpc::{Connector, json};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tasks = Tasks::new(Connector::from_env()?.connect(()).await?);
/// let handle = tasks.put("resize", json!({"image": 3}), TaskOptions::default()).await?;
/// match handle.result_within(Duration::from_secs(5)).await {
///     Ok(Ok(value)) => println!("done: {value}"),
///     Ok(Err(error)) => println!("failed: {error}"),
///     Err(TaskError::Timeout { .. }) => println!("{} still running", handle.id()),
///     Err(other) => return Err(other.into()),
/// }
/// # Ok(())
/// # }
/// ```
pub struct TaskHandle<T, E> {
    caller: Arc<dyn DynCaller>,
    task: TaskRef,
    /// The method, for the errors it reads (empty when not known).
    method: Box<str>,
    deduplicated: bool,
    decode: Decode<E>,
    result: PhantomData<fn() -> T>,
}

impl<T, E> fmt::Debug for TaskHandle<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &self.task)
            .field("deduplicated", &self.deduplicated)
            .finish_non_exhaustive()
    }
}

impl<T, E> Clone for TaskHandle<T, E> {
    fn clone(&self) -> Self {
        TaskHandle {
            caller: self.caller.clone(),
            task: self.task,
            method: self.method.clone(),
            deduplicated: self.deduplicated,
            decode: self.decode,
            result: PhantomData,
        }
    }
}

impl<T, E> TaskHandle<T, E> {
    pub(super) fn new(
        caller: Arc<dyn DynCaller>,
        task: TaskRef,
        method: &str,
        deduplicated: bool,
        decode: Decode<E>,
    ) -> Self {
        TaskHandle {
            caller,
            task,
            method: method.into(),
            deduplicated,
            decode,
            result: PhantomData,
        }
    }

    /// The task's name (`PEER:ID` when shown).
    pub fn id(&self) -> TaskRef {
        self.task
    }

    /// Whether the put found the same task held (its dedupe key taken)
    /// and this handle is of that task rather than a new one.
    pub fn deduplicated(&self) -> bool {
        self.deduplicated
    }

    /// What the queue knows of the task now; [`TaskError::Unknown`] when
    /// it does not know it.
    pub async fn state(&self) -> Result<TaskInfo, TaskError> {
        let info: Option<TaskInfo> = ask(
            &*self.caller,
            Call::new(methods::SHOW, json!({"task": self.task})),
        )
        .await?;
        info.ok_or(TaskError::Unknown { task: self.task })
    }

    /// Cancels the task: at once if it was not handed out yet; if it runs,
    /// its worker's handler is asked to stop and the task ends cancelled.
    pub async fn cancel(&self) -> Result<CancelOutcome, TaskError> {
        cancel_through(&*self.caller, self.task).await
    }

    /// One `task.wait` of at most `wait`: the task's info then.
    async fn wait_once(&self, wait: Duration) -> Result<TaskInfo, TaskError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let call = Call::new(
            methods::WAIT,
            json!({"task": self.task, "timeout_ms": wait_ms}),
        )
        .timeout(wait + WAIT_SLACK);
        let info: Option<TaskInfo> = ask(&*self.caller, call).await?;
        info.ok_or(TaskError::Unknown { task: self.task })
    }
}

impl<T: DeserializeOwned, E> TaskHandle<T, E> {
    /// Waits for the task to finish, as long as it takes, and gives the
    /// method's result: `Ok(Ok(t))` done, `Ok(Err(e))` dead with the
    /// method's own error `E`; [`TaskError::Dead`] dead with another error,
    /// [`TaskError::Cancelled`] cancelled.
    pub async fn result(&self) -> Result<Result<T, E>, TaskError> {
        loop {
            let info = self.wait_once(WAIT_STEP).await?;
            if info.state.is_final() {
                return self.read(info);
            }
        }
    }

    /// [`result`](Self::result), waiting at most `limit`:
    /// [`TaskError::Timeout`] then (the task goes on).
    pub async fn result_within(&self, limit: Duration) -> Result<Result<T, E>, TaskError> {
        let deadline = crate::session::deadline_in(limit);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TaskError::Timeout { after: limit });
            }
            let info = self.wait_once(left.min(WAIT_STEP)).await?;
            if info.state.is_final() {
                return self.read(info);
            }
        }
    }

    /// The outcome of a finished task.
    fn read(&self, info: TaskInfo) -> Result<Result<T, E>, TaskError> {
        match info.state {
            TaskState::Done => {
                let value = info.result.unwrap_or(Value::Null);
                T::deserialize(value)
                    .map(Ok)
                    .map_err(|e| TaskError::InvalidResult {
                        reason: e.to_string(),
                    })
            }
            TaskState::Cancelled => Err(TaskError::Cancelled),
            _ => {
                let error = info
                    .error
                    .and_then(|error| ErrorPayload::deserialize(error).ok());
                let dead = |error| TaskError::Dead {
                    attempts: info.attempts,
                    error,
                };
                let Some(payload) = error else {
                    return Err(dead(None));
                };
                let method = if self.method.is_empty() {
                    info.method.clone()
                } else {
                    self.method.to_string()
                };
                let remote = CallError::Remote {
                    method,
                    code: payload.code,
                    message: payload.message.clone(),
                    data: payload.data.clone(),
                    retry: payload.retry,
                };
                (self.decode)(remote)
                    .map(Err)
                    .map_err(|_| dead(Some(payload)))
            }
        }
    }
}
