//! The acceptor's side of a stream: [`StreamIo`], handed to
//! [`Protocol::process_stream`](crate::Protocol::process_stream), with the
//! [`Incoming`] input items and the [`Sink`] of output items.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde_json::Value;

use super::opener::{closed, send_frame, send_item};
use super::state::{Consumer, StreamState};
use super::{CANCEL, CREDIT, StreamError};
use crate::packet::StreamHeader;
use crate::session::Connection;
use crate::sync::lock;

/// A stream's two flows, as its handler sees them: take the
/// [`input`](Self::input) (a method that takes a stream) and the
/// [`output`](Self::output) (a method that returns one).
///
/// Taking the input grants the opener its first input credit; a handler
/// that never takes it reads none (an input item is then a broken rule).
/// The handler's return value is the call's reply, sent after the last
/// output item.
///
/// ```
/// use futures_util::StreamExt;
/// use stream_rpc::{Context, HandlerError, Packet, Protocol, Reply, StreamIo, Value, json};
///
/// struct Doubler;
///
/// impl Protocol for Doubler {
///     async fn process_message(&self, _: Context, packet: Packet) -> Result<Reply, HandlerError> {
///         Err(HandlerError::unknown_method(&packet.method))
///     }
///
///     async fn process_stream(
///         &self,
///         _: Context,
///         packet: Packet,
///         mut io: StreamIo,
///     ) -> Result<Value, HandlerError> {
///         if packet.method != "double" {
///             return Err(HandlerError::not_a_stream(&packet.method));
///         }
///         let (Some(mut input), Some(mut output)) = (io.input(), io.output()) else {
///             return Err(HandlerError::failed("taken twice"));
///         };
///         let mut count = 0;
///         while let Some(item) = input.next().await {
///             let n = item.as_i64().unwrap_or(0);
///             if output.send(json!(n * 2)).await.is_err() {
///                 break; // the opener went away
///             }
///             count += 1;
///         }
///         Ok(json!({"doubled": count}))
///     }
/// }
/// ```
pub struct StreamIo {
    conn: Connection,
    state: Arc<StreamState>,
    input_taken: bool,
    output_taken: bool,
}

impl fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamIo")
            .field("method", &self.state.method)
            .field("input_taken", &self.input_taken)
            .field("output_taken", &self.output_taken)
            .finish_non_exhaustive()
    }
}

impl StreamIo {
    pub(crate) fn new(conn: Connection, state: Arc<StreamState>) -> Self {
        StreamIo {
            conn,
            state,
            input_taken: false,
            output_taken: false,
        }
    }

    /// The input items, once: grants the opener its first credit (the
    /// [`stream_window`](crate::Limits::stream_window)).
    pub fn input(&mut self) -> Option<Incoming> {
        if std::mem::replace(&mut self.input_taken, true) {
            return None;
        }
        let grant = lock(&self.state.flows).inbound.take_flow();
        if let Some(more) = grant {
            let header = StreamHeader::frame(self.state.key).with_credit(more);
            send_frame(&self.conn, CREDIT, header, Value::Null);
        }
        Some(Incoming {
            conn: self.conn.clone(),
            state: self.state.clone(),
            done: false,
        })
    }

    /// The sender of output items, once.
    pub fn output(&mut self) -> Option<Sink> {
        if std::mem::replace(&mut self.output_taken, true) {
            return None;
        }
        lock(&self.state.flows).outbound.producer = Consumer::Taken;
        Some(Sink {
            conn: self.conn.clone(),
            state: self.state.clone(),
        })
    }

    /// The stream method.
    pub fn method(&self) -> &str {
        &self.state.method
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        let mut flows = lock(&self.state.flows);
        if !self.input_taken {
            flows.inbound.give_up();
        }
        if !self.output_taken && flows.outbound.producer == Consumer::NotTaken {
            flows.outbound.producer = Consumer::Gone;
        }
    }
}

/// The input items of a stream, as its handler reads them: `None` after
/// the opener's `stream.end` (or once the stream ended). Credit is granted
/// as items are taken. Dropping it before the end tells the opener to stop
/// sending (`stream.cancel`); the call goes on.
///
/// See [`StreamIo`] for an example.
pub struct Incoming {
    conn: Connection,
    state: Arc<StreamState>,
    done: bool,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("method", &self.state.method)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// The `seq` of the last input item received (0 before the first).
    pub fn last_seq(&self) -> u64 {
        lock(&self.state.flows).inbound.received
    }
}

impl Stream for Incoming {
    type Item = Value;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Value>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut flows = lock(&this.state.flows);
        if let Some((item, grant)) = flows.inbound.take() {
            drop(flows);
            if let Some(more) = grant {
                let header = StreamHeader::frame(this.state.key).with_credit(more);
                send_frame(&this.conn, CREDIT, header, Value::Null);
            }
            return Poll::Ready(Some(item));
        }
        if flows.inbound.drained() || flows.end.is_some() {
            this.done = true;
            return Poll::Ready(None);
        }
        flows.inbound.wait(cx);
        Poll::Pending
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let mut flows = lock(&self.state.flows);
        let over = flows.inbound.drained() || flows.end.is_some();
        flows.inbound.give_up();
        drop(flows);
        if !over {
            send_frame(
                &self.conn,
                CANCEL,
                StreamHeader::frame(self.state.key),
                Value::Null,
            );
        }
    }
}

/// Sends a stream's output items, from its handler.
///
/// [`send`](Self::send) waits for credit from the opener: a consumer that
/// stops taking items stops the producer here. See [`StreamIo`] for an
/// example.
pub struct Sink {
    conn: Connection,
    state: Arc<StreamState>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("method", &self.state.method)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Sends one output item, first waiting for credit. `Err` when the
    /// opener cancelled ([`StreamError::Cancelled`]) or the connection
    /// closed ([`StreamError::Disconnected`], with the items sent).
    ///
    /// Await it to the end: a send dropped while it waits for room in the
    /// connection's outgoing queue (after its credit was taken) leaves a
    /// gap in the items' `seq`, which the peer takes for a broken rule.
    pub async fn send(&mut self, item: Value) -> Result<(), StreamError> {
        send_item(&self.conn, &self.state, item).await
    }

    /// Resolves when no more items may be sent: the opener cancelled, or
    /// the connection closed. (A handler is also dropped then; this is for
    /// work it does apart from its own future.)
    pub async fn closed(&self) {
        closed(&self.state).await;
    }

    /// Items sent so far (the `seq` of the last one).
    pub fn sent(&self) -> u64 {
        lock(&self.state.flows).outbound.sent
    }
}
