//! The generated code names everything by absolute path.
#![no_implicit_prelude]

extern crate serde;
extern crate std;
extern crate stream_rpc;

#[derive(::serde::Serialize, ::serde::Deserialize)]
struct Task {
    name: ::std::string::String,
}

struct Service;

#[::stream_rpc::service]
impl Service {
    async fn none(&self) {}

    async fn one(&self, task: Task) -> ::std::string::String {
        task.name
    }

    async fn two(&self, ctx: ::stream_rpc::Context, a: u32, b: u32) -> ::std::result::Result<u32, ::stream_rpc::HandlerError> {
        let _ = ctx;
        ::std::result::Result::Ok(a + b)
    }

    async fn message(&self) -> ::stream_rpc::Message<u8> {
        ::stream_rpc::Message::new("m", 1)
    }
}

fn main() {
    let _ = Service::METHODS;
    let _ = ServiceClient::<::stream_rpc::Connection>::new;
    let _ = ServiceClient::METHODS;
    let _ = ServiceTasks::<::stream_rpc::Connection>::new;
}
