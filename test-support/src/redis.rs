//! A real `redis-server` per test, on a free loopback port, with a
//! temporary directory of its own; stopped (and the directory removed) when
//! dropped. Append-only file on, fsync at every write, as a deployment that
//! must lose nothing acknowledged runs it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::try_free_port as free_port;

/// How long a starting `redis-server` has to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// How often a starting `redis-server` is asked whether it is ready.
const READY_POLL: Duration = Duration::from_millis(10);
/// How long one PING may wait for its answer.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A running `redis-server` of the test's own.
pub struct RedisServer {
    child: Option<Child>,
    /// The plain (`redis://`) port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    tls: Option<Tls>,
}

/// A TLS port beside the plain one, with the certificates of [`tls_file`].
struct Tls {
    port: u16,
    /// Whether clients must show a certificate of the test CA.
    require_client_cert: bool,
}

/// A file of this crate's `tls` directory: the test CA (`ca.pem`), Redis's
/// certificate for localhost and 127.0.0.1 (`server.pem`, `server.key`), a
/// client's (`client.pem`, `client.key`), and a CA that signed neither
/// (`other-ca.pem`). Test certificates: never trust them anywhere else.
pub fn tls_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tls")
        .join(name)
}

impl RedisServer {
    /// Starts one on a free port; panics with what to do when there is no
    /// `redis-server` on the PATH.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), saying what went wrong instead of panicking.
    pub fn try_start() -> Result<Self, String> {
        Self::launch(None)
    }

    /// [`start`](Self::start) with a TLS port as well ([`tls_url`](Self::tls_url)),
    /// whose certificate the test CA (`tls_file("ca.pem")`) signed; with
    /// `require_client_cert`, clients must show one the test CA signed.
    pub fn start_tls(require_client_cert: bool) -> Self {
        let tls = free_port().map(|port| Tls {
            port,
            require_client_cert,
        });
        tls.and_then(|tls| Self::launch(Some(tls)))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn launch(tls: Option<Tls>) -> Result<Self, String> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!(
            "stream-rpc-redis-{}-{}-{}",
            std::process::id(),
            port,
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            tls,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        // A TLS server also listens on 127.0.0.2 (loopback too), an address
        // its certificate does not name.
        let bind = if self.tls.is_some() {
            "127.0.0.1 127.0.0.2"
        } else {
            "127.0.0.1"
        };
        if let Some(tls) = &self.tls {
            command
                .args(["--tls-port", &tls.port.to_string()])
                .arg("--tls-cert-file")
                .arg(tls_file("server.pem"))
                .arg("--tls-key-file")
                .arg(tls_file("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls_file("ca.pem"))
                .args([
                    "--tls-auth-clients",
                    if tls.require_client_cert { "yes" } else { "no" },
                ]);
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", bind])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}): the Redis tests and the queue \
                     benchmark need it on the PATH. Install it (Debian: \
                     `apt-get install -y redis-server`); the README's test command \
                     installs it when it can"
                )
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until it answers PING (bounded by [`READY_WITHIN`]). Another
    /// process gives no event to wait on: it is asked every [`READY_POLL`].
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        while !self.ping() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not answer within {READY_WITHIN:?}; its log: {:?}",
                    self.port,
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(READY_POLL);
        }
        Ok(())
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(PING_TIMEOUT));
        let mut answer = [0u8; 16];
        stream.write_all(b"PING\r\n").is_ok()
            && matches!(stream.read(&mut answer), Ok(n) if answer[..n].starts_with(b"+PONG"))
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The `rediss://` URL of the TLS port of [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("a server started with start_tls");
        format!("rediss://127.0.0.1:{}/", tls.port)
    }

    /// Kills it with SIGKILL: what it had not written to its append-only
    /// file is lost, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory: it reads its
    /// append-only file back.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
