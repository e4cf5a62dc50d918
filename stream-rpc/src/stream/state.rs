//! The state of one stream, shared by the read loop (which pushes items,
//! credit and the end into it) and the handles of its two flows (which
//! take items and credit out of it). One lock per stream, held for a few
//! field updates at a time, never across an await.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{MAX_STREAM_CREDIT, StreamError};
use crate::error::CallError;
use crate::packet::{Packet, ReplyTo};
use crate::sync::lock;

/// One stream: its two flows and its end.
pub(crate) struct StreamState {
    /// The stream's name: its open packet's `peer` and `id`.
    pub(crate) key: ReplyTo,
    /// The stream method.
    pub(crate) method: Box<str>,
    /// Whether this side opened it.
    pub(crate) opener: bool,
    /// Acceptor side: cancelled to drop the handler.
    pub(crate) abort: CancellationToken,
    pub(crate) flows: Mutex<Flows>,
    /// The per-method item counters, made at the stream's first item (a
    /// refused open of a made-up method makes no label).
    counters: std::sync::OnceLock<crate::telemetry::StreamCounters>,
}

/// The part of a stream behind its lock.
pub(crate) struct Flows {
    /// Items this side receives (opener: output; acceptor: input).
    pub(crate) inbound: Inbound,
    /// Items this side sends (opener: input; acceptor: output).
    pub(crate) outbound: Outbound,
    /// How the stream ended, once it has.
    pub(crate) end: Option<End>,
}

/// How a stream ended.
#[derive(Debug, Clone)]
pub(crate) enum End {
    /// Opener: the call's reply (or error packet) came (boxed: a packet
    /// is large beside the other ends).
    Answered(Box<Packet>),
    /// Acceptor: the handler finished and its answer is sent (or being).
    Done,
    /// The other side cancelled.
    Cancelled,
    /// The connection closed.
    Disconnected,
    /// A time limit passed (this side cancelled).
    Timeout(Duration),
    /// A rule of the protocol was broken (by the peer, or found here).
    Broken(String),
    /// This side's handle gave the stream up (dropped, cancelled).
    Abandoned,
    /// Opener: an input item could not be encoded after `sent` items, so
    /// this side cancelled the call.
    InputFailed {
        /// Items sent before it.
        sent: u64,
        /// The encoding error.
        reason: String,
    },
}

impl End {
    /// A label for the `streams ended` metric.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            End::Answered(packet) if packet.is_error() => "error",
            End::Answered(_) | End::Done => "ended",
            End::Cancelled => "cancelled",
            End::Disconnected => "disconnected",
            End::Timeout(_) => "timeout",
            End::Broken(_) => "invalid_stream",
            End::Abandoned | End::InputFailed { .. } => "abandoned",
        }
    }
}

/// A flow this side receives.
pub(crate) struct Inbound {
    items: VecDeque<(Value, usize)>,
    /// Bytes of the items held.
    bytes: usize,
    /// The `seq` of the last item received.
    pub(crate) received: u64,
    /// Items granted in all: the peer may send up to this `seq`.
    pub(crate) granted: u64,
    /// Items taken by the consumer.
    taken: u64,
    window: u64,
    window_bytes: usize,
    /// The `seq` of `stream.end`, once it came.
    pub(crate) finished: Option<u64>,
    /// Whether the consumer is there: items are kept (before it takes
    /// the flow, none are granted; once it dropped it, items still within
    /// credit are dropped).
    pub(crate) consumer: Consumer,
    waker: Option<Waker>,
}

/// Whether a flow's consumer (or producer) is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consumer {
    /// Not taken yet (acceptor's [`StreamIo`](super::StreamIo)).
    NotTaken,
    /// Taken and in use.
    Taken,
    /// Given up, or never taken by a handler that no longer can.
    Gone,
}

/// A flow this side sends.
pub(crate) struct Outbound {
    /// Items the peer granted in all.
    credit: u64,
    /// Items sent (the `seq` of the last one).
    pub(crate) sent: u64,
    /// Why no more may be sent, once so.
    pub(crate) closed: Option<Closed>,
    pub(crate) producer: Consumer,
    waker: Option<Waker>,
    /// Wakers of [`closed`](super::Sink::closed) waiters.
    closed_wakers: Vec<Waker>,
}

