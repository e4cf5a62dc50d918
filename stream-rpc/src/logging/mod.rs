//! Log output through `tracing`: the settings of a program's logs, and a
//! subscriber that prints lines of text
//! (`time - protocol - LEVEL - [peer] message`) or JSON.
//!
//! The engine logs every packet it sends and receives at `INFO`, on the
//! target [`PACKETS_TARGET`], with two fields, `protocol` (the protocol's
//! name) and `peer` (this side's peer id). How much of each packet a line
//! shows is [`PacketLog`]: headers, without the payload, unless the
//! subscriber also enables [`PAYLOADS_TARGET`] at `TRACE`. So the
//! subscriber decides, and a program sets its logs in one place:
//!
//! ```no_run
//! use stream_rpc::logging;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // STREAM_RPC_LOG_LVL and STREAM_RPC_LOG_PACKETS, then code.
//! let settings = logging::Settings::from_env()?.with_format(logging::LogFormat::Json);
//! logging::init(&settings)?;
//! # Ok(())
//! # }
//! ```
//!
//! [`init`] prints lines such as:
//!
//! ```text
//! 2024-05-01 12:00:00,123 - QueueServer - INFO - [3f0c…] Received: {method: "ping", ...}
//! ```
//!
//! Applications that set up their own `tracing` subscriber need not call
//! [`init`]; the fields are there for any formatter, and
//! [`Settings::filter`] gives the filter that applies the settings.
//! Without [`Settings::filter`], payloads are shown only where
//! [`PAYLOADS_TARGET`] is enabled at `TRACE` (a global `TRACE` level
//! enables it).
//!
//! The files: `text.rs` the text format, `line.rs` how a packet shows in
//! a line, `budget.rs` the bounded logging of refusals, `escaped.rs` text a
//! peer chose, made safe for a line.

mod budget;
mod escaped;
mod line;
mod text;

use std::env::VarError;

pub(crate) use budget::{Budget, Refusal, Refusals};
pub(crate) use escaped::Escaped;
pub use line::LogLine;
pub use text::TextFormat;

use crate::config::{ConfigError, ENV_LOG_LEVEL, ENV_LOG_PACKETS, read_env, with_setters};

/// The global subscriber could not be installed (one is already set).
#[derive(Debug, thiserror::Error)]
#[error("could not install the log subscriber: {0}")]
pub struct LoggingError(String);

/// The target of the line that says where a server listens
/// (`Serving on ADDR`), which [`init`] shows at any level, so that a server
/// on port 0 can always be found.
pub const LISTENING_TARGET: &str = "stream_rpc::listening";

/// The target of the `Send:` and `Received:` lines (see [`PacketLog`]).
pub const PACKETS_TARGET: &str = "stream_rpc::packets";

/// The target that, enabled at `TRACE`, makes the `Send:` and `Received:`
/// lines show payloads ([`PacketLog::Full`]). Nothing is logged on it.
pub const PAYLOADS_TARGET: &str = "stream_rpc::payloads";

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// Lines of text in the shape of Python's `logging`
    /// ([`TextFormat`]):
    /// `2024-05-01 12:00:00,123 - QueueServer - INFO - [peer] Received: {...}`.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
    /// `tracing-subscriber`'s own compact format.
    Compact,
}

/// How much of each packet the `Send:` and `Received:` log lines show. They
/// are logged at `INFO` with the target [`PACKETS_TARGET`], so a
/// subscriber's own filter can also turn them off or on by themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketLog {
    /// No packet lines.
    Off,
    /// Method, id, peer, time and correlation, without the payload. The
    /// default: payloads stay out of logs.
    #[default]
    Headers,
    /// Everything, payload included (cut at 512 bytes).
    Full,
}

impl PacketLog {
    /// What the current subscriber shows of packets: nothing when
    /// [`PACKETS_TARGET`] is off at `INFO`, payloads when
    /// [`PAYLOADS_TARGET`] is on at `TRACE`. Asked once per connection.
    pub(crate) fn current() -> PacketLog {
        if !tracing::enabled!(target: PACKETS_TARGET, tracing::Level::INFO) {
            PacketLog::Off
        } else if tracing::enabled!(target: PAYLOADS_TARGET, tracing::Level::TRACE) {
            PacketLog::Full
        } else {
            PacketLog::Headers
        }
    }
}

