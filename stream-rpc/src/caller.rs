//! [`Caller`]: the one way to make a call or send a notification, over a
//! connection, a client or a reconnecting client, typed or not.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::{CallError, SendError};
use crate::metadata::{Metadata, MetadataError};
use crate::packet::Packet;
use crate::session::Connection;
use crate::stream::{RawStream, StreamOptions};

#[cfg(doc)]
use crate::{Client, Context, ReconnectingClient};

/// Makes calls and sends notifications to a peer: the one way to do both.
///
/// Implemented by [`Connection`] (one connection), [`Client`],
/// [`ReconnectingClient`], a handler's [`Context`] (calls back the peer that
/// sent the packet, on its connection), and references and `Arc`s of them. Bring it into scope (`use stream_rpc::Caller;`) to call
/// by method name; the typed clients that `#[stream_rpc::service]`
/// generates are generic over it, so a typed client rides any of them:
///
/// ```no_run
/// use stream_rpc::{Caller, Connector, Reconnect, json};
///
/// #[stream_rpc::service]
/// pub trait Calculator {
///     async fn add(&self, a: i64, b: i64) -> i64;
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let connector = Connector::from_env()?;
/// let reconnecting = connector.connect_reconnecting((), Reconnect::default())?;
/// // Typed:
/// let calculator = CalculatorClient::new(&reconnecting);
/// assert_eq!(calculator.add(2, 40).await?, 42);
/// // By name, with a JSON payload:
/// let reply = reconnecting.call("add", json!({"a": 2, "b": 40})).await?;
/// assert_eq!(reply.payload, json!(42));
/// # Ok(())
/// # }
/// ```
///
/// A call with [metadata](Metadata) or its own time limit is a [`Call`]
/// given to [`call_with`](Self::call_with) (or
/// [`notify_with`](Self::notify_with)); the other methods are shorthands
/// for it. Layers (`tower::Layer`s) wrap any caller into another one:
/// see [`layer::LayeredCaller`](crate::layer::LayeredCaller).
///
/// What each failure means, and when a retry is safe, is on [`CallError`].
pub trait Caller: Send + Sync {
    /// Sends the call's request and waits for its reply, for at most its
    /// [time limit](Call::timeout) in all (the
    /// [`call_timeout`](Self::call_timeout) when it sets none; waiting for
    /// a call slot, a connection or room to send included), the call's
    /// [metadata](Call::meta) in the request's `meta`. An error packet in
    /// reply is [`CallError::Remote`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use stream_rpc::{Call, Caller, Connector, json};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Connector::from_env()?.connect(()).await?;
    /// let call = Call::new("get", json!({"key": "a"}))
    ///     .with_meta("authorization", "token-1")?
    ///     .timeout(Duration::from_secs(2));
    /// let reply = client.call_with(call).await?;
    /// # Ok(())
    /// # }
    /// ```
    fn call_with(&self, call: Call) -> impl Future<Output = Result<Packet, CallError>> + Send;

    /// Sends the call's request as a notification: a packet that expects
    /// no reply, with the call's metadata. A reconnecting client waits for
    /// a connection for at most the call's time limit.
    fn notify_with(&self, call: Call) -> impl Future<Output = Result<(), SendError>> + Send;

    /// The time limit of a call that sets none: the configured
    /// [`Timeouts::call`](crate::Timeouts::call).
    fn call_timeout(&self) -> Duration;

    /// Opens a stream: sends the open of the stream method `method` with
    /// the arguments `payload`, and gives the [`RawStream`] of its output
    /// items and end (and, with [`StreamOptions::with_input`], the sender
    /// of its input items). `Err` only when the open was not sent; a
    /// refusal (`unknown_method`, `not_a_stream`, `busy`, ...) ends the
    /// stream with [`StreamError::Call`](crate::StreamError::Call).
    ///
    /// The stream's metadata is [`StreamOptions::meta`].
    ///
    /// The call timeout does not apply: a stream lasts until it ends, or
    /// [`StreamOptions::timeout`] passes. A [`ReconnectingClient`] opens
    /// it on its current connection (waiting up to the call timeout for
    /// one); a stream does not move to the next connection: it ends
    /// [`Disconnected`](crate::StreamError::Disconnected) with the `seq`
    /// of the last item received, from which a method that takes a resume
    /// point can be opened again.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use stream_rpc::{Caller, Connector, StreamOptions, json};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Connector::from_env()?.connect(()).await?;
    /// let mut stats = client
    ///     .open_stream("watch_stats", json!({"every_ms": 500}), StreamOptions::new())
    ///     .await?;
    /// while let Some(item) = stats.next().await {
    ///     println!("{}", item?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    fn open_stream(
        &self,
        method: &str,
        payload: Value,
        options: StreamOptions,
    ) -> impl Future<Output = Result<RawStream, CallError>> + Send;

    /// [`call_with`](Self::call_with) a call of this method and payload,
    /// for at most `limit` in all, without metadata.
    fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.call_with(Call::new(method, payload).timeout(limit))
    }

    /// [`notify_with`](Self::notify_with) a call of this method and
    /// payload, without metadata.
    fn notify(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        self.notify_with(Call::new(method, payload))
    }

    /// [`call_with`](Self::call_with) a call of this method and payload,
    /// with the [`call_timeout`](Self::call_timeout), without metadata.
    fn call(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.call_with(Call::new(method, payload))
    }
}

