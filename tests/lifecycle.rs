//! The connection lifecycle and what a failed call tells its caller: the
//! on-connect hook (typed, able to refuse), the on-disconnect hook, the
//! error taxonomy of plain and reconnecting clients, graceful shutdown and
//! connections over any stream. Loopback only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stream_rpc::{
    CallError, Caller, Config, Connector, EndReason, Error, ErrorCode, Fernet, HandlerError,
    Reconnect, Role, SendError,
};
use tokio::sync::{Notify, mpsc, oneshot};

/// Every wait of a test is bounded by this.
const BOUND: Duration = Duration::from_secs(20);

#[stream_rpc::service]
pub trait Hub {
    /// Registers a worker; `false` when the hub does not want it.
    async fn register(&self, worker: String) -> bool;
    /// Answers after `ms` milliseconds.
    async fn slow(&self, ms: u64) -> u64;
    /// Fails with the method's own error when `n` is odd.
    async fn even(&self, n: u64) -> Result<u64, HandlerError>;
}

#[derive(Clone, Default)]
struct HubImpl {
    registered: Arc<Mutex<Vec<String>>>,
}

impl Hub for HubImpl {
    async fn register(&self, worker: String) -> bool {
        let wanted = worker != "unwanted";
        if wanted {
            self.registered.lock().unwrap().push(worker);
        }
        wanted
    }

    async fn slow(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn even(&self, n: u64) -> Result<u64, HandlerError> {
        if n % 2 == 1 {
            return Err(HandlerError::failed(format!("{n} is odd")));
        }
        Ok(n)
    }
}

fn config(key: &str, port: u16) -> Config {
    Config::builder()
        .key(key)
        .host("127.0.0.1")
        .port(port)
        .build()
        .unwrap()
}

/// A hub server on a free port; its port, the hub, and its connector.
async fn hub_server(key: &str) -> (u16, HubImpl, Connector) {
    let connector = Connector::new(config(key, 0));
    let server = connector.bind().await.unwrap();
    let port = server.local_addr().port();
    let hub = HubImpl::default();
    tokio::spawn(server.serve(HubServer::new(hub.clone())));
    (port, hub, connector)
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen in time"))
}

#[tokio::test]
async fn a_typed_on_connect_hook_registers_before_any_call() {
    let key = Fernet::generate_key().unwrap();
    let (port, hub, _server) = hub_server(&key).await;
    let client = Connector::new(config(&key, port))
        .on_connect(|connection| async move {
            let hub = HubClient::new(&connection);
            match hub.register("worker-1".to_owned()).await? {
                true => Ok(()),
                false => Err("refused".into()),
            }
        })
        .connect(())
        .await
        .unwrap();
    // The hook ran before `connect` returned.
    assert_eq!(*hub.registered.lock().unwrap(), ["worker-1"]);
    assert!(client.is_connected());
    assert!(client.connection().is_some());
    assert!(client.connected().await.is_some());
    let hub_client = HubClient::new(&client);
    assert_eq!(hub_client.slow(1).await.unwrap(), 1);
}

#[tokio::test]
async fn a_failing_on_connect_hook_refuses_the_connection_and_says_why() {
    let key = Fernet::generate_key().unwrap();
    let (port, hub, _server) = hub_server(&key).await;
    let disconnected = Arc::new(Notify::new());
    let seen = disconnected.clone();
    let error = Connector::new(config(&key, port))
        .on_connect(|connection| async move {
            match HubClient::new(&connection)
                .register("unwanted".to_owned())
                .await?
            {
                true => Ok(()),
                false => Err("the hub does not want this worker".into()),
            }
        })
        .on_disconnect(move |_, end| {
            assert_eq!(*end, EndReason::Closed);
            seen.notify_one();
        })
        .connect(())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::OnConnect { target, .. } if *target == format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("the hub does not want this worker"),
        "{error}"
    );
    bounded("the on-disconnect hook", disconnected.notified()).await;
    assert!(hub.registered.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_reconnecting_client_whose_hook_refuses_reports_it_to_waiting_calls() {
    let key = Fernet::generate_key().unwrap();
    let (port, _hub, _server) = hub_server(&key).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let client = Connector::new(config(&key, port))
        .on_connect(move |connection| {
            let attempt = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // The first two connections are refused, the third taken.
                let worker = if attempt < 2 { "unwanted" } else { "third" };
                match HubClient::new(&connection)
                    .register(worker.to_owned())
                    .await?
                {
                    true => Ok(()),
                    false => Err(format!("attempt {attempt} refused").into()),
                }
            }
        })
        .connect_reconnecting(
            (),
            Reconnect::default()
                .with_initial_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_millis(200)),
        )
        .unwrap();
    // A call with a short limit sees why it has no connection.
    let error = HubClient::new(&client)
        .with_timeout(Duration::from_millis(150))
        .slow(1)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CallError::Unreachable { after, .. } if *after == Duration::from_millis(150)),
        "{error}"
    );
    assert!(!error.may_have_run());
    // Calls made later go through, once the hook has taken a connection.
    let answer = bounded(
        "a call after the hook took a connection",
        client.call_with_timeout("slow", stream_rpc::json!(2), BOUND),
    )
    .await
    .unwrap();
    assert_eq!(answer.payload, stream_rpc::json!(2));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(client.is_connected());
}

