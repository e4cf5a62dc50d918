//! What `#[stream_rpc::service]` methods return, and the support the
//! generated code relies on.
//!
//! A service method's return type decides what goes back to the peer:
//!
//! | return type | sent back | typed client returns |
//! |---|---|---|
//! | none, or `()` | nothing: a notification | `Result<(), CallError>` once sent |
//! | `T: Serialize + Deserialize` | a reply with method `<method>.reply` and payload `T` | `Result<T, CallError>` |
//! | [`Message<T>`] | a reply with the method you choose (`ping` answers `pong`) | `Result<T, CallError>` |
//! | [`Reply`] | whatever it says, including a stored packet forwarded verbatim | `Result<Packet, CallError>` |
//! | `Result<R, E>` | `Ok` as above; `Err` as an error packet | `Result<_, CallError>`, with `Err` as [`CallError::Remote`] |
//!
//! In `Result<R, E>`, the error `E` travels by what it is:
//!
//! | `E` | error packet | the typed client's `Err` |
//! |---|---|---|
//! | [`HandlerError`] | its code, message and data | `Ok(Err(HandlerError))` for a `handler_error` packet |
//! | `Serialize` (+ `Deserialize` for the client) | `handler_error` with `data`: the error as JSON | `Ok(Err(E))`, decoded from `data` |
//! | only `Display` | `handler_error` with the message "`method` failed"; its text is logged on the server, never sent | [`CallError::Remote`] |
//!
//! So the typed client of a method returning `Result<T, E>` returns
//! `Result<Result<T, E>, CallError>`: the outer error for the call itself,
//! the inner one the method's own error. The rule that separates them:
//! **the method's own error is an error packet with the code
//! `handler_error`** (and, for a typed `E`, `data` that reads as `E`).
//! Everything else is the call's error, in [`CallError`]: not sent, lost,
//! timed out, and every error packet with another code, in particular the
//! codes that say the request was not run ([`ErrorCode::did_not_run`]:
//! `busy`, `unknown_method`, `invalid_payload`, `invalid_packet`,
//! `unavailable`), and `handler_panicked`. A handler that returns a
//! [`HandlerError`] with such a code (`HandlerError::invalid_payload`, say)
//! tells the caller that it did not run, and its caller sees it as
//! [`CallError::Remote`] with that code, never as `Ok(Err(..))`.
//!
//! [`ErrorCode::did_not_run`]: crate::ErrorCode::did_not_run

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::CallError;
use crate::packet::Packet;
use crate::protocol::{HandlerError, Reply};

mod streams;

/// A reply with a method name of the handler's choosing and a typed payload,
/// like a queue server answering `ping` with `pong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<T> {
    /// The reply's method.
    pub method: String,
    /// The reply's payload.
    pub payload: T,
}

impl<T> Message<T> {
    /// A reply with this method and payload.
    pub fn new(method: impl Into<String>, payload: T) -> Self {
        Message {
            method: method.into(),
            payload,
        }
    }
}

/// The suffix of the method of a reply that carries a typed value:
/// `add` is answered by `add.reply`.
pub const REPLY_SUFFIX: &str = ".reply";

/// What a service method may return (besides `()` and `Result`, which the
/// attribute handles itself): a typed value, a [`Message<T>`] or a
/// [`Reply`]. The attribute's documentation, [`service`](crate::service),
/// has the table of return forms.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned by a stream_rpc service method",
    label = "return a type that implements `Serialize` and `Deserialize`, a `Message<T>` or a `Reply`"
)]
pub trait IntoReply: Sized {
    /// What the typed client's method returns for it.
    type Output;

    /// Turns the handler's value into what is sent back for `method`.
    fn into_reply(self, method: &str) -> Result<Reply, HandlerError>;

    /// Turns the reply packet back into the typed value, on the caller's side.
    fn from_reply(reply: Packet, method: &str) -> Result<Self::Output, CallError>;
}

fn encode_reply<T: Serialize>(value: &T, method: &str) -> Result<Value, HandlerError> {
    serde_json::to_value(value).map_err(|e| {
        HandlerError::failed(format!("the reply to `{method}` cannot be encoded: {e}"))
    })
}

fn decode_reply<T: DeserializeOwned>(reply: Packet, method: &str) -> Result<T, CallError> {
    T::deserialize(reply.payload).map_err(|e| CallError::InvalidReply {
        method: method.to_owned(),
        reason: e.to_string(),
    })
}

impl<T: Serialize + DeserializeOwned> IntoReply for T {
    type Output = T;

