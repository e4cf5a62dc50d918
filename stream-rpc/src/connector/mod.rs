//! The connector: runs a server (listens) or a client (connects and says
//! hello), one [`Session`] per connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream, lookup_host};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::logging::Refusal;
use crate::protocol::Protocol;
use crate::reconnect::{Reconnect, ReconnectingClient};
use crate::sync::lock;

mod supervisor;
use crate::engine::Session;
use crate::session::{EndReason, Role, SessionHandle};

/// Stops a server or client gracefully from anywhere: it stops accepting,
/// lets running handlers finish within the grace period, flushes replies and
/// closes. Cloneable.
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    pub(crate) token: CancellationToken,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Registers for Ctrl-C and (on Unix) SIGTERM at once, and returns a
    /// future that starts the graceful shutdown when either arrives: spawn
    /// it. Registering before the first poll means a signal sent right after
    /// this call is not missed. [`Connector::run_server`] and
    /// [`Connector::run_client`] do this themselves; a
    /// [`ReconnectingClient`] or a server from [`Connector::bind`] can use
    /// it:
    ///
    /// ```no_run
    /// # async fn example(connector: stream_rpc::Connector) {
    /// tokio::spawn(connector.shutdown_handle().shutdown_on_signal());
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// On Unix, when called outside a Tokio runtime (as `tokio::spawn`
    /// does).
    pub fn shutdown_on_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let handle = self.clone();
        #[cfg(unix)]
        let signals = {
            use tokio::signal::unix::{SignalKind, signal};
            (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            )
        };
        async move {
            #[cfg(unix)]
            {
                let wait = |registered: io::Result<tokio::signal::unix::Signal>| async move {
                    match registered {
                        Ok(mut signal) => {
                            signal.recv().await;
                        }
                        Err(_) => std::future::pending::<()>().await,
                    }
                };
                let (interrupt, terminate) = signals;
                tokio::select! {
                    () = wait(interrupt) => {}
                    () = wait(terminate) => {}
                }
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!("shutdown signal received");
            handle.shutdown();
        }
    }
}

/// Runs servers and clients with one [`Config`], like the seed's connector.
///
/// A connector is one [`Endpoint`]: every server it runs and every
/// connection it opens share its peer id, its packet numbering and its
/// replay cache. Clones of a connector are the same endpoint; make another
/// connector (from the same `Config` if you like) for another endpoint.
///
/// [`run_server`](Connector::run_server) and
/// [`run_client`](Connector::run_client) also shut down gracefully on Ctrl-C
/// and SIGTERM; [`bind`](Connector::bind) and
/// [`connect`](Connector::connect) leave signals to the caller
/// ([`ShutdownHandle::shutdown_on_signal`]).
#[derive(Debug, Clone)]
pub struct Connector {
    endpoint: Endpoint,
    shutdown: ShutdownHandle,
}

impl Connector {
    /// A connector with this configuration: a new endpoint, with a new
    /// random peer id.
    pub fn new(config: Config) -> Self {
        Connector::with_endpoint(Endpoint::new(config))
    }

    /// A connector for an endpoint made beforehand (one with a peer id of
    /// its own choosing: [`Endpoint::with_peer_id`]).
    pub fn with_endpoint(endpoint: Endpoint) -> Self {
        Connector {
            endpoint,
            shutdown: ShutdownHandle::default(),
        }
    }

    /// A connector configured from the environment.
    pub fn from_env() -> Result<Self, Error> {
        Ok(Connector::new(Config::from_env()?))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        self.endpoint.config()
    }

    /// The endpoint: peer id, packet numbering, replay cache.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// This endpoint's peer id, the `peer` of every packet it creates.
    pub fn peer_id(&self) -> Uuid {
        self.endpoint.peer_id()
    }

