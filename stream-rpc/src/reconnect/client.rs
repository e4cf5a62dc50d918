//! [`ReconnectingClient`]: the application's side of a connection that the
//! supervising task keeps up.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::caller::Caller;
use crate::error::{CallError, Error, SendError};
use crate::packet::Packet;
use crate::session::Connection;

/// Where a [`ReconnectingClient`] is.
#[derive(Clone)]
pub(super) enum Link {
    /// Between connections; with why the last attempt failed, if one did.
    Connecting { last_error: Option<Arc<str>> },
    /// Connected, the on-connect hook and the hello done.
    Up(Connection),
    /// Stopped for good; with the error it gave up on, if it did.
    Stopped { error: Option<Arc<str>> },
}

/// A client that keeps a connection to its server, reconnecting by itself
/// when the connection breaks, and failing over between servers when it
/// has several; see [`Connector::connect_reconnecting`](crate::Connector::connect_reconnecting).
///
/// Calls go through [`Caller`](crate::Caller), to the current connection,
/// waiting for one (within the call's time limit) while the client
/// reconnects. What is retried (see [`CallError`] for the whole list):
///
/// - a call or notification that found no connection has not been sent:
///   it waits for the next connection, to whichever server, within its
///   time limit, and is sent there; when none came in time the call fails
///   with [`CallError::Unreachable`], with the last attempt's error (one
///   that finds its connection closing just as it is sent fails with
///   [`CallError::NotSent`]: not sent either, safe to send again);
/// - a call **in flight** when its connection breaks fails with
///   [`CallError::ConnectionLost`] and is **not** retried: it may or may not
///   have run on the server, and only the caller knows whether running it
///   twice is safe;
/// - a notification handed to a connection that then breaks is not sent
///   again either (it may have been delivered).
///
/// [`connection`](Self::connection), [`connected`](Self::connected) and
/// [`is_connected`](Self::is_connected) answer as a [`Client`](crate::Client)'s
/// do. Dropping it closes the current connection gracefully and stops
/// reconnecting, as [`close`](Self::close) does.
///
/// ```no_run
/// use std::time::Duration;
/// use stream_rpc::{CallError, Caller, Connector, Reconnect, json};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Connector::from_env()?.connect_reconnecting((), Reconnect::default())?;
/// match client.call_with_timeout("ping", json!(null), Duration::from_secs(2)).await {
///     Ok(pong) => println!("{}", pong.method),
///     Err(CallError::Unreachable { reason, .. }) => println!("no server: {reason}"),
///     Err(e) => println!("{e} (may have run: {})", e.may_have_run()),
/// }
/// # Ok(())
/// # }
/// ```
pub struct ReconnectingClient {
    link: watch::Receiver<Link>,
    stop: CancellationToken,
    connections: Arc<AtomicU64>,
    call_timeout: Duration,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl fmt::Debug for ReconnectingClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.link.borrow() {
            Link::Connecting { .. } => "connecting",
            Link::Up(_) => "connected",
            Link::Stopped { .. } => "stopped",
        };
        f.debug_struct("ReconnectingClient")
            .field("state", &state)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

/// What a call that found no connection says.
enum NoConnection {
    /// The client was closed or shut down: nothing will be sent.
    Closed,
    /// The client gave up, or no connection came within the limit.
    Unreachable(String),
}

impl ReconnectingClient {
    /// A client fed by the supervising task.
    pub(super) fn new(
        link: watch::Receiver<Link>,
        stop: CancellationToken,
        connections: Arc<AtomicU64>,
        call_timeout: Duration,
        task: JoinHandle<Result<(), Error>>,
    ) -> Self {
        ReconnectingClient {
            link,
            stop,
            connections,
            call_timeout,
            task: Some(task),
        }
    }

    /// The current connection, if connected now (its on-connect hook done).
    /// Closing it ([`Connection::close`](crate::Connection::close), as a
    /// handler that is done with the server does) stops the client for good,
    /// as [`close`](Self::close) does; a connection that breaks or that the
    /// server closes is made again.
    pub fn connection(&self) -> Option<Connection> {
        if self.stop.is_cancelled() {
            return None;
        }
        match &*self.link.borrow() {
            Link::Up(session) if !session.is_closed() => Some(session.clone()),
            _ => None,
        }
    }

    /// Whether it is connected now.
    pub fn is_connected(&self) -> bool {
        self.connection().is_some()
    }

    /// Waits for a connection and returns it; `None` once the client has
    /// stopped for good (closed, shut down, or out of attempts:
    /// [`join`](Self::join) says which).
    pub async fn connected(&self) -> Option<Connection> {
        self.wait_for_connection().await.ok()
    }

    async fn wait_for_connection(&self) -> Result<Connection, NoConnection> {
        let mut link = self.link.clone();
        loop {
            if self.stop.is_cancelled() {
                return Err(NoConnection::Closed);
            }
            match &*link.borrow_and_update() {
                Link::Up(session) if !session.is_closed() => return Ok(session.clone()),
                Link::Stopped { error: None } => return Err(NoConnection::Closed),
                Link::Stopped { error: Some(e) } => {
                    return Err(NoConnection::Unreachable(format!(
                        "gave up reconnecting: {e}"
                    )));
                }
                Link::Up(_) | Link::Connecting { .. } => {}
            }
            tokio::select! {
                changed = link.changed() => if changed.is_err() {
                    return Err(NoConnection::Closed);
                },
                () = self.stop.cancelled() => return Err(NoConnection::Closed),
            }
        }
    }

