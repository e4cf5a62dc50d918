//! The connector: runs servers (listens) and clients (connects), one
//! engine session per connection, with the connector's hooks.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, lookup_host};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::caller::Caller;
use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::engine::Session;
use crate::error::Error;
use crate::hooks::{HookError, Hooks};
use crate::lifecycle::{EndReason, Role};
use crate::logging::Refusal;
use crate::protocol::Protocol;
use crate::reconnect::{Reconnect, ReconnectingClient};
use crate::session::SessionHandle;
use crate::sync::lock;

/// How long `accept` failures (out of file descriptors and the like) pause
/// the accept loop, instead of spinning.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

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
}

/// Registers for Ctrl-C and (on Unix) SIGTERM at once, and returns a future
/// that completes when either arrives: the one-line graceful shutdown of a
/// server ([`Server::with_graceful_shutdown`]) or of anything else.
/// Registering happens in this call, before the first poll, so a signal sent
/// right after it is not missed.
///
/// ```no_run
/// # async fn example(connector: stream_rpc::Connector, protocol: ()) -> Result<(), stream_rpc::Error> {
/// connector
///     .bind()
///     .await?
///     .with_graceful_shutdown(stream_rpc::shutdown_signal())
///     .serve(protocol)
///     .await
/// # }
/// ```
///
/// # Panics
///
/// On Unix, when called outside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
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
    }
}

