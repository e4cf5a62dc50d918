struct Service;

#[stream_rpc::service]
impl Service {
    async fn add(&self, (a, b): (i32, i32)) -> i32 {
        a + b
    }
}

fn main() {}
