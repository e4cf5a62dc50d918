//! [`Protocol`]: what a side does with each incoming packet, and the
//! [`Context`] its handlers run in.
//!
//! Servers and workers are both protocols. Write one by hand by implementing
//! [`Protocol::process_message`], or let `#[stream_rpc::service]` generate it
//! from an `impl` block.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::caller::{Call, Caller};
use crate::error::{CallError, SendError};
use crate::metadata::Metadata;
use crate::packet::{ErrorCode, ErrorPayload, Packet};
use crate::session::Connection;
use crate::stream::StreamIo;

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

    /// Handles the open of a stream (a packet with a `stream` field:
    /// PROTOCOL.md, "Streams"): reads input items from
    /// [`io.input()`](StreamIo::input), sends output items through
    /// [`io.output()`](StreamIo::output), and returns the call's reply
    /// payload (sent as `<method>.reply` after the last item), or its error.
    ///
    /// The future is dropped when the opener cancels, the open's
    /// `timeout_ms` passes, a rule of the protocol is broken or the
    /// connection closes. By default every open is refused with
    /// `not_a_stream` ([`HandlerError::not_a_stream`]); a protocol that
    /// serves streams answers an open of a method it does not know with
    /// [`HandlerError::unknown_method`], of a plain method with
    /// `not_a_stream`, and a plain call to a stream method (in
    /// `process_message`) with [`HandlerError::stream_required`]. See
    /// [`StreamIo`] for an example.
    fn process_stream(
        &self,
        ctx: Context,
        packet: Packet,
        io: StreamIo,
    ) -> impl Future<Output = Result<Value, HandlerError>> + Send {
        let _ = (ctx, io);
        std::future::ready(Err(HandlerError::not_a_stream(&packet.method)))
    }
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

    fn process_stream(
        &self,
        ctx: Context,
        packet: Packet,
        io: StreamIo,
    ) -> impl Future<Output = Result<Value, HandlerError>> + Send {
        (**self).process_stream(ctx, packet, io)
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
///
/// A `handler_error` a handler returns is the method's own answer (a
/// typed service error, a validation failure): it is logged at DEBUG,
/// without its message or data. One with a [`detail`](Self::detail), a
/// panic, or a reply that cannot be sent is a failure of this side, logged
/// at WARNING (a panic at ERROR).
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
    /// The error packet's `retry` (see [`with_retry`](Self::with_retry)).
    retry: Option<bool>,
}

impl HandlerError {
    /// An error with any code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HandlerError {
            code,
            message: message.into(),
            data: None,
            detail: None,
            retry: None,
        }
    }

    /// The same error carrying `data` in its error packet (the JSON of a
    /// typed service error).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The same error with a text for this side's log only: the peer never
    /// sees it. It marks the error as a failure of this side, logged at
    /// WARNING with the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The same error saying whether trying again may succeed: `false`
    /// makes a task that fails with it go dead at once, without its
    /// remaining attempts; `true` lets the queue retry it by the task's
    /// policy (as saying nothing does). Sent as the error packet's
    /// `retry`.
    ///
    /// ```
    /// use stream_rpc::HandlerError;
    ///
    /// let error = HandlerError::failed("the article is gone").with_retry(false);
    /// assert_eq!(error.retry(), Some(false));
    /// ```
    pub fn with_retry(mut self, retry: bool) -> Self {
        self.retry = Some(retry);
        self
    }

    /// A `handler_error` that trying again cannot mend (`retry: false`):
    /// a task failing with it goes dead at once.
    ///
    /// ```
    /// use stream_rpc::{ErrorCode, HandlerError};
    ///
    /// let error = HandlerError::permanent("no such article");
    /// assert_eq!((error.code, error.retry()), (ErrorCode::HandlerError, Some(false)));
    /// ```
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::failed(message).with_retry(false)
    }

    /// What the error says of trying again: `Some(false)` final,
    /// `Some(true)` worth retrying, `None` nothing.
    pub fn retry(&self) -> Option<bool> {
        self.retry
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

    /// The refusal of a stream opened to a method that is not a stream
    /// method (`not_a_stream`: nothing was run).
    pub fn not_a_stream(method: &str) -> Self {
        HandlerError::new(
            ErrorCode::NotAStream,
            format!("`{method}` is not a stream method: call it without a stream"),
        )
    }

    /// The refusal of a plain call (no `stream` field) to a stream method
    /// (`stream_required`: nothing was run).
    pub fn stream_required(method: &str) -> Self {
        HandlerError::new(
            ErrorCode::StreamRequired,
            format!("`{method}` is a stream method: open it as a stream"),
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
            retry: self.retry,
        }
    }
}

