//! Load and memory benchmarks: stream-rpc against tarpc (bincode and JSON
//! transports), a raw newline echo, and a newline echo that seals and opens
//! every line with this crate's Fernet and nothing more (the floor with
//! encryption), on loopback, in one process.
//!
//! ```text
//! cargo run --release -p stream-rpc-benchmarks            # the full run (several minutes)
//! cargo run -p stream-rpc-benchmarks -- --smoke           # a quick check that it all works
//! ```
//!
//! Options: `--reps N` (3), `--calls N` (calls per run of `seq`; `pipe64`
//! and `conn16` make 4 times as many), `--time-cap SECS` (4 per run),
//! `--skip-memory`, `--smoke`, `--no-replay` (stream-rpc without replay
//! protection, to measure its cost), `--log LEVEL` (log through the seed's
//! format to stderr at that level, e.g. `--log INFO 2>/dev/null`),
//! `--log-packets off|headers|full` (how much the packet lines show), and `--system NAMES` (comma-separated),
//! `--scenario NAME` and `--payload ping|1KiB` to run part of the table (for
//! profiling). See docs/BENCHMARKS.md.

mod systems;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use systems::{RawConn, System};

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

    /// The targets of docs/BENCHMARKS.md, as (against tarpc-bincode, against raw).
    fn targets(self) -> (f64, f64) {
        match self {
            Scenario::Seq => (1.0, 0.75),
            Scenario::Pipe64 => (1.4, 0.25),
            Scenario::Conn16 => (1.0, 0.7),
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
    systems: Vec<System>,
    scenarios: Vec<Scenario>,
    payloads: Vec<&'static str>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        reps: 3,
        calls: 20_000,
        time_cap: Duration::from_secs(4),
        memory: true,
        smoke: false,
        systems: System::ALL.to_vec(),
        scenarios: Scenario::ALL.to_vec(),
        payloads: vec!["ping", "1KiB"],
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
                let level: stream_rpc::LogLevel = args
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| format!("--log: {e}"))?;
                let config = stream_rpc::Config::builder()
                    .key(stream_rpc::Fernet::generate_key().map_err(|e| e.to_string())?)
                    .log_level(level.0)
                    .build()
                    .map_err(|e| e.to_string())?;
                stream_rpc::logging::init(&config).map_err(|e| e.to_string())?;
            }
            "--log-packets" => {
                let mode: stream_rpc::PacketLog = args
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| format!("--log-packets: {e}"))?;
                *systems::LOG_PACKETS.lock().map_err(|e| e.to_string())? = mode;
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
    Ok(options)
}