/// Runs servers and clients with one [`Config`]: the one way to serve and
/// to connect.
///
/// - Serve: [`bind`](Connector::bind), then [`Server::serve`], with
///   [`Server::with_graceful_shutdown`] to stop on a signal or any future.
/// - Connect: [`connect`](Connector::connect) for one connection, or
///   [`connect_reconnecting`](Connector::connect_reconnecting) for a client
///   that reconnects and fails over by itself; both with the protocol this
///   side serves to the peer (`()` for none).
/// - Call: through [`Caller`] on the [`Client`], the
///   [`ReconnectingClient`] or a connection.
/// - Any other byte stream (a Unix socket, an in-memory pipe):
///   [`attach`](Connector::attach).
///
/// [`on_connect`](Connector::on_connect) and
/// [`on_disconnect`](Connector::on_disconnect) run on every connection the
/// connector opens or accepts. [`run_server`](Connector::run_server) and
/// [`run_client`](Connector::run_client) are thin wrappers in the shape of
/// the Python `stream_rpc` connector.
///
/// A connector is one [`Endpoint`]: every server it runs and every
/// connection it opens share its peer id, its packet numbering and its
/// replay cache. Clones of a connector are the same endpoint; make another
/// connector (from the same `Config` if you like) for another endpoint.
#[derive(Debug, Clone)]
pub struct Connector {
    endpoint: Endpoint,
    shutdown: ShutdownHandle,
    hooks: Hooks,
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
            hooks: Hooks::default(),
        }
    }

    /// A connector configured from the environment.
    pub fn from_env() -> Result<Self, Error> {
        Ok(Connector::new(Config::from_env()?))
    }

    /// Runs `hook` on every new connection this connector opens or accepts,
    /// before anything else is sent on it by this side: the typed "hello".
    /// The hook gets the connection and may make calls on it (typed, with a
    /// generated client). When it fails, the connection is closed and the
    /// failure is reported: [`connect`](Self::connect) returns
    /// [`Error::OnConnect`]; a [`ReconnectingClient`] logs it, counts it as a
    /// failed attempt and tries again (its waiting calls fail with
    /// [`CallError::Unreachable`](crate::CallError::Unreachable) naming it);
    /// a server logs it at `WARN`. Calls on a reconnecting client wait until
    /// the hook has succeeded.
    ///
    /// ```no_run
    /// use stream_rpc::{Connector, Reconnect};
    ///
    /// #[stream_rpc::service]
    /// pub trait Hub {
    ///     async fn register(&self, worker: String) -> bool;
    /// }
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let connector = Connector::from_env()?.on_connect(|connection| async move {
    ///     let hub = HubClient::new(&connection);
    ///     match hub.register("worker-1".to_owned()).await? {
    ///         true => Ok(()),
    ///         false => Err("the hub refused this worker".into()),
    ///     }
    /// });
    /// let client = connector.connect_reconnecting((), Reconnect::default())?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(SessionHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HookError>> + Send + 'static,
    {
        self.hooks.set_on_connect(hook);
        self
    }

    /// Runs `hook` when a connection this connector opened or accepted has
    /// ended, with why it ended (for a [`ReconnectingClient`]: before it
    /// reconnects). Keep it short: it runs on the connection's task.
    ///
    /// ```
    /// # fn example(connector: stream_rpc::Connector) -> stream_rpc::Connector {
    /// connector.on_disconnect(|connection, end| {
    ///     eprintln!("{:?} ended: {end}", connection.remote_addr());
    /// })
    /// # }
    /// ```
    pub fn on_disconnect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&SessionHandle, &EndReason) + Send + Sync + 'static,
    {
        self.hooks.set_on_disconnect(hook);
        self
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
            hooks: self.hooks.clone(),
            shutdown: ShutdownHandle {
                token: self.shutdown.token.child_token(),
            },
            graceful: None,
        })
    }

    /// A thin wrapper in the shape of the Python `stream_rpc` connector:
    /// [`bind`](Self::bind), then [`Server::serve`] until Ctrl-C, SIGTERM
    /// ([`shutdown_signal`]) or [`ShutdownHandle::shutdown`].
    pub async fn run_server<P: Protocol>(&self, protocol: P) -> Result<(), Error> {
        self.bind()
            .await?
            .with_graceful_shutdown(shutdown_signal())
            .serve(protocol)
            .await
    }

    /// Connects to the configured host and port, runs the
    /// [`on_connect`](Self::on_connect) hook, and returns the connection,
    /// on which `protocol` serves what the server sends (`()` for a client
    /// that serves nothing: a request from the server is then answered with
    /// `unknown_method`).
    ///
    /// ```no_run
    /// use stream_rpc::{Caller, Connector, json};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Connector::from_env()?.connect(()).await?;
    /// let pong = client.call("ping", json!(null)).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Fails with [`Error::Unreachable`] when no server answers, and with
    /// [`Error::OnConnect`] when the hook fails.
    pub async fn connect<P: Protocol>(&self, protocol: P) -> Result<Client, Error> {
        let (host, port) = (self.config().host(), self.config().port());
        self.connect_shared(host, port, Arc::new(protocol)).await
    }

    /// [`connect`](Self::connect) with a protocol shared with other
    /// connections (a reconnecting client's), to `host:port`.
    pub(crate) async fn connect_shared<P: Protocol>(
        &self,
        host: &str,
        port: u16,
        protocol: Arc<P>,
    ) -> Result<Client, Error> {
        let target = format!("{host}:{port}");
        let addrs = addresses_of(host, port).await?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match timeout(self.config().timeouts().connect, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let remote = stream.peer_addr().ok();
                    let _ = stream.set_nodelay(true);
                    let (reader, writer) = stream.into_split();
                    let client = self.start(reader, writer, protocol, Role::Client, remote);
                    return self.say_hello(client, target).await;
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }
        }
        Err(Error::Unreachable {
            target,
            source: last,
        })
    }

    /// Runs the on-connect hook on a new client connection; closes it when
    /// the hook fails.
    async fn say_hello(&self, client: Client, target: String) -> Result<Client, Error> {
        match self.hooks.connected(client.handle()).await {
            Ok(()) => Ok(client),
            Err(source) => {
                client.handle().close();
                client.join().await;
                Err(Error::OnConnect { target, source })
            }
        }
    }

    /// Runs a connection over any byte stream (a Unix socket, an in-memory
    /// pipe, a TLS stream), as `role`, with `protocol` serving what the
    /// other end sends. The [`on_connect`](Self::on_connect) hook is not run
    /// (there is no address to report it against): call what it would do
    /// on the returned client. Needs a Tokio runtime.
    ///
    /// ```
    /// use stream_rpc::{Caller, Config, Connector, Fernet, Role, json};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = Config::builder().key(Fernet::generate_key()?).build()?;
    /// // Two endpoints (an endpoint refuses its own tokens coming back).
    /// let (server, client) = (Connector::new(config.clone()), Connector::new(config));
    /// let (a, b) = tokio::io::duplex(64 * 1024);
    /// let _server = server.attach(a, (), Role::Server);
    /// let client = client.attach(b, (), Role::Client);
    /// let refused = client.call("ping", json!(null)).await;
    /// assert!(refused.is_err()); // `()` serves nothing: unknown_method
    /// # Ok(())
    /// # }
    /// ```
    pub fn attach<S, P>(&self, stream: S, protocol: P, role: Role) -> Client
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
        P: Protocol,
    {
        let (reader, writer) = tokio::io::split(stream);
        self.start(reader, writer, Arc::new(protocol), role, None)
    }

    /// Starts a session over `reader` and `writer`; the on-disconnect hook
    /// runs when it ends.
    fn start<P, R, W>(
        &self,
        reader: R,
        writer: W,
        protocol: Arc<P>,
        role: Role,
        remote: Option<SocketAddr>,
    ) -> Client
    where
        P: Protocol,
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let session = Session::new(protocol, &self.endpoint, role, remote);
        let handle = session.handle();
        let shutdown = self.shutdown.token.clone();
        let (hooks, ended) = (self.hooks.clone(), handle.clone());
        let task = tokio::spawn(async move {
            let end = session.run(reader, writer, shutdown).await;
            hooks.disconnected(&ended, &end);
            end
        });
        Client {
            handle,
            task: Some(task),
        }
    }

    /// Connects to the configured host and port like [`connect`](Self::connect)
    /// (or to [`Reconnect::servers`](crate::Reconnect::servers), in turn),
    /// and keeps connecting again whenever the connection breaks (but not
    /// after [`ReconnectingClient::close`] or the connector's shutdown),
    /// waiting between attempts as `reconnect` says. The
    /// [`on_connect`](Self::on_connect) hook runs on every new connection,
    /// before calls are let through.
    ///
    /// Returns at once; the first connection is made in the background, and
    /// calls wait for it. `protocol` handles what the server sends on every
    /// connection (`()` for a client that serves nothing). Fails only when
    /// `reconnect` is not valid.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use stream_rpc::{Caller, Connector, Reconnect, json};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Connector::from_env()?.connect_reconnecting(
    ///     (),
    ///     Reconnect::default().with_servers([("10.0.0.1", 8888), ("10.0.0.2", 8888)]),
    /// )?;
    /// let pong = client.call_with_timeout("ping", json!(null), Duration::from_secs(3)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_reconnecting<P: Protocol>(
        &self,
        protocol: P,
        reconnect: Reconnect,
    ) -> Result<ReconnectingClient, Error> {
        crate::reconnect::start(self, protocol, reconnect)
    }

    /// A thin wrapper in the shape of the Python `stream_rpc` client:
    /// [`connect`](Self::connect), send the hello packet (`method` with
    /// `payload`), then let `protocol` drive the conversation until the
    /// connection ends, Ctrl-C, SIGTERM ([`shutdown_signal`]) or
    /// [`ShutdownHandle::shutdown`].
    ///
    /// Fails with [`Error::Unreachable`] when no server answers.
    pub async fn run_client<P: Protocol>(
        &self,
        protocol: P,
        method: &str,
        payload: Value,
    ) -> Result<EndReason, Error> {
        let client = self.connect(protocol).await?;
        let shutdown = self.shutdown.clone();
        let signal = shutdown_signal();
        let signals = tokio::spawn(async move {
            signal.await;
            shutdown.shutdown();
        });
        if let Err(e) = client.notify(method, payload).await {
            client.handle().close();
            signals.abort();
            return Err(Error::Hello(e));
        }
        let end = client.join().await;
        signals.abort();
        Ok(end)
    }
}

