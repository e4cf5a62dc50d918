//! Typed streams, for `#[stream_rpc::service]`: [`ItemStream`] (a typed
//! client's output stream), [`Streaming`] (what a stream method returns),
//! [`TypedSink`] and [`IncomingItems`] (a stream argument).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Incoming, ItemSender, RawStream, Sink, StreamError};
use crate::error::{CallError, SendError};
use crate::packet::Packet;
use crate::protocol::HandlerError;

/// Decodes a remote error into the method's own typed error, or gives the
/// [`CallError`] back when it is not one.
pub type DecodeError<E> = fn(CallError) -> Result<E, CallError>;

/// A typed stream of output items, as a typed client returns it: items
/// `T`, a method error `E` ([`StreamError::Failed`]).
///
/// An item that does not decode as `T` ends the stream with
/// [`StreamError::Call`]([`CallError::InvalidReply`]) (and cancels it).
/// Dropping it cancels the stream.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use stream_rpc::{Caller, Connection, ItemStream, StreamOptions, json};
///
/// # async fn run(connection: Connection) -> Result<(), Box<dyn std::error::Error>> {
/// let raw = connection
///     .open_stream("count", json!({"to": 3}), StreamOptions::new())
///     .await?;
/// let mut numbers: ItemStream<u64> = ItemStream::new(raw, Err);
/// while let Some(n) = numbers.next().await {
///     println!("{}", n?);
/// }
/// # Ok(())
/// # }
/// ```
pub struct ItemStream<T, E = Infallible> {
    raw: RawStream,
    decode_error: DecodeError<E>,
    done: bool,
    item: PhantomData<fn() -> T>,
}

impl<T, E> fmt::Debug for ItemStream<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemStream")
            .field("raw", &self.raw)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned, E> ItemStream<T, E> {
    /// Wraps a raw stream; `decode_error` turns a remote error into the
    /// method's typed error (`Err` for any that is not: pass `Err` for a
    /// method without one).
    pub fn new(raw: RawStream, decode_error: DecodeError<E>) -> Self {
        ItemStream {
            raw,
            decode_error,
            done: false,
            item: PhantomData,
        }
    }

    /// The `seq` of the last item received: see [`RawStream::last_seq`].
    pub fn last_seq(&self) -> u64 {
        self.raw.last_seq()
    }

    /// The sender of raw input items, once (see [`RawStream::input`]).
    pub fn input(&mut self) -> Option<ItemSender> {
        self.raw.input()
    }

    /// The raw stream inside.
    pub fn into_raw(self) -> RawStream {
        self.raw
    }

    /// Waits for the end of the call and gives its reply: see
    /// [`RawStream::finish`].
    pub async fn finish(self) -> Result<Packet, StreamError<E>> {
        let decode = self.decode_error;
        self.raw.finish().await.map_err(|e| typed(e, decode))
    }

    /// Cancels the stream: the same as dropping it.
    pub fn cancel(self) {}
}

/// A raw stream error as the typed one.
fn typed<E>(error: StreamError, decode: DecodeError<E>) -> StreamError<E> {
    match error {
        StreamError::Call(call) => match decode(call) {
            Ok(failed) => StreamError::Failed(failed),
            Err(call) => StreamError::Call(call),
        },
        other => other.typed(),
    }
}

impl<T: DeserializeOwned, E> Stream for ItemStream<T, E> {
    type Item = Result<T, StreamError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let next = match this.raw.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        Poll::Ready(match next {
            None => None,
            Some(Err(e)) => Some(Err(typed(e, this.decode_error))),
            Some(Ok(value)) => Some(T::deserialize(value).map_err(|e| {
                this.done = true;
                let method = this.raw.method().to_owned();
                this.raw.stop();
                StreamError::Call(CallError::InvalidReply {
                    method,
                    reason: format!("an item does not decode: {e}"),
                })
            })),
        })
    }
}

/// Sends typed output items from a [`Streaming::from_fn`] producer.
///
/// See [`Streaming`] for an example.
pub struct TypedSink<T> {
    sink: Sink,
    item: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for TypedSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TypedSink").field(&self.sink).finish()
    }
}

impl<T: Serialize> TypedSink<T> {
    /// Wraps a raw sink.
    pub fn new(sink: Sink) -> Self {
        TypedSink {
            sink,
            item: PhantomData,
        }
    }

