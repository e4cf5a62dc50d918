//! [`Tracing`]: a `tracing` span per call on both sides, and W3C trace
//! context (`traceparent`, `tracestate`) carried in the metadata from a
//! caller to the handler it calls, and from that handler into the calls it
//! makes.

use std::fmt;
use std::task::{Context as TaskContext, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use super::{BoxError, BoxFuture, ServerCall, call_error, handler_error};
use crate::caller::Call;
use crate::error::CallError;
use crate::metadata::{TRACEPARENT, TRACESTATE};
use crate::packet::Packet;
use crate::protocol::{HandlerError, Reply};

/// Where a served call's trace goes on: what the calls its handler makes
/// carry when no OpenTelemetry span says otherwise.
#[derive(Clone, Debug)]
struct Served {
    /// This side's part of the trace: the caller's trace id, a span id of
    /// this side's own.
    parent: TraceParent,
    /// The caller's `tracestate`, passed on as it came.
    state: Option<String>,
}

tokio::task_local! {
    static SERVED: Served;
}

/// A W3C `traceparent` (<https://www.w3.org/TR/trace-context/>):
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, as the
/// `traceparent` metadata entry carries it.
///
/// ```
/// use stream_rpc::layer::TraceParent;
///
/// let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let parent = TraceParent::parse(text).unwrap();
/// assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(parent.to_string(), text);
/// // A child keeps the trace id and the flags, with a parent id of its own.
/// let child = parent.child();
/// assert_eq!(child.trace_id, parent.trace_id);
/// assert_ne!(child.parent_id, parent.parent_id);
/// assert!(TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace's id (never all zeros).
    pub trace_id: [u8; 16],
    /// The id of the caller's span (never all zeros).
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

/// The length of a version 00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Reads a `traceparent`: version `00` exactly, or a later version's
    /// first four fields (as the W3C text says a reader does); `None` when
    /// it is not one (upper-case hex, an all-zero id, version `ff`).
    pub fn parse(text: &str) -> Option<TraceParent> {
        let bytes = text.as_bytes();
        let version = hex_byte(bytes.get(0..2)?)?;
        let fits = match version {
            0 => bytes.len() == TRACEPARENT_LEN,
            0xff => false,
            _ => bytes.len() == TRACEPARENT_LEN || bytes.get(TRACEPARENT_LEN) == Some(&b'-'),
        };
        if !fits || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (index, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[3 + 2 * index..5 + 2 * index])?;
        }
        let mut parent_id = [0u8; 8];
        for (index, byte) in parent_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[36 + 2 * index..38 + 2 * index])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        let zero = |ids: &[u8]| ids.iter().all(|&b| b == 0);
        (!zero(&trace_id) && !zero(&parent_id)).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace and flags, with a new random parent id: what a call
    /// made from inside the span of `self` carries.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            parent_id: random_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The trace context a call made here and now carries: the current
    /// OpenTelemetry span's (with the `opentelemetry` feature, when one is
    /// being recorded), else a child of the call being served under the
    /// [`Tracing`] layer; `None` outside both.
    pub fn current() -> Option<TraceParent> {
        context_of(&Span::current()).map(|(parent, _)| parent)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// Two lower-case hex digits as a byte.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    let digit = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    match digits {
        [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// A random, non-zero span id: the next value of a per-thread SplitMix64
/// sequence seeded from the operating system's randomness (a version 4
/// UUID) on the thread's first span id. Span ids must be unique, not
/// secret: this costs a few nanoseconds where reading the system's
/// randomness each time costs a system call.
fn random_span_id() -> [u8; 8] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            uuid::Uuid::new_v4().as_u64_pair().0,
        );
    }
    loop {
        let next = STATE.with(|state| {
            let value = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(value);
            let mut z = value;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        });
        if next != 0 {
            return next.to_be_bytes();
        }
    }
}

/// The trace context a call made under `span` carries, and its
/// `tracestate`.
fn context_of(span: &Span) -> Option<(TraceParent, Option<String>)> {
    #[cfg(feature = "opentelemetry")]
    if let Some(found) = otel::context_of(span) {
        return Some(found);
    }
    let _ = span;
    SERVED
        .try_with(|served| (served.parent.child(), served.state.clone()))
        .ok()
}

