//! Per-call metadata and layers on both sides, between real peers over
//! loopback: metadata from a call (or a notification) to its handler, a
//! `meta` that breaks a limit refused with the reason, tower's time limit,
//! concurrency limit, rate limit and load shedding composed on the server,
//! a time limit and retries on the client, the auth and retry examples,
//! and trace context carried from a call into the calls its handler makes.

mod common;

#[allow(dead_code)]
#[path = "../examples/auth.rs"]
mod auth;
#[allow(dead_code)]
#[path = "../examples/retry.rs"]
mod retry;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use stream_rpc::layer::{BoxFuture, LayeredCaller, LayeredProtocol, TraceParent, Tracing};
use stream_rpc::{
    Call, CallError, Caller, Client, Context, ErrorCode, HandlerError, Metadata, Packet, Protocol,
    Reply, SendError,
};
use tokio::sync::{Notify, mpsc};
use tower::ServiceBuilder;

/// Answers `meta` with the request's metadata; `note` passes it on to the
/// test; `hold` waits to be released; `seen` names the calls it ran.
#[derive(Default)]
struct Recorder {
    notes: Mutex<Option<mpsc::UnboundedSender<Metadata>>>,
    started: Notify,
    release: Notify,
    ran: Mutex<Vec<String>>,
}

