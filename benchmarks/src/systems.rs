//! The systems under test: a server for each, and a client that makes one
//! call. Every server runs on its own single-threaded runtime on its own
//! thread; clients run on the caller's single-threaded runtime.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use futures::{StreamExt, future};
use std::future::Future;

use stream_rpc::{
    Config, Connector, Context, Fernet, HandlerError, Packet, Protocol, Reply, StreamIo,
};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::{Bincode, Json};
use tarpc::{client, context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// stream-rpc through `#[stream_rpc::service]` and its typed client.
    StreamRpc,
    /// tarpc with its bincode transport.
    TarpcBincode,
    /// tarpc with its JSON transport.
    TarpcJson,
    /// A newline echo with no crypto and no JSON: the floor.
    Raw,
    /// A newline echo that opens each request and seals a reply with this
    /// crate's `Fernet` and `Packet` and nothing else (no session, no replay
    /// cache, no service): the floor with encryption.
    FernetEcho,
}

impl System {
    pub const ALL: [System; 5] = [
        System::StreamRpc,
        System::TarpcBincode,
        System::TarpcJson,
        System::Raw,
        System::FernetEcho,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::StreamRpc => "stream-rpc",
            System::TarpcBincode => "tarpc-bincode",
            System::TarpcJson => "tarpc-json",
            System::Raw => "raw-echo",
            System::FernetEcho => "fernet-echo",
        }
    }
}

/// The stream-rpc service: echoes the payload.
pub struct Bench;

#[stream_rpc::service]
impl Bench {
    async fn ping(&self, data: String) -> String {
        data
    }

    /// One item of the stream table's calls (server to client).
    pub async fn item(&self, size: u32) -> serde_json::Value {
        item(size)
    }

    /// Takes one item of the stream table's calls (client to server) and
    /// answers `true` (a reply: a method without one is a notification).
    pub async fn put(&self, item: serde_json::Value) -> bool {
        std::hint::black_box(item);
        true
    }
}

/// The benchmark's stream-rpc server: [`Bench`]'s calls, and the stream
/// table's two stream methods through the raw streams API:
/// - `items` (`{"size": S, "count": N}`): N items of size S (server to
///   client);
/// - `sink` (an input stream): counts the items it is sent and answers the
///   count (client to server).
pub struct BenchServer;

