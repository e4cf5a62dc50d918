//! One argument type that is not serde, in a method of one argument and
//! one of several, in both forms: one error each, on the argument.

struct NotSerde;

#[stream_rpc::service]
pub trait Store {
    async fn put(&self, value: NotSerde);
}

struct Service;

#[stream_rpc::service]
impl Service {
    async fn take(&self, key: String, value: NotSerde) -> u8 {
        let _ = (key, value);
        0
    }
}

fn main() {}
