//! Running one handler: [`Protocol::process_message`] under its
//! [`Context`] (also set as the task's current one, for
//! [`Context::current`]), its reply or error sent back, and its outcome
//! counted and logged.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dispatch::send_error;
use crate::config::ENV_LOG_PACKETS;
use crate::error::SendError;
use crate::logging::PacketLog;
use crate::logging::{Escaped, Refusal};
use crate::packet::{ErrorCode, Packet, ReplyTo};
use crate::protocol::{Context, HandlerError, Protocol, Reply};
use crate::session::{Connection, refusal_log, session_log};

/// The most characters of an error message (or a panic's) a log line shows.
pub(super) const LOG_ERROR_CHARS: usize = 512;

/// Runs one handler to completion and sends what it returns. `deadline`
/// is when its caller gives up, and how long before it the handler is told
/// to wrap up.
pub(super) async fn run_handler<P: Protocol>(
    protocol: Arc<P>,
    handle: Connection,
    packet: Packet,
    deadline: Option<(Instant, Duration)>,
    winding_down: CancellationToken,
    request: Option<CancellationToken>,
) {
    let mut unfinished = Unfinished {
        handle: &handle,
        method: packet.method.clone(),
        deadline: deadline.map(|(at, _)| at),
        armed: true,
    };
    let ctx = Context::new(
        handle.clone(),
        packet.peer,
        packet.id,
        deadline,
        winding_down,
    )
    .with_meta(packet.meta.as_ref())
    .with_request_token(request);
    answer(protocol, &handle, ctx, packet, &unfinished.method).await;
    unfinished.armed = false;
}

/// Logs that a handler was dropped before it finished (its caller gave up,
/// or the session closed) when its future is dropped before the end.
struct Unfinished<'a> {
    handle: &'a Connection,
    method: String,
    deadline: Option<Instant>,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self
            .deadline
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            session_log!(
                info,
                self.handle.shared,
                "handler of `{}` dropped: its caller has given up (the call's time limit passed)",
                Escaped::method(&self.method)
            );
        } else {
            session_log!(
                warn,
                self.handle.shared,
                "handler of `{}` cancelled: the session closed",
                Escaped::method(&self.method)
            );
        }
    }
}

/// Where a failure to answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The handler returned it: the method's own answer (or the protocol's
    /// refusal of the request).
    Handler,
    /// This side failed: the handler panicked, or its reply could not be
    /// sent.
    Server,
}

/// Runs the handler of `packet` under `ctx` and sends its reply or error.
async fn answer<P: Protocol>(
    protocol: Arc<P>,
    handle: &Connection,
    ctx: Context,
    packet: Packet,
    method: &str,
) {
    // A reply or an error packet is not answered: what its handler returns
    // starts the next exchange instead (the conversation style of
    // PROTOCOL.md §5), and its failures are only logged.
    let answerable = !packet.is_reply() && !packet.is_error();
    let reply_to = answerable.then(|| packet.reply_address());
    let full_logs = handle.shared.packet_log == PacketLog::Full;
    let error_text = packet
        .is_error()
        .then(|| error_packet_text(&packet, full_logs));
    let started = crate::telemetry::TIMED.then(Instant::now);
    // Inside the scope also the part of `process_message` that runs before
    // it returns its future (a hand-written protocol's), sees its context.
    let work = ctx
        .clone()
        .scope(async move { protocol.process_message(ctx, packet).await });
    let outcome = AssertUnwindSafe(work).catch_unwind().await;
    let took = started.map(|at| at.elapsed()).unwrap_or_default();
    let code = match &outcome {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.code.as_str()),
        Err(_) => Some(ErrorCode::HandlerPanicked.as_str()),
    };
    crate::telemetry::handled(method, took, code);
    let (failure, origin) = match outcome {
        Ok(Ok(reply)) => match send_reply(handle, reply, reply_to).await {
            None => return,
            Some(failure) => (failure, Origin::Server),
        },
        Ok(Err(error)) => (error, Origin::Handler),
        Err(panic) => (panicked(handle, method, &*panic), Origin::Server),
    };
    match error_text {
        Some(text) if failure.code == ErrorCode::UnknownMethod => refusal_log!(
            handle.shared,
            Refusal::UnknownMethod,
            "dropped an error packet that answers no pending call (no `error` handler): {}",
            Escaped::new(&text, LOG_ERROR_CHARS)
        ),
        _ => log_failure(handle, method, &failure, origin, full_logs),
    }
    if reply_to.is_some() {
        send_error(handle, failure.into_payload(method), reply_to).await;
    }
}

