struct Service;

#[stream_rpc::service]
impl Service {
    #[stream_rpc(rename = "get")]
    async fn get_one(&self) -> u32 {
        1
    }

    #[stream_rpc(rename = "get")]
    async fn get_two(&self) -> u32 {
        2
    }
}

fn main() {}
