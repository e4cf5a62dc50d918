//! [`Protocol`]: what a side does with each incoming packet.
//!
//! Servers and workers are both protocols. Write one by hand by implementing
//! [`Protocol::process_message`], or let `#[stream_rpc::service]` generate it
//! from an `impl` block.

use std::future::Future;
use std::net::SocketAddr;

use serde_json::Value;
use uuid::Uuid;

use crate::packet::{ErrorCode, ErrorPayload, Packet};
use crate::session::SessionHandle;

/// Processes each incoming packet of a connection and may answer it.
///
/// The engine calls `process_message` for every packet that does not
/// complete one of this side's pending calls, concurrently up to
/// [`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers).
/// What it returns decides what is sent back; see [`Reply`].
///
/// A handler starts on the connection's read loop and runs there until it
/// first waits; most handlers finish without waiting and cost no task of
/// their own. One that waits (a call to the peer, a timer, a lock) moves to
/// its own task and the connection reads on. So the part of a handler
/// before its first `.await` that waits holds up the connection's next
/// packets: put long computations in
/// [`tokio::task::spawn_blocking`](https://docs.rs/tokio/latest/tokio/task/fn.spawn_blocking.html),
/// or begin with `tokio::task::yield_now().await` to move off the read
/// loop at once.
///
/// ```
/// use stream_rpc::{Context, HandlerError, Packet, Protocol, Reply};
///
/// struct Echo;
///
/// impl Protocol for Echo {
///     async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
///         match packet.method.as_str() {
///             "echo" => Ok(Reply::message("echoed", packet.payload)),
///             "note" => Ok(Reply::Nothing),
///             other => Err(HandlerError::unknown_method(other)),
///         }
///     }
/// }
/// ```
pub trait Protocol: Send + Sync + 'static {
    /// The name shown in log lines; by default the type's name.
    fn name(&self) -> &str {
        let full = std::any::type_name::<Self>();
        let base = full.split('<').next().unwrap_or(full);
        base.rsplit("::").next().unwrap_or(base)
    }

    /// Handles one incoming packet.
    fn process_message(
        &self,
        ctx: Context,
        packet: Packet,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send;
}

/// A shared protocol serves as itself, so that the code that starts a
/// server can keep a handle on the state its handlers change:
/// `server.serve(Arc::clone(&state))`.
impl<P: Protocol> Protocol for std::sync::Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn process_message(
        &self,
        ctx: Context,
        packet: Packet,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send {
        (**self).process_message(ctx, packet)
    }
}

/// The protocol of a program that only makes calls
/// (`connector.connect(())`): it
/// serves nothing, so every request the peer sends gets `unknown_method`
/// (replies and error packets that complete no call are dropped, as
/// always).
impl Protocol for () {
    fn name(&self) -> &str {
        "Client"
    }

    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        Err(HandlerError::unknown_method(&packet.method))
    }
}

/// What a handler sends back.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// Nothing: the packet was a notification.
    Nothing,
    /// A new packet from this side with this method and payload. It answers
    /// the incoming packet (carries `reply_to`) unless that packet was itself
    /// a reply, in which case it starts the next exchange of the conversation.
    Message {
        /// The reply's method, e.g. `pong`.
        method: String,
        /// The reply's payload.
        payload: Value,
    },
    /// A stored packet sent as it is (its own `peer`, `id`, `created_at`,
    /// `method` and `payload`), with `reply_to` set as for `Message`.
    Forward(Packet),
}

impl Reply {
    /// A reply with this method and payload.
    pub fn message(method: impl Into<String>, payload: Value) -> Reply {
        Reply::Message {
            method: method.into(),
            payload,
        }
    }
}

/// A handler's failure, sent to the peer as an error packet when the peer
/// is waiting for an answer.
///
/// The `code`, `message` and `data` are sent; the
/// [`detail`](Self::detail) stays in this side's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// The error packet's code.
    pub code: ErrorCode,
    /// The error packet's message, shown to the peer.
    pub message: String,
    /// The error packet's `data`: a typed service error as JSON.
    pub data: Option<Value>,
    /// Logged on this side, never sent.
    detail: Option<String>,
}

impl HandlerError {
    /// An error with any code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HandlerError {
            code,
            message: message.into(),
            data: None,
            detail: None,
        }
    }

    /// The same error carrying `data` in its error packet (the JSON of a
    /// typed service error).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The same error with a text for this side's log only: the peer never
    /// sees it.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The text for this side's log only, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// No handler takes `method`.
    pub fn unknown_method(method: &str) -> Self {
        HandlerError::new(
            ErrorCode::UnknownMethod,
            format!("unknown method `{method}`"),
        )
    }

    /// The payload of `method` does not fit; `reason` says why (e.g. the
    /// serde error).
    pub fn invalid_payload(method: &str, reason: impl std::fmt::Display) -> Self {
        HandlerError::new(
            ErrorCode::InvalidPayload,
            format!("invalid payload for `{method}`: {reason}"),
        )
    }

    /// The handler failed; `message` is shown to the peer.
    pub fn failed(message: impl Into<String>) -> Self {
        HandlerError::new(ErrorCode::HandlerError, message)
    }

    pub(crate) fn into_payload(self, method: &str) -> ErrorPayload {
        ErrorPayload {
            code: self.code,
            message: self.message,
            method: Some(method.to_owned()),
            data: self.data,
        }
    }
}

/// What a handler knows about the packet it handles, and a way to talk to
/// the peer.
#[derive(Debug, Clone)]
pub struct Context {
    session: SessionHandle,
    sender: Uuid,
    request_id: u64,
    deadline: Option<tokio::time::Instant>,
}

impl Context {
    pub(crate) fn new(
        session: SessionHandle,
        sender: Uuid,
        request_id: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        Context {
            session,
            sender,
            request_id,
            deadline,
        }
    }

    /// When the caller gives up on this request, when it said (its
    /// `timeout_ms`, counted from when the request arrived). A handler still
    /// running then is dropped and nothing is sent back; a long handler can
    /// look at this to stop early by itself.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The session of this connection: send packets or make calls to the
    /// peer at any time, also after the handler returns.
    pub fn session(&self) -> &SessionHandle {
        &self.session
    }

    /// This side's own peer id.
    pub fn peer_id(&self) -> Uuid {
        self.session.peer_id()
    }

    /// The `peer` of the packet being handled (its creator).
    pub fn sender(&self) -> Uuid {
        self.sender
    }

    /// The `id` (request number) of the packet being handled.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The address of the other end of the connection, when it has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.session.remote_addr()
    }

    /// Builds a packet from this side with the next request number, the
    /// connection's version of the Python package's `create_message_packet`.
    pub fn packet(&self, method: impl Into<String>, payload: Value) -> Packet {
        self.session.packet(method, payload)
    }
}
