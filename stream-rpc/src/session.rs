//! The session engine: one per connection, the same for servers and workers.
//!
//! A session has three parts:
//! - the **read loop** (the task that runs [`Session::run`]) reads frames,
//!   decrypts and parses them, completes pending calls with replies and
//!   starts a handler task for every other packet;
//! - **handler tasks**, at most
//!   [`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers)
//!   at once, run [`Protocol::process_message`] and send what it returns;
//! - the **writer task** takes sealed frames from a bounded queue and writes
//!   them, batching whatever is queued into one write.
//!
//! Everything is a loop over frames: memory per connection stays flat however
//! long a conversation runs. [`SessionHandle`] is the cheap, cloneable way to
//! send packets and make calls on a session from anywhere.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt as _;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cipher::Cipher;
use crate::codec::{CodecError, FrameCodec};
use crate::config::Config;
use crate::error::{CallError, SendError};
use crate::packet::{ERROR_METHOD, ErrorCode, ErrorPayload, Packet, ReplyTo};
use crate::protocol::{Context, HandlerError, Protocol, Reply};

/// Logs with the two fields the seed's format shows: protocol name and own peer id.
macro_rules! session_log {
    ($level:ident, $shared:expr, $($rest:tt)+) => {
        tracing::$level!(
            protocol = &*$shared.protocol_name,
            peer = %$shared.own_id,
            $($rest)+
        )
    };
}

/// How much the read buffer grows by when it is full.
const READ_CHUNK: usize = 16 * 1024;
/// The writer writes once this much is batched, even if more is queued.
const WRITE_BATCH: usize = 64 * 1024;

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
    /// [`SessionHandle::close`] was called.
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

/// State shared by the session's tasks and every [`SessionHandle`].
struct Shared {
    own_id: Uuid,
    remote_addr: Option<SocketAddr>,
    protocol_name: Box<str>,
    cipher: Arc<dyn Cipher>,
    max_frame_len: usize,
    call_timeout: Duration,
    next_id: AtomicU64,
    /// Calls awaiting replies, by request number; `None` once the session ended.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Packet>>>>,
    call_slots: Semaphore,
    outgoing: mpsc::Sender<Vec<u8>>,
    /// Set when the session winds down: no more sends are accepted.
    closing: AtomicBool,
    /// Asks the read loop to stop, with the first reason given.
    stop: CancellationToken,
    stop_reason: Mutex<Option<EndReason>>,
    /// Cancelled when the session has fully ended.
    ended: CancellationToken,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it
/// (every critical section here leaves the data consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn request_stop(&self, reason: EndReason) {
        lock(&self.stop_reason).get_or_insert(reason);
        self.stop.cancel();
    }

    fn take_pending(&self, id: u64) -> Option<oneshot::Sender<Packet>> {
        lock(&self.pending).as_mut()?.remove(&id)
    }

    fn has_pending(&self) -> bool {
        lock(&self.pending)
            .as_ref()
            .is_some_and(|map| !map.is_empty())
    }
}

/// A cloneable handle to one session: send packets and make calls to the
/// peer, from handlers or from anywhere else.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("peer_id", &self.shared.own_id)
            .field("remote_addr", &self.shared.remote_addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Removes a call's entry from the pending map when the call ends in any
/// way, including when its future is dropped.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.take_pending(self.id);
    }
}

impl SessionHandle {
    /// This side's peer id.
    pub fn peer_id(&self) -> Uuid {
        self.shared.own_id
    }

    /// The address of the other end, when the transport has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// Whether the session is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Builds a packet from this side with the next request number.
    pub fn packet(&self, method: impl Into<String>, payload: Value) -> Packet {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        Packet::new(self.shared.own_id, id, method, payload)
    }

    /// Seals and queues a packet. Waits while the outgoing queue is full.
    pub async fn send(&self, packet: Packet) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let json = packet
            .to_json()
            .map_err(|e| SendError::Encode(e.to_string()))?;
        let token = self.shared.cipher.encrypt(&json)?;
        if token.len() > self.shared.max_frame_len {
            return Err(SendError::TooLarge {
                len: token.len(),
                max: self.shared.max_frame_len,
            });
        }
        session_log!(info, self.shared, "Send: {packet}");
        self.shared
            .outgoing
            .send(token)
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Sends a new packet with this method and payload, expecting no reply.
    pub async fn notify(&self, method: &str, payload: Value) -> Result<(), SendError> {
        self.send(self.packet(method, payload)).await
    }

