//! The packets of streams (PROTOCOL.md, "Streams"), on the read loop: an
//! open starts the stream's handler (`process_stream`); a frame (item,
//! credit, end, cancel) goes into its stream's state, with no task of its
//! own; a frame that breaks a rule ends its stream; a frame for a stream
//! this side does not know is dropped. Stream frames are never answered.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::dispatch::send_error;
use super::handler::{Origin, log_failure, panicked};
use super::reader::ReadLoop;
use crate::logging::{Escaped, PacketLog, Refusal};
use crate::packet::{ErrorCode, Packet, ReplyTo, StreamHeader};
use crate::protocol::{Context, HandlerError, Protocol, cleanup_margin};
use crate::service::REPLY_SUFFIX;
use crate::session::streams::Refused;
use crate::session::{Connection, packet_log, refusal_log, session_log};
use crate::stream::opener::{end_header, send_frame};
use crate::stream::state::{Closed, Consumer, End, Inbound, Outbound, StreamState};
use crate::stream::{CANCEL, CREDIT, END, ITEM, MAX_STREAM_CREDIT, StreamIo};
use crate::sync::lock;

impl<P: Protocol> ReadLoop<P> {
    /// Hands a stream packet to its stream (a frame) or starts one (an
    /// open).
    pub(super) async fn dispatch_stream(&self, packet: Packet, size: usize) {
        packet_log!(self.shared, "Received", packet);
        let Some(header) = packet.stream else {
            self.refuse_frame(&packet, "a stream frame without its `stream` field");
            return;
        };
        match header.stream() {
            Some(key) => self.on_frame(packet, header, key, size).await,
            None if crate::stream::is_frame_method(&packet.method) => {
                self.refuse_frame(&packet, "a stream frame that names no stream");
            }
            None if packet.is_reply() || packet.is_error() => {
                self.refuse_frame(&packet, "an open that is a reply or an error packet");
            }
            None => self.accept_open(packet, header.credit.unwrap_or(0)).await,
        }
    }

    /// Starts the stream a peer opened, granting `credit` output items,
    /// or refuses it (over the limits).
    async fn accept_open(&self, packet: Packet, credit: u64) {
        let key = packet.reply_address();
        if credit > MAX_STREAM_CREDIT {
            let message = format!("the open grants {credit} items, more than {MAX_STREAM_CREDIT}");
            self.refuse_open(
                &packet,
                ErrorCode::InvalidStream,
                message,
                Refusal::BrokenStreamRule,
            )
            .await;
            return;
        }
        let window = u64::from(self.shared.stream_window);
        let state = Arc::new(StreamState::new(
            key,
            &packet.method,
            false,
            Inbound::new(
                window,
                self.shared.stream_window_bytes,
                0,
                Consumer::NotTaken,
            ),
            Outbound::new(credit, Consumer::NotTaken),
            self.abort_handlers.child_token(),
        ));
        match self.shared.streams.insert(state.clone()) {
            Ok(()) => {}
            Err(Refused::Closed) => return,
            Err(Refused::Taken) => {
                let message = "a stream of this `peer` and `id` is open already, or they name \
                               this side's own stream"
                    .to_owned();
                self.refuse_open(
                    &packet,
                    ErrorCode::InvalidStream,
                    message,
                    Refusal::BrokenStreamRule,
                )
                .await;
                return;
            }
            Err(Refused::Full) => {
                let message = format!(
                    "{} streams already open on this connection",
                    self.streams_limit
                );
                self.refuse_open(&packet, ErrorCode::Busy, message, Refusal::Busy)
                    .await;
                return;
            }
        }
        session_log!(
            debug,
            self.shared,
            "stream `{}` #{} from {} accepted",
            Escaped::method(&packet.method),
            key.id,
            key.peer
        );
        // The open's `timeout_ms` limits the whole call, as for calls.
        let deadline = packet.timeout_ms.and_then(|ms| {
            let limit = Duration::from_millis(ms);
            Some((Instant::now().checked_add(limit)?, cleanup_margin(limit)))
        });
        self.start_stream_handler(packet, state, deadline).await;
    }

