struct NotSerde;

#[stream_rpc::service]
pub trait Store {
    async fn put(&self, value: NotSerde);
    async fn get(&self) -> NotSerde;
}

fn main() {}
