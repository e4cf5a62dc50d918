#[stream_rpc::service]
struct Service;

fn main() {}
