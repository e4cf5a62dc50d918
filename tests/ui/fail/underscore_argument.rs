struct Service;

#[stream_rpc::service]
impl Service {
    async fn ignore(&self, _: u32) {}
}

fn main() {}
