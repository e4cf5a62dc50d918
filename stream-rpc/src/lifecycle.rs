//! Which end of a connection this side is, and why a connection ended:
//! plain types that the engine, the telemetry and the connector share.

use std::fmt;

/// Which end of the connection a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Accepted the connection: the peer must send its first frame within
    /// [`Timeouts::first_frame`](crate::Timeouts::first_frame).
    Server,
    /// Opened the connection.
    Client,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The peer closed the connection (after its handlers finished).
    PeerClosed,
    /// The server or client was shut down.
    Shutdown,
    /// [`Connection::close`](crate::Connection::close) was called.
    Closed,
    /// A server's peer sent no frame in time after connecting.
    FirstFrameTimeout,
    /// Nothing happened on the connection for the idle timeout.
    IdleTimeout,
    /// Too many frames in a row failed to decrypt or were too long.
    TooManyBadFrames,
    /// Reading failed.
    ReadFailed(String),
    /// Writing failed or missed the write deadline.
    WriteFailed(String),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::PeerClosed => f.write_str("peer closed the connection"),
            EndReason::Shutdown => f.write_str("shut down"),
            EndReason::Closed => f.write_str("closed by this side"),
            EndReason::FirstFrameTimeout => f.write_str("no first frame in time"),
            EndReason::IdleTimeout => f.write_str("idle for too long"),
            EndReason::TooManyBadFrames => f.write_str("too many bad frames in a row"),
            EndReason::ReadFailed(e) => write!(f, "read failed: {e}"),
            EndReason::WriteFailed(e) => write!(f, "write failed: {e}"),
        }
    }
}