impl Protocol for BenchServer {
    fn process_message(
        &self,
        ctx: Context,
        packet: Packet,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send {
        // A unit struct's reference is promoted to a static one.
        let bench: &'static Bench = &Bench;
        bench.process_message(ctx, packet)
    }

    async fn process_stream(
        &self,
        _: Context,
        packet: Packet,
        mut io: StreamIo,
    ) -> Result<serde_json::Value, HandlerError> {
        match packet.method.as_str() {
            "items" => {
                let size = packet.payload["size"].as_u64().unwrap_or(0) as u32;
                let count = packet.payload["count"].as_u64().unwrap_or(0);
                let mut output = io
                    .output()
                    .ok_or_else(|| HandlerError::failed("no output"))?;
                let item = item(size);
                for _ in 0..count {
                    if output.send(item.clone()).await.is_err() {
                        break; // cancelled
                    }
                }
                Ok(serde_json::Value::Null)
            }
            "sink" => {
                let mut input = io.input().ok_or_else(|| HandlerError::failed("no input"))?;
                let mut count = 0u64;
                while let Some(item) = input.next().await {
                    std::hint::black_box(item);
                    count += 1;
                }
                Ok(count.into())
            }
            other => Err(HandlerError::not_a_stream(other)),
        }
    }
}

/// An item of the stream table: an integer when `size` is 0, else a string
/// of `size` bytes.
pub fn item(size: u32) -> serde_json::Value {
    use std::sync::OnceLock;
    static KIB: OnceLock<serde_json::Value> = OnceLock::new();
    match size {
        0 => serde_json::json!(1_234_567),
        1024 => KIB.get_or_init(|| "x".repeat(1024).into()).clone(),
        size => "x".repeat(size as usize).into(),
    }
}

/// A stream-rpc connection to `addr` (the connection's handle, and the
/// client that keeps it open).
pub async fn connect_stream_rpc(addr: SocketAddr) -> (stream_rpc::Connection, stream_rpc::Client) {
    let connector = Connector::new(rpc_config(addr.port(), |_, _| {}));
    let client = connector.connect(Bench).await.expect("connect");
    (client.connection().expect("connected"), client)
}

/// The tarpc service: echoes the payload.
#[tarpc::service]
pub trait Ping {
    async fn ping(data: String) -> String;
}

#[derive(Clone)]
struct PingServer;

impl Ping for PingServer {
    async fn ping(self, _: context::Context, data: String) -> String {
        data
    }
}

/// A server running on its own thread until dropped.
pub struct ServerThread {
    pub addr: SocketAddr,
    /// The server thread's CPU time.
    pub probe: crate::cpu::Probe,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Set by `--no-replay`: stream-rpc runs without replay protection, to
/// measure what it costs.
pub static NO_REPLAY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set by `--metrics`: a Prometheus recorder is installed (here and in the
/// server processes).
pub static METRICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs a Prometheus recorder, without an HTTP listener: what recording
/// costs when an exporter is there.
pub fn install_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let _ = metrics::set_global_recorder(recorder);
}

/// The variable that hands the key to a server process.
pub const KEY_VAR: &str = "STREAM_RPC_BENCH_KEY";

/// The shared key of every stream-rpc run.
pub fn key() -> &'static str {
    use std::sync::OnceLock;
    static KEY: OnceLock<String> = OnceLock::new();
    // A server process gets its parent's key in this variable.
    KEY.get_or_init(|| {
        std::env::var(KEY_VAR)
            .ok()
            .filter(|key| !key.is_empty())
            .unwrap_or_else(|| Fernet::generate_key().expect("OS randomness"))
    })
}

pub fn rpc_config(
    port: u16,
    tune: impl FnOnce(&mut stream_rpc::Limits, &mut stream_rpc::Timeouts),
) -> Config {
    let mut limits = stream_rpc::Limits::default();
    let mut timeouts = stream_rpc::Timeouts::default();
    limits.max_connections = 20_000;
    // Every client of a benchmark is on 127.0.0.1: one address.
    limits.max_connections_per_ip = 20_000;
    tune(&mut limits, &mut timeouts);
    Config::builder()
        .key(key())
        .host("127.0.0.1")
        .port(port)
        .limits(limits)
        .timeouts(timeouts)
        .replay_protection(!NO_REPLAY.load(std::sync::atomic::Ordering::Relaxed))
        .build()
        .expect("benchmark config")
}

/// Starts `system`'s server on 127.0.0.1 and a free port.
pub fn start_server(system: System) -> ServerThread {
    start_server_with(system, rpc_config(0, |_, _| {}))
}

/// Starts `system`'s server; stream-rpc uses `config`.
pub fn start_server_with(system: System, config: Config) -> ServerThread {
    let (addr_tx, addr_rx) = std_mpsc::channel();
    let (probe_tx, probe_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let _ = probe_tx.send(crate::cpu::Probe::this_thread());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let serving = serve(system, config, addr_tx);
                tokio::select! {
                    _ = stop_rx => {}
                    () = serving => {}
                }
            });
        })
        .expect("server thread");
    let addr = addr_rx.recv().expect("server address");
    ServerThread {
        addr,
        probe: probe_rx.recv().expect("server thread id"),
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// Listens on a free loopback port and reports the address.
async fn bind_loopback(addr_tx: &std_mpsc::Sender<SocketAddr>) -> TcpListener {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    addr_tx
        .send(listener.local_addr().expect("address"))
        .expect("report address");
    listener
}

/// Serves `system` on a free loopback port (reported on `addr_tx`) on the
/// runtime it is called on, until dropped.
pub async fn serve(system: System, config: Config, addr_tx: std_mpsc::Sender<SocketAddr>) {
    match system {
        System::StreamRpc => {
            let server = Connector::new(config).bind().await.expect("bind");
            addr_tx.send(server.local_addr()).expect("report address");
            let _ = server.serve(BenchServer).await;
        }
        System::TarpcBincode | System::TarpcJson => {
            let listener = bind_loopback(&addr_tx).await;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // tarpc as it ships: Nagle is left as tarpc leaves it.
                let framed = tarpc::tokio_util::codec::LengthDelimitedCodec::builder()
                    .max_frame_length(usize::MAX)
                    .new_framed(stream);
                if system == System::TarpcBincode {
                    let transport = tarpc::serde_transport::new(framed, Bincode::default());
                    tokio::spawn(serve_tarpc(transport));
                } else {
                    let transport = tarpc::serde_transport::new(framed, Json::default());
                    tokio::spawn(serve_tarpc(transport));
                }
            }
        }
        System::Raw => {
            let listener = bind_loopback(&addr_tx).await;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(floor_echo(stream));
            }
        }
        System::FernetEcho => {
            let listener = bind_loopback(&addr_tx).await;
            let sealer = Arc::new(Sealer::new());
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(fernet_echo(stream, sealer.clone()));
            }
        }
    }
}

