//! What operators watch, recorded through the [`metrics`] facade (the
//! `metrics` cargo feature, on by default): the application installs an
//! exporter (Prometheus, StatsD, ...) and the runtime's numbers appear in
//! it; without one, nothing is kept. Names and labels are listed in
//! `docs/METRICS.md`. Without the feature every function here is empty.
//!
//! Handles are made the first time a series is used and kept for the
//! process (a registry lookup per call would cost more than the recording),
//! so **install the exporter before the first connection**: series first
//! used before it stay unrecorded.
//!
//! Labels are bounded: `method` takes the first [`MAX_METHODS`] method
//! names that were handled (a method the protocol did not know is
//! `unknown_method` under the label `-`), so a peer sending made-up
//! methods cannot grow the exporter's memory.

use std::time::Duration;

use crate::cipher::CipherError;
use crate::lifecycle::Role;
use crate::replay::Verdict;

/// Distinct `method` label values kept; later ones are counted as `other`.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const MAX_METHODS: usize = 256;

/// The `kind` label of a frame that did not open.
pub(crate) fn cipher_kind(error: &CipherError) -> &'static str {
    match error {
        CipherError::Malformed(_) => "garbage",
        CipherError::BadSignature => "wrong_key",
        CipherError::Expired { .. } => "expired",
        CipherError::FromTheFuture { .. } => "from_the_future",
        _ => "undecryptable",
    }
}

/// The `kind` label of a frame the replay store refused.
pub(crate) fn replay_kind(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Replay => "replayed",
        Verdict::Reflection => "reflected",
        Verdict::Forgotten => "forgotten",
        _ => "replay_store_unavailable",
    }
}

#[cfg(feature = "metrics")]
mod on {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};

    use metrics::{Counter, Histogram};

    /// The handles of one method label, made once.
    pub(super) struct MethodHandles {
        pub(super) ok: Counter,
        pub(super) duration: Histogram,
        pub(super) name: &'static str,
    }

    type Table = RwLock<HashMap<Box<str>, &'static MethodHandles>>;

    fn table() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| RwLock::new(HashMap::new()))
    }

    fn make(name: &'static str) -> &'static MethodHandles {
        Box::leak(Box::new(MethodHandles {
            ok: metrics::counter!("stream_rpc_requests_total", "method" => name, "outcome" => "ok"),
            duration: metrics::histogram!("stream_rpc_handler_duration_seconds", "method" => name),
            name,
        }))
    }

    /// The handles of `method`, made (and the name kept) the first time,
    /// or those of `other` once [`MAX_METHODS`](super::MAX_METHODS) names
    /// are kept. The names and handles live as long as the process, as the
    /// exporter's own series do.
    pub(super) fn method(method: &str) -> &'static MethodHandles {
        if let Some(handles) = table()
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(method)
        {
            return handles;
        }
        static OTHER: OnceLock<&'static MethodHandles> = OnceLock::new();
        let mut table = table().write().unwrap_or_else(|e| e.into_inner());
        if let Some(handles) = table.get(method) {
            return handles;
        }
        if table.len() >= super::MAX_METHODS {
            return OTHER.get_or_init(|| make("other"));
        }
        let name: &'static str = Box::leak(method.to_owned().into_boxed_str());
        let handles = make(name);
        table.insert(name.into(), handles);
        handles
    }
}

/// A handle made on first use and kept.
#[cfg(feature = "metrics")]
macro_rules! kept {
    ($kind:ident, $type:ty, $name:literal $(, $label:literal => $value:literal)*) => {{
        static HANDLE: std::sync::OnceLock<$type> = std::sync::OnceLock::new();
        HANDLE.get_or_init(|| metrics::$kind!($name $(, $label => $value)*))
    }};
}

#[cfg(feature = "metrics")]
fn open_gauge(role: Role) -> &'static metrics::Gauge {
    match role {
        Role::Server => {
            kept!(gauge, metrics::Gauge, "stream_rpc_connections_open", "role" => "server")
        }
        Role::Client => {
            kept!(gauge, metrics::Gauge, "stream_rpc_connections_open", "role" => "client")
        }
    }
}

