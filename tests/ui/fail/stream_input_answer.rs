//! A method with a stream argument answers with a value sent as
//! `<method>.reply`: not a `Reply` or a `Message`.

use stream_rpc::{IncomingItems, Message, Reply};

#[stream_rpc::service]
pub trait Answers {
    async fn forward(&self, items: IncomingItems<u32>) -> Reply;
    async fn pong(&self, items: IncomingItems<u32>) -> Message<u32>;
}

fn main() {}