async fn serve_tarpc<T>(transport: T)
where
    T: tarpc::Transport<tarpc::Response<PingResponse>, tarpc::ClientMessage<PingRequest>>
        + Send
        + 'static,
{
    BaseChannel::with_defaults(transport)
        .execute(PingServer.serve())
        .for_each(|request| {
            tokio::spawn(request);
            future::ready(())
        })
        .await;
}

/// The floor: echoes every complete line it has read, in one write per
/// read, doing nothing per line but finding the last terminator.
async fn floor_echo(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut held = 0;
    loop {
        let read = match stream.read(&mut buffer[held..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let filled = held + read;
        let Some(last) = memchr::memrchr(b'\n', &buffer[..filled]) else {
            held = filled;
            if held == buffer.len() {
                return; // a line longer than the buffer: not this benchmark's
            }
            continue;
        };
        if stream.write_all(&buffer[..=last]).await.is_err() {
            return;
        }
        buffer.copy_within(last + 1..filled, 0);
        held = filled - last - 1;
    }
}

/// Writes `answer`'s reply to each line, terminator included, and flushes
/// only when no more input is buffered.
async fn answer_lines(stream: TcpStream, answer: impl for<'l> Fn(&'l [u8]) -> Cow<'l, [u8]>) {
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if writer.write_all(&answer(&line)).await.is_err() {
            return;
        }
        if reader.buffer().is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
}

/// The fernet-echo system's messages: this crate's `Fernet` and `Packet`,
/// and nothing of the framework around them.
pub struct Sealer {
    fernet: Fernet,
    peer: uuid::Uuid,
    next_id: std::sync::atomic::AtomicU64,
}

impl Sealer {
    pub fn new() -> Sealer {
        Sealer {
            fernet: Fernet::new(key()).expect("key"),
            peer: uuid::Uuid::new_v4(),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A sealed frame, terminator included.
    fn seal(&self, packet: &stream_rpc::Packet) -> Vec<u8> {
        use stream_rpc::Cipher;
        let mut frame = self
            .fernet
            .encrypt(&packet.to_json().expect("json"))
            .expect("seal");
        frame.push(b'\n');
        frame
    }

    /// Opens a frame (terminator included) into its packet.
    fn open(&self, frame: &[u8]) -> stream_rpc::Packet {
        use stream_rpc::Cipher;
        let token = frame.strip_suffix(b"\n").unwrap_or(frame);
        let plain = self.fernet.decrypt(token).expect("open");
        stream_rpc::Packet::from_json(&plain).expect("packet")
    }

    /// A `ping` request frame carrying `data`.
    pub fn request(&self, data: &str) -> Vec<u8> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let payload = serde_json::to_value(data).expect("payload");
        self.seal(&stream_rpc::Packet::new(self.peer, id, "ping", payload))
    }

    /// Opens a reply frame and reads its payload back.
    pub fn check_reply(&self, frame: &[u8], data: &str) {
        let reply = self.open(frame);
        let echoed: String = serde_json::from_value(reply.payload).expect("reply payload");
        debug_assert_eq!(echoed.len(), data.len());
    }

    /// The reply frame to a request frame: its payload, typed, echoed back.
    fn answer(&self, frame: &[u8]) -> Vec<u8> {
        let request = self.open(frame);
        let data: String = serde_json::from_value(request.payload).expect("request payload");
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let payload = serde_json::to_value(data).expect("payload");
        let mut reply = stream_rpc::Packet::new(self.peer, id, "ping.reply", payload);
        reply.reply_to = Some(stream_rpc::ReplyTo {
            peer: request.peer,
            id: request.id,
        });
        self.seal(&reply)
    }
}

/// Answers each sealed line with a sealed reply.
async fn fernet_echo(stream: TcpStream, sealer: Arc<Sealer>) {
    answer_lines(stream, |line| Cow::Owned(sealer.answer(line))).await;
}

/// A client connection of one system; cheap to clone for concurrent calls
/// on the same connection.
#[derive(Clone)]
pub enum Client {
    StreamRpc {
        client: BenchClient,
        /// Keeps the connection open: dropping the last one closes it.
        _connection: Arc<stream_rpc::Client>,
    },
    Tarpc(PingClient),
    Raw(Arc<tokio::sync::Mutex<RawConn>>),
    FernetEcho(Arc<tokio::sync::Mutex<RawConn>>, Arc<Sealer>),
}

/// One raw echo connection, used one call at a time.
pub struct RawConn {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        RawConn {
            reader: BufReader::with_capacity(64 * 1024, reader),
            writer,
            line: Vec::with_capacity(4096),
        }
    }

    pub async fn round_trip(&mut self, frame: &[u8]) {
        self.writer.write_all(frame).await.expect("raw write");
        self.read_one().await;
    }

    pub async fn write(&mut self, frame: &[u8]) {
        self.writer.write_all(frame).await.expect("raw write");
    }

    /// The last line read, terminator included.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    pub async fn read_one(&mut self) {
        self.line.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.line)
            .await
            .expect("raw read");
        assert!(n > 0, "raw echo closed");
    }
}

