//! Middleware: `tower` layers over both sides of a call.
//!
//! - **Serving side**: a call is a [`ServerCall`] (its [`Context`], with
//!   the request's [metadata](Context::meta), and its [`Packet`]: method and
//!   payload) and its answer a [`Reply`] or a [`HandlerError`].
//!   [`ProtocolService`] is a [`Protocol`] seen as a
//!   `tower::Service<ServerCall>`, and [`LayeredProtocol`] is a `Protocol`
//!   made of a stack of layers over a protocol: serve it as any other.
//! - **Calling side**: a call is a [`Call`] (method, payload, metadata,
//!   time limit) and its answer the reply [`Packet`] or a [`CallError`].
//!   [`CallService`] is a [`Caller`] seen as a `tower::Service<Call>`, and
//!   [`LayeredCaller`] is a `Caller` made of a stack of layers over a
//!   caller: typed clients ride it as any other caller, so they get the
//!   layers.
//!
//! tower's own layers compose on both sides: `Timeout`, `ConcurrencyLimit`,
//! `RateLimit`, `LoadShed`, `Retry` (enable the tower features you use in
//! your own `Cargo.toml`). Errors come back in this crate's terms: a
//! layer's [`HandlerError`] or [`CallError`] as it is; tower's time limit
//! as `handler_error` on the serving side and [`CallError::Timeout`] on
//! the calling side; tower's load shedding as `busy` (nothing was run) on
//! the serving side and [`CallError::NotSent`] with
//! [`SendError::NoRoom`] on the calling side; any other error as a
//! `handler_error` logged with its text, or [`CallError::Layer`].
//!
//! [`Tracing`] is a layer of this crate for both sides: a span per call,
//! and W3C trace context carried in the metadata across peers.
//!
//! ```
//! use std::time::Duration;
//! use stream_rpc::layer::LayeredProtocol;
//! use stream_rpc::{Context, HandlerError, Packet, Protocol, Reply};
//! use tower::ServiceBuilder;
//!
//! struct Echo;
//!
//! impl Protocol for Echo {
//!     async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
//!         Ok(Reply::message("echoed", packet.payload))
//!     }
//! }
//!
//! // At most 64 calls at once, the others refused `busy`, none longer
//! // than 5 s: serve it with `server.serve(protocol)`.
//! let protocol = LayeredProtocol::new(
//!     Echo,
//!     ServiceBuilder::new()
//!         .load_shed()
//!         .concurrency_limit(64)
//!         .timeout(Duration::from_secs(5)),
//! );
//! # let _ = protocol;
//! ```
//!
//! The ordering of tower's `ServiceBuilder` holds: the first layer added
//! is the outermost, the first to see a call.

use tokio::time::Instant;

use crate::error::{CallError, SendError};
use crate::packet::ErrorCode;
use crate::protocol::HandlerError;

#[cfg(doc)]
use crate::{Call, Caller, Context, Packet, Protocol, Reply};

mod client;
mod server;
mod trace;

pub use client::{CallService, LayeredCaller};
pub use server::{LayeredProtocol, ProtocolService, ServerCall};
pub use trace::{TraceParent, Tracing, TracingService};

/// The error type of tower's layers: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A future a layered service returns, boxed.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What a layer's error means on the serving side.
pub(crate) fn handler_error(error: BoxError) -> HandlerError {
    let error = match error.downcast::<HandlerError>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    if error.is::<tower::timeout::error::Elapsed>() {
        return HandlerError::failed("the handler took longer than this server's time limit")
            .with_detail("a time limit layer stopped the handler");
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return HandlerError::new(
            ErrorCode::Busy,
            "the server is at its limit of concurrent calls: nothing was run; try again later",
        );
    }
    HandlerError::failed("the call failed in a layer of the server").with_detail(error.to_string())
}

/// What a layer's error means on the calling side, for a call to `method`
/// made at `started`.
pub(crate) fn call_error(method: &str, error: BoxError, started: Instant) -> CallError {
    let error = match error.downcast::<CallError>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    if error.is::<tower::timeout::error::Elapsed>() {
        return CallError::Timeout {
            method: method.to_owned(),
            after: started.elapsed(),
        };
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        return CallError::NotSent {
            method: method.to_owned(),
            reason: SendError::NoRoom {
                waited: started.elapsed(),
            },
        };
    }
    CallError::Layer {
        method: method.to_owned(),
        reason: error.to_string(),
    }
}

/// What a layer's error means for a notification.
pub(crate) fn send_error(method: &str, error: BoxError, started: Instant) -> SendError {
    match call_error(method, error, started) {
        CallError::NotSent { reason, .. } => reason,
        CallError::Timeout { after, .. } => SendError::NoRoom { waited: after },
        other => SendError::Layer(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tower_errors_have_their_meaning_on_both_sides() {
        let started = Instant::now();
        let elapsed = || -> BoxError { Box::new(tower::timeout::error::Elapsed::new()) };
        let overloaded = || -> BoxError { Box::new(tower::load_shed::error::Overloaded::new()) };
        assert!(matches!(
            call_error("m", elapsed(), started),
            CallError::Timeout { .. }
        ));
        let shed = call_error("m", overloaded(), started);
        assert!(!shed.may_have_run(), "{shed}");
        let other = call_error("m", "nope".into(), started);
        assert!(other.may_have_run() && other.to_string().contains("nope"));
        let own = CallError::ConnectionLost { method: "m".into() };
        assert_eq!(call_error("m", Box::new(own.clone()), started), own);

        assert_eq!(handler_error(overloaded()).code, ErrorCode::Busy);
        assert!(handler_error(overloaded()).code.did_not_run());
        assert_eq!(handler_error(elapsed()).code, ErrorCode::HandlerError);
        let failed = handler_error("boom".into());
        assert_eq!(failed.detail(), Some("boom"));
        let own = HandlerError::new(ErrorCode::InvalidPayload, "x");
        assert_eq!(handler_error(Box::new(own.clone())), own);
        assert!(matches!(
            send_error("m", overloaded(), started),
            SendError::NoRoom { .. }
        ));
    }
}
