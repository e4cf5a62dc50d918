//! Stream methods of `#[stream_rpc::service]` over real loopback
//! connections, in both forms: a method that returns a stream, one that
//! takes one, one that does both; typed items, typed errors that end a
//! stream, cancellation by dropping the client's stream, the client's
//! limits, input items that do not decode, and the refusals between plain
//! calls and streams.

mod common;

use std::time::Duration;

use common::{TestServer, bounded, config, new_key};
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use stream_rpc::{
    CallError, Caller, Connector, Context, ErrorCode, HandlerError, IncomingItems, StreamError,
    StreamOptions, Streaming,
};
use tokio::sync::mpsc;

/// The method's own error, typed on both sides.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum CountError {
    /// Asked to count past the limit.
    TooFar { limit: u64 },
}

/// The most `count` goes to.
const LIMIT: u64 = 100;

/// A service in the trait form, with every kind of stream method.
#[stream_rpc::service]
pub trait Counter {
    /// Output: `from..=to`, failing with `TooFar` at the limit.
    async fn count(&self, from: u64, to: u64) -> Streaming<u64, CountError>;

    /// Output that may fail before its first item.
    async fn checked(&self, to: u64) -> Result<Streaming<u64, CountError>, CountError>;

    /// Input: the sum, or the typed error for a value past the limit.
    async fn sum(&self, values: IncomingItems<u64>) -> Result<u64, CountError>;

    /// Input whose undecodable items fail the call with their error.
    async fn total(&self, values: IncomingItems<u64>) -> Result<u64, HandlerError>;

    /// Both: each value doubled, as it arrives.
    async fn double(&self, ctx: Context, values: IncomingItems<u64>) -> Streaming<u64>;

    /// Output that never ends by itself; its producer reports its drop.
    async fn forever(&self) -> Streaming<u64>;

    /// One item, then nothing: the client's item limit ends it.
    #[stream_rpc(item_timeout = "200ms")]
    async fn stall(&self) -> Streaming<u64>;

    /// Items every 50 ms: the client's whole-call limit ends it.
    #[stream_rpc(timeout = "300ms")]
    async fn slow(&self) -> Streaming<u64>;

    /// A plain method beside them.
    async fn ping(&self) -> u32;

    /// A plain method that never answers, with a limit of its own.
    #[stream_rpc(timeout = "150ms")]
    async fn hang(&self) -> u32;
}

/// Reports the drop of a producer (its future dropped: cancelled).
struct DropGuard(mpsc::UnboundedSender<&'static str>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.0.send("producer dropped");
    }
}

struct Numbers {
    dropped: mpsc::UnboundedSender<&'static str>,
}

impl Counter for Numbers {
    async fn count(&self, from: u64, to: u64) -> Streaming<u64, CountError> {
        Streaming::new(stream::iter(from..=to).map(|n| {
            if n > LIMIT {
                Err(CountError::TooFar { limit: LIMIT })
            } else {
                Ok(n)
            }
        }))
    }

    async fn checked(&self, to: u64) -> Result<Streaming<u64, CountError>, CountError> {
        if to > LIMIT {
            return Err(CountError::TooFar { limit: LIMIT });
        }
        Ok(Streaming::from_items(stream::iter(1..=to)))
    }

    async fn sum(&self, mut values: IncomingItems<u64>) -> Result<u64, CountError> {
        let mut sum = 0;
        while let Some(value) = values.next().await {
            let value = value.map_err(|_| CountError::TooFar { limit: 0 })?;
            if value > LIMIT {
                return Err(CountError::TooFar { limit: LIMIT });
            }
            sum += value;
        }
        Ok(sum)
    }

    async fn total(&self, mut values: IncomingItems<u64>) -> Result<u64, HandlerError> {
        let mut total = 0;
        while let Some(value) = values.next().await {
            total += value?;
        }
        Ok(total)
    }

    async fn double(&self, _ctx: Context, values: IncomingItems<u64>) -> Streaming<u64> {
        Streaming::from_items(values.filter_map(|value| async move { value.ok().map(|v| v * 2) }))
    }

