//! [`Client`]: a connection this side opened.

use tokio::task::JoinHandle;

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::caller::Caller;
use crate::error::{CallError, SendError};
use crate::lifecycle::EndReason;
use crate::packet::Packet;
use crate::session::Connection;

#[cfg(doc)]
use super::Connector;
#[cfg(doc)]
use crate::ReconnectingClient;

/// A connection this side opened; see [`Connector::connect`]. Calls go
/// through [`Caller`].
///
/// [`connection`](Self::connection), [`connected`](Self::connected) and
/// [`is_connected`](Self::is_connected) answer as a
/// [`ReconnectingClient`]'s do. Dropping it closes the connection
/// gracefully (as [`Connection::close`] does), unless
/// [`Client::join`] took it over.
///
/// ```no_run
/// use stream_rpc::{Caller, Connector, json};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Connector::from_env()?.connect(()).await?;
/// let pong = client.call("ping", json!(null)).await?;
/// if let Some(connection) = client.connection() {
///     // A handle to give to other tasks; it calls as the client does.
///     tokio::spawn(async move { connection.notify("bye", json!(null)).await });
/// }
/// client.close();
/// println!("ended: {}", client.join().await);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Client {
    pub(super) handle: Connection,
    pub(super) task: Option<JoinHandle<EndReason>>,
}

impl Client {
    /// The connection, while it is open: to send packets, to hand to other
    /// tasks, to see when it closes.
    pub fn connection(&self) -> Option<Connection> {
        (!self.handle.is_closed()).then(|| self.handle.clone())
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        !self.handle.is_closed()
    }

    /// The connection, while it is open; `None` once it has closed (a
    /// [`Client`] never reconnects). Answers at once; it is `async` to
    /// match [`ReconnectingClient::connected`].
    pub async fn connected(&self) -> Option<Connection> {
        self.connection()
    }

    /// The connection's handle, open or not.
    pub(crate) fn handle(&self) -> &Connection {
        &self.handle
    }

    /// Closes the connection gracefully: it stops reading, lets running
    /// handlers finish within the shutdown grace period, flushes and closes.
    pub fn close(&self) {
        self.handle.close();
    }

    /// Waits until the connection ends and says why; it stays open until
    /// then.
    pub async fn join(mut self) -> EndReason {
        let Some(task) = self.task.take() else {
            return EndReason::Closed;
        };
        match task.await {
            Ok(end) => end,
            Err(e) => EndReason::ReadFailed(format!("session task failed: {e}")),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.handle.close();
        }
    }
}

impl Caller for Client {
    fn call_with_timeout(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> impl Future<Output = Result<Packet, CallError>> + Send {
        self.handle().request(method, payload, limit)
    }

    fn notify(
        &self,
        method: &str,
        payload: Value,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        self.handle().send_new(method, payload, None)
    }

    fn call_timeout(&self) -> Duration {
        self.handle().call_timeout()
    }

    fn open_stream(
        &self,
        method: &str,
        payload: Value,
        options: crate::stream::StreamOptions,
    ) -> impl Future<Output = Result<crate::stream::RawStream, CallError>> + Send {
        let connection = self.handle().clone();
        let method = method.to_owned();
        async move { crate::stream::open_on(&connection, &method, payload, options).await }
    }
}
