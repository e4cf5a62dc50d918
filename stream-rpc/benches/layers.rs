//! What layers cost per call: a call's round trip over loopback (client
//! and server on one single-threaded runtime, so that the figure is the CPU
//! of both sides per call) with no layers, with an empty stack on both
//! sides, and with the tracing layer on both sides (without a subscriber,
//! carrying `traceparent`, and with spans recorded by a registry); and the
//! calling side's stack alone, over a caller that answers at once.
//!
//! The variants run in turns (a round of each, again and again) and each
//! one's figure is the median of its rounds, so that a machine busy with
//! other work slows all of them alike.
//!
//! `cargo bench -p stream-rpc --bench layers` (`-- --rounds N --calls N`)

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::json;
use stream_rpc::layer::{LayeredCaller, LayeredProtocol, Tracing};
use stream_rpc::{
    Call, CallError, Caller, Config, Connector, Context, Fernet, HandlerError, Packet, Protocol,
    RawStream, Reply, SendError, StreamOptions,
};
use tower::layer::util::Identity;
use uuid::Uuid;

struct Echo;

impl Protocol for Echo {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        Ok(Reply::message("echoed", packet.payload))
    }
}

/// A caller that answers every call at once, without a peer.
struct Instant_;

impl Caller for Instant_ {
    async fn call_with(&self, call: Call) -> Result<Packet, CallError> {
        Ok(Packet::new(Uuid::nil(), 1, call.method, call.payload))
    }

    async fn notify_with(&self, _call: Call) -> Result<(), SendError> {
        Ok(())
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn open_stream(
        &self,
        method: &str,
        _payload: serde_json::Value,
        _options: StreamOptions,
    ) -> Result<RawStream, CallError> {
        Err(CallError::NotSent {
            method: method.to_owned(),
            reason: SendError::Closed,
        })
    }
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One variant: makes `calls` calls, in order.
type Run = Box<dyn Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = ()>>>>;

fn config(key: &str, port: u16) -> Config {
    Config::builder()
        .key(key)
        .host("127.0.0.1")
        .port(port)
        .build()
        .unwrap()
}

async fn serve<P: Protocol>(key: &str, protocol: P) -> u16 {
    let server = Connector::new(config(key, 0)).bind().await.unwrap();
    let port = server.local_addr().port();
    tokio::task::spawn_local(server.serve(protocol));
    port
}

async fn client(key: &str, port: u16) -> stream_rpc::Client {
    Connector::new(config(key, port)).connect(()).await.unwrap()
}

/// Makes a variant of a caller and whether its calls carry `traceparent`.
fn calls<C: Caller + 'static>(caller: C, traced: bool) -> Run {
    let caller = std::rc::Rc::new(caller);
    Box::new(move |n| {
        let caller = caller.clone();
        Box::pin(async move {
            for _ in 0..n {
                let mut call = Call::new("ping", json!(""));
                if traced {
                    call = call.with_meta("traceparent", TRACEPARENT).unwrap();
                }
                std::hint::black_box(caller.call_with(call).await.unwrap());
            }
        })
    })
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rounds = arg("--rounds", 15);
    let round_calls = arg("--calls", 2000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let key = Fernet::generate_key().unwrap();
    let variants: Vec<(&str, Run, bool)> = local.block_on(&runtime, async {
        let direct = serve(&key, Echo).await;
        let identity = serve(&key, LayeredProtocol::new(Echo, Identity::new())).await;
        let traced = serve(&key, LayeredProtocol::new(Echo, Tracing::new())).await;
        vec![
            (
                "round trip, no layers",
                calls(client(&key, direct).await, false),
                false,
            ),
            (
                "round trip, empty stacks",
                calls(
                    LayeredCaller::new(client(&key, identity).await, Identity::new()),
                    false,
                ),
                false,
            ),
            (
                "round trip, tracing, no traceparent",
                calls(
                    LayeredCaller::new(client(&key, traced).await, Tracing::new()),
                    false,
                ),
                false,
            ),
            (
                "round trip, tracing, traceparent",
                calls(
                    LayeredCaller::new(client(&key, traced).await, Tracing::new()),
                    true,
                ),
                false,
            ),
            (
                "round trip, tracing, traceparent, spans recorded",
                calls(
                    LayeredCaller::new(client(&key, traced).await, Tracing::new()),
                    true,
                ),
                true,
            ),
            ("caller alone, no layers", calls(Instant_, false), false),
            (
                "caller alone, empty stack",
                calls(LayeredCaller::new(Instant_, Identity::new()), false),
                false,
            ),
            (
                "caller alone, tracing",
                calls(LayeredCaller::new(Instant_, Tracing::new()), false),
                false,
            ),
            (
                "caller alone, tracing, spans recorded",
                calls(LayeredCaller::new(Instant_, Tracing::new()), false),
                true,
            ),
        ]
    });
    let mut times = vec![Vec::new(); variants.len()];
    for round in 0..=rounds {
        for (index, (_, run, recorded)) in variants.iter().enumerate() {
            let subscriber = tracing_subscriber::registry();
            let _guard = recorded.then(|| tracing::subscriber::set_default(subscriber));
            let started = Instant::now();
            local.block_on(&runtime, run(round_calls));
            // Round 0 warms up.
            if round > 0 {
                times[index].push(started.elapsed().as_nanos() as f64 / round_calls as f64);
            }
        }
    }
    println!("{rounds} rounds of {round_calls} calls; median (min..max) per call:");
    for ((name, _, _), mut per_call) in variants.iter().zip(times) {
        per_call.sort_by(f64::total_cmp);
        let median = per_call[per_call.len() / 2];
        println!(
            "  {name:<50} {:>9.0} ns  ({:.0}..{:.0})",
            median,
            per_call[0],
            per_call[per_call.len() - 1]
        );
    }
}
