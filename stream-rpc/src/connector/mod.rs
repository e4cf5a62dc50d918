//! The connector: runs servers (listens) and clients (connects), one
//! engine session per connection, with the connector's hooks. The server's
//! accept loop is in `server.rs`, the client's handle in `client.rs`, the
//! shutdown signals in `shutdown.rs`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, lookup_host};
use tokio::time::timeout;
use uuid::Uuid;

use crate::caller::Caller;
use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::engine::Session;
use crate::error::Error;
use crate::error::HookError;
use crate::hooks::Hooks;
use crate::lifecycle::{EndReason, Role};
use crate::protocol::Protocol;
use crate::session::Connection;

#[cfg(doc)]
use crate::ReconnectingClient;

mod client;
mod server;
mod shutdown;

pub use client::Client;
pub use server::Server;
pub use shutdown::{ShutdownHandle, shutdown_signal};

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
    /// its own choosing: [`Endpoint::with_local_id`]).
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

    /// Runs `hook` on every new connection this connector opens or accepts:
    /// the typed "hello". The hook gets the connection and may make calls on
    /// it (typed, with a generated client); it has the call timeout
    /// ([`Timeouts::call`](crate::Timeouts::call)) to finish, and a panic
    /// counts as a failure. When it fails, the connection is closed and the
    /// failure is reported: [`connect`](Self::connect) returns
    /// [`Error::OnConnect`]; a [`ReconnectingClient`] logs it, counts it as a
    /// failed attempt, tries again, and tells it through
    /// [`ReconnectingClient::last_error`] and to its waiting calls
    /// ([`CallError::Unreachable`](crate::CallError::Unreachable));
    /// a server logs it (at most once a second, with a count).
    ///
    /// On a client, [`connect`](Self::connect) returns and a reconnecting
    /// client lets calls through only once the hook has succeeded. On a
    /// server it runs beside the connection: the peer's requests are served
    /// while it runs, so it is not an admission check (the key is). It runs
    /// on the connections a connector accepts and on those it opens alike:
    /// give a program that serves and connects two connectors if their
    /// hooks differ.
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
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
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
        F: Fn(&Connection, &EndReason) + Send + Sync + 'static,
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
    pub fn local_id(&self) -> Uuid {
        self.endpoint.local_id()
    }

    /// A handle that shuts down everything this connector runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    async fn addresses(&self) -> Result<Vec<SocketAddr>, Error> {
        addresses_of(self.config().host(), self.config().port()).await
    }

    /// Listens on the configured host and port; serve with [`Server::serve`].
    ///
    /// ```no_run
    /// use stream_rpc::{Connector, shutdown_signal};
    ///
    /// struct Calculator;
    ///
    /// #[stream_rpc::service]
    /// impl Calculator {
    ///     async fn add(&self, a: i64, b: i64) -> i64 {
    ///         a + b
    ///     }
    /// }
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Connector::from_env()?.bind().await?;
    /// println!("listening on {}", server.local_addr());
    /// server
    ///     .with_graceful_shutdown(shutdown_signal())
    ///     .serve(Calculator)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn run(protocol: ()) -> Result<(), stream_rpc::Error> {
    /// stream_rpc::Connector::from_env()?.run_server(protocol).await
    /// # }
    /// ```
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
        // A listening address (0.0.0.0, ::) stands for this machine.
        let host = crate::config::connect_host(host);
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
        let limit = self.config().timeouts().call;
        match self.hooks.connected(client.handle(), limit).await {
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
    /// on the returned client; the [`on_disconnect`](Self::on_disconnect)
    /// hook runs when it ends. Needs a Tokio runtime.
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

    /// A thin wrapper in the shape of the Python `stream_rpc` client:
    /// [`connect`](Self::connect), send the hello packet (`method` with
    /// `payload`), then let `protocol` drive the conversation until the
    /// connection ends, Ctrl-C, SIGTERM ([`shutdown_signal`]) or
    /// [`ShutdownHandle::shutdown`].
    ///
    /// ```no_run
    /// # async fn run(worker: ()) -> Result<(), stream_rpc::Error> {
    /// let end = stream_rpc::Connector::from_env()?
    ///     .run_client(worker, "ping", stream_rpc::json!(null))
    ///     .await?;
    /// println!("connection ended: {end}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Fails with [`Error::Unreachable`] when no server answers.
    pub async fn run_client<P: Protocol>(
        &self,
        protocol: P,
        method: &str,
        payload: Value,
    ) -> Result<EndReason, Error> {
        let client = self.connect(protocol).await?;
        let signal = shutdown_signal();
        if let Err(e) = client.notify(method, payload).await {
            client.close();
            return Err(Error::Hello(e));
        }
        let joined = client.join();
        tokio::pin!(signal, joined);
        let end = tokio::select! {
            end = &mut joined => end,
            () = &mut signal => {
                self.shutdown.shutdown();
                joined.await
            }
        };
        Ok(end)
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
