//! The stream types name their items (and the stream's error, when a
//! `Result` may fail before the first item): the error is on the type.

use stream_rpc::{IncomingItems, Streaming};

#[stream_rpc::service]
pub trait Forms {
    async fn no_item(&self) -> Streaming;
    async fn three(&self) -> Streaming<u32, String, u8>;
    async fn no_input_item(&self, items: IncomingItems) -> u32;
    async fn result_without_stream_error(&self) -> Result<Streaming<u32>, String>;
}

fn main() {}
