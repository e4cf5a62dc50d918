//! A method takes at most one stream argument: the error is on the second.

use stream_rpc::{IncomingItems, Streaming};

struct Service;

#[stream_rpc::service]
impl Service {
    async fn merge(&self, left: IncomingItems<u32>, right: IncomingItems<u32>) -> Streaming<u32> {
        let _ = (left, right);
        Streaming::from_items(stream_rpc::__private::futures_util::stream::empty())
    }
}

#[stream_rpc::service]
pub trait Zip {
    async fn zip(&self, a: IncomingItems<u8>, b: IncomingItems<u8>) -> u64;
}

fn main() {}
