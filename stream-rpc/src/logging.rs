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
