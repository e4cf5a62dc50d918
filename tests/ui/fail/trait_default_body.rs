#[stream_rpc::service]
pub trait Kv {
    async fn get(&self, key: String) -> Option<String> {
        let _ = key;
        None
    }
}

fn main() {}