#[tokio::test]
async fn a_server_hook_calls_the_client_back() {
    let key = Fernet::generate_key().unwrap();
    // The client serves `Hub` back; the server registers on it when it
    // connects.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server_connector = Connector::new(config(&key, 0)).on_connect(move |connection| {
        let tx = tx.clone();
        async move {
            let wanted = HubClient::new(&connection)
                .register("server".to_owned())
                .await?;
            tx.send(wanted).unwrap();
            if wanted {
                Ok(())
            } else {
                Err("not wanted".into())
            }
        }
    });
    let server = server_connector.bind().await.unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.serve(()));
    let hub = HubImpl::default();
    let client = Connector::new(config(&key, port))
        .connect(HubServer::new(hub.clone()))
        .await
        .unwrap();
    assert!(bounded("the server's hook", rx.recv()).await.unwrap());
    assert_eq!(*hub.registered.lock().unwrap(), ["server"]);
    drop(client);
}

#[tokio::test]
async fn unreachable_servers_are_unreachable_not_a_timeout() {
    let key = Fernet::generate_key().unwrap();
    let (a, b) = (closed_port().await, closed_port().await);
    let client = Connector::new(config(&key, a))
        .connect_reconnecting(
            (),
            Reconnect::default()
                .with_servers([("127.0.0.1", a), ("127.0.0.1", b)])
                .with_initial_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(50)),
        )
        .unwrap();
    let limit = Duration::from_millis(500);
    let error = client
        .call_with_timeout("ping", stream_rpc::json!(null), limit)
        .await
        .unwrap_err();
    let CallError::Unreachable { after, reason, .. } = &error else {
        panic!("expected Unreachable, got {error:?}");
    };
    assert_eq!(*after, limit);
    assert!(reason.contains("unreachable"), "{reason}");
    assert!(!error.may_have_run());
    assert!(
        error
            .to_string()
            .starts_with("`ping` was not sent, as there was no connection: "),
        "{error}"
    );
    assert!(!client.is_connected());
    assert!(client.connection().is_none());
}

#[tokio::test]
async fn a_client_that_gave_up_says_unreachable_at_once() {
    let key = Fernet::generate_key().unwrap();
    let port = closed_port().await;
    let client = Connector::new(config(&key, port))
        .connect_reconnecting(
            (),
            Reconnect::default()
                .with_initial_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_millis(10))
                .with_max_attempts(Some(2)),
        )
        .unwrap();
    // Waits for the client to give up, then fails at once.
    assert!(bounded("giving up", client.connected()).await.is_none());
    let error = client
        .call_with_timeout("ping", stream_rpc::json!(null), BOUND)
        .await
        .unwrap_err();
    let CallError::Unreachable { reason, .. } = &error else {
        panic!("expected Unreachable, got {error:?}");
    };
    assert!(reason.starts_with("gave up reconnecting"), "{reason}");
    assert!(!error.may_have_run());
    // The application can ask why, without a call.
    let last = client.last_error().expect("the error it gave up on");
    assert!(last.contains("unreachable"), "{last}");
    assert!(client.join().await.is_err());
}

