struct Service;

#[stream_rpc::service]
impl Service {
    #[stream_rpc(rename = 5)]
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
