//! The session engine: one per connection, the same for servers and workers.
//!
//! A session has three parts:
//! - the **read loop** (the task that runs [`Session::run`]) reads frames
//!   (`reader.rs`), opens them and checks them against the replay store a
//!   turn of at most 16 frames at a time (`opening.rs`), and dispatches
//!   each packet (`dispatch.rs`): a reply completes its pending call, a
//!   late reply to a call that gave up is dropped, and every other packet
//!   starts a handler. After each full turn it lets the session's other
//!   tasks run, so that replies go out while a long burst is still being
//!   read;
//! - **handlers** (`handler.rs`), at most
//!   [`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers)
//!   at once, run [`Protocol::process_message`] under their
//!   [`Context`](crate::Context) and send what it returns. A handler is
//!   first polled on the read loop itself; only one that has to wait
//!   becomes a task of its own, dropped when its caller's deadline passes
//!   or when the session ends (after the shutdown grace period);
//! - the **writer task** takes everything queued in the session's outbox
//!   (bounded) at once, seals it into tokens (a batch at a time; a custom
//!   cipher that cannot tell its tokens' length is sealed by each sender
//!   instead), frames them and writes them a 64 KiB slice at a time.
//!   Senders queue their packet's JSON straight into the outbox; the writer
//!   swaps it out whole.
//!
//! Everything is a loop over frames: memory per connection stays flat however
//! long a conversation runs. [`Connection`](crate::Connection) is the cheap, cloneable way to
//! send packets and make calls on a session from anywhere.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::codec::FrameCodec;
use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::protocol::Protocol;
use crate::session::signal::Signal;
use crate::session::{Connection, EndReason, Role, Shared, session_log};

/// How much the read buffer grows by when it is (nearly) full.
const READ_CHUNK: usize = 16 * 1024;
/// How much a lingering session reads, and discards, at a time.
const DISCARD_CHUNK: usize = 4096;
/// The longest a session that stopped reading keeps discarding what the
/// peer still sends, after its last reply, before it closes.
const LINGER: Duration = Duration::from_secs(1);

mod cancel;
mod dispatch;
mod handler;
mod opening;
mod reader;
mod streams;
mod writer;

use reader::ReadLoop;
use writer::write_loop;

/// One connection's engine, ready to run over a reader and a writer.
pub struct Session<P> {
    protocol: Arc<P>,
    shared: Arc<Shared>,
    config: Arc<Config>,
    role: Role,
}

impl<P> fmt::Debug for Session<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local_id", &self.shared.own_id)
            .field("remote_addr", &self.shared.remote_addr)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Session<P> {
    /// Prepares a session of `endpoint` (its peer id, packet numbering,
    /// replay cache and settings); nothing happens until [`Session::run`].
    pub fn new(
        protocol: Arc<P>,
        endpoint: &Endpoint,
        role: Role,
        remote_addr: Option<SocketAddr>,
    ) -> Self {
        let shared = Arc::new(Shared::new(endpoint, protocol.name(), remote_addr));
        Session {
            protocol,
            shared,
            config: endpoint.config_arc().clone(),
            role,
        }
    }

    /// A handle to this session, usable before and while it runs.
    pub fn handle(&self) -> Connection {
        Connection::from_shared(self.shared.clone())
    }

    /// Runs the session until the peer leaves, `shutdown` is cancelled, a
    /// deadline passes or the connection breaks, then winds down: running
    /// handlers get the shutdown grace period (unless the connection broke),
    /// pending calls fail with [`CallError::ConnectionLost`](crate::CallError::ConnectionLost),
    /// queued replies are flushed and the writer is shut down. When this side
    /// stopped first (shutdown or close), it then reads and discards what the
    /// peer still sends, for at most 1 s (or the shutdown grace period, if
    /// shorter), so that closing does not reset the
    /// connection under replies still in flight.
    pub async fn run<R, W>(self, mut reader: R, writer: W, shutdown: CancellationToken) -> EndReason
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Session {
            protocol,
            shared,
            config,
            role,
        } = self;
        let _open = crate::telemetry::OpenConnection::new(role);
        let timeouts = config.timeouts();
        let codec = FrameCodec::new(config.terminator(), config.limits().max_frame_len);
        let writer_stop = Arc::new(Signal::default());
        let writer_task = tokio::spawn(write_loop(
            writer,
            timeouts.write,
            config.terminator().into(),
            writer_stop.clone(),
            shared.clone(),
        ));

        // The session's own child of the shutdown token: the read loop looks
        // at it before every read without contending with the server's other
        // connections, and cancelling the server's token cancels it at once.
        // It is waited on here, by a small task that raises the session's
        // stop flag, rather than by the read loop on every wake.
        let shutdown = shutdown.child_token();
        let watch_shutdown = tokio::spawn({
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                shared.request_stop(EndReason::Shutdown);
            }
        });

        let mut read_loop = ReadLoop::new(protocol, shared.clone(), codec, config.limits());
        let first_frame = (role == Role::Server).then_some(timeouts.first_frame);
        let reason = read_loop
            .run(&mut reader, &shutdown, first_frame, timeouts.idle)
            .await;
        watch_shutdown.abort();
        // The connection is closing from here on, whoever ended it: new
        // calls on it are not sent (replies of running handlers still are).
        shared.request_stop(reason.clone());
        // Every stream on it ends at once (`Disconnected`), its handler
        // dropped: streams are long-lived, they get no grace period.
        let streams = shared.streams.close_all();
        if streams > 0 {
            session_log!(
                debug,
                shared,
                "{streams} streams ended: the connection is closing"
            );
        }
        session_log!(debug, shared, "session ending: {reason}");
        read_loop.wind_down();

        let graceful = matches!(
            reason,
            EndReason::PeerClosed | EndReason::Shutdown | EndReason::Closed
        );
        if graceful && !read_loop.wait_for_handlers(timeouts.shutdown_grace).await {
            session_log!(
                warn,
                shared,
                "handlers still running after the {:?} grace period are cancelled",
                timeouts.shutdown_grace
            );
        }
        read_loop.cancel_handlers();
        shared.refuse_new_work();
        writer_stop.raise();
        if writer_task.await.is_err() {
            session_log!(error, shared, "the writer task failed");
        }
        if matches!(reason, EndReason::Shutdown | EndReason::Closed) {
            // This side stopped reading while the peer may still be sending.
            // Closing a socket with unread input resets the connection, and
            // a reset can destroy the replies just written before the peer
            // reads them; so read and discard until the peer closes too.
            linger(&mut reader, LINGER.min(timeouts.shutdown_grace)).await;
        }
        shared.ended.cancel();
        reason
    }
}

/// Reads and discards until end of stream, an error, or `limit`.
async fn linger<R: AsyncRead + Unpin>(reader: &mut R, limit: Duration) {
    let mut sink = [0u8; DISCARD_CHUNK];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(1..) = reader.read(&mut sink).await {}
    })
    .await;
}

#[cfg(test)]
mod tests;
