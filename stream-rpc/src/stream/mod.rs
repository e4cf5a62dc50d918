//! Streams (PROTOCOL.md, "Streams"): a call whose answer is a flow of
//! items (output), whose arguments include one (input), or both, with flow
//! control by credit, cancellation both ways and a typed end.
//!
//! - The **opener** calls [`Caller::open_stream`](crate::Caller::open_stream)
//!   and gets a [`RawStream`] (the output items, then the end) and, when it
//!   asked for input, an [`ItemSender`]; typed clients wrap it in an
//!   [`ItemStream`].
//! - The **acceptor** runs [`Protocol::process_stream`](crate::Protocol::process_stream)
//!   with a [`StreamIo`]: an [`Incoming`] of input items and a [`Sink`] for
//!   output items; typed services return a [`Streaming`] and take an
//!   [`IncomingItems`].
//!
//! Items travel one packet each. A receiver holds at most its window of
//! items (and stops granting credit while it holds
//! [`Limits::stream_window_bytes`](crate::Limits::stream_window_bytes) of
//! them), so a slow consumer slows its producer instead of growing memory.

use std::convert::Infallible;
use std::time::Duration;

use crate::error::CallError;
use crate::metadata::{Metadata, MetadataError};
use crate::packet::ErrorCode;

mod acceptor;
pub(crate) mod opener;
pub(crate) mod state;
mod typed;

pub use acceptor::{Incoming, Sink, StreamIo};
pub(crate) use opener::open_on;
pub use opener::{ItemSender, RawStream};
pub use typed::{DecodeError, IncomingItems, ItemStream, Streaming, TypedSink};

pub mod __stream;

/// The most outstanding credit (items granted and not yet received) a
/// receiver may give a stream's flow (PROTOCOL.md, "Streams").
pub const MAX_STREAM_CREDIT: u64 = 65_536;

/// The method of a stream's item frame.
pub(crate) const ITEM: &str = "stream.item";
/// The method of a stream's credit frame.
pub(crate) const CREDIT: &str = "stream.credit";
/// The method of the frame that ends a stream's input flow.
pub(crate) const END: &str = "stream.end";
/// The method of the frame that cancels a stream (or its input).
pub(crate) const CANCEL: &str = "stream.cancel";

/// Whether `method` is one of the frames' methods (`stream.item`,
/// `stream.credit`, `stream.end`, `stream.cancel`): such a packet is a
/// frame of a stream, never an open or a call, whatever else it carries.
pub(crate) fn is_frame_method(method: &str) -> bool {
    method.as_bytes().first() == Some(&b's') && matches!(method, ITEM | CREDIT | END | CANCEL)
}

/// How one stream is opened: [`Caller::open_stream`](crate::Caller::open_stream).
///
/// ```
/// use std::time::Duration;
/// use stream_rpc::StreamOptions;
///
/// let options = StreamOptions::new()
///     .window(64)
///     .timeout(Duration::from_secs(300))
///     .item_timeout(Duration::from_secs(30))
///     .with_input();
/// assert_eq!(options.window, Some(64));
/// assert!(options.input);
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct StreamOptions {
    /// Output items granted at once (and kept granted as they are taken);
    /// `None` is [`Limits::stream_window`](crate::Limits::stream_window)
    /// (32). `Some(0)` for a method that returns no stream. At most
    /// [`MAX_STREAM_CREDIT`].
    pub window: Option<u32>,
    /// The most the whole call may take, sent as the open's `timeout_ms`
    /// (the acceptor drops its handler when it passes); `None`: no limit.
    /// Streams are long-lived: the call timeout does not apply to them.
    pub timeout: Option<Duration>,
    /// The most time the consumer waits for an output item with none
    /// there (from the open, or from when it asks for the next one after
    /// taking an item: its own time between two asks is not counted);
    /// `None`: no limit. When it passes the stream ends
    /// [`StreamError::Timeout`] and is cancelled.
    pub item_timeout: Option<Duration>,
    /// Whether the opener sends input items (the method takes a stream):
    /// [`RawStream::input`] then gives an [`ItemSender`].
    pub input: bool,
    /// What the open carries in its `meta` field (nothing when empty), as
    /// a [`Call`](crate::Call)'s.
    pub meta: Metadata,
}

impl StreamOptions {
    /// The defaults: the configured window, no time limits, no input.
    pub fn new() -> Self {
        StreamOptions::default()
    }

