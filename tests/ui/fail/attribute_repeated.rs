struct Service;

#[stream_rpc::service]
impl Service {
    #[stream_rpc(rename = "a")]
    #[stream_rpc(rename = "b")]
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
