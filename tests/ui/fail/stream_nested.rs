//! `Streaming` is a whole return type (or `Result<Streaming<T, E>, E>`'s
//! `Ok`), and `IncomingItems` a whole argument's type: each written inside
//! another type is an error on that token.

use stream_rpc::{HandlerError, IncomingItems, Streaming};

#[stream_rpc::service]
pub trait Nested {
    async fn maybe(&self) -> Option<Streaming<u32>>;
    async fn many(&self) -> Vec<Streaming<u32>>;
    async fn streams_of_streams(&self) -> Streaming<Streaming<u32>>;
    async fn in_the_error(&self) -> Result<u32, Streaming<u32>>;
    async fn in_an_argument(&self, stream: Streaming<u32>) -> u32;
    async fn optional_input(&self, items: Option<IncomingItems<u32>>) -> u32;
    async fn input_of_streams(&self, items: IncomingItems<IncomingItems<u32>>) -> u32;
    async fn fine(&self) -> Result<Streaming<u32, HandlerError>, HandlerError>;
}

fn main() {}
