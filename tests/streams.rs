//! Streams over loopback sockets (PROTOCOL.md, "Streams"): every kind,
//! credit flow, cancellation both ways, each end, deadlines, the
//! connection closing, limits, and every bad input of the protocol sent
//! as raw crafted packets. Synchronised by events (Notify, counts read
//! after a round trip), never by sleeping. On two worker threads, as
//! servers run, so that the races of the read loop, the handlers' tasks
//! and the handles are exercised.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::{Value, json};
use stream_rpc::{
    Caller, Connection, Context, ErrorCode, HandlerError, ItemStream, Packet, Protocol, Reply,
    StreamError, StreamHeader, StreamIo, StreamOptions, Streaming,
};
use tokio::sync::Notify;

/// What a test observes of the serving side.
#[derive(Default)]
struct StreamProbe {
    /// Output items sent by producers.
    produced: AtomicU64,
    produced_notify: Notify,
    /// Stream handlers dropped before their end (the drop guard).
    dropped: AtomicUsize,
    dropped_notify: Notify,
    /// Handlers that started.
    started: AtomicUsize,
    started_notify: Notify,
    /// The serving side's connection, once a stream came.
    connection: std::sync::Mutex<Option<Connection>>,
    /// Lets a `hold_input` handler read its input.
    release: Notify,
}

impl StreamProbe {
    async fn produced_reaches(&self, count: u64) {
        loop {
            let notified = self.produced_notify.notified();
            if self.produced.load(Ordering::SeqCst) >= count {
                return;
            }
            notified.await;
        }
    }

    async fn started_reaches(&self, count: usize) {
        loop {
            let notified = self.started_notify.notified();
            if self.started.load(Ordering::SeqCst) >= count {
                return;
            }
            notified.await;
        }
    }

    async fn dropped_reaches(&self, count: usize) {
        loop {
            let notified = self.dropped_notify.notified();
            if self.dropped.load(Ordering::SeqCst) >= count {
                return;
            }
            notified.await;
        }
    }

    fn server_streams(&self) -> usize {
        self.connection
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, Connection::open_streams)
    }
}

/// Counts a handler dropped before its end.
struct DropGuard(Arc<StreamProbe>, bool);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
            self.0.dropped_notify.notify_waiters();
        }
    }
}

#[derive(Default, Clone)]
struct StreamService {
    probe: Arc<StreamProbe>,
}

const STREAM_METHODS: &[&str] = &[
    "count",
    "forever",
    "sum",
    "echo",
    "fail_after",
    "close_after",
    "never",
    "take_two",
    "hold_input",
];

impl Protocol for StreamService {
    async fn process_message(&self, _: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "ping" => Ok(Reply::message("pong", packet.payload)),
            m if STREAM_METHODS.contains(&m) => Err(HandlerError::stream_required(m)),
            other => Err(HandlerError::unknown_method(other)),
        }
    }

    async fn process_stream(
        &self,
        ctx: Context,
        packet: Packet,
        mut io: StreamIo,
    ) -> Result<Value, HandlerError> {
        let probe = self.probe.clone();
        probe
            .connection
            .lock()
            .unwrap()
            .get_or_insert_with(|| ctx.connection().clone());
        probe.started.fetch_add(1, Ordering::SeqCst);
        probe.started_notify.notify_waiters();
        let mut guard = DropGuard(probe.clone(), true);
        let n = packet.payload["n"].as_u64().unwrap_or(0);
        let result = match packet.method.as_str() {
            "count" => {
                let mut sink = io.output().unwrap();
                for i in 1..=n {
                    sink.send(json!(i))
                        .await
                        .map_err(|e| HandlerError::failed(e.to_string()))?;
                    produced(&probe);
                }
                Ok(json!({"sent": n}))
            }
            "forever" => {
                let mut sink = io.output().unwrap();
                let mut i = 0u64;
                loop {
                    i += 1;
                    if sink
                        .send(json!({"i": i, "pad": "x".repeat(20)}))
                        .await
                        .is_err()
                    {
                        // The stream is over: the handler is dropped
                        // (which the probe counts), never returns.
                        std::future::pending::<()>().await;
                    }
                    produced(&probe);
                }
            }
            "sum" => {
                let mut input = io.input().unwrap();
                let mut total = 0;
                while let Some(item) = input.next().await {
                    total += item.as_i64().unwrap_or(0);
                }
                Ok(json!(total))
            }
            "echo" => {
                let (mut input, mut sink) = (io.input().unwrap(), io.output().unwrap());
                let mut count = 0;
                while let Some(item) = input.next().await {
                    if sink.send(item).await.is_err() {
                        break;
                    }
                    count += 1;
                }
                Ok(json!(count))
            }
            "fail_after" => {
                let mut sink = io.output().unwrap();
                for i in 1..=n {
                    let _ = sink.send(json!(i)).await;
                }
                Err(HandlerError::failed("failed on purpose").with_data(json!({"at": n})))
            }
            "close_after" => {
                let mut sink = io.output().unwrap();
                for i in 1..=n {
                    let _ = sink.send(json!(i)).await;
                }
                ctx.connection().close();
                std::future::pending().await
            }
            "never" => {
                let mut sink = io.output().unwrap();
                for i in 1..=n {
                    let _ = sink.send(json!(i)).await;
                }
                std::future::pending().await
            }
            "take_two" => {
                let mut input = io.input().unwrap();
                let first = input.next().await;
                let second = input.next().await;
                drop(input);
                Ok(json!([first, second]))
            }
            "hold_input" => {
                let input = io.input().unwrap();
                probe.release.notified().await;
                Ok(json!(input.last_seq()))
            }
            other => Err(HandlerError::not_a_stream(other)),
        };
        guard.1 = false;
        result
    }
}

