//! Servers in processes of their own, each on a default multi-threaded
//! tokio runtime (one worker per core), as `#[tokio::main]` builds it: the
//! shape a user's server has.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::cpu::Probe;
use crate::systems::{self, System};

/// The option that makes the benchmark binary a server process.
pub const SERVE: &str = "--serve";

/// The server process's option that sets `Limits::stream_window`.
const STREAM_WINDOW: &str = "--stream-window";

/// A server process, killed when dropped.
pub struct ServerProcess {
    pub addr: SocketAddr,
    pub probe: Probe,
    child: Child,
}

impl ServerProcess {
    /// Starts `system`'s server in a new process of this binary.
    pub fn start(system: System) -> ServerProcess {
        ServerProcess::start_with(system, None)
    }

    /// [`ServerProcess::start`], stream-rpc granting `stream_window` input
    /// items at once when given (`Limits::stream_window`).
    pub fn start_with(system: System, stream_window: Option<u32>) -> ServerProcess {
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut command = Command::new(exe);
        command
            .args([SERVE, system.name()])
            .env(systems::KEY_VAR, systems::key())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if systems::NO_REPLAY.load(std::sync::atomic::Ordering::Relaxed) {
            command.arg("--no-replay");
        }
        if systems::METRICS.load(std::sync::atomic::Ordering::Relaxed) {
            command.arg("--metrics");
        }
        if let Some(window) = stream_window {
            command.args([STREAM_WINDOW, &window.to_string()]);
        }
        let mut child = command.spawn().expect("a server process");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's address");
        let addr = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("a server address, got {line:?}"));
        ServerProcess {
            addr,
            probe: Probe::Process(child.id()),
            child,
        }
    }
}

impl ServerProcess {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing its stdin ends it; kill it in case it does not.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server process's `main`: `--serve NAME [--no-replay]`. Prints the
/// address, then serves until its stdin closes.
pub fn serve(args: &[String]) -> ! {
    let name = args.first().map(String::as_str).unwrap_or_default();
    let Some(system) = System::ALL.into_iter().find(|s| s.name() == name) else {
        eprintln!("{SERVE}: unknown system {name:?}");
        std::process::exit(2);
    };
    if args.iter().any(|arg| arg == "--no-replay") {
        systems::NO_REPLAY.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if args.iter().any(|arg| arg == "--metrics") {
        systems::install_metrics();
    }
    // What `#[tokio::main]` builds: the multi-threaded runtime, one worker
    // per core.
    let runtime = tokio::runtime::Runtime::new().expect("a multi-threaded runtime");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let window = args
        .iter()
        .position(|arg| arg == STREAM_WINDOW)
        .and_then(|at| args.get(at + 1))
        .and_then(|window| window.parse().ok());
    runtime.spawn(systems::serve(
        system,
        systems::rpc_config(0, |limits, _| {
            if let Some(window) = window {
                limits.stream_window = window;
            }
        }),
        addr_tx,
    ));
    let addr = addr_rx.recv().expect("the server's address");
    println!("{addr}");
    // Until the parent closes stdin (or dies).
    let mut sink = [0u8; 64];
    while matches!(std::io::stdin().read(&mut sink), Ok(1..)) {}
    std::process::exit(0);
}