/// The runs of one (scenario, payload, system), over the repetitions.
type Results = Vec<((Scenario, &'static str, System), Vec<Run>)>;

/// One run's result.
#[derive(Debug, Clone)]
struct Run {
    calls: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
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
fn run(system: System, scenario: Scenario, data: &str, calls: usize, cap: Duration) -> Run {
    let server = systems::start_server(system);
    let frame = {
        let mut line = "x".repeat(systems::rpc_frame_len(data) - 1).into_bytes();
        line.push(b'\n');
        line
    };
    let runtime = client_runtime();
    runtime.block_on(async {
        match (system, scenario) {
            (System::Raw, Scenario::Pipe64) => {
                line_pipelined(
                    server.addr,
                    calls,
                    cap,
                    64,
                    |_| {},
                    || frame.as_slice().into(),
                )
                .await
            }
            (System::FernetEcho, Scenario::Pipe64) => {
                let sealer = systems::Sealer::new();
                line_pipelined(
                    server.addr,
                    calls,
                    cap,
                    64,
                    |reply| sealer.check_reply(reply, data),
                    || sealer.request(data).into(),
                )
                .await
            }
            (_, Scenario::Seq) => {
                concurrent(system, server.addr, data, &frame, calls, cap, 1, 1).await
            }
            (_, Scenario::Pipe64) => {
                concurrent(system, server.addr, data, &frame, calls, cap, 1, 64).await
            }
            (_, Scenario::Conn16) => {
                concurrent(system, server.addr, data, &frame, calls, cap, 16, 1).await
            }
        }
    })
}

/// `connections` connections with `per_connection` callers each, calling
/// one at a time until `calls` are made or `cap` has passed.
#[allow(clippy::too_many_arguments)]
async fn concurrent(
    system: System,
    addr: SocketAddr,
    data: &str,
    frame: &[u8],
    calls: usize,
    cap: Duration,
    connections: usize,
    per_connection: usize,
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
    drop(clients);
    let latencies = Rc::try_unwrap(latencies)
        .map(RefCell::into_inner)
        .unwrap_or_default();
    Run {
        calls: latencies.len(),
        elapsed,
        latencies,
    }
}

/// The line echoes' pipelined client: one connection, `window` lines in
/// flight; `next` makes each request line, `check` looks at each reply.
async fn line_pipelined<'f>(
    addr: SocketAddr,
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
    Run {
        calls: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
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
        "machine: {} cores; client and server on separate single-threaded runtimes in one process",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    let payloads = [("ping", String::new()), ("1KiB", "x".repeat(1024))];
    // results[(scenario, payload, system)] = runs
    let mut results: Results = Vec::new();
    for rep in 0..options.reps {
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
                    let result = run(system, scenario, data, calls, options.time_cap);
                    eprintln!(
                        "rep {} {:>6} {:>4} {:>13}: {:>9.0} calls/s",
                        rep + 1,
                        scenario.name(),
                        payload,
                        system.name(),
                        result.rate()
                    );
                    let key = (scenario, *payload, system);
                    match results.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, runs)) => runs.push(result),
                        None => results.push((key, vec![result])),
                    }
                }
            }
        }
    }

    println!();
    println!("| scenario | payload | system | calls/s | p50 µs | p99 µs | stream-rpc ÷ this |");
    println!("|---|---|---|---|---|---|---|");
    let rate_of = |scenario, payload, system| -> f64 {
        results
            .iter()
            .find(|(k, _)| *k == (scenario, payload, system))
            .map(|(_, runs)| median(runs.iter().map(Run::rate).collect()))
            .unwrap_or(f64::NAN)
    };
    for scenario in Scenario::ALL {
        for (payload, _) in &payloads {
            let ours = rate_of(scenario, payload, System::StreamRpc);
            for system in System::ALL {
                let Some((_, runs)) = results
                    .iter()
                    .find(|(k, _)| *k == (scenario, *payload, system))
                else {
                    continue;
                };
                let rate = median(runs.iter().map(Run::rate).collect());
                let p50 = median(runs.iter().map(|r| micros(r.percentile(0.50))).collect());
                let p99 = median(runs.iter().map(|r| micros(r.percentile(0.99))).collect());
                let ratio = if system == System::StreamRpc || ours.is_nan() {
                    "".to_owned()
                } else {
                    format!("{:.2}×", ours / rate)
                };
                println!(
                    "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
                    scenario.name(),
                    payload,
                    system.name(),
                    rate,
                    p50,
                    p99,
                    ratio
                );
            }
        }
    }

    println!();
    println!("Targets (ping payload, same run):");
    let mut missed = 0;
    for scenario in Scenario::ALL {
        let (vs_tarpc, vs_raw) = scenario.targets();
        let ours = rate_of(scenario, "ping", System::StreamRpc);
        for (other, target) in [(System::TarpcBincode, vs_tarpc), (System::Raw, vs_raw)] {
            let ratio = ours / rate_of(scenario, "ping", other);
            if ratio.is_nan() {
                // A system or scenario left out with --system or --scenario.
                continue;
            }
            let verdict = if ratio >= target { "met" } else { "MISSED" };
            if ratio < target {
                missed += 1;
            }
            println!(
                "  {:>6} vs {:>13}: {:.2}× (target ≥ {:.2}×) {}",
                scenario.name(),
                other.name(),
                ratio,
                target,
                verdict
            );
        }
    }
    println!("  {missed} target(s) missed");
    println!("For reference, the floor with encryption (no framework):");
    for scenario in Scenario::ALL {
        let floor = rate_of(scenario, "ping", System::FernetEcho);
        for other in [System::TarpcBincode, System::Raw] {
            let ratio = floor / rate_of(scenario, "ping", other);
            if !ratio.is_nan() {
                println!(
                    "  {:>6}: fernet-echo vs {:>13}: {:.2}×",
                    scenario.name(),
                    other.name(),
                    ratio
                );
            }
        }
    }

    if options.memory {
        println!();
        memory::report(options.smoke);
    }
}

mod memory;
