//! [`HandlerError`]: a handler's failure, sent as an error packet.

use serde_json::Value;

use crate::packet::{ErrorCode, ErrorPayload};

/// A handler's failure, sent to the peer as an error packet when the peer
/// is waiting for an answer.
///
/// The `code`, `message` and `data` are sent; the
/// [`detail`](Self::detail) stays in this side's log.
///
/// A `handler_error` a handler returns is the method's own answer (a
/// typed service error, a validation failure): it is logged at DEBUG,
/// without its message or data. One with a [`detail`](Self::detail), a
/// panic, or a reply that cannot be sent is a failure of this side, logged
/// at WARNING (a panic at ERROR).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// The error packet's code.
    pub code: ErrorCode,
    /// The error packet's message, shown to the peer.
    pub message: String,
    /// The error packet's `data`: a typed service error as JSON.
    pub data: Option<Value>,
    /// Logged on this side, never sent.
    detail: Option<String>,
    /// The error packet's `retry` (see [`with_retry`](Self::with_retry)).
    retry: Option<bool>,
}

impl HandlerError {
    /// An error with any code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HandlerError {
            code,
            message: message.into(),
            data: None,
            detail: None,
            retry: None,
        }
    }

    /// The same error carrying `data` in its error packet (the JSON of a
    /// typed service error).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The same error with a text for this side's log only: the peer never
    /// sees it. It marks the error as a failure of this side, logged at
    /// WARNING with the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The same error saying whether trying again may succeed: `false`
    /// makes a task that fails with it go dead at once, without its
    /// remaining attempts; `true` lets the queue retry it by the task's
    /// policy (as saying nothing does). Sent as the error packet's
    /// `retry`.
    ///
    /// ```
    /// use stream_rpc::HandlerError;
    ///
    /// let error = HandlerError::failed("the article is gone").with_retry(false);
    /// assert_eq!(error.retry(), Some(false));
    /// ```
    pub fn with_retry(mut self, retry: bool) -> Self {
        self.retry = Some(retry);
        self
    }

    /// A `handler_error` that trying again cannot mend (`retry: false`):
    /// a task failing with it goes dead at once.
    ///
    /// ```
    /// use stream_rpc::{ErrorCode, HandlerError};
    ///
    /// let error = HandlerError::permanent("no such article");
    /// assert_eq!((error.code, error.retry()), (ErrorCode::HandlerError, Some(false)));
    /// ```
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::failed(message).with_retry(false)
    }

    /// What the error says of trying again: `Some(false)` final,
    /// `Some(true)` worth retrying, `None` nothing.
    pub fn retry(&self) -> Option<bool> {
        self.retry
    }

    /// The text for this side's log only, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// No handler takes `method`.
    pub fn unknown_method(method: &str) -> Self {
        HandlerError::new(
            ErrorCode::UnknownMethod,
            format!("unknown method `{method}`"),
        )
    }

    /// The refusal of a stream opened to a method that is not a stream
    /// method (`not_a_stream`: nothing was run).
    pub fn not_a_stream(method: &str) -> Self {
        HandlerError::new(
            ErrorCode::NotAStream,
            format!("`{method}` is not a stream method: call it without a stream"),
        )
    }

    /// The refusal of a plain call (no `stream` field) to a stream method
    /// (`stream_required`: nothing was run).
    pub fn stream_required(method: &str) -> Self {
        HandlerError::new(
            ErrorCode::StreamRequired,
            format!("`{method}` is a stream method: open it as a stream"),
        )
    }

    /// The payload of `method` does not fit; `reason` says why (e.g. the
    /// serde error).
    pub fn invalid_payload(method: &str, reason: impl std::fmt::Display) -> Self {
        HandlerError::new(
            ErrorCode::InvalidPayload,
            format!("invalid payload for `{method}`: {reason}"),
        )
    }

    /// The handler failed; `message` is shown to the peer.
    pub fn failed(message: impl Into<String>) -> Self {
        HandlerError::new(ErrorCode::HandlerError, message)
    }

    pub(crate) fn into_payload(self, method: &str) -> ErrorPayload {
        ErrorPayload {
            code: self.code,
            message: self.message,
            method: Some(method.to_owned()),
            data: self.data,
            retry: self.retry,
        }
    }
}