/// What an incoming error packet says, for the log: its payload only with
/// full packet logs, its code always.
fn error_packet_text(packet: &Packet, full_logs: bool) -> String {
    if full_logs {
        packet.payload.to_string()
    } else {
        let code = packet
            .error()
            .map_or(ErrorCode::Unknown, |error| error.code);
        format!("code {code}; its payload is logged with {ENV_LOG_PACKETS}=full")
    }
}

/// Sends what a handler returned; the failure to report when it could not
/// be sent (a closed session is no failure: nobody waits any more).
async fn send_reply(
    handle: &Connection,
    reply: Reply,
    reply_to: Option<ReplyTo>,
) -> Option<HandlerError> {
    let sent = match reply {
        Reply::Nothing => return None,
        Reply::Message { method, payload } => handle.send_new(method, payload, reply_to).await,
        Reply::Forward(mut forwarded) => {
            forwarded.reply_to = reply_to;
            handle.send(forwarded).await
        }
    };
    match sent {
        Ok(()) | Err(SendError::Closed) => None,
        Err(e) => Some(HandlerError::failed(format!(
            "the reply could not be sent: {e}"
        ))),
    }
}

/// Logs the panic of the handler of `method`; the error the peer is sent.
pub(super) fn panicked(
    handle: &Connection,
    method: &str,
    panic: &(dyn Any + Send),
) -> HandlerError {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    session_log!(
        error,
        handle.shared,
        "handler of `{}` panicked: {}",
        Escaped::method(method),
        Escaped::new(&detail, LOG_ERROR_CHARS)
    );
    HandlerError::new(
        ErrorCode::HandlerPanicked,
        format!("the handler of `{method}` panicked"),
    )
}

/// Logs that the handler of `method` failed, escaped:
/// - a `handler_error` the handler returned without a
///   [`detail`](HandlerError::detail) is the method's own answer (a typed
///   error, such as a validation failure): DEBUG, without its message or
///   data, which may quote what the peer sent;
/// - `unknown_method` is a refusal, logged at most once a second;
/// - anything else at WARNING: failures of this side, a detail the
///   handler left for the log, and the protocol's other refusals (the
///   message of `invalid_payload`, serde's text quoting the payload, only
///   with full packet logs).
pub(super) fn log_failure(
    handle: &Connection,
    method: &str,
    failure: &HandlerError,
    origin: Origin,
    full_logs: bool,
) {
    let shown = Escaped::method(method);
    let code = failure.code;
    if code == ErrorCode::UnknownMethod {
        let message = Escaped::new(&failure.message, LOG_ERROR_CHARS);
        refusal_log!(
            handle.shared,
            Refusal::UnknownMethod,
            "`{shown}` failed: {code}: {message}"
        );
        return;
    }
    if origin == Origin::Handler && code == ErrorCode::HandlerError && failure.detail().is_none() {
        session_log!(
            debug,
            handle.shared,
            "`{shown}` answered with its own error ({code}; its message and data are in the error packet, logged with {ENV_LOG_PACKETS}=full)"
        );
        return;
    }
    let message = if code == ErrorCode::InvalidPayload && !full_logs {
        format_args!("its text is logged with {ENV_LOG_PACKETS}=full").to_string()
    } else {
        Escaped::new(&failure.message, LOG_ERROR_CHARS).to_string()
    };
    match failure.detail() {
        Some(detail) => session_log!(
            warn,
            handle.shared,
            "`{shown}` failed: {code}: {message} ({})",
            Escaped::new(detail, LOG_ERROR_CHARS)
        ),
        None => session_log!(warn, handle.shared, "`{shown}` failed: {code}: {message}"),
    }
}
