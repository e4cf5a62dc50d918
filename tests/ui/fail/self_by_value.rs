struct Service;

#[stream_rpc::service]
impl Service {
    async fn ping(self) -> u32 {
        1
    }
}

fn main() {}
