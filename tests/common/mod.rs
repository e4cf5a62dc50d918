//! Helpers shared by the loopback integration tests: a test service, a
//! server on a free port, and a raw peer that speaks bytes, not packets.
#![allow(dead_code)]

pub mod proxy;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use stream_rpc::Caller;

use serde::Deserialize;
use serde_json::{Value, json};
use stream_rpc::{
    Client, Config, ConfigBuilder, Connector, Context, ERROR_METHOD, ErrorCode, ErrorPayload,
    Fernet, HandlerError, Packet, Protocol, Reply, ShutdownHandle,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Limits with a small maximum frame length.
pub fn frame_limit(max_frame_len: usize) -> stream_rpc::Limits {
    let mut limits = stream_rpc::Limits::default();
    limits.max_frame_len = max_frame_len;
    limits
}

/// Every test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Runs a test body under the time bound.
pub async fn bounded<F: Future>(body: F) -> F::Output {
    tokio::time::timeout(LIMIT, body)
        .await
        .expect("the test exceeded its time bound")
}

pub fn new_key() -> String {
    Fernet::generate_key().unwrap()
}

/// A loopback config builder with the given key and port.
pub fn config(key: &str, port: u16) -> ConfigBuilder {
    Config::builder().key(key).host("127.0.0.1").port(port)
}

/// The state a test can observe in the service.
#[derive(Default)]
pub struct Probe {
    pub notes: AtomicUsize,
    pub noted: Notify,
    pub started: Notify,
    pub release: Notify,
    pub finished: AtomicUsize,
    /// Signalled each time a `wait` handler finishes.
    pub done: Notify,
    /// Signalled when a flood stops short: its session refused a packet,
    /// or ended and cancelled it while it waited for room to send one.
    pub flood_cut: Notify,
}

/// Signals [`Probe::flood_cut`] when dropped armed: a flood that returned
/// after a refused send, or one cancelled mid-send.
struct FloodCut<'a> {
    probe: &'a Probe,
    armed: bool,
}

impl Drop for FloodCut<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.probe.flood_cut.notify_one();
        }
    }
}

/// The service the tests talk to.
#[derive(Clone, Default)]
pub struct TestService {
    pub probe: Arc<Probe>,
}

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct FloodArgs {
    count: usize,
    size: usize,
}

