//! The read loop: frames in, packets dispatched to pending calls or to
//! handlers (run in place until they wait, then as tasks of their own).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use futures_util::FutureExt as _;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::READ_CHUNK;
use crate::cipher::CipherError;
use crate::codec::{CodecError, FrameCodec};
use crate::config::{ENV_LOG_PACKETS, Limits, PacketLog};
use crate::error::SendError;
use crate::logging::{Escaped, Refusal};
use crate::packet::{ERROR_METHOD, ErrorCode, ErrorPayload, Packet, ReplyTo};
use crate::protocol::{Context, HandlerError, Protocol, Reply};
use crate::replay::{ReceivedToken, Verdict};
use crate::session::{EndReason, SessionHandle, Shared, packet_log, refusal_log, session_log};
use crate::sync::lock;

/// How many frames the read loop handles before it lets the session's other
/// tasks (the writer, handlers) run. Measured on the `pipe64` benchmark:
/// handling a whole burst of 64 requests before the first reply is written
/// leaves the peer idle meanwhile; 16 lets both ends work at once.
const FRAMES_PER_TURN: usize = 16;

/// The read loop's state.
pub(super) struct ReadLoop<P> {
    protocol: Arc<P>,
    shared: Arc<Shared>,
    codec: FrameCodec,
    handlers: Arc<Semaphore>,
    abort_handlers: CancellationToken,
    handlers_limit: usize,
    bad_in_row: u32,
    max_bad_in_row: u32,
    /// The plaintexts of a turn's frames, reused from turn to turn.
    plains: Vec<Vec<u8>>,
    /// Whether each of a turn's frames opened, and if so the time its
    /// token says it was made (see `Cipher::open_at`).
    opened: Vec<Result<Option<u64>, CipherError>>,
    /// The turn's tokens that opened, for the replay store.
    tokens: Vec<ReceivedToken>,
    /// The replay store's verdict on each of `tokens`.
    verdicts: Vec<Verdict>,
    /// Whether a frame that opened under the key (and passed the replay
    /// check) arrived since the read loop last looked: only such a frame
    /// counts as the first frame or restarts the idle timer.
    authentic: bool,
    /// How much of peer-chosen text (error messages) the log shows.
    full_logs: bool,
}

