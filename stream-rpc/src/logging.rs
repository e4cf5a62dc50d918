//! Log output through `tracing`, by default in the seed's shape.
//!
//! The engine logs every packet it sends and receives at `INFO`, on the
//! target `stream_rpc::packets`, with two fields, `protocol` (the
//! protocol's name) and `peer` (this side's peer id); how much of each
//! packet a line shows is [`PacketLog`](crate::PacketLog) (headers, without
//! the payload, by default).
//! [`init`] installs a subscriber that prints them as the seed did:
//!
//! ```text
//! 2024-05-01 12:00:00,123 - QueueServer - INFO - [3f0c…] Received: {method: "ping", ...}
//! ```
//!
//! Applications that set up their own `tracing` subscriber need not call
//! [`init`]; the fields are there for any formatter.

use std::fmt;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{Config, LogFormat};

/// The global subscriber could not be installed (one is already set).
#[derive(Debug, thiserror::Error)]
#[error("could not install the log subscriber: {0}")]
pub struct LoggingError(String);

/// The target of the line that says where a server listens
/// (`Serving on ADDR`), which [`init`] shows at any level, so that a server
/// on port 0 can always be found.
pub const LISTENING_TARGET: &str = "stream_rpc::listening";

/// The target of the `Send:` and `Received:` lines (see
/// [`PacketLog`](crate::PacketLog)).
pub const PACKETS_TARGET: &str = "stream_rpc::packets";

/// Installs a global `tracing` subscriber with the configured level and
/// format, writing to standard error. The line that says where a server
/// listens is shown at any level.
pub fn init(config: &Config) -> Result<(), LoggingError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(config.log_level())
        .with_target(LISTENING_TARGET, tracing::Level::INFO);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match config.log_format() {
        LogFormat::Seed => layer.event_format(SeedFormat).boxed(),
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Compact => layer.compact().boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| LoggingError(e.to_string()))
}

/// The seed's line format: `time - protocol - LEVEL - [peer] message`.
///
/// Events without a `protocol` field show their target instead; fields other
/// than `protocol`, `peer` and `message` follow as `key=value`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeedFormat;

impl<S, N> FormatEvent<S, N> for SeedFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Each thread's field buffers, kept from event to event: a line
        // costs no allocation once they have grown.
        crate::scratch::with_taken(
            &FIELDS,
            |fields| {
                fields.clear();
                event.record(fields);
                fields.write_line(&mut writer, event.metadata())
            },
            |fields| fields.capacity() <= KEEP_FIELDS,
        )
    }
}

/// The largest field buffers a thread keeps between log lines.
const KEEP_FIELDS: usize = 16 * 1024;

thread_local! {
    static FIELDS: std::cell::RefCell<SeedFields> = std::cell::RefCell::new(SeedFields::default());
}

/// Python's level names, as the seed printed them.
fn seed_level(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::TRACE => "TRACE",
        tracing::Level::DEBUG => "DEBUG",
        tracing::Level::INFO => "INFO",
        tracing::Level::WARN => "WARNING",
        tracing::Level::ERROR => "ERROR",
    }
}

/// One event's fields, written into buffers that are reused.
#[derive(Default)]
struct SeedFields {
    protocol: Option<String>,
    peer: Option<String>,
    message: String,
    /// ` key=value` for each other field.
    rest: String,
}

impl SeedFields {
    fn clear(&mut self) {
        for slot in [&mut self.protocol, &mut self.peer].into_iter().flatten() {
            slot.clear();
        }
        self.message.clear();
        self.rest.clear();
    }

    fn capacity(&self) -> usize {
        let slot = |slot: &Option<String>| slot.as_ref().map_or(0, String::capacity);
        slot(&self.protocol) + slot(&self.peer) + self.message.capacity() + self.rest.capacity()
    }

    /// The slot of a field, emptied; `None` for the other fields.
    fn slot(&mut self, name: &str) -> Option<&mut String> {
        match name {
            "protocol" => Some(self.protocol.get_or_insert_with(String::new)),
            "peer" => Some(self.peer.get_or_insert_with(String::new)),
            "message" => Some(&mut self.message),
            _ => None,
        }
    }

