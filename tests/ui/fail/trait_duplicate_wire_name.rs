#[stream_rpc::service]
pub trait Kv {
    async fn get(&self, key: String) -> Option<String>;
    #[stream_rpc(rename = "get")]
    async fn fetch(&self, key: String) -> Option<String>;
}

fn main() {}