/// The largest plaintext buffer the read loop keeps between frames.
const KEEP_PLAIN: usize = 64 * 1024;

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
            handlers_limit: limits.max_concurrent_handlers,
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

    /// Cancels the handlers still running.
    pub(super) fn cancel_handlers(&self) {
        self.abort_handlers.cancel();
    }

    pub(super) async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        shutdown: &CancellationToken,
        first_frame: Option<Duration>,
        idle: Option<Duration>,
    ) -> EndReason {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let far = Duration::from_secs(86_400 * 365);
        let deadline = sleep_until(Instant::now() + first_frame.or(idle).unwrap_or(far));
        tokio::pin!(deadline);
        let mut armed = first_frame.is_some() || idle.is_some();
        let mut waiting_first = first_frame.is_some();
        // When the last authentic frame came; the idle deadline is moved to
        // match only when it fires, rather than the timer being reset for
        // every read. Frames that do not open under the key never move it:
        // without the key, a peer cannot hold the connection open.
        let mut last_frame = Instant::now();
        // Raised by `close`, a failed write or the server's shutdown.
        let shared = self.shared.clone();
        // The frames of one turn, and their tokens' fingerprints.
        let mut batch: Vec<BytesMut> = Vec::with_capacity(FRAMES_PER_TURN);
        let mut fingerprints: Vec<u64> = Vec::with_capacity(FRAMES_PER_TURN);
        loop {
            loop {
                // Take up to a turn's worth of frames, stopping at a codec
                // error so that it is handled after the frames before it.
                let mut failure = None;
                while batch.len() < FRAMES_PER_TURN {
                    match self.codec.decode(&mut buf) {
                        Ok(Some(frame)) => batch.push(frame),
                        Ok(None) => break,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                let full_turn = batch.len() == FRAMES_PER_TURN;
                if !batch.is_empty() {
                    if let Some(replay) = &self.shared.replay {
                        // Looking the whole turn up at once lets the
                        // memory reads of an in-process store overlap
                        // with opening the tokens.
                        fingerprints.clear();
                        let cipher = &self.shared.cipher;
                        fingerprints.extend(
                            batch
                                .iter()
                                .map(|frame| replay.fingerprint(cipher.identity(frame))),
                        );
                        replay.prefetch(&fingerprints);
                    }
                    let handled = self.on_turn(&batch, &fingerprints).await;
                    batch.clear();
                    if let Some(reason) = handled {
                        return reason;
                    }
                }
                match failure {
                    None if full_turn => {
                        // Let the replies of the frames handled so far go
                        // out before reading on: the peer can then work on
                        // them while this side handles the rest of a burst.
                        tokio::task::yield_now().await;
                    }
                    None => break,
                    Some(CodecError::FrameTooLong { max }) => {
                        crate::telemetry::bad_frame("over_long");
                        refusal_log!(
                            self.shared,
                            Refusal::OverLong,
                            "dropped a frame longer than {max} bytes; skipping to the next terminator"
                        );
                        if let Some(reason) = self.bad_frame() {
                            return reason;
                        }
                    }
                    Some(other) => return EndReason::ReadFailed(other.to_string()),
                }
            }
            if std::mem::take(&mut self.authentic) {
                last_frame = Instant::now();
                if waiting_first {
                    waiting_first = false;
                    armed = idle.is_some();
                    if let Some(idle) = idle {
                        deadline.as_mut().reset(last_frame + idle);
                    }
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
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
                    Ok(0) => {
                        if let Err(e) = self.codec.decode_eof(&mut buf) {
                            session_log!(warn, self.shared, "peer disconnected mid-frame: {e}");
                        }
                        return EndReason::PeerClosed;
                    }
                    Ok(read) => crate::telemetry::received(read),
                    Err(e) => return EndReason::ReadFailed(e.to_string()),
                },
                () = &mut deadline, if armed => {
                    if waiting_first {
                        return EndReason::FirstFrameTimeout;
                    }
                    let Some(idle) = idle else { return EndReason::IdleTimeout };
                    if last_frame + idle > Instant::now() {
                        deadline.as_mut().reset(last_frame + idle);
                        continue;
                    }
                    let busy = self.handlers_running() || self.shared.has_pending();
                    if !busy {
                        return EndReason::IdleTimeout;
                    }
                    deadline.as_mut().reset(Instant::now() + idle);
                }
            }
        }
    }

    /// Whether any handler is running (the semaphore never gains permits, so
    /// fewer available than the limit means some are held).
    fn handlers_running(&self) -> bool {
        self.handlers.available_permits() < self.handlers_limit
    }

    /// Counts a frame that failed to decrypt or was too long; returns the end
    /// reason when there have been too many in a row.
    fn bad_frame(&mut self) -> Option<EndReason> {
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

    /// Handles a turn's frames: opens them all as of one reading of the
    /// clock (they arrived together), asks the replay store about the ones
    /// that opened in one call, then handles them in order. `fingerprints`
    /// are their tokens' fingerprints when replay protection is on.
    async fn on_turn(&mut self, batch: &[BytesMut], fingerprints: &[u64]) -> Option<EndReason> {
        let now = SystemTime::now();
        if self.plains.len() < batch.len() {
            self.plains.resize_with(batch.len(), Vec::new);
        }
        self.opened.clear();
        for (frame, plain) in batch.iter().zip(&mut self.plains) {
            if plain.capacity() > KEEP_PLAIN {
                *plain = Vec::new();
            }
            plain.clear();
            self.opened
                .push(self.shared.cipher.open_at(frame, now, plain));
        }
        if let Some(replay) = &self.shared.replay {
            self.tokens.clear();
            for (opened, &fingerprint) in self.opened.iter().zip(fingerprints) {
                if let Ok(time) = *opened {
                    self.tokens.push(ReceivedToken { fingerprint, time });
                }
            }
            if !self.tokens.is_empty() {
                replay.received(&self.tokens, &mut self.verdicts).await;
            }
        }
        let mut verdicts = 0;
        for index in 0..batch.len() {
            if let Err(e) = &self.opened[index] {
                crate::telemetry::bad_frame(crate::telemetry::cipher_kind(e));
                // The peer is told nothing about why.
                refusal_log!(
                    self.shared,
                    Refusal::Undecryptable,
                    "dropped a frame that failed to decrypt: {e} ({} in a row)",
                    self.bad_in_row + 1
                );
                if let Some(reason) = self.bad_frame() {
                    return Some(reason);
                }
                continue;
            }
            if self.shared.replay.is_some() {
                // A store that answered short refused the rest.
                let verdict = self
                    .verdicts
                    .get(verdicts)
                    .copied()
                    .unwrap_or(Verdict::Unavailable);
                verdicts += 1;
                if verdict == Verdict::Unavailable {
                    // Not the peer's doing: the store could not check the
                    // token. It is not run, nor counted against the peer; a
                    // request is told so, to try again or elsewhere.
                    crate::telemetry::bad_frame(crate::telemetry::replay_kind(verdict));
                    refusal_log!(
                        self.shared,
                        Refusal::Unchecked,
                        "dropped {}; a request is answered `unavailable`",
                        verdict.describe()
                    );
                    self.answer_unchecked(&self.plains[index]).await;
                    continue;
                }
                if verdict != Verdict::New {
                    crate::telemetry::bad_frame(crate::telemetry::replay_kind(verdict));
                    refusal_log!(
                        self.shared,
                        Refusal::Replayed,
                        "dropped {} ({} bad frames in a row)",
                        verdict.describe(),
                        self.bad_in_row + 1
                    );
                    if let Some(reason) = self.bad_frame() {
                        return Some(reason);
                    }
                    continue;
                }
            }
            self.bad_in_row = 0;
            // Opened under the key: whatever it holds, the peer has the key.
            self.authentic = true;
            self.shared.note_received();
            match Packet::from_json(&self.plains[index]) {
                Ok(packet) => self.dispatch(packet).await,
                Err(e) => self.reject_invalid(&self.plains[index], &e).await,
            }
        }
        None
    }

    /// Answers an authentic plaintext that is not a valid packet with an
    /// `invalid_packet` error, addressed to it when its `peer` and `id` can
    /// be read, unless it looks like a reply or an error packet.
    async fn reject_invalid(&self, plain: &[u8], error: &serde_json::Error) {
        // serde's messages quote the plaintext: shown only with full packet
        // logs; by default, where the error is.
        if self.full_logs {
            let text = error.to_string();
            refusal_log!(
                self.shared,
                Refusal::InvalidPacket,
                "received an invalid packet: {}",
                Escaped::new(&text, LOG_ERROR_CHARS)
            );
        } else {
            refusal_log!(
                self.shared,
                Refusal::InvalidPacket,
                "received an invalid packet ({}; its text is logged with {}=full)",
                serde_place(error),
                crate::config::ENV_LOG_PACKETS
            );
        }
        let value: Value = serde_json::from_slice(plain).unwrap_or(Value::Null);
        let is_reply = value.get("reply_to").is_some_and(|v| !v.is_null());
        let is_error = value.get("method").and_then(Value::as_str) == Some(ERROR_METHOD);
        if is_reply || is_error {
            return;
        }
        let peer = value
            .get("peer")
            .and_then(Value::as_str)
            .and_then(|text| Uuid::parse_str(text).ok());
        let id = value.get("id").and_then(Value::as_u64);
        let reply_to = peer.zip(id).map(|(peer, id)| ReplyTo { peer, id });
        let method = value.get("method").and_then(Value::as_str);
        let payload = ErrorPayload {
            code: ErrorCode::InvalidPacket,
            message: format!("packet is not valid: {error}"),
            method: method.map(str::to_owned),
            data: None,
        };
        send_error(&self.handle(), payload, reply_to).await;
    }

    /// Answers a request whose token the replay store could not check with
    /// an `unavailable` error; a reply, an error packet or a plaintext that
    /// is no packet gets nothing.
    async fn answer_unchecked(&self, plain: &[u8]) {
        let Ok(packet) = Packet::from_json(plain) else {
            return;
        };
        if packet.is_reply() || packet.is_error() {
            return;
        }
        let payload = HandlerError::new(
            ErrorCode::Unavailable,
            "replay protection is unavailable here for now: nothing was run; \
             try again later or on another server",
        )
        .into_payload(&packet.method);
        send_error(&self.handle(), payload, Some(packet.reply_address())).await;
    }

    fn handle(&self) -> SessionHandle {
        SessionHandle::from_shared(self.shared.clone())
    }

    /// Hands a packet to the call it answers or to the protocol.
    async fn dispatch(&self, packet: Packet) {
        if let Some(to) = packet.reply_to
            && to.peer == self.shared.own_id
            && let Some(waiting) = self.shared.take_pending(to.id)
        {
            packet_log!(self.shared, "Received", packet);
            // The caller may have given up in the meantime; nothing to do then.
            let _ = waiting.send(packet);
            return;
        }
        packet_log!(self.shared, "Received", packet);
        // Replies and error packets are never answered with an error packet,
        // so two peers can never bounce errors back and forth.
        let answerable = !packet.is_reply() && !packet.is_error();
        if self.handlers.available_permits() == 0 {
            let message = format!(
                "{} handlers already running on this connection",
                self.handlers_limit
            );
            refusal_log!(
                self.shared,
                Refusal::Busy,
                "busy: {message}; `{}` refused",
                Escaped::method(&packet.method)
            );
            if answerable {
                let payload =
                    HandlerError::new(ErrorCode::Busy, message).into_payload(&packet.method);
                send_error(&self.handle(), payload, Some(packet.reply_address())).await;
            }
            return;
        }
        // A call says how long its caller waits: past that, the work is
        // dropped (counted from now, so the peers' clocks need not agree).
        let deadline = packet
            .timeout_ms
            .filter(|_| answerable)
            .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        let mut work = Box::pin(run_handler(
            self.protocol.clone(),
            self.handle(),
            packet,
            deadline,
        ));
        // Most handlers finish without waiting for anything: run them here,
        // without a task, a permit held or a cancellation watch of their own.
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if first.is_ready() {
            return;
        }
        // It waits: from here on it holds one of the handler slots. Only the
        // read loop takes slots (tasks give theirs back), and one was free
        // above, so this succeeds.
        let permit = self.handlers.clone().try_acquire_owned().ok();
        let abort = self.abort_handlers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let gave_up = async {
                match deadline {
                    Some(deadline) => sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            // Dropping `work` unfinished logs why.
            tokio::select! {
                biased;
                () = abort.cancelled() => {}
                () = work => {}
                () = gave_up => {}
            }
        });
    }
}

/// Sends an error packet; failures to send it are only logged.
async fn send_error(handle: &SessionHandle, payload: ErrorPayload, reply_to: Option<ReplyTo>) {
    let body = serde_json::to_value(&payload).unwrap_or(Value::Null);
    if let Err(e) = handle.send_new(ERROR_METHOD, body, reply_to).await {
        session_log!(debug, handle.shared, "could not send an error packet: {e}");
    }
}

/// Runs one handler to completion and sends what it returns.
async fn run_handler<P: Protocol>(
    protocol: Arc<P>,
    handle: SessionHandle,
    packet: Packet,
    deadline: Option<Instant>,
) {
    let mut unfinished = Unfinished {
        handle: &handle,
        method: packet.method.clone(),
        deadline,
        armed: true,
    };
    answer(protocol, &handle, packet, &unfinished.method, deadline).await;
    unfinished.armed = false;
}

/// Logs that a handler was dropped before it finished (its caller gave up,
/// or the session closed) when its future is dropped before the end.
struct Unfinished<'a> {
    handle: &'a SessionHandle,
    method: String,
    deadline: Option<Instant>,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self
            .deadline
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            session_log!(
                info,
                self.handle.shared,
                "handler of `{}` dropped: its caller has given up (the call's time limit passed)",
                Escaped::method(&self.method)
            );
        } else {
            session_log!(
                warn,
                self.handle.shared,
                "handler of `{}` cancelled: the session closed",
                Escaped::method(&self.method)
            );
        }
    }
}