fn meta_json(meta: &Metadata) -> Value {
    meta.iter()
        .map(|(key, value)| (key.to_owned(), Value::from(value)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

impl Protocol for Recorder {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        let reply = match packet.method.as_str() {
            "meta" => Reply::message("meta.reply", meta_json(ctx.meta())),
            "note" => {
                if let Some(notes) = &*self.notes.lock().unwrap() {
                    let _ = notes.send(ctx.meta().clone());
                }
                Reply::Nothing
            }
            "hold" => {
                let released = self.release.notified();
                self.started.notify_one();
                released.await;
                Reply::message("hold.reply", json!("released"))
            }
            "quick" => Reply::message("quick.reply", json!("quick")),
            other => return Err(HandlerError::unknown_method(other)),
        };
        self.ran.lock().unwrap().push(packet.method.clone());
        Ok(reply)
    }
}

async fn serve<P: Protocol>(protocol: P) -> TestServer {
    let key = new_key();
    TestServer::start(protocol, config(&key, 0), &key).await
}

async fn client_of(server: &TestServer) -> Client {
    stream_rpc::Connector::new(config(&server.key, server.port).build().unwrap())
        .connect(())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_goes_from_a_call_or_a_notification_to_its_handler() {
    bounded(async {
        let recorder = Arc::new(Recorder::default());
        let (notes, mut noted) = mpsc::unbounded_channel();
        *recorder.notes.lock().unwrap() = Some(notes);
        let server = serve(Arc::clone(&recorder)).await;
        let client = client_of(&server).await;

        let call = Call::new("meta", json!(null))
            .with_meta("tenant", "acme")
            .unwrap()
            .with_meta("authorization", "t-1")
            .unwrap();
        let reply = client.call_with(call).await.unwrap();
        assert_eq!(
            reply.payload,
            json!({"authorization": "t-1", "tenant": "acme"})
        );
        // None: the handler sees empty metadata.
        let reply = client.call("meta", json!(null)).await.unwrap();
        assert_eq!(reply.payload, json!({}));

        let note = Call::new("note", json!(1))
            .with_meta("tenant", "b")
            .unwrap();
        client.notify_with(note).await.unwrap();
        let seen = noted.recv().await.unwrap();
        assert_eq!(seen.get("tenant"), Some("b"));

        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_that_breaks_a_limit_is_refused_invalid_packet_with_the_reason() {
    bounded(async {
        let server = serve(Arc::new(Recorder::default())).await;
        let mut raw = server.raw().await;
        let long = "x".repeat(stream_rpc::MAX_META_VALUE_LEN + 1);
        let cases = [
            (json!({"Tenant": "a"}), "is not 1 to 64 bytes"),
            (json!({"k": long}), "more than 1024"),
            (json!({"k": 1}), "expected a string"),
            (json!(["k"]), "an object of strings"),
        ];
        for (meta, reason) in cases {
            let packet = raw.packet("meta", json!(null));
            let mut value = serde_json::to_value(&packet).unwrap();
            value["meta"] = meta.clone();
            raw.send_plain(&serde_json::to_vec(&value).unwrap()).await;
            let error = assert_error(&raw.recv_reply(packet.id).await, ErrorCode::InvalidPacket);
            assert!(error.message.contains(reason), "{meta}: {}", error.message);
        }
        // The connection goes on: a valid meta is read.
        let mut packet = raw.packet("meta", json!(null));
        packet.meta = Some(Metadata::try_from(vec![("k", "v")]).unwrap());
        raw.send(&packet).await;
        assert_eq!(raw.recv_reply(packet.id).await.payload, json!({"k": "v"}));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_time_limit_concurrency_limit_and_load_shedding_compose_on_the_server() {
    bounded(async {
        let recorder = Arc::new(Recorder::default());
        let protocol = LayeredProtocol::new(
            Arc::clone(&recorder),
            ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(1)
                .rate_limit(1000, Duration::from_secs(1))
                .timeout(Duration::from_millis(300)),
        );
        let server = serve(protocol).await;
        let client = Arc::new(client_of(&server).await);

        // One call holds the only slot: another is shed, `busy`, not run.
        let started = recorder.started.notified();
        let holding = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.call("hold", json!(null)).await }
        });
        started.await;
        let shed = client.call("quick", json!(null)).await.unwrap_err();
        assert_eq!(shed.code(), Some(ErrorCode::Busy), "{shed}");
        assert!(!shed.may_have_run());
        recorder.release.notify_one();
        assert_eq!(holding.await.unwrap().unwrap().payload, json!("released"));
        assert_eq!(*recorder.ran.lock().unwrap(), ["hold"]);

        // The slot is free again; a handler past the time limit is stopped.
        assert_eq!(
            client.call("quick", json!(null)).await.unwrap().payload,
            json!("quick")
        );
        let slow = client.call("hold", json!(null)).await.unwrap_err();
        assert_eq!(slow.code(), Some(ErrorCode::HandlerError), "{slow}");
        assert!(slow.to_string().contains("time limit"), "{slow}");
        // Its slot was given back when it was stopped.
        assert_eq!(
            client.call("quick", json!(null)).await.unwrap().payload,
            json!("quick")
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_load_shedding_a_concurrency_limit_queues_calls_in_turn() {
    bounded(async {
        let recorder = Arc::new(Recorder::default());
        let protocol = LayeredProtocol::new(
            Arc::clone(&recorder),
            ServiceBuilder::new().concurrency_limit(1),
        );
        let server = serve(protocol).await;
        let client = Arc::new(client_of(&server).await);
        let started = recorder.started.notified();
        let holding = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.call("hold", json!(null)).await }
        });
        started.await;
        let queued = tokio::spawn({
            let client = Arc::clone(&client);
            async move { client.call("quick", json!(null)).await }
        });
        recorder.release.notify_one();
        holding.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        // `quick` waited for the slot `hold` had.
        assert_eq!(*recorder.ran.lock().unwrap(), ["hold", "quick"]);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_retries_only_what_did_not_run_and_limits_each_try() {
    bounded(async {
        let flaky = Arc::new(retry::Flaky::default());
        let server = serve(Arc::clone(&flaky)).await;
        let caller = retry::retrying(client_of(&server).await, 5, Duration::from_millis(300));

        // Refused `busy` twice (nothing ran), then answered.
        let reply = caller.call("reserve", json!(null)).await.unwrap();
        assert_eq!(reply.payload, json!(3));
        assert_eq!(flaky.reserve_tries.load(Ordering::SeqCst), 3);

        // Failed in its handler: it ran, so it is not tried again.
        let err = caller.call("charge", json!(null)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::HandlerError), "{err}");
        assert_eq!(flaky.charges.load(Ordering::SeqCst), 1);

        // No reply within the try's limit: it may have run, not retried.
        let err = caller.call("stall", json!(null)).await.unwrap_err();
        assert!(matches!(err, CallError::Timeout { .. }), "{err}");
        assert_eq!(flaky.stalls.load(Ordering::SeqCst), 1);

        // Out of tries: the last refusal comes back.
        flaky.reserve_tries.store(0, Ordering::SeqCst);
        let caller = retry::retrying(client_of(&server).await, 2, Duration::from_secs(5));
        let err = caller.call("reserve", json!(null)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Busy), "{err}");
        assert_eq!(flaky.reserve_tries.load(Ordering::SeqCst), 2);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_layer_refuses_missing_unknown_and_unpermitted_tokens() {
    bounded(async {
        let server = serve(auth::protected()).await;
        let payload = json!({"account": "alice"});

        // No token at all.
        let bare = client_of(&server).await;
        let err = bare.call("balance", payload.clone()).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
        assert!(!err.may_have_run());

        // Typed clients ride the layered caller.
        for (token, balance, close) in [
            (
                "guessed",
                Err(ErrorCode::Unauthenticated),
                Err(ErrorCode::Unauthenticated),
            ),
            ("reader-token", Ok(500), Err(ErrorCode::PermissionDenied)),
            ("admin-token", Ok(500), Ok(true)),
        ] {
            let caller = auth::with_token(client_of(&server).await, token);
            let accounts = auth::AccountsClient::new(&caller);
            let got = accounts.balance("alice".into()).await;
            assert_eq!(got.map_err(|e| e.code().unwrap()), balance, "{token}");
            let got = accounts.close("alice".into()).await;
            assert_eq!(got.map_err(|e| e.code().unwrap()), close, "{token}");
        }
        server.stop().await;
    })
    .await;
}

/// Calls `next` (through a caller with the tracing layer) and answers
/// with what it answered; `traceparent` answers with the `traceparent` and
/// `tracestate` the request carried.
struct Relay {
    next: Option<Onward>,
}

/// How a relay calls on.
type Onward = Box<dyn Fn(Call) -> BoxFuture<Result<Packet, CallError>> + Send + Sync>;

impl Protocol for Relay {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match (packet.method.as_str(), &self.next) {
            ("relay", Some(next)) => {
                let answer = next(Call::new("traceparent", json!(null)))
                    .await
                    .map_err(|e| HandlerError::failed(e.to_string()))?;
                Ok(Reply::message("relay.reply", answer.payload))
            }
            ("traceparent", _) => Ok(Reply::message(
                "traceparent.reply",
                json!([ctx.meta().get("traceparent"), ctx.meta().get("tracestate")]),
            )),
            (other, _) => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// A server whose handler calls `last` through a caller with the tracing
/// layer, itself under the tracing layer.
async fn relay_to(last: &TestServer) -> TestServer {
    let onward = Arc::new(LayeredCaller::new(client_of(last).await, Tracing::new()));
    let next = move |call: Call| -> BoxFuture<Result<Packet, CallError>> {
        let onward = Arc::clone(&onward);
        Box::pin(async move { onward.call_with(call).await })
    };
    serve(LayeredProtocol::new(
        Relay {
            next: Some(Box::new(next)),
        },
        Tracing::new(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_goes_from_a_call_into_the_calls_its_handler_makes() {
    bounded(async {
        let last = serve(Relay { next: None }).await;
        let relay = relay_to(&last).await;
        let client = client_of(&relay).await;
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let call = Call::new("relay", json!(null))
            .with_meta("traceparent", sent)
            .unwrap()
            .with_meta("tracestate", "vendor=x")
            .unwrap();
        let seen = client.call_with(call).await.unwrap().payload;
        let parent = TraceParent::parse(seen[0].as_str().unwrap()).unwrap();
        let sent = TraceParent::parse(sent).unwrap();
        assert_eq!(parent.trace_id, sent.trace_id);
        assert_eq!(parent.flags, sent.flags);
        assert_ne!(
            parent.parent_id, sent.parent_id,
            "a span of the relay's own"
        );
        assert_eq!(seen[1], json!("vendor=x"));

        // A call that carried none, or one that is not a traceparent,
        // starts no trace (without OpenTelemetry).
        for meta in [None, Some("00-not-a-traceparent")] {
            let mut call = Call::new("relay", json!(null));
            if let Some(text) = meta {
                call = call.with_meta("traceparent", text).unwrap();
            }
            let seen = client.call_with(call).await.unwrap().payload;
            assert_eq!(seen, json!([null, null]), "{meta:?}");
        }

        // A traceparent the caller set itself is kept.
        let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let tracing = LayeredCaller::new(client_of(&last).await, Tracing::new());
        let call = Call::new("traceparent", json!(null))
            .with_meta("traceparent", own)
            .unwrap();
        let seen = tracing.call_with(call).await.unwrap().payload;
        assert_eq!(seen, json!([own, null]));
        relay.stop().await;
        last.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layered_callers_notification_goes_through_its_layers() {
    bounded(async {
        let recorder = Arc::new(Recorder::default());
        let (notes, mut noted) = mpsc::unbounded_channel();
        *recorder.notes.lock().unwrap() = Some(notes);
        let server = serve(Arc::clone(&recorder)).await;
        let caller = auth::with_token(client_of(&server).await, "t");
        caller.notify("note", json!(null)).await.unwrap();
        assert_eq!(noted.recv().await.unwrap().get("authorization"), Some("t"));
        // A notification on a closed connection: not sent, as without layers.
        let connection = caller.inner().connection().unwrap();
        caller.inner().close();
        connection.closed().await;
        let err = caller.notify("note", json!(null)).await.unwrap_err();
        assert_eq!(err, SendError::Closed);
        server.stop().await;
    })
    .await;
}

/// Streams the `authorization` its open carried, then ends.
struct Ticker;

impl Protocol for Ticker {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        Err(HandlerError::unknown_method(&packet.method))
    }

    async fn process_stream(
        &self,
        ctx: Context,
        _packet: Packet,
        mut io: stream_rpc::StreamIo,
    ) -> Result<Value, HandlerError> {
        let mut output = io.output().expect("an output flow");
        let token = ctx.meta().get(auth::AUTHORIZATION).map(str::to_owned);
        output
            .send(json!(token))
            .await
            .map_err(|e| HandlerError::failed(e.to_string()))?;
        Ok(json!("done"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_carries_its_metadata_and_goes_through_the_server_layers() {
    use futures_util::StreamExt as _;
    use stream_rpc::{StreamError, StreamOptions};
    bounded(async {
        let auth = auth::Auth::new([("admin-token".to_owned(), auth::Allowed::All)]);
        let server = serve(LayeredProtocol::new(Ticker, auth)).await;
        let client = client_of(&server).await;

        let options = StreamOptions::new()
            .with_meta(auth::AUTHORIZATION, "admin-token")
            .unwrap();
        let mut stream = client
            .open_stream("ticks", json!(null), options)
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!("admin-token"));
        assert!(stream.next().await.is_none());
        assert_eq!(stream.finish().await.unwrap().payload, json!("done"));

        // Without a token the auth layer refuses the open.
        let mut refused = client
            .open_stream("ticks", json!(null), StreamOptions::new())
            .await
            .unwrap();
        match refused.next().await {
            Some(Err(StreamError::Call(err))) => {
                assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}")
            }
            other => panic!("not refused: {other:?}"),
        }

        // A layered caller's layers see the open too: its token layer
        // carries the token, and a typed or raw stream needs no metadata
        // of its own.
        let layered = auth::with_token(client_of(&server).await, "admin-token");
        let mut stream = layered
            .open_stream("ticks", json!(null), StreamOptions::new())
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!("admin-token"));
        assert!(stream.next().await.is_none());
        server.stop().await;
    })
    .await;
}
