//! Services defined by a trait, over loopback: the trait lives in its own
//! crate (`examples/kv-api`), the server implements it here, and clients
//! that serve nothing call it through any `Caller`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stream_rpc::Caller;

use common::{TestServer, bounded, config, new_key};
use stream_rpc::{CallError, Config, Connection, Connector, Context, ErrorCode, Reconnect};
use stream_rpc_example_kv::{Kv, KvClient, KvError, KvServer};
use tokio::sync::Notify;

/// The implementation, in the server's crate.
#[derive(Default)]
struct MemoryKv {
    values: Mutex<HashMap<String, String>>,
}

impl Kv for MemoryKv {
    async fn set(&self, key: String, value: String) {
        self.values.lock().unwrap().insert(key, value);
    }

    async fn get(&self, key: String) -> Option<String> {
        self.values.lock().unwrap().get(&key).cloned()
    }

    async fn take(&self, key: String) -> Result<String, KvError> {
        self.values
            .lock()
            .unwrap()
            .remove(&key)
            .ok_or(KvError::Missing(key))
    }

    async fn count(&self) -> usize {
        self.values.lock().unwrap().len()
    }
}

async fn kv_server() -> (TestServer, String) {
    let key = new_key();
    let server = TestServer::start(KvServer::new(MemoryKv::default()), config(&key, 0), &key).await;
    (server, key)
}