    /// Sends a request and waits for its reply, up to the configured
    /// [`Timeouts::call`](crate::Timeouts::call).
    ///
    /// An error packet in reply becomes [`CallError::Remote`].
    pub async fn call(&self, method: &str, payload: Value) -> Result<Packet, CallError> {
        self.call_with_timeout(method, payload, self.shared.call_timeout)
            .await
    }

    /// [`call`](Self::call) with its own time limit. The limit covers waiting
    /// for a call slot, sending, and waiting for the reply.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> Result<Packet, CallError> {
        let deadline = Instant::now() + limit;
        let timed_out = || CallError::Timeout {
            method: method.to_owned(),
            after: limit,
        };
        let lost = || CallError::ConnectionLost {
            method: method.to_owned(),
        };
        let _slot = match timeout_at(deadline, self.shared.call_slots.acquire()).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(lost()),
            Ok(Ok(slot)) => slot,
        };
        let packet = self.packet(method, payload);
        let (tx, rx) = oneshot::channel();
        match lock(&self.shared.pending).as_mut() {
            Some(pending) => pending.insert(packet.id, tx),
            None => return Err(lost()),
        };
        let _guard = PendingGuard {
            shared: &self.shared,
            id: packet.id,
        };
        match timeout_at(deadline, self.send(packet)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(SendError::Closed)) => return Err(lost()),
            Ok(Err(e)) => return Err(CallError::Send(e)),
            Ok(Ok(())) => {}
        }
        let reply = match timeout_at(deadline, rx).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(lost()),
            Ok(Ok(reply)) => reply,
        };
        if reply.is_error() {
            let error = reply.error().unwrap_or_else(|| ErrorPayload {
                code: ErrorCode::Unknown,
                message: format!("malformed error packet: {}", reply.payload),
                method: None,
            });
            return Err(CallError::Remote {
                method: method.to_owned(),
                code: error.code,
                message: error.message,
            });
        }
        Ok(reply)
    }

    /// Asks the session to close: it stops reading, lets running handlers
    /// finish within the shutdown grace period, flushes and closes.
    pub fn close(&self) {
        self.shared.request_stop(EndReason::Closed);
    }

    /// Waits until the session has ended.
    pub async fn closed(&self) {
        self.shared.ended.cancelled().await;
    }
}

/// One connection's engine, ready to run over a reader and a writer.
pub struct Session<P> {
    protocol: Arc<P>,
    shared: Arc<Shared>,
    outgoing: mpsc::Receiver<Vec<u8>>,
    config: Arc<Config>,
    role: Role,
}