    async fn forever(&self) -> Streaming<u64> {
        let dropped = self.dropped.clone();
        Streaming::from_fn(move |mut sink| async move {
            let _guard = DropGuard(dropped);
            for n in 1.. {
                if sink.send(n).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }

    async fn stall(&self) -> Streaming<u64> {
        let dropped = self.dropped.clone();
        Streaming::from_fn(move |mut sink| async move {
            let _guard = DropGuard(dropped);
            let _ = sink.send(1).await;
            std::future::pending::<()>().await;
            Ok(())
        })
    }

    async fn slow(&self) -> Streaming<u64> {
        Streaming::from_fn(move |mut sink| async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            for n in 1.. {
                ticks.tick().await;
                if sink.send(n).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }

    async fn ping(&self) -> u32 {
        7
    }

    async fn hang(&self) -> u32 {
        std::future::pending().await
    }
}

async fn counter_server() -> (TestServer, mpsc::UnboundedReceiver<&'static str>) {
    let (dropped, drops) = mpsc::unbounded_channel();
    let key = new_key();
    let server = TestServer::start(
        CounterServer::new(Numbers { dropped }),
        config(&key, 0),
        &key,
    )
    .await;
    (server, drops)
}

async fn connect(server: &TestServer) -> stream_rpc::Client {
    Connector::new(config(&server.key, server.port).build().unwrap())
        .connect(())
        .await
        .unwrap()
}

/// Everything a stream yields, until its end.
async fn all<T, E>(
    items: impl futures_util::Stream<Item = Result<T, StreamError<E>>>,
) -> (Vec<T>, Option<StreamError<E>>) {
    let mut items = std::pin::pin!(items);
    let mut got = Vec::new();
    while let Some(item) = items.next().await {
        match item {
            Ok(item) => got.push(item),
            Err(end) => return (got, Some(end)),
        }
    }
    (got, None)
}

#[tokio::test]
async fn a_method_returns_a_stream_of_typed_items() {
    bounded(async {
        let (server, _) = counter_server().await;
        let client = connect(&server).await;
        let counter = CounterClient::new(&client);
        let (items, end) = all(counter.count(3, 7).await.unwrap()).await;
        assert_eq!(items, [3, 4, 5, 6, 7]);
        assert!(end.is_none(), "{end:?}");
        // Many more items than the window: credit flows as they are taken.
        let (items, end) = all(counter.count(1, LIMIT).await.unwrap()).await;
        assert_eq!(items, (1..=LIMIT).collect::<Vec<_>>());
        assert!(end.is_none());
        // A plain method of the same service still answers.
        assert_eq!(counter.ping().await.unwrap(), 7);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_typed_error_ends_a_stream_as_failed() {
    bounded(async {
        let (server, _) = counter_server().await;
        let client = connect(&server).await;
        let counter = CounterClient::new(&client);
        let (items, end) = all(counter.count(LIMIT - 1, LIMIT + 5).await.unwrap()).await;
        assert_eq!(items, [LIMIT - 1, LIMIT]);
        match end {
            Some(StreamError::Failed(CountError::TooFar { limit })) => assert_eq!(limit, LIMIT),
            other => panic!("expected Failed(TooFar), got {other:?}"),
        }
        // Failing before the first item: the same typed end, and no item.
        let (items, end) = all(counter.checked(LIMIT + 1).await.unwrap()).await;
        assert!(items.is_empty());
        assert!(
            matches!(end, Some(StreamError::Failed(CountError::TooFar { .. }))),
            "{end:?}"
        );
        let (items, end) = all(counter.checked(3).await.unwrap()).await;
        assert_eq!((items, end.is_none()), (vec![1, 2, 3], true));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_method_takes_a_stream_and_answers_once() {
    bounded(async {
        let (server, _) = counter_server().await;
        let client = connect(&server).await;
        let counter = CounterClient::new(&client);
        // More items than the window: the client waits for credit.
        let sum = counter.sum(stream::iter(1..=LIMIT)).await.unwrap();
        assert_eq!(sum, Ok(LIMIT * (LIMIT + 1) / 2));
        assert_eq!(counter.sum(stream::empty()).await.unwrap(), Ok(0));
        // The method's own error, typed, as for a call.
        let error = counter.sum(stream::iter([1, LIMIT + 1, 2])).await.unwrap();
        assert_eq!(error, Err(CountError::TooFar { limit: LIMIT }));
        // An error that is not the method's own is the call's.
        match counter.total(stream::iter([1, 2])).await {
            Ok(Ok(3)) => {}
            other => panic!("expected 3, got {other:?}"),
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_method_takes_a_stream_and_returns_one() {
    bounded(async {
        let (server, _) = counter_server().await;
        let client = connect(&server).await;
        let counter = CounterClient::new(&client);
        let (items, end) = all(counter.double(stream::iter(1..=LIMIT)).await.unwrap()).await;
        assert_eq!(items, (1..=LIMIT).map(|n| n * 2).collect::<Vec<_>>());
        assert!(end.is_none(), "{end:?}");
        // Item by item: each doubled item comes back before the next is sent.
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        let mut doubled = counter.double(tokio_stream_of(rx)).await.unwrap();
        for n in [5, 8, 13] {
            tx.send(n).unwrap();
            assert_eq!(doubled.next().await.unwrap().unwrap(), n * 2);
        }
        drop(tx);
        assert!(doubled.next().await.is_none());
        server.stop().await;
    })
    .await;
}

/// An unbounded receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[tokio::test]
async fn dropping_the_clients_stream_drops_the_servers_producer() {
    bounded(async {
        let (server, mut drops) = counter_server().await;
        let client = connect(&server).await;
        let counter = CounterClient::new(&client);
        let mut numbers = counter.forever().await.unwrap();
        for n in 1..=3 {
            assert_eq!(numbers.next().await.unwrap().unwrap(), n);
        }
        assert!(
            drops.try_recv().is_err(),
            "dropped before the client let go"
        );
        drop(numbers);
        assert_eq!(drops.recv().await, Some("producer dropped"));
        // The connection goes on.
        assert_eq!(counter.ping().await.unwrap(), 7);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_methods_limits_end_the_clients_stream() {
    bounded(async {
        let (server, mut drops) = counter_server().await;
        let client = connect(&server).await;
        let counter = CounterClient::new(&client);
        // `item_timeout = "200ms"`: one item, then the limit between items.
        let (items, end) = all(counter.stall().await.unwrap()).await;
        assert_eq!(items, [1]);
        match end {
            Some(StreamError::Timeout { after }) => assert_eq!(after, Duration::from_millis(200)),
            other => panic!("expected Timeout, got {other:?}"),
        }
        // The client cancelled: the server's producer is dropped.
        assert_eq!(drops.recv().await, Some("producer dropped"));
        // `timeout = "300ms"`: items flow, then the whole call's limit.
        let (items, end) = all(counter.slow().await.unwrap()).await;
        assert!(!items.is_empty() && items.len() < 10, "{items:?}");
        assert!(matches!(end, Some(StreamError::Timeout { .. })), "{end:?}");
        // The client's own limit wins over the method's.
        let (_, end) = all(counter
            .clone()
            .with_timeout(Duration::from_millis(120))
            .slow()
            .await
            .unwrap())
        .await;
        match end {
            Some(StreamError::Timeout { after }) => assert_eq!(after, Duration::from_millis(120)),
            other => panic!("expected Timeout, got {other:?}"),
        }
        // `timeout` on a plain method: the call's limit, instead of the
        // caller's call timeout (30 s here).
        match counter.hang().await {
            Err(CallError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(150)),
            other => panic!("expected Timeout, got {other:?}"),
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn input_items_that_do_not_decode_fail_the_call() {
    bounded(async {
        let (server, _) = counter_server().await;
        let client = connect(&server).await;
        // A peer that sends what the method's items cannot be read from.
        let mut raw = client
            .open_stream(
                "total",
                serde_json::Value::Null,
                StreamOptions::new().with_input(),
            )
            .await
            .unwrap();
        let mut input = raw.input().expect("an input flow");
        input.send(serde_json::json!(1)).await.unwrap();
        // The server may fail the call before this item is sent.
        let _ = input.send(serde_json::json!("not a number")).await;
        drop(input);
        match raw.finish().await {
            Err(StreamError::Call(CallError::Remote { code, message, .. })) => {
                assert_eq!(code, ErrorCode::InvalidPayload);
                assert!(message.contains("total"), "{message}");
            }
            other => panic!("expected invalid_payload, got {other:?}"),
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn plain_calls_and_streams_are_told_apart() {
    bounded(async {
        let (server, _) = counter_server().await;
        let client = connect(&server).await;
        // A plain call to a stream method.
        match client
            .call("count", serde_json::json!({"from": 1, "to": 2}))
            .await
        {
            Err(CallError::Remote { code, .. }) => assert_eq!(code, ErrorCode::StreamRequired),
            other => panic!("expected stream_required, got {other:?}"),
        }
        // A stream opened to a plain method, and to no method.
        for (method, expected) in [
            ("ping", ErrorCode::NotAStream),
            ("nothing", ErrorCode::UnknownMethod),
        ] {
            let refused = match client
                .open_stream(method, serde_json::Value::Null, StreamOptions::new())
                .await
            {
                Err(error) => StreamError::<std::convert::Infallible>::Call(error),
                Ok(stream) => all(stream).await.1.expect("a refusal"),
            };
            match refused {
                StreamError::Call(CallError::Remote { code, .. }) => assert_eq!(code, expected),
                other => panic!("{method}: expected {expected:?}, got {other:?}"),
            }
        }
        assert_eq!(
            CounterClient::METHODS,
            [
                "count", "checked", "sum", "total", "double", "forever", "stall", "slow", "ping",
                "hang",
            ]
        );
        server.stop().await;
    })
    .await;
}

/// The impl form: the same kinds, on a type of its own.
struct Words;

#[stream_rpc::service]
impl Words {
    /// Output: the words of a text.
    async fn split(&self, text: String) -> Streaming<String> {
        let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        Streaming::from_items(stream::iter(words))
    }

    /// Input: the words joined by `separator`.
    async fn join(&self, separator: String, words: IncomingItems<String>) -> String {
        let words: Vec<String> = words.filter_map(|word| async { word.ok() }).collect().await;
        words.join(&separator)
    }

    /// Both, failing on an empty word.
    async fn upper(&self, mut words: IncomingItems<String>) -> Streaming<String, HandlerError> {
        Streaming::from_fn(move |mut sink| async move {
            while let Some(word) = words.next().await {
                let word = word?;
                if word.is_empty() {
                    return Err(HandlerError::failed("an empty word"));
                }
                if sink.send(word.to_uppercase()).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn the_impl_form_serves_streams_too() {
    bounded(async {
        let key = new_key();
        let server = TestServer::start(Words, config(&key, 0), &key).await;
        let client = connect(&server).await;
        let words = WordsClient::new(&client);
        let (split, end) = all(words.split("a stream of words".into()).await.unwrap()).await;
        assert_eq!(split, ["a", "stream", "of", "words"]);
        assert!(end.is_none());
        let joined = words
            .join("-".into(), stream::iter(["x", "y", "z"].map(String::from)))
            .await
            .unwrap();
        assert_eq!(joined, "x-y-z");
        let (upper, end) = all(words
            .upper(stream::iter(["ab", "cd", "", "ef"].map(String::from)))
            .await
            .unwrap())
        .await;
        assert_eq!(upper, ["AB", "CD"]);
        match end {
            Some(StreamError::Failed(error)) => {
                assert_eq!(error, HandlerError::failed("an empty word"));
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(Words::METHODS, ["split", "join", "upper"]);
        server.stop().await;
    })
    .await;
}

/// An item the client cannot write as JSON when it says so.
#[derive(Debug, Deserialize)]
pub struct Fragile {
    /// Whether writing it fails.
    pub broken: bool,
}

impl Serialize for Fragile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeStruct as _};
        if self.broken {
            return Err(S::Error::custom("a broken item"));
        }
        let mut item = serializer.serialize_struct("Fragile", 1)?;
        item.serialize_field("broken", &false)?;
        item.end()
    }
}

#[stream_rpc::service]
pub trait Tally {
    /// Input: how many items came.
    async fn tally(&self, items: IncomingItems<Fragile>) -> u64;
}

/// Says whether its handler answered or was dropped.
struct Tallies(mpsc::UnboundedSender<&'static str>);

impl Tally for Tallies {
    async fn tally(&self, mut items: IncomingItems<Fragile>) -> u64 {
        let _guard = DropGuard(self.0.clone());
        let mut count = 0;
        while let Some(item) = items.next().await {
            if item.is_ok() {
                count += 1;
            }
        }
        let _ = self.0.send("answered");
        count
    }
}

#[tokio::test]
async fn an_input_item_that_cannot_be_encoded_cancels_the_call() {
    bounded(async {
        let key = new_key();
        let (events, mut seen) = mpsc::unbounded_channel();
        let server =
            TestServer::start(TallyServer::new(Tallies(events)), config(&key, 0), &key).await;
        let client = connect(&server).await;
        let items = [false, false, true, false].map(|broken| Fragile { broken });
        // The method must not answer on part of its input: the call is
        // cancelled, and says after how many items.
        match TallyClient::new(&client).tally(stream::iter(items)).await {
            Err(error @ CallError::InputFailed { sent: 2, .. }) => {
                assert!(error.may_have_run(), "{error}");
                assert!(error.to_string().contains("a broken item"), "{error}");
            }
            other => panic!("expected InputFailed after 2 items, got {other:?}"),
        }
        // The server's handler was dropped, never answered.
        assert_eq!(seen.recv().await, Some("producer dropped"));
        server.stop().await;
        assert_eq!(seen.try_recv().ok(), None);
    })
    .await;
}