    /// `time - protocol - LEVEL - [peer] message key=value...`
    fn write_line(&self, writer: &mut Writer<'_>, meta: &tracing::Metadata<'_>) -> fmt::Result {
        let now = chrono::Utc::now();
        let mut stamp = [0u8; 23];
        match crate::packet::time::write_seed(&now, &mut stamp) {
            Some(text) => writer.write_str(text)?,
            None => write!(writer, "{}", now.format("%Y-%m-%d %H:%M:%S,%3f"))?,
        }
        let name = match &self.protocol {
            Some(protocol) if !protocol.is_empty() => protocol.as_str(),
            _ => meta.target(),
        };
        write!(writer, " - {name} - {} - ", seed_level(meta.level()))?;
        if let Some(peer) = self.peer.as_deref().filter(|peer| !peer.is_empty()) {
            write!(writer, "[{peer}] ")?;
        }
        writer.write_str(&self.message)?;
        writer.write_str(&self.rest)?;
        writeln!(writer)
    }
}

impl Visit for SeedFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match self.slot(field.name()) {
            Some(slot) => slot.push_str(value),
            None => {
                let _ = write!(self.rest, " {}={value}", field.name());
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use std::fmt::Write as _;
        match self.slot(field.name()) {
            Some(slot) => {
                let _ = write!(slot, "{value:?}");
            }
            None => {
                let _ = write!(self.rest, " {}={value:?}", field.name());
            }
        }
    }
}

/// How long a log budget's window lasts: refusals are logged at most once
/// per window per reason, packet lines at most so many per window per
/// connection.
pub(crate) const LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// A budget of log lines: at most `per_window` lines per [`LOG_WINDOW`];
/// the lines past it are counted, and once the window is over one summary
/// line says how many were left out. Whatever the input, it writes at most
/// `per_window + 1` lines a window.
#[derive(Clone)]
pub(crate) struct Budget {
    per_window: u32,
    state: std::sync::Arc<std::sync::Mutex<BudgetState>>,
}

#[derive(Default)]
struct BudgetState {
    /// When the current window started; `None` before the first line.
    since: Option<tokio::time::Instant>,
    /// Lines written in the current window.
    used: u32,
    /// Lines left out since the last summary.
    left_out: u64,
    /// When the first of `left_out` was left out.
    left_out_since: Option<tokio::time::Instant>,
    /// Whether a summary is due (a task waits to write it).
    summary_due: bool,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("per_window", &self.per_window)
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// A budget of `per_window` lines a window (at least one).
    pub(crate) fn new(per_window: u32) -> Budget {
        Budget {
            per_window: per_window.max(1),
            state: Default::default(),
        }
    }

    /// Whether a line may be written now. When not, the line is counted,
    /// and `summary` is called once the window is over with how many lines
    /// were left out and over how long (from a task of its own; at once
    /// when there is no Tokio runtime).
    pub(crate) fn admit<S>(&self, summary: impl FnOnce() -> S) -> bool
    where
        S: FnOnce(u64, std::time::Duration) + Send + 'static,
    {
        let now = tokio::time::Instant::now();
        let mut state = crate::sync::lock(&self.state);
        if state.summary_due {
            // The summary to come counts this one too.
            state.left_out += 1;
            return false;
        }
        let since = *state.since.get_or_insert(now);
        if now.saturating_duration_since(since) >= LOG_WINDOW {
            state.since = Some(now);
            state.used = 0;
        }
        if state.used < self.per_window {
            state.used += 1;
            return true;
        }
        state.left_out += 1;
        state.left_out_since.get_or_insert(now);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to wait on: say it now (still at most one line per
            // line left out, and only where nothing runs Tokio).
            let (count, first) = (state.left_out, state.left_out_since.take());
            state.left_out = 0;
            drop(state);
            summary()(count, first.map_or_else(Default::default, |at| now - at));
            return false;
        };
        state.summary_due = true;
        let due = state.since.unwrap_or(now) + LOG_WINDOW;
        drop(state);
        let state = self.state.clone();
        let summary = summary();
        runtime.spawn(async move {
            tokio::time::sleep_until(due).await;
            let now = tokio::time::Instant::now();
            let (count, first) = {
                let mut state = crate::sync::lock(&state);
                state.summary_due = false;
                // The summary is the first line of the next window: under a
                // steady flood, a budget of one line a window writes the
                // summaries alone.
                state.since = Some(now);
                state.used = 1;
                let count = std::mem::take(&mut state.left_out);
                (count, state.left_out_since.take())
            };
            // A whole window at least: the count covers what was left out
            // since the window's lines ran out.
            let over = first.map_or(LOG_WINDOW, |at| (now - at).max(LOG_WINDOW));
            summary(count, over);
        });
        false
    }
}

