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
//! In `Result<R, E>`, `E` is either a [`HandlerError`] (its code is kept) or
//! any type that implements `Display` (sent as `handler_error` with its text).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::CallError;
use crate::packet::Packet;
use crate::protocol::{HandlerError, Reply};

/// A reply with a method name of the handler's choosing and a typed payload,
/// like the seed's server answering `ping` with `pong`.
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

/// The types a service method can take as arguments.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of a stream_rpc service method",
    label = "arguments must implement `Serialize` and `Deserialize` (owned, no borrowed data)"
)]
pub trait Argument: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> Argument for T {}

/// The error types of `Result`-returning service methods.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error of a stream_rpc service method",
    label = "the error must implement `Display` (or be a `stream_rpc::HandlerError`)"
)]
pub trait ErrorType {
    /// The error as sent to the peer: `handler_error` with the error's text.
    #[doc(hidden)]
    fn to_handler_error(&self) -> HandlerError;
}

impl<E: std::fmt::Display> ErrorType for E {
    fn to_handler_error(&self) -> HandlerError {
        HandlerError::failed(self.to_string())
    }
}

/// Support for the generated code; not a public API.
#[doc(hidden)]
pub mod __private {
    use serde_json::{Map, Value};

    pub use super::{Argument, ErrorType, IntoReply};
    use crate::error::{CallError, SendError};
    use crate::protocol::HandlerError;
    pub use serde_json;

    /// Checks at compile time, spanned on the user's type.
    pub fn assert_argument<T: Argument>() {}
    /// Checks at compile time, spanned on the user's type.
    pub fn assert_reply<T: IntoReply>() {}
    /// Checks at compile time, spanned on the user's type.
    pub fn assert_error<E: ErrorType>() {}

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
    pub fn encode_argument<T: Argument>(value: &T) -> Result<Value, CallError> {
        serde_json::to_value(value).map_err(|e| CallError::Send(SendError::Encode(e.to_string())))
    }

    /// A new empty payload object.
    pub fn new_object() -> Map<String, Value> {
        Map::new()
    }

    /// Encodes one of several arguments into the payload object.
    pub fn insert_argument<T: Argument>(
        object: &mut Map<String, Value>,
        key: &str,
        value: &T,
    ) -> Result<(), CallError> {
        object.insert(key.to_owned(), encode_argument(value)?);
        Ok(())
    }

    /// Picks the conversion of a handler's error: a [`HandlerError`] keeps
    /// its code, anything else that is `Display` becomes `handler_error`.
    /// Called as `(&&ErrorWrap(e)).into_handler_error()`.
    pub struct ErrorWrap<E>(pub E);

    /// The preferred conversion, for [`HandlerError`] itself.
    pub trait ViaHandlerError {
        /// Converts.
        fn into_handler_error(self) -> HandlerError;
    }

    impl ViaHandlerError for &&ErrorWrap<HandlerError> {
        fn into_handler_error(self) -> HandlerError {
            self.0.clone()
        }
    }

    /// The fallback conversion, for any `Display` error. The bound sits on
    /// the method, not the impl, so that a wrong error type fails the
    /// `ErrorType` check once instead of failing method lookup.
    pub trait ViaDisplay<E> {
        /// Converts.
        fn into_handler_error(self) -> HandlerError
        where
            E: ErrorType;
    }

    impl<E> ViaDisplay<E> for &ErrorWrap<E> {
        fn into_handler_error(self) -> HandlerError
        where
            E: ErrorType,
        {
            self.0.to_handler_error()
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
    fn errors_keep_a_handler_errors_code_and_display_anything_else() {
        let coded = HandlerError::new(ErrorCode::Busy, "later");
        assert_eq!((&&ErrorWrap(coded.clone())).into_handler_error(), coded);
        let plain = (&&ErrorWrap("disk full")).into_handler_error();
        assert_eq!(plain, HandlerError::failed("disk full"));
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
