//! The errors of the runtime's operations.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::cipher::CipherError;
use crate::config::ConfigError;
use crate::logging::LoggingError;
use crate::packet::ErrorCode;

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
    /// The sealed packet is longer than the maximum frame length.
    #[error("packet is {len} bytes sealed, more than the maximum frame length of {max}")]
    TooLarge {
        /// The token's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// A call got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// No reply came in time.
    #[error("no reply to `{method}` within {after:?}")]
    Timeout {
        /// The called method.
        method: String,
        /// How long the call waited.
        after: Duration,
    },
    /// The connection closed before the reply came.
    #[error("connection lost before the reply to `{method}` came")]
    ConnectionLost {
        /// The called method.
        method: String,
    },
    /// The peer answered with an error packet. Its message is the peer's
    /// text: shown escaped and cut (at 512 characters), so that logging the
    /// error cannot let the peer start a log line of its own.
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
    },
    /// The reply's payload does not have the expected type.
    #[error("reply to `{method}` has an unexpected payload: {reason}")]
    InvalidReply {
        /// The called method.
        method: String,
        /// The deserialisation error.
        reason: String,
    },
}

impl CallError {
    /// `method` got no reply within `after`.
    pub(crate) fn timed_out(method: &str, after: Duration) -> Self {
        CallError::Timeout {
            method: method.to_owned(),
            after,
        }
    }

    /// The connection of the call to `method` closed first.
    pub(crate) fn lost(method: &str) -> Self {
        CallError::ConnectionLost {
            method: method.to_owned(),
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
