//! An impl on a generic type.

use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

struct Store<T> {
    items: Mutex<Vec<T>>,
}

#[stream_rpc::service]
impl<T> Store<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    async fn put(&self, item: T) -> usize {
        let mut items = self.items.lock().unwrap();
        items.push(item);
        items.len()
    }

    async fn all(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }
}

fn assert_protocol<P: stream_rpc::Protocol>(_: &P) {}

async fn call(client: &StoreClient<String>) -> Result<Vec<String>, stream_rpc::CallError> {
    client.put("x".to_owned()).await?;
    client.all().await
}

fn main() {
    let store = Store::<String> { items: Mutex::new(Vec::new()) };
    assert_protocol(&store);
    assert_eq!(Store::<u8>::METHODS, ["put", "all"]);
    let _ = call;
}
