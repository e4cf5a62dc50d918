//! The trait form with every argument and return form, implemented and
//! served, and its client over several callers.

use serde::{Deserialize, Serialize};
use stream_rpc::{Context, HandlerError, Message, Packet, Reply};

#[derive(Debug, Serialize, Deserialize)]
pub enum StoreError {
    Missing,
}

#[derive(Debug)]
pub struct Opaque;

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("opaque")
    }
}

/// A store.
#[stream_rpc::service(name = "TheStore")]
pub trait Store {
    /// Nothing in, nothing out.
    async fn ping(&self) -> Message<()>;
    async fn put(&self, task: Packet);
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn who(&self, ctx: Context) -> String;
    async fn forward(&self) -> Reply;
    async fn typed(&self, key: String) -> Result<String, StoreError>;
    async fn coded(&self) -> Result<u8, HandlerError>;
    async fn opaque(&self) -> Result<(), Opaque>;
    #[stream_rpc(rename = "store.len")]
    async fn len(&self) -> usize;
}

struct Memory;

impl Store for Memory {
    async fn ping(&self) -> Message<()> {
        Message::new("pong", ())
    }
    async fn put(&self, task: Packet) {
        let _ = task;
    }
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn who(&self, ctx: Context) -> String {
        ctx.peer().to_string()
    }
    async fn forward(&self) -> Reply {
        Reply::Nothing
    }
    async fn typed(&self, key: String) -> Result<String, StoreError> {
        let _ = key;
        Err(StoreError::Missing)
    }
    async fn coded(&self) -> Result<u8, HandlerError> {
        Ok(1)
    }
    async fn opaque(&self) -> Result<(), Opaque> {
        Err(Opaque)
    }
    async fn len(&self) -> usize {
        0
    }
}

fn assert_protocol<P: stream_rpc::Protocol>(_: &P) {}

async fn use_client<C: stream_rpc::Caller>(caller: C) -> Result<(), stream_rpc::CallError> {
    let store = StoreClient::new(caller).with_timeout(std::time::Duration::from_secs(1));
    let _: () = store.ping().await?;
    let _: () = store.put(Packet::new(uuid(), 1, "m", stream_rpc::json!(null))).await?;
    let _: i64 = store.add(1, 2).await?;
    let _: String = store.who().await?;
    let _: Packet = store.forward().await?;
    let _: Result<String, StoreError> = store.typed("k".into()).await?;
    let _: Result<u8, HandlerError> = store.coded().await?;
    let _: Result<(), Opaque> = store.opaque().await?;
    let _: usize = store.len().await?;
    Ok(())
}

fn uuid() -> uuid::Uuid {
    uuid::Uuid::nil()
}

fn main() {
    let server = StoreServer::new(Memory);
    assert_protocol(&server);
    assert_eq!(stream_rpc::Protocol::name(&server), "TheStore");
    assert_eq!(
        StoreClient::METHODS,
        ["ping", "put", "add", "who", "forward", "typed", "coded", "opaque", "store.len"]
    );
    assert_eq!(StoreServer::<Memory>::METHODS, StoreClient::METHODS);
    let _: &Memory = server.get_ref();
    let _ = use_client::<stream_rpc::Connection>;
    let _ = use_client::<&stream_rpc::ReconnectingClient>;
    let _ = use_client::<stream_rpc::Client>;
}