    fn into_reply(self, method: &str) -> Result<Reply, HandlerError> {
        let payload = encode_reply(&self, method)?;
        let mut reply_method = String::with_capacity(method.len() + REPLY_SUFFIX.len());
        reply_method.push_str(method);
        reply_method.push_str(REPLY_SUFFIX);
        Ok(Reply::message(reply_method, payload))
    }

    fn from_reply(reply: Packet, method: &str) -> Result<T, CallError> {
        decode_reply(reply, method)
    }
}

impl<T: Serialize + DeserializeOwned> IntoReply for Message<T> {
    type Output = T;

    fn into_reply(self, method: &str) -> Result<Reply, HandlerError> {
        let payload = encode_reply(&self.payload, method)?;
        Ok(Reply::message(self.method, payload))
    }

    fn from_reply(reply: Packet, method: &str) -> Result<T, CallError> {
        decode_reply(reply, method)
    }
}

impl IntoReply for Reply {
    type Output = Packet;

    fn into_reply(self, _method: &str) -> Result<Reply, HandlerError> {
        Ok(self)
    }

    fn from_reply(reply: Packet, _method: &str) -> Result<Packet, CallError> {
        Ok(reply)
    }
}

/// The types a service method can take as arguments: owned values that
/// the typed client sends (`Serialize`) and the service reads from the
/// payload (`Deserialize`). The generated code checks every argument type
/// against it, which reports one error per argument that does not fit.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a stream_rpc service method",
    label = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}` (owned, no borrowed data): the typed client sends it, the service reads it from the payload"
)]
pub trait Argument: Serialize + DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> Argument for T {}

/// The error types of `Result`-returning service methods that are neither a
/// [`HandlerError`] nor serializable: their text is logged on the serving
/// side and never sent, since it may tell internals (paths, queries,
/// addresses) to the peer. To show a text to the peer, return a
/// [`HandlerError`] with it; to send the error itself, make it `Serialize`
/// and `Deserialize`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error of a stream_rpc service method",
    label = "the error must implement `Serialize` and `Deserialize` (sent as itself), `Display` (logged, not sent), or be a `stream_rpc::HandlerError`"
)]
pub trait MethodError {
    /// The error as sent to the peer: `handler_error`, "`method` failed",
    /// with the error's text kept for this side's log.
    #[doc(hidden)]
    fn to_handler_error(&self, method: &str) -> HandlerError;
}

impl<E: std::fmt::Display> MethodError for E {
    fn to_handler_error(&self, method: &str) -> HandlerError {
        HandlerError::failed(format!("`{method}` failed")).with_detail(self.to_string())
    }
}

/// Support for the generated code; not a public API.
#[doc(hidden)]
pub mod __private {
    use serde_json::{Map, Value};

    use std::marker::PhantomData;

    use serde::de::DeserializeOwned;

    pub use super::{Argument, IntoReply, MethodError};
    use crate::error::{CallError, SendError};
    use crate::protocol::HandlerError;
    pub use futures_util::{self, Stream};
    pub use serde_json;

    pub use super::streams::{
        Item, NoInput, SameError, assert_item, assert_same_error, call_with_input, open_output,
        serve_output, take_input,
    };

    /// What a task's result reads as for a method returning `Self` (the
    /// reply's payload): the payload type of a [`Message<T>`](super::Message),
    /// JSON for a [`Reply`](crate::Reply).
    pub trait TaskOutput {
        /// The result's type.
        type Output;
    }

    impl<T> TaskOutput for super::Message<T> {
        type Output = T;
    }

    impl TaskOutput for crate::protocol::Reply {
        type Output = Value;
    }

    /// Checks at compile time, spanned on the user's type.
    pub fn assert_argument<T: Argument>() {}
    /// Checks at compile time, spanned on the user's type.
    pub fn assert_reply<T: IntoReply>() {}

    /// The whole payload as the one argument.
    pub fn decode_whole<T: Argument>(payload: Value, method: &str) -> Result<T, HandlerError> {
        T::deserialize(payload).map_err(|e| HandlerError::invalid_payload(method, e))
    }

    /// The payload as an object keyed by argument names.
    pub fn decode_object(
        payload: Value,
        method: &str,
        keys: &[&str],
    ) -> Result<Map<String, Value>, HandlerError> {
        match payload {
            Value::Object(map) => Ok(map),
            other => Err(HandlerError::invalid_payload(
                method,
                format_args!(
                    "expected a JSON object with the keys {}, got {}",
                    keys.iter()
                        .map(|key| format!("`{key}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    kind(&other)
                ),
            )),
        }
    }

    /// One argument out of the payload object; a missing key reads as
    /// `null`, so `Option` arguments may be left out.
    pub fn decode_field<T: Argument>(
        map: &mut Map<String, Value>,
        key: &str,
        method: &str,
    ) -> Result<T, HandlerError> {
        let value = map.remove(key).unwrap_or(Value::Null);
        T::deserialize(value).map_err(|e| {
            HandlerError::invalid_payload(method, format_args!("argument `{key}`: {e}"))
        })
    }

    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    /// Encodes one argument on the caller's side.
    pub fn encode_argument<T: Argument>(method: &str, value: &T) -> Result<Value, CallError> {
        serde_json::to_value(value)
            .map_err(|e| CallError::not_sent(method, SendError::Encode(e.to_string())))
    }

    /// A new empty payload object.
    pub fn new_object() -> Map<String, Value> {
        Map::new()
    }

    /// Encodes one of several arguments into the payload object.
    pub fn insert_argument<T: Argument>(
        method: &str,
        object: &mut Map<String, Value>,
        key: &str,
        value: &T,
    ) -> Result<(), CallError> {
        object.insert(key.to_owned(), encode_argument(method, value)?);
        Ok(())
    }

    /// Picks the conversion of a handler's error, most specific first: a
    /// [`HandlerError`] is kept as it is, a `Serialize` error travels as
    /// `data`, anything else that is `Display` becomes a generic
    /// `handler_error`. Called as `(&&&ErrorWrap(e)).into_handler_error(method)`.
    pub struct ErrorWrap<E>(pub E);

    /// The first choice, for [`HandlerError`] itself.
    pub trait ViaHandlerError {
        /// Converts.
        fn into_handler_error(self, method: &str) -> HandlerError;
    }

    impl ViaHandlerError for &&&ErrorWrap<HandlerError> {
        fn into_handler_error(self, _method: &str) -> HandlerError {
            self.0.clone()
        }
    }

    /// The second choice, for a serializable error: sent as itself.
    pub trait ViaSerde {
        /// Converts.
        fn into_handler_error(self, method: &str) -> HandlerError;
    }

    impl<E: serde::Serialize> ViaSerde for &&ErrorWrap<E> {
        fn into_handler_error(self, method: &str) -> HandlerError {
            match serde_json::to_value(&self.0) {
                Ok(data) => {
                    HandlerError::failed(format!("`{method}` returned {data}")).with_data(data)
                }
                Err(e) => HandlerError::failed(format!("`{method}` failed"))
                    .with_detail(format!("its error cannot be encoded as JSON: {e}")),
            }
        }
    }

    /// The fallback conversion, for any `Display` error. The bound sits on
    /// the method, not the impl, so that a wrong error type fails the
    /// `MethodError` check once instead of failing method lookup.
    pub trait ViaDisplay<E> {
        /// Converts.
        fn into_handler_error(self, method: &str) -> HandlerError
        where
            E: MethodError;
    }

    impl<E> ViaDisplay<E> for &ErrorWrap<E> {
        fn into_handler_error(self, method: &str) -> HandlerError
        where
            E: MethodError,
        {
            self.0.to_handler_error(method)
        }
    }

    /// Picks what a handler's error says of trying again, most specific
    /// first: a [`HandlerError`] says what its `retry` says; an error that
    /// implements [`Retry`](crate::tasks::Retry) says its `retry()`;
    /// anything else says nothing. Called as
    /// `(&&&RetryOf(&e)).retry_of()`, before the error is converted.
    pub struct RetryOf<'a, E>(pub &'a E);

    /// The first choice, for [`HandlerError`] itself.
    pub trait RetryOfHandlerError {
        /// What it says.
        fn retry_of(self) -> Option<bool>;
    }

    impl RetryOfHandlerError for &&&RetryOf<'_, HandlerError> {
        fn retry_of(self) -> Option<bool> {
            self.0.retry()
        }
    }

    /// The second choice, for an error that implements
    /// [`Retry`](crate::tasks::Retry).
    pub trait RetryOfTrait {
        /// What it says.
        fn retry_of(self) -> Option<bool>;
    }

    impl<E: crate::tasks::Retry> RetryOfTrait for &&RetryOf<'_, E> {
        fn retry_of(self) -> Option<bool> {
            Some(self.0.retry())
        }
    }

    /// The fallback: nothing said.
    pub trait RetryOfNothing {
        /// Nothing.
        fn retry_of(self) -> Option<bool>;
    }

    impl<E> RetryOfNothing for &RetryOf<'_, E> {
        fn retry_of(self) -> Option<bool> {
            None
        }
    }

    /// The converted error with what the handler's error said of trying
    /// again, when it said something.
    pub fn with_retry(error: HandlerError, retry: Option<bool>) -> HandlerError {
        match retry {
            Some(retry) => error.with_retry(retry),
            None => error,
        }
    }

    /// Picks how the typed client reads a failed call of a method whose
    /// error type is `E`, most specific first: every error packet as a
    /// [`HandlerError`]; a typed error from the packet's `data` when `E` is
    /// `Deserialize`; otherwise the call error as it is. Called as
    /// `(&&&ErrorDecode::<E>::new()).decode_error(error)`.
    pub struct ErrorDecode<E>(PhantomData<fn() -> E>);

    impl<E> ErrorDecode<E> {
        /// The selector for `E`.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            ErrorDecode(PhantomData)
        }
    }

    /// The first choice: an error packet with the code `handler_error` is
    /// the method's own [`HandlerError`]; every other code (the request was
    /// not run, or the handler panicked) is the call's error.
    pub trait DecodeHandlerError {
        /// The method's own error, or the call's error.
        fn decode_error(self, error: CallError) -> Result<HandlerError, CallError>;
    }

    impl DecodeHandlerError for &&&ErrorDecode<HandlerError> {
        fn decode_error(self, error: CallError) -> Result<HandlerError, CallError> {
            match error {
                CallError::Remote {
                    code: code @ crate::packet::ErrorCode::HandlerError,
                    message,
                    data,
                    retry,
                    ..
                } => {
                    let mut decoded = HandlerError::new(code, message);
                    decoded.data = data;
                    if let Some(retry) = retry {
                        decoded = decoded.with_retry(retry);
                    }
                    Ok(decoded)
                }
                other => Err(other),
            }
        }
    }

    /// The second choice: a typed error, decoded from the error packet's `data`.
    pub trait DecodeSerde<E> {
        /// The method's own error, or the call's error.
        fn decode_error(self, error: CallError) -> Result<E, CallError>;
    }

    impl<E: DeserializeOwned> DecodeSerde<E> for &&ErrorDecode<E> {
        fn decode_error(self, error: CallError) -> Result<E, CallError> {
            if let CallError::Remote {
                code: crate::packet::ErrorCode::HandlerError,
                data: Some(data),
                ..
            } = &error
                && let Ok(decoded) = E::deserialize(data)
            {
                return Ok(decoded);
            }
            Err(error)
        }
    }

    /// The fallback: the error cannot be read back; the call's error as it is.
    pub trait DecodeNothing<E> {
        /// The call's error.
        fn decode_error(self, error: CallError) -> Result<E, CallError>;
    }

    impl<E> DecodeNothing<E> for &ErrorDecode<E> {
        fn decode_error(self, error: CallError) -> Result<E, CallError> {
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::__private::*;
    use super::*;
    use crate::packet::ErrorCode;
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn typed_values_reply_as_method_dot_reply() {
        let reply = 42u32.into_reply("add").unwrap();
        assert_eq!(reply, Reply::message("add.reply", json!(42)));
        let message = Message::new("pong", ()).into_reply("ping").unwrap();
        assert_eq!(message, Reply::message("pong", json!(null)));
        let forward = Reply::Nothing.into_reply("x").unwrap();
        assert_eq!(forward, Reply::Nothing);
    }

    #[test]
    fn replies_decode_on_the_callers_side() {
        let packet = Packet::new(Uuid::new_v4(), 1, "add.reply", json!(42));
        assert_eq!(
            <u32 as IntoReply>::from_reply(packet.clone(), "add").unwrap(),
            42
        );
        let err = <String as IntoReply>::from_reply(packet.clone(), "add").unwrap_err();
        assert!(matches!(err, CallError::InvalidReply { .. }), "{err}");
        assert_eq!(
            <Reply as IntoReply>::from_reply(packet.clone(), "add").unwrap(),
            packet
        );
    }

    #[test]
    // The double borrow is what the generated code writes: it selects the
    // conversion by autoref, and is not needless there.
    #[allow(clippy::needless_borrow)]
    fn errors_travel_by_what_they_are() {
        let coded = HandlerError::new(ErrorCode::Busy, "later");
        assert_eq!((&&&ErrorWrap(coded.clone())).into_handler_error("m"), coded);

        #[derive(serde::Serialize)]
        enum Typed {
            Missing(String),
        }
        let typed = (&&&ErrorWrap(Typed::Missing("k".into()))).into_handler_error("take");
        assert_eq!(typed.code, ErrorCode::HandlerError);
        assert_eq!(typed.data, Some(json!({"Missing": "k"})));

        /// Display only: its text may tell internals.
        struct Secret;
        impl std::fmt::Display for Secret {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("password=hunter2 at /etc/app")
            }
        }
        let plain = (&&&ErrorWrap(Secret)).into_handler_error("login");
        assert_eq!(plain.code, ErrorCode::HandlerError);
        assert_eq!(plain.message, "`login` failed");
        assert_eq!(plain.data, None);
        assert_eq!(plain.detail(), Some("password=hunter2 at /etc/app"));
        let sent = plain.into_payload("login");
        assert!(!serde_json::to_string(&sent).unwrap().contains("hunter2"));
    }

    #[test]
    #[allow(clippy::needless_borrow)]
    fn the_typed_client_reads_errors_back_by_what_they_are() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        enum Typed {
            Missing(String),
        }
        let remote = |code, data| CallError::Remote {
            method: "take".into(),
            code,
            message: "m".into(),
            data,
            retry: None,
        };
        let typed = remote(ErrorCode::HandlerError, Some(json!({"Missing": "k"})));
        assert_eq!(
            (&&&ErrorDecode::<Typed>::new()).decode_error(typed.clone()),
            Ok(Typed::Missing("k".into()))
        );
        // Not the method's own error: the call's error, as it is.
        for other in [
            remote(ErrorCode::HandlerError, None),
            remote(ErrorCode::HandlerError, Some(json!("not a Typed"))),
            remote(ErrorCode::Busy, Some(json!({"Missing": "k"}))),
            CallError::lost("take"),
        ] {
            assert_eq!(
                (&&&ErrorDecode::<Typed>::new()).decode_error(other.clone()),
                Err(other)
            );
        }
        // A `HandlerError` method reads only `handler_error` packets as its
        // own; a request that was not run, or a panic, is the call's error.
        let own = (&&&ErrorDecode::<HandlerError>::new())
            .decode_error(remote(ErrorCode::HandlerError, None))
            .unwrap();
        assert_eq!(own, HandlerError::failed("m"));
        for code in [
            ErrorCode::Busy,
            ErrorCode::UnknownMethod,
            ErrorCode::InvalidPayload,
            ErrorCode::InvalidPacket,
            ErrorCode::Unavailable,
            ErrorCode::HandlerPanicked,
            ErrorCode::Unknown,
        ] {
            let error = remote(code, None);
            assert_eq!(
                (&&&ErrorDecode::<HandlerError>::new()).decode_error(error.clone()),
                Err(error)
            );
        }
        // A `Display`-only error cannot be read back.
        struct Opaque;
        assert!(
            (&&&ErrorDecode::<Opaque>::new())
                .decode_error(typed)
                .is_err()
        );
    }

    #[test]
    #[allow(clippy::needless_borrow)]
    fn errors_say_whether_to_retry_by_what_they_are() {
        struct Gone;
        impl crate::tasks::Retry for Gone {
            fn retry(&self) -> bool {
                false
            }
        }
        assert_eq!((&&&RetryOf(&Gone)).retry_of(), Some(false));
        assert_eq!((&&&RetryOf(&"plain")).retry_of(), None);
        let said = HandlerError::failed("x");
        assert_eq!((&&&RetryOf(&said)).retry_of(), None);
        let said = HandlerError::permanent("x");
        assert_eq!((&&&RetryOf(&said)).retry_of(), Some(false));
        let sent = with_retry(HandlerError::failed("x"), Some(false)).into_payload("m");
        assert_eq!(sent.retry, Some(false));
    }

    #[test]
    fn argument_decoding_names_the_method_and_argument() {
        let err = decode_whole::<u32>(json!("x"), "count").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidPayload);
        assert!(err.message.contains("`count`"), "{err}");
        let err = decode_object(json!([1]), "add", &["a", "b"]).unwrap_err();
        assert!(
            err.message.contains("`a`, `b`") && err.message.contains("an array"),
            "{err}"
        );
        let mut map = decode_object(json!({"a": 1}), "add", &["a", "b"]).unwrap();
        assert_eq!(decode_field::<u32>(&mut map, "a", "add").unwrap(), 1);
        assert_eq!(
            decode_field::<Option<u32>>(&mut map, "b", "add").unwrap(),
            None
        );
        let err = decode_field::<u32>(&mut map, "b", "add").unwrap_err();
        assert!(err.message.contains("argument `b`"), "{err}");
    }
}