/// A `tower` layer for both sides of a call: a `tracing` span per call,
/// and W3C trace context carried across peers in the metadata.
///
/// - **Serving side** (in a [`LayeredProtocol`](super::LayeredProtocol)):
///   each call runs in an INFO span `rpc.serve` with the fields
///   `rpc.method`, `rpc.peer`, `trace_id` (of the `traceparent` it
///   carried, if any) and `rpc.outcome` (`ok` or the error code). A valid
///   `traceparent` in the request's metadata is the span's parent; the
///   calls the handler makes through a caller with this layer carry the
///   same trace id.
/// - **Calling side** (in a [`LayeredCaller`](super::LayeredCaller)):
///   each call runs in an INFO span `rpc.call` (`rpc.method`, `trace_id`,
///   `rpc.outcome`: `ok`, the remote error code, or `timeout`,
///   `not_sent`, `unreachable`, `connection_lost`, `invalid_reply`,
///   `layer_error`), and a call whose metadata has no `traceparent` gets
///   one (and the `tracestate`): from the current OpenTelemetry span with
///   the `opentelemetry` feature, else from the call being served (a
///   fresh parent id, the same trace id and flags); none outside both.
///
/// With the `opentelemetry` feature and `tracing-opentelemetry`'s layer in
/// the subscriber, these spans are exported with their remote parents, so
/// one trace covers a call across every peer that carries `traceparent`
/// (the Python package does).
///
/// ```
/// use stream_rpc::layer::{LayeredCaller, LayeredProtocol, Tracing};
/// use stream_rpc::{Context, HandlerError, Packet, Protocol, Reply};
///
/// struct Echo;
///
/// impl Protocol for Echo {
///     async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
///         Ok(Reply::message("echoed", packet.payload))
///     }
/// }
///
/// let serving = LayeredProtocol::new(Echo, Tracing::new());
/// // And on the calling side: LayeredCaller::new(client, Tracing::new()).
/// # let _ = serving;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracing {
    _private: (),
}

impl Tracing {
    /// The layer.
    pub fn new() -> Tracing {
        Tracing::default()
    }
}

impl<S> Layer<S> for Tracing {
    type Service = TracingService<S>;

    fn layer(&self, inner: S) -> TracingService<S> {
        TracingService { inner }
    }
}

/// The service of the [`Tracing`] layer, over `S`.
#[derive(Clone, Debug)]
pub struct TracingService<S> {
    inner: S,
}

impl<S> Service<ServerCall> for TracingService<S>
where
    S: Service<ServerCall, Response = Reply>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Reply, HandlerError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| handler_error(e.into()))
    }

    fn call(&mut self, call: ServerCall) -> Self::Future {
        let span = tracing::info_span!(
            "rpc.serve",
            otel.kind = "server",
            otel.name = %call.method(),
            rpc.method = %call.method(),
            rpc.peer = %call.ctx.peer(),
            trace_id = Empty,
            rpc.outcome = Empty,
        );
        let incoming = call.meta().get(TRACEPARENT).and_then(TraceParent::parse);
        let state = incoming.and(call.meta().get(TRACESTATE)).map(str::to_owned);
        if let Some(parent) = &incoming
            && !span.is_disabled()
        {
            span.record("trace_id", parent.trace_id_hex());
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(parent) = &incoming {
            otel::set_parent(&span, parent, state.as_deref());
        }
        let served = incoming.map(|parent| Served {
            parent: parent.child(),
            state,
        });
        let work = self.inner.call(call).instrument(span.clone());
        Box::pin(async move {
            let outcome = match served {
                Some(served) => SERVED.scope(served, work).await,
                None => work.await,
            };
            let outcome = outcome.map_err(|e| handler_error(e.into()));
            let code = match &outcome {
                Ok(_) => "ok",
                Err(error) => error.code.as_str(),
            };
            span.record("rpc.outcome", code);
            outcome
        })
    }
}

