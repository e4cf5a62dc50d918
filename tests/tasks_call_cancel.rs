//! `call.cancel` over loopback sockets (PROTOCOL.md, "Cancelling a
//! call"): a caller that drops a call's future, or whose time limit
//! passes, tells the peer; the peer's handler sees it through its
//! `Context`; malformed and unknown cancels are dropped unanswered.
//! Synchronised by events (channels, Notify), never by sleeping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use stream_rpc::{
    Call, Caller, Context, HandlerError, Packet, Protocol, Reconnect, Reply, layer::LayeredCaller,
};
use tokio::sync::{Notify, mpsc};

/// A call limit far beyond any test: the handler's deadline never comes
/// into play, only the cancel does.
const LONG: Duration = Duration::from_secs(30);

/// What the serving side reports.
#[derive(Default)]
struct Seen {
    started: Notify,
}

/// `wait` runs until its context is cancelled and reports it; `ping`
/// answers at once.
struct Waiter {
    seen: Arc<Seen>,
    cancelled: mpsc::UnboundedSender<u64>,
}

impl Protocol for Waiter {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "wait" => {
                self.seen.started.notify_one();
                ctx.cancelled().await;
                assert!(ctx.is_cancelled());
                let _ = self.cancelled.send(ctx.request_id());
                Ok(Reply::message("wait.reply", json!("cancelled")))
            }
            "ping" => Ok(Reply::message("pong", packet.payload)),
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// A server of [`Waiter`]: its seen events and the ids of the requests
/// whose handler saw a cancel.
async fn waiter() -> (TestServer, Arc<Seen>, mpsc::UnboundedReceiver<u64>) {
    let seen = Arc::new(Seen::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let key = new_key();
    let server = TestServer::start(
        Waiter {
            seen: seen.clone(),
            cancelled: tx,
        },
        config(&key, 0),
        &key,
    )
    .await;
    (server, seen, rx)
}

/// Starts a `wait` call through `caller`, waits until its handler runs,
/// then drops the call's future.
async fn start_and_drop(caller: &impl Caller, seen: &Seen) {
    let call = caller.call_with(Call::new("wait", json!(null)).timeout(LONG));
    tokio::select! {
        reply = call => panic!("the call ended before it was dropped: {reply:?}"),
        () = seen.started.notified() => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_cancels_its_handler_on_every_caller() {
    bounded(async {
        let (server, seen, mut cancelled) = waiter().await;
        // A client.
        let client = Arc::new(server.client().await);
        start_and_drop(&client, &seen).await;
        assert!(cancelled.recv().await.is_some());
        // A reconnecting client.
        let reconnecting =
            stream_rpc::Connector::new(config(&server.key, server.port).build().unwrap())
                .connect_reconnecting((), Reconnect::default())
                .unwrap();
        start_and_drop(&reconnecting, &seen).await;
        assert!(cancelled.recv().await.is_some());
        // A layered caller.
        let layered = LayeredCaller::new(client.clone(), tower::layer::util::Identity::new());
        start_and_drop(&layered, &seen).await;
        assert!(cancelled.recv().await.is_some());
        // The connections go on.
        assert_eq!(
            client.call("ping", json!(1)).await.unwrap().payload,
            json!(1)
        );
        reconnecting.close();
        client.close();
        server.stop().await;
    })
    .await;
}

#[stream_rpc::service]
trait Slow {
    async fn slow(&self, ctx: Context, n: u64) -> Result<u64, HandlerError>;
}

struct SlowImpl {
    seen: Arc<Seen>,
    cancelled: mpsc::UnboundedSender<u64>,
}

impl Slow for SlowImpl {
    async fn slow(&self, ctx: Context, n: u64) -> Result<u64, HandlerError> {
        self.seen.started.notify_one();
        ctx.cancelled().await;
        let _ = self.cancelled.send(n);
        Err(HandlerError::failed("cancelled"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_typed_call_cancels_its_handler() {
    bounded(async {
        let seen = Arc::new(Seen::default());
        let (tx, mut cancelled) = mpsc::unbounded_channel();
        let key = new_key();
        let server = TestServer::start(
            SlowServer::new(SlowImpl {
                seen: seen.clone(),
                cancelled: tx,
            }),
            config(&key, 0),
            &key,
        )
        .await;
        let client = stream_rpc::Connector::new(config(&key, server.port).build().unwrap())
            .connect(())
            .await
            .unwrap();
        let typed = SlowClient::new(&client).with_timeout(LONG);
        tokio::select! {
            reply = typed.slow(7) => panic!("the call ended before it was dropped: {reply:?}"),
            () = seen.started.notified() => {}
        }
        assert_eq!(cancelled.recv().await, Some(7));
        client.close();
        server.stop().await;
    })
    .await;
}

/// The next packet of `method` the raw peer reads.
async fn next_of(raw: &mut RawPeer, method: &str) -> Packet {
    loop {
        let packet = raw.recv().await;
        if packet.method == method {
            return packet;
        }
    }
}

#[tokio::test]
async fn a_call_whose_time_limit_passes_sends_one_cancel_naming_it() {
    bounded(async {
        let (client, mut raw) = client_and_raw_server().await;
        let error = client
            .call_with_timeout("work", json!(null), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(error, stream_rpc::CallError::Timeout { .. }),
            "{error}"
        );
        let request = next_of(&mut raw, "work").await;
        let cancel = raw.recv().await;
        assert_eq!(cancel.method, "call.cancel");
        assert_eq!(
            cancel.payload,
            json!({"peer": request.peer, "id": request.id})
        );
        assert!(cancel.reply_to.is_none() && cancel.timeout_ms.is_none());
        // A notification, a call answered: no cancel. The next packet is
        // the notification, then the call.
        client.notify("note", json!(null)).await.unwrap();
        let answered = tokio::spawn({
            let connection = client.connection().unwrap();
            async move { connection.call("quick", json!(null)).await }
        });
        assert_eq!(raw.recv().await.method, "note");
        let quick = raw.recv().await;
        assert_eq!(quick.method, "quick");
        let mut reply = raw.packet("quick.reply", json!(1));
        reply.reply_to = Some(quick.reply_address());
        raw.send(&reply).await;
        assert_eq!(answered.await.unwrap().unwrap().payload, json!(1));
        // Then nothing more than a last probe: no cancel came in between.
        client.notify("last", json!(null)).await.unwrap();
        assert_eq!(raw.recv().await.method, "last");
        client.close();
    })
    .await;
}

#[tokio::test]
async fn a_dropped_call_sends_a_cancel_and_its_late_reply_is_dropped() {
    bounded(async {
        let (client, mut raw) = client_and_raw_server().await;
        let connection = client.connection().unwrap();
        let call = tokio::spawn(async move { connection.call("work", json!(null)).await });
        let request = next_of(&mut raw, "work").await;
        call.abort();
        let cancel = next_of(&mut raw, "call.cancel").await;
        assert_eq!(
            cancel.payload,
            json!({"peer": request.peer, "id": request.id})
        );
        // Its reply still comes: the caller drops it, and serves on.
        let mut reply = raw.packet("work.reply", json!(1));
        reply.reply_to = Some(request.reply_address());
        raw.send(&reply).await;
        let ping = raw.request("ping", json!(null)).await;
        // The client serves nothing: `unknown_method`, not a crash.
        assert_eq!(raw.recv_reply(ping).await.method, stream_rpc::ERROR_METHOD);
        client.close();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_cancel_reaches_the_handler_of_the_request_it_names_only() {
    bounded(async {
        let (server, seen, mut cancelled) = waiter().await;
        let mut raw = server.raw().await;
        let mut first = raw.packet("wait", json!(null));
        first.timeout_ms = Some(30_000);
        raw.send(&first).await;
        seen.started.notified().await;
        let mut second = raw.packet("wait", json!(null));
        second.timeout_ms = Some(30_000);
        raw.send(&second).await;
        seen.started.notified().await;
        // Malformed cancels, a cancel of another peer's request and one of
        // a request that does not run: dropped, unanswered, nothing cancelled.
        for payload in [
            json!("x"),
            json!({"peer": raw.id, "id": "1"}),
            json!({"peer": raw.id}),
            json!({"peer": uuid::Uuid::new_v4(), "id": first.id}),
            json!({"peer": raw.id, "id": 999}),
        ] {
            raw.request("call.cancel", payload).await;
        }
        let mut as_reply = raw.packet("call.cancel", json!({"peer": raw.id, "id": first.id}));
        as_reply.reply_to = Some(stream_rpc::ReplyTo {
            peer: raw.id,
            id: 1,
        });
        raw.send(&as_reply).await;
        ping_is_next(&mut raw).await;
        assert!(cancelled.try_recv().is_err());
        // The second, named by its peer and id: its handler sees it, and
        // its reply still comes.
        raw.request("call.cancel", json!({"peer": raw.id, "id": second.id}))
            .await;
        assert_eq!(cancelled.recv().await, Some(second.id));
        let reply = raw.recv_reply(second.id).await;
        assert_eq!(reply.payload, json!("cancelled"));
        // A second cancel of it, now finished: dropped.
        raw.request("call.cancel", json!({"peer": raw.id, "id": second.id}))
            .await;
        ping_is_next(&mut raw).await;
        // The first still runs until cancelled.
        raw.request("call.cancel", json!({"peer": raw.id, "id": first.id}))
            .await;
        assert_eq!(cancelled.recv().await, Some(first.id));
        assert_eq!(raw.recv_reply(first.id).await.payload, json!("cancelled"));
        server.stop().await;
    })
    .await;
}
