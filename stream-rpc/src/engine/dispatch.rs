//! Dispatch: each authentic packet completes the call it answers, is
//! dropped as the late reply of a call that gave up, or goes to the
//! protocol's handler (`handler.rs`), run on the read loop until it first
//! waits and as a task of its own after that. Plaintexts that are no packet
//! and requests the replay store could not check are answered here.

use std::task::Poll;
use std::time::Duration;

use serde_json::Value;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::handler::{LOG_ERROR_CHARS, run_handler};
use super::reader::ReadLoop;
use crate::logging::{Escaped, Refusal};
use crate::packet::{ERROR_METHOD, ErrorCode, ErrorPayload, Packet, ReplyTo};
use crate::protocol::{HandlerError, Protocol, cleanup_margin};
use crate::session::{CALL_CANCEL, Connection, packet_log, refusal_log, session_log};

impl<P: Protocol> ReadLoop<P> {
    pub(super) fn handle(&self) -> Connection {
        Connection::from_shared(self.shared.clone())
    }

    /// Hands a packet to the call it answers, to its stream or to the
    /// protocol. `size`: its plaintext's length.
    pub(super) async fn dispatch(&self, packet: Packet, size: usize) {
        // One byte's test for the others.
        if packet.method.as_bytes().first() == Some(&b'c') && packet.method == CALL_CANCEL {
            packet_log!(self.shared, "Received", packet);
            self.on_call_cancel(&packet);
            return;
        }
        // One test of an `Option` for the packets of streams (and of a
        // method's first byte for a frame without its `stream` field).
        if packet.stream.is_some() || crate::stream::is_frame_method(&packet.method) {
            self.dispatch_stream(packet, size).await;
            return;
        }
        if let Some(to) = packet.reply_to
            && to.peer == self.shared.own_id
        {
            if let Some(waiting) = self.shared.take_pending(to.id) {
                packet_log!(self.shared, "Received", packet);
                // The caller may have given up in the meantime; nothing to do then.
                let _ = waiting.send(packet);
                return;
            }
            // The end of a stream this side opened: the call's outcome.
            if !self.shared.streams.is_empty()
                && let Some(stream) = self.shared.streams.remove(to)
            {
                packet_log!(self.shared, "Received", packet);
                let answered = crate::stream::state::End::Answered(Box::new(packet));
                session_log!(
                    debug,
                    self.shared,
                    "stream `{}` #{} ended: {}",
                    Escaped::method(&stream.method),
                    to.id,
                    answered.label()
                );
                stream.end(answered);
                return;
            }
            if self.shared.gave_up_on(to.id) || self.shared.streams.ended_recently(to) {
                self.drop_late(&packet, to.id);
                return;
            }
        }
        packet_log!(self.shared, "Received", packet);
        // Replies and error packets are never answered with an error packet,
        // so two peers can never bounce errors back and forth.
        let answerable = !packet.is_reply() && !packet.is_error();
        if self.handlers.available_permits() == 0 {
            self.refuse_busy(&packet, answerable).await;
            return;
        }
        // A call says how long its caller waits: past that, the work is
        // dropped (counted from now, so the peers' clocks need not agree).
        // Its handler is told to wrap up a little before.
        let deadline = packet.timeout_ms.filter(|_| answerable).and_then(|ms| {
            let limit = Duration::from_millis(ms);
            Some((Instant::now().checked_add(limit)?, cleanup_margin(limit)))
        });
        self.start_handler(packet, deadline).await;
    }

    /// Drops the reply (or error packet) to `call`, one of this side's
    /// calls that already gave up (timed out, or dropped by its caller): it
    /// is not a new request (PROTOCOL.md §5).
    fn drop_late(&self, packet: &Packet, call: u64) {
        crate::telemetry::late_reply();
        packet_log!(self.shared, "Received", packet);
        session_log!(
            debug,
            self.shared,
            "dropped a late `{}`: its call {call} had already given up",
            Escaped::method(&packet.method),
        );
    }

    /// Refuses a packet that arrived with every handler slot taken: a
    /// request is answered `busy`.
    pub(super) async fn refuse_busy(&self, packet: &Packet, answerable: bool) {
        let message = format!(
            "{} handlers already running on this connection",
            self.handlers_limit
        );
        refusal_log!(
            self.shared,
            Refusal::Busy,
            "busy: {message}; `{}` refused",
            Escaped::method(&packet.method)
        );
        if answerable {
            let payload = HandlerError::new(ErrorCode::Busy, message).into_payload(&packet.method);
            send_error(&self.handle(), payload, Some(packet.reply_address())).await;
        }
    }

