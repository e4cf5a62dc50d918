//! [`Caller`]: the one way to make a call or send a notification, over a
//! connection, a client or a reconnecting client, typed or not.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::{CallError, SendError};
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
/// What each failure means, and when a retry is safe, is on [`CallError`].
pub trait Caller: Send + Sync {
    /// Sends a request and waits for its reply, for at most `limit` in all
    /// (waiting for a call slot, a connection or room to send included). An
    /// error packet in reply is [`CallError::Remote`].
    fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send;

    /// Sends a packet that expects no reply.
    fn notify(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<(), SendError>> + Send;

    /// The time limit of [`call`](Self::call): the configured
    /// [`Timeouts::call`](crate::Timeouts::call).
    fn call_timeout(&self) -> Duration;

    /// Opens a stream: sends the open of the stream method `method` with
    /// the arguments `payload`, and gives the [`RawStream`] of its output
    /// items and end (and, with [`StreamOptions::with_input`], the sender
    /// of its input items). `Err` only when the open was not sent; a
    /// refusal (`unknown_method`, `not_a_stream`, `busy`, ...) ends the
    /// stream with [`StreamError::Call`](crate::StreamError::Call).
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

    /// [`call_with_timeout`](Self::call_with_timeout) with the
    /// [`call_timeout`](Self::call_timeout).
    fn call(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.call_with_timeout(method, payload, self.call_timeout())
    }
}

impl Caller for Connection {
    fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.request(method, payload, limit)
    }

    fn notify(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        self.send_new(method, payload, None)
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
            fn call_with_timeout(
                &self,
                method: &str,
                payload: Value,
                limit: Duration,
            ) -> impl Future<Output = Result<Packet, CallError>> + Send {
                C::call_with_timeout(self, method, payload, limit)
            }

            fn notify(
                &self,
                method: &str,
                payload: Value,
            ) -> impl Future<Output = Result<(), SendError>> + Send {
                C::notify(self, method, payload)
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
