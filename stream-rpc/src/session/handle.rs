//! [`SessionHandle`]: sending packets and making calls on a session.

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
use crate::cipher::{CipherError, Fernet, Sealer, Unsealed};
use crate::codec::FrameCodec;
use crate::config::PacketLog;
use crate::endpoint::Endpoint;
use crate::error::{CallError, SendError};
use crate::logging::Budget;
use crate::packet::{ErrorCode, ErrorPayload, Packet, ReplyTo};
use crate::replay::ReplayStore;
use crate::sync::lock;

/// State shared by the session's tasks and every [`SessionHandle`].
pub(crate) struct Shared {
    pub(crate) own_id: Uuid,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) protocol_name: Box<str>,
    pub(crate) cipher: Sealer,
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
    /// Sealed frames waiting for the writer.
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
}

/// A message that waits for room in the outbox.
enum Deferred {
    /// A custom cipher's token, and its replay fingerprint.
    Sealed(Vec<u8>, Option<u64>),
    /// A plaintext for the writer to seal.
    Unsealed(Vec<u8>, Unsealed),
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
        // 2^64 divided by the golden ratio: consecutive numbers land far
        // apart in the high bits, which the table uses.
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The error for a frame the outbox refused (other than for being full).
fn refused_error(refused: Refused) -> SendError {
    match refused {
        Refused::Full | Refused::Closed => SendError::Closed,
        Refused::Unframeable(e) => SendError::Cipher(CipherError::Other(format!(
            "the token cannot be framed: {e}"
        ))),
    }
}

/// The largest sealing buffer a thread keeps between messages.
const KEEP_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Each thread's buffers for the JSON and the token of the packet it is
    /// sealing (never held across an await).
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `seal` with this thread's two sealing buffers, emptied.
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
        Shared {
            own_id: endpoint.peer_id(),
            remote_addr,
            protocol_name: protocol_name.into(),
            cipher: config.sealer.clone(),
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
            packet_log: config.log_packets(),
            packet_lines: Budget::new(super::PACKET_LINES_PER_SECOND),
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
    /// is late (see [`gave_up_on`](Self::gave_up_on)).
    pub(crate) fn give_up(&self, id: u64) {
        if self.take_pending(id).is_some() {
            lock(&self.gave_up).note(id);
        }
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
pub struct SessionHandle {
    pub(crate) shared: Arc<Shared>,
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
    /// Whether the entry may still be there.
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.give_up(self.id);
        }
    }
}

impl SessionHandle {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        SessionHandle { shared }
    }

    /// This side's peer id.
    pub fn peer_id(&self) -> Uuid {
        self.shared.own_id
    }

    /// The address of the other end, when the transport has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// How long [`call`](Self::call) waits for a reply: the configured
    /// [`Timeouts::call`](crate::Timeouts::call).
    pub fn call_timeout(&self) -> Duration {
        self.shared.call_timeout
    }

