//! Support for the generated code of task producers and workers: what a
//! handler's error says of trying again ([`RetryOf`]), and what a task's
//! result reads as ([`TaskOutput`]).

use serde_json::Value;

use crate::protocol::HandlerError;

/// What a task's result reads as for a method returning `Self` (the
/// reply's payload): the payload type of a [`Message<T>`](crate::Message),
/// JSON for a [`Reply`](crate::Reply).
pub trait TaskOutput {
    /// The result's type.
    type Output;
}

impl<T> TaskOutput for crate::Message<T> {
    type Output = T;
}

impl TaskOutput for crate::protocol::Reply {
    type Output = Value;
}

/// Picks what a handler's error says of trying again, most specific
/// first: a [`HandlerError`] says what its `retry` says; an error that
/// implements [`Retry`](crate::tasks::Retry) says its `retry()`;
/// anything else says nothing. Called as
/// `(&&&RetryOf(&e)).retry_of()`, before the error is converted.
pub struct RetryOf<'a, E>(pub &'a E);

/// The first choice, for [`HandlerError`] itself.
pub trait RetryOfHandlerError {
    /// What it says.
    fn retry_of(self) -> Option<bool>;
}

impl RetryOfHandlerError for &&&RetryOf<'_, HandlerError> {
    fn retry_of(self) -> Option<bool> {
        self.0.retry()
    }
}

/// The second choice, for an error that implements
/// [`Retry`](crate::tasks::Retry).
pub trait RetryOfTrait {
    /// What it says.
    fn retry_of(self) -> Option<bool>;
}

impl<E: crate::tasks::Retry> RetryOfTrait for &&RetryOf<'_, E> {
    fn retry_of(self) -> Option<bool> {
        Some(self.0.retry())
    }
}

/// The fallback: nothing said.
pub trait RetryOfNothing {
    /// Nothing.
    fn retry_of(self) -> Option<bool>;
}

impl<E> RetryOfNothing for &RetryOf<'_, E> {
    fn retry_of(self) -> Option<bool> {
        None
    }
}

/// The converted error with what the handler's error said of trying
/// again, when it said something.
pub fn with_retry(error: HandlerError, retry: Option<bool>) -> HandlerError {
    match retry {
        Some(retry) => error.with_retry(retry),
        None => error,
    }
}
