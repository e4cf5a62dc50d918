struct Service;

trait Ping {
    async fn ping(&self) -> u32;
}

#[stream_rpc::service]
impl Ping for Service {
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
