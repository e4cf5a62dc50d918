//! The errors of the runtime's operations.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cipher::CipherError;
use crate::config::ConfigError;
use crate::logging::LoggingError;
use crate::packet::{ErrorCode, ErrorPayload, Packet};

/// The error an on-connect hook returns: any error (`?` converts a
/// [`CallError`] into it, and `"text".into()` makes one).
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Starting or running a server or client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The log subscriber could not be installed.
    #[error(transparent)]
    Logging(#[from] LoggingError),
    /// The host name did not resolve to any address.
    #[error("cannot resolve {host}:{port}: {source}")]
    Resolve {
        /// The configured host.
        host: String,
        /// The configured port.
        port: u16,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The server could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address it tried.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// No server answered at the address.
    #[error("server is unreachable at {target}: {source}")]
    Unreachable {
        /// The `host:port` the client tried.
        target: String,
        /// Why the last attempt failed (a time-out shows as `TimedOut`).
        #[source]
        source: io::Error,
    },
    /// The connector's [on-connect hook](crate::Connector::on_connect)
    /// failed on a new connection, which was closed.
    #[error("on-connect hook failed on the connection to {target}: {source}")]
    OnConnect {
        /// The `host:port` the client connected to.
        target: String,
        /// What the hook returned.
        #[source]
        source: HookError,
    },
    /// The hello packet could not be sent.
    #[error("could not send the hello packet: {0}")]
    Hello(#[source] SendError),
    /// Another input/output failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A packet could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed,
    /// The payload could not be turned into JSON.
    #[error("payload cannot be encoded as JSON: {0}")]
    Encode(String),
    /// The cipher refused.
    #[error(transparent)]
    Cipher(#[from] CipherError),
    /// The connection's call slots
    /// ([`Limits::max_in_flight_calls`](crate::Limits::max_in_flight_calls))
    /// or its outgoing queue stayed full for the whole time limit of the
    /// call: nothing was sent.
    #[error("no room to send within {}: the connection's calls or outgoing queue stayed full", crate::human::ShortDuration(*.waited))]
    NoRoom {
        /// How long it waited.
        waited: Duration,
    },
    /// The sealed packet is longer than the maximum frame length.
    #[error("packet is {len} bytes sealed, more than the maximum frame length of {max}")]
    TooLarge {
        /// The token's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A layer of a [layered caller](crate::layer::LayeredCaller) failed
    /// the notification with an error of its own (not a [`CallError`] it
    /// returned nor one of tower's errors that have a meaning here): it
    /// may or may not have been sent.
    #[error("a layer failed the notification: {0}")]
    Layer(String),
}

/// A call got no usable answer, and what the caller may do about it.
///
/// Each variant says whether the request can have run on the peer
/// ([`may_have_run`](CallError::may_have_run)), which is what decides
/// whether a retry is safe for a method that must not run twice:
///
/// | Variant | Sent? | May have run? | Retry |
/// |---|---|---|---|
/// | [`NotSent`](CallError::NotSent) (closed, too large, unencodable, or no room within the limit) | no | no | safe |
/// | [`Unreachable`](CallError::Unreachable) | no | no | safe, later or elsewhere |
/// | [`ConnectionLost`](CallError::ConnectionLost) | yes | yes | only if running twice is harmless |
/// | [`Timeout`](CallError::Timeout) | yes | yes | only if running twice is harmless |
/// | [`Remote`](CallError::Remote), a code that [did not run](ErrorCode::did_not_run) (`busy`, `unavailable`, `unknown_method`, `invalid_payload`, `invalid_packet`, `unauthenticated`, `permission_denied`) | yes | no | safe (`busy`, `unavailable`: later); the others fail again |
/// | [`Remote`](CallError::Remote), any other code (`handler_error`, `handler_panicked`, …) | yes | yes, and failed | the method's own answer |
/// | [`InvalidReply`](CallError::InvalidReply) | yes | yes, and answered | no: the two sides disagree on the type |
/// | [`Layer`](CallError::Layer) | unknown | yes | only if running twice is harmless |
/// | [`InputFailed`](CallError::InputFailed) (an item of the call's input stream could not be encoded; this side cancelled the call) | yes | yes, in part | only if running twice is harmless |
///
/// A typed method's own error (the `E` of a method returning
/// `Result<T, E>`) is never a `CallError`: the generated client returns it
/// as `Ok(Err(e))`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request was not sent (the connection was closed or closing, the
    /// payload could not be encoded or sealed, the packet is too large, or
    /// the connection had no call slot or no room to send for the whole
    /// limit): nothing reached the peer.
    #[error("`{method}` was not sent: {reason}")]
    NotSent {
        /// The called method.
        method: String,
        /// Why it was not sent.
        #[source]
        reason: SendError,
    },
    /// There was no connection to send the request on within the call's
    /// time limit (a [`ReconnectingClient`](crate::ReconnectingClient)
    /// whose servers are all unreachable or refused by the on-connect
    /// hook, or one that gave up): nothing was sent.
    #[error("`{method}` was not sent, as there was no connection: {reason}")]
    Unreachable {
        /// The called method.
        method: String,
        /// The time limit the caller set.
        after: Duration,
        /// Why there was no connection (the last attempt's error).
        reason: String,
    },
    /// No reply came within the time limit the caller set. The request was
    /// handed to the connection and may have run.
    #[error("no reply to `{method}` within {}", crate::human::ShortDuration(*.after))]
    Timeout {
        /// The called method.
        method: String,
        /// The time limit the caller set (not what was left of it).
        after: Duration,
    },
    /// The connection closed after the request was handed to it and before
    /// the reply came: it may or may not have run.
    #[error("connection lost before the reply to `{method}` came")]
    ConnectionLost {
        /// The called method.
        method: String,
    },
    /// The peer answered with an error packet: it refused the request
    /// (a code that [did not run](ErrorCode::did_not_run)) or the method
    /// failed. Its message is the peer's text: shown escaped and cut (at
    /// 512 characters), so that logging the error cannot let the peer start
    /// a log line of its own.
    #[error(
        "peer answered `{method}` with {code}: {}",
        crate::logging::Escaped::new(.message, 512)
    )]
    Remote {
        /// The called method.
        method: String,
        /// The error packet's code.
        code: ErrorCode,
        /// The error packet's message.
        message: String,
        /// The error packet's `data`: a typed service error as JSON, when
        /// the method returned one (the typed client decodes it).
        data: Option<serde_json::Value>,
        /// The error packet's `retry`: `Some(false)` when the peer says
        /// trying again cannot succeed ([`ErrorPayload::retry`]).
        retry: Option<bool>,
    },
    /// The reply's payload does not have the expected type.
    #[error("reply to `{method}` has an unexpected payload: {reason}")]
    InvalidReply {
        /// The called method.
        method: String,
        /// The deserialisation error.
        reason: String,
    },
    /// A layer of a [layered caller](crate::layer::LayeredCaller) failed
    /// the call with an error of its own: not a `CallError` it returned,
    /// nor one of tower's errors that have a meaning here (tower's time
    /// limit is [`Timeout`](CallError::Timeout), its load shedding
    /// [`NotSent`](CallError::NotSent) with [`SendError::NoRoom`]). The
    /// request may or may not have been sent.
    #[error("`{method}` failed in a layer of this side: {reason}")]
    Layer {
        /// The called method.
        method: String,
        /// The layer's error, as text.
        reason: String,
    },
    /// An item of the call's input stream could not be encoded, after the
    /// call was opened: this side cancelled the call (`stream.cancel`)
    /// rather than end its input early, so the method never answers on
    /// part of its input. It may have run in part (`sent` items reached
    /// it).
    #[error(
        "`{method}` was cancelled after {sent} input item(s): an item could not be encoded: {reason}"
    )]
    InputFailed {
        /// The called method.
        method: String,
        /// How many input items were sent before the one that failed.
        sent: u64,
        /// The encoding error.
        reason: String,
    },
}