impl<S> Service<Call> for TracingService<S>
where
    S: Service<Call, Response = Option<Packet>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Option<Packet>;
    type Error = CallError;
    type Future = BoxFuture<Result<Option<Packet>, CallError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), CallError>> {
        let started = Instant::now();
        self.inner
            .poll_ready(cx)
            .map_err(|e| call_error("", e.into(), started))
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let started = Instant::now();
        let span = tracing::info_span!(
            "rpc.call",
            otel.kind = "client",
            otel.name = %call.method,
            rpc.method = %call.method,
            trace_id = Empty,
            rpc.outcome = Empty,
        );
        if !call.meta.contains_key(TRACEPARENT)
            && let Some((parent, state)) = context_of(&span)
        {
            if !span.is_disabled() {
                span.record("trace_id", parent.trace_id_hex());
            }
            // A call whose metadata has no room left goes untraced.
            if call.meta.insert(TRACEPARENT, parent.to_string()).is_ok()
                && let Some(state) = state
                && call.meta.insert(TRACESTATE, state).is_err()
            {
                call.meta.remove(TRACESTATE);
            }
        }
        let method = call.method.clone();
        let work = self.inner.call(call).instrument(span.clone());
        Box::pin(async move {
            let outcome = work
                .await
                .map_err(|e| call_error(&method, e.into(), started));
            span.record("rpc.outcome", call_outcome(&outcome));
            outcome
        })
    }
}

/// How a call ended, as the `rpc.outcome` of its span.
fn call_outcome<T>(outcome: &Result<T, CallError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(CallError::Remote { code, .. }) => code.as_str(),
        Err(CallError::Timeout { .. }) => "timeout",
        Err(CallError::NotSent { .. }) => "not_sent",
        Err(CallError::Unreachable { .. }) => "unreachable",
        Err(CallError::ConnectionLost { .. }) => "connection_lost",
        Err(CallError::InvalidReply { .. }) => "invalid_reply",
        Err(CallError::Layer { .. }) => "layer_error",
        Err(CallError::InputFailed { .. }) => "input_failed",
    }
}

/// The spans' OpenTelemetry contexts, through `tracing-opentelemetry`.
#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr as _;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    use super::TraceParent;

    /// Makes the remote span `parent` the parent of `span`.
    pub(super) fn set_parent(span: &Span, parent: &TraceParent, state: Option<&str>) {
        let state = state
            .and_then(|state| TraceState::from_str(state).ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            state,
        );
        let context = opentelemetry::Context::new().with_remote_span_context(remote);
        // Fails only when the span is not recorded by OpenTelemetry: the
        // trace then goes on through the task's own record.
        let _ = span.set_parent(context);
    }

    /// The context of `span` as OpenTelemetry records it, when it does.
    pub(super) fn context_of(span: &Span) -> Option<(TraceParent, Option<String>)> {
        let context = span.context();
        let otel_span = context.span();
        let found = otel_span.span_context();
        if !found.is_valid() {
            return None;
        }
        let state = found.trace_state().header();
        Some((
            TraceParent {
                trace_id: found.trace_id().to_bytes(),
                parent_id: found.span_id().to_bytes(),
                flags: found.trace_flags().to_u8(),
            },
            (!state.is_empty()).then_some(state),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_read_as_the_w3c_text_says_and_written_back() {
        let parent = TraceParent::parse(GOOD).unwrap();
        assert_eq!(
            parent.parent_id,
            [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.to_string(), GOOD);
        // A later version: its first four fields, more after a dash.
        let later = GOOD.replacen("00", "cc", 1);
        assert!(TraceParent::parse(&later).is_some());
        assert!(TraceParent::parse(&format!("{later}-what-comes")).is_some());
        assert!(TraceParent::parse(&format!("{later}x")).is_none());
        for bad in [
            GOOD.replacen("00", "ff", 1),
            format!("{GOOD}-"),
            GOOD.to_uppercase(),
            GOOD.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            GOOD.replace("00f067aa0ba902b7", &"0".repeat(16)),
            GOOD.replace('-', "_"),
            GOOD[..54].to_owned(),
            GOOD.replacen('4', "g", 1),
            String::new(),
        ] {
            assert_eq!(TraceParent::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_fresh_non_zero_parent() {
        let parent = TraceParent::parse(GOOD).unwrap();
        let children: Vec<_> = (0..100).map(|_| parent.child()).collect();
        for child in &children {
            assert_eq!(
                (child.trace_id, child.flags),
                (parent.trace_id, parent.flags)
            );
            assert_ne!(child.parent_id, [0; 8]);
            assert_eq!(TraceParent::parse(&child.to_string()), Some(*child));
        }
        let ids: std::collections::HashSet<_> = children.iter().map(|c| c.parent_id).collect();
        assert_eq!(ids.len(), children.len());
    }
}