    /// Sends one item, first waiting for credit: `Err` once the opener
    /// cancelled or the connection closed (stop producing then).
    pub async fn send(&mut self, item: T) -> Result<(), StreamError> {
        let value = serde_json::to_value(&item).map_err(|e| {
            StreamError::Call(CallError::not_sent(
                "stream.item",
                SendError::Encode(e.to_string()),
            ))
        })?;
        self.sink.send(value).await
    }

    /// Resolves when no more items may be sent: see [`Sink::closed`].
    pub async fn closed(&self) {
        self.sink.closed().await;
    }
}

type Producer<T, E> =
    Box<dyn FnOnce(TypedSink<T>) -> Pin<Box<dyn Future<Output = Result<(), E>> + Send>> + Send>;

/// What a stream method of a `#[stream_rpc::service]` returns: the
/// producer of its output items `T`, which may fail with the method's
/// error `E` (sent as the call's error packet, after the items sent).
///
/// The producer runs once the stream is accepted, waits for credit at each
/// item, and is dropped when the opener cancels or the connection closes.
///
/// ```
/// use stream_rpc::{HandlerError, Streaming};
///
/// // From a stream of items:
/// let counting: Streaming<u64> = Streaming::from_items(futures_util::stream::iter(1..=3));
/// // From a producer loop:
/// let ticking: Streaming<u64, HandlerError> = Streaming::from_fn(|mut sink| async move {
///     for n in 0.. {
///         if sink.send(n).await.is_err() {
///             break; // cancelled
///         }
///     }
///     Ok(())
/// });
/// ```
pub struct Streaming<T, E = Infallible> {
    producer: Producer<T, E>,
}

impl<T, E> fmt::Debug for Streaming<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

impl<T: Serialize + Send + 'static, E: Send + 'static> Streaming<T, E> {
    /// The items of `items`, until its first `Err`, which fails the call.
    pub fn new<S>(items: S) -> Self
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
    {
        Streaming::from_fn(move |mut sink| async move {
            let mut items = std::pin::pin!(items);
            while let Some(item) = items.next().await {
                if sink.send(item?).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }

    /// The items of `items`.
    pub fn from_items<S>(items: S) -> Self
    where
        S: Stream<Item = T> + Send + 'static,
    {
        Streaming::new(items.map(Ok))
    }

    /// A producer loop: `producer` gets a [`TypedSink`] and sends the
    /// items; its `Err` fails the call.
    pub fn from_fn<F, Fut>(producer: F) -> Self
    where
        F: FnOnce(TypedSink<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        Streaming {
            producer: Box::new(move |sink| Box::pin(producer(sink))),
        }
    }

    /// Runs the producer over `sink` until it is done.
    pub async fn run(self, sink: Sink) -> Result<(), E> {
        (self.producer)(TypedSink::new(sink)).await
    }
}

/// A stream argument of a `#[stream_rpc::service]` method: the input items
/// as `T`. An item that does not decode is `Err` (`invalid_payload`).
///
/// ```
/// use futures_util::StreamExt;
/// use stream_rpc::{HandlerError, IncomingItems};
///
/// async fn total(mut numbers: IncomingItems<i64>) -> Result<i64, HandlerError> {
///     let mut sum = 0;
///     while let Some(n) = numbers.next().await {
///         sum += n?; // an item that is not a number fails the call
///     }
///     Ok(sum)
/// }
/// ```
pub struct IncomingItems<T> {
    incoming: Incoming,
    method: Box<str>,
    item: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for IncomingItems<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingItems")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> IncomingItems<T> {
    /// Wraps the input of the stream method `method`.
    pub fn new(incoming: Incoming, method: &str) -> Self {
        IncomingItems {
            incoming,
            method: method.into(),
            item: PhantomData,
        }
    }

    /// The raw input inside.
    pub fn into_inner(self) -> Incoming {
        self.incoming
    }
}

impl<T: DeserializeOwned> Stream for IncomingItems<T> {
    type Item = Result<T, HandlerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.incoming.poll_next_unpin(cx).map(|next| {
            next.map(|value| {
                T::deserialize(value).map_err(|e| {
                    HandlerError::invalid_payload(&this.method, format_args!("an input item: {e}"))
                })
            })
        })
    }
}
