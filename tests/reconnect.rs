//! Reconnecting clients, through a loopback gate that can cut every
//! connection at once or refuse new ones (accept and close at once).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::{CallError, Connector, Reconnect, ReconnectingClient};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A proxy for any number of connections in front of a server.
struct Gate {
    port: u16,
    refusing: AtomicBool,
    /// When each connection arrived, refused or not.
    arrivals: Mutex<Vec<Instant>>,
    arrived: Notify,
    pipes: Mutex<Vec<JoinHandle<()>>>,
}

impl Gate {
    async fn open(server_port: u16) -> Arc<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Arc::new(Gate {
            port: listener.local_addr().unwrap().port(),
            refusing: AtomicBool::new(false),
            arrivals: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            pipes: Mutex::new(Vec::new()),
        });
        let state = gate.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // Decided before the arrival is told: a test that counts
                // arrivals and then stops refusing knows the fate of each
                // one it counted.
                let refused = state.refusing.load(Ordering::SeqCst);
                state.arrivals.lock().unwrap().push(Instant::now());
                state.arrived.notify_waiters();
                if refused {
                    drop(client);
                    continue;
                }
                let pipe = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", server_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                state.pipes.lock().unwrap().push(pipe);
            }
        });
        gate
    }

    /// Resets every connection through the gate.
    fn cut(&self) {
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }

    /// Waits until `count` connections have arrived in all.
    async fn wait_for_arrivals(&self, count: usize) {
        loop {
            let arrived = self.arrived.notified();
            if self.arrivals.lock().unwrap().len() >= count {
                return;
            }
            arrived.await;
        }
    }
}

fn policy(initial_ms: u64, max_ms: u64) -> Reconnect {
    let mut reconnect = Reconnect::default();
    reconnect.initial_delay = Duration::from_millis(initial_ms);
    reconnect.max_delay = Duration::from_millis(max_ms);
    reconnect
}

