//! The resume idiom: a stream that a client picks up where it stopped after
//! the server went away, so that it gets every item exactly once, in order.
//!
//! ```text
//! export CRYPTO_KEY=$(cargo run -q --example keygen)
//! cargo run --example resume -- server            # terminal 1
//! cargo run --example resume -- client 1000       # terminal 2: items 1..=1000
//! ```
//!
//! Kill the server (even with `kill -9`) while the client prints and start
//! it again: the client waits for the connection to come back and goes on
//! from the item after the last one it printed.
//!
//! The idiom has two halves:
//!
//! - **the method takes a resume point**: `count(from, to)` streams the
//!   numbers `from..=to`, so that a client can ask for the rest;
//! - **the client resumes from what it got**: a stream that ends with
//!   `StreamError::Disconnected { last_seq }` delivered exactly `last_seq`
//!   items (the connection closed after them, and no item is ever skipped
//!   before one that arrived), so the next one to ask for is the first
//!   item's position plus `last_seq`. The client reopens the stream on its
//!   `ReconnectingClient` once that is connected again.
//!
//! Settings as for the `server` example (`STREAM_RPC_HOST`,
//! `STREAM_RPC_PORT`, `CRYPTO_KEY`); `RESUME_EVERY_MS` paces the server's
//! items (default 10 ms), so that there is time to kill it mid-stream.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use stream_rpc::{CallError, Config, Connector, Reconnect, StreamError, Streaming, logging};

/// How many opens in a row may fail (the connection lost again at once)
/// before the client gives up.
const MAX_FAILED_OPENS: u32 = 100;

/// A stream of numbers that a client can resume from any point.
#[stream_rpc::service]
pub trait Counter {
    /// The numbers `from..=to`, one every `RESUME_EVERY_MS`.
    async fn count(&self, from: u64, to: u64) -> Streaming<u64>;
}

/// The server's implementation: it keeps no state per client, since the
/// resume point comes with each request.
struct Numbers {
    every: Duration,
}

impl Counter for Numbers {
    async fn count(&self, from: u64, to: u64) -> Streaming<u64> {
        let every = self.every;
        Streaming::from_fn(move |mut sink| async move {
            let mut ticks = tokio::time::interval(every);
            for number in from..=to {
                ticks.tick().await;
                // Waits for the client's credit; fails once the client is
                // gone, which ends the producer.
                if sink.send(number).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let every_ms = match std::env::var("RESUME_EVERY_MS") {
        Ok(text) => text
            .parse::<u64>()
            .map_err(|e| format!("RESUME_EVERY_MS={text:?}: {e}"))?,
        Err(_) => 10,
    };
    let numbers = Numbers {
        every: Duration::from_millis(every_ms.max(1)),
    };
    Connector::new(config)
        .run_server(CounterServer::new(numbers))
        .await?;
    Ok(())
}

/// Prints `to` numbers from 1, each exactly once, resuming after every
/// disconnect.
async fn consume(config: Config, to: u64) -> Result<(), Box<dyn std::error::Error>> {
    let client = Connector::new(config).connect_reconnecting((), Reconnect::default())?;
    let counter = CounterClient::new(&client);
    // The next number to ask for: the resume point.
    let mut next = 1;
    let mut failed_opens = 0;
    while next <= to {
        if client.connected().await.is_none() {
            return Err("the client stopped reconnecting".into());
        }
        let mut numbers = match counter.count(next, to).await {
            Ok(numbers) => numbers,
            // The server refused: asking again would not help.
            Err(e @ CallError::Remote { .. }) => return Err(e.into()),
            // The connection went away again before the stream opened:
            // wait for the next one and ask again (reading is harmless to
            // repeat).
            Err(e) if failed_opens < MAX_FAILED_OPENS => {
                failed_opens += 1;
                println!("could not open the stream ({e}); retrying");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        failed_opens = 0;
        let from = next;
        loop {
            match numbers.next().await {
                Some(Ok(number)) => println!("item {number}"),
                // A clean end: every number was sent.
                None => {
                    next = to + 1;
                    break;
                }
                Some(Err(StreamError::Disconnected { last_seq })) => {
                    // `last_seq` items arrived before the connection closed:
                    // resume right after them.
                    next = from + last_seq;
                    println!("disconnected after {last_seq} items; resuming from {next}");
                    break;
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
    println!("done: {to} items");
    client.close();
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!("usage: resume server | resume client COUNT");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logs = logging::Settings::from_env()
        .map_err(|e| e.to_string())
        .and_then(|settings| logging::init(&settings).map_err(|e| e.to_string()));
    if let Err(e) = logs {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let outcome = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["server"] => serve(config).await,
        ["client", count] => match count.parse() {
            Ok(count) => consume(config, count).await,
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