impl Protocol for TestService {
    fn name(&self) -> &str {
        "TestService"
    }

    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        let method = packet.method.as_str();
        match method {
            "ping" => Ok(Reply::message("pong", packet.payload)),
            "add" => {
                let args = AddArgs::deserialize(&packet.payload)
                    .map_err(|e| HandlerError::invalid_payload(method, e))?;
                Ok(Reply::message("sum", json!(args.a + args.b)))
            }
            "fail" => Err(HandlerError::failed("this handler always fails")),
            "panic" => panic!("the test handler panics on purpose"),
            "note" => {
                self.probe.notes.fetch_add(1, Ordering::SeqCst);
                self.probe.noted.notify_one();
                Ok(Reply::Nothing)
            }
            "wait" => {
                let released = self.probe.release.notified();
                self.probe.started.notify_one();
                released.await;
                self.probe.finished.fetch_add(1, Ordering::SeqCst);
                self.probe.done.notify_one();
                Ok(Reply::message("done", packet.payload))
            }
            "callback" => {
                let answer = ctx
                    .call("ping", packet.payload)
                    .await
                    .map_err(|e| HandlerError::failed(e.to_string()))?;
                Ok(Reply::message("called_back", answer.payload))
            }
            "forward" => {
                let stored = Packet::deserialize(&packet.payload)
                    .map_err(|e| HandlerError::invalid_payload(method, e))?;
                Ok(Reply::Forward(stored))
            }
            "flood" => {
                let args = FloodArgs::deserialize(&packet.payload)
                    .map_err(|e| HandlerError::invalid_payload(method, e))?;
                let blob = "x".repeat(args.size);
                let mut cut = FloodCut {
                    probe: &self.probe,
                    armed: true,
                };
                let mut sent = 0;
                while sent < args.count {
                    if ctx.notify("blob", json!(blob)).await.is_err() {
                        break;
                    }
                    sent += 1;
                    // Let the writer run between (slow, debug-built) packets.
                    tokio::task::yield_now().await;
                }
                // A flood that sent everything was not cut.
                cut.armed = sent < args.count;
                Ok(Reply::Nothing)
            }
            "repeat" => {
                let (text, times): (String, usize) = Deserialize::deserialize(&packet.payload)
                    .map_err(|e| HandlerError::invalid_payload(method, e))?;
                Ok(Reply::message("repeated", json!(text.repeat(times))))
            }
            "pong" | "sum" | "done" => Ok(Reply::Nothing),
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// A server running a protocol on a free loopback port.
pub struct TestServer {
    pub key: String,
    pub port: u16,
    pub shutdown: ShutdownHandle,
    pub task: JoinHandle<Result<(), stream_rpc::Error>>,
}

impl TestServer {
    pub async fn start<P: Protocol>(protocol: P, builder: ConfigBuilder, key: &str) -> Self {
        let server = Connector::new(builder.build().unwrap())
            .bind()
            .await
            .unwrap();
        let port = server.local_addr().port();
        let shutdown = server.shutdown_handle();
        let task = tokio::spawn(server.serve(protocol));
        TestServer {
            key: key.to_owned(),
            port,
            shutdown,
            task,
        }
    }

    /// A server running [`TestService`] with default settings.
    pub async fn new() -> Self {
        Self::with(|builder| builder).await
    }

    /// A server running [`TestService`] with a fresh key and the settings
    /// that `configure` makes.
    pub async fn with(configure: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        Self::probed(configure).await.0
    }

    /// [`TestServer::with`], also returning the service's probe.
    pub async fn probed(
        configure: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    ) -> (Self, Arc<Probe>) {
        let service = TestService::default();
        let probe = service.probe.clone();
        let key = new_key();
        let server = Self::start(service, configure(config(&key, 0)), &key).await;
        (server, probe)
    }

    pub async fn client(&self) -> Client {
        self.client_at(self.port).await
    }

    /// A client with this server's key that connects to `port`, e.g. a
    /// proxy in front of the server.
    pub async fn client_at(&self, port: u16) -> Client {
        Connector::new(config(&self.key, port).build().unwrap())
            .connect(TestService::default())
            .await
            .unwrap()
    }

    pub async fn raw(&self) -> RawPeer {
        RawPeer::connect(self.port, &self.key).await
    }

    /// The server still answers a fresh, well-behaved client.
    pub async fn assert_healthy(&self) {
        let client = self.client().await;
        let reply = client.call("ping", json!("still there?")).await;
        assert_eq!(reply.unwrap().payload, json!("still there?"));
        client.close();
        client.join().await;
    }

    pub async fn stop(self) {
        self.shutdown.shutdown();
        self.task.await.unwrap().unwrap();
    }
}

/// A client connected to a raw peer that plays the server (accepts the
/// client's connection and speaks packets by hand): for what a client
/// sends, and how it takes what a server should never send.
pub async fn client_and_raw_server() -> (stream_rpc::Client, RawPeer) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = new_key();
    let connecting = tokio::spawn({
        let key = key.clone();
        async move {
            stream_rpc::Connector::new(config(&key, port).build().unwrap())
                .connect(())
                .await
                .unwrap()
        }
    });
    let (socket, _) = listener.accept().await.unwrap();
    let client = connecting.await.unwrap();
    (client, RawPeer::over_stream(socket, &key))
}

/// A peer that writes raw bytes and reads raw lines.
pub struct RawPeer {
    pub fernet: fernet::Fernet,
    pub id: Uuid,
    reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    next: u64,
}

impl RawPeer {
    pub async fn connect(port: u16, key: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Self::over(stream, key)
    }