/// The most warning [`Context::cancelled`] gives before a request's
/// deadline (less for short calls: see [`cleanup_margin`]).
const CLEANUP_MARGIN: Duration = Duration::from_millis(100);

/// [`Context::cancelled`] gives at most this share (one part in ten) of a
/// call's time limit as warning.
const CLEANUP_SHARE: u32 = 10;

/// How long before its deadline a handler of a call with time limit
/// `limit` is told to wrap up: a tenth of the limit, at most
/// [`CLEANUP_MARGIN`].
pub(crate) fn cleanup_margin(limit: Duration) -> Duration {
    (limit / CLEANUP_SHARE).min(CLEANUP_MARGIN)
}

tokio::task_local! {
    /// The context of the handler being polled, for [`Context::current`].
    static CURRENT: Context;
}

/// What a handler knows about the packet it handles, and a way to talk to
/// the peer.
///
/// A handler gets it as an argument ([`Protocol::process_message`], or a
/// service method that takes a `Context`), or, in any handler, from
/// [`Context::current`].
#[derive(Debug, Clone)]
pub struct Context {
    session: Connection,
    sender: Uuid,
    request_id: u64,
    deadline: Option<Instant>,
    /// How long before `deadline` [`Context::cancelled`] resolves.
    margin: Duration,
    /// Cancelled when the connection starts to close.
    closing: CancellationToken,
    /// Cancelled when the caller cancels the request (`call.cancel`);
    /// `None` for a packet nobody waits for.
    request: Option<CancellationToken>,
    /// The request's `meta`, shared by the clones of the context.
    meta: Option<Arc<Metadata>>,
}

impl Context {
    pub(crate) fn new(
        session: Connection,
        sender: Uuid,
        request_id: u64,
        deadline: Option<(Instant, Duration)>,
        closing: CancellationToken,
    ) -> Self {
        Context {
            session,
            sender,
            request_id,
            deadline: deadline.map(|(at, _)| at),
            margin: deadline.map_or(Duration::ZERO, |(_, margin)| margin),
            closing,
            request: None,
            meta: None,
        }
    }

    /// The same context, cancelled also when `token` is (the request's
    /// own, cancelled by the caller's `call.cancel`).
    pub(crate) fn with_request_token(mut self, token: Option<CancellationToken>) -> Self {
        self.request = token;
        self
    }

    /// Whether the caller cancelled the request (`call.cancel`: it dropped
    /// the call, or a queue server cancelled the task it runs).
    pub(crate) fn cancelled_by_caller(&self) -> bool {
        self.request
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// The same context with the metadata of the request it handles.
    pub(crate) fn with_meta(mut self, meta: Option<&Metadata>) -> Self {
        self.meta = meta.map(|meta| Arc::new(meta.clone()));
        self
    }

    /// The metadata of the request being handled (its `meta` field):
    /// empty when it carried none. What layers and handlers read auth
    /// tokens, tenant ids and trace context from.
    ///
    /// ```
    /// use stream_rpc::{Context, ErrorCode, HandlerError};
    ///
    /// struct Tenants;
    ///
    /// #[stream_rpc::service]
    /// impl Tenants {
    ///     async fn whoami(&self, ctx: Context) -> Result<String, HandlerError> {
    ///         match ctx.meta().get("tenant") {
    ///             Some(tenant) => Ok(tenant.to_owned()),
    ///             None => Err(HandlerError::new(ErrorCode::InvalidPayload, "no tenant")),
    ///         }
    ///     }
    /// }
    /// ```
    pub fn meta(&self) -> &Metadata {
        self.meta.as_deref().unwrap_or(&crate::metadata::EMPTY)
    }

    /// Runs `handler` with this context as the [current](Self::current)
    /// one.
    pub(crate) fn scope<F: Future>(self, handler: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, handler)
    }

