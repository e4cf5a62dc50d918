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

impl Caller for SessionHandle {
    fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        SessionHandle::call_with_timeout(self, method, payload, limit)
    }

    fn notify(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        SessionHandle::notify(self, method, payload)
    }

    fn call_timeout(&self) -> Duration {
        SessionHandle::call_timeout(self)
    }
}

impl Caller for Client {
    fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.session().call_with_timeout(method, payload, limit)
    }

    fn notify(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        self.session().notify(method, payload)
    }

    fn call_timeout(&self) -> Duration {
        self.session().call_timeout()
    }
}

impl Caller for ReconnectingClient {
    fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        ReconnectingClient::call_with_timeout(self, method, payload, limit)
    }

    fn notify(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        ReconnectingClient::notify(self, method, payload)
    }

    fn call_timeout(&self) -> Duration {
        ReconnectingClient::call_timeout(self)
    }
}

/// Forwards a caller's three methods through a pointer type.
macro_rules! forward_caller {
    ($($pointer:ty),*) => {$(
        impl<C: Caller> Caller for $pointer {
            fn call_with_timeout(
                &self,
                method: &str,
                payload: Value,
                limit: Duration,
            ) -> impl Future<Output = Result<Packet, CallError>> + Send {
                (**self).call_with_timeout(method, payload, limit)
            }

            fn notify(
                &self,
                method: &str,
                payload: Value,
            ) -> impl Future<Output = Result<(), SendError>> + Send {
                (**self).notify(method, payload)
            }

            fn call_timeout(&self) -> Duration {
                (**self).call_timeout()
            }
        }
    )*};
}

forward_caller!(&C, Arc<C>);