    /// Why there is no connection now, for a call that waited in vain.
    fn why_not_connected(&self) -> String {
        match &*self.link.borrow() {
            Link::Connecting {
                last_error: Some(e),
            } => e.to_string(),
            Link::Connecting { last_error: None } => "still connecting".to_owned(),
            Link::Up(_) => "the connection closed".to_owned(),
            Link::Stopped { error: Some(e) } => format!("gave up reconnecting: {e}"),
            Link::Stopped { error: None } => "closed".to_owned(),
        }
    }

    /// Why the last attempt to connect failed (unreachable, refused by the
    /// [on-connect hook](crate::Connector::on_connect), the connection
    /// lost), while the client is between connections or has given up;
    /// `None` while connected or before any attempt failed. For a program
    /// that wants to report a refusal without waiting for a call to fail.
    pub fn last_error(&self) -> Option<String> {
        match &*self.link.borrow() {
            Link::Connecting { last_error } => last_error.as_deref().map(str::to_owned),
            Link::Stopped { error } => error.as_deref().map(str::to_owned),
            Link::Up(_) => None,
        }
    }

    /// How many connections were made so far (the first one included).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The configured call timeout, for [`Caller::call_timeout`](crate::Caller::call_timeout).
    pub(crate) fn call_timeout_setting(&self) -> Duration {
        self.call_timeout
    }

    /// A call on the current connection, first waiting for one.
    pub(crate) async fn request(
        &self,
        method: &str,
        payload: Value,
        limit: Duration,
    ) -> Result<Packet, CallError> {
        let deadline = crate::session::deadline_in(limit);
        let session = match timeout_at(deadline, self.wait_for_connection()).await {
            Ok(Ok(session)) => session,
            Ok(Err(NoConnection::Closed)) => {
                return Err(CallError::not_sent(method, SendError::Closed));
            }
            Ok(Err(NoConnection::Unreachable(reason))) => {
                return Err(self.unreachable(method, limit, reason));
            }
            Err(_) => return Err(self.unreachable(method, limit, self.why_not_connected())),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // The connection came as the time ran out: not sent.
            return Err(self.unreachable(method, limit, "the connection came too late".to_owned()));
        }
        match session.request(method, payload, left).await {
            // The limit the caller set, not what was left of it.
            Err(CallError::Timeout { .. }) => Err(CallError::timed_out(method, limit)),
            other => other,
        }
    }

    /// A stream on the current connection, first waiting (up to the call
    /// timeout) for one.
    pub(crate) async fn open_stream_on_current(
        &self,
        method: &str,
        payload: Value,
        options: crate::stream::StreamOptions,
    ) -> Result<crate::stream::RawStream, CallError> {
        let limit = self.call_timeout;
        let deadline = crate::session::deadline_in(limit);
        let session = match timeout_at(deadline, self.wait_for_connection()).await {
            Ok(Ok(session)) => session,
            Ok(Err(NoConnection::Closed)) => {
                return Err(CallError::not_sent(method, SendError::Closed));
            }
            Ok(Err(NoConnection::Unreachable(reason))) => {
                return Err(self.unreachable(method, limit, reason));
            }
            Err(_) => return Err(self.unreachable(method, limit, self.why_not_connected())),
        };
        crate::stream::open_on(&session, method, payload, options).await
    }

    fn unreachable(&self, method: &str, limit: Duration, reason: String) -> CallError {
        CallError::Unreachable {
            method: method.to_owned(),
            after: limit,
            reason,
        }
    }

    /// A notification on the current connection, first waiting (up to the
    /// call timeout) for one; [`SendError::Closed`] if none came.
    pub(crate) async fn send_notification(
        &self,
        method: &str,
        payload: Value,
    ) -> Result<(), SendError> {
        match timeout_at(
            crate::session::deadline_in(self.call_timeout),
            self.connected(),
        )
        .await
        {
            Ok(Some(session)) => session.send_new(method, payload, None).await,
            Ok(None) | Err(_) => Err(SendError::Closed),
        }
    }

    /// Closes the current connection gracefully and stops reconnecting.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Waits until the client has stopped for good: `Ok` after
    /// [`close`](Self::close) or shutdown, the last connection error
    /// after [`Reconnect::max_attempts`](super::Reconnect::max_attempts)
    /// failed attempts in a row.
    pub async fn join(mut self) -> Result<(), Error> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Io(std::io::Error::other(format!(
                "the reconnecting task failed: {e}"
            )))),
        }
    }
}

impl Drop for ReconnectingClient {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Caller for ReconnectingClient {
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
        self.send_notification(method, payload)
    }

    fn call_timeout(&self) -> Duration {
        self.call_timeout_setting()
    }

    fn open_stream(
        &self,
        method: &str,
        payload: Value,
        options: crate::stream::StreamOptions,
    ) -> impl Future<Output = Result<crate::stream::RawStream, CallError>> + Send {
        self.open_stream_on_current(method, payload, options)
    }
}
