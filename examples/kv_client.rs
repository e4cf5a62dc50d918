//! A program that only calls: it links `examples/kv-api` (the `Kv` trait and
//! its generated client) and none of the server's code, and serves nothing.
//!
//! ```text
//! cargo run --example kv_client      # with kv_server running, same CRYPTO_KEY
//! ```
//!
//! Connects to `STREAM_RPC_HOST:STREAM_RPC_PORT`, stores, reads and takes a
//! value, takes it again to show the typed error, and prints each step.

use std::process::ExitCode;

use stream_rpc::{CallError, Connector};
use stream_rpc_example_kv::{KvClient, KvError};

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let connector = Connector::from_env()?;
    let kv = KvClient::new(connector.connect(()).await?);
    kv.set("greeting".into(), "hello".into()).await?;
    println!("get greeting: {:?}", kv.get("greeting".into()).await?);
    println!("stored values: {}", kv.count().await?);
    println!("take greeting: {:?}", kv.take("greeting".into()).await?);
    match kv.take("greeting".into()).await? {
        Ok(value) => println!("take greeting again: {value:?}"),
        Err(KvError::Missing(key)) => println!("take greeting again: nothing under {key:?}"),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<CallError>() {
                Some(call) => eprintln!("error: the call failed: {call}"),
                None => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
