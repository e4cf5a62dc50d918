struct Service;

#[stream_rpc::service]
impl Service {
    async fn echo<T: serde::Serialize>(&self, value: T) -> T {
        value
    }
}

fn main() {}
