//! `watch_stats` of the example queue server over loopback: the stream
//! sees the queue change, its payload is checked, and a cancelled watch
//! frees its stream on the server (with one stream allowed per connection,
//! a later watch is served).

mod common;

use std::time::Duration;

use common::{TestServer, bounded, config, new_key};
use futures_util::StreamExt;
use serde_json::{Value, json};
use stream_rpc::{CallError, Caller, Connection, ErrorCode, StreamError, StreamOptions};
use stream_rpc_example_queue::QueueServer;

/// A queue server in memory allowing `max_streams` streams per connection,
/// and a connection to it.
async fn serve(max_streams: usize) -> (TestServer, stream_rpc::Client, Connection) {
    let key = new_key();
    let mut limits = stream_rpc::Limits::default();
    limits.max_streams = max_streams;
    let server =
        TestServer::start(QueueServer::default(), config(&key, 0).limits(limits), &key).await;
    let client = stream_rpc::Connector::new(config(&key, server.port).build().unwrap())
        .connect(())
        .await
        .unwrap();
    let connection = client.connection().expect("connected");
    (server, client, connection)
}

/// The next item of a watch, which must be one.
async fn next(watch: &mut stream_rpc::RawStream) -> Value {
    watch
        .next()
        .await
        .expect("an item, not the end")
        .expect("an item, not an error")
}

/// The code of the error a stream ended with, once opened with `payload`.
async fn refusal(connection: &Connection, payload: Value) -> (ErrorCode, String) {
    let opened = connection
        .open_stream("watch_stats", payload, StreamOptions::new())
        .await;
    let error = match opened {
        Err(error) => error,
        Ok(mut watch) => match watch.next().await {
            Some(Err(StreamError::Call(error))) => error,
            other => panic!("expected a refusal, got {other:?}"),
        },
    };
    match error {
        CallError::Remote { code, message, .. } => (code, message),
        other => panic!("expected an error packet, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_a_put_task_and_its_cancel_frees_the_stream() {
    bounded(async {
        let (server, _client, connection) = serve(1).await;
        let mut watch = connection
            .open_stream("watch_stats", json!({"every_ms": 10}), StreamOptions::new())
            .await
            .unwrap();
        let first = next(&mut watch).await;
        assert_eq!(first["queued"], 0, "{first}");
        for field in [
            "leased",
            "done",
            "dead",
            "duplicates",
            "names_taken",
            "full",
            "redeliveries",
        ] {
            assert!(first[field].is_u64(), "{field} in {first}");
        }
        let task = connection.packet("parse_article", json!({"article_id": 1}));
        let put = connection
            .call("put_in_queue", serde_json::to_value(&task).unwrap())
            .await
            .unwrap();
        assert_eq!(put.payload, json!({"queued": true}));
        // Items go on coming; one of them (bounded by the test's time)
        // counts the task.
        loop {
            let stats = next(&mut watch).await;
            if stats["queued"] == 1 {
                break;
            }
            assert_eq!(stats["queued"], 0, "{stats}");
        }
        watch.cancel();
        // One stream per connection: another watch is served once the
        // cancelled one is freed on the server (until then it is `busy`).
        let mut again = loop {
            let mut watch = connection
                .open_stream("watch_stats", json!({"every_ms": 10}), StreamOptions::new())
                .await
                .unwrap();
            match watch.next().await {
                Some(Ok(stats)) => {
                    assert_eq!(stats["queued"], 1, "{stats}");
                    break watch;
                }
                Some(Err(StreamError::Call(CallError::Remote {
                    code: ErrorCode::Busy,
                    ..
                }))) => {
                    tokio::task::yield_now().await;
                }
                other => panic!("expected an item or busy, got {other:?}"),
            }
        };
        assert_eq!(next(&mut again).await["queued"], 1);
        drop(again);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_payload_is_checked_and_null_takes_the_default() {
    bounded(async {
        let (server, _client, connection) = serve(8).await;
        for payload in [
            json!({"every_ms": 9}),
            json!({"every_ms": 0}),
            json!({"every_ms": 86_400_001u64}),
        ] {
            let (code, message) = refusal(&connection, payload.clone()).await;
            assert_eq!(code, ErrorCode::InvalidPayload, "{payload}");
            assert!(message.contains("every_ms"), "{message}");
        }
        for payload in [
            json!({"every": 100}),
            json!("fast"),
            json!({"every_ms": "10"}),
        ] {
            let (code, _) = refusal(&connection, payload.clone()).await;
            assert_eq!(code, ErrorCode::InvalidPayload, "{payload}");
        }
        // null, {} and the minimum are served; the first item comes at
        // once (not after the default second).
        for payload in [Value::Null, json!({}), json!({"every_ms": 10})] {
            let mut watch = connection
                .open_stream("watch_stats", payload.clone(), StreamOptions::new())
                .await
                .unwrap();
            let first = tokio::time::timeout(Duration::from_millis(900), next(&mut watch))
                .await
                .unwrap_or_else(|_| panic!("no first item at once for {payload}"));
            assert_eq!(first["queued"], 0);
        }
        // A plain call to the stream method is refused as such.
        let error = connection
            .call("watch_stats", Value::Null)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, CallError::Remote { code, .. } if *code == ErrorCode::StreamRequired),
            "{error:?}"
        );
        server.stop().await;
    })
    .await;
}
