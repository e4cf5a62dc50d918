struct Service;

#[stream_rpc::service]
impl Service {
    async fn ping(&self) -> u32 {
        1
    }

    #[stream_rpc(rename = "ping")]
    async fn other(&self) -> u32 {
        2
    }
}

fn main() {}
