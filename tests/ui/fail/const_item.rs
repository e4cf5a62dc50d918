struct Service;

#[stream_rpc::service]
impl Service {
    const LIMIT: u32 = 3;

    async fn ping(&self) -> u32 {
        Self::LIMIT
    }
}

fn main() {}
