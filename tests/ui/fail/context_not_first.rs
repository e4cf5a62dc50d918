use stream_rpc::Context;

struct Service;

#[stream_rpc::service]
impl Service {
    async fn ping(&self, value: u32, ctx: Context) -> u32 {
        let _ = ctx;
        value
    }
}

fn main() {}
