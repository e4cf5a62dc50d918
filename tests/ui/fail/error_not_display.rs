struct Opaque;

struct Service;

#[stream_rpc::service]
impl Service {
    async fn try_it(&self) -> Result<u32, Opaque> {
        Err(Opaque)
    }
}

fn main() {}
