//! One mistake in a service gives one error: the items the attribute
//! generates are still there, so code that uses them adds none.

struct Calculator;

#[stream_rpc::service]
impl Calculator {
    fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn negate(&self, value: i64) -> i64 {
        -value
    }
}

#[stream_rpc::service]
pub trait Store {
    async fn get(&self, key: String) -> Option<String> {
        let _ = key;
        None
    }

    async fn put(&self, key: String, value: String);
}

fn assert_protocol<P: stream_rpc::Protocol>(_: &P) {}

async fn use_them(session: &stream_rpc::Connection) -> Result<(), stream_rpc::CallError> {
    assert_protocol(&Calculator);
    let _: &[&str] = Calculator::METHODS;
    let calculator = CalculatorClient::new(session.clone());
    let _: i64 = calculator.add(1, 2).await?;
    let _: i64 = calculator.negate(3).await?;
    let store = StoreClient::new(session.clone());
    let _: Option<String> = store.get("k".into()).await?;
    store.put("k".into(), "v".into()).await?;
    let _: &[&str] = StoreClient::METHODS;
    Ok(())
}

fn main() {
    let _ = use_them;
}
