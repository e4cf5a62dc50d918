//! What the code `#[stream_rpc::service]` generates for stream methods
//! calls. Not a public API: it changes with the macro.

use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    DecodeError, IncomingItems, ItemSender, ItemStream, StreamIo, StreamOptions, Streaming,
};
use crate::caller::Caller;
use crate::error::{CallError, SendError};
use crate::packet::Packet;
use crate::protocol::{HandlerError, Reply};
use crate::service::IntoReply;

pub use std::time::Duration;

/// The options of a typed stream: `timeout` (whole call), `item_timeout`
/// (between output items), `window` 0 for a method without output, and
/// `input` for a method with a stream argument.
pub fn options(
    timeout: Option<Duration>,
    item_timeout: Option<Duration>,
    output: bool,
    input: bool,
) -> StreamOptions {
    StreamOptions {
        window: if output { None } else { Some(0) },
        timeout,
        item_timeout,
        input,
        ..StreamOptions::default()
    }
}

/// Serving: the stream argument of `method`, typed.
pub fn take_input<T: DeserializeOwned>(
    io: &mut StreamIo,
    method: &str,
) -> Result<IncomingItems<T>, HandlerError> {
    match io.input() {
        Some(incoming) => Ok(IncomingItems::new(incoming, method)),
        None => Err(HandlerError::failed(format!(
            "the input of `{method}` was taken twice"
        ))),
    }
}

/// Serving: runs what an output stream method returned; the call's reply
/// payload is `null`, its error the producer's (`into_error` turns the
/// method's error into the error packet).
pub async fn serve_output<T, E>(
    streaming: Streaming<T, E>,
    io: &mut StreamIo,
    into_error: impl FnOnce(E) -> HandlerError,
) -> Result<Value, HandlerError>
where
    T: Serialize + Send + 'static,
    E: Send + 'static,
{
    let Some(sink) = io.output() else {
        return Err(HandlerError::failed(format!(
            "the output of `{}` was taken twice",
            io.method()
        )));
    };
    streaming.run(sink).await.map_err(into_error)?;
    Ok(Value::Null)
}

/// Serving: the reply payload of an input-only stream method's value.
pub fn reply_payload<R: IntoReply>(value: R, method: &str) -> Result<Value, HandlerError> {
    Ok(match value.into_reply(method)? {
        Reply::Message { payload, .. } => payload,
        Reply::Forward(packet) => packet.payload,
        _ => Value::Null,
    })
}

/// Calling: opens a stream with output (and, when `items` is given, sends
/// them as its input from a task of their own, ending with `stream.end`;
/// the task stops when the call ends or the stream is dropped).
pub async fn open_output<C, T, E, I, S>(
    caller: &C,
    method: &str,
    payload: Value,
    options: StreamOptions,
    items: Option<S>,
    decode_error: DecodeError<E>,
) -> Result<ItemStream<T, E>, CallError>
where
    C: Caller + ?Sized,
    T: DeserializeOwned,
    I: Serialize + Send + 'static,
    S: Stream<Item = I> + Send + 'static,
{
    let mut raw = caller.open_stream(method, payload, options).await?;
    if let (Some(items), Some(sender)) = (items, raw.input()) {
        tokio::spawn(send_all(sender, items));
    }
    Ok(ItemStream::new(raw, decode_error))
}

/// Calling: a method with a stream argument and no output stream: sends
/// the items while waiting for the reply.
pub async fn call_with_input<C, I, S>(
    caller: &C,
    method: &str,
    payload: Value,
    options: StreamOptions,
    items: S,
) -> Result<Packet, CallError>
where
    C: Caller + ?Sized,
    I: Serialize + Send + 'static,
    S: Stream<Item = I> + Send + 'static,
{
    let mut raw = caller.open_stream(method, payload, options).await?;
    let Some(sender) = raw.input() else {
        return Err(CallError::not_sent(method, SendError::Closed));
    };
    let (sent, reply) = futures_util::future::join(send_all(sender, items), raw.finish()).await;
    // An item that could not be encoded cancelled the call: that is why
    // it ended, whatever the stream says.
    if let Err(Unsent::Encode { sent, reason }) = sent {
        return Err(CallError::InputFailed {
            method: method.to_owned(),
            sent,
            reason,
        });
    }
    reply.map_err(|e| e.into_call_error(method))
}

/// Why not every input item was sent.
pub enum Unsent {
    /// An item is not JSON: the call was cancelled after `sent` items.
    Encode {
        /// Items sent before it.
        sent: u64,
        /// The encoding error.
        reason: String,
    },
    /// The call ended or was cancelled first.
    Stopped,
}

/// Sends every item, then `stream.end`; stops when the call ends.
pub async fn send_all<I, S>(mut sender: ItemSender, items: S) -> Result<(), Unsent>
where
    I: Serialize + Send + 'static,
    S: Stream<Item = I> + Send + 'static,
{
    let mut items = std::pin::pin!(items);
    loop {
        let next = tokio::select! {
            biased;
            () = sender.closed() => return Err(Unsent::Stopped),
            next = items.next() => next,
        };
        let Some(item) = next else { break };
        let value = match serde_json::to_value(&item) {
            Ok(value) => value,
            Err(e) => {
                // Ending the input here would let the method answer on
                // part of it: cancel the whole call instead.
                let sent = sender.sent();
                sender.cancel_call(e.to_string());
                return Err(Unsent::Encode {
                    sent,
                    reason: e.to_string(),
                });
            }
        };
        sender.send(value).await.map_err(|_| Unsent::Stopped)?;
    }
    sender.finish().await.map_err(|_| Unsent::Stopped)
}
