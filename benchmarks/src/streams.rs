//! Streams against calls on one connection: items per second from the
//! server to the client (a stream the server produces, against a loop of
//! 64 pipelined calls whose replies carry the items) and from the client
//! to the server (a stream argument, against 64 pipelined calls whose
//! requests carry them), for small items (an integer) and 1 KiB ones
//! (a string), with the CPU time per item of the server process and of the
//! client thread; then the memory of a stream whose consumer stops reading.
//!
//! The server is the benchmark's stream-rpc server in a process of its own
//! (`--serve stream-rpc`, a multi-threaded runtime), the client this
//! process on a single-threaded runtime, as in the process mode of the
//! call table.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use stream_rpc::{Caller, StreamOptions};

use crate::cpu::Cpu;
use crate::process::ServerProcess;
use crate::systems::{self, System};
use crate::{Meter, median};

/// Calls in flight in the calls' loop, as in the `pipe64` scenario.
const PIPELINE: usize = 64;

/// Which way the items go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Server to client.
    Down,
    /// Client to server.
    Up,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Down => "server→client",
            Direction::Up => "client→server",
        }
    }
}

/// What carries the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// One stream, the library's default window (32 items).
    Stream,
    /// One stream with a window of 1,024 items (the opener's
    /// `StreamOptions::window` for output, the server's
    /// `Limits::stream_window` for input).
    WideStream,
    /// 64 pipelined calls, one item each.
    Calls,
}

impl Carrier {
    const ALL: [Carrier; 3] = [Carrier::Stream, Carrier::WideStream, Carrier::Calls];

    fn name(self) -> &'static str {
        match self {
            Carrier::Stream => "stream, window 32 (default)",
            Carrier::WideStream => "stream, window 1024",
            Carrier::Calls => "pipe64 calls",
        }
    }

    fn window(self) -> Option<u32> {
        match self {
            Carrier::Stream => None,
            Carrier::WideStream => Some(WIDE_WINDOW),
            Carrier::Calls => None,
        }
    }
}

/// The wide stream's window.
const WIDE_WINDOW: u32 = 1024;

/// The item sizes: an integer, and a 1 KiB string.
const SIZES: [(&str, u32); 2] = [("int", 0), ("1KiB", 1024)];

/// One run: how many items went, in how long, at what CPU cost.
struct Run {
    items: u64,
    elapsed: Duration,
    cpu: (Cpu, Cpu),
}

impl Run {
    fn rate(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }

    /// Server and client CPU µs per item.
    fn cpu_per_item(&self) -> (f64, f64) {
        let items = self.items.max(1) as f64;
        let total = |cpu: Cpu| (cpu.user_us + cpu.system_us) / items;
        (total(self.cpu.0), total(self.cpu.1))
    }
}

/// The stream table and the memory of a stalled stream: `items` items per
/// run (calls or stream items), `reps` repetitions, each run capped at
/// `cap`.
pub fn report(items: u64, reps: usize, cap: Duration, smoke: bool) {
    type Key = (Direction, &'static str, Carrier);
    let mut results: Vec<(Key, Vec<Run>)> = Vec::new();
    for rep in 0..reps {
        for direction in [Direction::Down, Direction::Up] {
            for (size_name, size) in SIZES {
                for carrier in Carrier::ALL {
                    let run = run(direction, carrier, size, items, cap);
                    let (server, client) = run.cpu_per_item();
                    eprintln!(
                        "rep {} streams {:>13} {:>4} {:>20}: {:>9.0} items/s, CPU µs/item server {:.2} client {:.2}",
                        rep + 1,
                        direction.name(),
                        size_name,
                        carrier.name(),
                        run.rate(),
                        server,
                        client
                    );
                    let key = (direction, size_name, carrier);
                    match results.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, runs)) => runs.push(run),
                        None => results.push((key, vec![run])),
                    }
                }
            }
        }
    }
    println!();
    println!(
        "## Streams against calls, one connection (server in its own process, multi-threaded; client single-threaded)"
    );
    println!();
    println!(
        "| direction | item | carrier | items/s | server CPU µs/item | client CPU µs/item | ÷ calls |"
    );
    println!("|---|---|---|---|---|---|---|");
    let rate = |key: Key| -> f64 {
        results
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(f64::NAN, |(_, runs)| {
                median(runs.iter().map(Run::rate).collect())
            })
    };
    for (key, runs) in &results {
        let (direction, size, carrier) = *key;
        let this = median(runs.iter().map(Run::rate).collect());
        let server = median(runs.iter().map(|r| r.cpu_per_item().0).collect());
        let client = median(runs.iter().map(|r| r.cpu_per_item().1).collect());
        let ratio = if carrier == Carrier::Calls {
            String::new()
        } else {
            format!("{:.2}×", this / rate((direction, size, Carrier::Calls)))
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            direction.name(),
            size,
            carrier.name(),
            this,
            server,
            client,
            ratio
        );
    }
    println!();
    stalled(smoke);
}

