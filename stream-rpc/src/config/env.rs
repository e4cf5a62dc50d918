//! The environment variables the settings are read from, and their defaults.

use std::env::VarError;
use std::time::Duration;

use super::ConfigError;

/// The environment variable holding the Fernet key(s).
pub const ENV_KEY: &str = "CRYPTO_KEY";
/// The environment variable holding the host.
pub const ENV_HOST: &str = "STREAM_RPC_HOST";
/// The environment variable holding the port.
pub const ENV_PORT: &str = "STREAM_RPC_PORT";
/// The environment variable holding the log level, read by
/// [`logging::Settings::from_env`](crate::logging::Settings::from_env).
pub const ENV_LOG_LEVEL: &str = "STREAM_RPC_LOG_LVL";

/// The environment variable saying how much of each packet the `Send:` and
/// `Received:` log lines show: `off`, `headers` (the default) or `full`,
/// read by [`logging::Settings::from_env`](crate::logging::Settings::from_env).
pub const ENV_LOG_PACKETS: &str = "STREAM_RPC_LOG_PACKETS";

/// The environment variable holding how many connections a server serves
/// at once from one remote IP address
/// ([`Limits::max_connections_per_ip`](crate::Limits::max_connections_per_ip)).
pub const ENV_MAX_CONNECTIONS_PER_IP: &str = "STREAM_RPC_MAX_CONNECTIONS_PER_IP";

/// The environment variable holding a list of servers for clients that
/// fail over between them: `host:port,host:port` (see
/// [`parse_servers`](super::parse_servers)).
pub const ENV_SERVERS: &str = "STREAM_RPC_SERVERS";

/// The default host: a server listens on every IPv4 interface. A client
/// given this (unspecified) address connects to the loopback address
/// instead, [`DEFAULT_CONNECT_HOST`].
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// Where a client connects when its host is an unspecified address
/// (`0.0.0.0`, the default, or `::`, which become `::1`): this machine.
pub const DEFAULT_CONNECT_HOST: &str = "127.0.0.1";
/// The default port.
pub const DEFAULT_PORT: u16 = 8888;
/// The default time to live of tokens.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The host a client connects to for a configured `host`: an unspecified
/// address (`0.0.0.0`, `::`), which a server listens on but no client can
/// reach, stands for this machine (`127.0.0.1`, `::1`), as most clients
/// take it; any other host is kept.
pub fn connect_host(host: &str) -> &str {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) if ip.is_unspecified() => DEFAULT_CONNECT_HOST,
        Ok(std::net::IpAddr::V6(ip)) if ip.is_unspecified() => "::1",
        _ => host,
    }
}

/// Reads one variable through `lookup`: blank counts as unset, and a value
/// that is not UTF-8 is an error naming the variable.
pub(crate) fn read(
    lookup: &impl Fn(&str) -> Result<String, VarError>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    match lookup(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(VarError::NotPresent) => Ok(None),
        Err(VarError::NotUnicode(_)) => {
            Err(ConfigError::invalid(name, "the value is not valid UTF-8"))
        }
    }
}