/// Runs the handler of `packet` and sends its reply or error.
async fn answer<P: Protocol>(
    protocol: Arc<P>,
    handle: &SessionHandle,
    packet: Packet,
    method: &str,
    deadline: Option<Instant>,
) {
    // A reply or an error packet is not answered: what its handler returns
    // starts the next exchange instead (the seed's conversation style), and
    // its failures are only logged.
    let answerable = !packet.is_reply() && !packet.is_error();
    let reply_to = answerable.then(|| packet.reply_address());
    // What the error packet says: its payload is logged only with full
    // packet logs, its code always.
    let full_logs = handle.shared.packet_log == PacketLog::Full;
    let error_text = packet.is_error().then(|| {
        if full_logs {
            packet.payload.to_string()
        } else {
            let code = packet
                .error()
                .map_or(ErrorCode::Unknown, |error| error.code);
            format!("code {code}; its payload is logged with {ENV_LOG_PACKETS}=full")
        }
    });
    let ctx = Context::new(handle.clone(), packet.peer, packet.id, deadline);
    let started = crate::telemetry::TIMED.then(Instant::now);
    let outcome = AssertUnwindSafe(protocol.process_message(ctx, packet))
        .catch_unwind()
        .await;
    let took = started.map(|at| at.elapsed()).unwrap_or_default();
    let code = match &outcome {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.code.as_str()),
        Err(_) => Some(ErrorCode::HandlerPanicked.as_str()),
    };
    crate::telemetry::handled(method, took, code);
    let failure = match outcome {
        Ok(Ok(reply)) => {
            let sent = match reply {
                Reply::Nothing => return,
                Reply::Message { method, payload } => {
                    handle.send_new(method, payload, reply_to).await
                }
                Reply::Forward(mut forwarded) => {
                    forwarded.reply_to = reply_to;
                    handle.send(forwarded).await
                }
            };
            match sent {
                Ok(()) | Err(SendError::Closed) => return,
                Err(e) => HandlerError::failed(format!("the reply could not be sent: {e}")),
            }
        }
        Ok(Err(error)) => error,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            session_log!(
                error,
                handle.shared,
                "handler of `{}` panicked: {}",
                Escaped::method(method),
                Escaped::new(&detail, LOG_ERROR_CHARS)
            );
            HandlerError::new(
                ErrorCode::HandlerPanicked,
                format!("the handler of `{method}` panicked"),
            )
        }
    };
    match error_text {
        Some(text) if failure.code == ErrorCode::UnknownMethod => refusal_log!(
            handle.shared,
            Refusal::UnknownMethod,
            "dropped an error packet that answers no pending call (no `error` handler): {}",
            Escaped::new(&text, LOG_ERROR_CHARS)
        ),
        _ => log_failure(handle, method, &failure, full_logs),
    }
    if reply_to.is_some() {
        send_error(handle, failure.into_payload(method), reply_to).await;
    }
}

