struct NotSerde;

struct Service;

#[stream_rpc::service]
impl Service {
    async fn give(&self) -> NotSerde {
        NotSerde
    }
}

fn main() {}
