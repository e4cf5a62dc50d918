//! A fn named like an item the attribute generates: `METHODS` on the
//! type (impl form), `new`, `caller`, `with_timeout` or `METHODS` on the
//! client. One error each.

struct Service;

#[stream_rpc::service]
impl Service {
    #[allow(non_snake_case)]
    async fn METHODS(&self) -> u32 {
        1
    }
}

struct Helped;

#[stream_rpc::service]
impl Helped {
    async fn ping(&self) {}

    #[stream_rpc(skip)]
    #[allow(non_snake_case)]
    fn METHODS() -> u32 {
        1
    }
}

#[stream_rpc::service]
pub trait Store {
    async fn caller(&self) -> u32;
}

fn main() {}
