struct NotSerde;

struct Service;

#[stream_rpc::service]
impl Service {
    async fn take(&self, value: NotSerde) {
        let _ = value;
    }
}

fn main() {}
