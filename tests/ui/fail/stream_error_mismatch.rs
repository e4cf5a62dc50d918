//! `Result<Streaming<T, E>, E>`: the error before the first item and the
//! stream's error are one type, which the typed client reads back.

use stream_rpc::{HandlerError, Streaming};

#[stream_rpc::service]
pub trait Errors {
    async fn watch(&self) -> Result<Streaming<u32, HandlerError>, String>;
}

fn main() {}