/// Opens the connections of one run: for stream-rpc, all through one
/// [`Connector`], one client endpoint with one configuration, as an
/// application would hold it.
pub struct Clients {
    system: System,
    addr: SocketAddr,
    connector: Option<Connector>,
}

impl Clients {
    pub fn new(system: System, addr: SocketAddr) -> Clients {
        let connector = (system == System::StreamRpc)
            .then(|| Connector::new(rpc_config(addr.port(), |_, _| {})));
        Clients {
            system,
            addr,
            connector,
        }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.system, self.addr, self.connector.as_ref()).await
    }
}

impl Client {
    async fn connect(system: System, addr: SocketAddr, connector: Option<&Connector>) -> Client {
        match system {
            System::StreamRpc => {
                let client = connector
                    .expect("a connector for stream-rpc")
                    .connect(Bench)
                    .await
                    .expect("connect");
                Client::StreamRpc {
                    client: BenchClient::new(client.connection().expect("connected")),
                    _connection: Arc::new(client),
                }
            }
            System::TarpcBincode => {
                let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default)
                    .await
                    .expect("connect");
                Client::Tarpc(PingClient::new(client::Config::default(), transport).spawn())
            }
            System::TarpcJson => {
                let transport = tarpc::serde_transport::tcp::connect(addr, Json::default)
                    .await
                    .expect("connect");
                Client::Tarpc(PingClient::new(client::Config::default(), transport).spawn())
            }
            System::Raw => Client::Raw(Arc::new(tokio::sync::Mutex::new(
                RawConn::connect(addr).await,
            ))),
            System::FernetEcho => Client::FernetEcho(
                Arc::new(tokio::sync::Mutex::new(RawConn::connect(addr).await)),
                Arc::new(Sealer::new()),
            ),
        }
    }

    /// One call with `data` as the payload (for raw, `frame` is sent).
    pub async fn call(&self, data: &str, frame: &[u8]) {
        match self {
            Client::StreamRpc { client, .. } => {
                let echoed = client.ping(data.to_owned()).await.expect("stream-rpc call");
                debug_assert_eq!(echoed.len(), data.len());
            }
            Client::Tarpc(client) => {
                let echoed = client
                    .ping(context::current(), data.to_owned())
                    .await
                    .expect("tarpc call");
                debug_assert_eq!(echoed.len(), data.len());
            }
            Client::Raw(conn) => conn.lock().await.round_trip(frame).await,
            Client::FernetEcho(conn, sealer) => {
                let mut conn = conn.lock().await;
                conn.round_trip(&sealer.request(data)).await;
                sealer.check_reply(conn.line(), data);
            }
        }
    }
}

/// The length of a stream-rpc request frame carrying `data`, terminator
/// included: the raw echo sends lines of this length.
pub fn rpc_frame_len(data: &str) -> usize {
    use stream_rpc::Cipher;
    let packet = stream_rpc::Packet::new(
        uuid::Uuid::new_v4(),
        12_345,
        "ping",
        serde_json::json!(data),
    );
    let fernet = Fernet::new(key()).expect("key");
    fernet
        .encrypt(&packet.to_json().expect("json"))
        .expect("seal")
        .len()
        + 1
}
