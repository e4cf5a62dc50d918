struct Service;

#[stream_rpc::service]
impl Service {
    #[stream_rpc(rename = "get task")]
    async fn get_task(&self) -> u32 {
        1
    }
}

fn main() {}
