//! A program run as a child, with its output (both streams) read line by
//! line on threads of its own, so that a test waits for a line, never for
//! a while; killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The bound on every wait of a [`Process`].
pub const BOUND: Duration = Duration::from_secs(30);

/// What a server of the examples (and `stream-rpc serve`) logs once it
/// listens, followed by its address.
const SERVING_ON: &str = "Serving on 127.0.0.1:";

/// A running program with its output, line by line, from both streams.
pub struct Process {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Runs `command` with its input closed and its output read; `name`
    /// names it in failures.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Process {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        fn pump(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        pump(child.stdout.take().expect("piped stdout"), tx.clone());
        pump(child.stderr.take().expect("piped stderr"), tx);
        Process {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Runs the example `name` ([`example`]) with nothing in its
    /// environment but `env`.
    pub fn example(name: &str, env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(example(name));
        command.env_clear().envs(env.iter().copied());
        Process::spawn(name, command)
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The lines read so far, in order.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The lines read so far, as one text.
    pub fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// Whether a line read so far holds `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.seen.iter().any(|line| line.contains(needle))
    }

    /// How many lines read so far hold `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.seen
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Reads one more line (bounded by `deadline`); `Err` says why none
    /// came: the process closed its output, or the time ran out.
    fn next_line(&mut self, deadline: Instant) -> Result<(), RecvTimeoutError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = self.lines.recv_timeout(left)?;
        self.seen.push(line);
        Ok(())
    }

    /// Waits (at most [`BOUND`]) for the `nth` line (from 1) that satisfies
    /// `wanted`, counting those read already, and returns it; panics with
    /// `what` and the output when none comes.
    fn wait_for_nth(&mut self, what: &str, nth: usize, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(line) = self.seen.iter().filter(|line| wanted(line)).nth(nth - 1) {
                return line.clone();
            }
            if let Err(why) = self.next_line(deadline) {
                let how = match why {
                    RecvTimeoutError::Timeout => "no",
                    RecvTimeoutError::Disconnected => "ended without",
                };
                panic!(
                    "{}: {how} {} line(s) with {what} in time; output:\n{}",
                    self.name,
                    nth,
                    self.output()
                );
            }
        }
    }

    /// Waits (at most [`BOUND`]) for a line that satisfies `wanted` and
    /// returns it (the first, if one was read already); panics with `what`
    /// and the output when none comes.
    pub fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        self.wait_for_nth(what, 1, wanted)
    }

    /// Waits (at most [`BOUND`]) until `count` lines hold `needle` and
    /// returns the last of them.
    pub fn wait_for_count(&mut self, needle: &str, count: usize) -> String {
        self.wait_for_nth(&format!("{needle:?}"), count.max(1), |line| {
            line.contains(needle)
        })
    }

    /// Waits for the server's `Serving on 127.0.0.1:PORT` line and returns
    /// the port.
    pub fn serving_port(&mut self) -> u16 {
        let line = self.wait_for("\"Serving on\"", |line| line.contains(SERVING_ON));
        let port = line.rsplit(':').next().unwrap_or_default().trim();
        port.parse()
            .unwrap_or_else(|_| panic!("{}: no port in {line:?}", self.name))
    }

    /// Waits (at most [`BOUND`]) until the process has closed its output,
    /// then for its exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            match self.next_line(deadline) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: did not exit in time; output:\n{}",
                    self.name,
                    self.output()
                ),
            }
        }
        self.child.wait().expect("wait for the process")
    }

    /// Sends it `signal` (as `kill` takes it: `-TERM`, `-INT`, `-KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// Whether it has not exited yet.
    pub fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of the example `name`'s binary, for a test of the workspace
/// root's package; builds the examples if this test runs on its own
/// (`cargo test` builds them with everything else).
pub fn example(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--examples", "--quiet"])
            .status()
            .expect("cargo build --examples");
        assert!(status.success(), "building the examples failed");
    }
    path
}
