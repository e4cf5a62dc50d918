#[stream_rpc::service]
pub trait Store<T> {
    async fn get(&self, key: String) -> Option<String>;
}

#[stream_rpc::service]
pub trait Methods {
    async fn get<T>(&self, key: T) -> Option<String>;
}

fn main() {}
