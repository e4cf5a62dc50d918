//! `#[cfg]` on a method removes it from dispatch, the list and the client.

struct Service;

#[stream_rpc::service]
impl Service {
    async fn kept(&self) -> u32 {
        1
    }

    #[cfg(any())]
    async fn gone(&self, value: TypeThatDoesNotExist) -> u32 {
        value.0
    }

    #[cfg(all())]
    async fn also_kept(&self) {}
}

fn main() {
    assert_eq!(Service::METHODS, ["kept", "also_kept"]);
}
