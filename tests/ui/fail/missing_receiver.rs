struct Service;

#[stream_rpc::service]
impl Service {
    async fn ping() -> u32 {
        1
    }
}

fn main() {}
