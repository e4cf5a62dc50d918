struct Service;

#[stream_rpc::service(version = 2)]
impl Service {
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
