#[stream_rpc::service]
pub trait Kv {
    #[stream_rpc(skip)]
    fn helper(&self);
    fn not_async(&self, key: String) -> Option<String>;
}

fn main() {}