    /// Runs the handler of a stream here until it first waits, then as a
    /// task of its own, dropped when the stream is cancelled, its deadline
    /// passes or the connection closes.
    async fn start_stream_handler(
        &self,
        packet: Packet,
        state: Arc<StreamState>,
        deadline: Option<(Instant, Duration)>,
    ) {
        let timeout_ms = packet.timeout_ms;
        let mut work = Box::pin(run_stream_handler(
            self.protocol.clone(),
            self.handle(),
            packet,
            state.clone(),
            deadline,
            self.winding_down.clone(),
        ));
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if first.is_ready() {
            return;
        }
        let abort = state.abort.clone();
        // The open's own limit, as the end's reason says it.
        let limit = Duration::from_millis(timeout_ms.unwrap_or(0));
        tokio::spawn(async move {
            let gave_up = async {
                match deadline {
                    Some((deadline, _)) => sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let timed_out = tokio::select! {
                biased;
                () = abort.cancelled() => false,
                () = &mut work => false,
                () = gave_up => true,
            };
            if timed_out {
                state.end(End::Timeout(limit));
            }
            drop(work);
        });
    }

    /// Refuses an open with an error packet, logged as a refusal.
    async fn refuse_open(&self, packet: &Packet, code: ErrorCode, message: String, kind: Refusal) {
        refusal_log!(
            self.shared,
            kind,
            "stream `{}` refused: {code}: {message}",
            Escaped::method(&packet.method)
        );
        if kind == Refusal::BrokenStreamRule {
            crate::telemetry::stream_frame_refused("broken_rule");
        }
        let payload = HandlerError::new(code, message).into_payload(&packet.method);
        send_error(&self.handle(), payload, Some(packet.reply_address())).await;
    }

    /// A frame of the stream `key`.
    async fn on_frame(&self, packet: Packet, header: StreamHeader, key: ReplyTo, size: usize) {
        let Some(state) = self.shared.streams.get(key) else {
            self.unknown_stream(&packet, key);
            return;
        };
        let opener = state.opener;
        let outcome = match packet.method.as_str() {
            ITEM => match header.seq {
                Some(seq) => {
                    let mut flows = lock(&state.flows);
                    let pushed = flows.inbound.push(seq, packet.payload, size);
                    if let Ok(true) = pushed {
                        flows.inbound.wake();
                    }
                    drop(flows);
                    state.counters().received();
                    pushed.map(drop)
                }
                None => Err("stream.item without seq".to_owned()),
            },
            CREDIT => {
                let mut flows = lock(&state.flows);
                if opener && flows.outbound.producer == Consumer::Gone {
                    // Input credit to an opener that sends no input (an
                    // acceptor may grant it to every open): it says once
                    // that its input is over, `stream.end` of 0 items, so
                    // that a handler reading input is not left waiting.
                    drop(flows);
                    if let Some(end) = end_header(&state) {
                        send_frame(&self.handle(), END, end, Value::Null);
                    }
                    Ok(())
                } else {
                    flows.outbound.grant(header.credit.unwrap_or(0))
                }
            }
            END if !opener => match header.seq {
                Some(seq) => {
                    let mut flows = lock(&state.flows);
                    let finished = flows.inbound.finish(seq);
                    flows.inbound.wake();
                    finished
                }
                None => Err("stream.end without seq".to_owned()),
            },
            CANCEL if opener => {
                // The acceptor reads no more input: the call goes on.
                lock(&state.flows).outbound.close(Closed::Cancelled);
                Ok(())
            }
            CANCEL => {
                // The opener abandons the call: its handler is dropped.
                if state.end(End::Cancelled) {
                    self.shared.streams.remove(key);
                    state.abort.cancel();
                    session_log!(
                        debug,
                        self.shared,
                        "stream `{}` #{} cancelled by its opener",
                        Escaped::method(&state.method),
                        key.id
                    );
                }
                Ok(())
            }
            other => Err(format!(
                "`{}` is not a frame of this side's stream",
                Escaped::method(other)
            )),
        };
        if let Err(rule) = outcome {
            self.broken(&state, rule).await;
        }
    }

    /// A frame broke a rule of the protocol: its stream ends. The acceptor
    /// drops the handler and answers `invalid_stream`; the opener cancels
    /// with the code.
    async fn broken(&self, state: &StreamState, rule: String) {
        crate::telemetry::stream_frame_refused("broken_rule");
        refusal_log!(
            self.shared,
            Refusal::BrokenStreamRule,
            "stream `{}` #{} ended: the peer broke a rule: {}",
            Escaped::method(&state.method),
            state.key.id,
            Escaped::new(&rule, super::handler::LOG_ERROR_CHARS)
        );
        if !state.end(End::Broken(rule.clone())) {
            return;
        }
        self.shared.streams.remove(state.key);
        state.abort.cancel();
        let handle = self.handle();
        if state.opener {
            let mut packet = handle.packet(
                CANCEL,
                json!({"code": ErrorCode::InvalidStream.as_str(), "message": rule}),
            );
            packet.stream = Some(StreamHeader::frame(state.key));
            if let Err(e) = handle.send(packet).await {
                session_log!(debug, self.shared, "could not send stream.cancel: {e}");
            }
        } else {
            let payload =
                HandlerError::new(ErrorCode::InvalidStream, rule).into_payload(&state.method);
            send_error(&handle, payload, Some(state.key)).await;
        }
    }

    /// A frame for a stream this side does not know: dropped, at DEBUG for
    /// one that ended recently (a frame in flight when it ended), as a
    /// refusal otherwise.
    fn unknown_stream(&self, packet: &Packet, key: ReplyTo) {
        if self.shared.streams.ended_recently(key) {
            session_log!(
                debug,
                self.shared,
                "dropped a `{}` of stream #{}, which has ended",
                Escaped::method(&packet.method),
                key.id
            );
            return;
        }
        crate::telemetry::stream_frame_refused("unknown_stream");
        refusal_log!(
            self.shared,
            Refusal::UnknownStream,
            "dropped a `{}` for stream #{} of {}, which this side does not know",
            Escaped::method(&packet.method),
            key.id,
            key.peer
        );
    }

    /// A stream packet that is neither an open nor a frame.
    fn refuse_frame(&self, packet: &Packet, what: &str) {
        crate::telemetry::stream_frame_refused("broken_rule");
        refusal_log!(
            self.shared,
            Refusal::BrokenStreamRule,
            "dropped `{}`: {what}",
            Escaped::method(&packet.method)
        );
    }
}

/// Runs the handler of an accepted stream and sends its end: the reply
/// (`<method>.reply`, the handler's value) or an error packet, unless the
/// stream already ended otherwise (cancelled, broken, closed).
pub(crate) async fn run_stream_handler<P: Protocol>(
    protocol: Arc<P>,
    handle: Connection,
    packet: Packet,
    state: Arc<StreamState>,
    deadline: Option<(Instant, Duration)>,
    winding_down: CancellationToken,
) {
    let _accepted = Accepted {
        handle: &handle,
        state: &state,
    };
    let method = packet.method.clone();
    let reply_to = packet.reply_address();
    let ctx = Context::new(
        handle.clone(),
        packet.peer,
        packet.id,
        deadline,
        winding_down,
    )
    .with_meta(packet.meta.as_ref());
    let io = StreamIo::new(handle.clone(), state.clone());
    let span = tracing::debug_span!("stream", method = %Escaped::method(&method), id = reply_to.id);
    let started = crate::telemetry::TIMED.then(Instant::now);
    let work = ctx
        .clone()
        .scope(async move { protocol.process_stream(ctx, packet, io).await });
    let outcome = AssertUnwindSafe(tracing::Instrument::instrument(work, span))
        .catch_unwind()
        .await;
    if !state.end(End::Done) {
        return;
    }
    handle.shared.streams.remove(reply_to);
    let took = started.map(|at| at.elapsed()).unwrap_or_default();
    let code = match &outcome {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.code.as_str()),
        Err(_) => Some(ErrorCode::HandlerPanicked.as_str()),
    };
    crate::telemetry::handled(&method, took, code);
    session_log!(
        debug,
        handle.shared,
        "stream `{}` #{} ended",
        Escaped::method(&method),
        reply_to.id
    );
    let failure = match outcome {
        Ok(Ok(value)) => {
            let reply_method = format!("{method}{REPLY_SUFFIX}");
            match handle.send_new(reply_method, value, Some(reply_to)).await {
                Ok(()) | Err(crate::error::SendError::Closed) => return,
                Err(e) => (
                    HandlerError::failed(format!("the reply could not be sent: {e}")),
                    Origin::Server,
                ),
            }
        }
        Ok(Err(error)) => (error, Origin::Handler),
        Err(panic) => (panicked_stream(&handle, &method, panic), Origin::Server),
    };
    let full_logs = handle.shared.packet_log == PacketLog::Full;
    log_failure(&handle, &method, &failure.0, failure.1, full_logs);
    send_error(&handle, failure.0.into_payload(&method), Some(reply_to)).await;
}

fn panicked_stream(handle: &Connection, method: &str, panic: Box<dyn Any + Send>) -> HandlerError {
    panicked(handle, method, &*panic)
}

/// Takes an accepted stream out of the table however its handler ends
/// (dropped included), logging a handler dropped before its end.
struct Accepted<'a> {
    handle: &'a Connection,
    state: &'a StreamState,
}

impl Drop for Accepted<'_> {
    fn drop(&mut self) {
        let ended_here = self.state.end(End::Abandoned);
        self.handle.shared.streams.remove(self.state.key);
        let mut flows = lock(&self.state.flows);
        flows.inbound.give_up();
        flows.outbound.close(Closed::Over);
        let end = flows.end.as_ref().map_or("ended", End::label);
        drop(flows);
        if ended_here || end != "ended" {
            session_log!(
                debug,
                self.handle.shared,
                "handler of stream `{}` #{} dropped ({end})",
                Escaped::method(&self.state.method),
                self.state.key.id
            );
        }
    }
}