    /// Whether the session is closing or closed.
    pub fn is_closed(&self) -> bool {
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

    /// Seals and queues a packet. Waits while the outgoing queue is full.
    pub async fn send(&self, packet: Packet) -> Result<(), SendError> {
        self.send_at(&packet, SystemTime::now()).await
    }

    /// Sends a new packet from this side with this method, payload and
    /// `reply_to`, stamped and sealed with one reading of the clock.
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

    /// [`send`](Self::send), sealing the token as of `now`.
    async fn send_at(&self, packet: &Packet, now: SystemTime) -> Result<(), SendError> {
        match self.seal_and_queue(packet, now)? {
            None => Ok(()),
            Some(deferred) => self.queue_when_room(deferred).await,
        }
    }

    /// Queues a message that found the outbox full, once there is room.
    async fn queue_when_room(&self, deferred: Deferred) -> Result<(), SendError> {
        let size = match &deferred {
            Deferred::Sealed(token, _) => token.len(),
            Deferred::Unsealed(plain, _) => plain.len(),
        };
        loop {
            self.shared.outbox.room(size).await;
            let pushed = match &deferred {
                Deferred::Sealed(token, fingerprint) => {
                    self.shared.outbox.push(token, *fingerprint)
                }
                Deferred::Unsealed(plain, unsealed) => {
                    self.shared.outbox.push_unsealed(plain, *unsealed)
                }
            };
            match pushed {
                Ok(()) => return Ok(()),
                Err(Refused::Full) => {}
                Err(refused) => return Err(refused_error(refused)),
            }
        }
    }

    /// Encodes a packet, logs it, and queues it for the writer, which
    /// seals it (with a custom cipher, seals it here and queues the token);
    /// when the queue is full, returns the message to queue later. The JSON
    /// (and a custom cipher's token) are written in per-thread buffers, so a
    /// message costs no allocation of its own.
    fn seal_and_queue(
        &self,
        packet: &Packet,
        now: SystemTime,
    ) -> Result<Option<Deferred>, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        with_scratch(|json, token| {
            packet
                .write_json(json)
                .map_err(|e| SendError::Encode(e.to_string()))?;
            if self.shared.cipher.batch_sealer().is_some() {
                // Sealed by the writer, with this time and IV.
                let len = Fernet::token_len(json.len());
                if len > self.shared.max_frame_len {
                    return Err(SendError::TooLarge {
                        len,
                        max: self.shared.max_frame_len,
                    });
                }
                let unsealed = Unsealed::new(json.len(), now)?;
                #[cfg(test)]
                self.shared.cipher.note_sealed_at(now);
                packet_log!(self.shared, "Send", packet);
                return match self.shared.outbox.push_unsealed(json, unsealed) {
                    Ok(()) => Ok(None),
                    Err(Refused::Full) => Ok(Some(Deferred::Unsealed(json.clone(), unsealed))),
                    Err(refused) => Err(refused_error(refused)),
                };
            }
            self.shared.cipher.seal_at(json, now, token)?;
            if token.len() > self.shared.max_frame_len {
                return Err(SendError::TooLarge {
                    len: token.len(),
                    max: self.shared.max_frame_len,
                });
            }
            packet_log!(self.shared, "Send", packet);
            let fingerprint = self
                .shared
                .replay
                .as_ref()
                .map(|replay| replay.fingerprint(self.shared.cipher.identity(token)));
            match self.shared.outbox.push(token, fingerprint) {
                Ok(()) => Ok(None),
                Err(Refused::Full) => Ok(Some(Deferred::Sealed(token.clone(), fingerprint))),
                Err(refused) => Err(refused_error(refused)),
            }
        })
    }

    /// Sends a new packet with this method and payload, expecting no reply.
    pub async fn notify(&self, method: &str, payload: Value) -> Result<(), SendError> {
        self.send_new(method, payload, None).await
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
        let timed_out = || CallError::timed_out(method, limit);
        let lost = || CallError::lost(method);
        // A free slot and room in the outbox are the common case: they are
        // taken without setting up a timer.
        // `left` is what is left of the limit once a slot is held: the whole
        // limit when a slot was free, so the common case reads the clock once.
        let (_slot, left) = match self.shared.call_slots.try_acquire() {
            Ok(slot) => (slot, limit),
            Err(TryAcquireError::Closed) => return Err(lost()),
            Err(TryAcquireError::NoPermits) => {
                match within(deadline, self.shared.call_slots.acquire()).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(_)) => return Err(lost()),
                    Ok(Ok(slot)) => (slot, deadline.saturating_duration_since(Instant::now())),
                }
            }
        };
        let now = SystemTime::now();
        let mut packet = self.packet_at(method, payload, now);
        // The peer may drop the work once `left` (rounded up) has passed, as
        // this call will have given up by then.
        packet.timeout_ms =
            Some(u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX));
        let (tx, rx) = oneshot::channel();
        match lock(&self.shared.pending).as_mut() {
            Some(pending) => pending.insert(packet.id, tx),
            None => return Err(lost()),
        };
        let mut guard = PendingGuard {
            shared: &self.shared,
            id: packet.id,
            armed: true,
        };
        let _in_flight = InFlight::new();
        let queued = match self.seal_and_queue(&packet, now) {
            Ok(None) => Ok(()),
            Ok(Some(deferred)) => match within(deadline, self.queue_when_room(deferred)).await {
                Err(_) => return Err(timed_out()),
                Ok(queued) => queued,
            },
            Err(e) => Err(e),
        };
        match queued {
            Err(SendError::Closed) => return Err(lost()),
            Err(e) => return Err(CallError::Send(e)),
            Ok(()) => {}
        }
        let reply = match timeout_at(deadline, rx).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(lost()),
            Ok(Ok(reply)) => reply,
        };
        // The read loop took the entry out to answer it.
        guard.armed = false;
        if reply.is_error() {
            let error = reply.error().unwrap_or_else(|| ErrorPayload {
                code: ErrorCode::Unknown,
                message: format!("malformed error packet: {}", reply.payload),
                method: None,
                data: None,
            });
            return Err(CallError::Remote {
                method: method.to_owned(),
                code: error.code,
                message: error.message,
                data: error.data,
            });
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
