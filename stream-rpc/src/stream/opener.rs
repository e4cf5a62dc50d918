//! The opener's side of a stream: [`RawStream`] (the output items, then the
//! end) and [`ItemSender`] (the input items).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use serde_json::Value;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::state::{Closed, Consumer, End, Inbound, Outbound, StreamState, end_error};
use super::{CANCEL, CREDIT, END, ITEM, MAX_STREAM_CREDIT, StreamError, StreamOptions};
use crate::error::{CallError, SendError};
use crate::packet::{Packet, StreamHeader};
use crate::session::{Connection, deadline_in, session_log, within};
use crate::sync::lock;

/// Opens a stream on `conn`: registers it, then sends the open.
pub(crate) async fn open_on(
    conn: &Connection,
    method: &str,
    payload: Value,
    options: StreamOptions,
) -> Result<RawStream, CallError> {
    let closed = || CallError::not_sent(method, SendError::Closed);
    if conn.is_closed() {
        return Err(closed());
    }
    let shared = &conn.shared;
    let window = options
        .window
        .map_or(u64::from(shared.stream_window), u64::from)
        .min(MAX_STREAM_CREDIT);
    let mut packet = conn.packet(method, payload);
    packet.stream = Some(StreamHeader::open(window));
    packet.timeout_ms = options.timeout.map(millis);
    packet.meta = (!options.meta.is_empty()).then(|| options.meta.clone());
    let key = packet.reply_address();
    let producer = if options.input {
        Consumer::Taken
    } else {
        Consumer::Gone
    };
    let state = Arc::new(StreamState::new(
        key,
        method,
        true,
        Inbound::new(window, shared.stream_window_bytes, window, Consumer::Taken),
        Outbound::new(0, producer),
        CancellationToken::new(),
    ));
    shared.streams.insert(state.clone()).map_err(|_| closed())?;
    // Until the open is queued, giving up (an error, or this future
    // dropped while it waits for room) takes the stream out again.
    let unsent = Unsent {
        conn,
        state: &state,
    };
    let limit = shared.call_timeout;
    let sent = match within(deadline_in(limit), conn.send(packet)).await {
        Ok(sent) => sent,
        Err(_) => Err(SendError::NoRoom { waited: limit }),
    };
    if let Err(e) = sent {
        return Err(CallError::not_sent(method, e));
    }
    std::mem::forget(unsent);
    session_log!(
        debug,
        shared,
        "stream `{}` #{} opened",
        crate::logging::Escaped::method(method),
        key.id
    );
    Ok(RawStream::new(conn.clone(), state, &options))
}

/// A stream registered whose open is not queued yet: dropped, it takes
/// the stream out of the connection's table.
struct Unsent<'a> {
    conn: &'a Connection,
    state: &'a Arc<StreamState>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.conn.shared.streams.remove(self.state.key);
        self.state.end(End::Abandoned);
    }
}

