//! Stream items travel as JSON: one error per item type that is not
//! serializable, on the type.

use stream_rpc::{IncomingItems, Streaming};

struct NotSerde;

#[stream_rpc::service]
pub trait Items {
    async fn output(&self) -> Streaming<NotSerde>;
    async fn input(&self, items: IncomingItems<NotSerde>) -> u32;
}

fn main() {}