/// Why a flow this side sends is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The peer will read no more (it cancelled).
    Cancelled,
    /// The connection closed.
    Disconnected,
    /// The call is over (answered, timed out, broken, given up).
    Over,
}

/// A rule of the protocol a frame broke.
pub(crate) type Broken = String;

impl Inbound {
    pub(crate) fn new(window: u64, window_bytes: usize, granted: u64, consumer: Consumer) -> Self {
        Inbound {
            items: VecDeque::new(),
            bytes: 0,
            received: 0,
            granted,
            taken: 0,
            window,
            window_bytes,
            finished: None,
            consumer,
            waker: None,
        }
    }

    /// Takes an item arrived with `seq`; says whether to wake the consumer.
    pub(crate) fn push(&mut self, seq: u64, item: Value, bytes: usize) -> Result<bool, Broken> {
        if let Some(end) = self.finished {
            return Err(format!("an item (seq {seq}) after stream.end (seq {end})"));
        }
        if Some(seq) != self.received.checked_add(1) {
            return Err(format!(
                "seq {seq} out of order (expected {})",
                self.received.saturating_add(1)
            ));
        }
        if seq > self.granted {
            return Err(format!(
                "an item (seq {seq}) beyond the credit granted ({})",
                self.granted
            ));
        }
        self.received = seq;
        if self.consumer != Consumer::Taken {
            return Ok(false);
        }
        self.items.push_back((item, bytes));
        self.bytes += bytes;
        Ok(true)
    }

    /// `stream.end` came, saying `seq` items were sent.
    pub(crate) fn finish(&mut self, seq: u64) -> Result<(), Broken> {
        if self.finished.is_some() {
            return Err("stream.end given twice".to_owned());
        }
        if seq != self.received {
            return Err(format!(
                "stream.end says {seq} items were sent, {} came",
                self.received
            ));
        }
        self.finished = Some(seq);
        Ok(())
    }

    /// The next item, and the credit to grant now that it is taken.
    pub(crate) fn take(&mut self) -> Option<(Value, Option<u64>)> {
        let (item, bytes) = self.items.pop_front()?;
        self.bytes -= bytes;
        self.taken += 1;
        Some((item, self.due()))
    }

    /// The credit to grant now: once at most half the window is
    /// outstanding (granted and not taken), and while less than the
    /// window's bytes are held, enough to make it whole again.
    pub(crate) fn due(&mut self) -> Option<u64> {
        if self.consumer != Consumer::Taken
            || self.granted - self.taken > self.window / 2
            || self.bytes >= self.window_bytes
        {
            return None;
        }
        let more = (self.taken + self.window).saturating_sub(self.granted);
        (more > 0).then(|| {
            self.granted += more;
            more
        })
    }

    /// Whether every item sent was taken and the flow ended.
    pub(crate) fn drained(&self) -> bool {
        self.items.is_empty() && self.finished.is_some()
    }

    /// The consumer takes the flow; the credit to grant at once.
    pub(crate) fn take_flow(&mut self) -> Option<u64> {
        self.consumer = Consumer::Taken;
        self.due()
    }

    /// The consumer gave the flow up: what it held is dropped.
    pub(crate) fn give_up(&mut self) {
        self.consumer = Consumer::Gone;
        self.items.clear();
        self.bytes = 0;
    }

    pub(crate) fn wait(&mut self, cx: &Context<'_>) {
        set_waker(&mut self.waker, cx);
    }

