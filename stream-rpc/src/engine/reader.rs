//! The read loop: reads bytes, cuts them into frames and hands them on a
//! turn at a time (see `opening.rs`), and keeps the connection's
//! first-frame and idle timers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::READ_CHUNK;
use crate::cipher::CipherError;
use crate::codec::{CodecError, FrameCodec};
use crate::config::Limits;
use crate::logging::PacketLog;
use crate::logging::Refusal;
use crate::protocol::Protocol;
use crate::replay::{ReceivedToken, Verdict};
use crate::session::{EndReason, Shared, refusal_log, session_log};
use crate::sync::lock;

/// How many frames the read loop handles before it lets the session's other
/// tasks (the writer, handlers) run. Measured on the `pipe64` benchmark:
/// handling a whole burst of 64 requests before the first reply is written
/// leaves the peer idle meanwhile; 16 lets both ends work at once.
pub(super) const FRAMES_PER_TURN: usize = 16;

/// How far ahead a timer that is not armed is set: never, in practice.
const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// The read buffer grows by [`READ_CHUNK`] once less than this fraction of
/// a chunk is free, so that a read never asks for only a few bytes.
const MIN_FREE_DIVISOR: usize = 4;

/// The read loop's state.
pub(super) struct ReadLoop<P> {
    pub(super) protocol: Arc<P>,
    pub(super) shared: Arc<Shared>,
    codec: FrameCodec,
    pub(super) handlers: Arc<Semaphore>,
    pub(super) abort_handlers: CancellationToken,
    /// Cancelled as soon as the read loop ends, before the handlers still
    /// running get the shutdown grace period: what
    /// [`Context::cancelled`](crate::Context::cancelled) watches.
    pub(super) winding_down: CancellationToken,
    /// The requests whose handler is running, for `call.cancel`.
    pub(super) running: Arc<super::cancel::Running>,
    pub(super) handlers_limit: usize,
    /// [`Limits::max_streams`], for the `busy` refusal's message.
    pub(super) streams_limit: usize,
    pub(super) bad_in_row: u32,
    max_bad_in_row: u32,
    /// The plaintexts of a turn's frames, reused from turn to turn.
    pub(super) plains: Vec<Vec<u8>>,
    /// Whether each of a turn's frames opened, and if so the time its
    /// token says it was made (see `Cipher::open_at`).
    pub(super) opened: Vec<Result<Option<u64>, CipherError>>,
    /// The turn's tokens that opened, for the replay store.
    pub(super) tokens: Vec<ReceivedToken>,
    /// The replay store's verdict on each of `tokens`.
    pub(super) verdicts: Vec<Verdict>,
    /// Whether a frame that opened under the key (and passed the replay
    /// check) arrived since the read loop last looked: only such a frame
    /// counts as the first frame or restarts the idle timer.
    pub(super) authentic: bool,
    /// How much of peer-chosen text (error messages) the log shows.
    pub(super) full_logs: bool,
}

/// The frames of one turn, and their tokens' fingerprints when replay
/// protection is on; reused from turn to turn.
struct Turn {
    frames: Vec<BytesMut>,
    fingerprints: Vec<u64>,
}

impl<P: Protocol> ReadLoop<P> {
    pub(super) fn new(
        protocol: Arc<P>,
        shared: Arc<Shared>,
        codec: FrameCodec,
        limits: &Limits,
    ) -> Self {
        ReadLoop {
            protocol,
            full_logs: shared.packet_log == PacketLog::Full,
            shared,
            codec,
            handlers: Arc::new(Semaphore::new(limits.max_concurrent_handlers)),
            abort_handlers: CancellationToken::new(),
            winding_down: CancellationToken::new(),
            running: Arc::default(),
            handlers_limit: limits.max_concurrent_handlers,
            streams_limit: limits.max_streams,
            bad_in_row: 0,
            max_bad_in_row: limits.max_bad_frames_in_row,
            plains: Vec::new(),
            opened: Vec::with_capacity(FRAMES_PER_TURN),
            tokens: Vec::with_capacity(FRAMES_PER_TURN),
            verdicts: Vec::with_capacity(FRAMES_PER_TURN),
            authentic: false,
        }
    }