impl<P> fmt::Debug for Session<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer_id", &self.shared.own_id)
            .field("remote_addr", &self.shared.remote_addr)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Session<P> {
    /// Prepares a session; nothing happens until [`Session::run`].
    pub fn new(
        protocol: Arc<P>,
        config: Arc<Config>,
        role: Role,
        remote_addr: Option<SocketAddr>,
    ) -> Self {
        let limits = config.limits();
        let (tx, rx) = mpsc::channel(limits.outgoing_queue);
        let shared = Arc::new(Shared {
            own_id: config.peer_id(),
            remote_addr,
            protocol_name: protocol.name().into(),
            cipher: config.cipher().clone(),
            max_frame_len: limits.max_frame_len,
            call_timeout: config.timeouts().call,
            next_id: AtomicU64::new(0),
            pending: Mutex::new(Some(HashMap::new())),
            call_slots: Semaphore::new(limits.max_in_flight_calls),
            outgoing: tx,
            closing: AtomicBool::new(false),
            stop: CancellationToken::new(),
            stop_reason: Mutex::new(None),
            ended: CancellationToken::new(),
        });
        Session {
            protocol,
            shared,
            outgoing: rx,
            config,
            role,
        }
    }

    /// A handle to this session, usable before and while it runs.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs the session until the peer leaves, `shutdown` is cancelled, a
    /// deadline passes or the connection breaks, then winds down: running
    /// handlers get the shutdown grace period (unless the connection broke),
    /// pending calls fail with [`CallError::ConnectionLost`], queued replies
    /// are flushed and the writer is shut down.
    pub async fn run<R, W>(self, reader: R, writer: W, shutdown: CancellationToken) -> EndReason
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Session {
            protocol,
            shared,
            outgoing,
            config,
            role,
        } = self;
        let limits = config.limits().clone();
        let timeouts = config.timeouts().clone();
        let codec = FrameCodec::new(config.terminator(), limits.max_frame_len);
        let writer_stop = CancellationToken::new();
        let writer_task = tokio::spawn(write_loop(
            writer,
            outgoing,
            codec.clone(),
            timeouts.write,
            writer_stop.clone(),
            shared.clone(),
        ));

        let mut reader_state = ReadLoop {
            protocol,
            shared: shared.clone(),
            codec,
            handlers: Arc::new(Semaphore::new(limits.max_concurrent_handlers)),
            abort_handlers: CancellationToken::new(),
            handlers_limit: limits.max_concurrent_handlers,
            bad_in_row: 0,
            max_bad_in_row: limits.max_bad_frames_in_row,
        };
        let first_frame = (role == Role::Server).then_some(timeouts.first_frame);
        let reason = reader_state
            .run(reader, &shutdown, first_frame, timeouts.idle)
            .await;
        session_log!(debug, shared, "session ending: {reason}");

        let graceful = matches!(
            reason,
            EndReason::PeerClosed | EndReason::Shutdown | EndReason::Closed
        );
        if graceful {
            let all = u32::try_from(limits.max_concurrent_handlers).unwrap_or(u32::MAX);
            let drained = timeout(
                timeouts.shutdown_grace,
                reader_state.handlers.acquire_many(all),
            )
            .await;
            if drained.is_err() {
                session_log!(
                    warn,
                    shared,
                    "handlers still running after the {:?} grace period are cancelled",
                    timeouts.shutdown_grace
                );
            }
        }
        reader_state.abort_handlers.cancel();
        shared.closing.store(true, Ordering::Release);
        lock(&shared.pending).take();
        shared.call_slots.close();
        writer_stop.cancel();
        if writer_task.await.is_err() {
            session_log!(error, shared, "the writer task failed");
        }
        shared.ended.cancel();
        reason
    }
}

/// The read loop's state.
struct ReadLoop<P> {
    protocol: Arc<P>,
    shared: Arc<Shared>,
    codec: FrameCodec,
    handlers: Arc<Semaphore>,
    abort_handlers: CancellationToken,
    handlers_limit: usize,
    bad_in_row: u32,
    max_bad_in_row: u32,
}