/// A connection began (`accepted` for one a server accepted).
#[inline]
fn connection_opened(role: Role) {
    #[cfg(feature = "metrics")]
    {
        open_gauge(role).increment(1.0);
        if matches!(role, Role::Server) {
            kept!(
                counter,
                metrics::Counter,
                "stream_rpc_connections_accepted_total"
            )
            .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = role;
}

/// A connection ended.
#[inline]
fn connection_closed(role: Role) {
    #[cfg(feature = "metrics")]
    open_gauge(role).decrement(1.0);
    #[cfg(not(feature = "metrics"))]
    let _ = role;
}

/// Counts a connection in `stream_rpc_connections_open` while it lives.
pub(crate) struct OpenConnection(Role);

impl OpenConnection {
    pub(crate) fn new(role: Role) -> OpenConnection {
        connection_opened(role);
        OpenConnection(role)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        connection_closed(self.0);
    }
}

/// A server refused a connection over one of its limits: `limit` is
/// `total` (`max_connections`) or `per_address` (`max_connections_per_ip`).
#[inline]
pub(crate) fn connection_refused(limit: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("stream_rpc_connections_refused_total", "limit" => limit).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = limit;
}

/// Bytes read from a connection.
#[inline]
pub(crate) fn received(bytes: usize) {
    #[cfg(feature = "metrics")]
    kept!(counter, metrics::Counter, "stream_rpc_received_bytes_total").increment(bytes as u64);
    #[cfg(not(feature = "metrics"))]
    let _ = bytes;
}

/// Bytes written to a connection.
#[inline]
pub(crate) fn sent(bytes: usize) {
    #[cfg(feature = "metrics")]
    kept!(counter, metrics::Counter, "stream_rpc_sent_bytes_total").increment(bytes as u64);
    #[cfg(not(feature = "metrics"))]
    let _ = bytes;
}

/// A frame dropped as bad.
#[inline]
pub(crate) fn bad_frame(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("stream_rpc_bad_frames_total", "kind" => kind).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = kind;
}

/// A reply came after its call had given up, and was dropped.
#[inline]
pub(crate) fn late_reply() {
    #[cfg(feature = "metrics")]
    kept!(counter, metrics::Counter, "stream_rpc_late_replies_total").increment(1);
}

/// A handler of `method` ran for `took` and succeeded, or failed with
/// `error` (an error code: `unknown_method`, `handler_error`, ...).
#[inline]
pub(crate) fn handled(method: &str, took: Duration, error: Option<&'static str>) {
    #[cfg(feature = "metrics")]
    {
        if error == Some("unknown_method") {
            // Not a method at all: one label for all of them.
            metrics::counter!("stream_rpc_requests_total", "method" => "-", "outcome" => "unknown_method")
                .increment(1);
            return;
        }
        let handles = on::method(method);
        handles.duration.record(took.as_secs_f64());
        match error {
            None => handles.ok.increment(1),
            Some(code) => metrics::counter!(
                "stream_rpc_requests_total", "method" => handles.name, "outcome" => code
            )
            .increment(1),
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (method, took, error);
}

/// A call is now waiting for its reply (`+1`) or done waiting (`-1`).
#[inline]
pub(crate) fn calls_in_flight(change: f64) {
    #[cfg(feature = "metrics")]
    kept!(gauge, metrics::Gauge, "stream_rpc_calls_in_flight").increment(change);
    #[cfg(not(feature = "metrics"))]
    let _ = change;
}

/// Whether handler times are worth a clock reading: only with the feature.
pub(crate) const TIMED: bool = cfg!(feature = "metrics");

/// The item counters of one stream's method, made once per stream (an item
/// then costs one atomic add).
#[derive(Clone)]
pub(crate) struct StreamCounters {
    #[cfg(feature = "metrics")]
    sent: metrics::Counter,
    #[cfg(feature = "metrics")]
    received: metrics::Counter,
}

impl StreamCounters {
    /// The counters of `method` (bounded like the handlers' labels: the
    /// first [`MAX_METHODS`] names, then `other`).
    pub(crate) fn new(method: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let name = on::method(method).name;
            StreamCounters {
                sent: metrics::counter!("stream_rpc_stream_items_total", "method" => name, "direction" => "sent"),
                received: metrics::counter!("stream_rpc_stream_items_total", "method" => name, "direction" => "received"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = method;
            StreamCounters {}
        }
    }

    /// An item was sent.
    #[inline]
    pub(crate) fn sent(&self) {
        #[cfg(feature = "metrics")]
        self.sent.increment(1);
    }

    /// An item was received.
    #[inline]
    pub(crate) fn received(&self) {
        #[cfg(feature = "metrics")]
        self.received.increment(1);
    }
}

/// A stream opened (`+1`) or ended (`-1`) on a connection.
#[inline]
pub(crate) fn streams_open(change: f64) {
    #[cfg(feature = "metrics")]
    kept!(gauge, metrics::Gauge, "stream_rpc_streams_open").increment(change);
    #[cfg(not(feature = "metrics"))]
    let _ = change;
}

/// A stream ended, for `reason` (`ended`, `error`, `cancelled`,
/// `disconnected`, `timeout`, `invalid_stream`, `abandoned`).
#[inline]
pub(crate) fn stream_ended(reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("stream_rpc_streams_ended_total", "reason" => reason).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// A stream's sender had to wait for credit.
#[inline]
pub(crate) fn credit_wait() {
    #[cfg(feature = "metrics")]
    kept!(
        counter,
        metrics::Counter,
        "stream_rpc_stream_credit_waits_total"
    )
    .increment(1);
}

/// A stream frame was refused: `kind` is `broken_rule` or `unknown_stream`.
#[inline]
pub(crate) fn stream_frame_refused(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("stream_rpc_stream_frames_refused_total", "kind" => kind).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = kind;
}

/// A `call.cancel` came: `outcome` is `cancelled` (its request's handler
/// was told), `unknown` (no such request running) or `invalid`.
#[inline]
pub(crate) fn call_cancel(outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("stream_rpc_call_cancels_total", "outcome" => outcome).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = outcome;
}