    /// A handle that shuts down everything this connector runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    async fn addresses(&self) -> Result<Vec<SocketAddr>, Error> {
        addresses_of(self.config().host(), self.config().port()).await
    }

    /// Listens on the configured host and port; serve with [`Server::serve`].
    pub async fn bind(&self) -> Result<Server, Error> {
        let addr = self.addresses().await?[0];
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Server {
            local_addr: listener.local_addr()?,
            listener,
            endpoint: self.endpoint.clone(),
            shutdown: self.shutdown.clone(),
        })
    }

    /// Listens and serves `protocol` until Ctrl-C, SIGTERM or
    /// [`ShutdownHandle::shutdown`], then shuts down gracefully.
    pub async fn run_server<P: Protocol>(&self, protocol: P) -> Result<(), Error> {
        let server = self.bind().await?;
        let signals = tokio::spawn(self.shutdown.shutdown_on_signal());
        let result = server.serve(protocol).await;
        signals.abort();
        result
    }

    /// Connects to the configured host and port and starts a session driven
    /// by `protocol`. Use the returned [`Client`]'s session to send packets
    /// and make calls.
    pub async fn connect<P: Protocol>(&self, protocol: P) -> Result<Client, Error> {
        let (host, port) = (self.config().host(), self.config().port());
        self.connect_shared(host, port, Arc::new(protocol)).await
    }

    /// Connects to the configured host and port, for a program that only
    /// makes calls: it serves nothing, and a request the server sends on
    /// this connection is answered with `unknown_method` (the `()`
    /// protocol).
    pub async fn connect_client(&self) -> Result<Client, Error> {
        self.connect(()).await
    }

    /// [`connect`](Self::connect) with a protocol shared with other
    /// connections (a reconnecting client's), to `host:port`.
    pub(crate) async fn connect_shared<P: Protocol>(
        &self,
        host: &str,
        port: u16,
        protocol: Arc<P>,
    ) -> Result<Client, Error> {
        // A listening address (0.0.0.0, ::) stands for this machine.
        let host = crate::config::connect_host(host);
        let target = format!("{host}:{port}");
        let addrs = addresses_of(host, port).await?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match timeout(self.config().timeouts().connect, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(self.start_client(stream, protocol)),
                Ok(Err(e)) => last = e,
                Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }
        }
        Err(Error::Unreachable {
            target,
            source: last,
        })
    }

    fn start_client<P: Protocol>(&self, stream: TcpStream, protocol: Arc<P>) -> Client {
        let remote = stream.peer_addr().ok();
        let _ = stream.set_nodelay(true);
        let session = Session::new(protocol, &self.endpoint, Role::Client, remote);
        let handle = session.handle();
        let (reader, writer) = stream.into_split();
        let shutdown = self.shutdown.token.clone();
        let task = tokio::spawn(session.run(reader, writer, shutdown));
        Client {
            handle,
            task: Some(task),
        }
    }

    /// Connects to the configured host and port like [`connect`](Self::connect)
    /// (or to [`Reconnect::servers`](crate::Reconnect::servers), in turn),
    /// and keeps connecting again whenever the connection breaks (but not
    /// after [`ReconnectingClient::close`] or the connector's shutdown),
    /// waiting between attempts as `reconnect` says.
    ///
    /// Returns at once; the first connection is made in the background, and
    /// calls wait for it. `protocol` handles what the server sends on every
    /// connection (`()` for a client that serves nothing). Fails only when
    /// `reconnect` is not valid.
    pub fn connect_reconnecting<P: Protocol>(
        &self,
        protocol: P,
        reconnect: Reconnect,
    ) -> Result<ReconnectingClient, Error> {
        supervisor::start(self, protocol, reconnect)
    }

    /// The seed's client: connects, sends the hello packet (`method` with
    /// `payload`), then lets `protocol` drive the conversation until the
    /// connection ends, Ctrl-C, SIGTERM or [`ShutdownHandle::shutdown`].
    ///
    /// Fails with [`Error::Unreachable`] when no server answers.
    pub async fn run_client<P: Protocol>(
        &self,
        protocol: P,
        method: &str,
        payload: Value,
    ) -> Result<EndReason, Error> {
        let client = self.connect(protocol).await?;
        let signals = tokio::spawn(self.shutdown.shutdown_on_signal());
        let hello = client.session().notify(method, payload).await;
        if let Err(e) = hello {
            client.session().close();
            signals.abort();
            return Err(Error::Hello(e));
        }
        let end = client.join().await;
        signals.abort();
        Ok(end)
    }
}

