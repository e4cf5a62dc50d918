//! [`Caller`]: anything that can make a call and send a notification, so
//! that one typed client works over a session, a client connection or a
//! reconnecting client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::connector::Client;
use crate::error::{CallError, SendError};
use crate::packet::Packet;
use crate::reconnect::ReconnectingClient;
use crate::session::SessionHandle;

/// Something that can make a call and send a notification to a peer:
/// [`SessionHandle`] (one connection, also `ctx.session()` in a handler),
/// [`Client`], [`ReconnectingClient`], and references and `Arc`s of them.
///
/// The typed clients that `#[stream_rpc::service]` generates are generic
/// over it, so a typed client rides any of them:
///
/// ```no_run
/// # use stream_rpc::{Connector, Reconnect};
/// #[stream_rpc::service]
/// pub trait Calculator {
///     async fn add(&self, a: i64, b: i64) -> i64;
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let connector = Connector::from_env()?;
/// let reconnecting = connector.connect_reconnecting((), Reconnect::default())?;
/// let calculator = CalculatorClient::new(&reconnecting);
/// assert_eq!(calculator.add(2, 40).await?, 42);
/// # Ok(())
/// # }
/// ```
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

/// Implements [`Caller`] for `$ty` by calling the methods of the same names
/// on `$target` (the type's own inherent methods, or another caller's).
macro_rules! caller_through {
    ($(impl$([$($generics:tt)*])? for $ty:ty => |$this:ident| $target:expr;)*) => {$(
        impl$(<$($generics)*>)? Caller for $ty {
            fn call_with_timeout(
                &self,
                method: &str,
                payload: Value,
                limit: Duration,
            ) -> impl Future<Output = Result<Packet, CallError>> + Send {
                let $this = self;
                $target.call_with_timeout(method, payload, limit)
            }

            fn notify(
                &self,
                method: &str,
                payload: Value,
            ) -> impl Future<Output = Result<(), SendError>> + Send {
                let $this = self;
                $target.notify(method, payload)
            }

            fn call_timeout(&self) -> Duration {
                let $this = self;
                $target.call_timeout()
            }
        }
    )*};
}

// The inherent methods of these types take precedence over the trait's
// in method calls, so `this.call_with_timeout` is theirs, not a recursion.
caller_through! {
    impl for SessionHandle => |this| this;
    impl for Client => |this| this.session();
    impl for ReconnectingClient => |this| this;
    impl[C: Caller] for &C => |this| (**this);
    impl[C: Caller] for Arc<C> => |this| (**this);
}
