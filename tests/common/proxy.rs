//! A fault-injecting TCP proxy for the loopback tests.
//!
//! [`Proxy::start`] listens on a free `127.0.0.1` port and forwards every
//! connection it accepts to a target (which [`Proxy::set_target`] changes
//! for the connections that come after). What it does to the bytes is set
//! at run time, per direction, and applies at once to every connection,
//! current and new:
//!
//! | call | what the peers see |
//! |---|---|
//! | [`delay`](Proxy::delay), [`set`](Proxy::set)`(dir, Fault::Delay(d))` | each chunk arrives `d` later (latency, not a throughput limit: chunks are pipelined) |
//! | [`discard`](Proxy::discard) | bytes that way are read and thrown away: the sender's writes succeed, nothing arrives |
//! | [`stall`](Proxy::stall) | nothing is forwarded either way and nothing more is read (the senders' buffers fill); the connections stay open; what was held is delivered, in order, once it heals |
//! | [`partition`](Proxy::partition) | a stall in one direction only: the other way flows |
//! | [`cut`](Proxy::cut) | every current connection is closed, both sides; new ones are accepted |
//! | [`heal`](Proxy::heal) | back to normal, both ways |
//!
//! [`tap`](Proxy::tap) hands every line (a frame of the wire: bytes up to a
//! `\n`) either way to a channel, as the sender sent it, whatever the fault
//! then does to it: a test can capture a token on its way to a server and
//! play it elsewhere, or read the conversation with the key.
//!
//! Everything ends when the proxy is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which way bytes go through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting client to the target.
    ToServer,
    /// From the target back to the client.
    ToClient,
}

/// What the proxy does to the bytes going one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward at once.
    #[default]
    Pass,
    /// Forward each chunk this much later.
    Delay(Duration),
    /// Read and throw away.
    Discard,
    /// Neither read nor forward; hold what was read until it changes.
    Stall,
}

/// A line seen by a [`Proxy::tap`].
#[derive(Debug, Clone)]
pub struct Tapped {
    /// The tag given to [`Proxy::tap`] (which proxy saw it).
    pub tag: usize,
    /// The connection, numbered from 1 in the order the proxy accepted them.
    pub connection: u64,
    /// Which way it went.
    pub direction: Direction,
    /// When the proxy read it.
    pub at: Instant,
    /// The line, without its `\n` (nor a `\r` before it).
    pub line: Vec<u8>,
}

/// The longest line a tap keeps; a longer one is skipped whole.
const MAX_TAPPED_LINE: usize = 1 << 20;

/// How long connecting to the target may take before the client's
/// connection is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Settings {
    target: SocketAddr,
    to_server: Fault,
    to_client: Fault,
    /// Bumped by every cut: connections opened before end.
    cuts: u64,
    tap: Option<(usize, mpsc::UnboundedSender<Tapped>)>,
}

impl Settings {
    fn fault(&self, direction: Direction) -> Fault {
        match direction {
            Direction::ToServer => self.to_server,
            Direction::ToClient => self.to_client,
        }
    }
}

