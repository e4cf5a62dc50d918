#[stream_rpc::service]
pub trait Kv {
    type Value;
    const LIMIT: usize;
    async fn get(&self, key: String) -> Option<String>;
}

fn main() {}
