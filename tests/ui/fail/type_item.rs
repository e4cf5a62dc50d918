struct Service;

#[stream_rpc::service]
impl Service {
    type Count = u32;

    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