    /// Sets [`window`](Self::window).
    pub fn window(mut self, items: u32) -> Self {
        self.window = Some(items);
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Sets [`item_timeout`](Self::item_timeout).
    pub fn item_timeout(mut self, limit: Duration) -> Self {
        self.item_timeout = Some(limit);
        self
    }

    /// Sets [`input`](Self::input): the opener sends input items.
    pub fn with_input(mut self) -> Self {
        self.input = true;
        self
    }

    /// Sets [`meta`](Self::meta) (in place of what it had).
    pub fn meta(mut self, meta: Metadata) -> Self {
        self.meta = meta;
        self
    }

    /// One more [`meta`](Self::meta) entry; refused when it breaks a
    /// limit of [`Metadata`].
    pub fn with_meta(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, MetadataError> {
        self.meta.insert(key, value)?;
        Ok(self)
    }
}

/// Why a stream ended other than cleanly (a clean end is `None` from the
/// stream, after its last item).
///
/// `E` is the method's own error, for typed streams
/// ([`ItemStream`]); a raw stream has none.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError<E = Infallible> {
    /// The method failed with its own typed error (typed streams only).
    #[error("the stream's method failed: {0}")]
    Failed(E),
    /// The other side cancelled: the acceptor cancelled the call (or no
    /// longer reads input), or the opener cancelled the stream.
    #[error("the stream was cancelled by the other side")]
    Cancelled,
    /// The connection closed; `last_seq` output items had been received
    /// (0 if none), all of them given out before this error.
    #[error("the connection closed after {last_seq} items of the stream")]
    Disconnected {
        /// The `seq` of the last output item received.
        last_seq: u64,
    },
    /// The whole-stream or per-item limit passed; the stream was cancelled.
    #[error("the stream's time limit ({}) passed", crate::human::ShortDuration(*.after))]
    Timeout {
        /// The limit that passed.
        after: Duration,
    },
    /// The call failed as a call: the open was refused (`unknown_method`,
    /// `not_a_stream`, `busy`, `invalid_payload`, ...) or not sent, the
    /// method failed with an error that is not its typed one, or the peer
    /// broke a rule of the protocol ([`CallError::InvalidReply`]).
    #[error(transparent)]
    Call(CallError),
}

impl StreamError {
    /// This error as a [`CallError`] of `method`, for a caller that
    /// answers with one: `Cancelled` is a remote `cancelled` error,
    /// `Disconnected` [`CallError::ConnectionLost`], `Timeout`
    /// [`CallError::Timeout`].
    ///
    /// ```
    /// use stream_rpc::{CallError, StreamError};
    ///
    /// let error = StreamError::Disconnected { last_seq: 3 }.into_call_error("watch");
    /// assert!(matches!(error, CallError::ConnectionLost { .. }));
    /// ```
    pub fn into_call_error(self, method: &str) -> CallError {
        match self {
            StreamError::Failed(never) => match never {},
            StreamError::Cancelled => CallError::Remote {
                method: method.to_owned(),
                code: ErrorCode::Cancelled,
                message: "the stream was cancelled".to_owned(),
                data: None,
                retry: None,
            },
            StreamError::Disconnected { .. } => CallError::lost(method),
            StreamError::Timeout { after } => CallError::timed_out(method, after),
            StreamError::Call(error) => error,
        }
    }

    /// The same error as a typed stream's, whose method error is `E`.
    pub fn typed<E>(self) -> StreamError<E> {
        match self {
            StreamError::Failed(never) => match never {},
            StreamError::Cancelled => StreamError::Cancelled,
            StreamError::Disconnected { last_seq } => StreamError::Disconnected { last_seq },
            StreamError::Timeout { after } => StreamError::Timeout { after },
            StreamError::Call(error) => StreamError::Call(error),
        }
    }
}

impl<E> StreamError<E> {
    /// Whether the connection closed under the stream.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, StreamError::Disconnected { .. })
    }

    /// The `last_seq` of [`Disconnected`](StreamError::Disconnected).
    pub fn last_seq(&self) -> Option<u64> {
        match self {
            StreamError::Disconnected { last_seq } => Some(*last_seq),
            _ => None,
        }
    }
}

impl From<CallError> for StreamError {
    fn from(error: CallError) -> Self {
        StreamError::Call(error)
    }
}
