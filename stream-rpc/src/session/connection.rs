//! [`Connection`]: sending packets and making calls on a session.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::{Semaphore, TryAcquireError, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::outbox::{Outbox, Refused};
use super::signal::Signal;
use super::{EndReason, within};
use crate::caller::Call;
use crate::cipher::{Cipher, CipherError, Unsealed};
use crate::codec::FrameCodec;
use crate::endpoint::Endpoint;
use crate::error::{CallError, SendError};
use crate::logging::Budget;
use crate::logging::PacketLog;
use crate::packet::{Packet, ReplyTo};
use crate::replay::ReplayStore;
use crate::sync::lock;

/// State shared by the session's tasks and every [`Connection`].
pub(crate) struct Shared {
    /// Unique to this connection in the process ([`Connection::id`]).
    pub(crate) connection_id: u64,
    pub(crate) own_id: Uuid,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) protocol_name: Box<str>,
    pub(crate) cipher: Arc<dyn Cipher>,
    pub(crate) max_frame_len: usize,
    pub(crate) call_timeout: Duration,
    /// The endpoint this session belongs to: it numbers the packets.
    pub(crate) endpoint: Endpoint,
    /// Calls awaiting replies, by request number; `None` once the session ended.
    pub(crate) pending: Mutex<Option<PendingCalls>>,
    /// The latest calls that gave up waiting, so that their late replies
    /// are dropped rather than handled as new packets.
    gave_up: Mutex<GaveUp>,
    pub(crate) call_slots: Semaphore,
    /// Messages waiting for the writer, which seals (or frames) them.
    pub(crate) outbox: Outbox,
    /// Set when the session winds down: no more sends are accepted.
    pub(crate) closing: AtomicBool,
    /// Asks the read loop to stop, with the first reason given.
    pub(crate) stop: Signal,
    pub(crate) stop_reason: Mutex<Option<EndReason>>,
    /// Cancelled when the session has fully ended.
    pub(crate) ended: CancellationToken,
    /// The endpoint's replay and reflection cache, when turned on.
    pub(crate) replay: Option<Arc<dyn ReplayStore>>,
    /// Set once the first authentic packet arrived.
    pub(crate) received: AtomicBool,
    /// How much of each packet the log lines show.
    pub(crate) packet_log: PacketLog,
    /// The packet lines this connection may still write this second.
    pub(crate) packet_lines: Budget,
    /// The streams open on this connection.
    pub(crate) streams: super::streams::Streams,
    /// [`Limits::stream_window`](crate::Limits::stream_window).
    pub(crate) stream_window: u32,
    /// [`Limits::stream_window_bytes`](crate::Limits::stream_window_bytes).
    pub(crate) stream_window_bytes: usize,
}

/// A message that waits for room in the outbox.
enum Deferred {
    /// A plaintext for the writer to seal.
    Plaintext(Vec<u8>, Unsealed),
    /// A token its sender sealed.
    Token(Vec<u8>),
}

/// The calls awaiting replies, by the request number this side gave them.
pub(crate) type PendingCalls = HashMap<u64, oneshot::Sender<Packet>, BuildHasherDefault<IdHasher>>;

/// How many of the calls that gave up a session remembers (the latest).
const GAVE_UP_KEPT: usize = 1024;

/// The request numbers of the latest calls that gave up waiting (timed
/// out, or dropped by their caller) before their reply came: at most
/// [`GAVE_UP_KEPT`], the oldest forgotten first.
#[derive(Default)]
struct GaveUp(std::collections::VecDeque<u64>);

impl GaveUp {
    fn note(&mut self, id: u64) {
        if self.0.len() == GAVE_UP_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(id);
    }

    fn contains(&self, id: u64) -> bool {
        self.0.contains(&id)
    }
}

