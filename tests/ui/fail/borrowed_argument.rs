//! A borrowed argument cannot be read from a payload: the error is on the
//! argument and says which owned type to take.

struct Service;

#[stream_rpc::service]
impl Service {
    async fn greet(&self, name: &str) -> String {
        name.to_owned()
    }

    async fn sum(&self, values: &[u8], scale: u8) -> u32 {
        values.iter().map(|v| u32::from(v * scale)).sum()
    }
}

#[stream_rpc::service]
pub trait Store {
    async fn put(&self, key: &str, value: String);
}

fn main() {}