/// Runs `items` items one way on a fresh server.
fn run(direction: Direction, carrier: Carrier, size: u32, items: u64, cap: Duration) -> Run {
    // The input window is the server's grant (`Limits::stream_window`),
    // the output window the opener's.
    let server_window = match direction {
        Direction::Up => carrier.window(),
        Direction::Down => None,
    };
    let server = ServerProcess::start_with(System::StreamRpc, server_window);
    let runtime = crate::client_runtime();
    runtime.block_on(async {
        let (connection, _client) = systems::connect_stream_rpc(server.addr).await;
        // Warm-up: a few items both ways, outside the timed part.
        let warm = (items / 20).clamp(20, 500);
        match carrier {
            Carrier::Calls => calls(&connection, direction, size, warm, Duration::MAX).await,
            _ => stream(&connection, direction, None, size, warm, Duration::MAX).await,
        };
        let meter = Meter::start(server.probe);
        let started = Instant::now();
        let sent = match carrier {
            Carrier::Calls => calls(&connection, direction, size, items, cap).await,
            _ => stream(&connection, direction, carrier.window(), size, items, cap).await,
        };
        Run {
            items: sent,
            elapsed: started.elapsed(),
            cpu: meter.stop(),
        }
    })
}

/// `items` items through 64 pipelined calls on `connection`, or as many as
/// `cap` allows; returns how many went.
async fn calls(
    connection: &stream_rpc::Connection,
    direction: Direction,
    size: u32,
    items: u64,
    cap: Duration,
) -> u64 {
    let client = systems::BenchClient::new(connection.clone());
    let item = systems::item(size);
    let deadline = Instant::now().checked_add(cap);
    let left = Rc::new(Cell::new(items));
    let done = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    for _ in 0..PIPELINE {
        let (client, item, left, done) = (client.clone(), item.clone(), left.clone(), done.clone());
        local.spawn_local(async move {
            while left.get() > 0 && deadline.is_none_or(|at| Instant::now() < at) {
                left.set(left.get() - 1);
                match direction {
                    Direction::Down => {
                        let got = client.item(size).await.expect("item call");
                        debug_assert_eq!(got, item);
                    }
                    Direction::Up => assert!(client.put(item.clone()).await.expect("put call")),
                }
                done.set(done.get() + 1);
            }
        });
    }
    local.await;
    done.get()
}

/// `items` items through one stream on `connection`, or as many as `cap`
/// allows (then the stream is cancelled); returns how many went.
async fn stream(
    connection: &stream_rpc::Connection,
    direction: Direction,
    window: Option<u32>,
    size: u32,
    items: u64,
    cap: Duration,
) -> u64 {
    let deadline = Instant::now().checked_add(cap);
    let mut options = StreamOptions::new();
    if let Some(window) = window {
        options = options.window(window);
    }
    match direction {
        Direction::Down => {
            let mut stream = connection
                .open_stream(
                    "items",
                    serde_json::json!({"size": size, "count": items}),
                    options,
                )
                .await
                .expect("open items");
            let mut got = 0;
            while let Some(item) = stream.next().await {
                item.expect("an item");
                got += 1;
                if deadline.is_some_and(|at| got % 64 == 0 && Instant::now() >= at) {
                    stream.cancel();
                    break;
                }
            }
            got
        }
        Direction::Up => {
            let item = systems::item(size);
            let mut stream = connection
                .open_stream("sink", serde_json::Value::Null, options.with_input())
                .await
                .expect("open sink");
            let mut input = stream.input().expect("an input stream");
            let mut sent = 0;
            while sent < items && deadline.is_none_or(|at| sent % 64 != 0 || Instant::now() < at) {
                input.send(item.clone()).await.expect("send an item");
                sent += 1;
            }
            input.finish().await.expect("end of input");
            let reply = stream.finish().await.expect("the sink's reply");
            let counted = reply.payload.as_u64().expect("a count");
            assert_eq!(counted, sent, "the server counted every item");
            sent
        }
    }
}

/// Resident set size of process `pid` (`self` for this one), in KiB.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// A stream of 1 KiB items whose consumer takes 100 and then stops
/// reading: the producer waits for credit, so neither side's memory grows.
/// Prints the resident memory of the producer (the server process) and the
/// consumer (this process) before the stream, after 100 items, and while
/// it is stalled.
fn stalled(smoke: bool) {
    let server = ServerProcess::start(System::StreamRpc);
    let server_pid = server.pid().to_string();
    let stall = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(3)
    };
    let runtime = crate::client_runtime();
    runtime.block_on(async {
        let (connection, _client) = systems::connect_stream_rpc(server.addr).await;
        let sample = |what: &str| {
            println!(
                "| {what} | {} | {} |",
                rss_kib(&server_pid),
                rss_kib("self")
            );
        };
        println!("## A stream whose consumer stops (1 KiB items, window 32)");
        println!();
        println!("| when | producer (server) RSS KiB | consumer (client) RSS KiB |");
        println!("|---|---|---|");
        sample("before the stream");
        let mut stream = connection
            .open_stream(
                "items",
                serde_json::json!({"size": 1024, "count": u64::MAX}),
                StreamOptions::new(),
            )
            .await
            .expect("open items");
        for _ in 0..100 {
            stream.next().await.expect("an item").expect("an item");
        }
        sample("after 100 items");
        for step in 1..=3 {
            // Not reading: the producer has the credit left of its window
            // and then waits.
            tokio::time::sleep(stall).await;
            sample(&format!("stalled {:?}", stall * step));
        }
        // It goes on where it stopped.
        stream.next().await.expect("an item").expect("an item");
        stream.cancel();
        sample("after reading again and cancelling");
    });
}
