//! Log output through `tracing`, by default in the seed's shape.
//!
//! The engine logs every packet it sends and receives at `INFO` with two
//! fields, `protocol` (the protocol's name) and `peer` (this side's peer id).
//! [`init`] installs a subscriber that prints them as the seed did:
//!
//! ```text
//! 2024-05-01 12:00:00,123 - QueueServer - INFO - [3f0c…] Received: {method: "ping", ...}
//! ```
//!
//! Applications that set up their own `tracing` subscriber need not call
//! [`init`]; the fields are there for any formatter.

use std::fmt;

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

/// Installs a global `tracing` subscriber with the configured level and
/// format, writing to standard error.
pub fn init(config: &Config) -> Result<(), LoggingError> {
    let builder = tracing_subscriber::fmt()
        .with_max_level(config.log_level())
        .with_writer(std::io::stderr);
    let result = match config.log_format() {
        LogFormat::Seed => builder.event_format(SeedFormat).try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Compact => builder.compact().try_init(),
    };
    result.map_err(|e| LoggingError(e.to_string()))
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
        let mut fields = SeedFields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let time = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S,%3f");
        let name = fields.protocol.as_deref().unwrap_or(meta.target());
        write!(writer, "{time} - {name} - {} - ", seed_level(meta.level()))?;
        if let Some(peer) = &fields.peer {
            write!(writer, "[{peer}] ")?;
        }
        write!(writer, "{}", fields.message)?;
        for (key, value) in &fields.rest {
            write!(writer, " {key}={value}")?;
        }
        writeln!(writer)
    }
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

#[derive(Default)]
struct SeedFields {
    protocol: Option<String>,
    peer: Option<String>,
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for SeedFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl SeedFields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "protocol" => self.protocol = Some(value),
            "peer" => self.peer = Some(value),
            "message" => self.message = value,
            name => self.rest.push((name, value)),
        }
    }
}