/// A listening server; see [`Connector::bind`].
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    endpoint: Endpoint,
    hooks: Hooks,
    shutdown: ShutdownHandle,
    graceful: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
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
        let peer = self.endpoint.peer_id();
        let limits = self.endpoint.config().limits();
        let max = limits.max_connections;
        let slots = Arc::new(Semaphore::new(max));
        let addresses = Arc::new(AddressSlots::new(limits.max_connections_per_ip));
        let token = self.shutdown.token.clone();
        if let Some(signal) = self.graceful.take() {
            let token = token.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = signal => token.cancel(),
                    () = token.cancelled() => {}
                }
            });
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
        let peer = endpoint.peer_id();
        tracing::debug!(protocol = %name, peer = %peer, "connection from {remote}");
        let _ = stream.set_nodelay(true);
        let session = Session::new(protocol, &endpoint, Role::Server, Some(remote));
        let handle = session.handle();
        let (reader, writer) = stream.into_split();
        let running = session.run(reader, writer, token);
        let hook = async {
            if let Err(e) = hooks.connected(&handle).await {
                tracing::warn!(
                    protocol = %name, peer = %peer,
                    "on-connect hook failed for {remote}: {e}; closing the connection"
                );
                handle.close();
            }
        };
        let (end, ()) = tokio::join!(running, hook);
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

/// A connection this side opened; see [`Connector::connect`]. Calls go
/// through [`Caller`].
///
/// [`connection`](Self::connection), [`connected`](Self::connected) and
/// [`is_connected`](Self::is_connected) answer as a
/// [`ReconnectingClient`]'s do. Dropping it closes the connection
/// gracefully (as [`SessionHandle::close`] does), unless
/// [`Client::join`] took it over.
#[derive(Debug)]
pub struct Client {
    handle: SessionHandle,
    task: Option<JoinHandle<EndReason>>,
}

impl Client {
    /// The connection, while it is open: to send packets, to hand to other
    /// tasks, to see when it closes.
    pub fn connection(&self) -> Option<SessionHandle> {
        (!self.handle.is_closed()).then(|| self.handle.clone())
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        !self.handle.is_closed()
    }

    /// The connection, while it is open; `None` once it has closed (a
    /// [`Client`] never reconnects). Answers at once; it is `async` to
    /// match [`ReconnectingClient::connected`].
    pub async fn connected(&self) -> Option<SessionHandle> {
        self.connection()
    }

    /// The connection's handle, open or not.
    pub(crate) fn handle(&self) -> &SessionHandle {
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
        let waiting = shutdown_signal();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the signal was not seen");
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
