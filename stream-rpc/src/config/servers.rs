//! Lists of servers, as `STREAM_RPC_SERVERS` holds them.

use super::{ConfigError, ENV_SERVERS};

/// Reads a list of servers, `host:port` separated by commas (an IPv6
/// address in brackets: `[::1]:8888`), as [`ENV_SERVERS`] holds it, for
/// [`Reconnect::with_servers`](crate::Reconnect::with_servers). Blanks
/// around entries are ignored; an empty list, an empty entry, a missing or
/// bad port is an error naming [`ENV_SERVERS`].
///
/// ```
/// let servers = stream_rpc::env::parse_servers("a.example:8888, [::1]:9000").unwrap();
/// assert_eq!(servers, [("a.example".to_owned(), 8888), ("::1".to_owned(), 9000)]);
/// ```
pub fn parse_servers(text: &str) -> Result<Vec<(String, u16)>, ConfigError> {
    let invalid = |reason: String| ConfigError::invalid(ENV_SERVERS, reason);
    let mut servers = Vec::new();
    for entry in text.split(',').map(str::trim) {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(invalid(format!("expected host:port, got {entry:?}")));
        };
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.chars().any(char::is_whitespace) || host.contains(['[', ']']) {
            return Err(invalid(format!(
                "expected a host name or IP address in {entry:?}"
            )));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| invalid(format!("expected a port from 1 to 65535 in {entry:?}")))?;
        servers.push((host.to_owned(), port));
    }
    Ok(servers)
}
