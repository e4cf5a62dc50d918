//! The text line format: `time - protocol - LEVEL - [peer] message`.

use std::fmt;
use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The text line format, [`LogFormat::Text`](super::LogFormat::Text):
/// `time - protocol - LEVEL - [peer] message`, the shape of Python's
/// `logging` lines.
///
/// Events without a `protocol` field show their target instead; fields other
/// than `protocol`, `peer` and `message` follow as `key=value`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFormat;

impl<S, N> FormatEvent<S, N> for TextFormat
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
    static FIELDS: std::cell::RefCell<TextFields> = std::cell::RefCell::new(TextFields::default());
}

/// Python's level names (`WARNING`, not `WARN`).
fn python_level(level: &tracing::Level) -> &'static str {
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
struct TextFields {
    protocol: Option<String>,
    peer: Option<String>,
    message: String,
    /// ` key=value` for each other field.
    rest: String,
}

impl TextFields {
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
        match crate::packet::time::write_log_time(&now, &mut stamp) {
            Some(text) => writer.write_str(text)?,
            None => write!(writer, "{}", now.format("%Y-%m-%d %H:%M:%S,%3f"))?,
        }
        let name = match &self.protocol {
            Some(protocol) if !protocol.is_empty() => protocol.as_str(),
            _ => meta.target(),
        };
        write!(writer, " - {name} - {} - ", python_level(meta.level()))?;
        if let Some(peer) = self.peer.as_deref().filter(|peer| !peer.is_empty()) {
            write!(writer, "[{peer}] ")?;
        }
        writer.write_str(&self.message)?;
        writer.write_str(&self.rest)?;
        writeln!(writer)
    }
}

impl Visit for TextFields {
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