    /// A peer whose socket receive buffer is as small as the kernel allows,
    /// so that a peer that stops reading is felt by the server at once.
    pub async fn connect_small(port: u16, key: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        Self::over(stream, key)
    }

    /// A raw peer over a socket already connected (e.g. accepted).
    pub fn over_stream(stream: TcpStream, key: &str) -> Self {
        Self::over(stream, key)
    }

    fn over(stream: TcpStream, key: &str) -> Self {
        let (reader, writer) = stream.into_split();
        RawPeer {
            fernet: fernet::Fernet::new(key).unwrap(),
            id: Uuid::new_v4(),
            reader: BufReader::new(reader),
            writer,
            next: 0,
        }
    }

    /// The reading half, for a test that reads bytes itself.
    pub fn reader_mut(&mut self) -> &mut BufReader<OwnedReadHalf> {
        &mut self.reader
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Seals any plaintext and sends it as a line.
    pub async fn send_plain(&mut self, plain: &[u8]) {
        let token = self.fernet.encrypt(plain);
        self.send_raw(format!("{token}\n").as_bytes()).await;
    }

    pub fn packet(&mut self, method: &str, payload: Value) -> Packet {
        self.next += 1;
        Packet::new(self.id, self.next, method, payload)
    }

    /// Sends a packet and returns its id.
    pub async fn send(&mut self, packet: &Packet) -> u64 {
        self.send_plain(&packet.to_json().unwrap()).await;
        packet.id
    }

    pub async fn request(&mut self, method: &str, payload: Value) -> u64 {
        let packet = self.packet(method, payload);
        self.send(&packet).await
    }

    /// Reads the next frame, or `None` when the connection closed.
    pub async fn recv_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    /// Reads and opens the next packet; panics if the connection closed.
    pub async fn recv(&mut self) -> Packet {
        let line = self.recv_line().await.expect("connection closed");
        let plain = self.fernet.decrypt(&line).expect("reply does not decrypt");
        Packet::from_json(&plain).expect("reply is not a packet")
    }

    /// Reads the next packet and checks that it answers request `id`.
    pub async fn recv_reply(&mut self, id: u64) -> Packet {
        let reply = self.recv().await;
        let to = reply.reply_to.expect("not a reply");
        assert_eq!(
            (to.peer, to.id),
            (self.id, id),
            "answers another packet: {reply}"
        );
        reply
    }

    /// Reads until the connection ends, discarding what comes; says whether
    /// it ended cleanly (end of stream) rather than by a reset.
    pub async fn ends_cleanly(&mut self) -> bool {
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match self.reader.read(&mut sink).await {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(_) => {}
            }
        }
    }

    /// Waits until the server closes the connection, discarding what comes.
    pub async fn expect_closed(&mut self) {
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match self.reader.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Sends a ping and checks that the first thing back is its pong. The read
/// loop handles frames in order, so anything sent in answer to earlier
/// input would have come first: this proves that earlier input got no reply.
pub async fn ping_is_next(raw: &mut RawPeer) {
    let id = raw.request("ping", json!("next")).await;
    assert_eq!(raw.recv_reply(id).await.method, "pong");
}

/// The error payload of an error packet, checking the method.
pub fn error_of(packet: &Packet) -> ErrorPayload {
    assert_eq!(packet.method, ERROR_METHOD, "not an error packet: {packet}");
    packet.error().expect("malformed error payload")
}

pub fn assert_error(packet: &Packet, code: ErrorCode) -> ErrorPayload {
    let error = error_of(packet);
    assert_eq!(error.code, code, "{error:?}");
    error
}

/// The path of an example's binary (from the test support crate, which
/// also runs examples as processes: `stream_rpc_test_support::Process`).
#[allow(unused_imports)]
pub use stream_rpc_test_support::example;