impl<P: Protocol> ReadLoop<P> {
    async fn run<R: AsyncRead + Unpin>(
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
        loop {
            loop {
                match self.codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        waiting_first = false;
                        armed = idle.is_some();
                        if let Some(idle) = idle {
                            deadline.as_mut().reset(Instant::now() + idle);
                        }
                        if let Some(reason) = self.on_frame(&frame).await {
                            return reason;
                        }
                    }
                    Ok(None) => break,
                    Err(CodecError::FrameTooLong { max }) => {
                        session_log!(
                            warn,
                            self.shared,
                            "dropped a frame longer than {max} bytes; skipping to the next terminator"
                        );
                        if let Some(reason) = self.bad_frame() {
                            return reason;
                        }
                    }
                    Err(other) => return EndReason::ReadFailed(other.to_string()),
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return EndReason::Shutdown,
                () = self.shared.stop.cancelled() => {
                    return lock(&self.shared.stop_reason).clone().unwrap_or(EndReason::Closed);
                }
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) => {
                        if let Err(e) = self.codec.decode_eof(&mut buf) {
                            session_log!(warn, self.shared, "peer disconnected mid-frame: {e}");
                        }
                        return EndReason::PeerClosed;
                    }
                    Ok(_) => {}
                    Err(e) => return EndReason::ReadFailed(e.to_string()),
                },
                () = &mut deadline, if armed => {
                    if waiting_first {
                        return EndReason::FirstFrameTimeout;
                    }
                    let Some(idle) = idle else { return EndReason::IdleTimeout };
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
                warn,
                self.shared,
                "closing the connection after {} bad frames in a row",
                self.bad_in_row
            );
            EndReason::TooManyBadFrames
        })
    }

    async fn on_frame(&mut self, frame: &[u8]) -> Option<EndReason> {
        let plain = match self.shared.cipher.decrypt(frame) {
            Ok(plain) => plain,
            Err(e) => {
                // The peer is told nothing about why.
                session_log!(
                    warn,
                    self.shared,
                    "dropped a frame that failed to decrypt: {e} ({} in a row)",
                    self.bad_in_row + 1
                );
                return self.bad_frame();
            }
        };
        self.bad_in_row = 0;
        match Packet::from_json(&plain) {
            Ok(packet) => self.dispatch(packet).await,
            Err(e) => self.reject_invalid(&plain, &e).await,
        }
        None
    }

    /// Answers an authentic plaintext that is not a valid packet with an
    /// `invalid_packet` error, addressed to it when its `peer` and `id` can
    /// be read, unless it looks like a reply or an error packet.
    async fn reject_invalid(&self, plain: &[u8], error: &serde_json::Error) {
        session_log!(warn, self.shared, "received an invalid packet: {error}");
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
        };
        send_error(&self.handle(), payload, reply_to).await;
    }

    fn handle(&self) -> SessionHandle {
        SessionHandle {
            shared: self.shared.clone(),
        }
    }

    async fn dispatch(&self, packet: Packet) {
        if let Some(to) = packet.reply_to
            && to.peer == self.shared.own_id
            && let Some(waiting) = self.shared.take_pending(to.id)
        {
            session_log!(info, self.shared, "Received: {packet}");
            // The caller may have given up in the meantime; nothing to do then.
            let _ = waiting.send(packet);
            return;
        }
        session_log!(info, self.shared, "Received: {packet}");
        if packet.is_error() {
            session_log!(
                warn,
                self.shared,
                "dropped an error packet that answers no pending call"
            );
            return;
        }
        let answerable = !packet.is_reply();
        let Ok(permit) = self.handlers.clone().try_acquire_owned() else {
            let message = format!(
                "{} handlers already running on this connection",
                self.handlers_limit
            );
            session_log!(
                warn,
                self.shared,
                "busy: {message}; `{}` refused",
                packet.method
            );
            if answerable {
                let payload =
                    HandlerError::new(ErrorCode::Busy, message).into_payload(&packet.method);
                send_error(&self.handle(), payload, Some(packet.reply_address())).await;
            }
            return;
        };
        tokio::spawn(run_handler(
            self.protocol.clone(),
            self.handle(),
            packet,
            self.abort_handlers.clone(),
            permit,
        ));
    }
}

/// Sends an error packet; failures to send it are only logged.
async fn send_error(handle: &SessionHandle, payload: ErrorPayload, reply_to: Option<ReplyTo>) {
    let body = serde_json::to_value(&payload).unwrap_or(Value::Null);
    let mut packet = handle.packet(ERROR_METHOD, body);
    packet.reply_to = reply_to;
    if let Err(e) = handle.send(packet).await {
        session_log!(debug, handle.shared, "could not send an error packet: {e}");
    }
}

