//! `IncomingItems` is an argument's type; a method returns `Streaming`.

use stream_rpc::IncomingItems;

#[stream_rpc::service]
pub trait Returns {
    async fn items(&self) -> IncomingItems<u32>;
    async fn wrapped(&self) -> Result<IncomingItems<u32>, String>;
}

fn main() {}
