use stream_rpc::Context;

struct Service;

#[stream_rpc::service]
impl Service {
    async fn ping(&self, ctx: Context, again: Context) -> u32 {
        let _ = (ctx, again);
        1
    }
}

fn main() {}