fn produced(probe: &StreamProbe) {
    probe.produced.fetch_add(1, Ordering::SeqCst);
    probe.produced_notify.notify_waiters();
}

async fn serve(
    configure: impl FnOnce(stream_rpc::ConfigBuilder) -> stream_rpc::ConfigBuilder,
) -> (TestServer, Arc<StreamProbe>) {
    let service = StreamService::default();
    let probe = service.probe.clone();
    let key = new_key();
    let server = TestServer::start(service, configure(config(&key, 0)), &key).await;
    (server, probe)
}

async fn client_of(server: &TestServer) -> stream_rpc::Client {
    stream_rpc::Connector::new(config(&server.key, server.port).build().unwrap())
        .connect(())
        .await
        .unwrap()
}

/// A round trip on the connection: everything the server's read loop got
/// before it is handled.
async fn round_trip(client: &impl Caller) {
    let reply = client.call("ping", json!(1)).await.unwrap();
    assert_eq!(reply.method, "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_stream_gives_its_items_then_its_reply() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream("count", json!({"n": 100}), StreamOptions::new().window(8))
            .await
            .unwrap();
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item.unwrap().as_u64().unwrap());
        }
        assert_eq!(items, (1..=100).collect::<Vec<_>>());
        assert_eq!(stream.last_seq(), 100);
        let reply = stream.finish().await.unwrap();
        assert_eq!(reply.method, "count.reply");
        assert_eq!(reply.payload, json!({"sent": 100}));
        assert_eq!(client.connection().unwrap().open_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_stream_is_read_and_answered() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream(
                "sum",
                json!(null),
                StreamOptions::new().window(0).with_input(),
            )
            .await
            .unwrap();
        let mut input = stream.input().unwrap();
        assert!(stream.input().is_none(), "given once");
        for i in 1..=200 {
            input.send(json!(i)).await.unwrap();
        }
        input.finish().await.unwrap();
        let reply = stream.finish().await.unwrap();
        assert_eq!(reply.payload, json!(20_100));
        round_trip(&client).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opener_without_input_ends_the_input_of_a_handler_that_reads_it() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        // No `with_input`: the handler's input credit is answered with
        // `stream.end` of 0 items, so it sums nothing and answers.
        let stream = client
            .open_stream("sum", json!(null), StreamOptions::new())
            .await
            .unwrap();
        assert_eq!(stream.finish().await.unwrap().payload, json!(0));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_flows_at_once() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream(
                "echo",
                json!(null),
                StreamOptions::new().window(4).with_input(),
            )
            .await
            .unwrap();
        let mut input = stream.input().unwrap();
        for i in 0..50 {
            input.send(json!(format!("item {i}"))).await.unwrap();
            let back = stream.next().await.unwrap().unwrap();
            assert_eq!(back, json!(format!("item {i}")));
        }
        drop(input); // ends the input, as finish() does
        assert!(stream.next().await.is_none());
        assert_eq!(stream.finish().await.unwrap().payload, json!(50));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_its_producer_to_the_window() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream("forever", json!(null), StreamOptions::new().window(4))
            .await
            .unwrap();
        // The producer sends the window, then waits for credit.
        probe.produced_reaches(4).await;
        round_trip(&client).await;
        round_trip(&client).await;
        assert_eq!(probe.produced.load(Ordering::SeqCst), 4);
        // Taking one leaves 3 outstanding: more than half the window, no
        // credit yet.
        stream.next().await.unwrap().unwrap();
        round_trip(&client).await;
        assert_eq!(probe.produced.load(Ordering::SeqCst), 4);
        // The second makes half the window free: 2 more are granted (one
        // credit frame), and no more.
        stream.next().await.unwrap().unwrap();
        probe.produced_reaches(6).await;
        round_trip(&client).await;
        assert_eq!(probe.produced.load(Ordering::SeqCst), 6);
        assert_eq!(stream.last_seq(), 6);
        drop(stream);
        probe.dropped_reaches(1).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_sender_waits_for_credit_from_a_handler_that_does_not_read() {
    bounded(async {
        let (server, probe) =
            serve(|b| b.limits(stream_rpc::Limits::default().with_stream_window(8))).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream(
                "hold_input",
                json!(null),
                StreamOptions::new().window(0).with_input(),
            )
            .await
            .unwrap();
        let mut input = stream.input().unwrap();
        for i in 1..=8 {
            input.send(json!(i)).await.unwrap();
        }
        // The window is used up: the ninth waits (its future stays pending).
        round_trip(&client).await;
        assert!(input.send(json!(9)).now_or_never().is_none());
        probe.release.notify_waiters();
        let reply = stream.finish().await.unwrap();
        assert_eq!(reply.payload, json!(8));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_drops_the_acceptors_handler() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream("forever", json!(null), StreamOptions::new())
            .await
            .unwrap();
        stream.next().await.unwrap().unwrap();
        assert_eq!(probe.server_streams(), 1);
        drop(stream);
        probe.dropped_reaches(1).await;
        round_trip(&client).await;
        assert_eq!(probe.server_streams(), 0);
        assert_eq!(client.connection().unwrap().open_streams(), 0);
        // Frames still in flight for it are dropped quietly; the
        // connection goes on.
        round_trip(&client).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_that_drops_its_input_stops_the_sender_and_the_call_goes_on() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream(
                "take_two",
                json!(null),
                StreamOptions::new().window(0).with_input(),
            )
            .await
            .unwrap();
        let mut input = stream.input().unwrap();
        input.send(json!("a")).await.unwrap();
        input.send(json!("b")).await.unwrap();
        input.closed().await;
        let err = input.send(json!("c")).await.unwrap_err();
        assert!(matches!(err, StreamError::Cancelled), "{err}");
        let reply = stream.finish().await.unwrap();
        assert_eq!(reply.payload, json!(["a", "b"]));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_method_ends_the_stream_with_its_error_after_its_items() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream("fail_after", json!({"n": 3}), StreamOptions::new())
            .await
            .unwrap();
        for i in 1..=3 {
            assert_eq!(stream.next().await.unwrap().unwrap(), json!(i));
        }
        match stream.next().await.unwrap().unwrap_err() {
            StreamError::Call(stream_rpc::CallError::Remote { code, data, .. }) => {
                assert_eq!(code, ErrorCode::HandlerError);
                assert_eq!(data, Some(json!({"at": 3})));
            }
            other => panic!("{other:?}"),
        }
        assert!(stream.next().await.is_none());
        // Typed: the method's error decodes as `Failed`.
        #[derive(Debug, serde::Deserialize, PartialEq)]
        struct At {
            at: u64,
        }
        let raw = client
            .open_stream("fail_after", json!({"n": 1}), StreamOptions::new())
            .await
            .unwrap();
        let mut typed: ItemStream<u64, At> = ItemStream::new(raw, |error| match &error {
            stream_rpc::CallError::Remote {
                data: Some(data), ..
            } => serde_json::from_value(data.clone()).map_err(|_| error),
            _ => Err(error),
        });
        assert_eq!(typed.next().await.unwrap().unwrap(), 1);
        match typed.next().await.unwrap().unwrap_err() {
            StreamError::Failed(at) => assert_eq!(at, At { at: 1 }),
            other => panic!("{other:?}"),
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closing_ends_the_stream_disconnected_with_the_last_seq() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream("close_after", json!({"n": 3}), StreamOptions::new())
            .await
            .unwrap();
        for i in 1..=3 {
            assert_eq!(stream.next().await.unwrap().unwrap(), json!(i));
        }
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            matches!(err, StreamError::Disconnected { last_seq: 3 }),
            "{err:?}"
        );
        assert_eq!(err.last_seq(), Some(3));
        assert!(stream.next().await.is_none());
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_closing_ends_every_stream_on_it() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let mut stream = client
                .open_stream("forever", json!(null), StreamOptions::new().window(2))
                .await
                .unwrap();
            stream.next().await.unwrap().unwrap();
            streams.push(stream);
        }
        client.close();
        for mut stream in streams {
            // Every item received is given out before the end, which
            // names the last one.
            let mut taken = 1;
            let err = loop {
                match stream.next().await.expect("an end") {
                    Ok(_) => taken += 1,
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(err, StreamError::Disconnected { last_seq } if last_seq == taken),
                "{err:?} after {taken}"
            );
            assert!(stream.next().await.is_none());
        }
        // The server dropped the three handlers.
        probe.dropped_reaches(3).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stream_deadline_ends_it_and_drops_the_handler() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let limit = Duration::from_millis(100);
        let mut stream = client
            .open_stream(
                "never",
                json!({"n": 2}),
                StreamOptions::new().timeout(limit),
            )
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!(1));
        assert_eq!(stream.next().await.unwrap().unwrap(), json!(2));
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            matches!(err, StreamError::Timeout { after } if after == limit),
            "{err:?}"
        );
        probe.dropped_reaches(1).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_item_deadline_counts_the_wait_for_an_item_not_the_consumers_own_time() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let limit = Duration::from_millis(200);
        // `echo` sends an item back for each one it gets: the producer is
        // as quick as the input.
        let mut stream = client
            .open_stream(
                "echo",
                json!(null),
                StreamOptions::new().item_timeout(limit).with_input(),
            )
            .await
            .unwrap();
        let mut input = stream.input().unwrap();
        input.send(json!("a")).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!("a"));
        // The consumer works on its item for longer than the limit (its
        // own time, which is not the producer going quiet)...
        tokio::time::sleep(limit + limit / 2).await;
        // ...then asks for the next, which comes at once.
        input.send(json!("b")).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!("b"));
        input.finish().await.unwrap();
        assert!(stream.next().await.is_none());
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_item_deadline_ends_a_stream_that_goes_quiet() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let limit = Duration::from_millis(100);
        let mut stream = client
            .open_stream(
                "never",
                json!({"n": 2}),
                StreamOptions::new().item_timeout(limit),
            )
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!(1));
        assert_eq!(stream.next().await.unwrap().unwrap(), json!(2));
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            matches!(err, StreamError::Timeout { after } if after == limit),
            "{err:?}"
        );
        // It cancelled: the handler is dropped.
        probe.dropped_reaches(1).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_producer_from_a_streaming_value() {
    bounded(async {
        struct Typed;
        impl Protocol for Typed {
            async fn process_message(&self, _: Context, p: Packet) -> Result<Reply, HandlerError> {
                Err(HandlerError::unknown_method(&p.method))
            }
            async fn process_stream(
                &self,
                _: Context,
                _: Packet,
                mut io: StreamIo,
            ) -> Result<Value, HandlerError> {
                let streaming: Streaming<String, HandlerError> =
                    Streaming::from_fn(|mut sink| async move {
                        for word in ["a", "b", "c"] {
                            if sink.send(word.to_owned()).await.is_err() {
                                return Ok(());
                            }
                        }
                        Err(HandlerError::failed("done with an error"))
                    });
                stream_rpc::__stream::serve_output(streaming, &mut io, |e| e).await
            }
        }
        let key = new_key();
        let server = TestServer::start(Typed, config(&key, 0), &key).await;
        let client = client_of(&server).await;
        let raw = client
            .open_stream("words", json!(null), StreamOptions::new())
            .await
            .unwrap();
        let mut words: ItemStream<String> = ItemStream::new(raw, Err);
        for word in ["a", "b", "c"] {
            assert_eq!(words.next().await.unwrap().unwrap(), word);
        }
        let err = words.next().await.unwrap().unwrap_err();
        assert!(
            matches!(&err, StreamError::Call(e) if e.code() == Some(ErrorCode::HandlerError)),
            "{err:?}"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_beyond_max_streams_are_refused_busy() {
    bounded(async {
        let (server, probe) =
            serve(|b| b.limits(stream_rpc::Limits::default().with_max_streams(2))).await;
        let client = client_of(&server).await;
        let mut open = Vec::new();
        for _ in 0..2 {
            let mut stream = client
                .open_stream("forever", json!(null), StreamOptions::new().window(1))
                .await
                .unwrap();
            stream.next().await.unwrap().unwrap();
            open.push(stream);
        }
        let mut third = client
            .open_stream("forever", json!(null), StreamOptions::new())
            .await
            .unwrap();
        let err = third.next().await.unwrap().unwrap_err();
        assert!(
            matches!(&err, StreamError::Call(e) if e.code() == Some(ErrorCode::Busy)),
            "{err:?}"
        );
        assert!(!err_may_have_run(err));
        // One ends: a new one opens.
        open.pop();
        probe.dropped_reaches(1).await;
        let mut fourth = client
            .open_stream("forever", json!(null), StreamOptions::new())
            .await
            .unwrap();
        fourth.next().await.unwrap().unwrap();
        server.stop().await;
    })
    .await;
}

fn err_may_have_run(err: StreamError) -> bool {
    match err {
        StreamError::Call(e) => e.may_have_run(),
        _ => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_to_a_plain_method_is_refused_not_a_stream() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let client = client_of(&server).await;
        let mut stream = client
            .open_stream("ping", json!(null), StreamOptions::new())
            .await
            .unwrap();
        let err = stream.next().await.unwrap().unwrap_err();
        match &err {
            StreamError::Call(e) => {
                assert_eq!(e.code(), Some(ErrorCode::NotAStream));
                assert!(!e.may_have_run());
            }
            other => panic!("{other:?}"),
        }
        // A plain call to a stream method: stream_required.
        let err = client.call("count", json!({"n": 1})).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::StreamRequired));
        assert!(!err.may_have_run());
        server.stop().await;
    })
    .await;
}

// ---- bad input, as raw crafted packets ----

/// Opens a stream from a raw peer; returns the open's id.
async fn raw_open(raw: &mut RawPeer, method: &str, credit: u64) -> u64 {
    let mut open = raw.packet(method, json!(null));
    open.stream = Some(StreamHeader::open(credit));
    raw.send(&open).await
}

/// Sends a frame of the raw peer's stream `id`.
async fn raw_frame(raw: &mut RawPeer, id: u64, method: &str, header: StreamHeader) {
    let stream = stream_rpc::ReplyTo { peer: raw.id, id };
    let mut packet = raw.packet(method, json!(null));
    let mut full = StreamHeader::frame(stream);
    full.seq = header.seq;
    full.credit = header.credit;
    packet.stream = Some(full);
    raw.send(&packet).await;
}

fn seq(n: u64) -> StreamHeader {
    StreamHeader::default().with_seq(n)
}

/// Reads packets until the answer to `id` (stream frames before it are
/// skipped); checks it is an `invalid_stream` error.
async fn expect_invalid_stream(raw: &mut RawPeer, id: u64) -> String {
    loop {
        let packet = raw.recv().await;
        if packet.stream.is_some() {
            continue;
        }
        assert_eq!(packet.reply_to.map(|to| to.id), Some(id), "{packet}");
        return assert_error(&packet, ErrorCode::InvalidStream).message;
    }
}

/// Reads the acceptor's first credit frame for the raw peer's stream.
async fn expect_credit(raw: &mut RawPeer) -> u64 {
    let packet = raw.recv().await;
    assert_eq!(packet.method, "stream.credit", "{packet}");
    packet.stream.unwrap().credit.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_beyond_credit_ends_the_stream() {
    bounded(async {
        let (server, probe) =
            serve(|b| b.limits(stream_rpc::Limits::default().with_stream_window(2))).await;
        let mut raw = server.raw().await;
        let id = raw_open(&mut raw, "hold_input", 0).await;
        assert_eq!(expect_credit(&mut raw).await, 2);
        for n in 1..=3 {
            raw_frame(&mut raw, id, "stream.item", seq(n)).await;
        }
        let message = expect_invalid_stream(&mut raw, id).await;
        assert!(message.contains("beyond the credit"), "{message}");
        probe.dropped_reaches(1).await;
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_to_a_handler_that_takes_no_input_ends_the_stream() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let mut raw = server.raw().await;
        let id = raw_open(&mut raw, "never", 0).await;
        probe.started_reaches(1).await;
        raw_frame(&mut raw, id, "stream.item", seq(1)).await;
        expect_invalid_stream(&mut raw, id).await;
        probe.dropped_reaches(1).await;
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_after_the_end_ends_the_stream() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let mut raw = server.raw().await;
        let id = raw_open(&mut raw, "hold_input", 0).await;
        expect_credit(&mut raw).await;
        raw_frame(&mut raw, id, "stream.item", seq(1)).await;
        raw_frame(&mut raw, id, "stream.end", seq(1)).await;
        raw_frame(&mut raw, id, "stream.item", seq(2)).await;
        let message = expect_invalid_stream(&mut raw, id).await;
        assert!(message.contains("after stream.end"), "{message}");
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_out_of_order_ends_the_stream() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let mut raw = server.raw().await;
        let id = raw_open(&mut raw, "hold_input", 0).await;
        expect_credit(&mut raw).await;
        raw_frame(&mut raw, id, "stream.item", seq(2)).await;
        let message = expect_invalid_stream(&mut raw, id).await;
        assert!(message.contains("out of order"), "{message}");
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_beyond_the_limit_ends_the_stream() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let mut raw = server.raw().await;
        // In the open:
        let id = raw_open(&mut raw, "never", 65_537).await;
        let message = expect_invalid_stream(&mut raw, id).await;
        assert!(message.contains("65536"), "{message}");
        // In a credit frame:
        let id = raw_open(&mut raw, "never", 65_536).await;
        probe.started_reaches(1).await;
        raw_frame(
            &mut raw,
            id,
            "stream.credit",
            StreamHeader::default().with_credit(1),
        )
        .await;
        let message = expect_invalid_stream(&mut raw, id).await;
        assert!(message.contains("credit beyond the limit"), "{message}");
        // A credit of 0:
        let id = raw_open(&mut raw, "never", 1).await;
        probe.started_reaches(2).await;
        raw_frame(
            &mut raw,
            id,
            "stream.credit",
            StreamHeader::default().with_credit(0),
        )
        .await;
        expect_invalid_stream(&mut raw, id).await;
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_for_unknown_streams_are_dropped_unanswered() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let mut raw = server.raw().await;
        for method in [
            "stream.item",
            "stream.credit",
            "stream.end",
            "stream.cancel",
        ] {
            raw_frame(&mut raw, 999, method, seq(1).with_credit(1)).await;
        }
        // Of another peer's stream too.
        let mut packet = raw.packet("stream.item", json!(1));
        packet.stream = Some(
            StreamHeader::frame(stream_rpc::ReplyTo {
                peer: uuid::Uuid::new_v4(),
                id: 1,
            })
            .with_seq(1),
        );
        raw.send(&packet).await;
        // A frame's method without the stream it belongs to (no `stream`
        // field, or one naming no stream) is no open and no call: dropped,
        // never answered (PROTOCOL.md §10).
        for method in [
            "stream.item",
            "stream.credit",
            "stream.end",
            "stream.cancel",
        ] {
            let bare = raw.packet(method, json!(1));
            raw.send(&bare).await;
            let mut nameless = raw.packet(method, json!(1));
            nameless.stream = Some(StreamHeader::open(1));
            raw.send(&nameless).await;
        }
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_whose_name_is_taken_or_is_this_sides_own_is_refused() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let mut raw = server.raw().await;
        // The same open twice (sealed again, so the replay check passes
        // it): the second is refused, the first stream goes on.
        let mut open = raw.packet("never", json!(null));
        open.stream = Some(StreamHeader::open(0));
        let id = raw.send(&open).await;
        probe.started_reaches(1).await;
        raw.send(&open).await;
        let message = expect_invalid_stream(&mut raw, id).await;
        assert!(message.contains("open already"), "{message}");
        assert_eq!(probe.server_streams(), 1);
        // An open that claims the server's own id (read from its pong)
        // names a stream only the server may open: refused, not counted.
        let ping = raw.request("ping", json!(null)).await;
        let server_id = raw.recv_reply(ping).await.peer;
        let mut forged = raw.packet("never", json!(null));
        forged.peer = server_id;
        forged.stream = Some(StreamHeader::open(0));
        let forged_id = raw.send(&forged).await;
        loop {
            let packet = raw.recv().await;
            if packet.reply_to.map(|to| (to.peer, to.id)) == Some((server_id, forged_id)) {
                assert_error(&packet, ErrorCode::InvalidStream);
                break;
            }
        }
        assert_eq!(probe.server_streams(), 1);
        // The first stream still ends as it should, and nothing is left.
        raw_frame(&mut raw, id, "stream.cancel", StreamHeader::default()).await;
        probe.dropped_reaches(1).await;
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_the_opener_drops_the_handler_and_nothing_more_is_sent() {
    bounded(async {
        let (server, probe) = serve(|b| b).await;
        let mut raw = server.raw().await;
        let id = raw_open(&mut raw, "never", 0).await;
        probe.started_reaches(1).await;
        raw_frame(&mut raw, id, "stream.cancel", StreamHeader::default()).await;
        probe.dropped_reaches(1).await;
        // No error, no reply: the pong comes next.
        ping_is_next(&mut raw).await;
        assert_eq!(probe.server_streams(), 0);
        server.stop().await;
    })
    .await;
}

/// The next stream packet the raw acceptor reads (the open).
async fn next_open(raw: &mut RawPeer) -> Packet {
    loop {
        let packet = raw.recv().await;
        if packet.stream.is_some() {
            return packet;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_that_breaks_a_rule_is_cancelled_with_the_code() {
    bounded(async {
        let (client, mut raw) = client_and_raw_server().await;
        let mut stream = client
            .open_stream("watch", json!(null), StreamOptions::new().window(1))
            .await
            .unwrap();
        let open = next_open(&mut raw).await;
        assert_eq!(open.stream, Some(StreamHeader::open(1)));
        let key_of_stream = open.reply_address();
        for n in 1..=2 {
            let mut item = raw.packet("stream.item", json!(n));
            item.stream = Some(StreamHeader::frame(key_of_stream).with_seq(n));
            raw.send(&item).await;
        }
        let cancel = raw.recv().await;
        assert_eq!(cancel.method, "stream.cancel", "{cancel}");
        assert_eq!(cancel.payload["code"], json!("invalid_stream"));
        assert_eq!(stream.next().await.unwrap().unwrap(), json!(1));
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                &err,
                StreamError::Call(stream_rpc::CallError::InvalidReply { .. })
            ),
            "{err:?}"
        );
        assert_eq!(client.connection().unwrap().open_streams(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_credit_to_an_opener_without_input_is_ignored() {
    bounded(async {
        let (client, mut raw) = client_and_raw_server().await;
        let mut stream = client
            .open_stream("watch", json!(null), StreamOptions::new())
            .await
            .unwrap();
        let key_of_stream = next_open(&mut raw).await.reply_address();
        let mut credit = raw.packet("stream.credit", json!(null));
        credit.stream = Some(StreamHeader::frame(key_of_stream).with_credit(32));
        raw.send(&credit).await;
        let mut item = raw.packet("stream.item", json!("first"));
        item.stream = Some(StreamHeader::frame(key_of_stream).with_seq(1));
        raw.send(&item).await;
        assert_eq!(stream.next().await.unwrap().unwrap(), json!("first"));
        // The end: the reply to the open.
        let mut reply = raw.packet("watch.reply", json!({"done": true}));
        reply.reply_to = Some(key_of_stream);
        raw.send(&reply).await;
        assert!(stream.next().await.is_none());
        assert_eq!(
            stream.finish().await.unwrap().payload,
            json!({"done": true})
        );
    })
    .await;
}

/// Serves `relay`: opens the stream `count` back to the peer that called
/// (through the handler's context) and answers with the sum of its items.
struct Relay;

impl Protocol for Relay {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        if packet.method != "relay" {
            return Err(HandlerError::unknown_method(&packet.method));
        }
        let mut stream = ctx
            .open_stream("count", packet.payload, StreamOptions::new().window(2))
            .await
            .map_err(|e| HandlerError::failed(e.to_string()))?;
        let mut sum = 0;
        while let Some(item) = stream.next().await {
            sum += item
                .map_err(|e| HandlerError::failed(e.to_string()))?
                .as_u64()
                .unwrap_or(0);
        }
        let reply = stream
            .finish()
            .await
            .map_err(|e| HandlerError::failed(e.to_string()))?;
        Ok(Reply::message(
            "relayed",
            json!({"sum": sum, "reply": reply.payload}),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_opens_streams_a_handler_through_its_context() {
    bounded(async {
        let key = new_key();
        let server = TestServer::start(Relay, config(&key, 0), &key).await;
        // The client serves `count`; the server's handler opens it.
        let client = stream_rpc::Connector::new(config(&key, server.port).build().unwrap())
            .connect(StreamService::default())
            .await
            .unwrap();
        let reply = client.call("relay", json!({"n": 10})).await.unwrap();
        assert_eq!(reply.payload, json!({"sum": 55, "reply": {"sent": 10}}));
        server.stop().await;
    })
    .await;
}

impl stream_rpc::Service for StreamService {
    fn methods(&self) -> &[&'static str] {
        STREAM_METHODS
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_route_streams_by_method() {
    bounded(async {
        struct Plain;
        impl Protocol for Plain {
            async fn process_message(&self, _: Context, p: Packet) -> Result<Reply, HandlerError> {
                Ok(Reply::message("plain.reply", p.payload))
            }
        }
        impl stream_rpc::Service for Plain {
            fn methods(&self) -> &[&'static str] {
                &["plain"]
            }
        }
        let services = stream_rpc::Services::new()
            .add(Plain)
            .and_then(|s| s.add(StreamService::default()))
            .unwrap();
        let key = new_key();
        let server = TestServer::start(services, config(&key, 0), &key).await;
        let client = client_of(&server).await;
        let stream = client
            .open_stream("count", json!({"n": 3}), StreamOptions::new())
            .await
            .unwrap();
        let items: Vec<Value> = stream.map(Result::unwrap).collect().await;
        assert_eq!(items, [json!(1), json!(2), json!(3)]);
        for (method, code) in [
            ("plain", ErrorCode::NotAStream),
            ("nope", ErrorCode::UnknownMethod),
        ] {
            let mut stream = client
                .open_stream(method, json!(null), StreamOptions::new())
                .await
                .unwrap();
            let err = stream.next().await.unwrap().unwrap_err();
            assert!(
                matches!(&err, StreamError::Call(e) if e.code() == Some(code)),
                "{method}: {err:?}"
            );
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_opens_on_its_current_connection() {
    bounded(async {
        let (server, _probe) = serve(|b| b).await;
        let reconnecting =
            stream_rpc::Connector::new(config(&server.key, server.port).build().unwrap())
                .connect_reconnecting((), stream_rpc::Reconnect::default())
                .unwrap();
        let stream = reconnecting
            .open_stream("count", json!({"n": 4}), StreamOptions::new())
            .await
            .unwrap();
        let typed: ItemStream<u64> = ItemStream::new(stream, Err);
        let items: Vec<u64> = typed.map(Result::unwrap).collect().await;
        assert_eq!(items, [1, 2, 3, 4]);
        reconnecting.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_keeps_its_connection_from_idling_out() {
    bounded(async {
        let idle = Duration::from_millis(200);
        let timeouts = stream_rpc::Timeouts::default().with_idle(Some(idle));
        let (server, probe) = serve(|b| b.timeouts(timeouts.clone())).await;
        let client = stream_rpc::Connector::new(
            config(&server.key, server.port)
                .timeouts(timeouts)
                .build()
                .unwrap(),
        )
        .connect(())
        .await
        .unwrap();
        let mut stream = client
            .open_stream("never", json!({"n": 1}), StreamOptions::new())
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), json!(1));
        // Five idle limits without a frame: the stream is still open on
        // both sides (no Disconnected end).
        let quiet = tokio::time::timeout(idle * 5, stream.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        assert_eq!(probe.server_streams(), 1);
        drop(stream);
        probe.dropped_reaches(1).await;
        server.stop().await;
    })
    .await;
}
