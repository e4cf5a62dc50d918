//! A connection's shared state and [`Connection`], the cheap, cloneable
//! way to send packets and make calls on it from anywhere: handlers, other
//! tasks, other connections. The engine that reads and writes the
//! connection and runs the protocol is `crate::engine`; this module knows
//! nothing of protocols.

use std::task::Poll;

use tokio::time::error::Elapsed;
use tokio::time::{Instant, timeout_at};

/// Logs with the two fields every line of the default format shows: protocol
/// name and this side's peer id.
macro_rules! session_log {
    ($level:ident, $shared:expr, $($rest:tt)+) => {
        tracing::$level!(
            protocol = &*$shared.protocol_name,
            peer = %$shared.own_id,
            $($rest)+
        )
    };
}

/// Logs a refusal (bad input, over a limit) at `WARN` with the session's
/// fields, at most once a second per kind of refusal over the endpoint's
/// connections; the rest are counted in a summary line.
macro_rules! refusal_log {
    ($shared:expr, $refusal:expr, $($rest:tt)+) => {
        if $shared
            .endpoint
            .refusals()
            .admit($refusal, &$shared.protocol_name, $shared.own_id)
        {
            $crate::session::session_log!(warn, $shared, $($rest)+)
        }
    };
}

/// Logs a packet sent or received (`what`: `Send` or `Received`), as the
/// Python `stream_rpc` did, showing as much of it as the configuration says: at most
/// [`PACKET_LINES_PER_SECOND`](crate::session::PACKET_LINES_PER_SECOND)
/// lines a second per connection, then one line saying how many were left
/// out.
macro_rules! packet_log {
    ($shared:expr, $what:literal, $packet:expr) => {
        match $shared.packet_log {
            $crate::logging::PacketLog::Off => {}
            mode => {
                if tracing::enabled!(
                    target: $crate::logging::PACKETS_TARGET,
                    tracing::Level::INFO
                ) && $shared.packet_lines.admit(|| $shared.packet_lines_left_out())
                {
                    tracing::info!(
                        target: $crate::logging::PACKETS_TARGET,
                        protocol = &*$shared.protocol_name,
                        peer = %$shared.own_id,
                        "{}: {}",
                        $what,
                        $packet.log_line(mode == $crate::logging::PacketLog::Full)
                    )
                }
            }
        }
    };
}

/// How many `Send:`/`Received:` lines one connection writes a second at
/// most: a person can read them; a busy connection cannot fill a disk.
pub(crate) const PACKET_LINES_PER_SECOND: u32 = 20;

pub(crate) use {packet_log, refusal_log, session_log};

/// The method of the frame that cancels a call (PROTOCOL.md, "Cancelling
/// a call"): payload `{"peer": P, "id": N}`, the request's own.
pub(crate) const CALL_CANCEL: &str = "call.cancel";

mod connection;
pub(crate) mod outbox;
pub(crate) mod signal;
pub(crate) mod streams;

pub use connection::Connection;
#[cfg(test)]
pub(crate) use connection::IdHasher;
pub(crate) use connection::Shared;

pub use crate::lifecycle::{EndReason, Role};

/// The most a deadline lies ahead: a limit beyond it (`Duration::MAX`, for
/// "no limit") means this, so that no deadline overflows the clock.
const FARTHEST: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);

/// The instant `limit` from now, or [`FARTHEST`] from now for a longer one.
pub(crate) fn deadline_in(limit: std::time::Duration) -> Instant {
    Instant::now() + limit.min(FARTHEST)
}

/// [`timeout_at`], except that a future ready at its first poll (a free
/// call slot, room in the outgoing queue) costs no timer.
pub(crate) async fn within<F: Future>(deadline: Instant, future: F) -> Result<F::Output, Elapsed> {
    within_by(|| deadline, future).await
}

/// [`within`] with the deadline worked out only if the future has to wait
/// (a write that the socket takes at once costs no clock read either).
pub(crate) async fn within_by<F: Future>(
    deadline: impl FnOnce() -> Instant,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => timeout_at(deadline(), future).await,
    }
}
