//! A stream argument is taken by value: the error is on the reference.

use stream_rpc::IncomingItems;

struct Service;

#[stream_rpc::service]
impl Service {
    async fn count(&self, items: &IncomingItems<u32>) -> u64 {
        let _ = items;
        0
    }
}

#[stream_rpc::service]
pub trait Upload {
    async fn upload(&self, chunks: &mut IncomingItems<Vec<u8>>) -> u64;
}

fn main() {}