/// Runs one handler to completion and sends what it returns.
async fn run_handler<P: Protocol>(
    protocol: Arc<P>,
    handle: SessionHandle,
    packet: Packet,
    abort: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let method = packet.method.clone();
    // A packet that is itself a reply is not answered: what its handler
    // returns starts the next exchange instead (the seed's conversation style).
    let reply_to = (!packet.is_reply()).then(|| packet.reply_address());
    let ctx = Context::new(handle.clone(), packet.peer, packet.id);
    let work = AssertUnwindSafe(protocol.process_message(ctx, packet)).catch_unwind();
    let outcome = tokio::select! {
        biased;
        () = abort.cancelled() => {
            session_log!(warn, handle.shared, "handler of `{method}` cancelled: the session closed");
            return;
        }
        outcome = work => outcome,
    };
    let failure = match outcome {
        Ok(Ok(Reply::Nothing)) => return,
        Ok(Ok(Reply::Message { method, payload })) => {
            let mut reply = handle.packet(method, payload);
            reply.reply_to = reply_to;
            match handle.send(reply).await {
                Ok(()) | Err(SendError::Closed) => return,
                Err(e) => HandlerError::failed(format!("the reply could not be sent: {e}")),
            }
        }
        Ok(Ok(Reply::Forward(mut forwarded))) => {
            forwarded.reply_to = reply_to;
            match handle.send(forwarded).await {
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
                "handler of `{method}` panicked: {detail}"
            );
            HandlerError::new(
                ErrorCode::HandlerPanicked,
                format!("the handler of `{method}` panicked"),
            )
        }
    };
    session_log!(warn, handle.shared, "`{method}` failed: {failure}");
    if reply_to.is_some() {
        send_error(&handle, failure.into_payload(&method), reply_to).await;
    }
}

/// Writes queued frames, batching whatever is queued into one write, until
/// stopped; then writes what is still queued and shuts the stream down.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
    mut codec: FrameCodec,
    deadline: Duration,
    stop: CancellationToken,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let frame = |codec: &mut FrameCodec, token: Vec<u8>, buf: &mut BytesMut| {
        if let Err(e) = codec.encode(token, buf) {
            session_log!(error, shared, "dropped an outgoing frame: {e}");
        }
    };
    let result: Result<(), String> = async {
        loop {
            let token = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                token = queue.recv() => match token {
                    Some(token) => token,
                    None => break,
                },
            };
            frame(&mut codec, token, &mut buf);
            while buf.len() < WRITE_BATCH {
                match queue.try_recv() {
                    Ok(token) => frame(&mut codec, token, &mut buf),
                    Err(_) => break,
                }
            }
            write_within(&mut writer, &buf, deadline).await?;
            buf.clear();
        }
        // Replies queued before the stop still go out.
        for _ in 0..queue.len() {
            match queue.try_recv() {
                Ok(token) => frame(&mut codec, token, &mut buf),
                Err(_) => break,
            }
        }
        write_within(&mut writer, &buf, deadline).await?;
        timeout(deadline, writer.shutdown())
            .await
            .map_err(|_| "shutdown timed out".to_owned())?
            .map_err(|e| e.to_string())
    }
    .await;
    queue.close();
    if let Err(e) = result {
        session_log!(warn, shared, "write failed: {e}");
        shared.request_stop(EndReason::WriteFailed(e));
    }
}