    /// Runs the handler of `packet` here until it first waits, then as a
    /// task of its own, dropped when `deadline` passes or the handlers are
    /// cancelled. `deadline` comes with how long before it the handler is
    /// told to wrap up.
    async fn start_handler(&self, packet: Packet, deadline: Option<(Instant, Duration)>) {
        // A request its caller waits for can be cancelled by it
        // (`call.cancel`), once its handler waits.
        let request = (!packet.is_reply() && !packet.is_error())
            .then(|| (packet.reply_address(), CancellationToken::new()));
        let mut work = Box::pin(run_handler(
            self.protocol.clone(),
            self.handle(),
            packet,
            deadline,
            self.winding_down.clone(),
            request.as_ref().map(|(_, token)| token.clone()),
        ));
        // Most handlers finish without waiting for anything: run them here,
        // without a task, a permit held or a cancellation watch of their own.
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if first.is_ready() {
            return;
        }
        // It waits: from here on it holds one of the handler slots. Only the
        // read loop takes slots (tasks give theirs back), and one was free
        // in `dispatch`, so this succeeds.
        let permit = self.handlers.clone().try_acquire_owned().ok();
        let abort = self.abort_handlers.clone();
        let registered = request.map(|(request, token)| self.running.register(request, token));
        tokio::spawn(async move {
            let _permit = permit;
            let _registered = registered;
            let gave_up = async {
                match deadline {
                    Some((deadline, _)) => sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            // Dropping `work` unfinished logs why.
            tokio::select! {
                biased;
                () = abort.cancelled() => {}
                () = work => {}
                () = gave_up => {}
            }
        });
    }

    /// Answers an authentic plaintext that is not a valid packet with an
    /// `invalid_packet` error, addressed to it when its `peer` and `id` can
    /// be read, unless it looks like a reply or an error packet.
    pub(super) async fn reject_invalid(&self, plain: &[u8], error: &serde_json::Error) {
        self.log_invalid(error);
        let value: Value = serde_json::from_slice(plain).unwrap_or(Value::Null);
        let is_reply = value.get("reply_to").is_some_and(|v| !v.is_null());
        let is_error = value.get("method").and_then(Value::as_str) == Some(ERROR_METHOD);
        if is_reply || is_error {
            return;
        }
        let peer = value
            .get("peer")
            .and_then(Value::as_str)
            .and_then(|text| Uuid::parse_str(text).ok());
        let id = value.get("id").and_then(Value::as_u64);
        let reply_to = peer.zip(id).map(|(peer, id)| ReplyTo { peer, id });
        let method = value.get("method").and_then(Value::as_str);
        let payload = ErrorPayload {
            code: ErrorCode::InvalidPacket,
            message: format!("packet is not valid: {error}"),
            method: method.map(str::to_owned),
            data: None,
            retry: None,
        };
        send_error(&self.handle(), payload, reply_to).await;
    }

    /// Logs a plaintext that is not a packet. serde's messages quote the
    /// plaintext: shown only with full packet logs; by default, where the
    /// error is.
    fn log_invalid(&self, error: &serde_json::Error) {
        if self.full_logs {
            let text = error.to_string();
            refusal_log!(
                self.shared,
                Refusal::InvalidPacket,
                "received an invalid packet: {}",
                Escaped::new(&text, LOG_ERROR_CHARS)
            );
        } else {
            refusal_log!(
                self.shared,
                Refusal::InvalidPacket,
                "received an invalid packet ({}; its text is logged with {}=full)",
                serde_place(error),
                crate::config::ENV_LOG_PACKETS
            );
        }
    }

    /// Answers a request whose token the replay store could not check with
    /// an `unavailable` error; a reply, an error packet or a plaintext that
    /// is no packet gets nothing.
    pub(super) async fn answer_unchecked(&self, plain: &[u8]) {
        let Ok(packet) = Packet::from_json(plain) else {
            return;
        };
        if packet.is_reply() || packet.is_error() {
            return;
        }
        let payload = HandlerError::new(
            ErrorCode::Unavailable,
            "replay protection is unavailable here for now: nothing was run; \
             try again later or on another server",
        )
        .into_payload(&packet.method);
        send_error(&self.handle(), payload, Some(packet.reply_address())).await;
    }
}

/// Sends an error packet; failures to send it are only logged.
pub(super) async fn send_error(
    handle: &Connection,
    payload: ErrorPayload,
    reply_to: Option<ReplyTo>,
) {
    let body = serde_json::to_value(&payload).unwrap_or(Value::Null);
    if let Err(e) = handle.send_new(ERROR_METHOD, body, reply_to).await {
        session_log!(debug, handle.shared, "could not send an error packet: {e}");
    }
}

/// Where in the plaintext serde found fault, without its message (which
/// quotes the plaintext).
fn serde_place(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match error.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Data => "JSON that is not a packet",
        Category::Eof => "JSON cut short",
    };
    match error.line() {
        0 => kind.to_owned(),
        line => format!("{kind}, at line {line} column {}", error.column()),
    }
}
