//! Load and memory benchmarks: stream-rpc against tarpc (bincode and JSON
//! transports), a raw newline echo (the floor), and a newline echo that
//! seals and opens every line with this crate's Fernet and nothing more
//! (the floor with encryption), on loopback. Each server runs either in a
//! process of its own on a default multi-threaded runtime (`--mode
//! process`, as `#[tokio::main]` builds it) or on a single-threaded runtime
//! on a thread of this process (`--mode thread`); `--mode both` (the
//! default) prints a table for each. CPU time per call of the server and of
//! the client is read from `/proc`. Then streams against calls on one
//! connection, both ways (`streams.rs`), and the memory of a stalled
//! stream.
//!
//! ```text
//! cargo run --release -p stream-rpc-benchmarks            # the full run (several minutes)
//! cargo run -p stream-rpc-benchmarks -- --smoke           # a quick check that it all works
//! ```
//!
//! Options: `--reps N` (3), `--calls N` (calls per run of `seq`; `pipe64`
//! and `conn16` make 4 times as many), `--time-cap SECS` (4 per run),
//! `--mode process|thread|both`, `--skip-memory`, `--smoke`, `--no-replay`
//! (stream-rpc without replay protection, to measure its cost), `--log
//! LEVEL` (log through the seed's format to stderr at that level, e.g.
//! `--log INFO 2>/dev/null`), `--log-packets off|headers|full` (how much
//! the packet lines show), and `--system NAMES` (comma-separated),
//! `--scenario NAME` and `--payload ping|1KiB` to run part of the table
//! (for profiling), `--metrics` (a Prometheus recorder installed in this
//! process and in every server process, to measure what recording costs). `--serve NAME` is the server process's own mode. See
//! docs/BENCHMARKS.md.

mod cpu;
mod process;
mod streams;
mod systems;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cpu::{Cpu, Probe};
use systems::{RawConn, System};

/// Where the servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Each server in a process of its own on a default multi-threaded
    /// runtime (one worker per core), as `#[tokio::main]` builds it.
    Process,
    /// Each server on a single-threaded runtime on a thread of this
    /// process.
    Thread,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::Process => {
                "servers in their own processes, multi-threaded runtime (one worker per core); client in this process, single-threaded"
            }
            Mode::Thread => {
                "server and client on separate single-threaded runtimes in this process"
            }
        }
    }
}

/// A server of either mode.
enum Server {
    Thread(systems::ServerThread),
    Process(process::ServerProcess),
}

impl Server {
    fn start(mode: Mode, system: System) -> Server {
        match mode {
            Mode::Thread => Server::Thread(systems::start_server(system)),
            Mode::Process => Server::Process(process::ServerProcess::start(system)),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Server::Thread(server) => server.addr,
            Server::Process(server) => server.addr,
        }
    }

    fn probe(&self) -> Probe {
        match self {
            Server::Thread(server) => server.probe,
            Server::Process(server) => server.probe,
        }
    }
}

/// The CPU time of the server and of the client (this thread) from the
/// start of the timed part of a run.
struct Meter {
    server: Probe,
    client: Probe,
    at: (Cpu, Cpu),
}

impl Meter {
    fn start(server: Probe) -> Meter {
        let client = Probe::this_thread();
        Meter {
            server,
            client,
            at: (server.read(), client.read()),
        }
    }

