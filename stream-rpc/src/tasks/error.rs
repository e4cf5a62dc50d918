//! [`TaskError`] and [`CancelOutcome`]: what a producer learns.

use std::time::Duration;

use super::types::{TaskRef, TaskState};
use crate::error::CallError;
use crate::packet::ErrorPayload;

/// What became of a cancel ([`TaskHandle::cancel`](super::TaskHandle::cancel),
/// [`Tasks::cancel`](super::Tasks::cancel)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It had not been handed out: it is cancelled and never runs.
    Cancelled,
    /// It is running: its worker was asked to stop (its handler's
    /// [`Context::cancelled`](crate::Context::cancelled) resolves), and it
    /// ends cancelled whatever the handler answers.
    Requested,
    /// It had finished already, in this state.
    Finished(TaskState),
    /// The queue does not know it (never put, or forgotten after its
    /// retention window).
    Unknown,
}

/// Why a producer's request about a task failed, or how the task ended
/// when it has no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The queue server could not be reached, or refused the request (its
    /// [`CallError`] says which, and whether to try again).
    #[error(transparent)]
    Call(#[from] CallError),
    /// The queue refused the task: `full`, `name_taken` (a task of the
    /// same `peer` and `id` is held), or `duplicate` with no task to
    /// await.
    #[error("the queue refused the task: {reason}")]
    Refused {
        /// The queue's reason.
        reason: String,
    },
    /// [`result_within`](super::TaskHandle::result_within) gave up; the
    /// task goes on.
    #[error("the task did not finish within {}", crate::human::ShortDuration(*.after))]
    Timeout {
        /// The limit given.
        after: Duration,
    },
    /// The task was cancelled.
    #[error("the task was cancelled")]
    Cancelled,
    /// The task failed for good, with an error that does not read as the
    /// method's error type (a panic, a refused payload, a timeout with a
    /// typed error type, ...).
    #[error("the task failed for good after {attempts} attempt(s){}", .error.as_ref().map(|e| format!(": {}: {}", e.code, crate::logging::Escaped::new(&e.message, 512))).unwrap_or_default())]
    Dead {
        /// How many times it was handed out.
        attempts: u32,
        /// Its last error, if it had one that reads as an error payload.
        error: Option<ErrorPayload>,
    },
    /// The queue does not know the task: never put, or forgotten after the
    /// retention window.
    #[error("the queue does not know the task {task}")]
    Unknown {
        /// The task.
        task: TaskRef,
    },
    /// The task's result (or the queue's answer) does not read as the
    /// expected type.
    #[error("the task's result does not read as expected: {reason}")]
    InvalidResult {
        /// The deserialisation error.
        reason: String,
    },
}