/// Hashes a request number with one multiplication (Fibonacci hashing)
/// instead of SipHash. The keys are this side's own request numbers, so
/// the peer cannot choose them to collide; it can only look them up.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed, through `write_u64`; this keeps the
        // hasher correct for anything else.
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(GOLDEN_RATIO_64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// 2^64 divided by the golden ratio, rounded to an odd number: multiplied
/// by it, consecutive numbers land far apart in the high bits, which the
/// table uses.
const GOLDEN_RATIO_64: u64 = 0x9E37_79B9_7F4A_7C15;

/// The error for a frame the outbox refused (other than for being full).
fn refused_error(refused: Refused) -> SendError {
    match refused {
        Refused::Full | Refused::Closed => SendError::Closed,
        Refused::Unframeable(e) => SendError::Cipher(CipherError::Other(format!(
            "the token cannot be framed: {e}"
        ))),
    }
}

/// The largest JSON or token buffer a thread keeps between messages.
const KEEP_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Each thread's buffers for the JSON of the packet it is queuing and,
    /// for a cipher sealed by its senders, its token (never held across an
    /// await).
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `seal` with this thread's two buffers (JSON, token), emptied.
fn with_scratch<R>(seal: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> R) -> R {
    crate::scratch::with_taken(
        &SCRATCH,
        |(json, token)| {
            json.clear();
            token.clear();
            seal(json, token)
        },
        |(json, token)| json.capacity() <= KEEP_SCRATCH && token.capacity() <= KEEP_SCRATCH,
    )
}

impl Shared {
    pub(crate) fn new(
        endpoint: &Endpoint,
        protocol_name: &str,
        remote_addr: Option<SocketAddr>,
    ) -> Self {
        let config = endpoint.config();
        let limits = config.limits();
        let codec = FrameCodec::new(config.terminator(), limits.max_frame_len);
        // Numbers the connections of the process.
        static NEXT_CONNECTION_ID: std::sync::atomic::AtomicU64 =
            std::sync::atomic::AtomicU64::new(1);
        Shared {
            connection_id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            own_id: endpoint.local_id(),
            remote_addr,
            protocol_name: protocol_name.into(),
            cipher: config.cipher.clone(),
            max_frame_len: limits.max_frame_len,
            call_timeout: config.timeouts().call,
            endpoint: endpoint.clone(),
            pending: Mutex::new(Some(PendingCalls::default())),
            gave_up: Mutex::new(GaveUp::default()),
            call_slots: Semaphore::new(limits.max_in_flight_calls),
            outbox: Outbox::new(codec, limits.outgoing_queue, limits.max_outbox_bytes),
            closing: AtomicBool::new(false),
            stop: Signal::default(),
            stop_reason: Mutex::new(None),
            ended: CancellationToken::new(),
            replay: endpoint.replay().cloned(),
            received: AtomicBool::new(false),
            packet_log: PacketLog::current(),
            packet_lines: Budget::new(super::PACKET_LINES_PER_SECOND),
            streams: super::streams::Streams::new(endpoint.local_id(), limits.max_streams),
            stream_window: limits.stream_window,
            stream_window_bytes: limits.stream_window_bytes,
        }
    }

    /// What logs the packet lines a connection left out, once its second
    /// is over.
    pub(crate) fn packet_lines_left_out(&self) -> impl FnOnce(u64, Duration) + Send + 'static {
        let protocol = self.protocol_name.clone();
        let peer = self.own_id;
        move |count, over| {
            tracing::info!(
                target: crate::logging::PACKETS_TARGET,
                protocol = &*protocol,
                peer = %peer,
                "left out {count} packet lines in the last {:.1} s (at most {} a second per connection)",
                over.as_secs_f64(),
                super::PACKET_LINES_PER_SECOND
            );
        }
    }

    /// Nothing more can be sent: sends fail as closed at once.
    pub(crate) fn refuse_sends(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Winds down: no more sends, no more calls; waiting calls fail as lost.
    pub(crate) fn refuse_new_work(&self) {
        self.refuse_sends();
        lock(&self.pending).take();
        self.call_slots.close();
    }

    pub(crate) fn request_stop(&self, reason: EndReason) {
        lock(&self.stop_reason).get_or_insert(reason);
        self.stop.raise();
    }

    pub(crate) fn take_pending(&self, id: u64) -> Option<oneshot::Sender<Packet>> {
        lock(&self.pending).as_mut()?.remove(&id)
    }

    /// The call `id` stops waiting for its reply: a reply that still comes
    /// is late (see [`gave_up_on`](Self::gave_up_on)). Whether it was
    /// still waiting.
    pub(crate) fn give_up(&self, id: u64) -> bool {
        let waiting = self.take_pending(id).is_some();
        if waiting {
            lock(&self.gave_up).note(id);
        }
        waiting
    }

    /// Whether `id` is one of the latest calls that gave up waiting.
    pub(crate) fn gave_up_on(&self, id: u64) -> bool {
        lock(&self.gave_up).contains(id)
    }

    /// Notes that an authentic packet arrived.
    pub(crate) fn note_received(&self) {
        // Read first: after the first packet this is a read of a shared line,
        // not a write on every packet.
        if !self.received.load(Ordering::Relaxed) {
            self.received.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn has_pending(&self) -> bool {
        lock(&self.pending)
            .as_ref()
            .is_some_and(|map| !map.is_empty())
    }
}

/// A cloneable handle to one session: send packets and make calls to the
/// peer, from handlers or from anywhere else.
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("local_id", &self.shared.own_id)
            .field("remote_addr", &self.shared.remote_addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Removes a call's entry from the pending map when the call ends in any
/// way, including when its future is dropped; when the request was sent
/// and its reply had not come, tells the peer with `call.cancel`.
struct PendingGuard<'a> {
    connection: &'a Connection,
    id: u64,
    /// Whether the entry may still be there.
    armed: bool,
    /// Whether the request was queued for the peer.
    sent: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.connection.shared.give_up(self.id) && self.sent {
            self.connection.cancel_call(self.id);
        }
    }
}

impl Connection {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Connection { shared }
    }

    /// A number unique to this connection among the connections of this
    /// process (never reused): names the connection where its peer id and
    /// address do not (two connections of one peer, or none with an
    /// address). Every clone of the handle has the same one.
    pub fn id(&self) -> u64 {
        self.shared.connection_id
    }

    /// This side's peer id.
    pub fn local_id(&self) -> Uuid {
        self.shared.own_id
    }

    /// The address of the other end, when the transport has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// Whether the connection is closing or closed ([`close`](Self::close)
    /// was called, or it is ending for another reason): new calls on it are
    /// not sent.
    pub fn is_closed(&self) -> bool {
        self.shared.stop.is_raised() || self.sends_refused()
    }

    /// Whether sends fail at once (replies of running handlers still go out
    /// while a closing connection winds down, until this is so).
    fn sends_refused(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Builds a packet from this side with the endpoint's next request
    /// number (one sequence over all the endpoint's connections).
    pub fn packet(&self, method: impl Into<String>, payload: Value) -> Packet {
        self.packet_at(method, payload, SystemTime::now())
    }

    /// [`packet`](Self::packet) stamped with a time already read, to seal
    /// it with the same time.
    fn packet_at(&self, method: impl Into<String>, payload: Value, now: SystemTime) -> Packet {
        self.shared.endpoint.packet_at(method, payload, now)
    }

    /// Queues a packet for the connection's writer, which seals and writes
    /// it (a custom cipher that cannot tell its tokens' length is sealed
    /// here, so that its errors are returned). Waits while the outgoing
    /// queue is full.
    pub async fn send(&self, packet: Packet) -> Result<(), SendError> {
        self.send_at(&packet, SystemTime::now()).await
    }

    /// Sends a new packet from this side with this method, payload and
    /// `reply_to`: the packet and its token are stamped with one reading of
    /// the clock.
    pub(crate) async fn send_new(
        &self,
        method: impl Into<String>,
        payload: Value,
        reply_to: Option<ReplyTo>,
    ) -> Result<(), SendError> {
        let now = SystemTime::now();
        let mut packet = self.packet_at(method, payload, now);
        packet.reply_to = reply_to;
        self.send_at(&packet, now).await
    }

    /// Sends a notification: a new packet from this side with the call's
    /// method, payload and metadata, expecting no reply.
    pub(crate) async fn notify_call(&self, call: Call) -> Result<(), SendError> {
        let now = SystemTime::now();
        let mut packet = self.packet_at(call.method, call.payload, now);
        packet.meta = (!call.meta.is_empty()).then_some(call.meta);
        self.send_at(&packet, now).await
    }

    /// Sends a new stream frame from this side: the packet and its token
    /// stamped with one reading of the clock.
    pub(crate) async fn send_stream_frame(
        &self,
        method: &str,
        payload: Value,
        header: crate::packet::StreamHeader,
    ) -> Result<(), SendError> {
        let now = SystemTime::now();
        let mut packet = self.packet_at(method, payload, now);
        packet.stream = Some(header);
        self.send_at(&packet, now).await
    }

    /// [`send`](Self::send), the token stamped as of `now`.
    async fn send_at(&self, packet: &Packet, now: SystemTime) -> Result<(), SendError> {
        match self.seal_and_queue(packet, now)? {
            None => Ok(()),
            Some(deferred) => self.queue_when_room(deferred).await,
        }
    }

    /// Queues a packet without waiting: when the outgoing queue is full, a
    /// task queues it once there is room (outside a runtime it is dropped).
    /// For the frames that handles send from `Drop` and `poll` (credit,
    /// cancel, end), one per handle and few: a failure is only logged.
    pub(crate) fn send_soon(&self, packet: Packet) {
        match self.seal_and_queue(&packet, SystemTime::now()) {
            Ok(None) => {}
            Ok(Some(deferred)) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let connection = self.clone();
                    runtime.spawn(async move {
                        let _ = connection.queue_when_room(deferred).await;
                    });
                }
            }
            Err(e) => {
                super::session_log!(
                    debug,
                    self.shared,
                    "could not send `{}`: {e}",
                    packet.method
                );
            }
        }
    }

    /// Sends `call.cancel` for this side's request `id`, whose caller gave
    /// up before its reply came (PROTOCOL.md, "Cancelling a call"): at
    /// once or not at all (a full outgoing queue, a closed connection:
    /// logged at DEBUG).
    fn cancel_call(&self, id: u64) {
        let payload = serde_json::json!({"peer": self.shared.own_id, "id": id});
        let packet = self.packet(super::CALL_CANCEL, payload);
        match self.seal_and_queue(&packet, SystemTime::now()) {
            // A peer that does not know `call.cancel` answers it
            // `unknown_method`: a late reply to drop, not an error to log.
            Ok(None) => lock(&self.shared.gave_up).note(packet.id),
            Ok(Some(_)) => super::session_log!(
                debug,
                self.shared,
                "no `call.cancel` for call {id}: the outgoing queue is full"
            ),
            Err(e) => {
                super::session_log!(debug, self.shared, "no `call.cancel` for call {id}: {e}")
            }
        }
    }

    /// Queues a message that found the outbox full, once there is room.
    async fn queue_when_room(&self, deferred: Deferred) -> Result<(), SendError> {
        let size = match &deferred {
            Deferred::Plaintext(plain, _) => plain.len(),
            Deferred::Token(token) => token.len(),
        };
        loop {
            self.shared.outbox.room(size).await;
            let pushed = match &deferred {
                Deferred::Plaintext(plain, unsealed) => {
                    self.shared.outbox.push_plaintext(plain, *unsealed)
                }
                Deferred::Token(token) => self.shared.outbox.push_token(token),
            };
            match pushed {
                Ok(()) => return Ok(()),
                Err(Refused::Full) => {}
                Err(refused) => return Err(refused_error(refused)),
            }
        }
    }

    /// Encodes a packet, logs it, and queues it for the writer; when the
    /// queue is full, returns the message to queue later.
    ///
    /// A cipher that tells its tokens' length (Fernet) is sealed by the
    /// writer, a batch at a time: the plaintext is queued with the time
    /// `now`, once its token is known to fit a frame. Any other cipher is
    /// sealed here, a batch of one, so that its errors reach this sender,
    /// and its token is queued. The JSON (and the token) are written in
    /// per-thread buffers, so a message costs no allocation of its own.
    fn seal_and_queue(
        &self,
        packet: &Packet,
        now: SystemTime,
    ) -> Result<Option<Deferred>, SendError> {
        if self.sends_refused() {
            return Err(SendError::Closed);
        }
        let shared = &*self.shared;
        let too_large = |len| SendError::TooLarge {
            len,
            max: shared.max_frame_len,
        };
        with_scratch(|json, token| {
            packet
                .write_json(json)
                .map_err(|e| SendError::Encode(e.to_string()))?;
            let unsealed = Unsealed::new(json.len(), now);
            if let Some(len) = shared.cipher.token_len(json.len()) {
                if len > shared.max_frame_len {
                    return Err(too_large(len));
                }
                packet_log!(shared, "Send", packet);
                return match shared.outbox.push_plaintext(json, unsealed) {
                    Ok(()) => Ok(None),
                    Err(Refused::Full) => Ok(Some(Deferred::Plaintext(json.clone(), unsealed))),
                    Err(refused) => Err(refused_error(refused)),
                };
            }
            shared
                .cipher
                .seal_batch(json, &[unsealed], b"", token, &mut |_| {})?;
            if token.len() > shared.max_frame_len {
                return Err(too_large(token.len()));
            }
            packet_log!(shared, "Send", packet);
            match shared.outbox.push_token(token) {
                Ok(()) => Ok(None),
                Err(Refused::Full) => Ok(Some(Deferred::Token(token.clone()))),
                Err(refused) => Err(refused_error(refused)),
            }
        })
    }

    /// Sends a request and waits for its reply, for at most the call's time
    /// limit in all (the connection's call timeout when it sets none;
    /// waiting for a call slot and for room to send included); the
    /// [`Caller`](crate::Caller) methods of a connection. An error packet
    /// in reply becomes [`CallError::Remote`].
    pub(crate) async fn request(&self, call: Call) -> Result<Packet, CallError> {
        let Call {
            method,
            payload,
            meta,
            timeout,
            ..
        } = call;
        let limit = timeout.unwrap_or(self.shared.call_timeout);
        let deadline = super::deadline_in(limit);
        let closed = |method: &str| CallError::not_sent(method, SendError::Closed);
        // No slot or no room for the whole limit: nothing was sent.
        let no_room =
            |method: &str| CallError::not_sent(method, SendError::NoRoom { waited: limit });
        if self.is_closed() {
            return Err(closed(&method));
        }
        // A free slot and room in the outbox are the common case: they are
        // taken without setting up a timer.
        // `left` is what is left of the limit once a slot is held: the whole
        // limit when a slot was free, so the common case reads the clock once.
        let (_slot, left) = match self.shared.call_slots.try_acquire() {
            Ok(slot) => (slot, limit),
            Err(TryAcquireError::Closed) => return Err(closed(&method)),
            Err(TryAcquireError::NoPermits) => {
                match within(deadline, self.shared.call_slots.acquire()).await {
                    Err(_) => return Err(no_room(&method)),
                    Ok(Err(_)) => return Err(closed(&method)),
                    Ok(Ok(slot)) => (slot, deadline.saturating_duration_since(Instant::now())),
                }
            }
        };
        let now = SystemTime::now();
        // The method's text moves into the packet: no copy of it is made.
        let mut packet = self.packet_at(method, payload, now);
        packet.meta = (!meta.is_empty()).then_some(meta);
        let method = &*packet.method;
        // The peer may drop the work once `left` (rounded up) has passed, as
        // this call will have given up by then.
        packet.timeout_ms =
            Some(u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX));
        let (tx, rx) = oneshot::channel();
        match lock(&self.shared.pending).as_mut() {
            Some(pending) => pending.insert(packet.id, tx),
            None => return Err(closed(method)),
        };
        let mut guard = PendingGuard {
            connection: self,
            id: packet.id,
            armed: true,
            sent: false,
        };
        let _in_flight = InFlight::new();
        let queued = match self.seal_and_queue(&packet, now) {
            Ok(None) => Ok(()),
            Ok(Some(deferred)) => match within(deadline, self.queue_when_room(deferred)).await {
                Err(_) => return Err(no_room(method)),
                Ok(queued) => queued,
            },
            Err(e) => Err(e),
        };
        // A refused send never reached the peer.
        queued.map_err(|e| CallError::not_sent(method, e))?;
        guard.sent = true;
        let reply = match timeout_at(deadline, rx).await {
            Err(_) => return Err(CallError::timed_out(method, limit)),
            Ok(Err(_)) => return Err(CallError::lost(method)),
            Ok(Ok(reply)) => reply,
        };
        // The read loop took the entry out to answer it.
        guard.armed = false;
        if reply.is_error() {
            return Err(CallError::from_error_packet(method, &reply));
        }
        Ok(reply)
    }

    /// Whether the peer sent at least one authentic packet on this session.
    pub(crate) fn has_received(&self) -> bool {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Asks the session to close: it stops reading, lets running handlers
    /// finish within the shutdown grace period, flushes and closes.
    pub fn close(&self) {
        self.shared.request_stop(EndReason::Closed);
    }

    /// How many streams are open on this connection (opened by either
    /// side; see [`Caller::open_stream`](crate::Caller::open_stream)).
    pub fn open_streams(&self) -> usize {
        self.shared.streams.len()
    }

    /// Waits until the session has ended.
    pub async fn closed(&self) {
        self.shared.ended.cancelled().await;
    }
}

/// Counts a call in `stream_rpc_calls_in_flight` while it waits for its
/// reply, whichever way it ends.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        crate::telemetry::calls_in_flight(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::telemetry::calls_in_flight(-1.0);
    }
}