/// What a server or client refuses, each logged at most once per
/// [`LOG_WINDOW`] (per endpoint) with a count of the rest: a flood of bad
/// input writes a bounded number of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A connection over [`Limits::max_connections`](crate::Limits::max_connections).
    ConnectionLimit,
    /// A connection over [`Limits::max_connections_per_ip`](crate::Limits::max_connections_per_ip).
    AddressLimit,
    /// A frame that does not open under the key.
    Undecryptable,
    /// A frame the replay check refused (replayed, reflected, forgotten...).
    Replayed,
    /// A frame longer than the limit.
    OverLong,
    /// A plaintext that opened but is not a valid packet.
    InvalidPacket,
    /// A request for a method nobody handles.
    UnknownMethod,
    /// A request refused because the connection's handlers are all busy.
    Busy,
    /// A frame the replay store could not check (its backing service is away).
    Unchecked,
    /// A connection closed for sending too many bad frames in a row.
    TooManyBadFrames,
    /// A connection closed for sending no authentic frame in time.
    NoFirstFrame,
}

impl Refusal {
    const ALL: usize = 11;

    fn index(self) -> usize {
        self as usize
    }

    /// What was refused, as the summary line counts it.
    fn counted(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connections over the connection limit",
            Refusal::AddressLimit => "connections over the per-address limit",
            Refusal::Undecryptable => "frames that failed to decrypt",
            Refusal::Replayed => "frames refused by the replay check",
            Refusal::OverLong => "frames over the length limit",
            Refusal::InvalidPacket => "invalid packets",
            Refusal::UnknownMethod => "requests for unknown methods",
            Refusal::Busy => "requests while every handler slot was busy",
            Refusal::Unchecked => "frames the replay store could not check",
            Refusal::TooManyBadFrames => "connections after too many bad frames",
            Refusal::NoFirstFrame => "connections with no authentic first frame in time",
        }
    }
}

/// One log budget per [`Refusal`]: an endpoint's refusals share them
/// across its connections.
pub(crate) struct Refusals {
    budgets: [Budget; Refusal::ALL],
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            budgets: std::array::from_fn(|_| Budget::new(1)),
        }
    }
}

impl Refusals {
    /// Whether the line of this refusal is written now; when not, it is
    /// counted, and a line `refused N <what> in the last T s` follows once
    /// the window is over, with these `protocol` and `peer` fields.
    pub(crate) fn admit(&self, refusal: Refusal, protocol: &str, peer: uuid::Uuid) -> bool {
        self.budgets[refusal.index()].admit(|| {
            let protocol: Box<str> = protocol.into();
            move |count, over| {
                tracing::warn!(
                    protocol = &*protocol,
                    peer = %peer,
                    "refused {count} {} in the last {:.1} s",
                    refusal.counted(),
                    over.as_secs_f64()
                );
            }
        })
    }
}

/// Writes `text` for a log line: control characters, line separators and
/// other unprintable characters, quotes and backslashes escaped as in Rust
/// (`\n`, `\u{1b}`, `\u{2028}`, `\"`), and cut after
/// `max` characters with `…`, so that text a peer chose (a method name, an
/// error message) can neither start a line of its own nor make one huge.
#[derive(Clone, Copy)]
pub(crate) struct Escaped<'a> {
    text: &'a str,
    max: usize,
}