    fn stop(&self) -> (Cpu, Cpu) {
        (
            self.server.read() - self.at.0,
            self.client.read() - self.at.1,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Seq,
    Pipe64,
    Conn16,
}

impl Scenario {
    const ALL: [Scenario; 3] = [Scenario::Seq, Scenario::Pipe64, Scenario::Conn16];

    fn name(self) -> &'static str {
        match self {
            Scenario::Seq => "seq",
            Scenario::Pipe64 => "pipe64",
            Scenario::Conn16 => "conn16",
        }
    }

    /// Connections, and callers per connection.
    fn shape(self) -> (usize, usize) {
        match self {
            Scenario::Seq => (1, 1),
            Scenario::Pipe64 => (1, 64),
            Scenario::Conn16 => (16, 1),
        }
    }

    /// The targets of docs/BENCHMARKS.md, as (against tarpc-bincode, against raw).
    fn targets(self) -> (f64, f64) {
        match self {
            Scenario::Seq => (1.0, 0.75),
            Scenario::Pipe64 => (1.4, 0.25),
            Scenario::Conn16 => (1.0, 0.7),
        }
    }

    /// The separate-process targets against tarpc-bincode, ping payload.
    fn process_target(self) -> f64 {
        match self {
            Scenario::Seq => 1.0,
            Scenario::Pipe64 => 1.5,
            Scenario::Conn16 => 1.1,
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    reps: usize,
    calls: usize,
    time_cap: Duration,
    memory: bool,
    smoke: bool,
    /// The call tables.
    calls_table: bool,
    /// The stream table.
    streams: bool,
    systems: Vec<System>,
    scenarios: Vec<Scenario>,
    payloads: Vec<&'static str>,
    modes: Vec<Mode>,
}

fn options() -> Result<Options, String> {
    // `--log LEVEL` installs a subscriber once every option is read, with
    // `--log-packets MODE` wherever it comes.
    let mut log: Option<stream_rpc::logging::Settings> = None;
    let mut packets = stream_rpc::logging::PacketLog::default();
    let mut options = Options {
        reps: 3,
        calls: 20_000,
        time_cap: Duration::from_secs(4),
        memory: true,
        smoke: false,
        calls_table: true,
        streams: true,
        systems: System::ALL.to_vec(),
        scenarios: Scenario::ALL.to_vec(),
        payloads: vec!["ping", "1KiB"],
        modes: vec![Mode::Process, Mode::Thread],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| format!("{name} takes a whole number"))
        };
        match arg.as_str() {
            "--reps" => options.reps = number("--reps")?.max(1) as usize,
            "--calls" => options.calls = number("--calls")?.max(1) as usize,
            "--time-cap" => options.time_cap = Duration::from_secs(number("--time-cap")?.max(1)),
            "--skip-memory" => options.memory = false,
            "--skip-streams" => options.streams = false,
            "--streams" => {
                // The stream table only.
                options.calls_table = false;
                options.memory = false;
                options.streams = true;
            }
            "--metrics" => {
                systems::install_metrics();
                systems::METRICS.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            "--mode" => {
                let name = args.next().unwrap_or_default();
                options.modes = match name.as_str() {
                    "process" => vec![Mode::Process],
                    "thread" => vec![Mode::Thread],
                    "both" => vec![Mode::Process, Mode::Thread],
                    _ => return Err(format!("unknown mode {name:?}: process, thread or both")),
                };
            }
            "--no-replay" => systems::NO_REPLAY.store(true, std::sync::atomic::Ordering::Relaxed),
            "--system" => {
                let names = args.next().unwrap_or_default();
                options.systems = names
                    .split(',')
                    .map(|name| {
                        System::ALL
                            .into_iter()
                            .find(|system| system.name() == name)
                            .ok_or_else(|| format!("unknown system {name:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--payload" => {
                let name = args.next().unwrap_or_default();
                options.payloads = match name.as_str() {
                    "ping" => vec!["ping"],
                    "1KiB" => vec!["1KiB"],
                    _ => return Err(format!("unknown payload {name:?}: ping or 1KiB")),
                };
            }
            "--scenario" => {
                let name = args.next().unwrap_or_default();
                let scenario = Scenario::ALL
                    .into_iter()
                    .find(|scenario| scenario.name() == name)
                    .ok_or_else(|| format!("unknown scenario {name:?}"))?;
                options.scenarios = vec![scenario];
            }
            "--log" => {
                // A real subscriber in the seed's format, writing to stderr
                // (send it to a file or /dev/null): what logging costs.
                let level: stream_rpc::logging::LogLevel = args
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| format!("--log: {e}"))?;
                log = Some(stream_rpc::logging::Settings::default().with_level(level.0));
            }
            "--log-packets" => {
                packets = args
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| format!("--log-packets: {e}"))?;
            }
            "--smoke" => {
                options.smoke = true;
                options.reps = 1;
                options.calls = 300;
            }
            other => {
                return Err(format!(
                    "unknown option {other}; see the top of benchmarks/src/main.rs"
                ));
            }
        }
    }
    if let Some(settings) = log {
        stream_rpc::logging::init(&settings.with_packets(packets)).map_err(|e| e.to_string())?;
    }
    Ok(options)
}

/// The runs of one (mode, scenario, payload, system), over the repetitions.
type Results = Vec<(Key, Vec<Run>)>;
type Key = (Mode, Scenario, &'static str, System);

/// One run's result.
#[derive(Debug, Clone)]
struct Run {
    calls: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU time of the server, and of the client, over the timed part.
    cpu: (Cpu, Cpu),
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// Server and client CPU µs per call (user + system).
    fn cpu_per_call(&self) -> (f64, f64) {
        let calls = self.calls.max(1) as f64;
        let total = |cpu: Cpu| (cpu.user_us + cpu.system_us) / calls;
        (total(self.cpu.0), total(self.cpu.1))
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

/// Runs one scenario against one system's fresh server.
fn run(
    mode: Mode,
    system: System,
    scenario: Scenario,
    data: &str,
    calls: usize,
    cap: Duration,
) -> Run {
    let server = Server::start(mode, system);
    let probe = server.probe();
    let frame = {
        let mut line = "x".repeat(systems::rpc_frame_len(data) - 1).into_bytes();
        line.push(b'\n');
        line
    };
    let runtime = client_runtime();
    runtime.block_on(async {
        match (system, scenario) {
            (System::Raw, Scenario::Pipe64) => {
                floor_pipelined(server.addr(), probe, calls, cap, 64, &frame).await
            }
            (System::FernetEcho, Scenario::Pipe64) => {
                let sealer = systems::Sealer::new();
                line_pipelined(
                    server.addr(),
                    probe,
                    calls,
                    cap,
                    64,
                    |reply| sealer.check_reply(reply, data),
                    || sealer.request(data).into(),
                )
                .await
            }
            (_, scenario) => {
                let shape = scenario.shape();
                concurrent(
                    system,
                    server.addr(),
                    probe,
                    data,
                    &frame,
                    calls,
                    cap,
                    shape,
                )
                .await
            }
        }
    })
}

/// `connections` connections with `per_connection` callers each (`shape`),
/// calling one at a time until `calls` are made or `cap` has passed.
#[allow(clippy::too_many_arguments)]
async fn concurrent(
    system: System,
    addr: SocketAddr,
    server: Probe,
    data: &str,
    frame: &[u8],
    calls: usize,
    cap: Duration,
    (connections, per_connection): (usize, usize),
) -> Run {
    let mut clients = Vec::new();
    let factory = systems::Clients::new(system, addr);
    for _ in 0..connections {
        let client = factory.connect().await;
        for _ in 0..(calls / 20).clamp(20, 500) {
            client.call(data, frame).await;
        }
        clients.push(client);
    }
    let local = tokio::task::LocalSet::new();
    let left = Rc::new(Cell::new(calls));
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(calls)));
    let meter = Meter::start(server);
    let started = Instant::now();
    let deadline = started + cap;
    for client in &clients {
        for _ in 0..per_connection {
            let (client, left, latencies) = (client.clone(), left.clone(), latencies.clone());
            let (data, frame) = (data.to_owned(), frame.to_vec());
            local.spawn_local(async move {
                while left.get() > 0 && Instant::now() < deadline {
                    left.set(left.get() - 1);
                    let at = Instant::now();
                    client.call(&data, &frame).await;
                    latencies.borrow_mut().push(at.elapsed());
                }
            });
        }
    }
    local.await;
    let elapsed = started.elapsed();
    let cpu = meter.stop();
    drop(clients);
    let latencies = Rc::try_unwrap(latencies)
        .map(RefCell::into_inner)
        .unwrap_or_default();
    Run {
        calls: latencies.len(),
        elapsed,
        latencies,
        cpu,
    }
}

/// The line echoes' pipelined client: one connection, `window` lines in
/// flight; `next` makes each request line, `check` looks at each reply.
async fn line_pipelined<'f>(
    addr: SocketAddr,
    server: Probe,
    calls: usize,
    cap: Duration,
    window: usize,
    check: impl Fn(&[u8]),
    next: impl Fn() -> Cow<'f, [u8]>,
) -> Run {
    let mut conn = RawConn::connect(addr).await;
    for _ in 0..(calls / 20).clamp(20, 500) {
        conn.round_trip(&next()).await;
        check(conn.line());
    }
    let mut sent_at = VecDeque::with_capacity(window);
    let mut latencies = Vec::with_capacity(calls);
    let meter = Meter::start(server);
    let started = Instant::now();
    let deadline = started + cap;
    let mut sent = 0;
    while sent < calls.min(window) {
        conn.write(&next()).await;
        sent_at.push_back(Instant::now());
        sent += 1;
    }
    while let Some(at) = sent_at.pop_front() {
        conn.read_one().await;
        check(conn.line());
        latencies.push(at.elapsed());
        if sent < calls && Instant::now() < deadline {
            conn.write(&next()).await;
            sent_at.push_back(Instant::now());
            sent += 1;
        }
    }
    let elapsed = started.elapsed();
    Run {
        calls: latencies.len(),
        elapsed,
        latencies,
        cpu: meter.stop(),
    }
}

/// The floor's pipelined client: one connection, `window` lines in flight,
/// written and read in batches, doing nothing per line but count its
/// terminator.
async fn floor_pipelined(
    addr: SocketAddr,
    server: Probe,
    calls: usize,
    cap: Duration,
    window: usize,
    frame: &[u8],
) -> Run {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let batch: Vec<u8> = frame.repeat(window);
    let mut buffer = vec![0u8; 256 * 1024];
    // Warm-up: a few windows.
    for _ in 0..8 {
        writer.write_all(&batch).await.expect("write");
        let mut left = window;
        while left > 0 {
            let read = reader.read(&mut buffer).await.expect("read");
            assert!(read > 0, "the floor echo closed");
            left -= memchr::memchr_iter(b'\n', &buffer[..read]).count();
        }
    }
    let mut sent_at = VecDeque::with_capacity(window);
    let mut latencies = Vec::with_capacity(calls);
    let meter = Meter::start(server);
    let started = Instant::now();
    let deadline = started + cap;
    let first = calls.min(window);
    writer
        .write_all(&batch[..first * frame.len()])
        .await
        .expect("write");
    let now = Instant::now();
    sent_at.extend(std::iter::repeat_n(now, first));
    let mut sent = first;
    while !sent_at.is_empty() {
        let read = reader.read(&mut buffer).await.expect("read");
        assert!(read > 0, "the floor echo closed");
        let done = memchr::memchr_iter(b'\n', &buffer[..read]).count();
        let now = Instant::now();
        for at in sent_at.drain(..done.min(sent_at.len())) {
            latencies.push(now - at);
        }
        let more = if now < deadline {
            done.min(calls - sent)
        } else {
            0
        };
        if more > 0 {
            writer
                .write_all(&batch[..more * frame.len()])
                .await
                .expect("write");
            sent_at.extend(std::iter::repeat_n(Instant::now(), more));
            sent += more;
        }
    }
    let elapsed = started.elapsed();
    Run {
        calls: latencies.len(),
        elapsed,
        latencies,
        cpu: meter.stop(),
    }
}

/// The median over the repetitions of one measure of one cell.
fn cell(results: &Results, key: Key, measure: impl Fn(&Run) -> f64) -> f64 {
    results
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, runs)| median(runs.iter().map(measure).collect()))
        .unwrap_or(f64::NAN)
}

/// One mode's table and its targets.
fn report(mode: Mode, results: &Results, payloads: &[(&'static str, String)]) {
    println!();
    println!("## {:?} mode: {}", mode, mode.describe());
    println!();
    println!(
        "| scenario | payload | system | calls/s | p50 µs | p99 µs | server CPU µs/call (user+sys) | client CPU µs/call | stream-rpc ÷ this |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let rate =
        |scenario, payload, system| cell(results, (mode, scenario, payload, system), Run::rate);
    let server_cpu = |scenario, payload, system| {
        cell(results, (mode, scenario, payload, system), |run| {
            run.cpu_per_call().0
        })
    };
    for scenario in Scenario::ALL {
        for (payload, _) in payloads {
            let ours = rate(scenario, payload, System::StreamRpc);
            for system in System::ALL {
                let Some((_, runs)) = results
                    .iter()
                    .find(|(k, _)| *k == (mode, scenario, *payload, system))
                else {
                    continue;
                };
                let this = median(runs.iter().map(Run::rate).collect());
                let p50 = median(runs.iter().map(|r| micros(r.percentile(0.50))).collect());
                let p99 = median(runs.iter().map(|r| micros(r.percentile(0.99))).collect());
                let user = median(
                    runs.iter()
                        .map(|r| r.cpu.0.user_us / r.calls.max(1) as f64)
                        .collect(),
                );
                let sys = median(
                    runs.iter()
                        .map(|r| r.cpu.0.system_us / r.calls.max(1) as f64)
                        .collect(),
                );
                let client = median(runs.iter().map(|r| r.cpu_per_call().1).collect());
                let ratio = if system == System::StreamRpc || ours.is_nan() {
                    String::new()
                } else {
                    format!("{:.2}×", ours / this)
                };
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} ({:.2}+{:.2}) | {:.2} | {} |",
                    scenario.name(),
                    payload,
                    system.name(),
                    this,
                    p50,
                    p99,
                    user + sys,
                    user,
                    sys,
                    client,
                    ratio
                );
            }
        }
    }

    println!();
    println!("Targets ({mode:?} mode, same run):");
    let mut missed = 0;
    let mut check = |what: String, ratio: f64, target: f64| {
        if ratio.is_nan() {
            return; // a system or scenario left out
        }
        let verdict = if ratio >= target { "met" } else { "MISSED" };
        if ratio < target {
            missed += 1;
        }
        println!("  {what}: {ratio:.2}× (target ≥ {target:.2}×) {verdict}");
    };
    let ours = |scenario, payload| rate(scenario, payload, System::StreamRpc);
    for scenario in Scenario::ALL {
        let name = scenario.name();
        let ping = ours(scenario, "ping");
        match mode {
            Mode::Process => {
                let bincode = rate(scenario, "ping", System::TarpcBincode);
                check(
                    format!("{name:>6} ping vs tarpc-bincode"),
                    ping / bincode,
                    scenario.process_target(),
                );
                if scenario != Scenario::Seq {
                    // Server CPU per call at most tarpc-bincode's: their
                    // ratio (theirs ÷ ours) at least 1.
                    let cpu = server_cpu(scenario, "ping", System::TarpcBincode)
                        / server_cpu(scenario, "ping", System::StreamRpc);
                    check(
                        format!("{name:>6} ping server CPU/call, tarpc-bincode ÷ ours"),
                        cpu,
                        1.0,
                    );
                }
            }
            Mode::Thread => {
                let (vs_tarpc, vs_raw) = scenario.targets();
                check(
                    format!("{name:>6} ping vs tarpc-bincode"),
                    ping / rate(scenario, "ping", System::TarpcBincode),
                    vs_tarpc,
                );
                check(
                    format!("{name:>6} ping vs raw-echo"),
                    ping / rate(scenario, "ping", System::Raw),
                    vs_raw,
                );
            }
        }
        let kib = ours(scenario, "1KiB");
        if scenario != Scenario::Seq {
            check(
                format!("{name:>6} 1KiB vs tarpc-bincode"),
                kib / rate(scenario, "1KiB", System::TarpcBincode),
                0.9,
            );
        }
        if scenario == Scenario::Pipe64 {
            check(
                format!("{name:>6} 1KiB vs tarpc-json"),
                kib / rate(scenario, "1KiB", System::TarpcJson),
                1.5,
            );
        }
    }
    println!("  {missed} target(s) missed");
    // The floor must beat every framework.
    for scenario in Scenario::ALL {
        for (payload, _) in payloads {
            let floor = rate(scenario, payload, System::Raw);
            for system in System::ALL {
                let other = rate(scenario, payload, system);
                if system != System::Raw && other > floor {
                    println!(
                        "  note: {} {payload}: {} ({other:.0}/s) beat the raw echo ({floor:.0}/s)",
                        scenario.name(),
                        system.name()
                    );
                }
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(process::SERVE) {
        process::serve(&args[1..]);
    }
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "stream-rpc load benchmark: {} repetition(s), {} calls per seq run (x4 for pipe64/conn16), cap {:?} per run",
        options.reps, options.calls, options.time_cap
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    let payloads = [("ping", String::new()), ("1KiB", "x".repeat(1024))];
    let mut results: Results = Vec::new();
    let reps = if options.calls_table { options.reps } else { 0 };
    for rep in 0..reps {
        for &mode in &options.modes {
            for &scenario in &options.scenarios {
                for (payload, data) in payloads
                    .iter()
                    .filter(|(p, _)| options.payloads.contains(p))
                {
                    for &system in &options.systems {
                        let calls = match scenario {
                            Scenario::Seq => options.calls,
                            _ => options.calls * 4,
                        };
                        let result = run(mode, system, scenario, data, calls, options.time_cap);
                        let (server_cpu, client_cpu) = result.cpu_per_call();
                        eprintln!(
                            "rep {} {:>7} {:>6} {:>4} {:>13}: {:>9.0} calls/s, CPU µs/call server {:.2} client {:.2}",
                            rep + 1,
                            format!("{mode:?}").to_lowercase(),
                            scenario.name(),
                            payload,
                            system.name(),
                            result.rate(),
                            server_cpu,
                            client_cpu,
                        );
                        let key = (mode, scenario, *payload, system);
                        match results.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, runs)) => runs.push(result),
                            None => results.push((key, vec![result])),
                        }
                    }
                }
            }
        }
    }
    if options.calls_table {
        for &mode in &options.modes {
            report(mode, &results, &payloads);
        }
    }

    if options.streams {
        streams::report(
            options.calls as u64 * 4,
            options.reps,
            options.time_cap,
            options.smoke,
        );
    }

    if options.memory {
        println!();
        memory::report(options.smoke);
    }
}

mod memory;
