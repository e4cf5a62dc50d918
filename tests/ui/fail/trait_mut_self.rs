#[stream_rpc::service]
pub trait Counter {
    async fn bump(&mut self) -> u32;
}

fn main() {}
