struct Service;

#[stream_rpc::service]
impl Service {
    async fn client(&self) -> u32 {
        1
    }
}

fn main() {}
