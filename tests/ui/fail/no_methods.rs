struct Service;

#[stream_rpc::service]
impl Service {
    #[stream_rpc(skip)]
    fn helper(&self) -> u32 {
        1
    }
}

fn main() {}
