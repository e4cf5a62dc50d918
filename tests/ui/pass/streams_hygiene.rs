//! Stream methods in both forms under `#![no_implicit_prelude]`, next to
//! user items named like what the generated code uses: the generated code
//! names everything by absolute path.
#![no_implicit_prelude]

extern crate serde;
extern crate std;
extern crate stream_rpc;

/// Named like the runtime's and the prelude's types.
#[allow(dead_code)]
struct Stream;
#[allow(dead_code)]
struct ItemStream;
#[allow(dead_code)]
struct StreamError;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Value;

#[derive(::serde::Serialize, ::serde::Deserialize)]
pub struct Chunk {
    bytes: ::std::vec::Vec<u8>,
}

#[derive(::serde::Serialize, ::serde::Deserialize, Debug)]
pub enum Failure {
    Empty,
}

#[::stream_rpc::service]
pub trait Files {
    async fn read(&self, path: ::std::string::String) -> ::stream_rpc::Streaming<Chunk, Failure>;
    async fn write(&self, ctx: ::stream_rpc::Context, path: ::std::string::String, chunks: ::stream_rpc::IncomingItems<Chunk>) -> ::std::result::Result<u64, Failure>;
    #[stream_rpc(timeout = "5m", item_timeout = "30s")]
    async fn copy(&self, chunks: ::stream_rpc::IncomingItems<Chunk>) -> ::std::result::Result<::stream_rpc::Streaming<Chunk, Failure>, Failure>;
    async fn drain(&self, chunks: ::stream_rpc::IncomingItems<Chunk>);
    async fn plain(&self) -> u8;
}

/// A service written by a `macro_rules!` macro: its tokens come from the
/// macro's expansion.
macro_rules! stream_service {
    ($name:ident) => {
        #[::stream_rpc::service]
        pub trait $name {
            async fn items(
                &self,
                from: u64,
            ) -> ::stream_rpc::Streaming<u64, ::stream_rpc::HandlerError>;
            async fn both(
                &self,
                items: ::stream_rpc::IncomingItems<u64>,
            ) -> ::std::result::Result<::stream_rpc::Streaming<u64, Failure>, Failure>;
            async fn sum(
                &self,
                items: ::stream_rpc::IncomingItems<u64>,
            ) -> ::std::result::Result<u64, ::stream_rpc::HandlerError>;
        }
    };
}

stream_service!(Made);

struct Service;

#[::stream_rpc::service]
impl Service {
    async fn numbers(&self) -> ::stream_rpc::Streaming<u32> {
        ::stream_rpc::Streaming::from_items(::stream_rpc::__private::futures_util::stream::empty())
    }

    #[stream_rpc(timeout = "1m30s")]
    async fn count(&self, items: ::stream_rpc::IncomingItems<u32>) -> u64 {
        let _ = items;
        0
    }
}

fn main() {
    let _ = Service::METHODS;
    let _ = ServiceClient::<::stream_rpc::Connection>::new;
    let _ = FilesClient::METHODS;
    let _ = FilesServer::<()>::METHODS;
    let _ = MadeClient::METHODS;
}
