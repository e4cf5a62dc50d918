//! `item_timeout` limits the time between two output items: on a method
//! that returns no stream, the error is on the key. `timeout` on a
//! notification (nothing is waited for) is an error too.

use stream_rpc::IncomingItems;

#[stream_rpc::service]
pub trait Limits {
    #[stream_rpc(item_timeout = "30s")]
    async fn plain(&self) -> u32;

    #[stream_rpc(item_timeout = "30s")]
    async fn upload(&self, chunks: IncomingItems<Vec<u8>>) -> u64;

    #[stream_rpc(timeout = "5m")]
    async fn notify(&self, line: String);

    // Fine: a call's own limit, and an input stream's.
    #[stream_rpc(timeout = "5m")]
    async fn slow(&self) -> u32;
    #[stream_rpc(timeout = "1h")]
    async fn upload_slowly(&self, chunks: IncomingItems<Vec<u8>>) -> u64;
}

fn main() {}