#[tokio::test]
async fn a_slow_answer_times_out_at_the_limit_the_caller_set() {
    let key = Fernet::generate_key().unwrap();
    let (port, _hub, _server) = hub_server(&key).await;
    let client = Connector::new(config(&key, port))
        .connect_reconnecting((), Reconnect::default())
        .unwrap();
    // Connected first, so that part of the limit goes to the connection.
    bounded("the connection", client.connected()).await.unwrap();
    let limit = Duration::from_millis(300);
    let error = HubClient::new(&client)
        .with_timeout(limit)
        .slow(5_000)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        CallError::Timeout {
            method: "slow".into(),
            after: limit
        }
    );
    assert!(error.may_have_run());
    assert_eq!(error.to_string(), "no reply to `slow` within 300ms");
}

#[tokio::test]
async fn refusals_did_not_run_and_the_method_s_own_error_did() {
    let key = Fernet::generate_key().unwrap();
    let (port, _hub, _server) = hub_server(&key).await;
    let client = Connector::new(config(&key, port))
        .connect(())
        .await
        .unwrap();
    let unknown = client
        .call("no_such_method", stream_rpc::json!(null))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownMethod));
    assert!(!unknown.may_have_run());
    let invalid = client
        .call("slow", stream_rpc::json!("not a number"))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Some(ErrorCode::InvalidPayload));
    assert!(!invalid.may_have_run());
    // The method's own failure is an answer: it ran.
    let odd = client.call("even", stream_rpc::json!(3)).await.unwrap_err();
    assert!(odd.may_have_run(), "{odd:?}");
    // After the connection is closed, a call is not sent.
    client.close();
    let closed = client.call("slow", stream_rpc::json!(1)).await.unwrap_err();
    assert!(
        matches!(
            &closed,
            CallError::NotSent {
                reason: SendError::Closed,
                ..
            }
        ),
        "{closed:?}"
    );
    assert!(!closed.may_have_run());
    assert!(!client.is_connected());
    assert!(client.connection().is_none());
}

#[tokio::test]
async fn a_graceful_shutdown_future_stops_the_server() {
    let key = Fernet::generate_key().unwrap();
    let connector = Connector::new(config(&key, 0));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = connector.bind().await.unwrap();
    let port = server.local_addr().port();
    let serving = tokio::spawn(
        server
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .serve(HubServer::new(HubImpl::default())),
    );
    let client = Connector::new(config(&key, port))
        .connect(())
        .await
        .unwrap();
    assert_eq!(
        HubClient::new(&client).slow(1).await.unwrap(),
        1,
        "served before the shutdown"
    );
    stop.send(()).unwrap();
    bounded("the server's end", serving).await.unwrap().unwrap();
    let end = bounded("the client's end", client.join()).await;
    assert_eq!(end, EndReason::PeerClosed);
}

#[tokio::test]
async fn a_connection_runs_over_any_stream() {
    let key = Fernet::generate_key().unwrap();
    // Two endpoints: one endpoint refuses its own tokens coming back.
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server =
        Connector::new(config(&key, 0)).attach(a, HubServer::new(HubImpl::default()), Role::Server);
    let client = Connector::new(config(&key, 0)).attach(b, (), Role::Client);
    assert_eq!(HubClient::new(&client).slow(3).await.unwrap(), 3);
    client.close();
    assert_eq!(
        bounded("the client's end", client.join()).await,
        EndReason::Closed
    );
    assert_eq!(
        bounded("the server's end", server.join()).await,
        EndReason::PeerClosed
    );
}

#[tokio::test]
async fn closing_the_connection_through_its_handle_stops_the_client() {
    let key = Fernet::generate_key().unwrap();
    let (port, _hub, _server) = hub_server(&key).await;
    let client = Connector::new(config(&key, port))
        .connect_reconnecting(
            (),
            Reconnect::default()
                .with_initial_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_millis(20)),
        )
        .unwrap();
    let first = bounded("the first connection", client.connected())
        .await
        .unwrap();
    assert!(client.last_error().is_none());
    // A worker that is done closes its connection from a handler: the
    // client stops, as its own close() would, and tells calls so.
    first.close();
    assert!(
        bounded("the client's stop", client.connected())
            .await
            .is_none()
    );
    let error = client.call("slow", stream_rpc::json!(1)).await.unwrap_err();
    assert!(
        matches!(
            &error,
            CallError::NotSent {
                reason: SendError::Closed,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(client.connections(), 1);
    bounded("the client's end", client.join()).await.unwrap();
}
