//! Several services on one connection: `Services` composes generated
//! servers (both forms) and hand-written protocols into one `Protocol`, on
//! a server's listener and on a client that serves several traits back.

mod common;

use common::{TestServer, bounded, config, new_key};
use serde_json::json;
use stream_rpc::{
    CallError, Caller, Connector, Context, ErrorCode, HandlerError, Packet, Protocol, Reply,
    Service, Services,
};

#[stream_rpc::service]
pub trait Jobs {
    async fn submit(&self, name: String) -> u64;
    /// Asks the caller back, through the traits it serves.
    async fn who_is_there(&self, ctx: Context) -> Result<String, HandlerError>;
}

#[stream_rpc::service]
pub trait Hub {
    async fn register(&self, worker: String) -> bool;
}

/// The impl form, composed like the trait form.
pub struct Clock;

#[stream_rpc::service]
impl Clock {
    async fn now(&self) -> u64 {
        42
    }
}

/// A hand-written protocol, composed through `Service`.
pub struct Health;

impl Protocol for Health {
    async fn process_message(&self, _: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "health" => Ok(Reply::message("health.reply", json!("ok"))),
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

impl Service for Health {
    fn methods(&self) -> &[&'static str] {
        &["health"]
    }
}

struct Scheduler;

impl Jobs for Scheduler {
    async fn submit(&self, name: String) -> u64 {
        name.len() as u64
    }

    async fn who_is_there(&self, ctx: Context) -> Result<String, HandlerError> {
        let failed = |e: CallError| HandlerError::failed(e.to_string());
        let name = NamerClient::new(ctx.connection())
            .name()
            .await
            .map_err(failed)?;
        let count = CounterClient::new(ctx.connection())
            .count()
            .await
            .map_err(failed)?;
        Ok(format!("{name} with {count}"))
    }
}

impl Hub for Scheduler {
    async fn register(&self, worker: String) -> bool {
        !worker.is_empty()
    }
}

/// What a client serves back to the server.
#[stream_rpc::service]
pub trait Namer {
    async fn name(&self) -> String;
}

#[stream_rpc::service]
pub trait Counter {
    async fn count(&self) -> u32;
}

struct Worker;

impl Namer for Worker {
    async fn name(&self) -> String {
        "worker-1".into()
    }
}

impl Counter for Worker {
    async fn count(&self) -> u32 {
        3
    }
}

fn server_services() -> Services {
    Services::new()
        .add(JobsServer::new(Scheduler))
        .and_then(|s| s.add(HubServer::new(Scheduler)))
        .and_then(|s| s.add(Clock))
        .and_then(|s| s.add(Health))
        .unwrap()
}

#[tokio::test]
async fn one_listener_serves_several_services_routed_by_method() {
    bounded(async {
        let key = new_key();
        let services = server_services();
        assert_eq!(
            services.methods(),
            ["submit", "who_is_there", "register", "now", "health"]
        );
        assert_eq!(services.name(), "Jobs+Hub+Clock+Health");
        let server = TestServer::start(services, config(&key, 0), &key).await;
        let client = Connector::new(config(&key, server.port).build().unwrap())
            .connect(())
            .await
            .unwrap();
        assert_eq!(
            JobsClient::new(&client).submit("abc".into()).await.unwrap(),
            3
        );
        assert!(HubClient::new(&client).register("w".into()).await.unwrap());
        assert_eq!(ClockClient::new(&client).now().await.unwrap(), 42);
        let health = client.call("health", json!(null)).await.unwrap();
        assert_eq!(health.payload, json!("ok"));
        let unknown = client.call("nope", json!(null)).await.unwrap_err();
        assert!(
            matches!(
                &unknown,
                CallError::Remote {
                    code: ErrorCode::UnknownMethod,
                    ..
                }
            ),
            "{unknown:?}"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_serves_several_traits_back_on_its_connection() {
    bounded(async {
        let key = new_key();
        let server = TestServer::start(server_services(), config(&key, 0), &key).await;
        let served_back = Services::new()
            .add(NamerServer::new(Worker))
            .and_then(|s| s.add(CounterServer::new(Worker)))
            .unwrap();
        let client = Connector::new(config(&key, server.port).build().unwrap())
            .connect(served_back)
            .await
            .unwrap();
        let answer = JobsClient::new(&client).who_is_there().await.unwrap();
        assert_eq!(answer, Ok("worker-1 with 3".to_owned()));
        server.stop().await;
    })
    .await;
}

#[test]
fn a_method_name_served_twice_is_refused_naming_both_services() {
    /// Another service with a `submit`.
    #[stream_rpc::service]
    pub trait Queue {
        async fn submit(&self, name: String) -> u64;
    }
    struct Q;
    impl Queue for Q {
        async fn submit(&self, _: String) -> u64 {
            0
        }
    }
    let err = Services::new()
        .add(JobsServer::new(Scheduler))
        .unwrap()
        .add(QueueServer::new(Q))
        .unwrap_err();
    assert_eq!(
        (err.method.as_str(), err.first.as_str(), err.second.as_str()),
        ("submit", "Jobs", "Queue")
    );
    assert_eq!(
        err.to_string(),
        "the method `submit` is served by both `Jobs` and `Queue`: give one of them another wire name (`#[stream_rpc(rename = \"...\")]`)"
    );
}