#[tokio::test]
async fn a_client_that_serves_nothing_calls_a_trait_service() {
    bounded(async {
        let (server, key) = kv_server().await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let kv = KvClient::new(connector.connect(()).await.unwrap());
        kv.set("a".into(), "1".into()).await.unwrap();
        // The notification is sent before the call on one connection, so it
        // has been handled when the call is.
        assert_eq!(kv.get("a".into()).await.unwrap(), Some("1".into()));
        assert_eq!(kv.get("b".into()).await.unwrap(), None);
        assert_eq!(kv.count().await.unwrap(), 1);
        assert_eq!(kv.take("a".into()).await.unwrap(), Ok("1".into()));
        // The method's own error comes back as itself.
        assert_eq!(
            kv.take("a".into()).await.unwrap(),
            Err(KvError::Missing("a".into()))
        );
        assert_eq!(KvClient::METHODS, ["set", "get", "take", "kv.count"]);
        assert_eq!(KvServer::<MemoryKv>::METHODS, KvClient::METHODS);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_typed_client_rides_a_reconnecting_client() {
    bounded(async {
        let (server, key) = kv_server().await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let reconnecting = connector
            .connect_reconnecting((), Reconnect::default())
            .unwrap();
        // By reference: the typed client borrows the reconnecting client.
        let kv = KvClient::new(&reconnecting);
        kv.set("k".into(), "v".into()).await.unwrap();
        assert_eq!(kv.get("k".into()).await.unwrap(), Some("v".into()));
        // Through the connection it has now, and through an `Arc`.
        let session = reconnecting.connection().expect("connected");
        let by_session: KvClient<Connection> = KvClient::new(session);
        assert_eq!(by_session.count().await.unwrap(), 1);
        let shared = KvClient::new(std::sync::Arc::new(reconnecting));
        assert_eq!(shared.get("k".into()).await.unwrap(), Some("v".into()));
        server.stop().await;
    })
    .await;
}

/// A service whose `hold` waits until released, and which reports the
/// request numbers it is sent.
#[stream_rpc::service]
trait Probe {
    async fn hold(&self) -> u32;
    async fn id_of(&self, ctx: Context) -> u64;
    async fn call_back(&self, ctx: Context) -> String;
}

#[derive(Default)]
struct ProbeState {
    release: Notify,
    /// Signalled when a `hold` handler is dropped before it finished.
    dropped: Notify,
}

#[derive(Default)]
struct Probing(Arc<ProbeState>);

/// Signals `dropped` when a handler's future is dropped unfinished.
struct DropSignal(Arc<ProbeState>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.dropped.notify_one();
    }
}

impl Probe for Probing {
    async fn hold(&self) -> u32 {
        let signal = DropSignal(self.0.clone());
        self.0.release.notified().await;
        std::mem::forget(signal);
        7
    }

    async fn id_of(&self, ctx: Context) -> u64 {
        ctx.request_id()
    }

    async fn call_back(&self, ctx: Context) -> String {
        match ctx.call("anything", stream_rpc::json!(null)).await {
            Err(CallError::Remote { code, .. }) => code.to_string(),
            other => format!("unexpected: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_typed_call_can_have_its_own_time_limit_and_the_server_drops_the_work_after_it() {
    bounded(async {
        let key = new_key();
        let state = Arc::new(ProbeState::default());
        let server =
            TestServer::start(ProbeServer::new(Probing(state.clone())), config(&key, 0), &key)
                .await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let client = connector.connect(()).await.unwrap();
        let limit = Duration::from_millis(100);
        let probe = ProbeClient::new(client.connection().expect("connected")).with_timeout(limit);
        let err = probe.hold().await.unwrap_err();
        assert!(
            matches!(&err, CallError::Timeout { method, after } if method == "hold" && *after == limit),
            "{err}"
        );
        // The request said how long its caller waits: the server dropped
        // the handler once that had passed, rather than keep it running
        // (`notify_one` keeps its permit if it came first).
        state.dropped.notified().await;
        // Without it, the configured call timeout (30 s) applies: the call
        // waits until released.
        let patient = ProbeClient::new(client.connection().expect("connected"));
        assert_eq!(patient.caller().call_timeout(), Duration::from_secs(30));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_to_a_program_that_serves_nothing_gets_unknown_method() {
    bounded(async {
        let key = new_key();
        let server =
            TestServer::start(ProbeServer::new(Probing::default()), config(&key, 0), &key).await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let probe = ProbeClient::new(connector.connect(()).await.unwrap());
        assert_eq!(probe.call_back().await.unwrap(), "unknown_method");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn two_connectors_from_one_config_are_two_endpoints_that_talk() {
    bounded(async {
        let key = new_key();
        // One config, server and client alike: a port picked free first.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let shared: Config = config(&key, port).build().unwrap();
        let serving = Connector::new(shared.clone());
        let server = serving.bind().await.unwrap();
        let stop = server.shutdown_handle();
        let task = tokio::spawn(server.serve(ProbeServer::new(Probing::default())));

        let calling = Connector::new(shared);
        assert_ne!(calling.local_id(), serving.local_id());
        let probe = ProbeClient::new(calling.connect(()).await.unwrap());
        assert_eq!(probe.id_of().await.unwrap(), 0);

        // One endpoint numbers its packets across its connections.
        let second = ProbeClient::new(calling.connect(()).await.unwrap());
        let ids = [
            second.id_of().await.unwrap(),
            probe.id_of().await.unwrap(),
            second.id_of().await.unwrap(),
        ];
        assert_eq!(ids, [1, 2, 3]);
        stop.shutdown();
        drop((probe, second));
        task.await.unwrap().unwrap();
    })
    .await;
}

/// The first version of a service, as an old client was built from it.
mod v1 {
    use serde::{Deserialize, Serialize};
    use stream_rpc::HandlerError;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Spec {
        pub name: String,
    }

    #[stream_rpc::service(name = "Jobs")]
    pub trait Jobs {
        /// One argument: the whole payload.
        async fn submit(&self, name: String) -> Result<u64, HandlerError>;
        /// Two arguments: an object `{"id": .., "times": ..}`.
        async fn retry(&self, id: u64, times: u32) -> String;
        /// One struct argument: the payload is the struct's object.
        async fn describe(&self, spec: Spec) -> String;
        /// Changed in `v2` in a way that breaks old clients.
        async fn rename(&self, name: String) -> Result<String, HandlerError>;
    }

    pub struct Old;

    impl Jobs for Old {
        async fn submit(&self, name: String) -> Result<u64, HandlerError> {
            Ok(name.len() as u64)
        }
        async fn retry(&self, id: u64, times: u32) -> String {
            format!("{id} x{times}")
        }
        async fn describe(&self, spec: Spec) -> String {
            spec.name
        }
        async fn rename(&self, name: String) -> Result<String, HandlerError> {
            Ok(name)
        }
    }
}

/// The next version, served by a new server, with every change that keeps
/// `v1`'s clients working, and one that does not.
mod v2 {
    use serde::{Deserialize, Serialize};
    use stream_rpc::HandlerError;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Spec {
        pub name: String,
        /// A new field: an old client does not send it.
        #[serde(default)]
        pub priority: u8,
    }

    #[stream_rpc::service(name = "Jobs")]
    pub trait Jobs {
        async fn submit(&self, name: String) -> Result<u64, HandlerError>;
        /// A new `Option` argument: an old client leaves it out.
        async fn retry(&self, id: u64, times: u32, delay: Option<u64>) -> String;
        async fn describe(&self, spec: Spec) -> String;
        /// A second argument where there was one: the payload turns from
        /// the argument itself into an object, which old clients do not send.
        async fn rename(&self, name: String, force: Option<bool>) -> Result<String, HandlerError>;
        /// A new method: old clients do not call it.
        async fn cancel(&self, id: u64) -> Result<bool, HandlerError>;
    }

    pub struct New;

    impl Jobs for New {
        async fn submit(&self, name: String) -> Result<u64, HandlerError> {
            Ok(name.len() as u64)
        }
        async fn retry(&self, id: u64, times: u32, delay: Option<u64>) -> String {
            format!("{id} x{times} after {delay:?}")
        }
        async fn describe(&self, spec: Spec) -> String {
            format!("{} at {}", spec.name, spec.priority)
        }
        async fn rename(&self, name: String, force: Option<bool>) -> Result<String, HandlerError> {
            Ok(format!("{name} {force:?}"))
        }
        async fn cancel(&self, id: u64) -> Result<bool, HandlerError> {
            Ok(id > 0)
        }
    }
}

#[tokio::test]
async fn a_client_built_from_the_old_definition_calls_a_server_built_from_the_new() {
    bounded(async {
        let key = new_key();
        let server = TestServer::start(v2::JobsServer::new(v2::New), config(&key, 0), &key).await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let old = v1::JobsClient::new(connector.connect(()).await.unwrap());
        // A method beside a new one.
        assert_eq!(old.submit("build".into()).await.unwrap(), Ok(5));
        // A new `Option` argument: `None` on the server.
        assert_eq!(old.retry(7, 3).await.unwrap(), "7 x3 after None");
        // A new `#[serde(default)]` field: its default on the server.
        let spec = v1::Spec {
            name: "nightly".into(),
        };
        assert_eq!(old.describe(spec).await.unwrap(), "nightly at 0");
        // A second argument added to a one-argument method breaks: the
        // server refuses the old payload (before running anything), and
        // that comes back as the call's error, not as the method's own.
        let err = old.rename("x".into()).await.unwrap_err();
        assert!(
            matches!(
                &err,
                CallError::Remote {
                    code: ErrorCode::InvalidPayload,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("`rename`"), "{err}");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn refusals_of_a_request_that_did_not_run_are_the_calls_error_never_the_methods() {
    bounded(async {
        let key = new_key();
        let server = TestServer::start(v1::JobsServer::new(v1::Old), config(&key, 0), &key).await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let new = v2::JobsClient::new(connector.connect(()).await.unwrap());
        // A method the old server lacks: `unknown_method`, for a method
        // whose own error type is `HandlerError`, is still the call's error.
        let err = new.cancel(1).await.unwrap_err();
        assert!(
            matches!(
                &err,
                CallError::Remote {
                    code: ErrorCode::UnknownMethod,
                    ..
                }
            ),
            "{err:?}"
        );
        // A payload the old server cannot read: `invalid_payload`, likewise.
        let err = new.rename("x".into(), Some(true)).await.unwrap_err();
        assert!(
            matches!(
                &err,
                CallError::Remote {
                    code: ErrorCode::InvalidPayload,
                    ..
                }
            ),
            "{err:?}"
        );
        // The new client still calls what did not change.
        assert_eq!(new.submit("ab".into()).await.unwrap(), Ok(2));
        server.stop().await;
    })
    .await;
}
