struct Service;

#[stream_rpc::service]
impl Service {
    fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