/// One call (or notification) to make: the method, its payload, the
/// [metadata](Metadata) its request carries and its time limit. What
/// [`Caller::call_with`] and [`Caller::notify_with`] send, and what the
/// layers of a [layered caller](crate::layer::LayeredCaller) see and may change.
///
/// ```
/// use std::time::Duration;
/// use stream_rpc::{Call, json};
///
/// let call = Call::new("put", json!({"key": "a", "value": 1}))
///     .with_meta("tenant", "acme")?
///     .timeout(Duration::from_millis(500));
/// assert_eq!(call.meta.get("tenant"), Some("acme"));
/// assert_eq!(call.timeout, Some(Duration::from_millis(500)));
/// # Ok::<(), stream_rpc::MetadataError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Call {
    /// The method called.
    pub method: String,
    /// Its payload.
    pub payload: Value,
    /// What the request carries in its `meta` field (nothing when empty).
    pub meta: Metadata,
    /// How long the caller waits in all; `None`: the caller's
    /// [`call_timeout`](Caller::call_timeout).
    pub timeout: Option<Duration>,
    /// Set by a layered caller's `notify_with`.
    pub(crate) notification: bool,
    /// Set by a layered caller's `open_stream`: the call opens a stream.
    pub(crate) opening: Option<Opening>,
}

/// What a stream open carries through a layered caller's stack: its
/// options, and where the innermost service leaves the opened stream.
#[derive(Clone)]
pub(crate) struct Opening {
    pub(crate) options: StreamOptions,
    pub(crate) opened: Arc<std::sync::Mutex<Option<RawStream>>>,
}

impl std::fmt::Debug for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opening")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Two openings are the same when they leave their stream in one place
/// (a retried open is a clone of the first).
impl PartialEq for Opening {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.opened, &other.opened)
    }
}

impl Call {
    /// A call of `method` with `payload`, no metadata, the caller's time
    /// limit.
    pub fn new(method: impl Into<String>, payload: Value) -> Call {
        Call {
            method: method.into(),
            payload,
            meta: Metadata::new(),
            timeout: None,
            notification: false,
            opening: None,
        }
    }

    /// Whether this is a notification (it expects no reply): what a layer
    /// of a [layered caller](crate::layer::LayeredCaller) sees for
    /// [`notify_with`](Caller::notify_with). Its time limit, if any, is
    /// how long a reconnecting client waits for a connection to send it.
    pub fn is_notification(&self) -> bool {
        self.notification
    }

    /// Whether this call opens a stream: what a layer of a
    /// [layered caller](crate::layer::LayeredCaller) sees for
    /// [`open_stream`](Caller::open_stream). The layers see the open (its
    /// metadata, its turn, its errors), not the items: the innermost
    /// service answers it with `None` once the stream is open. Its
    /// [`timeout`](Self::timeout) is the whole stream's limit, if any.
    pub fn is_stream_open(&self) -> bool {
        self.opening.is_some()
    }

    /// The same call with its time limit set.
    pub fn timeout(mut self, limit: Duration) -> Call {
        self.timeout = Some(limit);
        self
    }

    /// The same call carrying this metadata (in place of what it had).
    pub fn meta(mut self, meta: Metadata) -> Call {
        self.meta = meta;
        self
    }

    /// The same call with one more metadata entry; refused when the entry
    /// breaks a limit of [`Metadata`].
    pub fn with_meta(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Call, MetadataError> {
        self.meta.insert(key, value)?;
        Ok(self)
    }
}

impl Caller for Connection {
    fn call_with(&self, call: Call) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.request(call)
    }

    fn notify_with(&self, call: Call) -> impl Future<Output = Result<(), SendError>> + Send {
        self.notify_call(call)
    }

    fn call_timeout(&self) -> Duration {
        self.shared.call_timeout
    }

    fn open_stream(
        &self,
        method: &str,
        payload: Value,
        options: StreamOptions,
    ) -> impl Future<Output = Result<RawStream, CallError>> + Send {
        crate::stream::open_on(self, method, payload, options)
    }
}

/// Implements [`Caller`] for a type that dereferences to a caller.
macro_rules! caller_through_deref {
    ($($ty:ty),*) => {$(
        impl<C: Caller> Caller for $ty {
            fn call_with(
                &self,
                call: Call,
            ) -> impl Future<Output = Result<Packet, CallError>> + Send {
                C::call_with(self, call)
            }

            fn notify_with(
                &self,
                call: Call,
            ) -> impl Future<Output = Result<(), SendError>> + Send {
                C::notify_with(self, call)
            }

            fn call_timeout(&self) -> Duration {
                C::call_timeout(self)
            }

            fn open_stream(
                &self,
                method: &str,
                payload: Value,
                options: StreamOptions,
            ) -> impl Future<Output = Result<RawStream, CallError>> + Send {
                C::open_stream(self, method, payload, options)
            }
        }
    )*};
}

caller_through_deref!(&C, Arc<C>);