/// The most characters of an error message (or a panic's) a log line shows.
const LOG_ERROR_CHARS: usize = 512;

/// Logs that the handler of `method` failed: escaped, and without the
/// message of an `invalid_payload` error (serde's text quotes the payload)
/// unless packet logs are full; failures for unknown methods are refusals,
/// logged at most once a second.
fn log_failure(handle: &SessionHandle, method: &str, failure: &HandlerError, full_logs: bool) {
    let shown = Escaped::method(method);
    let code = failure.code;
    let message = if code == ErrorCode::InvalidPayload && !full_logs {
        format_args!("its text is logged with {ENV_LOG_PACKETS}=full").to_string()
    } else {
        Escaped::new(&failure.message, LOG_ERROR_CHARS).to_string()
    };
    if code == ErrorCode::UnknownMethod {
        refusal_log!(
            handle.shared,
            Refusal::UnknownMethod,
            "`{shown}` failed: {code}: {message}"
        );
        return;
    }
    match failure.detail() {
        Some(detail) => session_log!(
            warn,
            handle.shared,
            "`{shown}` failed: {code}: {message} ({})",
            Escaped::new(detail, LOG_ERROR_CHARS)
        ),
        None => session_log!(warn, handle.shared, "`{shown}` failed: {code}: {message}"),
    }
}

/// Where in the plaintext serde found fault, without its message (which
/// quotes the plaintext).
fn serde_place(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match error.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Data => "JSON that is not a packet",
        Category::Eof => "JSON cut short",
    };
    match error.line() {
        0 => kind.to_owned(),
        line => format!("{kind}, at line {line} column {}", error.column()),
    }
}
