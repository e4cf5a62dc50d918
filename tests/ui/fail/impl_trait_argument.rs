struct Service;

#[stream_rpc::service]
impl Service {
    async fn show(&self, value: impl std::fmt::Display) -> String {
        value.to_string()
    }
}

fn main() {}