    /// The context of the handler running now, when called from inside one
    /// (from its future, not from a task it spawned); `None` elsewhere.
    ///
    /// It is how a handler that takes no `Context` argument (a method of a
    /// `#[stream_rpc::service]` trait or impl without one) learns its
    /// [deadline](Self::deadline), who called, or the connection. It costs
    /// a clone of the context (two reference counts).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_rpc::Context;
    ///
    /// #[stream_rpc::service]
    /// trait Search {
    ///     async fn search(&self, query: String) -> Vec<String>;
    /// }
    ///
    /// struct Index;
    ///
    /// impl Search for Index {
    ///     async fn search(&self, query: String) -> Vec<String> {
    ///         // How long the caller waits, though the method has no `Context`.
    ///         let left = Context::current()
    ///             .and_then(|ctx| ctx.deadline())
    ///             .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()));
    ///         let budget = left.unwrap_or(Duration::from_secs(1));
    ///         vec![format!("{query}: searched for at most {budget:?}")]
    ///     }
    /// }
    ///
    /// // Outside a handler there is no current context.
    /// assert!(Context::current().is_none());
    /// ```
    pub fn current() -> Option<Context> {
        CURRENT.try_with(Context::clone).ok()
    }

    /// When the caller gives up on this request, as it said (its
    /// `timeout_ms`, counted from when the request arrived); `None` for a
    /// notification, a reply, or a request that said nothing.
    ///
    /// # Deadlines
    ///
    /// A handler still running at its deadline is **dropped** (its future
    /// is not polled again) and nothing is sent back: the caller has given
    /// up, and the reply would complete nothing. It is dropped at an
    /// `.await`, so code after that `.await` never runs. A handler that
    /// must clean up can:
    ///
    /// - stop by itself before then, looking at this deadline;
    /// - wait for [`cancelled`](Self::cancelled) beside its work (it
    ///   resolves shortly *before* the deadline, or when the connection
    ///   starts to close) and clean up then, with `.await`s of its own;
    /// - keep what must be undone in a guard whose `Drop` undoes it: a
    ///   dropped future drops its locals, so `Drop` runs however the
    ///   handler ends (it cannot `.await`).
    ///
    /// A handler that takes no `Context` finds its own with
    /// [`Context::current`].
    ///
    /// The guard idiom:
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// /// Counts the jobs running; a dropped handler still counts itself out.
    /// struct Running(Arc<AtomicUsize>);
    ///
    /// impl Running {
    ///     fn start(count: &Arc<AtomicUsize>) -> Running {
    ///         count.fetch_add(1, Ordering::Relaxed);
    ///         Running(count.clone())
    ///     }
    /// }
    ///
    /// impl Drop for Running {
    ///     fn drop(&mut self) {
    ///         self.0.fetch_sub(1, Ordering::Relaxed);
    ///     }
    /// }
    ///
    /// struct Jobs {
    ///     running: Arc<AtomicUsize>,
    /// }
    ///
    /// #[stream_rpc::service]
    /// impl Jobs {
    ///     async fn run(&self, seconds: u64) -> u64 {
    ///         let _running = Running::start(&self.running);
    ///         // If the caller's deadline passes here, the handler is
    ///         // dropped at this `.await`, and `_running` with it.
    ///         tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    ///         seconds
    ///     }
    /// }
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Resolves when the handler should wrap up: shortly before its
    /// [deadline](Self::deadline) (a tenth of the call's time limit
    /// before it, at most 100 ms), when the caller cancels the call
    /// (`call.cancel`: it dropped the call's future, or a queue server
    /// cancelled the task the call runs; PROTOCOL.md, "Cancelling a
    /// call"), or when the connection starts to close (the peer left, the
    /// server shuts down, the connection was closed: handlers then have
    /// the shutdown grace period before they are dropped). Without a
    /// deadline, only the latter two.
    ///
    /// Wait for it beside the work, and clean up when it comes first:
    ///
    /// ```
    /// use stream_rpc::{Context, HandlerError};
    ///
    /// struct Uploads;
    ///
    /// #[stream_rpc::service]
    /// impl Uploads {
    ///     async fn upload(&self, ctx: Context, name: String) -> Result<String, HandlerError> {
    ///         let work = async {
    ///             tokio::task::yield_now().await; // ... writes a temporary file ...
    ///             format!("{name} stored")
    ///         };
    ///         tokio::select! {
    ///             stored = work => Ok(stored),
    ///             () = ctx.cancelled() => {
    ///                 // ... removes the temporary file (may `.await`) ...
    ///                 Err(HandlerError::failed("gave up before the caller's deadline"))
    ///             }
    ///         }
    ///     }
    /// }
    /// ```
    pub async fn cancelled(&self) {
        let wrap_up = async {
            match self.wrap_up_at() {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let by_caller = async {
            match &self.request {
                Some(request) => request.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.closing.cancelled() => {}
            () = by_caller => {}
            () = wrap_up => {}
        }
    }

    /// Whether [`cancelled`](Self::cancelled) would resolve at once: the
    /// handler should wrap up. For handlers that work in steps and look
    /// between them.
    ///
    /// ```
    /// use stream_rpc::Context;
    ///
    /// struct Batch;
    ///
    /// #[stream_rpc::service]
    /// impl Batch {
    ///     async fn sum(&self, numbers: Vec<u64>) -> Option<u64> {
    ///         let ctx = Context::current()?;
    ///         let mut sum = 0u64;
    ///         for chunk in numbers.chunks(1000) {
    ///             if ctx.is_cancelled() {
    ///                 return None;
    ///             }
    ///             sum += chunk.iter().sum::<u64>();
    ///             tokio::task::yield_now().await;
    ///         }
    ///         Some(sum)
    ///     }
    /// }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.closing.is_cancelled()
            || self.cancelled_by_caller()
            || self.wrap_up_at().is_some_and(|at| at <= Instant::now())
    }

    /// When [`cancelled`](Self::cancelled) resolves unless the connection
    /// closes first.
    fn wrap_up_at(&self) -> Option<Instant> {
        self.deadline
            .map(|deadline| deadline.checked_sub(self.margin).unwrap_or(deadline))
    }

    /// The connection the packet came on: send packets or make calls to the
    /// peer at any time, also after the handler returns.
    pub fn connection(&self) -> &Connection {
        &self.session
    }

    /// This side's own peer id.
    pub fn local_id(&self) -> Uuid {
        self.session.local_id()
    }

    /// The `peer` of the packet being handled (its creator).
    pub fn peer(&self) -> Uuid {
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

    /// Builds a packet from this side with the next request number (the
    /// `create_message_packet` of the Python package, for this session).
    pub fn packet(&self, method: impl Into<String>, payload: Value) -> Packet {
        self.session.packet(method, payload)
    }
}

impl Caller for Context {
    fn call_with(&self, call: Call) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.connection().request(call)
    }

    fn notify_with(&self, call: Call) -> impl Future<Output = Result<(), SendError>> + Send {
        self.connection().notify_call(call)
    }

    fn call_timeout(&self) -> Duration {
        self.connection().call_timeout()
    }

    fn open_stream(
        &self,
        method: &str,
        payload: Value,
        options: crate::stream::StreamOptions,
    ) -> impl Future<Output = Result<crate::stream::RawStream, CallError>> + Send {
        let connection = self.connection().clone();
        let method = method.to_owned();
        async move { crate::stream::open_on(&connection, &method, payload, options).await }
    }
}