/// A duration in whole milliseconds, rounded up.
fn millis(limit: Duration) -> u64 {
    u64::try_from(limit.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// An open stream, seen from the side that opened it: the output items
/// (JSON), then its end. `None` after the last item is a clean end (the
/// reply came: [`finish`](Self::finish) gives it); an end for any other
/// reason is one `Err` ([`StreamError`]), then `None`.
///
/// Dropping it cancels the stream (`stream.cancel`): the acceptor drops
/// its handler. Items are taken from a buffer the connection fills; credit
/// for more is granted as they are taken, so a consumer that stops taking
/// stops its producer.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use stream_rpc::{Caller, Connection, StreamOptions, json};
///
/// # async fn run(connection: Connection) -> Result<(), Box<dyn std::error::Error>> {
/// let mut stream = connection
///     .open_stream("watch_stats", json!({"every_ms": 100}), StreamOptions::new())
///     .await?;
/// while let Some(item) = stream.next().await {
///     println!("{}", item?);
/// }
/// # Ok(())
/// # }
/// ```
pub struct RawStream {
    conn: Connection,
    state: Arc<StreamState>,
    input: Option<ItemSender>,
    /// The whole stream's limit.
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    /// The limit between two items: counted from when the consumer asks
    /// for one and none is there, so the consumer's own time between two
    /// polls is not the producer's.
    item_timer: Option<(Pin<Box<Sleep>>, Duration)>,
    /// Whether the item timer runs (it starts on the first wait after an
    /// item was handed out).
    item_timer_armed: bool,
    /// Set once the end was given out.
    done: bool,
    span: tracing::Span,
}

impl fmt::Debug for RawStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawStream")
            .field("method", &self.state.method)
            .field("id", &self.state.key.id)
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

impl RawStream {
    fn new(conn: Connection, state: Arc<StreamState>, options: &StreamOptions) -> Self {
        let timer = |limit: Duration| {
            (
                Box::pin(tokio::time::sleep_until(deadline_in(limit))),
                limit,
            )
        };
        let input = options.input.then(|| ItemSender {
            conn: conn.clone(),
            state: state.clone(),
            finished: false,
        });
        let span = tracing::debug_span!("stream", method = &*state.method, id = state.key.id);
        RawStream {
            conn,
            state,
            input,
            deadline: options.timeout.map(timer),
            item_timer: options.item_timeout.map(timer),
            item_timer_armed: true,
            done: false,
            span,
        }
    }

    /// The sender of the input items, once, when the stream was opened
    /// with [`StreamOptions::with_input`].
    pub fn input(&mut self) -> Option<ItemSender> {
        self.input.take()
    }

    /// The `seq` of the last output item received (0 before the first):
    /// after [`StreamError::Disconnected`], where a resumed stream starts.
    pub fn last_seq(&self) -> u64 {
        lock(&self.state.flows).inbound.received
    }

    /// The open's request number (the stream's `id` on the wire).
    pub fn id(&self) -> u64 {
        self.state.key.id
    }

    /// Waits for the end of the call and gives its reply (`<method>.reply`,
    /// whose payload is the method's return value). Output items not yet
    /// taken are dropped (and credit granted for the rest, so that the
    /// acceptor can finish).
    pub async fn finish(mut self) -> Result<Packet, StreamError> {
        while let Some(next) = self.next().await {
            next?;
        }
        let mut flows = lock(&self.state.flows);
        match flows.end.replace(End::Done) {
            Some(End::Answered(reply)) if !reply.is_error() => Ok(*reply),
            Some(end) => {
                let error = end_error(&self.state.method, &end, flows.inbound.received);
                flows.end = Some(end);
                Err(error.unwrap_or(StreamError::Cancelled))
            }
            None => Err(StreamError::Cancelled),
        }
    }

    /// Cancels the stream: the same as dropping it.
    pub fn cancel(self) {}

    /// The stream method.
    pub fn method(&self) -> &str {
        &self.state.method
    }

    /// Cancels the stream, keeping the handle (which then ends).
    pub(super) fn stop(&self) {
        self.abandon(End::Abandoned);
    }

    /// Grants `more` output items.
    fn grant(&self, more: u64) {
        let header = StreamHeader::frame(self.state.key).with_credit(more);
        send_frame(&self.conn, CREDIT, header, Value::Null);
    }

    /// The stream's time limit passed: it ends `Timeout` and is cancelled.
    fn time_out(&mut self, limit: Duration) -> Poll<Option<Result<Value, StreamError>>> {
        self.abandon(End::Timeout(limit));
        self.done = true;
        Poll::Ready(Some(Err(StreamError::Timeout { after: limit })))
    }

    /// Ends the stream here with `end` and cancels it on the wire, unless
    /// it already ended.
    fn abandon(&self, end: End) {
        let label = end.label();
        if self.state.end(end) {
            session_log!(
                debug,
                self.conn.shared,
                "stream `{}` #{} ended here: {label}",
                crate::logging::Escaped::method(&self.state.method),
                self.state.key.id
            );
            self.conn.shared.streams.remove(self.state.key);
            send_frame(
                &self.conn,
                CANCEL,
                StreamHeader::frame(self.state.key),
                Value::Null,
            );
        }
    }
}

/// Whether a timer fired.
fn fired(
    timer: &mut Option<(Pin<Box<Sleep>>, Duration)>,
    cx: &mut Context<'_>,
) -> Option<Duration> {
    let (sleep, limit) = timer.as_mut()?;
    sleep.as_mut().poll(cx).is_ready().then_some(*limit)
}

impl Stream for RawStream {
    type Item = Result<Value, StreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let _entered = this.span.clone().entered();
        {
            let mut flows = lock(&this.state.flows);
            if let Some((item, grant)) = flows.inbound.take() {
                drop(flows);
                if let Some(more) = grant {
                    this.grant(more);
                }
                this.item_timer_armed = false;
                return Poll::Ready(Some(Ok(item)));
            }
            if let Some(end) = &flows.end {
                let error = end_error(&this.state.method, end, flows.inbound.received);
                this.done = true;
                return Poll::Ready(error.map(Err));
            }
            flows.inbound.wait(cx);
        }
        if !this.item_timer_armed {
            this.item_timer_armed = true;
            if let Some((sleep, limit)) = &mut this.item_timer {
                sleep.as_mut().reset(deadline_in(*limit));
            }
        }
        if let Some(limit) =
            fired(&mut this.deadline, cx).or_else(|| fired(&mut this.item_timer, cx))
        {
            return this.time_out(limit);
        }
        Poll::Pending
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        self.abandon(End::Abandoned);
    }
}

/// Sends the input items of a stream opened with
/// [`StreamOptions::with_input`] (from [`RawStream::input`]).
///
/// [`send`](Self::send) waits for credit from the acceptor; dropping the
/// sender, or [`finish`](Self::finish), ends the input (`stream.end`).
///
/// ```no_run
/// use stream_rpc::{Caller, Connection, StreamOptions, json};
///
/// # async fn run(connection: Connection) -> Result<(), Box<dyn std::error::Error>> {
/// let mut stream = connection
///     .open_stream("upload", json!({}), StreamOptions::new().window(0).with_input())
///     .await?;
/// let mut input = stream.input().expect("opened with input");
/// for chunk in ["a", "b", "c"] {
///     input.send(json!(chunk)).await?;
/// }
/// input.finish().await?;
/// let reply = stream.finish().await?;
/// println!("{}", reply.payload);
/// # Ok(())
/// # }
/// ```
pub struct ItemSender {
    conn: Connection,
    state: Arc<StreamState>,
    finished: bool,
}

impl fmt::Debug for ItemSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemSender")
            .field("method", &self.state.method)
            .field("id", &self.state.key.id)
            .finish_non_exhaustive()
    }
}