impl std::str::FromStr for PacketLog {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Ok(PacketLog::Off),
            "headers" => Ok(PacketLog::Headers),
            "full" => Ok(PacketLog::Full),
            _ => Err(ConfigError::invalid(
                ENV_LOG_PACKETS,
                format!("expected off, headers or full, got {text:?}"),
            )),
        }
    }
}

/// A log level, parsed from Python's names (`WARNING`, `CRITICAL`) or
/// tracing's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub tracing::Level);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(tracing::Level::INFO)
    }
}

impl std::str::FromStr for LogLevel {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        use tracing::Level;
        let level = match text.trim().to_ascii_uppercase().as_str() {
            "TRACE" => Level::TRACE,
            "DEBUG" => Level::DEBUG,
            "INFO" => Level::INFO,
            "WARNING" | "WARN" => Level::WARN,
            "ERROR" | "CRITICAL" | "FATAL" => Level::ERROR,
            _ => {
                return Err(ConfigError::invalid(
                    ENV_LOG_LEVEL,
                    format!(
                        "expected one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL, got {text:?}"
                    ),
                ));
            }
        };
        Ok(LogLevel(level))
    }
}

/// What a program's logs show and how: level, format and packet lines.
/// Read them with [`Settings::from_env`], change them in code, and install
/// them with [`init`].
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `STREAM_RPC_LOG_LVL` | `INFO` | `TRACE`, `DEBUG`, `INFO`, `WARNING`/`WARN`, `ERROR`, `CRITICAL` |
/// | `STREAM_RPC_LOG_PACKETS` | `headers` | `off`, `headers` or `full`: how much of each packet the `Send:`/`Received:` lines show |
///
/// ```
/// use stream_rpc::logging::{LogFormat, PacketLog, Settings};
///
/// let settings = Settings::default()
///     .with_level(tracing::Level::DEBUG)
///     .with_format(LogFormat::Json)
///     .with_packets(PacketLog::Off);
/// assert_eq!(settings.packets, PacketLog::Off);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// The most verbose level shown (`INFO`).
    pub level: tracing::Level,
    /// How lines look ([`LogFormat::Text`]).
    pub format: LogFormat,
    /// How much of each packet the packet lines show ([`PacketLog::Headers`]).
    pub packets: PacketLog,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            level: tracing::Level::INFO,
            format: LogFormat::default(),
            packets: PacketLog::default(),
        }
    }
}

with_setters!(Settings {
    /// Sets [`level`](Self::level).
    with_level => level: tracing::Level,
    /// Sets [`format`](Self::format).
    with_format => format: LogFormat,
    /// Sets [`packets`](Self::packets).
    with_packets => packets: PacketLog,
});

impl Settings {
    /// The defaults with what `STREAM_RPC_LOG_LVL` and
    /// `STREAM_RPC_LOG_PACKETS` say; a bad value is an error naming its
    /// variable.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_lookup(|name| std::env::var(name))
    }

    /// [`Settings::from_env`], with the variables read through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Result<String, VarError>,
    ) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        if let Some(level) = read_env(&lookup, ENV_LOG_LEVEL)? {
            settings.level = level.parse::<LogLevel>()?.0;
        }
        if let Some(packets) = read_env(&lookup, ENV_LOG_PACKETS)? {
            settings.packets = packets.parse()?;
        }
        Ok(settings)
    }

    /// The filter that applies these settings: the level, the listening
    /// line at any level, and the packet lines as [`packets`](Self::packets)
    /// says. For a subscriber of the application's own.
    pub fn filter(&self) -> tracing_subscriber::filter::Targets {
        use tracing::Level;
        use tracing_subscriber::filter::LevelFilter;
        let packets = match self.packets {
            PacketLog::Off => LevelFilter::OFF,
            PacketLog::Headers | PacketLog::Full => LevelFilter::from_level(self.level),
        };
        let payloads = match self.packets {
            PacketLog::Full => LevelFilter::TRACE,
            PacketLog::Off | PacketLog::Headers => LevelFilter::OFF,
        };
        tracing_subscriber::filter::Targets::new()
            .with_default(self.level)
            .with_target(LISTENING_TARGET, Level::INFO)
            .with_target(PACKETS_TARGET, packets)
            .with_target(PAYLOADS_TARGET, payloads)
    }
}