/// A fault-injecting proxy on a free loopback port (see the module docs).
pub struct Proxy {
    port: u16,
    settings: watch::Sender<Settings>,
    accepted: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings = self.settings.borrow();
        f.debug_struct("Proxy")
            .field("port", &self.port)
            .field("target", &settings.target)
            .field("to_server", &settings.to_server)
            .field("to_client", &settings.to_client)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy on a free `127.0.0.1` port in front of `target`, forwarding
    /// normally.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (settings, _) = watch::channel(Settings {
            target,
            to_server: Fault::Pass,
            to_client: Fault::Pass,
            cuts: 0,
            tap: None,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(listener, settings.clone(), accepted.clone()));
        Ok(Proxy {
            port,
            settings,
            accepted,
            accept,
        })
    }

    /// [`start`](Self::start) in front of `127.0.0.1:port`.
    pub async fn to_port(port: u16) -> std::io::Result<Proxy> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Where it forwards to now.
    pub fn target(&self) -> SocketAddr {
        self.settings.borrow().target
    }

    /// Forwards the connections accepted from now on to `target` (current
    /// ones keep theirs).
    pub fn set_target(&self, target: SocketAddr) {
        self.settings.send_modify(|s| s.target = target);
    }

    /// How many connections it accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Sets what happens to the bytes going `direction`.
    pub fn set(&self, direction: Direction, fault: Fault) {
        self.settings.send_modify(|s| match direction {
            Direction::ToServer => s.to_server = fault,
            Direction::ToClient => s.to_client = fault,
        });
    }

    /// What happens now to the bytes going `direction`.
    pub fn fault(&self, direction: Direction) -> Fault {
        self.settings.borrow().fault(direction)
    }

    /// Adds `delay` to every chunk, both ways.
    pub fn delay(&self, delay: Duration) {
        self.both(Fault::Delay(delay));
    }

    /// Throws away the bytes going `direction`.
    pub fn discard(&self, direction: Direction) {
        self.set(direction, Fault::Discard);
    }

    /// Stops forwarding both ways, keeping the connections open.
    pub fn stall(&self) {
        self.both(Fault::Stall);
    }

    /// Stops the bytes going `direction` (held, as a partition holds them
    /// until TCP gives up); the other way flows.
    pub fn partition(&self, direction: Direction) {
        self.settings.send_modify(|s| match direction {
            Direction::ToServer => {
                s.to_server = Fault::Stall;
                s.to_client = Fault::Pass;
            }
            Direction::ToClient => {
                s.to_server = Fault::Pass;
                s.to_client = Fault::Stall;
            }
        });
    }

    /// Closes every current connection, both sides.
    pub fn cut(&self) {
        self.settings.send_modify(|s| s.cuts += 1);
    }

    /// Back to normal, both ways.
    pub fn heal(&self) {
        self.both(Fault::Pass);
    }

    /// Sends every line either way, as the sender sent it, to `sink`,
    /// tagged `tag`; replaces a tap set before.
    pub fn tap(&self, tag: usize, sink: mpsc::UnboundedSender<Tapped>) {
        self.settings.send_modify(|s| s.tap = Some((tag, sink)));
    }

    /// Stops tapping.
    pub fn untap(&self) {
        self.settings.send_modify(|s| s.tap = None);
    }

    fn both(&self, fault: Fault) {
        self.settings.send_modify(|s| {
            s.to_server = fault;
            s.to_client = fault;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends every connection (they also end when the sender is gone).
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: watch::Sender<Settings>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, say: not a busy loop meanwhile.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let number = accepted.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(connection(client, number, settings.subscribe()));
    }
}

/// Forwards one connection until either side ends both ways, or a cut.
async fn connection(client: TcpStream, number: u64, mut settings: watch::Receiver<Settings>) {
    let (target, cuts) = {
        let s = settings.borrow_and_update();
        (s.target, s.cuts)
    };
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => server,
        // Nobody there: the client sees its connection closed.
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        client_read,
        server_write,
        Direction::ToServer,
        number,
        settings.clone(),
    );
    let down = pump(
        server_read,
        client_write,
        Direction::ToClient,
        number,
        settings.clone(),
    );
    let cut = async {
        loop {
            if settings.changed().await.is_err() {
                return;
            }
            if settings.borrow_and_update().cuts != cuts {
                return;
            }
        }
    };
    tokio::select! {
        () = cut => {}
        ((), ()) = async { tokio::join!(up, down) } => {}
    }
    // Dropping the halves closes both sockets.
}

/// Waits until the bytes going `direction` are not stalled; `None` when
/// the proxy is gone.
async fn unstalled(
    settings: &mut watch::Receiver<Settings>,
    direction: Direction,
) -> Option<Fault> {
    loop {
        let fault = settings.borrow_and_update().fault(direction);
        if fault != Fault::Stall {
            return Some(fault);
        }
        settings.changed().await.ok()?;
    }
}

/// Forwards one direction: a reader that applies the fault and a writer
/// that delivers each chunk at its time, so that a delay is latency.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    connection: u64,
    settings: watch::Receiver<Settings>,
) {
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut reader_settings = settings.clone();
    let reader = async move {
        let mut lines = LineTap::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if unstalled(&mut reader_settings, direction).await.is_none() {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // The fault is chosen before the tap sees the bytes, so that a
            // test that waits for the tap knows what became of them.
            let Some(fault) = unstalled(&mut reader_settings, direction).await else {
                return;
            };
            let tap = reader_settings.borrow().tap.clone();
            if let Some((tag, sink)) = tap {
                lines.feed(&buf[..n], |line| {
                    let _ = sink.send(Tapped {
                        tag,
                        connection,
                        direction,
                        at: Instant::now(),
                        line,
                    });
                });
            }
            let when = match fault {
                Fault::Discard => continue,
                Fault::Delay(delay) => Instant::now() + delay,
                Fault::Pass | Fault::Stall => Instant::now(),
            };
            if chunks.send((when, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
        // The sender drops here: the writer ends after what is queued.
    };
    let mut writer_settings = settings;
    let writer = async move {
        while let Some((when, chunk)) = due.recv().await {
            tokio::time::sleep_until(when).await;
            if unstalled(&mut writer_settings, direction).await.is_none() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Splits a byte stream into lines for a tap, bounded.
#[derive(Default)]
struct LineTap {
    partial: Vec<u8>,
    /// Within a line longer than [`MAX_TAPPED_LINE`]: skipped to its end.
    skipping: bool,
}

impl LineTap {
    fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(Vec<u8>)) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            if !self.skipping {
                self.partial.extend_from_slice(&bytes[..end]);
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !line.is_empty() {
                    emit(line);
                }
            }
            self.skipping = false;
            self.partial.clear();
            bytes = &bytes[end + 1..];
        }
        if self.skipping {
            return;
        }
        self.partial.extend_from_slice(bytes);
        if self.partial.len() > MAX_TAPPED_LINE {
            self.partial = Vec::new();
            self.skipping = true;
        }
    }
}