/// Writes and flushes `bytes` within `deadline`.
async fn write_within<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    deadline: Duration,
) -> Result<(), String> {
    let write = async {
        if !bytes.is_empty() {
            writer.write_all(bytes).await?;
        }
        writer.flush().await
    };
    match timeout(deadline, write).await {
        Err(_) => Err(format!("missed the {deadline:?} write deadline")),
        Ok(result) => result.map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Fernet;
    use serde_json::json;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, duplex};

    /// Answers `ping` with `pong`; everything else is unknown.
    struct Pong;

    impl Protocol for Pong {
        async fn process_message(
            &self,
            _ctx: Context,
            packet: Packet,
        ) -> Result<Reply, HandlerError> {
            match packet.method.as_str() {
                "ping" => Ok(Reply::message("pong", packet.payload)),
                other => Err(HandlerError::unknown_method(other)),
            }
        }
    }

    fn config() -> Arc<Config> {
        let key = Fernet::generate_key().unwrap();
        Arc::new(Config::builder().key(key).build().unwrap())
    }

    /// A session on one end of an in-memory pipe; the test holds the other end.
    fn start(
        config: &Arc<Config>,
    ) -> (
        SessionHandle,
        DuplexStream,
        tokio::task::JoinHandle<EndReason>,
    ) {
        let (ours, theirs) = duplex(64 * 1024);
        let session = Session::new(Arc::new(Pong), config.clone(), Role::Client, None);
        let handle = session.handle();
        let (reader, writer) = tokio::io::split(ours);
        let task = tokio::spawn(session.run(reader, writer, CancellationToken::new()));
        (handle, theirs, task)
    }

    async fn read_packet(
        config: &Config,
        reader: &mut BufReader<tokio::io::ReadHalf<DuplexStream>>,
    ) -> Packet {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let plain = config.cipher().decrypt(line.trim_end().as_bytes()).unwrap();
        Packet::from_json(&plain).unwrap()
    }

    async fn write_packet(
        config: &Config,
        writer: &mut tokio::io::WriteHalf<DuplexStream>,
        packet: &Packet,
    ) {
        let mut token = config.cipher().encrypt(&packet.to_json().unwrap()).unwrap();
        token.push(b'\n');
        writer.write_all(&token).await.unwrap();
    }

    #[tokio::test]
    async fn a_reply_completes_only_the_call_it_names() {
        let config = config();
        let (handle, theirs, _task) = start(&config);
        let (read, mut write) = tokio::io::split(theirs);
        let mut read = BufReader::new(read);
        let caller = handle.clone();
        let call = tokio::spawn(async move { caller.call("ask", json!(1)).await });
        let request = read_packet(&config, &mut read).await;
        assert_eq!((request.method.as_str(), request.reply_to), ("ask", None));

        let other = Uuid::new_v4();
        // Names the right id but another peer: not an answer to the call;
        // it is dispatched, and as a reply it gets no error back.
        let mut wrong_peer = Packet::new(other, 1, "answer", json!("wrong"));
        wrong_peer.reply_to = Some(ReplyTo {
            peer: other,
            id: request.id,
        });
        write_packet(&config, &mut write, &wrong_peer).await;
        // Names the call exactly: completes it.
        let mut right = Packet::new(other, 2, "answer", json!("right"));
        right.reply_to = Some(request.reply_address());
        write_packet(&config, &mut write, &right).await;
        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply.payload, json!("right"));
        // The same reply again completes nothing and is not answered with an error.
        write_packet(&config, &mut write, &right).await;
        let ping = Packet::new(other, 3, "ping", json!("after"));
        write_packet(&config, &mut write, &ping).await;
        let next = read_packet(&config, &mut read).await;
        assert_eq!(
            (next.method.as_str(), next.payload),
            ("pong", json!("after"))
        );
        assert!(!handle.shared.has_pending());
    }

    #[tokio::test]
    async fn a_dropped_call_leaves_nothing_pending() {
        let config = config();
        let (handle, theirs, _task) = start(&config);
        let (read, _write) = tokio::io::split(theirs);
        let mut read = BufReader::new(read);
        let caller = handle.clone();
        let call = tokio::spawn(async move { caller.call("ask", json!(null)).await });
        read_packet(&config, &mut read).await;
        assert!(handle.shared.has_pending());
        call.abort();
        let _ = call.await;
        assert!(!handle.shared.has_pending());
    }

    #[tokio::test]
    async fn after_the_session_ends_calls_and_sends_fail_fast() {
        let config = config();
        let (handle, theirs, task) = start(&config);
        drop(theirs);
        assert_eq!(task.await.unwrap(), EndReason::PeerClosed);
        handle.closed().await;
        assert!(handle.is_closed());
        let err = handle.call("ask", json!(null)).await.unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost { .. }), "{err}");
        assert_eq!(
            handle.notify("x", json!(null)).await,
            Err(SendError::Closed)
        );
    }

    #[tokio::test]
    async fn request_numbers_count_up_per_session() {
        let config = config();
        let (handle, _theirs, _task) = start(&config);
        let ids: Vec<u64> = (0..5).map(|_| handle.packet("m", json!(null)).id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert_eq!(handle.packet("m", json!(null)).peer, config.peer_id());
    }

    #[tokio::test]
    async fn every_round_of_a_long_conversation_is_answered_in_order() {
        let config = config();
        let (_handle, theirs, _task) = start(&config);
        let (read, mut write) = tokio::io::split(theirs);
        let mut read = BufReader::new(read);
        let peer = Uuid::new_v4();
        for round in 0..500u64 {
            let ping = Packet::new(peer, round, "ping", json!(round));
            write_packet(&config, &mut write, &ping).await;
            let pong = read_packet(&config, &mut read).await;
            assert_eq!(pong.reply_to, Some(ping.reply_address()));
        }
    }
}