    pub(crate) fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Outbound {
    pub(crate) fn new(credit: u64, producer: Consumer) -> Self {
        Outbound {
            credit,
            sent: 0,
            closed: None,
            producer,
            waker: None,
            closed_wakers: Vec::new(),
        }
    }

    /// The `seq` of the next item once there is credit; `Err` once closed.
    /// `waited` is set when it has to wait.
    pub(crate) fn poll_seq(
        &mut self,
        cx: &Context<'_>,
        waited: &mut bool,
    ) -> Poll<Result<u64, Closed>> {
        if let Some(closed) = self.closed {
            return Poll::Ready(Err(closed));
        }
        if self.sent < self.credit {
            self.sent += 1;
            return Poll::Ready(Ok(self.sent));
        }
        *waited = true;
        set_waker(&mut self.waker, cx);
        Poll::Pending
    }

    /// The peer granted `more` items.
    pub(crate) fn grant(&mut self, more: u64) -> Result<(), Broken> {
        if more == 0 {
            return Err("stream.credit of 0 (at least 1)".to_owned());
        }
        if self.producer == Consumer::Gone && self.sent == 0 {
            return Err("credit for a flow that has no items".to_owned());
        }
        let credit = self.credit.saturating_add(more);
        if credit - self.sent > MAX_STREAM_CREDIT {
            return Err(format!(
                "credit beyond the limit ({} outstanding, at most {MAX_STREAM_CREDIT})",
                credit - self.sent
            ));
        }
        self.credit = credit;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// No more may be sent.
    pub(crate) fn close(&mut self, why: Closed) {
        self.closed.get_or_insert(why);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        for waker in self.closed_wakers.drain(..) {
            waker.wake();
        }
    }

    /// Ready once closed.
    pub(crate) fn poll_closed(&mut self, cx: &Context<'_>) -> Poll<Closed> {
        match self.closed {
            Some(closed) => Poll::Ready(closed),
            None => {
                if !self.closed_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    self.closed_wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl StreamState {
    pub(crate) fn new(
        key: ReplyTo,
        method: &str,
        opener: bool,
        inbound: Inbound,
        outbound: Outbound,
        abort: CancellationToken,
    ) -> Self {
        StreamState {
            key,
            method: method.into(),
            opener,
            abort,
            flows: Mutex::new(Flows {
                inbound,
                outbound,
                end: None,
            }),
            counters: std::sync::OnceLock::new(),
        }
    }

    /// The item counters of the stream's method.
    pub(crate) fn counters(&self) -> &crate::telemetry::StreamCounters {
        self.counters
            .get_or_init(|| crate::telemetry::StreamCounters::new(&self.method))
    }

    /// Ends the stream with `end` unless it already ended; says whether
    /// this call ended it. Both flows close and everyone waiting wakes.
    pub(crate) fn end(&self, end: End) -> bool {
        let mut flows = lock(&self.flows);
        if flows.end.is_some() {
            return false;
        }
        let closed = match &end {
            End::Cancelled => Closed::Cancelled,
            End::Disconnected => Closed::Disconnected,
            _ => Closed::Over,
        };
        crate::telemetry::stream_ended(end.label());
        flows.end = Some(end);
        flows.outbound.close(closed);
        flows.inbound.wake();
        true
    }

    /// The error a flow handle reports for a closed flow.
    pub(crate) fn closed_error(&self, closed: Closed) -> StreamError {
        let flows = lock(&self.flows);
        match (closed, &flows.end) {
            (Closed::Disconnected, _) | (_, Some(End::Disconnected)) => StreamError::Disconnected {
                last_seq: if self.opener {
                    flows.inbound.received
                } else {
                    flows.outbound.sent
                },
            },
            (_, Some(end)) => end_error(&self.method, end, flows.inbound.received)
                .unwrap_or(StreamError::Cancelled),
            (Closed::Cancelled | Closed::Over, None) => StreamError::Cancelled,
        }
    }
}

/// The error an end of a stream of `method` is, or `None` for a clean
/// end; `last_seq`: the items received.
pub(crate) fn end_error(method: &str, end: &End, last_seq: u64) -> Option<StreamError> {
    Some(match end {
        End::Answered(packet) if packet.is_error() => {
            StreamError::Call(CallError::from_error_packet(method, packet))
        }
        End::Answered(_) | End::Done => return None,
        End::Cancelled | End::Abandoned => StreamError::Cancelled,
        End::InputFailed { sent, reason } => StreamError::Call(CallError::InputFailed {
            method: method.to_owned(),
            sent: *sent,
            reason: reason.clone(),
        }),
        End::Disconnected => StreamError::Disconnected { last_seq },
        End::Timeout(after) => StreamError::Timeout { after: *after },
        End::Broken(reason) => StreamError::Call(CallError::InvalidReply {
            method: method.to_owned(),
            reason: format!("the peer broke the stream protocol: {reason}"),
        }),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn taken(window: u64, bytes: usize) -> Inbound {
        let mut inbound = Inbound::new(window, bytes, 0, Consumer::NotTaken);
        assert_eq!(inbound.take_flow(), Some(window));
        inbound
    }

    #[test]
    fn credit_is_granted_in_batches_once_half_the_window_is_taken() {
        let mut inbound = taken(4, usize::MAX);
        for seq in 1..=4 {
            assert_eq!(inbound.push(seq, json!(seq), 10), Ok(true));
        }
        // Held: the window, no more.
        assert!(
            inbound
                .push(5, json!(5), 10)
                .unwrap_err()
                .contains("beyond the credit")
        );
        assert_eq!(inbound.take().map(|(_, grant)| grant), Some(None));
        assert_eq!(inbound.take().map(|(_, grant)| grant), Some(Some(2)));
        assert_eq!(inbound.granted, 6);
        assert_eq!(inbound.take().map(|(_, grant)| grant), Some(None));
        assert_eq!(inbound.take().map(|(_, grant)| grant), Some(Some(2)));
        assert!(inbound.take().is_none());
    }

    #[test]
    fn no_credit_while_the_window_bytes_are_held() {
        let mut inbound = taken(4, 15);
        for seq in 1..=4 {
            inbound.push(seq, json!(seq), 10).unwrap();
        }
        // 30 bytes held, then 20: over 15, no credit though half is taken.
        assert_eq!(inbound.take().unwrap().1, None);
        assert_eq!(inbound.take().unwrap().1, None);
        // 10 held: under the bytes, credit for what was taken.
        assert_eq!(inbound.take().unwrap().1, Some(3));
    }

    #[test]
    fn items_break_the_rules_in_each_way() {
        let mut inbound = taken(2, usize::MAX);
        assert!(
            inbound
                .push(2, json!(0), 1)
                .unwrap_err()
                .contains("out of order")
        );
        inbound.push(1, json!(0), 1).unwrap();
        assert!(
            inbound
                .push(1, json!(0), 1)
                .unwrap_err()
                .contains("out of order")
        );
        assert!(inbound.finish(2).is_err(), "claims more than came");
        inbound.finish(1).unwrap();
        assert!(
            inbound
                .push(2, json!(0), 1)
                .unwrap_err()
                .contains("after stream.end")
        );
        assert!(inbound.finish(1).is_err(), "twice");
        // A flow never taken grants nothing: its first item is beyond credit.
        let mut untaken = Inbound::new(2, usize::MAX, 0, Consumer::NotTaken);
        assert!(
            untaken
                .push(1, json!(0), 1)
                .unwrap_err()
                .contains("beyond the credit")
        );
        // A consumer gone: items within credit are dropped, not held.
        let mut gone = taken(2, usize::MAX);
        gone.give_up();
        assert_eq!(gone.push(1, json!(0), 1), Ok(false));
        assert!(gone.take().is_none());
    }

    #[test]
    fn credit_beyond_the_limit_or_of_zero_is_refused() {
        let mut outbound = Outbound::new(MAX_STREAM_CREDIT, Consumer::Taken);
        assert!(outbound.grant(1).unwrap_err().contains("beyond the limit"));
        assert!(outbound.grant(0).unwrap_err().contains("of 0"));
        let waker = futures_util::task::noop_waker();
        let cx = Context::from_waker(&waker);
        let mut waited = false;
        assert_eq!(outbound.poll_seq(&cx, &mut waited), Poll::Ready(Ok(1)));
        // One sent: one more may be granted, and no more.
        outbound.grant(1).unwrap();
        assert!(outbound.grant(1).is_err());
        assert!(!waited);
        let mut empty = Outbound::new(0, Consumer::Taken);
        assert!(empty.poll_seq(&cx, &mut waited).is_pending());
        assert!(waited);
        empty.close(Closed::Cancelled);
        assert_eq!(
            empty.poll_seq(&cx, &mut waited),
            Poll::Ready(Err(Closed::Cancelled))
        );
        // No credit for a flow with no producer.
        let mut none = Outbound::new(0, Consumer::Gone);
        assert!(none.grant(1).is_err());
    }
}