/// The most characters of a method name a log line shows.
pub(crate) const LOG_METHOD_CHARS: usize = 64;

impl<'a> Escaped<'a> {
    /// `text`, at most `max` characters of it.
    pub(crate) fn new(text: &'a str, max: usize) -> Self {
        Escaped { text, max }
    }

    /// A method name, at most [`LOG_METHOD_CHARS`] characters of it.
    pub(crate) fn method(text: &'a str) -> Self {
        Escaped::new(text, LOG_METHOD_CHARS)
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain text (the common case) is written in one piece.
        // What Rust's debug form leaves as it is: not control characters,
        // line or paragraph separators, format characters (a right-to-left
        // override) or anything else that is not printable; `'` stays too.
        let plain = |c: char| c == '\'' || c.escape_debug().len() == 1;
        let cut = self.text.char_indices().nth(self.max).map(|(at, _)| at);
        let shown = &self.text[..cut.unwrap_or(self.text.len())];
        if shown.chars().all(plain) {
            f.write_str(shown)?;
        } else {
            for c in shown.chars() {
                if plain(c) {
                    f.write_char(c)?;
                } else {
                    write!(f, "{}", c.escape_debug())?;
                }
            }
        }
        if cut.is_some() {
            f.write_char('…')?;
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_cannot_break_a_line_and_is_cut() {
        let shown = Escaped::method("evil\nINFO - forged\r\u{1b}[31m\"\\").to_string();
        assert_eq!(shown, "evil\\nINFO - forged\\r\\u{1b}[31m\\\"\\\\");
        assert!(!shown.contains('\n'));
        assert_eq!(Escaped::method("ping").to_string(), "ping");
        assert_eq!(format!("{:?}", Escaped::method("ping")), "\"ping\"");
        let long = "é".repeat(100);
        let shown = Escaped::method(&long).to_string();
        assert_eq!(shown, format!("{}…", "é".repeat(LOG_METHOD_CHARS)));
        // Unicode that is not a control character is shown as it is.
        assert_eq!(Escaped::method("añ✓").to_string(), "añ✓");
        // No character at all comes out as a control character.
        let every: String = (0..=0x10_FFFF).filter_map(char::from_u32).collect();
        let shown = Escaped::new(&every, usize::MAX).to_string();
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() || (c.is_whitespace() && c != ' ')),
        );
        assert_eq!(
            Escaped::method("a\u{2028}b\u{202e}c'").to_string(),
            "a\\u{2028}b\\u{202e}c'"
        );
    }

    #[tokio::test]
    async fn a_budget_writes_its_lines_then_one_summary_a_window() {
        let budget = Budget::new(3);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut written = 0;
        for _ in 0..1000 {
            let tx = tx.clone();
            if budget.admit(|| {
                move |count, over| {
                    let _ = tx.send((count, over));
                }
            }) {
                written += 1;
            }
        }
        assert_eq!(written, 3);
        // One summary, once the window is over, for all 997.
        let (count, over) = rx.recv().await.unwrap();
        assert_eq!(count, 997);
        assert!(over >= LOG_WINDOW, "{over:?}");
        assert!(rx.try_recv().is_err());
        // The summary was the first line of a new window: lines again.
        let tx2 = tx.clone();
        assert!(budget.admit(|| move |count, over| {
            let _ = tx2.send((count, over));
        }));
    }

    #[tokio::test]
    async fn a_budget_of_one_line_writes_only_summaries_under_a_steady_flood() {
        let budget = Budget::new(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let admit = |budget: &Budget| {
            let tx = tx.clone();
            budget.admit(|| {
                move |count, _| {
                    let _ = tx.send(count);
                }
            })
        };
        assert!(admit(&budget));
        for _ in 0..9 {
            assert!(!admit(&budget));
        }
        assert_eq!(rx.recv().await, Some(9));
        // Right after the summary: counted for the next one, not written.
        for _ in 0..5 {
            assert!(!admit(&budget));
        }
        assert_eq!(rx.recv().await, Some(5));
        assert!(rx.try_recv().is_err());
    }
}
