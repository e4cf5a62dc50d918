//! [`Server`]: the accept loop, the connection limits, and the serving of
//! each accepted connection with the connector's hooks.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ShutdownHandle;
#[cfg(doc)]
use super::shutdown_signal;
use crate::endpoint::Endpoint;
use crate::engine::Session;
use crate::error::Error;
use crate::hooks::Hooks;
use crate::lifecycle::{EndReason, Role};
use crate::logging::Refusal;
use crate::protocol::Protocol;
use crate::sync::lock;

#[cfg(doc)]
use super::Connector;

/// How long `accept` failures (out of file descriptors and the like) pause
/// the accept loop, instead of spinning.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// A listening server; see [`Connector::bind`].
pub struct Server {
    pub(super) listener: TcpListener,
    pub(super) local_addr: SocketAddr,
    pub(super) endpoint: Endpoint,
    pub(super) hooks: Hooks,
    pub(super) shutdown: ShutdownHandle,
    pub(super) graceful: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("endpoint", &self.endpoint)
            .field("graceful_shutdown", &self.graceful.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The address it listens on (with the real port when 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops this server gracefully (the connector's
    /// [`ShutdownHandle`] stops it too).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Shuts the server down gracefully when `signal` completes (for
    /// example [`shutdown_signal`], for Ctrl-C and SIGTERM): it stops
    /// accepting, lets running handlers finish within the grace period,
    /// flushes replies and closes its connections.
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.graceful = Some(Box::pin(signal));
        self
    }

    /// Accepts connections, one session task each, up to
    /// [`Limits::max_connections`](crate::Limits::max_connections) at once
    /// and [`Limits::max_connections_per_ip`](crate::Limits::max_connections_per_ip)
    /// from one remote address; a connection beyond either is closed at
    /// once, and the refusals are logged at most once a second per limit,
    /// with a count. Returns after shutdown, once every session has ended.
    pub async fn serve<P: Protocol>(mut self, protocol: P) -> Result<(), Error> {
        let protocol = Arc::new(protocol);
        let name: Arc<str> = protocol.name().into();
        let peer = self.endpoint.local_id();
        let limits = self.endpoint.config().limits();
        let max = limits.max_connections;
        let slots = Arc::new(Semaphore::new(max));
        let addresses = Arc::new(AddressSlots::new(limits.max_connections_per_ip));
        let token = self.shutdown.token.clone();
        if let Some(signal) = self.graceful.take() {
            self.shutdown.shutdown_on(signal);
        }
        tracing::info!(
            target: crate::logging::LISTENING_TARGET,
            protocol = %name,
            peer = %peer,
            "Serving on {}",
            self.local_addr
        );
        loop {
            let accepted = tokio::select! {
                biased;
                () = token.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(protocol = %name, peer = %peer, "accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let refusals = self.endpoint.refusals();
            let Some(address_slot) = addresses.take(remote.ip()) else {
                crate::telemetry::connection_refused("per_address");
                if refusals.admit(Refusal::AddressLimit, &name, peer) {
                    tracing::warn!(
                        protocol = %name, peer = %peer,
                        "per-address connection limit of {} reached: refused {remote}",
                        addresses.cap
                    );
                }
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                crate::telemetry::connection_refused("total");
                if refusals.admit(Refusal::ConnectionLimit, &name, peer) {
                    tracing::warn!(
                        protocol = %name, peer = %peer,
                        "connection limit of {max} reached: refused {remote}"
                    );
                }
                continue;
            };
            let connection = Accepted {
                stream,
                remote,
                name: name.clone(),
                endpoint: self.endpoint.clone(),
                hooks: self.hooks.clone(),
                token: token.clone(),
            };
            let protocol = protocol.clone();
            tokio::spawn(async move {
                connection.serve(protocol).await;
                drop(slot);
                drop(address_slot);
            });
        }
        drop(self.listener);
        tracing::info!(protocol = %name, peer = %peer, "shutting down: waiting for open sessions");
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let _ = slots.acquire_many(all).await;
        tracing::info!(protocol = %name, peer = %peer, "stopped");
        Ok(())
    }
}

/// An accepted connection, about to be served.
struct Accepted {
    stream: TcpStream,
    remote: SocketAddr,
    name: Arc<str>,
    endpoint: Endpoint,
    hooks: Hooks,
    token: CancellationToken,
}

impl Accepted {
    /// Serves the connection until it ends, running the hooks, and logs how
    /// it ended.
    async fn serve<P: Protocol>(self, protocol: Arc<P>) {
        let Accepted {
            stream,
            remote,
            name,
            endpoint,
            hooks,
            token,
        } = self;
        let peer = endpoint.local_id();
        tracing::debug!(protocol = %name, peer = %peer, "connection from {remote}");
        let _ = stream.set_nodelay(true);
        let session = Session::new(protocol, &endpoint, Role::Server, Some(remote));
        let handle = session.handle();
        let (reader, writer) = stream.into_split();
        let running = session.run(reader, writer, token);
        tokio::pin!(running);
        // The hook runs beside the session, for at most the call timeout,
        // and is dropped if the connection ends first.
        let limit = endpoint.config().timeouts().call;
        let end = tokio::select! {
            end = &mut running => end,
            hooked = hooks.connected(&handle, limit) => {
                if let Err(e) = hooked {
                    crate::telemetry::connection_refused("on_connect");
                    if endpoint.refusals().admit(Refusal::HookFailed, &name, peer) {
                        tracing::warn!(
                            protocol = %name, peer = %peer,
                            "on-connect hook failed for {remote}: {e}; closing the connection"
                        );
                    }
                    handle.close();
                }
                running.await
            }
        };
        hooks.disconnected(&handle, &end);
        // Closed for bad input: a flood of those is a flood of lines.
        let refusal = match end {
            EndReason::TooManyBadFrames => Some(Refusal::TooManyBadFrames),
            EndReason::FirstFrameTimeout => Some(Refusal::NoFirstFrame),
            _ => None,
        };
        match refusal {
            None => tracing::info!(
                protocol = %name, peer = %peer, "connection from {remote} ended: {end}"
            ),
            Some(refusal) => {
                if endpoint.refusals().admit(refusal, &name, peer) {
                    tracing::warn!(
                        protocol = %name, peer = %peer,
                        "connection from {remote} closed: {end}"
                    );
                }
            }
        }
    }
}

/// How many connections each remote address has open, up to a cap.
struct AddressSlots {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressSlots {
    fn new(cap: usize) -> Self {
        AddressSlots {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// One of `ip`'s slots, given back when dropped; `None` when it holds
    /// all of them. An IPv4-mapped IPv6 address counts as its IPv4 address.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut open = lock(&self.open);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: self.clone(),
            ip,
        })
    }

    /// How many connections `ip` has open.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        lock(&self.open).get(&ip).copied().unwrap_or(0)
    }
}

/// A connection's slot of its remote address.
struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.slots.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            // The table holds only addresses with connections open.
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_slots_are_counted_per_address_and_given_back() {
        let slots = Arc::new(AddressSlots::new(2));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let first = slots.take(v4).unwrap();
        // The mapped form is the same address.
        let second = slots.take(mapped).unwrap();
        assert!(slots.take(v4).is_none());
        assert!(slots.take(mapped).is_none());
        let other = slots.take(v6).unwrap();
        drop(first);
        let third = slots.take(v4).unwrap();
        drop((second, third, other));
        assert_eq!(slots.open(v4), 0);
        assert!(lock(&slots.open).is_empty());
    }
}
