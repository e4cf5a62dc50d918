//! `crate = path` finds the runtime where its name does not, e.g. when it
//! is reached through a re-export or an `extern crate` alias.

pub extern crate stream_rpc as rpc;

mod reexport {
    pub use ::rpc as runtime;
}

struct Service;

#[rpc::service(crate = crate::reexport::runtime)]
impl Service {
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {
    fn assert_protocol<P: rpc::Protocol>() {}
    assert_protocol::<Service>();
    assert_eq!(Service::METHODS, ["ping"]);
}
