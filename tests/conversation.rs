//! Conversations and calls between real peers over loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::{
    CallError, Connector, Context, EndReason, Error, ErrorCode, HandlerError, Packet, Protocol,
    Reply,
};

/// The seed's worker style: every `pong` leads to the next `ping`, until
/// `rounds` exchanges are done.
struct Worker {
    rounds: u64,
    pongs: Arc<AtomicU64>,
}

impl Protocol for Worker {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        assert_eq!(packet.method, "pong");
        let seen = self.pongs.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(packet.payload, json!(seen - 1), "pongs come back in order");
        if seen == self.rounds {
            ctx.connection().close();
            return Ok(Reply::Nothing);
        }
        Ok(Reply::message("ping", json!(seen)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_style_conversation_runs_as_a_loop() {
    bounded(async {
        let server = TestServer::new().await;
        let pongs = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            rounds: 2_000,
            pongs: pongs.clone(),
        };
        let connector = Connector::new(config(&server.key, server.port).build().unwrap());
        let end = connector
            .run_client(worker, "ping", json!(0))
            .await
            .unwrap();
        assert_eq!(end, EndReason::Closed);
        assert_eq!(pongs.load(Ordering::SeqCst), 2_000);
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_get_their_own_replies_and_errors() {
    bounded(async {
        let server = TestServer::new().await;
        let client = server.client().await;
        let session = client.connection().expect("connected");

        let sum = session.call("add", json!({"a": 2, "b": 40})).await.unwrap();
        assert_eq!((sum.method.as_str(), sum.payload), ("sum", json!(42)));

        let unknown = session.call("nope", json!(null)).await.unwrap_err();
        assert!(
            matches!(&unknown, CallError::Remote { code: ErrorCode::UnknownMethod, message, .. }
                if message.contains("nope")),
            "{unknown}"
        );
        let invalid = session.call("add", json!({"a": "two"})).await.unwrap_err();
        assert!(
            matches!(&invalid, CallError::Remote { code: ErrorCode::InvalidPayload, message, .. }
                if message.contains("add")),
            "{invalid}"
        );
        let failed = session.call("fail", json!(null)).await.unwrap_err();
        assert!(
            matches!(&failed, CallError::Remote { code: ErrorCode::HandlerError, message, .. }
                if message == "this handler always fails"),
            "{failed}"
        );
        let panicked = session.call("panic", json!(null)).await.unwrap_err();
        assert!(
            matches!(&panicked, CallError::Remote { code: ErrorCode::HandlerPanicked, message, .. }
                if !message.contains("on purpose")),
            "the panic message stays in the server's log: {panicked}"
        );
        // The connection goes on after all of them.
        let again = session.call("ping", json!("after")).await.unwrap();
        assert_eq!(again.payload, json!("after"));
        session.close();
        assert_eq!(client.join().await, EndReason::Closed);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_calls_on_one_connection() {
    bounded(async {
        let server = TestServer::new().await;
        let client = server.client().await;
        let calls = (0..64i64).map(|n| {
            let session = client.connection().expect("connected");
            tokio::spawn(async move { session.call("add", json!({"a": n, "b": 1000})).await })
        });
        for (n, call) in calls.enumerate() {
            let reply = call.await.unwrap().unwrap();
            assert_eq!(reply.payload, json!(n as i64 + 1000));
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_flow_both_ways_at_once() {
    bounded(async {
        let server = TestServer::new().await;
        let client = server.client().await;
        // Each `callback` makes the server call back into the client while
        // the client has calls of its own in flight.
        let calls = (0..16).map(|n| {
            let session = client.connection().expect("connected");
            tokio::spawn(async move {
                let method = if n % 2 == 0 { "callback" } else { "ping" };
                (method, n, session.call(method, json!(n)).await)
            })
        });
        for call in calls {
            let (method, n, reply) = call.await.unwrap();
            let reply = reply.unwrap();
            let expected = if method == "callback" {
                "called_back"
            } else {
                "pong"
            };
            assert_eq!((reply.method.as_str(), reply.payload), (expected, json!(n)));
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_get_no_reply_and_forwarded_packets_stay_verbatim() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        let mut raw = server.raw().await;

        let noted = probe.noted.notified();
        raw.request("note", json!("fyi")).await;
        noted.await;
        assert_eq!(probe.notes.load(Ordering::SeqCst), 1);

        let mut task = Packet::new(
            uuid::Uuid::new_v4(),
            77,
            "parse_article",
            json!({"article_id": 4242}),
        );
        task.created_at = "2020-01-01T00:00:00Z".parse().unwrap();
        let id = raw
            .request("forward", serde_json::to_value(&task).unwrap())
            .await;
        // The note got no reply: the first packet back answers `forward`.
        let back = raw.recv_reply(id).await;
        assert_eq!(
            (
                back.peer,
                back.id,
                back.created_at,
                back.method.as_str(),
                &back.payload
            ),
            (
                task.peer,
                task.id,
                task.created_at,
                "parse_article",
                &task.payload
            )
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_reply_starts_a_new_exchange_and_is_never_an_error() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        // A packet that answers something (it carries reply_to) with an
        // unknown method: the server drops it with a log line, no error.
        let mut stray = raw.packet("whatever", json!(null));
        stray.reply_to = Some(stream_rpc::ReplyTo {
            peer: uuid::Uuid::new_v4(),
            id: 1,
        });
        raw.send(&stray).await;
        // A reply whose handler answers: that answer is a new message.
        let mut pong_like = raw.packet("ping", json!("chained"));
        pong_like.reply_to = Some(stream_rpc::ReplyTo {
            peer: uuid::Uuid::new_v4(),
            id: 2,
        });
        raw.send(&pong_like).await;
        let next = raw.recv().await;
        assert_eq!(next.method, "pong");
        assert_eq!(next.payload, json!("chained"));
        assert_eq!(next.reply_to, None);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    bounded(async {
        // Bind, learn a free port, and close it again so nothing listens.
        let port = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let connector = Connector::new(config(&new_key(), port).build().unwrap());
        let err = connector
            .run_client(TestService::default(), "ping", json!(null))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("server is unreachable"),
            "{err}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_fail_promptly_when_the_connection_is_lost() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        let client = server.client().await;
        let session = client.connection().expect("connected");
        let started = probe.started.notified();
        let call = tokio::spawn(async move { session.call("wait", json!(null)).await });
        started.await;
        client.close();
        // The client closes without waiting for the server's handler: the
        // call fails as lost rather than waiting for its timeout.
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost { .. }), "{err}");
        probe.release.notify_one();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn dropping_a_client_closes_its_connection() {
    bounded(async {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connector = Connector::new(config(&new_key(), port).build().unwrap());
        let client = connector.connect(TestService::default()).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        drop(client);
        let mut byte = [0u8; 1];
        assert_eq!(accepted.read(&mut byte).await.unwrap(), 0, "expected EOF");
    })
    .await;
}

/// `wait` waits until `release` comes, on the same connection.
#[derive(Default)]
struct Gate {
    open: tokio::sync::Notify,
}

impl Protocol for Gate {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "wait" => {
                self.open.notified().await;
                Ok(Reply::message("waited", json!(null)))
            }
            "release" => {
                self.open.notify_one();
                Ok(Reply::message("released", json!(null)))
            }
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// Handlers start on the read loop; one that waits must move off it, or
/// the packet that it waits for would never be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_waits_does_not_hold_up_the_connection() {
    bounded(async {
        let key = new_key();
        let server = TestServer::start(Gate::default(), config(&key, 0), &key).await;
        let client = server.client().await;
        let session = client.connection().expect("connected");
        let waiting = tokio::spawn(async move { session.call("wait", json!(null)).await });
        // Several quick calls go through while `wait` is still waiting.
        for _ in 0..3 {
            let reply = client.call("ping", json!(null)).await;
            assert!(
                matches!(
                    reply,
                    Err(CallError::Remote {
                        code: ErrorCode::UnknownMethod,
                        ..
                    })
                ),
                "{reply:?}"
            );
        }
        assert!(!waiting.is_finished());
        let released = client.call("release", json!(null)).await.unwrap();
        assert_eq!(released.method, "released");
        assert_eq!(waiting.await.unwrap().unwrap().method, "waited");
        server.stop().await;
    })
    .await;
}
