//! A duration is a number and a unit: the error is on the literal.

use stream_rpc::Streaming;

#[stream_rpc::service]
pub trait Durations {
    #[stream_rpc(timeout = "5 minutes")]
    async fn spaced(&self) -> Streaming<u32>;

    #[stream_rpc(item_timeout = "0s")]
    async fn zero(&self) -> Streaming<u32>;

    #[stream_rpc(timeout = 30)]
    async fn number(&self) -> Streaming<u32>;

    #[stream_rpc(item_timeout = "1.5s")]
    async fn fraction(&self) -> Streaming<u32>;

    #[stream_rpc(timeout = "5m", timeout = "6m")]
    async fn twice(&self) -> Streaming<u32>;
}

fn main() {}