impl ItemSender {
    /// Sends one input item, first waiting for credit. `Err` once the
    /// acceptor no longer reads input or the call ended
    /// ([`StreamError::Cancelled`]), or the connection closed.
    ///
    /// Await it to the end: a send dropped while it waits for room in the
    /// connection's outgoing queue (after its credit was taken) leaves a
    /// gap in the items' `seq`, which the peer takes for a broken rule.
    pub async fn send(&mut self, item: Value) -> Result<(), StreamError> {
        send_item(&self.conn, &self.state, item).await
    }

    /// Ends the input: `stream.end`, saying how many items were sent.
    pub async fn finish(mut self) -> Result<(), StreamError> {
        self.finished = true;
        let header = end_header(&self.state).ok_or(StreamError::Cancelled)?;
        let mut packet = self.conn.packet(END, Value::Null);
        packet.stream = Some(header);
        self.conn
            .send(packet)
            .await
            .map_err(|e| send_failed(&self.state, e))
    }

    /// Resolves once no more input may be sent: the acceptor cancelled the
    /// input, the call ended, or the connection closed.
    pub async fn closed(&self) {
        closed(&self.state).await;
    }

    /// How many input items were sent.
    pub fn sent(&self) -> u64 {
        lock(&self.state.flows).outbound.sent
    }

    /// Cancels the whole call (`stream.cancel`) instead of ending the
    /// input: the input cannot go on (an item could not be encoded), and
    /// the method must not answer on part of it.
    pub(crate) fn cancel_call(mut self, reason: String) {
        self.finished = true;
        let sent = self.sent();
        if self.state.end(End::InputFailed { sent, reason }) {
            self.conn.shared.streams.remove(self.state.key);
            send_frame(
                &self.conn,
                CANCEL,
                StreamHeader::frame(self.state.key),
                Value::Null,
            );
        }
    }
}

impl Drop for ItemSender {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(header) = end_header(&self.state) {
            let mut packet = self.conn.packet(END, Value::Null);
            packet.stream = Some(header);
            self.conn.send_soon(packet);
        }
    }
}

/// The `stream.end` frame's header, and the flow closed; `None` when it
/// was already closed.
pub(crate) fn end_header(state: &StreamState) -> Option<StreamHeader> {
    let mut flows = lock(&state.flows);
    if flows.outbound.closed.is_some() {
        return None;
    }
    let seq = flows.outbound.sent;
    flows.outbound.close(Closed::Over);
    Some(StreamHeader::frame(state.key).with_seq(seq))
}

/// Waits until no more may be sent on `state`'s outbound flow.
pub(crate) async fn closed(state: &StreamState) {
    std::future::poll_fn(|cx| lock(&state.flows).outbound.poll_closed(cx).map(|_| ())).await;
}

/// Sends one item of `state`'s outbound flow once there is credit.
pub(crate) async fn send_item(
    conn: &Connection,
    state: &StreamState,
    item: Value,
) -> Result<(), StreamError> {
    let mut waited = false;
    let seq = std::future::poll_fn(|cx| lock(&state.flows).outbound.poll_seq(cx, &mut waited))
        .await
        .map_err(|closed| state.closed_error(closed))?;
    if waited {
        crate::telemetry::credit_wait();
    }
    let header = StreamHeader::frame(state.key).with_seq(seq);
    conn.send_stream_frame(ITEM, item, header)
        .await
        .map_err(|e| send_failed(state, e))?;
    state.counters().sent();
    Ok(())
}

/// The error of a frame of `state` that could not be sent.
fn send_failed(state: &StreamState, error: SendError) -> StreamError {
    match error {
        SendError::Closed => state.closed_error(Closed::Disconnected),
        other => StreamError::Call(CallError::not_sent(&state.method, other)),
    }
}

/// Sends a frame of a stream without waiting (from `Drop` or `poll`).
pub(crate) fn send_frame(conn: &Connection, method: &str, header: StreamHeader, payload: Value) {
    let mut packet = conn.packet(method, payload);
    packet.stream = Some(header);
    conn.send_soon(packet);
}
