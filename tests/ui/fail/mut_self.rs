struct Service {
    count: u32,
}

#[stream_rpc::service]
impl Service {
    async fn bump(&mut self) -> u32 {
        self.count += 1;
        self.count
    }
}

fn main() {}