    /// Waits up to `grace` for every running handler to finish; says
    /// whether they all did.
    pub(super) async fn wait_for_handlers(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.handlers_limit).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.handlers.acquire_many(all))
            .await
            .is_ok()
    }

    /// Tells the handlers still running that the connection is closing
    /// (their [`Context::cancelled`](crate::Context::cancelled) resolves).
    pub(super) fn wind_down(&self) {
        self.winding_down.cancel();
    }

    /// Cancels the handlers still running.
    pub(super) fn cancel_handlers(&self) {
        self.abort_handlers.cancel();
    }

    /// Reads and handles frames until the peer leaves, `shutdown` is
    /// cancelled, the session is asked to stop, a timer fires or the
    /// connection breaks; returns why it ended.
    pub(super) async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        shutdown: &CancellationToken,
        first_frame: Option<Duration>,
        idle: Option<Duration>,
    ) -> EndReason {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut timers = Timers::new(first_frame, idle);
        let deadline = sleep_until(timers.first_deadline());
        tokio::pin!(deadline);
        // Raised by `close`, a failed write or the server's shutdown.
        let shared = self.shared.clone();
        let mut turn = Turn {
            frames: Vec::with_capacity(FRAMES_PER_TURN),
            fingerprints: Vec::with_capacity(FRAMES_PER_TURN),
        };
        loop {
            if let Some(reason) = self.drain(&mut buf, &mut turn).await {
                return reason;
            }
            if std::mem::take(&mut self.authentic) {
                timers.authentic(deadline.as_mut());
            }
            if buf.capacity() - buf.len() < READ_CHUNK / MIN_FREE_DIVISOR {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                // Looked at on every poll, before any read: nothing that
                // arrives after the shutdown is read. This session's own
                // token (a child of the server's), so the look takes an
                // uncontended lock; the task that watches it raises the stop
                // flag, which is what wakes this loop.
                () = std::future::poll_fn(|_| {
                    if shutdown.is_cancelled() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                }) => return EndReason::Shutdown,
                () = shared.stop.raised() => {
                    return lock(&self.shared.stop_reason).clone().unwrap_or(EndReason::Closed);
                }
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) => return self.at_end_of_stream(&mut buf),
                    Ok(read) => crate::telemetry::received(read),
                    Err(e) => return EndReason::ReadFailed(e.to_string()),
                },
                () = &mut deadline, if timers.armed => {
                    // Open streams are long-lived and may be quiet: a
                    // connection that carries one is not idle.
                    let busy = || {
                        self.handlers_running()
                            || self.shared.has_pending()
                            || !self.shared.streams.is_empty()
                    };
                    if let Some(reason) = timers.fired(deadline.as_mut(), busy) {
                        return reason;
                    }
                }
            }
        }
    }

    /// Handles every whole frame in `buf`, a turn at a time, letting the
    /// session's other tasks run between full turns; returns the end reason
    /// when the connection must close.
    async fn drain(&mut self, buf: &mut BytesMut, turn: &mut Turn) -> Option<EndReason> {
        loop {
            let failure = self.take_turn(buf, &mut turn.frames);
            let full_turn = turn.frames.len() == FRAMES_PER_TURN;
            if !turn.frames.is_empty() {
                self.fingerprint(&turn.frames, &mut turn.fingerprints);
                let handled = self.on_turn(&turn.frames, &turn.fingerprints).await;
                turn.frames.clear();
                if handled.is_some() {
                    return handled;
                }
            }
            match failure {
                None if full_turn => {
                    // Let the replies of the frames handled so far go
                    // out before reading on: the peer can then work on
                    // them while this side handles the rest of a burst.
                    tokio::task::yield_now().await;
                }
                None => return None,
                Some(CodecError::FrameTooLong { max }) => {
                    crate::telemetry::bad_frame("over_long");
                    refusal_log!(
                        self.shared,
                        Refusal::OverLong,
                        "dropped a frame longer than {max} bytes; skipping to the next terminator"
                    );
                    if let Some(reason) = self.bad_frame() {
                        return Some(reason);
                    }
                }
                Some(other) => return Some(EndReason::ReadFailed(other.to_string())),
            }
        }
    }

    /// Takes up to a turn's worth of frames out of `buf`, stopping at a
    /// codec error (returned) so that it is handled after the frames
    /// before it.
    fn take_turn(&mut self, buf: &mut BytesMut, frames: &mut Vec<BytesMut>) -> Option<CodecError> {
        while frames.len() < FRAMES_PER_TURN {
            match self.codec.decode(buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
        None
    }

    /// The peer closed its end: says so, noting a frame it left unfinished.
    fn at_end_of_stream(&mut self, buf: &mut BytesMut) -> EndReason {
        if let Err(e) = self.codec.decode_eof(buf) {
            session_log!(warn, self.shared, "peer disconnected mid-frame: {e}");
        }
        EndReason::PeerClosed
    }

    /// Whether any handler is running (the semaphore never gains permits, so
    /// fewer available than the limit means some are held).
    fn handlers_running(&self) -> bool {
        self.handlers.available_permits() < self.handlers_limit
    }

    /// Counts a frame that failed to decrypt or was too long; returns the end
    /// reason when there have been too many in a row.
    pub(super) fn bad_frame(&mut self) -> Option<EndReason> {
        self.bad_in_row += 1;
        (self.bad_in_row >= self.max_bad_in_row).then(|| {
            session_log!(
                debug,
                self.shared,
                "closing the connection after {} bad frames in a row",
                self.bad_in_row
            );
            EndReason::TooManyBadFrames
        })
    }
}

/// The read loop's two timers, on one sleep: until the first authentic
/// frame (servers only), then the idle limit.
///
/// The idle deadline is moved to match the last authentic frame only when
/// it fires, rather than the timer being reset for every read. Frames that
/// do not open under the key never move it: without the key, a peer cannot
/// hold the connection open.
struct Timers {
    first_frame: Option<Duration>,
    idle: Option<Duration>,
    /// Whether the sleep means anything.
    armed: bool,
    /// Whether no authentic frame has come yet (and one is awaited).
    waiting_first: bool,
    /// When the last authentic frame came.
    last_frame: Instant,
}

impl Timers {
    fn new(first_frame: Option<Duration>, idle: Option<Duration>) -> Self {
        Timers {
            first_frame,
            idle,
            armed: first_frame.is_some() || idle.is_some(),
            waiting_first: first_frame.is_some(),
            last_frame: Instant::now(),
        }
    }

    /// When the sleep first fires.
    fn first_deadline(&self) -> Instant {
        self.last_frame + self.first_frame.or(self.idle).unwrap_or(NEVER).min(NEVER)
    }

    /// An authentic frame arrived: the first one turns the first-frame
    /// timer into the idle timer.
    fn authentic(&mut self, deadline: Pin<&mut Sleep>) {
        self.last_frame = Instant::now();
        if self.waiting_first {
            self.waiting_first = false;
            self.armed = self.idle.is_some();
            if let Some(idle) = self.idle {
                deadline.reset(self.last_frame + idle.min(NEVER));
            }
        }
    }

    /// The sleep fired: the end reason when the connection must close,
    /// otherwise the sleep is set again. A connection with handlers running
    /// or calls waiting (`busy`) is not idle.
    fn fired(
        &mut self,
        deadline: Pin<&mut Sleep>,
        busy: impl FnOnce() -> bool,
    ) -> Option<EndReason> {
        if self.waiting_first {
            return Some(EndReason::FirstFrameTimeout);
        }
        let Some(idle) = self.idle else {
            return Some(EndReason::IdleTimeout);
        };
        if self.last_frame + idle.min(NEVER) > Instant::now() {
            deadline.reset(self.last_frame + idle.min(NEVER));
            return None;
        }
        if !busy() {
            return Some(EndReason::IdleTimeout);
        }
        deadline.reset(crate::session::deadline_in(idle));
        None
    }
}