impl CallError {
    /// The method the call was to.
    pub fn method(&self) -> &str {
        match self {
            CallError::NotSent { method, .. }
            | CallError::Unreachable { method, .. }
            | CallError::Timeout { method, .. }
            | CallError::ConnectionLost { method }
            | CallError::Remote { method, .. }
            | CallError::InvalidReply { method, .. }
            | CallError::Layer { method, .. }
            | CallError::InputFailed { method, .. } => method,
        }
    }

    /// Whether the request may have run on the peer: `false` only when it
    /// certainly did not (not sent, no connection, or refused with a code
    /// that [did not run](ErrorCode::did_not_run)), so that sending it again
    /// cannot run it twice.
    pub fn may_have_run(&self) -> bool {
        match self {
            CallError::NotSent { .. } | CallError::Unreachable { .. } => false,
            CallError::Remote { code, .. } => !code.did_not_run(),
            CallError::Timeout { .. }
            | CallError::ConnectionLost { .. }
            | CallError::InvalidReply { .. }
            | CallError::Layer { .. }
            | CallError::InputFailed { .. } => true,
        }
    }

    /// The error packet's code, for [`Remote`](CallError::Remote).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// `method` got no reply within the caller's `limit`.
    pub(crate) fn timed_out(method: &str, limit: Duration) -> Self {
        CallError::Timeout {
            method: method.to_owned(),
            after: limit,
        }
    }

    /// The connection of the call to `method` closed after it was sent.
    pub(crate) fn lost(method: &str) -> Self {
        CallError::ConnectionLost {
            method: method.to_owned(),
        }
    }

    /// The error an error packet in reply to a call of `method` carries
    /// ([`Remote`](CallError::Remote)); a malformed one is read as the
    /// code `unknown`, its payload in the message.
    pub(crate) fn from_error_packet(method: &str, packet: &Packet) -> Self {
        let error = packet.error().unwrap_or_else(|| ErrorPayload {
            code: ErrorCode::Unknown,
            message: format!("malformed error packet: {}", packet.payload),
            method: None,
            data: None,
            retry: None,
        });
        CallError::Remote {
            method: method.to_owned(),
            code: error.code,
            message: error.message,
            data: error.data,
            retry: error.retry,
        }
    }

    /// The call to `method` was not sent.
    pub(crate) fn not_sent(method: &str, reason: SendError) -> Self {
        CallError::NotSent {
            method: method.to_owned(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_message_is_shown_escaped_and_cut() {
        let err = CallError::Remote {
            method: "ping".into(),
            code: ErrorCode::HandlerError,
            message: format!("bad\nERROR - forged{}", "x".repeat(1000)),
            data: None,
            retry: None,
        };
        let text = err.to_string();
        assert!(
            text.starts_with("peer answered `ping` with handler_error: bad\\nERROR - forged"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        assert!(text.ends_with('…') && text.len() < 600, "{}", text.len());
    }
}