fn reconnecting(server: &TestServer, port: u16, reconnect: Reconnect) -> ReconnectingClient {
    Connector::new(config(&server.key, port).build().unwrap())
        .connect_reconnecting(TestService::default(), reconnect)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_is_replaced_and_new_calls_succeed() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        let gate = Gate::open(server.port).await;
        let client = reconnecting(&server, gate.port, policy(20, 200));
        let reply = client.call("add", json!({"a": 1, "b": 2})).await.unwrap();
        assert_eq!(reply.payload, json!(3));
        assert_eq!(client.connections(), 1);

        // A call in flight when the connection breaks fails as lost...
        let started = probe.started.notified();
        let session = client.connected().await.unwrap();
        let waiting = tokio::spawn(async move { session.call("wait", json!("cut")).await });
        started.await;
        gate.cut();
        let err = waiting.await.unwrap().unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost { .. }), "{err}");

        // ...and a new call waits for the next connection and succeeds.
        let reply = client.call("add", json!({"a": 2, "b": 2})).await.unwrap();
        assert_eq!(reply.payload, json!(4));
        assert_eq!(client.connections(), 2);
        // Both directions work on the new connection.
        let echoed = client.call("callback", json!("back")).await.unwrap();
        assert_eq!(echoed.payload, json!("back"));

        // The lost call ran once on the server and was not sent again.
        let done = probe.done.notified();
        probe.release.notify_one();
        done.await;
        assert_eq!(probe.finished.load(Ordering::SeqCst), 1);
        client.close();
        client.join().await.unwrap();
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_exponentially_up_to_the_cap_then_connect() {
    bounded(async {
        let server = TestServer::new().await;
        let gate = Gate::open(server.port).await;
        gate.refusing.store(true, Ordering::SeqCst);
        let reconnect = policy(10, 80);
        let client = reconnecting(&server, gate.port, reconnect.clone());
        // Ceilings 10, 20, 40, 80, 80, ... ms between arrivals.
        let attempts = 10;
        gate.wait_for_arrivals(attempts).await;
        let arrivals = gate.arrivals();
        let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
        for (index, gap) in gaps.iter().take(attempts - 1).enumerate() {
            let failures = u32::try_from(index + 1).unwrap();
            // Never sooner than the jitter allows.
            let floor = reconnect.ceiling(failures) / 2;
            assert!(*gap >= floor, "gap {index} was {gap:?}, below {floor:?}");
        }
        // Capped: without the cap the ninth wait would be at least 1.28 s.
        assert!(
            gaps[attempts - 2] < Duration::from_millis(1_000),
            "{gaps:?}"
        );
        // The refused connections were failures; when the server is
        // reachable again the client connects and calls succeed.
        gate.refusing.store(false, Ordering::SeqCst);
        // The client may be on a refused connection it has not yet seen
        // closed: a call on it is not sent (the connection is closing as it
        // is handed over) or is lost, so try until one succeeds.
        let reply = loop {
            match client.call("ping", json!("back")).await {
                Err(CallError::ConnectionLost { .. }) => continue,
                Err(CallError::NotSent {
                    reason: stream_rpc::SendError::Closed,
                    ..
                }) => continue,
                other => break other.unwrap(),
            }
        };
        assert_eq!(reply.payload, json!("back"));
        assert!(client.connections() > u64::try_from(attempts).unwrap());
        drop(client);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn it_gives_up_after_the_attempt_limit_with_the_last_error() {
    bounded(async {
        // A port with nothing listening on it.
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut reconnect = policy(5, 20);
        reconnect.max_attempts = Some(3);
        let config = config(&new_key(), port).build().unwrap();
        let client = Connector::new(config)
            .connect_reconnecting(TestService::default(), reconnect)
            .unwrap();
        // It never connected: the call was not sent, and says why.
        let err = client.call("ping", json!(null)).await.unwrap_err();
        assert!(
            matches!(&err, CallError::Unreachable { reason, .. } if reason.contains("gave up")),
            "{err}"
        );
        assert!(!err.may_have_run());
        assert!(client.connected().await.is_none());
        assert_eq!(client.connections(), 0);
        let err = client.join().await.unwrap_err();
        assert!(
            matches!(err, stream_rpc::Error::Unreachable { .. }),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_is_sent_again_on_every_new_connection() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        let gate = Gate::open(server.port).await;
        let client = reconnecting(
            &server,
            gate.port,
            policy(10, 100).hello("note", json!("hello")),
        );
        for round in 1..=3 {
            let noted = probe.noted.notified();
            let session = client.connected().await.unwrap();
            // A call on the connection orders it after the hello.
            session.call("ping", json!(round)).await.unwrap();
            noted.await;
            assert_eq!(probe.notes.load(Ordering::SeqCst), round);
            gate.cut();
            // A call made before the client sees the cut may still go to
            // the dying connection; wait until it has seen it.
            session.closed().await;
        }
        drop(client);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_shutdown_stop_reconnecting() {
    bounded(async {
        let server = TestServer::new().await;
        let gate = Gate::open(server.port).await;
        let client = reconnecting(&server, gate.port, policy(10, 100));
        client.call("ping", json!(1)).await.unwrap();
        client.close();
        assert!(client.connected().await.is_none());
        // Closed by this side: not sent.
        let err = client.call("ping", json!(2)).await.unwrap_err();
        assert!(
            matches!(
                &err,
                CallError::NotSent {
                    reason: stream_rpc::SendError::Closed,
                    ..
                }
            ),
            "{err}"
        );
        client.join().await.unwrap();

        // Shutting the connector down stops its reconnecting clients too.
        let connector = Connector::new(config(&server.key, gate.port).build().unwrap());
        let client = connector
            .connect_reconnecting(TestService::default(), policy(10, 100))
            .unwrap();
        client.call("ping", json!(3)).await.unwrap();
        connector.shutdown_handle().shutdown();
        assert!(client.connected().await.is_none());
        client.join().await.unwrap();
        // Only the two connections were ever made.
        assert_eq!(gate.arrivals().len(), 2);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_policies_are_refused_before_connecting() {
    let mut reconnect = policy(100, 10);
    reconnect.max_attempts = None;
    let err = Connector::new(config(&new_key(), 1).build().unwrap())
        .connect_reconnecting(TestService::default(), reconnect)
        .unwrap_err();
    assert!(err.to_string().contains("max_delay"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_several_servers_fails_over_when_its_server_goes_away() {
    bounded(async {
        let key = new_key();
        let first = TestServer::start(TestService::default(), config(&key, 0), &key).await;
        let second = TestServer::start(TestService::default(), config(&key, 0), &key).await;
        let reconnect =
            policy(10, 100).with_servers([("127.0.0.1", first.port), ("127.0.0.1", second.port)]);
        // The connector's own port is not used when servers are listed.
        let client = Connector::new(config(&key, 1).build().unwrap())
            .connect_reconnecting(TestService::default(), reconnect)
            .unwrap();
        let reply = client.call("ping", json!(1)).await.unwrap();
        assert_eq!(reply.payload, json!(1));
        let session = client.connection().expect("connected");
        assert_eq!(session.remote_addr().unwrap().port(), first.port);

        first.stop().await;
        session.closed().await;
        let reply = client.call("ping", json!(2)).await.unwrap();
        assert_eq!(reply.payload, json!(2));
        let now = client.connection().expect("connected again");
        assert_eq!(now.remote_addr().unwrap().port(), second.port);
        assert_eq!(client.connections(), 2);
        client.close();
        client.join().await.unwrap();
        second.stop().await;
    })
    .await;
}

#[test]
fn a_server_list_with_a_blank_host_is_refused() {
    let reconnect = Reconnect::default().with_servers([("", 8888)]);
    let key = new_key();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = runtime.block_on(async {
        Connector::new(config(&key, 1).build().unwrap())
            .connect_reconnecting(TestService::default(), reconnect)
            .unwrap_err()
    });
    assert!(err.to_string().starts_with("servers"), "{err}");
}
