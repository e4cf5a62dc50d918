struct Service;

#[stream_rpc::service]
impl Service {
    #[stream_rpc(renamed = "other")]
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
