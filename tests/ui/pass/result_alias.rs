//! A `Result` alias that shadows std's does not confuse the generated code.

use std::fmt;

#[derive(Debug)]
struct MyError;

impl fmt::Display for MyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("my error")
    }
}

type Result<T> = std::result::Result<T, MyError>;

struct Service;

#[stream_rpc::service]
impl Service {
    async fn get(&self, ok: bool) -> Result<u32> {
        if ok { Ok(1) } else { Err(MyError) }
    }

    async fn unit(&self) -> Result<()> {
        Ok(())
    }
}

async fn call(client: &ServiceClient) -> std::result::Result<u32, stream_rpc::CallError> {
    client.unit().await?;
    client.get(true).await
}

fn main() {
    assert_eq!(Service::METHODS, ["get", "unit"]);
    let _ = call;
}
