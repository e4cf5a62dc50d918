//! Support for the stream methods `#[stream_rpc::service]` generates,
//! re-exported from `__private`: the compile-time checks of stream items
//! and errors, and the runtime's stream helpers (`stream_rpc::__stream`)
//! bounded by [`Item`], so that an item type that does not fit fails
//! [`assert_item`] once, not each helper's bounds again.

use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::caller::Caller;
use crate::error::CallError;
use crate::packet::Packet;
use crate::protocol::HandlerError;
use crate::stream::__stream;
use crate::stream::{DecodeError, IncomingItems, ItemStream, StreamIo, StreamOptions, Streaming};

/// The input of a stream method that takes none, for the typed client.
pub type NoInput = futures_util::stream::Empty<()>;

/// The types a stream's items may be: what the typed client sends or
/// reads, and the service reads or sends, as JSON.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an item of a stream_rpc stream",
    label = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}` (owned, no borrowed data): each item travels as JSON"
)]
pub trait Item: Serialize + DeserializeOwned + Send + 'static {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Send + 'static> Item for T {}

/// Checks at compile time, spanned on the user's type.
pub fn assert_item<T: Item>() {}

/// `Result<Streaming<T, E>, E>` has one error type: the one the typed
/// client reads back whether it came before or after the first item.
#[diagnostic::on_unimplemented(
    message = "the error before the first item, `{Self}`, is not the stream's error `{T}`",
    label = "write `Result<Streaming<T, E>, E>` with one `E`"
)]
pub trait SameError<T> {}

impl<T> SameError<T> for T {}

/// Checks at compile time, spanned on the `Result`'s error type.
pub fn assert_same_error<Inner, Outer: SameError<Inner>>() {}

/// Serving: the stream argument, typed.
pub fn take_input<T: Item>(
    io: &mut StreamIo,
    method: &str,
) -> Result<IncomingItems<T>, HandlerError> {
    __stream::take_input(io, method)
}

// The futures of the helpers below are boxed: an unboxed future's type
// names the item type, and checking it would report a wrong item type again
// at the attribute, after `assert_item` did on the type itself.

/// Serving: runs the stream a method returned.
pub fn serve_output<'a, T: Item, E: Send + 'static>(
    streaming: Streaming<T, E>,
    io: &'a mut StreamIo,
    into_error: impl FnOnce(E) -> HandlerError + Send + 'a,
) -> BoxFuture<'a, Result<Value, HandlerError>> {
    Box::pin(__stream::serve_output(streaming, io, into_error))
}

/// Calling: opens a stream with output, and input when `items` is given.
pub fn open_output<'a, C, T, E, I, S>(
    caller: &'a C,
    method: &'a str,
    payload: Value,
    options: StreamOptions,
    items: Option<S>,
    decode_error: DecodeError<E>,
) -> BoxFuture<'a, Result<ItemStream<T, E>, CallError>>
where
    C: Caller + ?Sized,
    T: Item,
    E: 'a,
    I: Item,
    S: Stream<Item = I> + Send + 'static,
{
    Box::pin(__stream::open_output(
        caller,
        method,
        payload,
        options,
        items,
        decode_error,
    ))
}

/// Calling: a method that takes a stream and returns none.
pub fn call_with_input<'a, C, I, S>(
    caller: &'a C,
    method: &'a str,
    payload: Value,
    options: StreamOptions,
    items: S,
) -> BoxFuture<'a, Result<Packet, CallError>>
where
    C: Caller + ?Sized,
    I: Item,
    S: Stream<Item = I> + Send + 'static,
{
    Box::pin(__stream::call_with_input(
        caller, method, payload, options, items,
    ))
}