/// Installs a global `tracing` subscriber with these settings, writing to
/// standard error. The line that says where a server listens is shown at
/// any level.
///
/// ```no_run
/// stream_rpc::logging::init(&stream_rpc::logging::Settings::from_env()?)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn init(settings: &Settings) -> Result<(), LoggingError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match settings.format {
        LogFormat::Text => layer.event_format(TextFormat).boxed(),
        LogFormat::Json => layer.json().boxed(),
        LogFormat::Compact => layer.compact().boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(settings.filter()))
        .try_init()
        .map_err(|e| LoggingError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> + use<> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned().ok_or(VarError::NotPresent)
    }

    #[test]
    fn defaults_are_info_text_and_headers() {
        let settings = Settings::from_lookup(lookup(&[])).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.level, tracing::Level::INFO);
        assert_eq!(settings.format, LogFormat::Text);
        assert_eq!(settings.packets, PacketLog::Headers);
    }

    #[test]
    fn the_variables_set_level_and_packet_lines() {
        for (text, expected) in [
            ("off", PacketLog::Off),
            ("Headers", PacketLog::Headers),
            (" FULL ", PacketLog::Full),
        ] {
            let settings = Settings::from_lookup(lookup(&[(ENV_LOG_PACKETS, text)])).unwrap();
            assert_eq!(settings.packets, expected, "{text}");
        }
        let settings = Settings::from_lookup(lookup(&[(ENV_LOG_LEVEL, "warning")])).unwrap();
        assert_eq!(settings.level, tracing::Level::WARN);
        for (var, value) in [(ENV_LOG_LEVEL, "LOUD"), (ENV_LOG_PACKETS, "some")] {
            let err = Settings::from_lookup(lookup(&[(var, value)])).unwrap_err();
            assert!(err.to_string().starts_with(var), "{err}");
            assert!(err.to_string().contains(value), "{err}");
        }
    }

    #[test]
    fn python_and_tracing_level_names() {
        use tracing::Level;
        for (name, level) in [
            ("DEBUG", Level::DEBUG),
            ("INFO", Level::INFO),
            ("WARNING", Level::WARN),
            ("warn", Level::WARN),
            ("ERROR", Level::ERROR),
            ("CRITICAL", Level::ERROR),
            ("trace", Level::TRACE),
        ] {
            assert_eq!(name.parse::<LogLevel>().unwrap().0, level, "{name}");
        }
    }

    #[test]
    fn the_filter_decides_what_the_packet_lines_show() {
        use tracing_subscriber::layer::SubscriberExt as _;
        for (level, packets, expected) in [
            (tracing::Level::INFO, PacketLog::Headers, PacketLog::Headers),
            (tracing::Level::INFO, PacketLog::Full, PacketLog::Full),
            (tracing::Level::INFO, PacketLog::Off, PacketLog::Off),
            (
                tracing::Level::TRACE,
                PacketLog::Headers,
                PacketLog::Headers,
            ),
            (tracing::Level::WARN, PacketLog::Full, PacketLog::Off),
        ] {
            let settings = Settings::default().with_level(level).with_packets(packets);
            let subscriber = tracing_subscriber::registry().with(settings.filter());
            let seen = tracing::subscriber::with_default(subscriber, PacketLog::current);
            assert_eq!(seen, expected, "{level} {packets:?}");
        }
        // No subscriber: no packet lines at all.
        assert_eq!(PacketLog::current(), PacketLog::Off);
    }
}
