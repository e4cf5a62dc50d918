//! The task behind a [`ReconnectingClient`]: connects (the connector runs
//! its on-connect hook), says hello, waits for the connection to end, and
//! connects again (to the next server) after the wait the [`Reconnect`]
//! policy gives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::client::Link;
use super::{Jitter, Reconnect, ReconnectingClient};
use crate::caller::Caller;
use crate::connector::Connector;
use crate::error::{Error, SendError};
use crate::lifecycle::EndReason;
use crate::protocol::Protocol;
use crate::session::Connection;

/// Starts the supervising task; see [`Connector::connect_reconnecting`].
pub(super) fn start<P: Protocol>(
    connector: &Connector,
    protocol: P,
    reconnect: Reconnect,
) -> Result<ReconnectingClient, Error> {
    reconnect.check()?;
    let (tx, rx) = watch::channel(Link::Connecting { last_error: None });
    let stop = connector.shutdown_handle().token.child_token();
    let connections = Arc::new(AtomicU64::new(0));
    let config = connector.config();
    let servers = if reconnect.servers.is_empty() {
        vec![(config.host().to_owned(), config.port())]
    } else {
        reconnect.servers.clone()
    };
    let supervisor = Supervisor {
        connector: connector.clone(),
        protocol: Arc::new(protocol),
        reconnect,
        servers,
        link: tx,
        stop: stop.clone(),
        connections: connections.clone(),
        jitter: Jitter::from_os(),
    };
    Ok(ReconnectingClient::new(
        rx,
        stop,
        connections,
        config.timeouts().call,
        tokio::spawn(supervisor.run()),
    ))
}

/// The task behind a [`ReconnectingClient`].
struct Supervisor<P> {
    connector: Connector,
    protocol: Arc<P>,
    reconnect: Reconnect,
    /// Where to connect, tried in turn; never empty.
    servers: Vec<(String, u16)>,
    link: watch::Sender<Link>,
    stop: CancellationToken,
    connections: Arc<AtomicU64>,
    jitter: Jitter,
}

impl<P: Protocol> Supervisor<P> {
    async fn run(mut self) -> Result<(), Error> {
        let result = self.connect_and_reconnect().await;
        let error = result.as_ref().err().map(|e| e.to_string().into());
        self.link.send_replace(Link::Stopped { error });
        result
    }

    async fn connect_and_reconnect(&mut self) -> Result<(), Error> {
        let mut failures: u32 = 0;
        let mut next = 0;
        loop {
            let (host, port) = self.servers[next % self.servers.len()].clone();
            // Whatever happens to this attempt, the next goes to the next server.
            next = (next + 1) % self.servers.len();
            let attempt = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(()),
                attempt = self.connector.connect_shared(&host, port, self.protocol.clone()) => attempt,
            };
            let failure = match attempt {
                Ok(client) => {
                    let count = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    let session = client.handle().clone();
                    tracing::info!(
                        peer = %session.local_id(),
                        "connected to {} (connection {count})",
                        session.remote_addr().map_or_else(String::new, |a| a.to_string()),
                    );
                    let lost = match self.hello(&session).await {
                        Ok(()) => {
                            self.link.send_replace(Link::Up(session.clone()));
                            let end = tokio::select! {
                                biased;
                                () = self.stop.cancelled() => {
                                    session.close();
                                    client.join().await;
                                    return Ok(());
                                }
                                () = session.closed() => client.join().await,
                            };
                            self.link
                                .send_replace(Link::Connecting { last_error: None });
                            // Closed by this side (through the client, the
                            // connection's handle, as a worker that is done
                            // does, or the shutdown): it stops.
                            if self.stop.is_cancelled()
                                || matches!(end, EndReason::Closed | EndReason::Shutdown)
                            {
                                return Ok(());
                            }
                            format!("connection lost: {end}")
                        }
                        Err(e) => {
                            session.close();
                            client.join().await;
                            format!("hello not sent: {e}")
                        }
                    };
                    if session.has_received() {
                        // The server served this connection: a fresh start.
                        failures = 0;
                    }
                    Error::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        lost,
                    ))
                }
                Err(e) => e,
            };
            failures = failures.saturating_add(1);
            if self
                .reconnect
                .max_attempts
                .is_some_and(|max| failures >= max)
            {
                tracing::error!("giving up after {failures} failed attempts in a row: {failure}");
                return Err(failure);
            }
            self.link.send_replace(Link::Connecting {
                last_error: Some(failure.to_string().into()),
            });
            let delay = self.reconnect.delay(failures, self.jitter.next());
            tracing::warn!(
                "{failure}; reconnecting in {} (failure {failures} in a row)",
                crate::human::ShortDuration(delay)
            );
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn hello(&self, session: &Connection) -> Result<(), SendError> {
        match &self.reconnect.hello {
            Some((method, payload)) => session.notify(method, payload.clone()).await,
            None => Ok(()),
        }
    }
}
