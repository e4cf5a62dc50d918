//! Raw identifiers: `r#type` is `type` on the wire and in the payload.

struct Service;

#[stream_rpc::service]
impl Service {
    async fn r#type(&self, r#match: u32, r#in: u32) -> u32 {
        r#match + r#in
    }

    async fn r#loop(&self, r#ref: String) -> String {
        r#ref
    }
}

async fn call(session: &stream_rpc::Connection) -> Result<u32, stream_rpc::CallError> {
    ServiceClient::new(session.clone()).r#type(1, 2).await
}

fn main() {
    assert_eq!(Service::METHODS, ["type", "loop"]);
    let _ = call;
}