/// A listening server; see [`Connector::bind`].
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    endpoint: Endpoint,
    shutdown: ShutdownHandle,
}

impl Server {
    /// The address it listens on (with the real port when 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops this server gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Accepts connections, one session task each, up to
    /// [`Limits::max_connections`](crate::Limits::max_connections) at once
    /// and [`Limits::max_connections_per_ip`](crate::Limits::max_connections_per_ip)
    /// from one remote address; a connection beyond either is closed at
    /// once, and the refusals are logged at most once a second per limit,
    /// with a count. Returns after shutdown, once every session has ended.
    pub async fn serve<P: Protocol>(self, protocol: P) -> Result<(), Error> {
        let protocol = Arc::new(protocol);
        let name = protocol.name().to_owned();
        let peer = self.endpoint.peer_id();
        let limits = self.endpoint.config().limits();
        let max = limits.max_connections;
        let slots = Arc::new(Semaphore::new(max));
        let addresses = Arc::new(AddressSlots::new(limits.max_connections_per_ip));
        let token = self.shutdown.token.clone();
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
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(protocol = %name, peer = %peer, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
                drop(stream);
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
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let session =
                Session::new(protocol.clone(), &self.endpoint, Role::Server, Some(remote));
            let token = token.clone();
            let (name, peer) = (name.clone(), peer);
            let endpoint = self.endpoint.clone();
            tokio::spawn(async move {
                tracing::debug!(protocol = %name, peer = %peer, "connection from {remote}");
                let (reader, writer) = stream.into_split();
                let end = session.run(reader, writer, token).await;
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

/// A connected client; see [`Connector::connect`].
///
/// Dropping it closes the connection gracefully (as
/// [`SessionHandle::close`] does), unless [`Client::join`] took it over.
#[derive(Debug)]
pub struct Client {
    handle: SessionHandle,
    task: Option<JoinHandle<EndReason>>,
}

impl Client {
    /// The session: send packets and make calls to the server.
    pub fn session(&self) -> &SessionHandle {
        &self.handle
    }

    /// Waits until the session ends and says why; the connection stays open
    /// until then.
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

/// The addresses `host:port` resolves to; at least one.
async fn addresses_of(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    let resolve_error = |source| Error::Resolve {
        host: host.to_owned(),
        port,
        source,
    };
    let addrs: Vec<SocketAddr> = lookup_host((host, port))
        .await
        .map_err(resolve_error)?
        .collect();
    if addrs.is_empty() {
        return Err(resolve_error(io::Error::new(
            io::ErrorKind::NotFound,
            "no address found",
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Fernet;

    fn connector(port: u16) -> Connector {
        let config = Config::builder()
            .key(Fernet::generate_key().unwrap())
            .host("127.0.0.1")
            .port(port)
            .build()
            .unwrap();
        Connector::new(config)
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_starts_the_graceful_shutdown() {
        let handle = ShutdownHandle::default();
        let waiting = handle.shutdown_on_signal();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the signal was not seen");
        assert!(handle.is_shutting_down());
    }

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

    #[tokio::test]
    async fn binding_a_busy_port_names_the_address() {
        let first = connector(0).bind().await.unwrap();
        let err = connector(first.local_addr().port())
            .bind()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Bind { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&first.local_addr().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_unresolvable_host_is_a_resolve_error() {
        let config = Config::builder()
            .key(Fernet::generate_key().unwrap())
            .host("no-such-host.invalid")
            .port(1)
            .build()
            .unwrap();
        let err = Connector::new(config).bind().await.unwrap_err();
        assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn shutdown_before_serving_returns_at_once() {
        let server = connector(0).bind().await.unwrap();
        server.shutdown_handle().shutdown();
        struct Nobody;
        impl Protocol for Nobody {
            async fn process_message(
                &self,
                _ctx: crate::Context,
                packet: crate::Packet,
            ) -> Result<crate::Reply, crate::HandlerError> {
                Err(crate::HandlerError::unknown_method(&packet.method))
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), server.serve(Nobody))
            .await
            .expect("serve did not return")
            .unwrap();
    }
}
